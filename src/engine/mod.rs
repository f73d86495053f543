//! The engine: rules as data, compiled into one Hyperscan database per mode, and the maskers
//! that turn text (whole, streamed in deltas, or the strings of a JSON document) into masked
//! text and findings.
//!
//! Layer: the bottom of the crate. It knows nothing of HTTP, the Claude API, callers or
//! observability, and imports no other module of the crate (`tests/layers.rs` enforces it).
//!
//! - [`rules`]: the data model of `rules/*.toml` and the embedded pack;
//! - [`matcher`]: Hyperscan candidates, confirmed and extracted with `regex`, on databases
//!   from [`databases`] (shared, embedded at build time, cached, or compiled);
//! - [`masker`]: block and streaming masking with placeholders from [`placeholder`];
//! - [`json_walk`]: every string of a JSON document scanned (with [`unescape`] views and a
//!   joined view of the text the model reads), only masked spans rewritten, findings in opaque
//!   values refused;
//! - [`keyword`]: rules whose Hyperscan expression is a key word, and the forward automaton
//!   that finds where their matches end;
//! - [`known`]: secrets found earlier in an exchange, masked wherever else they occur;
//! - [`validators`]: checks a personal-data candidate must pass besides its shape (Luhn,
//!   mod-97, reserved e-mail domains, phone numbering plans);
//! - [`dictionary`]: an organisation's own terms, matched as literals in the rules' databases;
//! - [`terms`]: the same terms in Aho-Corasick automata, scanned while a large dictionary's
//!   databases compile in the background;
//! - [`protected_code`]: winnowed fingerprints of protected source trees, and the search for
//!   runs of them in a request's text;
//! - [`findings`]: findings with where they were, the one way findings leave a producer;
//! - [`check`]: `rules check`, every rule run against its own examples.

pub mod check;
pub mod clean_texts;
pub mod database_key;
pub mod databases;
pub mod dictionary;
pub mod findings;
pub mod json_strings;
pub mod json_walk;
pub mod keyword;
pub mod known;
pub mod masker;
pub mod matcher;
pub mod placeholder;
pub mod protected_code;
pub mod rules;
pub mod terms;
pub mod unescape;
pub mod validators;

pub use findings::{Findings, Located};
pub use json_walk::{ThinkingMode, ThinkingRestore};
pub use masker::{Engine, Finding, MaskError, Masked, StreamMasker};
pub use rules::{Action, Rule, RuleSet, Scope};

/// `bytes` as the text a scan reads, invalid sequences replaced as `String::from_utf8_lossy`
/// replaces them. Valid text, nearly all of it, is borrowed after the standard check, which
/// is several times faster than the lossy reader's walk over the same bytes.
pub fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// An engine for unit tests: the rules of `toml` (one rule file's text), a fixed placeholder
/// key and the default hold cap.
#[cfg(test)]
pub(crate) fn test_engine(toml: &str) -> Engine {
    let set = RuleSet::from_toml("test-rules.toml", toml).expect("test rules parse");
    let key = placeholder::PlaceholderKey::new(b"0123456789abcdef0123").expect("test key");
    Engine::compile(&set, key, masker::DEFAULT_MAX_HOLD_BYTES).expect("test rules compile")
}
