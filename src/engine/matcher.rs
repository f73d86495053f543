//! The matcher: every enabled rule compiled into one Hyperscan block database and one streaming
//! database, plus, per rule, a reverse DFA that finds where a match starts and a `regex`
//! confirmer that extracts the secret.
//!
//! Hyperscan reports *candidates* `(rule, end)`; the reverse DFA, run anchored at `end`, gives
//! the leftmost start of a match ending there; the confirmer runs the rule's regex anchored at
//! that start and extracts the secret span. Candidates are the same whether the text is scanned
//! in one block or streamed in any chunking (Hyperscan guarantees it), which is what the
//! streaming masker builds its "streaming equals block" invariant on.
//!
//! Why not Hyperscan's own start of match (`SOM_LEFTMOST`): it refuses many ordinary secret
//! patterns ("Pattern is too large" for bounded repeats such as `[A-Za-z0-9]{20,255}`), makes
//! stream state several times larger and scanning slower. Candidates are rare, so finding the
//! start with the `regex` engines costs nothing on the no-match path.
//!
//! Invariants:
//! - offsets handed out are absolute offsets into the logical text (block: the buffer; stream:
//!   bytes since the stream opened);
//! - every compiled rule has a finite maximum match length, `max_match_len` is their maximum;
//! - scratch space is per thread and per matcher generation, so a swapped matcher never shares
//!   scratch with the old one and no lock is taken on the scan path;
//! - a Hyperscan stream is always closed (its state is freed only by `hs_close_stream`).

use crate::engine::rules::{Action, Rule, RuleSet};
use hyperscan::prelude::*;
use hyperscan::{CompileFlags, ScratchRef, Serialized};
use regex_automata::{
    hybrid::dfa::{Cache as ReverseCache, DFA as ReverseDfa},
    meta,
    nfa::thompson,
    util::pool::Pool,
    util::{captures::Captures, syntax},
    Anchored, Input, MatchKind, PatternID,
};
use std::{
    cell::RefCell,
    ops::Range,
    sync::atomic::{AtomicU64, Ordering},
};

/// Longest match any rule may have unless the caller configures more. Private-key bodies are
/// the longest secrets in practice (an RSA-4096 PEM is ~3.3 KB).
pub const DEFAULT_MAX_MATCH_LEN: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("{} rule(s) failed to compile:\n{}", .0.len(), render_rule_errors(.0))]
    Rules(Vec<RuleError>),
    #[error("hyperscan: {0}")]
    Hyperscan(String),
}

/// A problem with one rule, reported by id.
#[derive(Debug, Clone)]
pub struct RuleError {
    pub id: String,
    pub message: String,
}

fn render_rule_errors(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {}: {}", e.id, e.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Hyperscan report: a match of `rule` ends at absolute offset `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    pub rule: u32,
    pub end: usize,
}

/// What the confirmer extracted from a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The secret's span, widened to whole UTF-8 characters; `None` when an `ignore` guard
    /// dropped it (the match itself still counts for deciding when the candidate is final).
    pub secret: Option<Range<usize>>,
    /// Where the regex match ended (the secret may be followed by one terminator).
    pub match_end: usize,
}

/// One rule ready to run.
#[derive(Debug)]
pub struct CompiledRule {
    pub rule: Rule,
    /// Reverse lazy DFA, anchored at the match end, longest match: yields the leftmost start.
    /// (A fully built DFA explodes for bounded repeats; the lazy one builds only the states a
    /// search visits.)
    reverse: ReverseDfa,
    reverse_caches: Pool<ReverseCache, CacheFactory>,
    confirm: meta::Regex,
    secret_group: Option<usize>,
    ignore: Vec<meta::Regex>,
    /// Hyperscan's maximum match width for this rule.
    pub max_len: usize,
    /// Hyperscan's minimum match width for this rule.
    pub min_len: usize,
    pub scope_bits: u8,
    /// What a preview of a secret this rule found may show: the literal its matches start with
    /// (see [`literal_prefix`]).
    pub preview_prefix: String,
}

impl CompiledRule {
    pub fn id(&self) -> &str {
        &self.rule.id
    }

    pub fn action(&self) -> Action {
        self.rule.action
    }

