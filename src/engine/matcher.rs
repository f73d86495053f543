//! The matcher: every rule of a set compiled into one Hyperscan block database and one
//! streaming database (shared by every matcher of the same expressions), the set's enabled
//! rules active, plus, per rule, a reverse DFA that finds where a match starts and a `regex`
//! confirmer that extracts the secret. A set built on the embedded pack with rules of its own
//! (a `rules_dir`, dictionaries) gets two pairs: the pack's, which the binary embeds, and one
//! for the rest, so a changed organisation pack compiles in milliseconds instead of seconds.
//! Both are scanned and their reports merged by end offset (core first at equal ends), so
//! callers see one report order, the same in block and stream scans. When the second pair
//! holds a large dictionary and is nowhere to be loaded, [`Matcher::compile_with`] may compile
//! it in the background: until it is ready, scans use the organisation's rules without the
//! terms and the terms in Aho-Corasick automata ([`crate::engine::terms`]), whose candidates
//! are the same, in the same place of the report order (after the extra rules' at equal ends).
//!
//! Hyperscan reports *candidates* `(rule, end)`; the reverse DFA, run anchored at `end`, gives
//! the leftmost start of a match ending there; the confirmer runs the rule's regex anchored at
//! that start and extracts the secret span. Candidates are the same whether the text is scanned
//! in one block or streamed in any chunking (Hyperscan guarantees it), which is what the
//! streaming masker builds its "streaming equals block" invariant on.
//!
//! A rule with a key word ([`crate::engine::keyword`]) has Hyperscan report only the key word,
//! once for every rule of that key word; the matcher walks from it and hands out the rules'
//! candidates in the same end order among the others, in block and stream scans alike.
//!
//! Why not Hyperscan's own start of match (`SOM_LEFTMOST`): it refuses many ordinary secret
//! patterns ("Pattern is too large" for bounded repeats such as `[A-Za-z0-9]{20,255}`), makes
//! stream state several times larger and scanning slower. Candidates are rare, so finding the
//! start with the `regex` engines costs nothing on the no-match path.
//!
//! Invariants:
//! - offsets handed out are absolute offsets into the logical text (block: the buffer; stream:
//!   bytes since the stream opened);
//! - every compiled rule has a finite maximum match length, `max_match_len` is the maximum of
//!   the active ones;
//! - only active rules are ever reported as candidates;
//! - a rule's regexes are built before its first candidate is placed; if they cannot be built
//!   the rule masks the whole window a match could span (fail closed, never fail open);
//! - two pairs of databases mask exactly as one pair of the same rules
//!   (`tests/streaming_equivalence.rs`);
//! - scratch space is per thread and per database generation, so a swapped matcher never
//!   shares scratch with the old one and no lock is taken on the scan path;
//! - a Hyperscan stream is always closed (its state is freed only by `hs_close_stream`);
//! - a stream scans with what its matcher used when it was opened (interim automata or the
//!   compiled databases) to its end; a block scan uses the compiled databases as soon as they
//!   are ready (`tests/interim_dictionary.rs`: both mask as the compiled databases do).

use crate::engine::databases::{self, Databases, Pending, Source};
use crate::engine::keyword::{AfterKeyword, Ends, KeywordGroup, KeywordStream};
use crate::engine::rules::{Action, Rule, RuleSet};
use crate::engine::terms::{TermAutomata, TermStream};
use crate::engine::validators::ValidationContext;
use hyperscan::prelude::*;
use hyperscan::{CompileFlags, ScratchRef};
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
    collections::HashSet,
    ops::Range,
    sync::{Arc, OnceLock},
};

/// Longest match any rule may have unless the caller configures more. Private-key bodies are
/// the longest secrets in practice (an RSA-4096 PEM is ~3.3 KB).
pub const DEFAULT_MAX_MATCH_LEN: usize = 8192;

/// How many Hyperscan reports a block scan gathers before it walks their key words and hands
/// them out (a bound on the memory a text of reports can take).
const REPORT_BATCH: usize = 1024;

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

/// When a matcher may scan a large dictionary with automata while Hyperscan compiles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterimOptions {
    /// Only extra databases holding at least this many dictionary terms are compiled in the
    /// background (smaller lists compile in well under a second).
    pub min_terms: usize,
    /// Start the background compile (`false`: the matcher stays interim, as tests of it and a
    /// process that scans once and exits want).
    pub compile: bool,
}

impl InterimOptions {
    /// What the proxy uses: lists of 2,000 terms and more.
    pub const PROXY: InterimOptions = InterimOptions {
        min_terms: 2_000,
        compile: true,
    };

    /// A process that scans once and exits (`streammask scan`): the automata, and no compile.
    pub const ONE_SHOT: InterimOptions = InterimOptions {
        min_terms: 2_000,
        compile: false,
    };
}

/// The extra databases of a matcher while they compile in the background.
struct Interim {
    /// The organisation's rules without the dictionary terms (`None`: there are only terms).
    rules: Option<Arc<Databases>>,
    /// The compile, and the term automata until it is done (shared by every matcher of the
    /// same expressions).
    full: Arc<Pending>,
}

