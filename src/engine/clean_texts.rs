//! Short texts an engine scanned and found nothing in, remembered so the same bytes are not
//! scanned again: the header lines (Claude Code's list of betas is a few hundred bytes) and
//! model names every request of a client repeats, a response's model and fixed header values.
//! A Hyperscan block scan of a short text costs a few thousand instructions of set-up, a
//! lookup here a few dozen.
//!
//! Invariants:
//! - only a text whose scan in a scope had no finding at all is remembered, for that scope;
//!   a text is let through only when its bytes equal a remembered text's exactly (compared
//!   byte for byte, never trusted to a hash);
//! - an engine's answer is a function of the text and the scope (its rules, terms and
//!   dictionaries are fixed when it is built; the interim automata and the compiled
//!   databases find the same), so a remembered answer is the answer a scan would give;
//! - the engine of one exchange (known secrets) neither asks nor tells: those secrets are
//!   not part of the rules' answer;
//! - bounded: [`SLOTS`] slots of at most [`MAX_LEN`] bytes each (a slot's room grows to the
//!   longest text it held, up to that), allocated on first use; a newer text takes its slot
//!   from an older one.

use super::Scope;
use std::sync::{Mutex, OnceLock};

/// The longest text remembered.
pub const MAX_LEN: usize = 512;
/// How many texts are remembered (direct-mapped by a hash of the bytes).
pub const SLOTS: usize = 512;

/// The memory of one engine's rules (shared by the engines made from it with known secrets,
/// which do not use it).
#[derive(Default)]
pub struct CleanTexts {
    slots: OnceLock<Box<[Mutex<Slot>]>>,
}

impl std::fmt::Debug for CleanTexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The texts are the clients' words: never printed.
        f.debug_struct("CleanTexts")
            .field("allocated", &self.slots.get().is_some())
            .finish()
    }
}

#[derive(Default)]
struct Slot {
    /// Which scopes found nothing in `bytes` (bits of [`Scope::bit`]); 0: empty.
    scopes: u8,
    bytes: Vec<u8>,
}

impl CleanTexts {
    /// Whether `text` was remembered as clean in `scope`.
    pub fn contains(&self, text: &str, scope: Scope) -> bool {
        let Some(slot) = self.slot(text) else {
            return false;
        };
        let Ok(slot) = slot.lock() else {
            return false;
        };
        slot.scopes & scope.bit() != 0 && slot.holds(text.as_bytes())
    }

    /// Remember that `text` has no finding in `scope`.
    pub fn remember(&self, text: &str, scope: Scope) {
        let Some(slot) = self.slot(text) else {
            return;
        };
        let Ok(mut slot) = slot.lock() else {
            return;
        };
        let bytes = text.as_bytes();
        if slot.scopes == 0 || !slot.holds(bytes) {
            slot.scopes = 0;
            slot.bytes.clear();
            slot.bytes.extend_from_slice(bytes);
        }
        slot.scopes |= scope.bit();
    }

    fn slot(&self, text: &str) -> Option<&Mutex<Slot>> {
        if text.len() > MAX_LEN {
            return None;
        }
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| Mutex::default()).collect());
        slots.get(slot_of(text.as_bytes()))
    }
}

impl Slot {
    fn holds(&self, bytes: &[u8]) -> bool {
        self.bytes == bytes
    }
}

/// The slot of `bytes`: a multiply-rotate hash over eight bytes at a time. Which slot a text
/// lands in decides only what is forgotten, never what is let through.
fn slot_of(bytes: &[u8]) -> usize {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let (words, tail) = bytes.as_chunks::<8>();
    let mut hash = bytes.len() as u64;
    for word in words {
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(*word)).wrapping_mul(K);
    }
    for &byte in tail {
        hash = (hash.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
    }
    (hash >> 32) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_bytes_in_a_remembered_scope_are_let_through() {
        let texts = CleanTexts::default();
        assert!(!texts.contains("claude-sonnet-4-5", Scope::Request));
        texts.remember("claude-sonnet-4-5", Scope::Request);
        assert!(texts.contains("claude-sonnet-4-5", Scope::Request));
        assert!(!texts.contains("claude-sonnet-4-5", Scope::Response));
        assert!(!texts.contains("claude-sonnet-4-6", Scope::Request));
        assert!(!texts.contains("claude-sonnet-4-", Scope::Request));
        texts.remember("claude-sonnet-4-5", Scope::Response);
        assert!(texts.contains("claude-sonnet-4-5", Scope::Request));
        assert!(texts.contains("claude-sonnet-4-5", Scope::Response));
        let long = "x".repeat(MAX_LEN + 1);
        texts.remember(&long, Scope::Request);
        assert!(!texts.contains(&long, Scope::Request));
        let longest = "y".repeat(MAX_LEN);
        texts.remember(&longest, Scope::Request);
        assert!(texts.contains(&longest, Scope::Request));
    }

    #[test]
    fn a_text_that_takes_a_slot_starts_with_no_scope() {
        let texts = CleanTexts::default();
        // Two texts of one slot: the second replaces the first, with only its own scope.
        let first = "text-0".to_string();
        let second = (1..)
            .map(|n| format!("text-{n}"))
            .find(|t| slot_of(t.as_bytes()) == slot_of(first.as_bytes()))
            .expect("a text in the same slot");
        texts.remember(&first, Scope::Request);
        texts.remember(&first, Scope::Response);
        texts.remember(&second, Scope::ToolInput);
        assert!(!texts.contains(&first, Scope::Request));
        assert!(!texts.contains(&second, Scope::Request));
        assert!(!texts.contains(&second, Scope::Response));
        assert!(texts.contains(&second, Scope::ToolInput));
    }
}
