//! Sealing for the store: AES-256-GCM for values and HMAC-SHA256 for ids, both under keys
//! derived with HKDF-SHA256 from key material and a domain label.
//!
//! Invariants:
//! - the two keys of a [`Sealer`] are unrelated to each other and to those of any other label
//!   (distinct HKDF `info`), so one use of the material (e.g. the vault) cannot be made to
//!   decrypt or forge for another (e.g. grants);
//! - the same material and label give the same keys in every process: replicas sharing a store
//!   agree on ids and open each other's values;
//! - a sealed value is `nonce (12 random bytes) || ciphertext || tag`, bound to its associated
//!   data: moved elsewhere (other aad), cut or altered, it does not open;
//! - `Debug` prints the label only, never key bytes.
//!
//! Random 96-bit nonces keep the collision risk negligible below about 2^32 seals per key;
//! each label's key seals only short-lived, bounded entries, far under that.

use super::Id;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// The HKDF salt: fixed, so that derivation depends only on material and label; the version
/// lets a later format derive fresh keys from the same material.
const SALT: &[u8] = b"streammask store v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Sealing failures. The message names no key or value.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("encryption failed")]
    Encrypt,
}

/// AES-256-GCM under a key derived with HKDF-SHA256 from key material and a domain label;
/// ids are HMAC-SHA256 under a second HKDF-derived key. Debug prints nothing of the keys.
#[derive(Clone)]
pub struct Sealer {
    label: String,
    cipher: Aes256Gcm,
    /// Keyed once; each id clones it rather than re-keying.
    ids: HmacSha256,
}

impl Sealer {
    /// Keys for `label` from `material`: HKDF-SHA256 (salt `streammask store v1`) with info
    /// `"{label} encrypt"` and `"{label} id"`.
    pub fn derive(material: &[u8], label: &str) -> Sealer {
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), material);
        let encrypt_key = expand(&hkdf, &format!("{label} encrypt"));
        let id_key = expand(&hkdf, &format!("{label} id"));
        Sealer {
            label: label.to_string(),
            cipher: Aes256Gcm::new(&encrypt_key.into()),
            // HMAC takes keys of any length: `new_from_slice` cannot fail.
            ids: <HmacSha256 as Mac>::new_from_slice(&id_key).expect("HMAC accepts any key length"),
        }
    }

    /// Keys from fresh random material: for a process whose placeholder key is random too
    /// (nothing it seals outlives it, and no other replica can share its store).
    pub fn random(label: &str) -> Sealer {
        let mut material = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut material);
        Sealer::derive(&material, label)
    }

    /// The label the keys were derived for.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A keyed hash of `parts`. Each part is length-prefixed before MACing, so different
    /// sequences of parts never hash the same input (`["ab", "c"]` vs `["a", "bc"]`).
    pub fn id(&self, parts: &[&[u8]]) -> Id {
        let mut mac = self.ids.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// `plaintext` encrypted with `aad` as associated data: `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::Encrypt)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// The plaintext of `sealed` if it was sealed by these keys with this `aad`; `None` on any
    /// failure (wrong aad or key, altered, truncated), without saying which.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

fn expand(hkdf: &Hkdf<Sha256>, info: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    // HKDF-SHA256 yields up to 255 * 32 bytes: 32 always fits, so this cannot fail.
    hkdf.expand(info.as_bytes(), &mut key)
        .expect("32 bytes is within HKDF-SHA256's output limit");
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATERIAL: &[u8] = b"placeholder key material, 32+ bytes long";

    #[test]
    fn round_trip() {
        let sealer = Sealer::derive(MATERIAL, "vault");
        let sealed = sealer.seal(b"aad", b"sk-ant-secret").unwrap();
        assert_eq!(sealer.open(b"aad", &sealed).unwrap(), b"sk-ant-secret");
        assert_eq!(sealed.len(), NONCE_LEN + b"sk-ant-secret".len() + TAG_LEN);
        // Random nonces: the same plaintext never seals to the same bytes.
        assert_ne!(sealer.seal(b"aad", b"sk-ant-secret").unwrap(), sealed);
        let empty = sealer.seal(b"", b"").unwrap();
        assert_eq!(sealer.open(b"", &empty).unwrap(), b"");
    }

    #[test]
    fn wrong_aad_tampered_or_truncated_do_not_open() {
        let sealer = Sealer::derive(MATERIAL, "vault");
        let sealed = sealer.seal(b"aad", b"secret").unwrap();
        assert_eq!(sealer.open(b"other", &sealed), None);
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(sealer.open(b"aad", &tampered), None, "byte {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(sealer.open(b"aad", &sealed[..len]), None, "length {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(sealer.open(b"aad", &longer), None);
    }

    #[test]
    fn labels_give_unrelated_keys() {
        let vault = Sealer::derive(MATERIAL, "vault");
        let grants = Sealer::derive(MATERIAL, "grants");
        assert_ne!(vault.id(&[b"x"]), grants.id(&[b"x"]));
        let sealed = vault.seal(b"aad", b"secret").unwrap();
        assert_eq!(grants.open(b"aad", &sealed), None);
        let other_material = Sealer::derive(b"other material", "vault");
        assert_ne!(vault.id(&[b"x"]), other_material.id(&[b"x"]));
        assert_eq!(other_material.open(b"aad", &sealed), None);
    }

    #[test]
    fn same_material_and_label_interoperate() {
        let a = Sealer::derive(MATERIAL, "vault");
        let b = Sealer::derive(MATERIAL, "vault");
        assert_eq!(
            a.id(&[b"caller", b"placeholder"]),
            b.id(&[b"caller", b"placeholder"])
        );
        let sealed = a.seal(b"aad", b"secret").unwrap();
        assert_eq!(b.open(b"aad", &sealed).unwrap(), b"secret");
        let back = b.seal(b"aad", b"reply").unwrap();
        assert_eq!(a.open(b"aad", &back).unwrap(), b"reply");
    }

    #[test]
    fn random_sealers_do_not_interoperate() {
        let a = Sealer::random("vault");
        let b = Sealer::random("vault");
        assert_ne!(a.id(&[b"x"]), b.id(&[b"x"]));
        let sealed = a.seal(b"", b"secret").unwrap();
        assert_eq!(a.open(b"", &sealed).unwrap(), b"secret");
        assert_eq!(b.open(b"", &sealed), None);
    }

    #[test]
    fn ids_are_unambiguous() {
        let sealer = Sealer::derive(MATERIAL, "vault");
        let ab_c = sealer.id(&[b"ab", b"c"]);
        assert_ne!(ab_c, sealer.id(&[b"a", b"bc"]));
        assert_ne!(ab_c, sealer.id(&[b"abc"]));
        assert_ne!(ab_c, sealer.id(&[b"ab", b"c", b""]));
        assert_ne!(sealer.id(&[]), sealer.id(&[b""]));
        assert_eq!(ab_c, sealer.id(&[b"ab", b"c"]));
    }

    #[test]
    fn debug_shows_no_key_bytes() {
        let sealer = Sealer::derive(MATERIAL, "vault");
        let shown = format!("{sealer:?}");
        assert_eq!(shown, r#"Sealer { label: "vault", .. }"#);
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), MATERIAL);
        for info in ["vault encrypt", "vault id"] {
            let key = expand(&hkdf, info);
            assert!(!shown.contains(&hex::encode(key)));
            assert!(!shown.contains(&format!("{key:?}")));
        }
    }
}