    pub fn checksum(&self) -> Option<crate::engine::rules::Checksum> {
        self.rule.checksum
    }
}

/// Matcher generations are numbered process-wide so that per-thread scratch space, which is
/// keyed by generation, is never shared between a matcher and one that replaced it. A number
/// source, not shared state: nothing reads it but `Matcher::compile`.
static GENERATION: AtomicU64 = AtomicU64::new(1);

pub struct Matcher {
    rules: Vec<CompiledRule>,
    block_db: BlockDatabase,
    stream_db: StreamingDatabase,
    generation: u64,
    max_match_len: usize,
    min_match_len: usize,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("rules", &self.rules.len())
            .field("generation", &self.generation)
            .field("max_match_len", &self.max_match_len)
            .finish()
    }
}

fn confirm_regex(pattern: &str) -> Result<meta::Regex, String> {
    meta::Regex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(meta::Config::new().utf8_empty(false))
        .build(pattern)
        .map_err(|e| format!("regex: {e}"))
}

type CacheFactory = Box<
    dyn Fn() -> ReverseCache + Send + Sync + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
>;

fn reverse_dfa(pattern: &str) -> Result<ReverseDfa, String> {
    ReverseDfa::builder()
        .configure(
            ReverseDfa::config()
                .match_kind(MatchKind::All)
                .cache_capacity(1 << 20),
        )
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().reverse(true).utf8(false))
        .build(pattern)
        .map_err(|e| format!("reverse DFA: {e}"))
}

fn hyperscan_pattern(rule: &Rule, id: usize) -> Pattern {
    Pattern {
        expression: rule.pattern.clone(),
        flags: CompileFlags::empty(),
        id: Some(id),
        ext: Default::default(),
        som: None,
    }
}

/// Compile one rule under both engines; the error message says which engine refused it.
fn compile_rule(rule: &Rule, max_match_len: usize) -> Result<CompiledRule, String> {
    let pattern = hyperscan_pattern(rule, 0);
    let info = pattern.info().map_err(|e| format!("hyperscan: {e}"))?;
    let max_len = info.max_width();
    let min_len = info.min_width();
    if max_len == u32::MAX as usize || max_len == usize::MAX {
        return Err("pattern has no finite maximum length (use bounded quantifiers)".into());
    }
    if max_len > max_match_len {
        return Err(format!(
            "maximum match length {max_len} exceeds the limit {max_match_len}"
        ));
    }
    let reverse = reverse_dfa(&rule.pattern)?;
    let factory_dfa = reverse.clone();
    let reverse_caches: Pool<ReverseCache, CacheFactory> =
        Pool::new(Box::new(move || factory_dfa.create_cache()));
    let confirm = confirm_regex(&rule.pattern)?;
    let secret_group = confirm.group_info().to_index(PatternID::ZERO, "secret");
    let ignore = rule
        .ignore
        .iter()
        .map(|pattern| confirm_regex(pattern).map_err(|e| format!("ignore {pattern:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CompiledRule {
        rule: rule.clone(),
        reverse,
        reverse_caches,
        confirm,
        secret_group,
        ignore,
        max_len,
        min_len,
        scope_bits: rule.scope_bits(),
        preview_prefix: literal_prefix(&rule.pattern),
    })
}

/// The literal every match of `pattern`'s secret (group `secret`, else the whole match) starts
/// with, cut to 4 characters; empty when there is none or it is case-insensitive. It comes from
/// the pattern, never from a secret, so it may be shown where the secret may not.
pub fn literal_prefix(pattern: &str) -> String {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::{Hir, HirKind};
    fn secret_group(hir: &Hir) -> Option<&Hir> {
        match hir.kind() {
            HirKind::Capture(cap) if cap.name.as_deref() == Some("secret") => Some(&cap.sub),
            HirKind::Capture(cap) => secret_group(&cap.sub),
            HirKind::Repetition(rep) => secret_group(&rep.sub),
            HirKind::Concat(items) | HirKind::Alternation(items) => {
                items.iter().find_map(secret_group)
            }
            _ => None,
        }
    }
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return String::new();
    };
    let target = secret_group(&hir).unwrap_or(&hir);
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(target);
    let Some(common) = seq.longest_common_prefix() else {
        return String::new();
    };
    // A case-insensitive prefix expands into several literals whose common prefix is empty.
    String::from_utf8_lossy(common)
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(4)
        .collect()
}

