//! The thinking vault: the original text of thinking blocks the proxy masked for the client,
//! kept by the block's signature so that a later request carrying the signed block can have
//! its original put back — the signature still verifies, and the upstream only ever gets back
//! text it produced itself.
//!
//! - [`Vault`] is the store: async and batched (one round trip per request or response), so a
//!   networked backend shared by replicas can implement it; values are kept by a string key
//!   that is also what they are bound to. The placeholder-restore store is meant to share it.
//! - [`MemoryVault`] is the in-process backend;
//! - [`VaultRestore`] adapts fetched originals to the request walker's
//!   [`ThinkingRestore`] hook;
//! - [`thinking_signatures`] finds the signatures a request body may carry, cheaply.
//!
//! Invariants:
//! - at rest a value is only ever ChaCha20-Poly1305 ciphertext (random nonce, its key as
//!   associated data: a value moved to another key does not decrypt), under a key derived
//!   from the server's placeholder key; the map is keyed by a keyed hash of the key, never
//!   the key (a signature) itself;
//! - every entry expires after the vault's TTL (expired entries are removed lazily, and never
//!   returned); entries and total bytes are bounded, the oldest evicted first;
//! - `Debug` and every error print no key, value or key material;
//! - [`VaultRestore`] gives back an original only when masking it with the request's engine
//!   yields exactly the text the client sent: the client sends back what it was shown, and
//!   anything else stays masked;
//! - a vault that fails makes the caller mask (fail closed): nothing here ever decides to
//!   forward client text unscanned.

use crate::anthropic::messages::ThinkingOriginal;
use crate::engine::{Engine, Scope, ThinkingRestore};
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// The label the vault key is derived with from the placeholder key:
/// `HMAC-SHA256(placeholder key, VAULT_KEY_LABEL)`.
pub const VAULT_KEY_LABEL: &[u8] = b"streammask thinking vault v1";

/// At most this many distinct signatures are looked up for one request; thinking blocks past
/// it are masked like unknown ones.
pub const MAX_SIGNATURES_PER_REQUEST: usize = 4096;

/// Bytes counted per entry besides its ciphertext (map slot, hash, nonce, queue entry).
const ENTRY_OVERHEAD: usize = 96;

/// Failures of a vault. Messages name no key, value or key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The backend could not be reached or answered wrongly (networked backends).
    #[error("thinking vault unavailable: {0}")]
    Unavailable(String),
    /// A value could not be encrypted.
    #[error("thinking vault: encryption failed")]
    Encrypt,
    /// The in-memory map was left inconsistent by a panic elsewhere.
    #[error("thinking vault: the store is poisoned")]
    Poisoned,
}

/// One value to keep: `value` kept by `key` (for thinking, the block's signature and its
/// original text). The key is also the value's associated data.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultEntry {
    pub key: String,
    pub value: String,
}

impl fmt::Debug for VaultEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultEntry")
            .field("key_bytes", &self.key.len())
            .field("value_bytes", &self.value.len())
            .finish()
    }
}

impl From<ThinkingOriginal> for VaultEntry {
    fn from(original: ThinkingOriginal) -> VaultEntry {
        VaultEntry {
            key: original.signature,
            value: original.original,
        }
    }
}

/// A store of values kept by key, shaped for a networked backend: async, batched, fallible.
#[async_trait]
pub trait Vault: Send + Sync + fmt::Debug {
    /// Keep every entry (replacing an entry with the same key). A backend may drop entries to
    /// stay within its bounds: a later fetch then finds nothing, which callers treat as
    /// "mask".
    async fn put(&self, entries: Vec<VaultEntry>) -> Result<(), VaultError>;

    /// The value of each key, in the order of `keys` (`None`: unknown, expired or evicted).
    async fn fetch(&self, keys: &[String]) -> Result<Vec<Option<String>>, VaultError>;
}

