//! Dictionaries: an organisation's own terms (code names, customer names, internal host names),
//! one per line in a text file, matched as literals in the same Hyperscan databases as the
//! rules.
//!
//! Invariants:
//! - a dictionary is a rule (`dict-<id>`): each of its terms is a literal Hyperscan pattern
//!   reporting the rule's index, so masking, placeholders, policy and the audit trail treat a
//!   term like any other finding, and a list of 100,000 terms costs one database, not 100,000
//!   regexes;
//! - where a match starts and ends is found by looking the text up among the terms of each
//!   length, longest first: the literal counterpart of a rule's reverse DFA and confirmer, and
//!   as exact (the same bytes are a term or are not);
//! - a whole-word term is accepted only where the byte before it and the byte after it are not
//!   word characters, on each side where the term itself begins or ends with one (so `C++` and
//!   `.corp.internal` work); the end of the text counts as a boundary, as `$` does for a rule,
//!   and the streaming masker re-confirms while a match may still grow;
//! - case-insensitive dictionaries fold ASCII letters only (the terms are names, and folding
//!   other scripts would change byte lengths);
//! - a term is never shown: `Debug` prints counts, errors and reports name lines by number.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Longest term accepted, in bytes (also the fold buffer's size).
pub const MAX_TERM_BYTES: usize = 256;

const COMMON_WORDS: &str = include_str!("common_words.txt");

#[derive(Debug, thiserror::Error)]
pub enum DictionaryError {
    #[error("cannot read dictionary file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dictionary {id:?}: line {line}: a term is at most {MAX_TERM_BYTES} bytes")]
    TooLong { id: String, line: usize },
    #[error("dictionary {id:?}: line {line}: a term may not hold control characters")]
    Control { id: String, line: usize },
    #[error("dictionary {id:?} has no terms")]
    Empty { id: String },
}

/// How a dictionary's terms are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchOptions {
    pub case_sensitive: bool,
    pub whole_word: bool,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions {
            case_sensitive: false,
            whole_word: true,
        }
    }
}

/// The terms of one dictionary, ready to match.
pub struct Dictionary {
    options: MatchOptions,
    /// As written (deduplicated), for the Hyperscan patterns.
    terms: Vec<Box<[u8]>>,
    /// The terms, ASCII-folded when the dictionary is case-insensitive.
    lookup: HashSet<Box<[u8]>>,
    /// Distinct term lengths, longest first.
    lengths: Vec<usize>,
    /// The most whitespace runs inside one term: how many words before the last one a streaming
    /// masker must hold back so a term spanning them is still whole when it is found.
    word_gaps: usize,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("terms", &self.terms.len())
            .field("options", &self.options)
            .finish()
    }
}

/// One term line of a dictionary file: its 1-based line number and its text.
struct TermLine<'a> {
    line: usize,
    term: &'a str,
}

/// The lines of `text` that hold terms (comments and blank lines skipped), plus the numbers of
/// the blank lines.
fn term_lines(text: &str) -> (Vec<TermLine<'_>>, Vec<usize>) {
    let mut terms = Vec::new();
    let mut blank = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let term = raw.trim();
        if term.is_empty() {
            blank.push(line);
        } else if !term.starts_with('#') {
            terms.push(TermLine { line, term });
        }
    }
    (terms, blank)
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80
}