/// Environment variable naming a directory where compiled Hyperscan databases are cached.
/// Compiling the default pack takes seconds; loading a cached database takes milliseconds.
/// Off unless set: the directory must be writable only by the service, because a database
/// loaded from it decides what gets masked.
pub const HS_CACHE_ENV: &str = "STREAMMASK_HS_CACHE_DIR";

/// Build a database, or load it from the cache directory when one is configured and holds a
/// database compiled from exactly these expressions, flags and ids by this Hyperscan version.
fn cached_build<M: hyperscan::Mode>(
    patterns: &Patterns,
    mode: &str,
) -> Result<hyperscan::Database<M>, hyperscan::Error> {
    use sha2::{Digest, Sha256};
    let Some(dir) = std::env::var_os(HS_CACHE_ENV).map(std::path::PathBuf::from) else {
        return patterns.build();
    };
    let mut hasher = Sha256::new();
    hasher.update(hyperscan::version_str().to_bytes());
    hasher.update(mode.as_bytes());
    for pattern in patterns.iter() {
        hasher.update(pattern.id.unwrap_or(0).to_le_bytes());
        hasher.update(pattern.flags.bits().to_le_bytes());
        hasher.update((pattern.expression.len() as u64).to_le_bytes());
        hasher.update(pattern.expression.as_bytes());
    }
    let path = dir.join(format!("{}.{mode}.hsdb", hex::encode(hasher.finalize())));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(db) = bytes.deserialize::<M>() {
            return Ok(db);
        }
    }
    let db: hyperscan::Database<M> = patterns.build()?;
    if let Ok(serialized) = db.serialize() {
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&temporary, &serialized[..]))
            .and_then(|_| std::fs::rename(&temporary, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
    }
    Ok(db)
}

/// Compile each rule alone under both Hyperscan modes and report the ones that fail.
fn blame_rules(rules: &[CompiledRule]) -> Vec<RuleError> {
    let mut errors = Vec::new();
    for compiled in rules {
        let pattern = hyperscan_pattern(&compiled.rule, 0);
        let block: Result<BlockDatabase, _> = pattern.build();
        let stream: Result<StreamingDatabase, _> = pattern.build();
        let message = match (block, stream) {
            (Err(e), _) => format!("hyperscan (block): {e}"),
            (_, Err(e)) => format!("hyperscan (streaming): {e}"),
            _ => continue,
        };
        errors.push(RuleError {
            id: compiled.rule.id.clone(),
            message,
        });
    }
    errors
}

thread_local! {
    /// (matcher generation, scratch valid for both of its databases). A handful of entries so
    /// a thread serving two matchers during a swap does not reallocate on every call.
    static SCRATCH: RefCell<Vec<(u64, Scratch)>> = const { RefCell::new(Vec::new()) };
}

const SCRATCH_SLOTS: usize = 4;