/// The vault's secret key (32 bytes). `Debug` prints nothing of it.
#[derive(Clone)]
pub struct VaultKey([u8; 32]);

impl VaultKey {
    pub fn new(bytes: [u8; 32]) -> VaultKey {
        VaultKey(bytes)
    }

    /// `HMAC-SHA256(material, VAULT_KEY_LABEL)`: the vault key of a placeholder key's
    /// material (so replicas sharing the placeholder key share the vault key).
    pub fn derive(material: &[u8]) -> VaultKey {
        VaultKey(hmac(material, VAULT_KEY_LABEL))
    }

    /// A fresh random key (for a process whose placeholder key is random too).
    pub fn random() -> VaultKey {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        VaultKey(key)
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(..)")
    }
}

/// A keyed HMAC-SHA256 (start-up only; the request path clones a keyed instance).
fn keyed(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Bounds of a [`MemoryVault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultLimits {
    /// How long an entry is kept after it was put.
    pub ttl: Duration,
    /// At most this many entries.
    pub max_entries: usize,
    /// At most this many bytes (ciphertext plus a fixed per-entry overhead).
    pub max_bytes: usize,
}

impl VaultLimits {
    /// The default entry bound for a byte bound: one entry per KiB, at least 1024.
    pub fn for_bytes(ttl: Duration, max_bytes: usize) -> VaultLimits {
        VaultLimits {
            ttl,
            max_entries: (max_bytes / 1024).max(1024),
            max_bytes,
        }
    }
}

/// One encrypted value.
struct Sealed {
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
    expires: Instant,
    /// Insertion number, matching the entry's place in `order`.
    seq: u64,
}

impl Sealed {
    fn cost(&self) -> usize {
        self.ciphertext.len() + ENTRY_OVERHEAD
    }
}

#[derive(Default)]
struct Slots {
    /// Keyed hash of the key → sealed value.
    map: HashMap<[u8; 32], Sealed>,
    /// Insertion order (oldest first); entries whose `seq` no longer matches the map's were
    /// replaced or removed and are skipped. With one TTL for all, this is also expiry order.
    order: VecDeque<([u8; 32], u64)>,
    bytes: usize,
    next_seq: u64,
}

impl Slots {
    fn remove(&mut self, id: &[u8; 32]) {
        if let Some(old) = self.map.remove(id) {
            self.bytes -= old.cost();
        }
    }

    /// Drop expired entries and, oldest first, whatever exceeds the bounds.
    fn trim(&mut self, now: Instant, limits: &VaultLimits) {
        while let Some(&(id, seq)) = self.order.front() {
            let live = match self.map.get(&id) {
                Some(sealed) if sealed.seq == seq => Some(sealed.expires),
                _ => None,
            };
            if let Some(expires) = live {
                let over = self.map.len() > limits.max_entries || self.bytes > limits.max_bytes;
                if expires > now && !over {
                    break;
                }
                self.remove(&id);
            }
            self.order.pop_front();
        }
        // Replacements leave stale queue entries behind: compact when they dominate.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(id, seq)| map.get(id).is_some_and(|s| s.seq == *seq));
        }
    }
}

/// The in-process [`Vault`]: encrypted entries in a bounded map, per process. Replicas do not
/// share it (a later turn on another replica finds nothing and is masked).
pub struct MemoryVault {
    cipher: ChaCha20Poly1305,
    /// The keyed hash that names an entry in the map.
    index: HmacSha256,
    limits: VaultLimits,
    slots: Mutex<Slots>,
}

impl fmt::Debug for MemoryVault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (entries, bytes) = self
            .slots
            .lock()
            .map(|s| (s.map.len(), s.bytes))
            .unwrap_or((0, 0));
        f.debug_struct("MemoryVault")
            .field("limits", &self.limits)
            .field("entries", &entries)
            .field("bytes", &bytes)
            .finish_non_exhaustive()
    }
}

impl MemoryVault {
    pub fn new(key: &VaultKey, limits: VaultLimits) -> MemoryVault {
        let encryption = hmac(&key.0, b"encrypt");
        MemoryVault {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&encryption)),
            index: keyed(&hmac(&key.0, b"index")),
            limits,
            slots: Mutex::new(Slots::default()),
        }
    }

    /// How many entries and bytes are kept now (expired ones included until trimmed).
    pub fn usage(&self) -> (usize, usize) {
        self.slots
            .lock()
            .map(|s| (s.map.len(), s.bytes))
            .unwrap_or((0, 0))
    }

    fn id(&self, key: &str) -> [u8; 32] {
        let mut mac = self.index.clone();
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn seal(&self, entry: &VaultEntry) -> Result<([u8; 12], Vec<u8>), VaultError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let payload = Payload {
            msg: entry.value.as_bytes(),
            aad: entry.key.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| VaultError::Encrypt)?;
        Ok((nonce, ciphertext))
    }

    /// The value of `sealed` when it decrypts under `key` as associated data.
    fn open(&self, key: &str, sealed: &Sealed) -> Option<String> {
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: key.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), payload)
            .ok()?;
        String::from_utf8(plain).ok()
    }

    fn put_at(&self, entries: Vec<VaultEntry>, now: Instant) -> Result<(), VaultError> {
        // Encrypt outside the lock.
        let mut sealed = Vec::with_capacity(entries.len());
        for entry in &entries {
            let (nonce, ciphertext) = self.seal(entry)?;
            sealed.push((self.id(&entry.key), nonce, ciphertext));
        }
        let mut slots = self.slots.lock().map_err(|_| VaultError::Poisoned)?;
        let expires = now + self.limits.ttl;
        for (id, nonce, ciphertext) in sealed {
            let value = Sealed {
                nonce,
                ciphertext,
                expires,
                seq: slots.next_seq,
            };
            slots.remove(&id);
            if value.cost() > self.limits.max_bytes {
                continue;
            }
            slots.next_seq += 1;
            slots.bytes += value.cost();
            slots.order.push_back((id, value.seq));
            slots.map.insert(id, value);
        }
        slots.trim(now, &self.limits);
        Ok(())
    }

    fn fetch_at(&self, keys: &[String], now: Instant) -> Result<Vec<Option<String>>, VaultError> {
        let ids: Vec<[u8; 32]> = keys.iter().map(|key| self.id(key)).collect();
        let mut slots = self.slots.lock().map_err(|_| VaultError::Poisoned)?;
        slots.trim(now, &self.limits);
        Ok(keys
            .iter()
            .zip(&ids)
            .map(|(key, id)| {
                let sealed = slots.map.get(id).filter(|s| s.expires > now)?;
                self.open(key, sealed)
            })
            .collect())
    }
}

#[async_trait]
impl Vault for MemoryVault {
    async fn put(&self, entries: Vec<VaultEntry>) -> Result<(), VaultError> {
        self.put_at(entries, Instant::now())
    }

    async fn fetch(&self, keys: &[String]) -> Result<Vec<Option<String>>, VaultError> {
        self.fetch_at(keys, Instant::now())
    }
}

/// The request walker's [`ThinkingRestore`] hook over originals fetched from a vault.
pub struct VaultRestore<'e> {
    engine: &'e Engine,
    originals: HashMap<String, String>,
}

impl fmt::Debug for VaultRestore<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultRestore")
            .field("originals", &self.originals.len())
            .finish_non_exhaustive()
    }
}

impl<'e> VaultRestore<'e> {
    /// `fetched` is the vault's answer for `signatures` (same order).
    pub fn new(
        engine: &'e Engine,
        signatures: Vec<String>,
        fetched: Vec<Option<String>>,
    ) -> VaultRestore<'e> {
        let originals = signatures
            .into_iter()
            .zip(fetched)
            .filter_map(|(signature, original)| Some((signature, original?)))
            .collect();
        VaultRestore { engine, originals }
    }

    /// How many of the signatures had an original.
    pub fn known(&self) -> usize {
        self.originals.len()
    }
}

impl ThinkingRestore for VaultRestore<'_> {
    /// The original, when `shown` is exactly what the client was shown: the original masked
    /// the way responses are masked.
    fn restore(&self, signature: &str, shown: &str) -> Option<String> {
        let original = self.originals.get(signature)?;
        let masked = self.engine.mask(original, Scope::Response).ok()?;
        (masked.text == shown).then(|| original.clone())
    }
}

/// The distinct string values of `"signature"` members in a JSON body, in order of
/// appearance (at most [`MAX_SIGNATURES_PER_REQUEST`]), found without parsing the body.
///
/// Sound for the one use it has: inside a JSON string every `"` is escaped, so the bytes
/// `"signature"` followed by `:` only occur as a member name (or the tail of a name ending in
/// an escaped quote, which only adds a lookup). A signature missed here is not restored, and
/// its block is masked — the safe way to be wrong.
pub fn thinking_signatures(body: &[u8]) -> Vec<String> {
    const NAME: &[u8] = b"\"signature\"";
    let mut found: Vec<String> = Vec::new();
    let mut at = 0;
    while let Some(offset) = memchr::memmem::find(&body[at..], NAME) {
        at += offset + NAME.len();
        let mut i = skip_ws(body, at);
        if body.get(i) != Some(&b':') {
            continue;
        }
        i = skip_ws(body, i + 1);
        if body.get(i) != Some(&b'"') {
            continue;
        }
        let Some(end) = string_end(body, i + 1) else {
            break;
        };
        let raw = &body[i..=end];
        at = end + 1;
        let value = if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(raw).ok()
        } else {
            std::str::from_utf8(&raw[1..raw.len() - 1])
                .ok()
                .map(str::to_owned)
        };
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            if !found.contains(&value) {
                if found.len() == MAX_SIGNATURES_PER_REQUEST {
                    break;
                }
                found.push(value);
            }
        }
    }
    found
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The index of the `"` closing the string whose content starts at `i`.
fn string_end(body: &[u8], mut i: usize) -> Option<usize> {
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[rules]]
id = "test-token"
description = "a test token"
pattern = 'tok_[a-z0-9]{12}'
action = "mask"
applies_to = ["request", "response"]
"#;

    fn secret() -> String {
        format!("tok_{}", "a1b2c3d4e5f6")
    }

    fn limits() -> VaultLimits {
        VaultLimits {
            ttl: Duration::from_secs(60),
            max_entries: 100,
            max_bytes: 1 << 20,
        }
    }

    fn vault(limits: VaultLimits) -> MemoryVault {
        MemoryVault::new(&VaultKey::derive(b"0123456789abcdef0123"), limits)
    }

    fn entry(key: &str, value: &str) -> VaultEntry {
        VaultEntry {
            key: key.into(),
            value: value.into(),
        }
    }

    fn keys(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn round_trip_in_order_of_the_keys_asked() {
        let vault = vault(limits());
        let now = Instant::now();
        let original = format!("the key is {}", secret());
        vault
            .put_at(vec![entry("sig-a", &original), entry("sig-b", "b")], now)
            .expect("the memory vault stores");
        let got = vault
            .fetch_at(&keys(&["sig-b", "sig-unknown", "sig-a"]), now)
            .expect("the memory vault answers");
        assert_eq!(got, vec![Some("b".into()), None, Some(original)]);
        // A put with the same key replaces the value and its byte count.
        vault
            .put_at(vec![entry("sig-b", "bb")], now)
            .expect("the memory vault stores");
        assert_eq!(
            vault
                .fetch_at(&keys(&["sig-b"]), now)
                .expect("the memory vault answers"),
            vec![Some("bb".into())]
        );
        assert_eq!(vault.usage().0, 2);
    }

    #[test]
    fn nothing_at_rest_holds_the_plaintext_or_the_signature() {
        let vault = vault(limits());
        let original = format!("the key is {}", secret());
        let signature = "EqQBCkYIBxgCKkD-signature";
        vault
            .put_at(vec![entry(signature, &original)], Instant::now())
            .expect("the memory vault stores");
        let slots = vault.slots.lock().expect("the vault lock is not poisoned");
        assert_eq!(slots.map.len(), 1);
        for (id, sealed) in &slots.map {
            let contains =
                |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
            assert!(!contains(&sealed.ciphertext, secret().as_bytes()));
            assert!(!contains(&sealed.ciphertext, b"the key is"));
            assert!(!contains(id, &signature.as_bytes()[..8]));
            assert_eq!(sealed.ciphertext.len(), original.len() + 16, "tag appended");
        }
        drop(slots);
        let debug = format!("{vault:?} {:?}", entry(signature, &original));
        assert!(
            !debug.contains(&secret()) && !debug.contains(signature),
            "{debug}"
        );
        assert!(!format!("{:?}", VaultKey::derive(b"material")).contains("material"));
    }

    #[test]
    fn a_value_only_opens_under_its_own_signature() {
        let vault = vault(limits());
        let now = Instant::now();
        vault
            .put_at(vec![entry("sig-a", "original a")], now)
            .expect("the memory vault stores");
        // Move a's sealed value under b's name: the associated data no longer matches.
        {
            let mut slots = vault.slots.lock().expect("the vault lock is not poisoned");
            let a = slots
                .map
                .remove(&vault.id("sig-a"))
                .expect("the entry is in the map");
            assert!(vault.open("sig-b", &a).is_none(), "wrong AAD must fail");
            assert_eq!(vault.open("sig-a", &a).as_deref(), Some("original a"));
            slots.map.insert(vault.id("sig-b"), a);
        }
        assert_eq!(
            vault
                .fetch_at(&keys(&["sig-b"]), now)
                .expect("the memory vault answers"),
            vec![None]
        );
        // Another key (another placeholder key) opens nothing either.
        let other = MemoryVault::new(&VaultKey::derive(b"another key material"), limits());
        vault
            .put_at(vec![entry("sig-c", "c")], now)
            .expect("the memory vault stores");
        let sealed = vault
            .slots
            .lock()
            .expect("the vault lock is not poisoned")
            .map
            .remove(&vault.id("sig-c"))
            .expect("the entry is in the map");
        assert!(other.open("sig-c", &sealed).is_none());
    }

    #[test]
    fn entries_expire_after_the_ttl_and_are_removed() {
        let vault = vault(limits());
        let now = Instant::now();
        vault
            .put_at(vec![entry("old", "o")], now)
            .expect("the memory vault stores");
        let later = now + Duration::from_secs(30);
        vault
            .put_at(vec![entry("new", "n")], later)
            .expect("the memory vault stores");
        let at_ttl = now + Duration::from_secs(60);
        assert_eq!(
            vault
                .fetch_at(&keys(&["old", "new"]), at_ttl)
                .expect("the memory vault answers"),
            vec![None, Some("n".into())]
        );
        assert_eq!(vault.usage().0, 1, "the expired entry was removed");
        let gone = later + Duration::from_secs(61);
        assert_eq!(
            vault
                .fetch_at(&keys(&["new"]), gone)
                .expect("the memory vault answers"),
            vec![None]
        );
        assert_eq!(vault.usage(), (0, 0));
    }

    #[test]
    fn bounds_evict_the_oldest_first() {
        let by_count = vault(VaultLimits {
            max_entries: 3,
            ..limits()
        });
        let now = Instant::now();
        for i in 0..5 {
            by_count
                .put_at(vec![entry(&format!("s{i}"), &format!("v{i}"))], now)
                .expect("the memory vault stores");
        }
        let got = by_count
            .fetch_at(&keys(&["s0", "s1", "s2", "s3", "s4"]), now)
            .expect("the memory vault answers");
        assert_eq!(got.iter().filter(|v| v.is_some()).count(), 3);
        assert!(got[0].is_none() && got[1].is_none() && got[4].is_some());

        let value = "x".repeat(1000);
        let cost = value.len() + 16 + ENTRY_OVERHEAD;
        let by_bytes = vault(VaultLimits {
            max_bytes: 2 * cost + 10,
            ..limits()
        });
        by_bytes
            .put_at(vec![entry("a", &value), entry("b", &value)], now)
            .expect("the memory vault stores");
        // Re-putting `a` makes it the newest: `b` is now the oldest and goes first.
        by_bytes
            .put_at(vec![entry("a", &value)], now)
            .expect("the memory vault stores");
        by_bytes
            .put_at(vec![entry("c", &value)], now)
            .expect("the memory vault stores");
        let got = by_bytes
            .fetch_at(&keys(&["a", "b", "c"]), now)
            .expect("the memory vault answers");
        assert_eq!(
            got.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(by_bytes.usage(), (2, 2 * cost));
        // A value larger than the whole vault is not kept, and evicts nothing.
        by_bytes
            .put_at(vec![entry("huge", &"y".repeat(4 * cost))], now)
            .expect("the memory vault stores");
        assert_eq!(by_bytes.usage(), (2, 2 * cost));
    }

    #[test]
    fn stale_queue_entries_are_compacted() {
        let vault = vault(limits());
        let now = Instant::now();
        for _ in 0..1000 {
            vault
                .put_at(vec![entry("same", "v")], now)
                .expect("the memory vault stores");
        }
        let slots = vault.slots.lock().expect("the vault lock is not poisoned");
        assert_eq!(slots.map.len(), 1);
        assert!(slots.order.len() <= 2 + 64, "{}", slots.order.len());
    }

    #[test]
    fn restore_gives_the_original_only_for_its_masked_form() {
        let engine = crate::engine::test_engine(RULES);
        let original = format!("the key is {}\nok", secret());
        let shown = engine
            .mask(&original, Scope::Response)
            .expect("the test engine masks")
            .text
            .into_owned();
        assert_ne!(shown, original);
        let restore = VaultRestore::new(
            &engine,
            keys(&["sig", "sig-gone"]),
            vec![Some(original.clone()), None],
        );
        assert_eq!(restore.known(), 1);
        assert_eq!(restore.restore("sig", &shown), Some(original.clone()));
        // The client changed the text, or sends the raw original, or another signature's.
        assert_eq!(restore.restore("sig", &format!("{shown} edited")), None);
        assert_eq!(restore.restore("sig", &original), None);
        assert_eq!(
            restore.restore("sig", "the key is [MASKED:test-token:00000000]\nok"),
            None
        );
        assert_eq!(restore.restore("sig-gone", &shown), None);
        assert_eq!(restore.restore("sig-other", &shown), None);
    }

    #[test]
    fn signatures_are_found_without_parsing() {
        let body = br#"{"messages":[{"role":"assistant","content":[
            {"type":"thinking","thinking":"a \"signature\": \"fake\"","signature" : "EqA/b+c="},
            {"type":"thinking","thinking":"b","signature":"Eq\/escaped"},
            {"signature":"EqA/b+c="},{"signature":""},{"signature":12},
            {"type":"text","text":"x"}]}],"signature":"last"}"#;
        assert_eq!(
            thinking_signatures(body),
            ["EqA/b+c=", "Eq/escaped", "last"]
        );
        assert!(thinking_signatures(br#"{"signature":"unterminated"#).is_empty());
        assert!(thinking_signatures(b"{}").is_empty());
    }
}