/// What a scan uses besides the core databases.
#[derive(Clone)]
enum Extra<'a> {
    Databases(Option<&'a Arc<Databases>>),
    Interim {
        rules: Option<&'a Arc<Databases>>,
        terms: Arc<TermAutomata>,
    },
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

/// The regexes that place and extract a rule's matches. Building them costs about 2 ms per
/// rule, most of a cold start for a pack of hundreds, and most rules never see a candidate in a
/// process's life; so a rule from the embedded pack (whose regexes are known to build: the
/// pack's own tests build every one) builds them on its first candidate, and any other rule at
/// compile time, where an error is reported by rule id.
struct RuleCode {
    /// Reverse lazy DFA, anchored at the match end, longest match: yields the leftmost start.
    /// (A fully built DFA explodes for bounded repeats; the lazy one builds only the states a
    /// search visits.)
    reverse: ReverseDfa,
    reverse_caches: Pool<ReverseCache, CacheFactory>,
    confirm: meta::Regex,
    secret_group: Option<usize>,
    /// The rule's `ignore` guards as one regex of many patterns (one search tells whether any
    /// of them matches: a generic rule has a dozen, and searching them one by one cost more
    /// than its confirmation).
    ignore: Option<meta::Regex>,
    key_group: Option<usize>,
    /// The rule's `ignore_key` guards, likewise.
    ignore_key: Option<meta::Regex>,
}

impl RuleCode {
    fn build(rule: &Rule) -> Result<RuleCode, String> {
        let reverse = reverse_dfa(&rule.pattern)?;
        let factory_dfa = reverse.clone();
        let reverse_caches: Pool<ReverseCache, CacheFactory> =
            Pool::new(Box::new(move || factory_dfa.create_cache()));
        let confirm = confirm_regex(&rule.pattern)?;
        let secret_group = confirm.group_info().to_index(PatternID::ZERO, "secret");
        let ignore = guard_regex(&rule.ignore, "ignore")?;
        let ignore_key = guard_regex(&rule.ignore_key, "ignore_key")?;
        let key_group = confirm.group_info().to_index(PatternID::ZERO, "key");
        if ignore_key.is_some() && key_group.is_none() {
            return Err("ignore_key needs a group named `key` in the pattern".into());
        }
        Ok(RuleCode {
            reverse,
            reverse_caches,
            confirm,
            secret_group,
            ignore,
            key_group,
            ignore_key,
        })
    }
}

/// One rule ready to run.
pub struct CompiledRule {
    pub rule: Rule,
    /// `None` inside: the regexes failed to build on first use (only possible for an embedded
    /// rule when memory runs out); the rule then masks the whole window a match could span.
    code: OnceLock<Option<RuleCode>>,
    /// Hyperscan's maximum match width for this rule.
    pub max_len: usize,
    /// Hyperscan's minimum match width for this rule.
    pub min_len: usize,
    /// How many whitespace runs one match may hold (a dictionary's multi-word terms, a rule's
    /// `spaces`); 0 for the single-run secrets of most rules.
    pub gaps: usize,
    pub scope_bits: u8,
    preview_prefix: OnceLock<String>,
    /// For the first rule of each key word (the one whose id Hyperscan reports it under): its
    /// group in the matcher's `keyword_groups` ([`crate::engine::keyword`]).
    keyword_group: Option<usize>,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule")
            .field("id", &self.rule.id)
            .field("active", &self.rule.enabled)
            .field("max_len", &self.max_len)
            .finish()
    }
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

    /// Whether this matcher reports the rule (a profile may turn off rules of the shared
    /// databases).
    pub fn active(&self) -> bool {
        self.rule.enabled
    }

    /// What a preview of a secret this rule found may show: the literal its matches start with
    /// (see [`literal_prefix`]).
    pub fn preview_prefix(&self) -> &str {
        self.preview_prefix
            .get_or_init(|| literal_prefix(&self.rule.pattern))
    }

    fn code(&self) -> Option<&RuleCode> {
        self.code
            .get_or_init(|| RuleCode::build(&self.rule).ok())
            .as_ref()
    }
}

pub struct Matcher {
    /// Every rule of the set, active or not, indexed by Hyperscan id.
    rules: Vec<CompiledRule>,
    /// How many of `rules` are compiled into the databases.
    rules_in_databases: usize,
    /// The rule of each dictionary term, whose Hyperscan id is `rules.len()` + its index here.
    term_rules: Vec<u32>,
    /// The embedded pack's rules (or every rule, for a set not built on the pack).
    databases: Arc<Databases>,
    /// The rest — the organisation's rules and dictionary terms — when there are any beside
    /// the pack: a changed `rules_dir` or term list compiles only these, and the pack's
    /// databases stay the ones embedded in the binary.
    extra: Option<Arc<Databases>>,
    /// Instead of `extra` while its databases, which hold a large dictionary, compile in the
    /// background: the extra rules' databases without the terms, and the terms in automata.
    interim: Option<Interim>,
    /// What the matcher was compiled with, for matchers derived from it (policy profiles).
    interim_options: Option<InterimOptions>,
    max_match_len: usize,
    min_match_len: usize,
    /// The most whitespace runs inside one match of an active rule that is not `multiline`
    /// (terms of a dictionary: `Acme Corp Europe` has two; a rule's `spaces`).
    word_gaps: usize,
    /// Whether an active rule is a protected-code tree (asked once per request).
    protected_code: bool,
    /// The rules compiled into the databases that have a key word, grouped by it; Hyperscan
    /// reports each key word under its group's first rule.
    keyword_groups: Vec<KeywordGroup>,
    /// Whether a group has an active rule (its key words are walked, not handed out).
    keywords: bool,
    validation: ValidationContext,
    /// What [`Matcher::pack_checksum`] reports.
    pack_checksum: String,
}

/// See [`Matcher::pack_checksum`]. Debug renderings are hashed: every field of a rule takes
/// part without a second serialisation to keep in step with [`Rule`]'s fields.
fn pack_checksum(set: &RuleSet) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for rule in set.all() {
        hasher.update(format!("{rule:?}").as_bytes());
        hasher.update([u8::from(set.is_compiled(rule))]);
    }
    hex::encode(&hasher.finalize()[..8])
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("rules", &self.rules.len())
            .field("generation", &self.databases.generation)
            .field("source", &self.databases.source)
            .field("max_match_len", &self.max_match_len)
            .finish()
    }
}

/// How a rule's regexes (confirmer, guards) read text: bytes, not necessarily UTF-8.
fn regex_builder() -> meta::Builder {
    let mut builder = meta::Regex::builder();
    builder
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(meta::Config::new().utf8_empty(false));
    builder
}

fn confirm_regex(pattern: &str) -> Result<meta::Regex, String> {
    regex_builder()
        .build(pattern)
        .map_err(|e| format!("regex: {e}"))
}

/// One regex of every guard in `patterns` (`None` for none); an error names the guard that
/// does not build.
fn guard_regex(patterns: &[String], field: &str) -> Result<Option<meta::Regex>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    regex_builder()
        .build_many(patterns)
        .map(Some)
        .map_err(|many| {
            patterns
                .iter()
                .find_map(|pattern| {
                    confirm_regex(pattern)
                        .err()
                        .map(|e| format!("{field} {pattern:?}: {e}"))
                })
                .unwrap_or_else(|| format!("{field}: regex: {many}"))
        })
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

/// What Hyperscan runs for a rule: its key word or its prefilter, if it has one, else its
/// pattern.
fn hyperscan_pattern(rule: &Rule, id: usize) -> Pattern {
    let expression = rule
        .keyword
        .as_ref()
        .or(rule.prefilter.as_ref())
        .unwrap_or(&rule.pattern);
    plain_pattern(expression, id)
}

fn plain_pattern(expression: &str, id: usize) -> Pattern {
    Pattern {
        expression: expression.to_string(),
        flags: CompileFlags::empty(),
        id: Some(id),
        ext: Default::default(),
        som: None,
    }
}

/// Every Hyperscan expression of a rule: its pattern, reporting `id`; or one literal per term
/// of a dictionary, each reporting an id of its own from `next_term_id` (Hyperscan merges the
/// expressions that share an id into one automaton: 4,000 terms under one id took 5 s to
/// compile, under distinct ids 0.1 s), recorded in `term_rules` so candidates name the rule.
fn hyperscan_patterns(
    rule: &Rule,
    id: usize,
    next_term_id: &mut usize,
    term_rules: &mut Vec<u32>,
) -> Vec<Pattern> {
    if rule.protected_code.is_some() {
        return Vec::new();
    }
    let Some(dictionary) = &rule.dictionary else {
        return vec![hyperscan_pattern(rule, id)];
    };
    let flags = if dictionary.options().case_sensitive {
        CompileFlags::empty()
    } else {
        CompileFlags::CASELESS
    };
    dictionary
        .expressions()
        .map(|expression| {
            let term_id = *next_term_id;
            *next_term_id += 1;
            term_rules.push(id as u32);
            Pattern {
                expression,
                flags,
                id: Some(term_id),
                ext: Default::default(),
                som: None,
            }
        })
        .collect()
}