impl Matcher {
    /// Compile every enabled rule. All broken rules are reported together, by id.
    pub fn compile(set: &RuleSet, max_match_len: usize) -> Result<Matcher, MatcherError> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for rule in set.enabled() {
            match compile_rule(rule, max_match_len) {
                Ok(compiled) => rules.push(compiled),
                Err(message) => errors.push(RuleError {
                    id: rule.id.clone(),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(MatcherError::Rules(errors));
        }
        Self::from_compiled(rules)
    }

    fn from_compiled(rules: Vec<CompiledRule>) -> Result<Matcher, MatcherError> {
        // An empty rule set is legal (everything passes); Hyperscan refuses an empty database,
        // so compile a pattern that cannot match any text we scan.
        let patterns: Patterns = if rules.is_empty() {
            Patterns(vec![Pattern {
                expression: r"\x00streammask-no-rules\x00\x01".into(),
                flags: CompileFlags::empty(),
                id: Some(u32::MAX as usize),
                ext: Default::default(),
                som: None,
            }])
        } else {
            Patterns(
                rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| hyperscan_pattern(&r.rule, i))
                    .collect(),
            )
        };
        let (block_db, stream_db) = match (
            cached_build(&patterns, "block"),
            cached_build(&patterns, "stream"),
        ) {
            (Ok(block), Ok(stream)) => (block, stream),
            (block, stream) => {
                // Compiling rule by rule is slow, so it is done only to name the culprit.
                let errors = blame_rules(&rules);
                if !errors.is_empty() {
                    return Err(MatcherError::Rules(errors));
                }
                let message = block
                    .err()
                    .or(stream.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                return Err(MatcherError::Hyperscan(message));
            }
        };
        let max_match_len = rules.iter().map(|r| r.max_len).max().unwrap_or(0);
        let min_match_len = rules.iter().map(|r| r.min_len).min().unwrap_or(usize::MAX);
        Ok(Matcher {
            rules,
            block_db,
            stream_db,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            max_match_len,
            min_match_len,
        })
    }

    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    pub fn rule_by_id(&self, id: &str) -> Option<&CompiledRule> {
        self.rules.iter().find(|r| r.id() == id)
    }

    pub fn rule(&self, index: u32) -> &CompiledRule {
        &self.rules[index as usize]
    }

    pub fn max_match_len(&self) -> usize {
        self.max_match_len
    }

    /// No rule can match a text shorter than this.
    pub fn min_match_len(&self) -> usize {
        self.min_match_len
    }

    /// Bytes of Hyperscan state one open stream costs.
    pub fn stream_state_size(&self) -> usize {
        self.stream_db.stream_size().unwrap_or(0)
    }

    fn with_scratch<R>(&self, f: impl FnOnce(&ScratchRef) -> R) -> Result<R, MatcherError> {
        SCRATCH.with(|slots| {
            let mut slots = slots.borrow_mut();
            let position = slots.iter().position(|(gen, _)| *gen == self.generation);
            let index = match position {
                Some(index) => index,
                None => {
                    let mut scratch = self
                        .block_db
                        .alloc_scratch()
                        .map_err(|e| MatcherError::Hyperscan(e.to_string()))?;
                    self.stream_db
                        .realloc_scratch(&mut scratch)
                        .map_err(|e| MatcherError::Hyperscan(e.to_string()))?;
                    if slots.len() >= SCRATCH_SLOTS {
                        slots.remove(0);
                    }
                    slots.push((self.generation, scratch));
                    slots.len() - 1
                }
            };
            Ok(f(&slots[index].1))
        })
    }

    fn known_rule(&self, id: u32) -> bool {
        (id as usize) < self.rules.len()
    }

    /// Every candidate in `text`, in Hyperscan's report order (by end offset).
    pub fn scan_block(
        &self,
        text: &[u8],
        mut on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        self.scan_block_while(text, |candidate| {
            on_candidate(candidate);
            true
        })
        .map(|_| ())
    }

    /// [`Matcher::scan_block`] that stops as soon as `on_candidate` returns `false`; returns
    /// whether the whole text was scanned.
    pub fn scan_block_while(
        &self,
        text: &[u8],
        mut on_candidate: impl FnMut(Candidate) -> bool,
    ) -> Result<bool, MatcherError> {
        let mut stopped = false;
        let scanned = self.with_scratch(|scratch| {
            self.block_db.scan(text, scratch, |id, _, to, _| {
                if self.known_rule(id)
                    && !on_candidate(Candidate {
                        rule: id,
                        end: to as usize,
                    })
                {
                    stopped = true;
                    return Matching::Terminate;
                }
                Matching::Continue
            })
        })?;
        match scanned {
            Ok(()) => Ok(true),
            // Hyperscan reports a scan the callback ended as an error.
            Err(_) if stopped => Ok(false),
            Err(e) => Err(MatcherError::Hyperscan(e.to_string())),
        }
    }

    pub fn open_stream(&self) -> Result<Stream, MatcherError> {
        self.stream_db
            .open_stream()
            .map_err(|e| MatcherError::Hyperscan(e.to_string()))
    }

    /// Feed the next bytes of a stream; candidates carry absolute offsets.
    pub fn scan_stream(
        &self,
        stream: &Stream,
        chunk: &[u8],
        mut on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        self.with_scratch(|scratch| {
            stream.scan(chunk, scratch, |id, _, to, _| {
                if self.known_rule(id) {
                    on_candidate(Candidate {
                        rule: id,
                        end: to as usize,
                    });
                }
                Matching::Continue
            })
        })?
        .map_err(|e| MatcherError::Hyperscan(e.to_string()))
    }

    /// End a stream, reporting matches that only complete at end of data.
    pub fn close_stream(
        &self,
        stream: Stream,
        mut on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        self.with_scratch(|scratch| {
            stream.close(scratch, |id, _, to, _| {
                if self.known_rule(id) {
                    on_candidate(Candidate {
                        rule: id,
                        end: to as usize,
                    });
                }
                Matching::Continue
            })
        })?
        .map_err(|e| MatcherError::Hyperscan(e.to_string()))
    }

    /// The leftmost start of a match of `rule` ending exactly at absolute offset `end`, with
    /// `hay` holding the text from absolute offset `base` (it must reach back at least the
    /// rule's maximum length before `end`, plus one byte of look-behind).
    pub fn start_of(&self, rule: u32, hay: &[u8], base: usize, end: usize) -> Option<usize> {
        let compiled = &self.rules[rule as usize];
        let local_end = end.checked_sub(base)?;
        if local_end > hay.len() {
            return None;
        }
        let window_start = local_end.saturating_sub(compiled.max_len);
        let input = Input::new(hay)
            .range(window_start..local_end)
            .anchored(Anchored::Yes);
        let mut cache = compiled.reverse_caches.get();
        match compiled.reverse.try_search_rev(&mut cache, &input) {
            Ok(Some(half)) => Some(half.offset() + base),
            _ => None,
        }
    }

    /// Run rule `rule`'s regex anchored at `start` in `hay` (which holds the text from absolute
    /// offset `base`). Returns `None` when the regex does not match there.
    pub fn confirm(&self, rule: u32, hay: &[u8], base: usize, start: usize) -> Option<Confirmed> {
        let compiled = &self.rules[rule as usize];
        let local_start = start.checked_sub(base)?;
        if local_start > hay.len() {
            return None;
        }
        // A match is at most `max_len` bytes; one more byte lets a trailing look-around see
        // what follows. Bounding the input keeps the anchored search from reading further.
        let local_end = local_start
            .saturating_add(compiled.max_len.saturating_add(1))
            .min(hay.len());
        let input = Input::new(hay)
            .range(local_start..local_end)
            .anchored(Anchored::Yes);
        let mut caps: Captures = compiled.confirm.create_captures();
        compiled.confirm.search_captures(&input, &mut caps);
        let whole = caps.get_match()?;
        let span = compiled
            .secret_group
            .and_then(|group| caps.get_group(group))
            .unwrap_or_else(|| whole.span());
        if span.is_empty() {
            return Some(Confirmed {
                secret: None,
                match_end: whole.end() + base,
            });
        }
        let secret = &hay[span.start..span.end];
        let ignored = compiled
            .ignore
            .iter()
            .any(|guard| guard.is_match(Input::new(secret)));
        let widened = widen_to_char_boundaries(hay, span.start..span.end);
        Some(Confirmed {
            secret: (!ignored).then(|| widened.start + base..widened.end + base),
            match_end: whole.end() + base,
        })
    }
}

fn is_utf8_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// Regexes run with Unicode off, so a span can start or end inside a multi-byte character;
/// replacing such a span would leave invalid UTF-8 behind.
fn widen_to_char_boundaries(hay: &[u8], mut span: Range<usize>) -> Range<usize> {
    while span.start > 0 && span.start < hay.len() && is_utf8_continuation(hay[span.start]) {
        span.start -= 1;
    }
    while span.end < hay.len() && is_utf8_continuation(hay[span.end]) {
        span.end += 1;
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes_come_from_the_pattern_only() {
        assert_eq!(literal_prefix("ghp_[A-Za-z0-9]{36}"), "ghp_");
        assert_eq!(literal_prefix("AKIA[0-9A-Z]{16}"), "AKIA");
        assert_eq!(literal_prefix("sk-ant-api03-[A-Za-z0-9_-]{90,}"), "sk-a");
        assert_eq!(
            literal_prefix(r"password\s*=\s*(?P<secret>[^\s]{8,64})"),
            ""
        );
        assert_eq!(
            literal_prefix(r"token: (?P<secret>xoxb-[0-9]{10,})"),
            "xoxb"
        );
        assert_eq!(literal_prefix("(?i)secret_[a-z]{10}"), "");
        assert_eq!(literal_prefix("("), "");
    }

    fn set(toml: &str) -> RuleSet {
        RuleSet::from_toml("test.toml", toml).expect("rules parse")
    }

    const DEMO: &str = r#"
[[rules]]
id = "demo-key"
description = "demo"
pattern = '''\bkey=(?P<secret>[a-z]{4,8})\b'''
action = "mask"
"#;

    #[test]
    fn reverse_search_finds_leftmost_start_and_confirm_extracts_group() {
        let matcher = Matcher::compile(&set(DEMO), 1024).unwrap();
        let text = b"x key=abcdef y";
        let mut found = Vec::new();
        matcher.scan_block(text, |c| found.push(c)).unwrap();
        assert!(!found.is_empty());
        // Every reported end leads back to the same leftmost start.
        for c in &found {
            assert_eq!(
                matcher.start_of(c.rule, text, 0, c.end),
                Some(2),
                "end {}",
                c.end
            );
        }
        // The start is found with the text held in a window that begins mid-text, as the
        // streaming masker holds it.
        let end = found[0].end;
        assert_eq!(matcher.start_of(0, &text[1..], 1, end), Some(2));
        let confirmed = matcher.confirm(0, text, 0, 2).unwrap();
        assert_eq!(&text[confirmed.secret.unwrap()], b"abcdef");
        assert_eq!(confirmed.match_end, 12);
    }

    #[test]
    fn stream_reports_same_candidates_as_block() {
        let matcher = Matcher::compile(&set(DEMO), 1024).unwrap();
        let text = b"key=abcd and key=efghijkl! key=zz";
        let mut block = Vec::new();
        matcher.scan_block(text, |c| block.push(c)).unwrap();
        let stream = matcher.open_stream().unwrap();
        let mut streamed = Vec::new();
        for chunk in text.chunks(3) {
            matcher
                .scan_stream(&stream, chunk, |c| streamed.push(c))
                .unwrap();
        }
        matcher.close_stream(stream, |c| streamed.push(c)).unwrap();
        block.sort();
        streamed.sort();
        assert_eq!(block, streamed);
    }

    #[test]
    fn unbounded_pattern_is_reported_by_id() {
        let bad = DEMO.replace("{4,8}", "+");
        let err = Matcher::compile(&set(&bad), 1024).unwrap_err().to_string();
        assert!(err.contains("demo-key") && err.contains("finite"), "{err}");
    }

    #[test]
    fn bounded_repeats_that_hyperscan_som_refuses_compile() {
        let wide = DEMO.replace("{4,8}", "{20,255}");
        assert!(Matcher::compile(&set(&wide), 1024).is_ok());
    }

    #[test]
    fn hyperscan_rejection_is_reported_by_id() {
        let bad = DEMO.replace(r"\bkey=", r"(?<=x)key=");
        let err = Matcher::compile(&set(&bad), 1024).unwrap_err().to_string();
        assert!(err.contains("demo-key"), "{err}");
    }

    #[test]
    fn ignore_guard_drops_candidate() {
        let guarded = DEMO.replace("action = \"mask\"", "action = \"mask\"\nignore = ['^abc']");
        let matcher = Matcher::compile(&set(&guarded), 1024).unwrap();
        assert_eq!(
            matcher.confirm(0, b"key=abcdef ", 0, 0).unwrap().secret,
            None
        );
        assert!(matcher
            .confirm(0, b"key=zbcdef ", 0, 0)
            .unwrap()
            .secret
            .is_some());
    }

    #[test]
    fn widening_keeps_utf8_whole() {
        let text = "é".as_bytes();
        assert_eq!(widen_to_char_boundaries(text, 1..2), 0..2);
    }
}
