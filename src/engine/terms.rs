//! Dictionary terms matched by Aho-Corasick automata: what the matcher scans with while the
//! Hyperscan databases that hold a large dictionary are compiled in the background (a list of
//! 100,000 terms takes seconds of Hyperscan compile per mode, these automata a fraction of a
//! second).
//!
//! Invariants:
//! - the same candidates as Hyperscan's literal patterns for the same terms: one `(rule, end)`
//!   for every term (as written, deduplicated) that ends at `end`, overlapping ones included,
//!   ASCII letters folded for a case-insensitive dictionary and nothing else; where a match
//!   starts, and whether its boundaries make it a whole word, is decided afterwards by the
//!   dictionary itself, as for a Hyperscan candidate;
//! - a stream's state is one automaton state per automaton and the offset it has reached, so
//!   streamed text gives the candidates the whole text gives in one block, at any chunking;
//! - a term is never shown: errors name the automaton, not what it holds.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, MatchKind};
use std::cell::Cell;

#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    #[error("the {case} term automaton: {message}")]
    Build { case: &'static str, message: String },
}

/// One automaton per case mode, each with the rule every pattern reports for.
pub struct TermAutomata {
    automata: Vec<(NFA, Vec<u32>)>,
    terms: usize,
}

impl std::fmt::Debug for TermAutomata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TermAutomata")
            .field("automata", &self.automata.len())
            .field("terms", &self.terms)
            .finish()
    }
}

impl TermAutomata {
    /// `terms`: (rule index, case-sensitive, term bytes) for every term of every dictionary.
    pub fn build<'a>(
        terms: impl IntoIterator<Item = (u32, bool, &'a [u8])>,
    ) -> Result<TermAutomata, TermsError> {
        let mut sensitive: (Vec<&[u8]>, Vec<u32>) = Default::default();
        let mut caseless: (Vec<&[u8]>, Vec<u32>) = Default::default();
        for (rule, case_sensitive, term) in terms {
            let side = if case_sensitive {
                &mut sensitive
            } else {
                &mut caseless
            };
            side.0.push(term);
            side.1.push(rule);
        }
        let count = sensitive.0.len() + caseless.0.len();
        let mut automata = Vec::new();
        for ((patterns, rules), fold, case) in [
            (sensitive, false, "case-sensitive"),
            (caseless, true, "case-insensitive"),
        ] {
            if patterns.is_empty() {
                continue;
            }
            let nfa = NFA::builder()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(fold)
                .build(&patterns)
                .map_err(|e| TermsError::Build {
                    case,
                    message: e.to_string(),
                })?;
            automata.push((nfa, rules));
        }
        Ok(TermAutomata {
            automata,
            terms: count,
        })
    }

    pub fn terms(&self) -> usize {
        self.terms
    }

    /// Bytes one open stream's state costs.
    pub fn stream_size(&self) -> usize {
        std::mem::size_of::<TermStream>()
            + self.automata.len() * std::mem::size_of::<Cell<StateID>>()
    }

    /// A stream at offset 0.
    pub fn open(&self) -> TermStream {
        TermStream {
            states: self
                .automata
                .iter()
                .map(|(nfa, _)| Cell::new(start(nfa)))
                .collect(),
            offset: Cell::new(0),
        }
    }

    /// Every candidate in `text` as `(rule, end)`, ends counted from `base`; each automaton's
    /// candidates in end order, one automaton after the other.
    pub fn scan_block(&self, text: &[u8], mut report: impl FnMut(u32, usize)) {
        for (nfa, rules) in &self.automata {
            walk(nfa, rules, start(nfa), text, 0, &mut report);
        }
    }

    /// The next bytes of `stream`, reported as [`TermAutomata::scan_block`] reports them, with
    /// absolute ends.
    pub fn scan_stream(
        &self,
        stream: &TermStream,
        chunk: &[u8],
        mut report: impl FnMut(u32, usize),
    ) {
        let base = stream.offset.get();
        for ((nfa, rules), state) in self.automata.iter().zip(&stream.states) {
            state.set(walk(nfa, rules, state.get(), chunk, base, &mut report));
        }
        stream.offset.set(base + chunk.len());
    }
}

fn start(nfa: &NFA) -> StateID {
    // An unanchored start state exists for every automaton built with the default start kind.
    nfa.start_state(Anchored::No)
        .unwrap_or_else(|_| unreachable!("unanchored searches are built in by default"))
}

/// Step `nfa` over `text` from `state`; returns the state reached.
fn walk(
    nfa: &NFA,
    rules: &[u32],
    mut state: StateID,
    text: &[u8],
    base: usize,
    report: &mut impl FnMut(u32, usize),
) -> StateID {
    for (at, &byte) in text.iter().enumerate() {
        state = nfa.next_state(Anchored::No, state, byte);
        if nfa.is_special(state) && nfa.is_match(state) {
            for index in 0..nfa.match_len(state) {
                let pattern = nfa.match_pattern(state, index);
                if let Some(&rule) = rules.get(pattern.as_usize()) {
                    report(rule, base + at + 1);
                }
            }
        }
    }
    state
}

/// Where a stream of [`TermAutomata`] is.
#[derive(Debug)]
pub struct TermStream {
    states: Vec<Cell<StateID>>,
    offset: Cell<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(automata: &TermAutomata, text: &[u8]) -> Vec<(u32, usize)> {
        let mut found = Vec::new();
        automata.scan_block(text, |rule, end| found.push((rule, end)));
        found.sort();
        found
    }

    #[test]
    fn overlapping_terms_each_report_their_end_and_case_folds_ascii_only() {
        let automata = TermAutomata::build([
            (0, false, &b"bluebird"[..]),
            (0, false, b"bird"),
            (1, true, b"Falcon"),
        ])
        .expect("builds");
        assert_eq!(
            candidates(&automata, b"a BLUEBIRD, a falcon, a Falcon"),
            vec![(0, 10), (0, 10), (1, 30)]
        );
    }

    #[test]
    fn a_stream_at_every_cut_reports_what_the_block_reports() {
        let automata = TermAutomata::build([
            (3, false, &b"project hydra"[..]),
            (4, true, b"db-7.corp.internal"),
            (4, true, b"corp"),
        ])
        .expect("builds");
        let text = b"ask Project Hydra about db-7.corp.internal and corp.";
        let block = candidates(&automata, text);
        assert_eq!(block.len(), 4);
        for cut in 0..=text.len() {
            let stream = automata.open();
            let mut found = Vec::new();
            for part in [&text[..cut], &text[cut..]] {
                automata.scan_stream(&stream, part, |rule, end| found.push((rule, end)));
            }
            found.sort();
            assert_eq!(found, block, "cut at {cut}");
        }
    }
}