impl Dictionary {
    /// Parse a dictionary file's text: one term per line, surrounding whitespace trimmed,
    /// lines starting with `#` and blank lines skipped, duplicates kept once.
    pub fn parse(
        id: &str,
        text: &str,
        options: MatchOptions,
    ) -> Result<Dictionary, DictionaryError> {
        let (lines, _) = term_lines(text);
        let mut terms = Vec::new();
        let mut lookup = HashSet::new();
        for TermLine { line, term } in lines {
            if term.len() > MAX_TERM_BYTES {
                return Err(DictionaryError::TooLong {
                    id: id.to_string(),
                    line,
                });
            }
            if term.chars().any(char::is_control) {
                return Err(DictionaryError::Control {
                    id: id.to_string(),
                    line,
                });
            }
            let folded = fold(term.as_bytes(), options.case_sensitive);
            if lookup.insert(folded.into_boxed_slice()) {
                terms.push(Box::from(term.as_bytes()));
            }
        }
        if terms.is_empty() {
            return Err(DictionaryError::Empty { id: id.to_string() });
        }
        let mut lengths: Vec<usize> = lookup.iter().map(|term| term.len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        let word_gaps = terms
            .iter()
            .map(|term| whitespace_runs(term))
            .max()
            .unwrap_or(0);
        Ok(Dictionary {
            options,
            terms,
            lookup,
            lengths,
            word_gaps,
        })
    }

    /// Read and parse a dictionary file.
    pub fn load(
        id: &str,
        path: &Path,
        options: MatchOptions,
    ) -> Result<Dictionary, DictionaryError> {
        let text = std::fs::read_to_string(path).map_err(|source| DictionaryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Dictionary::parse(id, &text, options)
    }

    pub fn options(&self) -> MatchOptions {
        self.options
    }

    pub fn len(&self) -> usize {
        self.terms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn shortest(&self) -> usize {
        self.lengths.last().copied().unwrap_or(0)
    }

    pub fn longest(&self) -> usize {
        self.lengths.first().copied().unwrap_or(0)
    }

    pub fn word_gaps(&self) -> usize {
        self.word_gaps
    }

    /// The terms as written (deduplicated), in the order of [`Dictionary::expressions`].
    pub fn terms(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.terms.iter().map(|term| &term[..])
    }

    /// One Hyperscan expression per term: the term's bytes, escaped.
    pub fn expressions(&self) -> impl Iterator<Item = String> + '_ {
        self.terms.iter().map(|term| escape_literal(term))
    }

    /// The start of the longest term ending exactly at `end` of `hay` (with its boundaries).
    pub fn start_of(&self, hay: &[u8], end: usize) -> Option<usize> {
        if end > hay.len() {
            return None;
        }
        self.lengths
            .iter()
            .filter(|&&len| len <= end)
            .map(|&len| end - len)
            .find(|&start| self.is_term_at(hay, start, end))
    }

    /// The end of the longest term starting exactly at `start` of `hay` (with its boundaries).
    pub fn end_of(&self, hay: &[u8], start: usize) -> Option<usize> {
        self.lengths
            .iter()
            .map(|&len| start.saturating_add(len))
            .filter(|&end| end <= hay.len())
            .find(|&end| self.is_term_at(hay, start, end))
    }

    fn is_term_at(&self, hay: &[u8], start: usize, end: usize) -> bool {
        let candidate = &hay[start..end];
        let mut buffer = [0u8; MAX_TERM_BYTES];
        let key: &[u8] = if self.options.case_sensitive {
            candidate
        } else {
            let folded = &mut buffer[..candidate.len()];
            folded.copy_from_slice(candidate);
            folded.make_ascii_lowercase();
            folded
        };
        if !self.lookup.contains(key) {
            return false;
        }
        if !self.options.whole_word {
            return true;
        }
        let starts_word = is_word_byte(candidate[0]);
        let ends_word = is_word_byte(candidate[candidate.len() - 1]);
        let before_ok = !starts_word || start == 0 || !is_word_byte(hay[start - 1]);
        let after_ok = !ends_word || end == hay.len() || !is_word_byte(hay[end]);
        before_ok && after_ok
    }
}

fn fold(term: &[u8], case_sensitive: bool) -> Vec<u8> {
    if case_sensitive {
        term.to_vec()
    } else {
        term.to_ascii_lowercase()
    }
}

fn whitespace_runs(term: &[u8]) -> usize {
    term.windows(2)
        .filter(|pair| !pair[0].is_ascii_whitespace() && pair[1].is_ascii_whitespace())
        .count()
}

/// A Hyperscan (and `regex`) expression matching exactly `term`'s bytes.
pub fn escape_literal(term: &[u8]) -> String {
    let mut expression = String::with_capacity(term.len() * 2);
    for &byte in term {
        if byte.is_ascii_alphanumeric() || byte == b'_' {
            expression.push(char::from(byte));
        } else {
            expression.push_str(&format!("\\x{byte:02x}"));
        }
    }
    expression
}

/// What `streammask dictionaries check` reports about a dictionary file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub terms: usize,
    /// Blank lines (1-based).
    pub empty_lines: Vec<usize>,
    /// (line, line of the first occurrence): the same term twice (after case folding when
    /// the dictionary is case-insensitive).
    pub duplicates: Vec<(usize, usize)>,
    /// (line, common word): a term equal to a common word or inside one, which would mask
    /// ordinary prose and code (inside a word only when the dictionary is not whole-word).
    pub common: Vec<(usize, &'static str)>,
    /// Lines whose term cannot be loaded, with why (too long, control characters).
    pub invalid: Vec<(usize, String)>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.empty_lines.is_empty()
            && self.duplicates.is_empty()
            && self.common.is_empty()
            && self.invalid.is_empty()
            && self.terms > 0
    }
}

fn common_words() -> impl Iterator<Item = &'static str> {
    COMMON_WORDS
        .lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(str::split_whitespace)
}

