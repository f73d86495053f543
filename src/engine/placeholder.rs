//! Deterministic placeholders: `[MASKED:<rule-id>:<8 hex>]`.
//!
//! Invariants:
//! - the hex part is HMAC-SHA256(key, secret) truncated to 4 bytes, so one secret masks the same
//!   way in every request and on every replica that shares the key (prompt caching depends on it);
//! - a placeholder is ASCII, contains no whitespace, no `"` or `\`, so it is JSON-safe and never
//!   changes the length of JSON escaping;
//! - the key never leaves this module: there is no accessor and `Debug` does not print it.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum PlaceholderError {
    #[error("placeholder key must be at least 16 bytes (got {0})")]
    KeyTooShort(usize),
}

/// Bytes of a placeholder besides its rule id: `[MASKED:`, `:`, 8 hex digits and `]`.
pub const PLACEHOLDER_OVERHEAD: usize = "[MASKED:".len() + 1 + 8 + 1;

/// The server key behind placeholders.
#[derive(Clone)]
pub struct PlaceholderKey {
    mac: HmacSha256,
    random: bool,
}

impl fmt::Debug for PlaceholderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaceholderKey")
            .field("random", &self.random)
            .finish_non_exhaustive()
    }
}

impl PlaceholderKey {
    pub fn new(key: &[u8]) -> Result<PlaceholderKey, PlaceholderError> {
        if key.len() < 16 {
            return Err(PlaceholderError::KeyTooShort(key.len()));
        }
        Ok(PlaceholderKey {
            mac: HmacSha256::new_from_slice(key).expect("HMAC accepts any key length"),
            random: false,
        })
    }

    /// A fresh random key: placeholders then differ across restarts and replicas, which the
    /// caller must warn about.
    pub fn random() -> PlaceholderKey {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        PlaceholderKey {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC accepts any key length"),
            random: true,
        }
    }

    pub fn is_random(&self) -> bool {
        self.random
    }

    /// The placeholder for `secret` found by rule `rule_id`.
    /// A placeholder is `PLACEHOLDER_OVERHEAD` bytes plus its rule id.
    pub fn placeholder(&self, rule_id: &str, secret: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        format!("[MASKED:{rule_id}:{}]", hex::encode(&digest[..4]))
    }
}

/// True when `text` is exactly one placeholder (used by tests and the audit preview).
pub fn is_placeholder(text: &str) -> bool {
    let Some(inner) = text
        .strip_prefix("[MASKED:")
        .and_then(|t| t.strip_suffix(']'))
    else {
        return false;
    };
    let Some((id, hash)) = inner.rsplit_once(':') else {
        return false;
    };
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && hash.len() == 8
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_placeholder_across_instances() {
        let a = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
        let b = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
        assert_eq!(a.placeholder("r", b"secret"), b.placeholder("r", b"secret"));
        assert!(is_placeholder(&a.placeholder("github-pat", b"secret")));
    }

    #[test]
    fn different_keys_differ() {
        let a = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
        let b = PlaceholderKey::new(b"0123456789abcdef0124").unwrap();
        assert_ne!(a.placeholder("r", b"secret"), b.placeholder("r", b"secret"));
    }

    #[test]
    fn short_key_refused() {
        assert!(PlaceholderKey::new(b"short").is_err());
    }

    #[test]
    fn placeholder_length_is_overhead_plus_rule_id() {
        let key = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
        let placeholder = key.placeholder("github-pat-classic", b"secret");
        assert_eq!(
            placeholder.len(),
            PLACEHOLDER_OVERHEAD + "github-pat-classic".len()
        );
    }

    #[test]
    fn placeholder_is_json_safe_and_has_no_whitespace() {
        let key = PlaceholderKey::random();
        let p = key.placeholder("aws-access-key-id", "naïve \"secret\"\n".as_bytes());
        assert!(p.is_ascii());
        assert!(!p
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'"' || b == b'\\'));
        assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let key = PlaceholderKey::new(b"super-secret-key-material").unwrap();
        assert!(!format!("{key:?}").contains("super-secret"));
    }
}
