//! The shared store: small groups of sealed values kept by opaque ids, each value with its own
//! expiry — in process ([`MemoryStore`], one replica) or in one Redis shared by every replica
//! ([`RedisStore`]). It holds the restore vault (placeholder → secret, one group per caller) and
//! is shaped for the approvals' grants too. Callers seal values and make ids with a [`Sealer`];
//! the store itself only ever sees their output.
//!
//! Invariants:
//! - values at rest (in the map, in Redis) are only ever AES-256-GCM ciphertext made by
//!   [`Sealer::seal`]: the store is handed ciphertext and never decrypts;
//! - groups and fields are [`Id`]s, keyed hashes ([`Sealer::id`]) of what they name: reading the
//!   store tells nothing of callers or placeholders without the key;
//! - `Debug` and every [`StoreError`] print no id, value or key material (counts, lengths and
//!   error kinds only);
//! - an entry whose `expires_at_ms <= now` is never returned; expired entries are removed
//!   lazily (memory: on writes, on reads of them and under pressure; Redis: when their group
//!   is trimmed) and a group goes when its last entry expires;
//! - every group is bounded ([`GroupLimits`]: entries and bytes, the earliest-expiring entries
//!   dropped first) and the memory backend is bounded as a whole too (whole groups dropped,
//!   the one whose newest entry expires first); a dropped entry only makes a later fetch find
//!   nothing, which callers must treat as "not known";
//! - a backend that fails answers [`StoreError::Unavailable`] within its timeout, never hangs.
//!
//! Replicas sharing a Redis must derive their [`Sealer`]s from the same key material and label
//! (then their ids agree and each opens what another sealed) and share a clock: expiry is an
//! absolute time ([`now_ms`]).
//!
//! Imports: only `config_error` (the store is a leaf of `policy`).

pub mod memory;
pub mod redis;
pub mod seal;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisLink, RedisStore};
pub use self::seal::{SealError, Sealer};

use crate::config_error::{invalid, ConfigError};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// 32-byte opaque ids (keyed hashes made by [`Sealer::id`]); the store never sees what they
/// name.
pub type Id = [u8; 32];

/// One value to keep in a group: `value` is already sealed ciphertext.
#[derive(Clone)]
pub struct StoreEntry {
    pub field: Id,
    pub value: Vec<u8>,
    /// Unix epoch milliseconds; the entry is gone once `now_ms() >= expires_at_ms`.
    pub expires_at_ms: u64,
}

impl fmt::Debug for StoreEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids and ciphertext are not secrets by themselves, but printing them would let a log
        // line be joined with the store's contents: lengths are enough to debug.
        f.debug_struct("StoreEntry")
            .field("field_bytes", &self.field.len())
            .field("value_bytes", &self.value.len())
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// The bounds of one group: bytes are the sum of its values' lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// Failures of a store. Messages never contain ids or values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached, timed out or answered wrongly.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A panic elsewhere left the in-memory map possibly inconsistent.
    #[error("store: the in-memory map is poisoned")]
    Poisoned,
}

/// A store of groups of sealed values, shaped for a networked backend: async, batched (one
/// call per request, not per value), fallible.
#[async_trait::async_trait]
pub trait GroupStore: Send + Sync + fmt::Debug {
    /// Keep every entry in `group` (replacing same field). Then, while the group is over
    /// `limits`, drop its entries that expire first (oldest). A value alone larger than
    /// max_bytes is not kept. The group as a whole expires when its last entry does.
    ///
    /// An entry that is already expired, or too large to keep, still replaces its field: the
    /// field is then absent.
    async fn put(
        &self,
        group: &Id,
        entries: Vec<StoreEntry>,
        limits: GroupLimits,
    ) -> Result<(), StoreError>;

    /// The value of each field, in order; None for unknown or expired (expires_at_ms <= now).
    async fn fetch(&self, group: &Id, fields: &[Id]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Every live entry of `group` (field, value), in no particular order: one round trip for
    /// a group bounded by its [`GroupLimits`].
    async fn fetch_group(&self, group: &Id) -> Result<Vec<(Id, Vec<u8>)>, StoreError>;

    /// A short name for logs/metrics: "memory" or "redis".
    fn backend(&self) -> &'static str;
}

/// Where a section names its Redis: its `store`, `redis_url` and `redis_url_env` keys.
#[derive(Debug, Clone, Copy)]
pub struct RedisKeys {
    pub store: &'static str,
    pub url: &'static str,
    pub url_env: &'static str,
}

/// The Redis URL of a section with `store = "redis"`: exactly one of `redis_url` and
/// `redis_url_env` (the environment variable holding it, since it may carry a password), and a
/// `redis://` URL. Errors never quote the URL.
pub fn resolve_redis_url(
    keys: RedisKeys,
    url: Option<&str>,
    url_env: Option<&str>,
) -> Result<String, ConfigError> {
    let url = match (url, url_env) {
        (Some(url), None) => url.to_string(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            invalid(
                keys.url_env,
                "names an environment variable that is not set",
            )
        })?,
        _ => {
            return Err(invalid(
                keys.store,
                format!(
                    "\"redis\" needs exactly one of {} and {}",
                    keys.url, keys.url_env
                ),
            ))
        }
    };
    if !url.starts_with("redis://") {
        return Err(invalid(
            keys.url,
            "must be a redis:// URL (TLS to Redis is not built in: use a local TLS tunnel such \
             as stunnel, or a sidecar)",
        ));
    }
    Ok(url)
}

/// Unix epoch milliseconds (wall clock, so that replicas agree on expiry).
pub fn now_ms() -> u64 {
    // A clock set before 1970 reads as 0: everything looks unexpired rather than failing.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_debug_prints_lengths_only() {
        let entry = StoreEntry {
            field: [0xab; 32],
            value: b"ciphertext-bytes".to_vec(),
            expires_at_ms: 7,
        };
        let shown = format!("{entry:?}");
        assert!(!shown.contains("171"), "{shown}"); // 0xab as a decimal byte
        assert!(!shown.contains("ab"), "{shown}");
        assert!(shown.contains("value_bytes: 16"), "{shown}");
    }

    #[test]
    fn now_ms_is_epoch_milliseconds() {
        // 2020-01-01 .. 2200-01-01: catches seconds or nanoseconds by mistake.
        let now = now_ms();
        assert!(now > 1_577_836_800_000 && now < 7_258_118_400_000, "{now}");
    }
}