/// Check a dictionary file's text for what makes a list mask too much or too little.
pub fn check(text: &str, options: MatchOptions) -> CheckReport {
    let (lines, blank) = term_lines(text);
    let mut report = CheckReport {
        empty_lines: blank,
        ..CheckReport::default()
    };
    let mut first_seen: HashMap<Vec<u8>, usize> = HashMap::new();
    let words: Vec<&'static str> = common_words().collect();
    for TermLine { line, term } in lines {
        if term.len() > MAX_TERM_BYTES {
            report
                .invalid
                .push((line, format!("longer than {MAX_TERM_BYTES} bytes")));
            continue;
        }
        if term.chars().any(char::is_control) {
            report
                .invalid
                .push((line, "holds control characters".to_string()));
            continue;
        }
        report.terms += 1;
        let folded = fold(term.as_bytes(), options.case_sensitive);
        if let Some(&first) = first_seen.get(&folded) {
            report.duplicates.push((line, first));
            continue;
        }
        first_seen.insert(folded, line);
        let lower = term.to_ascii_lowercase();
        let hit = words.iter().find(|word| {
            if options.whole_word {
                **word == lower
            } else {
                word.contains(lower.as_str())
            }
        });
        if let Some(word) = hit {
            report.common.push((line, word));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(text: &str, case_sensitive: bool, whole_word: bool) -> Dictionary {
        Dictionary::parse(
            "test",
            text,
            MatchOptions {
                case_sensitive,
                whole_word,
            },
        )
        .expect("dictionary parses")
    }

    #[test]
    fn comments_blank_lines_and_duplicates_are_skipped() {
        let d = dict(
            "# code names\nFalcon\n\n  Falcon  \nfalcon\nOsprey\n",
            false,
            true,
        );
        assert_eq!(d.len(), 2, "Falcon once (case-insensitive), Osprey");
        let exact = dict("Falcon\nfalcon\n", true, true);
        assert_eq!(exact.len(), 2);
        assert!(matches!(
            Dictionary::parse("x", "# only a comment\n\n", MatchOptions::default()),
            Err(DictionaryError::Empty { .. })
        ));
        let long = "a".repeat(MAX_TERM_BYTES + 1);
        let err = Dictionary::parse("x", &format!("ok\n{long}\n"), MatchOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && !err.contains(&long), "{err}");
    }

    #[test]
    fn whole_word_terms_need_boundaries_on_their_word_sides_only() {
        let d = dict("falcon\nC++\n.corp.internal\n", false, true);
        let hay = b"Project Falcon ships; falconry is a sport; we use C++ at db.corp.internal";
        let find = |word: &str| {
            let at = hay
                .windows(word.len())
                .position(|w| w == word.as_bytes())
                .expect("in hay");
            (at, at + word.len())
        };
        let (start, end) = find("Falcon");
        assert_eq!(d.start_of(hay, end), Some(start));
        assert_eq!(d.end_of(hay, start), Some(end));
        let (start, _) = find("falconry");
        assert_eq!(d.end_of(hay, start), None, "inside a longer word");
        assert_eq!(d.start_of(hay, start + 6), None);
        let (start, end) = find("C++");
        assert_eq!(d.end_of(hay, start), Some(end), "a term ending in `+`");
        let (start, end) = find(".corp.internal");
        assert_eq!(
            d.start_of(hay, end),
            Some(start),
            "a term starting with `.` after a word"
        );
    }

    #[test]
    fn substring_dictionaries_match_inside_words_and_case_sensitive_ones_keep_case() {
        let inside = dict("falcon\n", false, false);
        assert_eq!(inside.end_of(b"falconry", 0), Some(6));
        let exact = dict("Falcon\n", true, true);
        assert_eq!(exact.end_of(b"Falcon", 0), Some(6));
        assert_eq!(exact.end_of(b"FALCON", 0), None);
        let folded = dict("Falcon\n", false, true);
        assert_eq!(folded.end_of(b"FALCON", 0), Some(6));
    }

    #[test]
    fn the_longest_term_wins_and_multi_word_terms_count_their_gaps() {
        let d = dict("acme\nacme corp\nacme corp europe\n", false, true);
        assert_eq!(d.end_of(b"acme corp europe ltd", 0), Some(16));
        assert_eq!(d.end_of(b"acme corporation", 0), Some(4));
        assert_eq!(d.start_of(b"the acme corp", 13), Some(4));
        assert_eq!(d.word_gaps(), 2);
    }

    #[test]
    fn escaped_literals_are_bytes_exactly() {
        assert_eq!(escape_literal(b"a.b"), "a\\x2eb");
        assert_eq!(escape_literal("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(escape_literal(b"x_1"), "x_1");
    }

    #[test]
    fn debug_shows_no_term() {
        let d = dict("Falcon\n", false, true);
        assert!(!format!("{d:?}").contains("Falcon"));
    }

    #[test]
    fn check_reports_blank_lines_duplicates_and_common_words() {
        let text = "Falcon\n\nfalcon\nserver\nOsprey\n";
        let report = check(text, MatchOptions::default());
        assert_eq!(report.terms, 4);
        assert_eq!(report.empty_lines, vec![2]);
        assert_eq!(report.duplicates, vec![(3, 1)]);
        assert_eq!(report.common, vec![(4, "server")]);
        assert!(!report.passed());
        let inside = check(
            "erve\n",
            MatchOptions {
                case_sensitive: false,
                whole_word: false,
            },
        );
        assert_eq!(inside.common.len(), 1, "`erve` is inside `server`");
        assert!(check("erve\n", MatchOptions::default()).passed());
        assert!(check("Falcon\nOsprey\n", MatchOptions::default()).passed());
    }
}
