//! Secrets already found in an exchange, masked wherever else they occur.
//!
//! A rule often recognises a secret only by its context (`x token = 'T'`): the same bytes
//! repeated bare (`| 'T'`, a later tool result, the model quoting them back) have no context,
//! and no rule would find them there. A [`KnownSecrets`] set holds the secrets one scan
//! confirmed and finds every other occurrence of them, so an [`crate::engine::Engine`] built
//! with it ([`crate::engine::Engine::with_known`]) masks all of them with the placeholder of
//! the rule that found the secret.
//!
//! Invariants:
//! - only single-line secrets are known: at least [`MIN_KNOWN_LEN`] bytes, no ASCII
//!   whitespace, at most the engine's longest match. The streaming masker holds the trailing
//!   whitespace-free run of its text, so an occurrence still arriving is never emitted before
//!   it can be found, and streaming still equals block;
//! - every occurrence is reported, overlapping ones included, so block mode (one pass over the
//!   whole text) and streaming (each occurrence once, when its last byte arrives) find the
//!   same set;
//! - one byte string belongs to one rule: found by several, it keeps the rule that names it
//!   most precisely (a format rule over a context rule, then the lowest rule index), so every
//!   occurrence gets the same placeholder;
//! - `Debug` shows counts only: the set holds raw secrets.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use std::collections::HashMap;
use std::ops::Range;

/// Shorter secrets are not propagated: a few bytes occur by chance in ordinary text.
pub const MIN_KNOWN_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    #[error("cannot build the known-secrets automaton: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

/// A secret a scan confirmed: the rule that found it and its bytes.
#[derive(Clone, Copy)]
pub struct Confirmed<'s> {
    pub rule: u32,
    /// Whether the rule is a context rule (`generic = true`); a format rule is preferred.
    pub generic: bool,
    pub secret: &'s [u8],
}

pub struct KnownSecrets {
    automaton: AhoCorasick,
    /// The rule of each pattern, by pattern index.
    rules: Vec<u32>,
    longest: usize,
    shortest: usize,
}

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecrets")
            .field("secrets", &self.rules.len())
            .field("longest", &self.longest)
            .finish()
    }
}

impl KnownSecrets {
    /// The set of `confirmed` secrets that may be propagated (see the module docs) for an
    /// engine whose longest match is `max_len`; `None` when none may.
    pub fn new<'s>(
        confirmed: impl IntoIterator<Item = Confirmed<'s>>,
        max_len: usize,
    ) -> Result<Option<KnownSecrets>, KnownError> {
        let mut owner: HashMap<&[u8], (bool, u32)> = HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        for found in confirmed {
            let secret = found.secret;
            if secret.len() < MIN_KNOWN_LEN
                || secret.len() > max_len
                || secret.iter().any(u8::is_ascii_whitespace)
            {
                continue;
            }
            let rank = (found.generic, found.rule);
            owner
                .entry(secret)
                .and_modify(|best| *best = (*best).min(rank))
                .or_insert_with(|| {
                    order.push(secret);
                    rank
                });
        }
        if order.is_empty() {
            return Ok(None);
        }
        let rules = order.iter().map(|secret| owner[secret].1).collect();
        let longest = order.iter().map(|s| s.len()).max().unwrap_or(0);
        let shortest = order.iter().map(|s| s.len()).min().unwrap_or(0);
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&order)?;
        Ok(Some(KnownSecrets {
            automaton,
            rules,
            longest,
            shortest,
        }))
    }

    /// The longest known secret, in bytes.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The shortest known secret, in bytes: shorter texts hold none.
    pub fn shortest(&self) -> usize {
        self.shortest
    }

    /// How many secrets are known.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every occurrence of a known secret in `hay` (overlapping ones too), with its rule.
    pub fn find(&self, hay: &[u8], mut found: impl FnMut(u32, Range<usize>)) {
        for hit in self.automaton.find_overlapping_iter(hay) {
            found(self.rules[hit.pattern().as_usize()], hit.start()..hit.end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmed(rule: u32, generic: bool, secret: &str) -> Confirmed<'_> {
        Confirmed {
            rule,
            generic,
            secret: secret.as_bytes(),
        }
    }

    fn occurrences(known: &KnownSecrets, hay: &str) -> Vec<(u32, Range<usize>)> {
        let mut out = Vec::new();
        known.find(hay.as_bytes(), |rule, span| out.push((rule, span)));
        out
    }

    #[test]
    fn short_multi_line_and_oversized_secrets_are_not_known() {
        let none = KnownSecrets::new(
            [
                confirmed(1, true, "short"),
                confirmed(1, true, "two words here"),
                confirmed(1, true, &"x".repeat(40)),
            ],
            32,
        )
        .expect("builds");
        assert!(none.is_none());
    }

    #[test]
    fn every_occurrence_is_found_overlapping_ones_too() {
        let known = KnownSecrets::new(
            [
                confirmed(3, true, "abcdefgh12"),
                confirmed(4, true, "defgh12345"),
            ],
            64,
        )
        .expect("builds")
        .expect("known");
        assert_eq!(
            occurrences(&known, "x abcdefgh12345 abcdefgh12"),
            vec![(3, 2..12), (4, 5..15), (3, 16..26)]
        );
    }

    #[test]
    fn a_secret_found_by_several_rules_keeps_the_format_rule_then_the_lowest_index() {
        let known = KnownSecrets::new(
            [
                confirmed(2, true, "T0kenValue99"),
                confirmed(9, false, "T0kenValue99"),
                confirmed(7, false, "T0kenValue99"),
            ],
            64,
        )
        .expect("builds")
        .expect("known");
        assert_eq!(known.len(), 1);
        assert_eq!(occurrences(&known, "T0kenValue99"), vec![(7, 0..12)]);
        assert!(!format!("{known:?}").contains("T0ken"));
    }
}