/// What a rule's regexes are built from: its pattern, its guards and what follows its key word.
type RuleCodeIdentity = (String, Vec<String>, Vec<String>, Option<String>);

fn rule_code_identity(rule: &Rule) -> RuleCodeIdentity {
    (
        rule.pattern.clone(),
        rule.ignore.clone(),
        rule.ignore_key.clone(),
        rule.after_keyword.clone(),
    )
}

/// The regex inputs of every rule of the embedded pack: rules whose regexes are known to build.
fn embedded_rule_code() -> &'static HashSet<RuleCodeIdentity> {
    static KNOWN: OnceLock<HashSet<RuleCodeIdentity>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        RuleSet::embedded()
            .map(|set| set.all().iter().map(rule_code_identity).collect())
            .unwrap_or_default()
    })
}

/// Check one rule under Hyperscan and, unless it is an embedded one, build its regexes now;
/// the error message says which engine refused it.
fn compile_rule(rule: &Rule, max_match_len: usize) -> Result<CompiledRule, String> {
    if rule.protected_code.is_some() {
        // Never reported by Hyperscan: it widens no window and holds nothing back.
        return Ok(CompiledRule {
            rule: rule.clone(),
            code: OnceLock::new(),
            max_len: 0,
            min_len: usize::MAX,
            gaps: 0,
            scope_bits: rule.scope_bits(),
            preview_prefix: OnceLock::from(String::new()),
            keyword_group: None,
        });
    }
    if let Some(dictionary) = &rule.dictionary {
        // Terms are literals: nothing to build, and their widths are their lengths.
        return Ok(CompiledRule {
            rule: rule.clone(),
            code: OnceLock::new(),
            max_len: dictionary.longest(),
            min_len: dictionary.shortest(),
            gaps: dictionary.word_gaps(),
            scope_bits: rule.scope_bits(),
            preview_prefix: OnceLock::from(String::new()),
            keyword_group: None,
        });
    }
    let (min_len, max_len) = match databases::embedded_widths(&rule.pattern) {
        Some(widths) => widths,
        None => {
            // The widths of the pattern, not of a prefilter: they bound where a match starts.
            let info = plain_pattern(&rule.pattern, 0)
                .info()
                .map_err(|e| format!("hyperscan: {e}"))?;
            (info.min_width(), info.max_width())
        }
    };
    if max_len == u32::MAX as usize || max_len == usize::MAX {
        return Err("pattern has no finite maximum length (use bounded quantifiers)".into());
    }
    if max_len > max_match_len {
        return Err(format!(
            "maximum match length {max_len} exceeds the limit {max_match_len}"
        ));
    }
    let after_keyword = rule
        .after_keyword
        .as_deref()
        .map(|after| AfterKeyword::new(&[after]))
        .transpose()?;
    let code = OnceLock::new();
    if !embedded_rule_code().contains(&rule_code_identity(rule)) {
        let _ = code.set(Some(RuleCode::build(rule)?));
        if let Some(after) = &after_keyword {
            after.build_now()?;
        }
    }
    Ok(CompiledRule {
        rule: rule.clone(),
        code,
        max_len,
        min_len,
        gaps: rule.spaces,
        scope_bits: rule.scope_bits(),
        preview_prefix: OnceLock::new(),
        keyword_group: None,
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

pub use super::databases::HS_CACHE_ENV;

/// Compile each rule alone under both Hyperscan modes and report the ones that fail.
fn blame_rules(rules: &[CompiledRule]) -> Vec<RuleError> {
    let mut errors = Vec::new();
    for compiled in rules {
        let patterns = Patterns(hyperscan_patterns(
            &compiled.rule,
            0,
            &mut 1,
            &mut Vec::new(),
        ));
        let block: Result<BlockDatabase, _> = patterns.build();
        let stream: Result<StreamingDatabase, _> = patterns.build();
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
    static SCRATCH: RefCell<Vec<(Generations, Scratch)>> = const { RefCell::new(Vec::new()) };
}

const SCRATCH_SLOTS: usize = 4;

/// The generations of the databases a scratch space serves: the core ones, the extra ones (or
/// those compiled in the background, once ready) and an interim matcher's rules-only ones.
type Generations = (u64, u64, u64);

/// One open stream of a matcher: a Hyperscan stream per database, and the term automata's
/// state when the stream was opened while they stood in for the extra databases.
pub struct MatchStream {
    core: Stream,
    extra: Option<Stream>,
    terms: Option<(Arc<TermAutomata>, TermStream)>,
    /// The keyword rules' walks, when the matcher has such rules.
    keywords: Option<RefCell<KeywordStream>>,
}

/// The extra databases' candidates, handed out in end order among the core scan's.
struct Merge {
    late: Vec<Candidate>,
    next: usize,
}

impl Merge {
    fn new(mut late: Vec<Candidate>) -> Merge {
        // Hyperscan reports by end offset; a stable sort keeps its order at equal ends.
        late.sort_by_key(|candidate| candidate.end);
        Merge { late, next: 0 }
    }

    /// Deliver the candidates ending before `end`; false once `deliver` asks to stop.
    fn before(&mut self, end: usize, deliver: &mut impl FnMut(Candidate) -> bool) -> bool {
        while let Some(&candidate) = self.late.get(self.next).filter(|c| c.end < end) {
            self.next += 1;
            if !deliver(candidate) {
                return false;
            }
        }
        true
    }

    /// Deliver what is left; false once `deliver` asks to stop.
    fn rest(&mut self, deliver: &mut impl FnMut(Candidate) -> bool) -> bool {
        let rest = &self.late[self.next..];
        self.next = self.late.len();
        rest.iter().all(|&candidate| deliver(candidate))
    }
}

impl Matcher {
    /// Compile every rule of `set` into one pair of databases (shared with every other matcher
    /// of the same expressions, see [`crate::engine::databases`]); the set's enabled rules are
    /// the active ones, the others are never reported. The databases hold the enabled rules and
    /// the set's armed ones (disabled here, on in some profile). All broken rules are reported
    /// together, by id; a disabled rule's pattern and regexes are checked too, since a profile
    /// may turn it on.
    pub fn compile(set: &RuleSet, max_match_len: usize) -> Result<Matcher, MatcherError> {
        Self::compile_with(set, max_match_len, None)
    }

    /// [`Matcher::compile`], and with `interim` extra databases that hold at least
    /// `interim.min_terms` dictionary terms and are nowhere to be loaded are compiled in the
    /// background: until they are ready the matcher scans the terms with automata that find
    /// the same candidates (a stream keeps what it was opened with).
    pub fn compile_with(
        set: &RuleSet,
        max_match_len: usize,
        interim: Option<InterimOptions>,
    ) -> Result<Matcher, MatcherError> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for rule in set.all() {
            let limit = if rule.enabled {
                max_match_len
            } else {
                usize::MAX - 1
            };
            match compile_rule(rule, limit) {
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
        let in_databases: Vec<bool> = set.all().iter().map(|r| set.is_compiled(r)).collect();
        let mut matcher = Self::from_compiled(
            rules,
            &in_databases,
            set.embedded_rules(),
            set.validation().clone(),
            interim,
        )?;
        matcher.pack_checksum = pack_checksum(set);
        Ok(matcher)
    }

    /// `in_databases[i]`: whether rule `i` is compiled into the databases (a disabled rule no
    /// profile turns on is not). Rules before `core_rules` (the embedded pack's) go into the
    /// core databases, the others (and dictionary terms) into the extra ones.
    fn from_compiled(
        mut rules: Vec<CompiledRule>,
        in_databases: &[bool],
        core_rules: usize,
        validation: ValidationContext,
        interim: Option<InterimOptions>,
    ) -> Result<Matcher, MatcherError> {
        let mut next_term_id = rules.len();
        let mut term_rules = Vec::new();
        let compiled = |i: usize| in_databases.get(i).copied().unwrap_or(true);
        let rules_in_databases = (0..rules.len()).filter(|&i| compiled(i)).count();
        // Rules that share a key word: the first one's id reports it for all of them.
        let mut by_keyword: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, rule) in rules.iter().enumerate().filter(|(i, _)| compiled(*i)) {
            if let (Some(keyword), Some(_)) = (&rule.rule.keyword, &rule.rule.after_keyword) {
                match by_keyword.iter_mut().find(|(k, _)| k == keyword) {
                    Some((_, members)) => members.push(i),
                    None => by_keyword.push((keyword, vec![i])),
                }
            }
        }
        let follower: HashSet<usize> = by_keyword
            .iter()
            .flat_map(|(_, members)| members.iter().skip(1).copied())
            .collect();
        let mut keyword_groups = Vec::new();
        let mut leaders = Vec::new();
        for (_, members) in &by_keyword {
            let described: Vec<(u32, bool, &str)> = members
                .iter()
                .map(|&m| {
                    let rule = &rules[m];
                    let after = rule.rule.after_keyword.as_deref().unwrap_or_default();
                    (m as u32, rule.active(), after)
                })
                .collect();
            let group = KeywordGroup::new(&described).map_err(|message| {
                MatcherError::Rules(vec![RuleError {
                    id: rules[members[0]].rule.id.clone(),
                    message,
                }])
            })?;
            leaders.push((members[0], keyword_groups.len()));
            keyword_groups.push(group);
        }
        for (leader, group) in leaders {
            rules[leader].keyword_group = Some(group);
        }
        let (mut core, mut extra) = (Patterns(Vec::new()), Patterns(Vec::new()));
        // The extra patterns without the dictionary terms, and the terms, for an interim scan.
        let mut extra_rules = Patterns(Vec::new());
        let mut extra_terms: Vec<(u32, bool, &[u8])> = Vec::new();
        for (i, rule) in rules.iter().enumerate().filter(|(i, _)| compiled(*i)) {
            if follower.contains(&i) {
                continue;
            }
            let patterns = hyperscan_patterns(&rule.rule, i, &mut next_term_id, &mut term_rules);
            if i < core_rules {
                core.0.extend(patterns);
            } else if let Some(dictionary) = &rule.rule.dictionary {
                let case_sensitive = dictionary.options().case_sensitive;
                extra_terms.extend(dictionary.terms().map(|t| (i as u32, case_sensitive, t)));
                extra.0.extend(patterns);
            } else {
                extra_rules.0.extend(patterns.iter().cloned());
                extra.0.extend(patterns);
            }
        }
        // A set not built on the pack keeps everything in the core databases.
        let interim = interim.filter(|_| !core.0.is_empty() || extra_terms.is_empty());
        if core.0.is_empty() {
            std::mem::swap(&mut core, &mut extra);
        }
        // An empty rule set is legal (everything passes); Hyperscan refuses an empty database,
        // so compile a pattern that cannot match any text we scan.
        if core.0.is_empty() {
            core.0.push(Pattern {
                expression: r"\x00streammask-no-rules\x00\x01".into(),
                flags: CompileFlags::empty(),
                id: Some(u32::MAX as usize),
                ext: Default::default(),
                som: None,
            });
        }
        let load = |patterns: &Patterns| {
            databases::load(patterns).map_err(|error| {
                // Compiling rule by rule is slow, so it is done only to name the culprit.
                let errors = blame_rules(&rules);
                if errors.is_empty() {
                    MatcherError::Hyperscan(error.to_string())
                } else {
                    MatcherError::Rules(errors)
                }
            })
        };
        let databases = load(&core)?;
        let mut interim_scan = None;
        let extra = match interim {
            _ if extra.0.is_empty() => None,
            Some(options) if extra_terms.len() >= options.min_terms => {
                match databases::lookup(&extra) {
                    Some(found) => Some(found),
                    None => {
                        let rules_only = if extra_rules.0.is_empty() {
                            None
                        } else {
                            Some(load(&extra_rules)?)
                        };
                        let full = databases::compile_in_background(extra, options.compile, || {
                            TermAutomata::build(extra_terms)
                        })
                        .map_err(|e| MatcherError::Hyperscan(e.to_string()))?;
                        interim_scan = Some(Interim {
                            rules: rules_only,
                            full,
                        });
                        None
                    }
                }
            }
            _ => Some(load(&extra)?),
        };
        let active = || rules.iter().filter(|r| r.active());
        let max_match_len = active().map(|r| r.max_len).max().unwrap_or(0);
        let min_match_len = active().map(|r| r.min_len).min().unwrap_or(usize::MAX);
        let word_gaps = active().map(|r| r.gaps).max().unwrap_or(0);
        let protected_code = active().any(|r| r.rule.protected_code.is_some());
        let keywords = keyword_groups.iter().any(KeywordGroup::active);
        Ok(Matcher {
            rules,
            rules_in_databases,
            term_rules,
            databases,
            extra,
            interim: interim_scan,
            interim_options: interim,
            max_match_len,
            min_match_len,
            word_gaps,
            protected_code,
            keyword_groups,
            keywords,
            validation,
            pack_checksum: String::new(),
        })
    }

    /// A short hex digest of the rule set this matcher was compiled from — every rule as
    /// written (dictionary terms and protected-code trees included) and which disabled rules
    /// profiles turn on — so replicas running different packs show apart in metrics.
    pub fn pack_checksum(&self) -> &str {
        &self.pack_checksum
    }

    /// How many rules the databases hold: the enabled ones and the armed ones.
    pub fn rules_in_databases(&self) -> usize {
        self.rules_in_databases
    }

    /// Where this matcher's (core) databases came from.
    pub fn database_source(&self) -> Source {
        self.databases.source
    }

    /// Where the databases of the rules beside the embedded pack came from (`None`: there
    /// are none, or they are still being compiled in the background).
    pub fn extra_database_source(&self) -> Option<Source> {
        match self.extra_scan() {
            Extra::Databases(extra) => extra.map(|extra| extra.source),
            Extra::Interim { .. } => None,
        }
    }

    /// The options this matcher was compiled with (see [`Matcher::compile_with`]).
    pub fn interim_options(&self) -> Option<InterimOptions> {
        self.interim_options
    }

    /// Whether dictionary terms are scanned with automata while their databases compile in
    /// the background (see [`Matcher::compile_with`]).
    pub fn is_interim(&self) -> bool {
        matches!(self.extra_scan(), Extra::Interim { .. })
    }

    /// What a scan starting now uses besides the core databases.
    fn extra_scan(&self) -> Extra<'_> {
        let Some(interim) = &self.interim else {
            return Extra::Databases(self.extra.as_ref());
        };
        if let Some(full) = interim.full.ready() {
            return Extra::Databases(Some(full));
        }
        match interim.full.terms() {
            Some(terms) => Extra::Interim {
                rules: interim.rules.as_ref(),
                terms,
            },
            // The automata are released only after the databases are ready (`Pending`'s
            // invariant), so they are ready now.
            None => Extra::Databases(interim.full.ready()),
        }
    }

    /// A term automaton's report as a candidate, if its rule is active.
    fn push_term(&self, late: &mut Vec<Candidate>, rule: u32, end: usize) {
        if self.rules[rule as usize].active() {
            late.push(Candidate { rule, end });
        }
    }

    /// Whether `other` scans with the very same databases (profiles of one pack do).
    pub fn shares_databases_with(&self, other: &Matcher) -> bool {
        let same = |a: Option<&Arc<Databases>>, b: Option<&Arc<Databases>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let same_extra = match (self.extra_scan(), other.extra_scan()) {
            (Extra::Databases(a), Extra::Databases(b)) => same(a, b),
            (Extra::Interim { rules: a, terms: x }, Extra::Interim { rules: b, terms: y }) => {
                same(a, b) && Arc::ptr_eq(&x, &y)
            }
            _ => false,
        };
        Arc::ptr_eq(&self.databases, &other.databases) && same_extra
    }

    /// The active rules.
    pub fn rules(&self) -> impl Iterator<Item = &CompiledRule> + '_ {
        self.rules.iter().filter(|r| r.active())
    }

    /// Every rule, active or not, indexed as candidates and findings number them.
    pub fn all_rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// An active rule by id.
    pub fn rule_by_id(&self, id: &str) -> Option<&CompiledRule> {
        self.rules().find(|r| r.id() == id)
    }

    /// The rule a candidate names (candidates only ever name active rules).
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

    /// How many whitespace runs one single-line match may hold (0 unless a dictionary has
    /// terms of several words or a rule declares `spaces`).
    pub fn word_gaps(&self) -> usize {
        self.word_gaps
    }

    /// Whether an active rule is a protected-code tree.
    pub fn has_protected_code(&self) -> bool {
        self.protected_code
    }

    /// Bytes of Hyperscan (or term automata) state one stream opened now costs.
    pub fn stream_state_size(&self) -> usize {
        let size = |d: &Databases| d.stream.stream_size().unwrap_or(0);
        let extra = match self.extra_scan() {
            Extra::Databases(extra) => extra.map_or(0, |d| size(d)),
            Extra::Interim { rules, terms } => rules.map_or(0, |d| size(d)) + terms.stream_size(),
        };
        size(&self.databases) + extra
    }

    /// Every database a scan of this matcher may use (a scratch space must serve them all).
    fn all_databases(&self) -> impl Iterator<Item = &Databases> {
        let interim = self.interim.as_ref();
        std::iter::once(&*self.databases)
            .chain(self.extra.as_deref())
            .chain(interim.and_then(|i| i.rules.as_deref()))
            .chain(interim.and_then(|i| i.full.ready()).map(|d| &**d))
    }

    fn generations(&self) -> Generations {
        let interim = self.interim.as_ref();
        let extra = self
            .extra
            .as_deref()
            .or(interim.and_then(|i| i.full.ready()).map(|d| &**d));
        (
            self.databases.generation,
            extra.map_or(0, |d| d.generation),
            interim
                .and_then(|i| i.rules.as_ref())
                .map_or(0, |d| d.generation),
        )
    }

    fn with_scratch<R>(&self, f: impl FnOnce(&ScratchRef) -> R) -> Result<R, MatcherError> {
        SCRATCH.with(|slots| {
            let mut slots = slots.borrow_mut();
            let generations = self.generations();
            let position = slots.iter().position(|(gens, _)| *gens == generations);
            let index = match position {
                Some(index) => index,
                None => {
                    let hyperscan = |e: hyperscan::Error| MatcherError::Hyperscan(e.to_string());
                    let mut scratch = self.databases.block.alloc_scratch().map_err(hyperscan)?;
                    for databases in self.all_databases() {
                        databases
                            .block
                            .realloc_scratch(&mut scratch)
                            .map_err(hyperscan)?;
                        databases
                            .stream
                            .realloc_scratch(&mut scratch)
                            .map_err(hyperscan)?;
                    }
                    if slots.len() >= SCRATCH_SLOTS {
                        slots.remove(0);
                    }
                    slots.push((generations, scratch));
                    slots.len() - 1
                }
            };
            Ok(f(&slots[index].1))
        })
    }

    /// The active rule a Hyperscan id reports for (a dictionary's terms have ids of their own
    /// after the rules').
    fn rule_of(&self, id: u32) -> Option<u32> {
        let index = id as usize;
        let rule = if index < self.rules.len() {
            id
        } else {
            *self.term_rules.get(index - self.rules.len())?
        };
        let compiled = &self.rules[rule as usize];
        match compiled.keyword_group {
            // Reported when any rule of the key word is active, whether or not this one is.
            Some(group) => self.keyword_groups[group].active().then_some(rule),
            None => compiled.active().then_some(rule),
        }
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
    /// whether the whole text was scanned. With extra databases, their candidates are
    /// collected first (the organisation's few rules) and merged into the core scan's by end
    /// offset, core first at equal ends, so callers see one report order.
    pub fn scan_block_while(
        &self,
        text: &[u8],
        on_candidate: impl FnMut(Candidate) -> bool,
    ) -> Result<bool, MatcherError> {
        self.scan_block_charged(text, |_| true, on_candidate)
    }

    /// [`Matcher::scan_block_while`] that also reports the work of each key word's walk to
    /// `charge` (the bytes it may read; a text byte counts one) and stops when it returns
    /// `false`: a walk is bounded per key word, not per text, so a text made of key words (a
    /// hostile body) is bounded by the caller's budget, not only by the candidates it yields.
    pub fn scan_block_charged(
        &self,
        text: &[u8],
        mut charge: impl FnMut(usize) -> bool,
        mut on_candidate: impl FnMut(Candidate) -> bool,
    ) -> Result<bool, MatcherError> {
        if !self.keywords {
            return self.scan_block_merged(text, on_candidate);
        }
        // Reports are handled in batches: first every key word's walk, then the other reports
        // in their order, each after the walks' ends before it. Walking one key word after
        // another keeps the walks' transition tables in cache (between two key words,
        // Hyperscan's own tables evict them), and so does confirming candidates one after
        // another. The order handed out is unchanged: a walk's ends lie after its key word,
        // which Hyperscan reported before any later report ends.
        let mut ends = Ends::default();
        // Grown as reports come: most scans (short strings, clean text) report nothing.
        let mut batch = Vec::new();
        let mut handed_out = true;
        let completed = self.scan_block_merged(text, |candidate| {
            batch.push(candidate);
            if batch.len() == REPORT_BATCH {
                handed_out =
                    self.hand_out(text, &mut batch, &mut ends, &mut charge, &mut on_candidate);
            }
            handed_out
        })?;
        // A batch that stopped the scan also ended it early: `completed` is false then.
        Ok(completed
            && self.hand_out(text, &mut batch, &mut ends, &mut charge, &mut on_candidate)
            && ends.before(None, &mut on_candidate))
    }

    /// Walk every key word of `batch`, then hand out its other reports in order, each after
    /// the walks' ends before it, emptying `batch`. False (the scan stops) once `charge` or
    /// `on_candidate` asks to stop.
    fn hand_out(
        &self,
        text: &[u8],
        batch: &mut Vec<Candidate>,
        ends: &mut Ends,
        charge: &mut impl FnMut(usize) -> bool,
        on_candidate: &mut impl FnMut(Candidate) -> bool,
    ) -> bool {
        for report in batch.iter() {
            if let Some(group) = self.keyword_group(report.rule) {
                let group = &self.keyword_groups[group];
                group.walk(text, report.end, true, report.end, 0, ends);
                if !charge(group.max_len()) {
                    return false;
                }
            }
        }
        for report in batch.drain(..) {
            if self.keyword_group(report.rule).is_none()
                && !(ends.before(Some(report.end), &mut *on_candidate) && on_candidate(report))
            {
                return false;
            }
        }
        true
    }

    /// The key word group whose reports come under rule `rule`'s id, if any.
    fn keyword_group(&self, rule: u32) -> Option<usize> {
        self.rules.get(rule as usize)?.keyword_group
    }

    /// A report of the merged scans, in a stream: a key word starts a walk, anything else is
    /// handed out after the walks' ends before it.
    fn offer_streamed(
        &self,
        keywords: &mut KeywordStream,
        candidate: Candidate,
        complete: bool,
        deliver: &mut impl FnMut(Candidate) -> bool,
    ) {
        match self.keyword_group(candidate.rule) {
            Some(group) => keywords.start(&self.keyword_groups, group, candidate.end, complete),
            None => {
                keywords.ends.before(Some(candidate.end), deliver);
                deliver(candidate);
            }
        }
    }

    /// [`Matcher::scan_block_while`] of every database, key words handed out as candidates.
    fn scan_block_merged(
        &self,
        text: &[u8],
        mut on_candidate: impl FnMut(Candidate) -> bool,
    ) -> Result<bool, MatcherError> {
        let (extra, terms) = match self.extra_scan() {
            Extra::Databases(None) => {
                return self.scan_block_in(&self.databases, text, on_candidate)
            }
            Extra::Databases(Some(extra)) => (Some(extra), None),
            Extra::Interim { rules, terms } => (rules, Some(terms)),
        };
        let mut late = Vec::new();
        if let Some(extra) = extra {
            self.scan_block_in(extra, text, |candidate| {
                late.push(candidate);
                true
            })?;
        }
        if let Some(terms) = terms {
            terms.scan_block(text, |rule, end| self.push_term(&mut late, rule, end));
        }
        let mut merged = Merge::new(late);
        let completed = self.scan_block_in(&self.databases, text, |candidate| {
            merged.before(candidate.end, &mut on_candidate) && on_candidate(candidate)
        })?;
        Ok(completed && merged.rest(&mut on_candidate))
    }

    fn scan_block_in(
        &self,
        databases: &Databases,
        text: &[u8],
        mut on_candidate: impl FnMut(Candidate) -> bool,
    ) -> Result<bool, MatcherError> {
        let mut stopped = false;
        let scanned = self.with_scratch(|scratch| {
            databases.block.scan(text, scratch, |id, _, to, _| {
                let Some(rule) = self.rule_of(id) else {
                    return Matching::Continue;
                };
                if !on_candidate(Candidate {
                    rule,
                    end: to as usize,
                }) {
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

    pub fn open_stream(&self) -> Result<MatchStream, MatcherError> {
        let open = |databases: &Databases| {
            databases
                .stream
                .open_stream()
                .map_err(|e| MatcherError::Hyperscan(e.to_string()))
        };
        let (extra, terms) = match self.extra_scan() {
            Extra::Databases(extra) => (extra, None),
            Extra::Interim { rules, terms } => (rules, Some(terms)),
        };
        Ok(MatchStream {
            core: open(&self.databases)?,
            extra: extra.map(|d| open(d)).transpose()?,
            terms: terms.map(|terms| {
                let state = terms.open();
                (terms, state)
            }),
            keywords: self
                .keywords
                .then(|| RefCell::new(KeywordStream::default())),
        })
    }

    /// Feed the next bytes of a stream; candidates carry absolute offsets, in one report
    /// order as [`Matcher::scan_block_while`] gives them.
    pub fn scan_stream(
        &self,
        stream: &MatchStream,
        chunk: &[u8],
        mut on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        let Some(keywords) = &stream.keywords else {
            return self.scan_stream_merged(stream, chunk, on_candidate);
        };
        let mut keywords = keywords.borrow_mut();
        let keywords = &mut *keywords;
        let mut deliver = |candidate| {
            on_candidate(candidate);
            true
        };
        keywords.append(chunk, &self.keyword_groups);
        self.scan_stream_merged(stream, chunk, |candidate| {
            self.offer_streamed(keywords, candidate, false, &mut deliver)
        })?;
        keywords.ends.before(None, &mut deliver);
        keywords.trim();
        Ok(())
    }

    /// [`Matcher::scan_stream`] of every database, key words handed out as candidates.
    fn scan_stream_merged(
        &self,
        stream: &MatchStream,
        chunk: &[u8],
        on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        let mut terms_late = Vec::new();
        if let Some((terms, state)) = &stream.terms {
            terms.scan_stream(state, chunk, |rule, end| {
                self.push_term(&mut terms_late, rule, end)
            });
        }
        self.stream_reports(
            stream.extra.as_ref(),
            terms_late,
            &stream.core,
            on_candidate,
            |s, f| self.with_scratch(|scratch| s.scan(chunk, scratch, f)),
        )
    }

    /// End a stream, reporting matches that only complete at end of data.
    pub fn close_stream(
        &self,
        stream: MatchStream,
        mut on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        let MatchStream {
            core,
            extra,
            keywords,
            ..
        } = stream;
        let Some(keywords) = keywords else {
            return self.close_stream_merged(core, extra, on_candidate);
        };
        let mut keywords = keywords.into_inner();
        let mut deliver = |candidate| {
            on_candidate(candidate);
            true
        };
        keywords.close(&self.keyword_groups);
        self.close_stream_merged(core, extra, |candidate| {
            self.offer_streamed(&mut keywords, candidate, true, &mut deliver)
        })?;
        keywords.ends.before(None, &mut deliver);
        Ok(())
    }

    /// [`Matcher::close_stream`] of every database, key words handed out as candidates.
    fn close_stream_merged(
        &self,
        core: Stream,
        extra: Option<Stream>,
        on_candidate: impl FnMut(Candidate),
    ) -> Result<(), MatcherError> {
        // Literals complete at their last byte: the term automata have nothing left to report.
        let mut late = Vec::new();
        if let Some(extra) = extra {
            self.with_scratch(|scratch| {
                extra.close(scratch, |id, _, to, _| {
                    if let Some(rule) = self.rule_of(id) {
                        late.push(Candidate {
                            rule,
                            end: to as usize,
                        });
                    }
                    Matching::Continue
                })
            })?
            .map_err(|e| MatcherError::Hyperscan(e.to_string()))?;
        }
        self.merge_reports(late, on_candidate, |f| {
            self.with_scratch(|scratch| core.close(scratch, f))
        })
    }

    /// Run `run` (a scan of one Hyperscan stream) over the extra stream, if any, collecting
    /// (before `terms`, the term automata's candidates of the same bytes, as a block scan
    /// orders them), then over the core stream, merging.
    fn stream_reports(
        &self,
        extra: Option<&Stream>,
        terms: Vec<Candidate>,
        core: &Stream,
        on_candidate: impl FnMut(Candidate),
        run: impl Fn(
            &Stream,
            &mut dyn FnMut(u32, u64, u64, u32) -> Matching,
        ) -> Result<Result<(), hyperscan::Error>, MatcherError>,
    ) -> Result<(), MatcherError> {
        let mut late = Vec::new();
        if let Some(extra) = extra {
            run(extra, &mut |id, _, to, _| {
                if let Some(rule) = self.rule_of(id) {
                    late.push(Candidate {
                        rule,
                        end: to as usize,
                    });
                }
                Matching::Continue
            })?
            .map_err(|e| MatcherError::Hyperscan(e.to_string()))?;
        }
        late.extend(terms);
        self.merge_reports(late, on_candidate, |f| run(core, f))
    }

    /// Deliver the core scan's reports (`run`) merged with `late` by end offset.
    fn merge_reports(
        &self,
        late: Vec<Candidate>,
        mut on_candidate: impl FnMut(Candidate),
        run: impl FnOnce(
            &mut dyn FnMut(u32, u64, u64, u32) -> Matching,
        ) -> Result<Result<(), hyperscan::Error>, MatcherError>,
    ) -> Result<(), MatcherError> {
        let mut deliver = |candidate| {
            on_candidate(candidate);
            true
        };
        let mut merged = Merge::new(late);
        run(&mut |id, _, to, _| {
            if let Some(rule) = self.rule_of(id) {
                let candidate = Candidate {
                    rule,
                    end: to as usize,
                };
                merged.before(candidate.end, &mut deliver);
                deliver(candidate);
            }
            Matching::Continue
        })?
        .map_err(|e| MatcherError::Hyperscan(e.to_string()))?;
        merged.rest(&mut deliver);
        Ok(())
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
        if let Some(dictionary) = &compiled.rule.dictionary {
            return dictionary
                .start_of(hay, local_end)
                .map(|start| start + base);
        }
        let window_start = local_end.saturating_sub(compiled.max_len);
        let input = Input::new(hay)
            .range(window_start..local_end)
            .anchored(Anchored::Yes);
        let Some(code) = compiled.code() else {
            // Fail closed: the earliest start a match could have.
            return Some(window_start + base);
        };
        let mut cache = code.reverse_caches.get();
        match code.reverse.try_search_rev(&mut cache, &input) {
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
        if let Some(dictionary) = &compiled.rule.dictionary {
            let end = dictionary.end_of(hay, local_start)?;
            return Some(Confirmed {
                secret: Some(local_start + base..end + base),
                match_end: end + base,
            });
        }
        // A match is at most `max_len` bytes; one more byte lets a trailing look-around see
        // what follows. Bounding the input keeps the anchored search from reading further.
        let local_end = local_start
            .saturating_add(compiled.max_len.saturating_add(1))
            .min(hay.len());
        let Some(code) = compiled.code() else {
            // Fail closed: everything a match could span is the secret.
            let end = local_start.saturating_add(compiled.max_len).min(hay.len());
            let widened = widen_to_char_boundaries(hay, local_start..end);
            return Some(Confirmed {
                secret: Some(widened.start + base..widened.end + base),
                match_end: end + base,
            });
        };
        let input = Input::new(hay)
            .range(local_start..local_end)
            .anchored(Anchored::Yes);
        let mut caps: Captures = code.confirm.create_captures();
        code.confirm.search_captures(&input, &mut caps);
        let whole = caps.get_match()?;
        let span = code
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
        let key = code
            .key_group
            .and_then(|group| caps.get_group(group))
            .map_or(&[][..], |key| &hay[key.start..key.end]);
        let ignored = code
            .ignore
            .as_ref()
            .is_some_and(|guards| guards.is_match(Input::new(secret)))
            || code
                .ignore_key
                .as_ref()
                .is_some_and(|guards| guards.is_match(Input::new(key)))
            || compiled
                .rule
                .min_entropy
                .is_some_and(|least| shannon_entropy(secret) < least)
            || compiled
                .rule
                .validate
                .is_some_and(|validator| !validator.validate(secret, &self.validation));
        let widened = widen_to_char_boundaries(hay, span.start..span.end);
        Some(Confirmed {
            secret: (!ignored).then(|| widened.start + base..widened.end + base),
            match_end: whole.end() + base,
        })
    }
}

/// Shannon entropy of `bytes` in bits per byte (0 for an empty slice).
pub fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &byte in bytes {
        counts[usize::from(byte)] += 1;
    }
    let total = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / total;
            -p * p.log2()
        })
        .sum()
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
    use crate::engine::rules::Overrides;

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
        // Three guards, searched as one regex: any one of them drops the candidate.
        let guarded = DEMO.replace(
            "action = \"mask\"",
            "action = \"mask\"\nignore = ['^abc', 'xyz$', '^q']",
        );
        let matcher = Matcher::compile(&set(&guarded), 1024).unwrap();
        let secret = |text: &[u8]| matcher.confirm(0, text, 0, 0).unwrap().secret;
        assert_eq!(secret(b"key=abcdef "), None);
        assert_eq!(secret(b"key=defxyz "), None);
        assert_eq!(secret(b"key=qbcdef "), None);
        assert!(secret(b"key=zbcdef ").is_some());
    }

    #[test]
    fn a_guard_that_does_not_build_is_named() {
        let broken = DEMO.replace(
            "action = \"mask\"",
            "action = \"mask\"\nignore = ['^abc', '(unclosed']",
        );
        let err = Matcher::compile(&set(&broken), 1024)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("demo-key") && err.contains(r#"ignore "(unclosed""#),
            "{err}"
        );
    }

    const TWO: &str = r#"
[[rules]]
id = "demo-key"
description = "demo"
pattern = '''\bkey=(?P<secret>[a-z]{4,8})\b'''
action = "mask"

[[rules]]
id = "demo-pin"
description = "demo"
pattern = '''\bpin=[0-9]{4}\b'''
action = "mask"
"#;

    fn rules_found(matcher: &Matcher, text: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        let mut note = |c: Candidate| found.push(matcher.rule(c.rule).id().to_string());
        matcher.scan_block(text, &mut note).unwrap();
        let stream = matcher.open_stream().unwrap();
        matcher.scan_stream(&stream, text, &mut note).unwrap();
        matcher.close_stream(stream, &mut note).unwrap();
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn a_profile_that_turns_rules_off_shares_the_databases_and_never_reports_them() {
        let all = set(TWO);
        let base = Matcher::compile(&all, 1024).unwrap();
        let off = all
            .with_overrides(&Overrides {
                disable_rules: &["demo-pin".to_string()],
                ..Overrides::default()
            })
            .unwrap();
        let profile = Matcher::compile(&off, 1024).unwrap();
        assert!(profile.shares_databases_with(&base));
        let text = b"key=abcdef pin=1234";
        assert_eq!(rules_found(&base, text), ["demo-key", "demo-pin"]);
        assert_eq!(rules_found(&profile, text), ["demo-key"]);
        assert_eq!(
            profile.rules().map(|r| r.id()).collect::<Vec<_>>(),
            ["demo-key"]
        );
        assert!(profile.rule_by_id("demo-pin").is_none());
        // Findings keep one numbering across profiles.
        assert_eq!(profile.all_rules()[1].id(), "demo-pin");
        // A rule the pack ships disabled is left out of the databases, unless it is armed
        // (a profile turns it on): then it is compiled, inactive, and the profile that turns
        // it on shares the databases.
        let shipped_off =
            set(&TWO.replace("id = \"demo-pin\"", "id = \"demo-pin\"\nenabled = false"));
        let quiet = Matcher::compile(&shipped_off, 1024).unwrap();
        assert_eq!(quiet.rules_in_databases(), 1);
        assert_eq!(rules_found(&quiet, text), ["demo-key"]);
        let armed = shipped_off.with_armed(["demo-pin".to_string()]);
        let quiet = Matcher::compile(&armed, 1024).unwrap();
        assert_eq!(quiet.rules_in_databases(), 2);
        assert_eq!(rules_found(&quiet, text), ["demo-key"]);
        let on = armed
            .with_overrides(&Overrides {
                enable_rules: &["demo-pin".to_string()],
                ..Overrides::default()
            })
            .unwrap();
        let enabled = Matcher::compile(&on, 1024).unwrap();
        assert!(enabled.shares_databases_with(&quiet));
        assert_eq!(rules_found(&enabled, text), ["demo-key", "demo-pin"]);
    }

    #[test]
    fn the_default_pack_loads_its_embedded_databases_and_builds_regexes_on_first_use() {
        let pack = RuleSet::embedded().unwrap();
        let matcher = Matcher::compile(&pack, 8190).unwrap();
        assert_eq!(matcher.database_source(), Source::Embedded);
        for rule in &matcher.rules {
            assert!(rule.code.get().is_none(), "{} built eagerly", rule.id());
            let info = plain_pattern(&rule.rule.pattern, 0).info().unwrap();
            assert_eq!(
                (info.min_width(), info.max_width()),
                (rule.min_len, rule.max_len),
                "{}: the embedded widths are Hyperscan's",
                rule.id()
            );
        }
        let text = format!("aws {}{}", "AKIA", "Q7ZRLMNB2XKTW5VD");
        let mut found = Vec::new();
        matcher
            .scan_block(text.as_bytes(), |c| found.push(c))
            .unwrap();
        let aws = found
            .iter()
            .find(|c| matcher.rule(c.rule).id() == "aws-access-key-id")
            .expect("candidate");
        let start = matcher.start_of(aws.rule, text.as_bytes(), 0, aws.end);
        assert_eq!(start, Some(4));
        let confirmed = matcher.confirm(aws.rule, text.as_bytes(), 0, 4).unwrap();
        assert_eq!(confirmed.secret, Some(4..24));
        assert!(matcher.rule(aws.rule).code.get().is_some());
    }

    #[test]
    fn every_embedded_rule_builds_its_regexes() {
        for rule in RuleSet::embedded().unwrap().all() {
            if let Err(e) = RuleCode::build(rule) {
                panic!("{}: {e}", rule.id);
            }
        }
    }

    #[test]
    fn a_rule_whose_regexes_cannot_be_built_masks_the_whole_window() {
        let mut matcher = Matcher::compile(&set(DEMO), 1024).unwrap();
        matcher.rules[0].code = OnceLock::from(None);
        let max = matcher.rules[0].max_len;
        let text = b"x key=abcdef y and more text after it";
        assert_eq!(matcher.start_of(0, text, 0, 12), Some(12 - max.min(12)));
        let confirmed = matcher.confirm(0, text, 0, 2).unwrap();
        assert_eq!(confirmed.secret, Some(2..(2 + max).min(text.len())));
    }

    #[test]
    fn widening_keeps_utf8_whole() {
        let text = "é".as_bytes();
        assert_eq!(widen_to_char_boundaries(text, 1..2), 0..2);
    }
}
