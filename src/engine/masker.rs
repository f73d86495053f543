//! Masking: the block masker (whole text at once) and the streaming masker (text arriving in
//! deltas), both built on the same matcher and the same span resolution.
//!
//! Invariants (these are the tests in `tests/streaming_equivalence.rs`):
//! 1. **Streaming equals block.** For any text and any chunking, the concatenation of what a
//!    [`StreamMasker`] emits equals [`Engine::mask`] of the whole text. Both take the same
//!    Hyperscan candidates and the same confirmer; the streaming masker only emits text once
//!    every candidate that could cover it is final.
//! 2. **Bounded hold.** Held text is the trailing non-whitespace run (no secret of a
//!    single-line rule contains whitespace), extended back by as many words as a dictionary's
//!    longest multi-word term has gaps ([`Matcher::word_gaps`], 0 without dictionaries) and to
//!    the start of any secret still in progress (multi-line private keys), and never more
//!    than `max_hold` bytes.
//! 3. **Flush.** [`StreamMasker::finish`] emits everything that is held, masked as block mode
//!    masks the end of a text.
//! 4. Rules have finite lengths below `max_hold` (checked at [`Engine::new`]), so a candidate
//!    whose start lies more than `max_hold` bytes back is always final: forced emission at the
//!    cap can never cut through an undecided secret.
//!
//! A candidate is *final* once its match is followed by whitespace (for a rule whose secret may
//! hold `gaps` whitespace runs: once more runs than that follow its start), once more text than the
//! rule's maximum length has arrived after its start, or at the end of the text. Until then it
//! is re-confirmed as text arrives.

use crate::engine::clean_texts::CleanTexts;
use crate::engine::known::{self, KnownError, KnownSecrets};
use crate::engine::matcher::{
    Candidate, Confirmed, InterimOptions, MatchStream, Matcher, MatcherError,
};
use crate::engine::placeholder::{PlaceholderKey, PLACEHOLDER_OVERHEAD};
use crate::engine::rules::{Action, RuleSet, Scope};
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use std::{borrow::Cow, ops::Range, sync::Arc};

/// Default cap on held bytes per stream; above the longest rule (8 KiB private keys).
pub const DEFAULT_MAX_HOLD_BYTES: usize = 12 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error(transparent)]
    Matcher(#[from] MatcherError),
    #[error(transparent)]
    Known(#[from] KnownError),
    #[error("max_hold_bytes ({max_hold}) must exceed the longest rule match ({longest})")]
    HoldTooSmall { max_hold: usize, longest: usize },
    #[error("stream already finished")]
    Finished,
    /// The request's masking time budget ran out (`[masking] max_scan_ms`).
    #[error("masking took longer than the budget of {budget_ms} ms")]
    OverBudget { budget_ms: u64 },
}

/// Work units a candidate costs against a [`Budget`] (a text byte costs one): a candidate may
/// run two regex searches over up to a rule's maximum length.
const CANDIDATE_COST: usize = 256;

/// Work units between two reads of the clock (64 KiB of text, or 256 candidates).
const CLOCK_EVERY: usize = 64 * 1024;

/// A per-request masking time budget, checked cooperatively: the engine charges it for the
/// text it scans and the candidates it resolves, and reads the clock only every
/// [`CLOCK_EVERY`] work units, so the check costs nothing measurable. Once spent it stays spent.
/// Not `Sync`: one request's masking runs on one thread.
#[derive(Debug)]
pub struct Budget {
    deadline: Instant,
    budget_ms: u64,
    unchecked: Cell<usize>,
    spent: Cell<bool>,
}

impl Budget {
    /// A budget of `budget_ms` milliseconds from now.
    pub fn new(budget_ms: u64) -> Budget {
        Budget::until(Instant::now() + Duration::from_millis(budget_ms), budget_ms)
    }

    /// A budget ending at `deadline` (`budget_ms` is what error messages name).
    pub fn until(deadline: Instant, budget_ms: u64) -> Budget {
        Budget {
            deadline,
            budget_ms,
            // The first charge reads the clock.
            unchecked: Cell::new(CLOCK_EVERY),
            spent: Cell::new(false),
        }
    }

    pub fn budget_ms(&self) -> u64 {
        self.budget_ms
    }

    /// Count `work` units; `Err` once the deadline has passed.
    pub fn charge(&self, work: usize) -> Result<(), MaskError> {
        let unchecked = self.unchecked.get().saturating_add(work);
        if unchecked >= CLOCK_EVERY {
            self.unchecked.set(0);
            if Instant::now() >= self.deadline {
                self.spent.set(true);
            }
        } else {
            self.unchecked.set(unchecked);
        }
        if self.spent.get() {
            return Err(MaskError::OverBudget {
                budget_ms: self.budget_ms,
            });
        }
        Ok(())
    }
}

/// One secret (or denylisted span) found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Index of the rule in the engine's matcher.
    pub rule: u32,
    pub rule_id: String,
    pub action: Action,
    /// Absolute byte span of the secret in the original text.
    pub span: Range<usize>,
    pub placeholder: String,
    /// Whether the span was replaced in the output.
    pub rewritten: bool,
    /// Length of the secret in characters (for previews that never show the secret).
    pub secret_chars: usize,
    /// For rules whose format carries a checksum: whether this secret's checksum is valid
    /// (a certainly-real token). `None` for every other rule.
    pub checksum_valid: Option<bool>,
    /// What a finding that is not a span of text matched, in words an approver and the audit
    /// trail may read (a protected file's path and how many of its lines); never text of the
    /// request.
    pub detail: Option<String>,
}

/// Which actions rewrite text in a given scope. In a request, `block` and `approve` findings
/// stop or hold the whole request, so rewriting them would only hide what the approver needs;
/// in a response, nothing can be refused any more, so they are masked (fail safe).
pub fn rewrites(scope: Scope, action: Action) -> bool {
    match action {
        Action::Mask => true,
        Action::Block | Action::Approve => scope != Scope::Request,
        Action::Audit => false,
    }
}

/// The order of [`PROTOCOL_WORDS`]: shorter first, then by bytes.
#[cfg(test)]
fn protocol_word_order(word: &str, text: &str) -> std::cmp::Ordering {
    word.len().cmp(&text.len()).then_with(|| word.cmp(text))
}

/// Slots of the open-addressed table that finds a [`PROTOCOL_WORDS`] entry: seven times the
/// words, so a probe that is not a word mostly ends on its first, empty slot.
const PROTOCOL_WORD_SLOTS: usize = 1024;

/// The slot a text's probe starts at: its length and its first and last eight bytes (every
/// probe, however long, costs the same few instructions; which slot it lands in decides only
/// how far the probe walks, never whether a text is a word: that is compared byte for byte).
fn protocol_word_slot(text: &[u8]) -> usize {
    let (head, tail) = match (text.first_chunk::<8>(), text.last_chunk::<8>()) {
        (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
        // Shorter than eight bytes: one word of all of them.
        _ => {
            let short = text
                .iter()
                .fold(0u64, |word, &byte| word << 8 | u64::from(byte));
            (short, short)
        }
    };
    let mixed = (head ^ tail.rotate_left(29) ^ (text.len() as u64) << 56)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 32) as usize % PROTOCOL_WORD_SLOTS
}

/// Where `text` is in [`PROTOCOL_WORDS`], if it is one of them.
fn protocol_word_index(text: &str) -> Option<usize> {
    // `slots[s]`: 1 + the index of the word that took slot `s`; 0: empty.
    static SLOTS: OnceLock<Box<[u16]>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let mut slots = vec![0u16; PROTOCOL_WORD_SLOTS].into_boxed_slice();
        for (index, word) in PROTOCOL_WORDS.iter().enumerate() {
            let mut slot = protocol_word_slot(word.as_bytes());
            while slots[slot] != 0 {
                slot = (slot + 1) % PROTOCOL_WORD_SLOTS;
            }
            slots[slot] = index as u16 + 1;
        }
        slots
    });
    let mut slot = protocol_word_slot(text.as_bytes());
    loop {
        let index = usize::from(*slots.get(slot)?).checked_sub(1)?;
        if PROTOCOL_WORDS.get(index) == Some(&text) {
            return Some(index);
        }
        slot = (slot + 1) % PROTOCOL_WORD_SLOTS;
    }
}

/// The Claude API's own words, which every exchange repeats: its JSON's field names and event,
/// block and delta types, roles and stop reasons (a streamed reply's `message_start`,
/// `content_block_start` and `message_delta` are mostly these), its response headers' names
/// and common values, its routes' paths (and Claude Code's `beta=true` query), and the request
/// header lines every SDK sends alike (`anthropic-version: 2023-06-01`, as the metadata scan
/// reads them). Sorted shorter first, then by bytes (found through a hash table,
/// [`protocol_word_index`]). This is not a list of texts let through unscanned: a word's scan result is
/// remembered only after this engine has scanned it and found nothing in any scope
/// ([`Engine::protocol_word_is_clean`]), so an organisation's rule or term that matches one
/// still finds it.
pub const PROTOCOL_WORDS: [&str; 141] = [
    "id",
    "any",
    "auto",
    "data",
    "name",
    "none",
    "ping",
    "role",
    "text",
    "type",
    "user",
    "array",
    "delta",
    "error",
    "image",
    "index",
    "input",
    "model",
    "tools",
    "top_k",
    "top_p",
    "usage",
    "base64",
    "cf-ray",
    "number",
    "object",
    "source",
    "stream",
    "string",
    "system",
    "boolean",
    "chunked",
    "content",
    "enabled",
    "integer",
    "message",
    "refusal",
    "user_id",
    "end_turn",
    "is_error",
    "messages",
    "metadata",
    "no-cache",
    "priority",
    "required",
    "standard",
    "thinking",
    "tool_use",
    "api_error",
    "assistant",
    "beta=true",
    "citations",
    "container",
    "ephemeral",
    "signature",
    "/v1/models",
    "cloudflare",
    "keep-alive",
    "max_tokens",
    "media_type",
    "pause_turn",
    "properties",
    "request-id",
    "text_delta",
    "description",
    "retry-after",
    "stop_reason",
    "temperature",
    "tool_choice",
    "tool_result",
    "tool_use_id",
    "/v1/messages",
    "content-type",
    "input_schema",
    "input_tokens",
    "message_stop",
    "partial_json",
    "service_tier",
    "x-robots-tag",
    "budget_tokens",
    "cache-control",
    "cache_control",
    "content_block",
    "message_delta",
    "message_start",
    "output_tokens",
    "stop_sequence",
    "anthropic_beta",
    "cache_creation",
    "stop_sequences",
    "thinking_delta",
    "x-should-retry",
    "accept-encoding",
    "cf-cache-status",
    "citations_delta",
    "not_found_error",
    "server_tool_use",
    "signature_delta",
    "application/json",
    "content-encoding",
    "input_json_delta",
    "overloaded_error",
    "permission_error",
    "rate_limit_error",
    "anthropic_version",
    "redacted_thinking",
    "text/event-stream",
    "transfer-encoding",
    "content_block_stop",
    "context_management",
    "content_block_delta",
    "content_block_start",
    "web_search_requests",
    "authentication_error",
    "invalid_request_error",
    "web_search_tool_result",
    "cache_read_input_tokens",
    "x-streammask-request-id",
    "accept: application/json",
    "/v1/messages/count_tokens",
    "anthropic-organization-id",
    "ephemeral_1h_input_tokens",
    "ephemeral_5m_input_tokens",
    "strict-transport-security",
    "cache_creation_input_tokens",
    "anthropic-version: 2023-06-01",
    "x-envoy-upstream-service-time",
    "content-type: application/json",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-reset",
    "text/event-stream; charset=utf-8",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
];

/// The compiled rules plus the placeholder key: everything needed to mask.
#[derive(Debug)]
pub struct Engine {
    matcher: Arc<Matcher>,
    key: PlaceholderKey,
    max_hold: usize,
    /// Secrets of this exchange found earlier, masked wherever they occur ([`known`]).
    known: Option<Arc<KnownSecrets>>,
    /// `[i]`: [`PROTOCOL_WORDS`]`[i]` holds no finding for these rules in any scope. Computed
    /// on first use; shared by the engines [`Engine::with_known`] makes (same rules).
    clean_protocol_words: Arc<OnceLock<Vec<bool>>>,
    /// Short texts these rules found nothing in ([`CleanTexts`]); shared like the words above,
    /// used only by an engine without known secrets.
    clean_texts: Arc<CleanTexts>,
}

/// The result of masking a whole text.
#[derive(Debug)]
pub struct Masked<'a> {
    pub text: Cow<'a, str>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretSpan {
    rule: u32,
    span: Range<usize>,
    /// An occurrence of a known secret rather than a rule's match.
    known: bool,
}

/// The longest match a rule may have for an engine holding at most `max_hold` bytes: a match
/// must fit in the hold with one byte to spare on each side (the byte that ends a candidate and
/// the byte forced out at the cap), so that forced emission never cuts an undecided secret.
pub const fn max_match_len(max_hold: usize) -> usize {
    max_hold.saturating_sub(2)
}

impl Engine {
    /// Compile the enabled rules of `set` for a hold cap of `max_hold` bytes.
    pub fn compile(
        set: &RuleSet,
        key: PlaceholderKey,
        max_hold: usize,
    ) -> Result<Engine, MaskError> {
        Self::compile_with(set, key, max_hold, None)
    }

    /// [`Engine::compile`] whose matcher may scan a large dictionary with automata while its
    /// databases compile in the background ([`Matcher::compile_with`]).
    pub fn compile_with(
        set: &RuleSet,
        key: PlaceholderKey,
        max_hold: usize,
        interim: Option<InterimOptions>,
    ) -> Result<Engine, MaskError> {
        let matcher = Matcher::compile_with(set, max_match_len(max_hold), interim)?;
        Engine::new(matcher, key, max_hold)
    }

    pub fn new(
        matcher: Matcher,
        key: PlaceholderKey,
        max_hold: usize,
    ) -> Result<Engine, MaskError> {
        if max_hold <= matcher.max_match_len() + 1 || max_hold < 64 {
            return Err(MaskError::HoldTooSmall {
                max_hold,
                longest: matcher.max_match_len(),
            });
        }
        Ok(Engine {
            matcher: Arc::new(matcher),
            key,
            max_hold,
            known: None,
            clean_protocol_words: Arc::new(OnceLock::new()),
            clean_texts: Arc::default(),
        })
    }

    /// This engine (same rules, key and hold) that also masks every occurrence of `known`
    /// secrets, each with the placeholder of the rule that found it: the engine of one exchange
    /// once its request has been scanned.
    pub fn with_known(&self, known: Option<Arc<KnownSecrets>>) -> Engine {
        Engine {
            matcher: Arc::clone(&self.matcher),
            key: self.key.clone(),
            max_hold: self.max_hold,
            known,
            clean_protocol_words: Arc::clone(&self.clean_protocol_words),
            clean_texts: Arc::clone(&self.clean_texts),
        }
    }

    /// Whether `text` is one of [`PROTOCOL_WORDS`] that these rules find nothing in, in any
    /// scope. The first call scans every word once (about 140 short block scans); a text the
    /// answer lets through is exactly one that [`Engine::mask`] would return unchanged with no
    /// finding, so skipping its scan changes no result. With known secrets (one exchange's
    /// engine) every text is scanned, as those are not part of this answer.
    fn protocol_word_is_clean(&self, text: &str) -> bool {
        if self.known.is_some() {
            return false;
        }
        let Some(at) = protocol_word_index(text) else {
            return false;
        };
        let clean = self.clean_protocol_words.get_or_init(|| {
            PROTOCOL_WORDS
                .iter()
                .map(|word| {
                    Scope::ALL.iter().all(|scope| {
                        self.block_scanned(word, *scope, false, None)
                            .is_ok_and(|masked| masked.findings.is_empty())
                    })
                })
                .collect()
        });
        clean[at]
    }

    /// The secrets this engine masks wherever they occur, if any.
    pub fn known(&self) -> Option<&Arc<KnownSecrets>> {
        self.known.as_ref()
    }

    /// The set of secrets `found` (rule index and the exact bytes it masked) that may be
    /// propagated; `None` when none may (see [`known`] for which).
    pub fn known_secrets<'s>(
        &self,
        found: impl IntoIterator<Item = (u32, &'s [u8])>,
    ) -> Result<Option<Arc<KnownSecrets>>, MaskError> {
        let matcher = &self.matcher;
        let confirmed = found
            .into_iter()
            .filter(|&(rule, _)| (rule as usize) < matcher.all_rules().len())
            .map(|(rule, secret)| known::Confirmed {
                rule,
                generic: matcher.rule(rule).rule.generic,
                secret,
            });
        Ok(KnownSecrets::new(confirmed, matcher.max_match_len())?.map(Arc::new))
    }

    /// This engine knowing the secrets it masks in `text` (see [`Engine::with_known`]): masking
    /// `text` again with it also masks their bare repeats, before and after the occurrence a rule
    /// found. For a whole text scanned before anything is forwarded (`streammask scan`).
    pub fn knowing_secrets_of(&self, text: &str, scope: Scope) -> Result<Engine, MaskError> {
        let findings = self.scan(text, scope)?;
        let known = self.known_secrets(
            findings
                .iter()
                .filter(|f| f.rewritten)
                .map(|f| (f.rule, &text.as_bytes()[f.span.clone()])),
        )?;
        Ok(self.with_known(known))
    }

    /// Texts shorter than this hold no finding.
    fn min_scan_len(&self) -> usize {
        let rules = self.matcher.min_match_len();
        self.known
            .as_ref()
            .map_or(rules, |known| rules.min(known.shortest()))
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    pub fn max_hold(&self) -> usize {
        self.max_hold
    }

    pub fn placeholder_key(&self) -> &PlaceholderKey {
        &self.key
    }

    /// The description of the rule `rule_id`, for messages that say why something was refused.
    pub fn rule_description(&self, rule_id: &str) -> &str {
        self.matcher
            .rule_by_id(rule_id)
            .map_or("", |r| r.rule.description.as_str())
    }

    /// Whether an active rule of this engine is a protected source tree.
    pub fn has_protected_code(&self) -> bool {
        self.matcher.has_protected_code()
    }

    /// One finding per protected file of which `text` holds a run of at least the rule's
    /// `min_match_lines` lines' worth (active rules of `scope` only). The finding is not a span:
    /// it replaces nothing, and its detail names the file and the lines matched, never the
    /// code.
    pub fn find_protected_code(&self, text: &str, scope: Scope) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (index, compiled) in self.matcher.all_rules().iter().enumerate() {
            let Some(tree) = compiled.rule.protected_code.as_ref() else {
                continue;
            };
            if !compiled.active() || compiled.scope_bits & scope.bit() == 0 {
                continue;
            }
            for found in tree.index.find(text, tree.min_match_lines) {
                findings.push(Finding {
                    rule: u32::try_from(index).unwrap_or(u32::MAX),
                    rule_id: compiled.id().to_string(),
                    action: compiled.action(),
                    span: 0..0,
                    placeholder: String::new(),
                    rewritten: false,
                    secret_chars: 0,
                    checksum_valid: None,
                    detail: Some(format!("{} lines of `{}`", found.lines, found.file)),
                });
            }
        }
        findings
    }

    /// The ids of the rules whose placeholders are never restored (`restore = false`).
    pub fn non_restoring_rule_ids(&self) -> impl Iterator<Item = &str> {
        self.matcher
            .rules()
            .filter(|r| !r.rule.restore)
            .map(|r| r.id())
    }

    /// The index of rule `rule_id`, as findings carry it.
    pub fn rule_index(&self, rule_id: &str) -> Option<u32> {
        self.matcher
            .all_rules()
            .iter()
            .position(|r| r.active() && r.id() == rule_id)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// `text` with every finding replaced by its placeholder, whatever the rule's action: for
    /// short client-chosen strings (a model name, a JSON path) and transcripts that end up in
    /// the audit log, which must hold no text any rule matches.
    pub fn redact<'t>(&self, text: &'t str, scope: Scope) -> Cow<'t, str> {
        let findings = match self.scan(text, scope) {
            Ok(findings) if findings.is_empty() => return Cow::Borrowed(text),
            Ok(findings) => findings,
            Err(_) => return Cow::Borrowed("[unscannable]"),
        };
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for finding in &findings {
            if finding.span.start >= last {
                out.push_str(&text[last..finding.span.start]);
                out.push_str(&finding.placeholder);
                last = finding.span.end;
            }
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    /// [`Engine::redact`] in every scope: for text that will be quoted whatever direction it
    /// came from (a JSON path built from client or upstream keys, in an error message or an
    /// audit record), so that no rule's match survives, whichever scopes the rule applies to.
    pub fn redact_all<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for scope in Scope::ALL {
            if let Cow::Owned(redacted) = self.redact(&out, scope) {
                out = Cow::Owned(redacted);
            }
        }
        out
    }

    fn in_scope(&self, rule: u32, scope: Scope) -> bool {
        self.matcher.rule(rule).scope_bits & scope.bit() != 0
    }

    /// Findings in `text` without building the masked text: exactly the findings
    /// [`Engine::mask`] reports, for callers that rewrite the text themselves (the JSON walker
    /// replaces spans in the raw body, so a masked copy of every string would be wasted).
    pub fn scan(&self, text: &str, scope: Scope) -> Result<Vec<Finding>, MaskError> {
        Ok(self.block(text, scope, false, None)?.findings)
    }

    /// [`Engine::scan`] charged to `budget`: [`MaskError::OverBudget`] once the budget's time is
    /// spent (checked between candidates, so a scan ends within a few hundred candidates of it).
    pub fn scan_within(
        &self,
        text: &str,
        scope: Scope,
        budget: Option<&Budget>,
    ) -> Result<Vec<Finding>, MaskError> {
        Ok(self.block(text, scope, false, budget)?.findings)
    }

    /// Block mode: mask the whole `text`. Text without findings is returned borrowed.
    pub fn mask<'a>(&self, text: &'a str, scope: Scope) -> Result<Masked<'a>, MaskError> {
        self.block(text, scope, true, None)
    }

    /// [`Engine::mask`] charged to `budget` (see [`Engine::scan_within`]).
    pub fn mask_within<'a>(
        &self,
        text: &'a str,
        scope: Scope,
        budget: Option<&Budget>,
    ) -> Result<Masked<'a>, MaskError> {
        self.block(text, scope, true, budget)
    }

    fn block<'a>(
        &self,
        text: &'a str,
        scope: Scope,
        write: bool,
        budget: Option<&Budget>,
    ) -> Result<Masked<'a>, MaskError> {
        // Most JSON strings (keys, ids, short values) are shorter than any secret, most of the
        // rest of a stream's small documents are the API's own words, and a client repeats its
        // header lines and model name on every request: skip the scan call for them.
        let remembers = self.known.is_none();
        if text.len() < self.min_scan_len()
            || self.protocol_word_is_clean(text)
            || (remembers && self.clean_texts.contains(text, scope))
        {
            return Ok(Masked {
                text: Cow::Borrowed(text),
                findings: Vec::new(),
            });
        }
        let masked = self.block_scanned(text, scope, write, budget)?;
        if remembers && masked.findings.is_empty() {
            self.clean_texts.remember(text, scope);
        }
        Ok(masked)
    }

    /// [`Engine::block`] without its shortcuts: every text is scanned.
    fn block_scanned<'a>(
        &self,
        text: &'a str,
        scope: Scope,
        write: bool,
        budget: Option<&Budget>,
    ) -> Result<Masked<'a>, MaskError> {
        let bytes = text.as_bytes();
        if let Some(budget) = budget {
            budget.charge(bytes.len())?;
        }
        // Candidates are resolved as Hyperscan reports them (by end offset), each in O(1)
        // besides its two bounded regex runs: no step looks at more than one rule's window.
        let mut resolver = Resolver::default();
        let mut spans: Vec<SecretSpan> = Vec::new();
        let mut seen_spans: HashSet<(u32, usize, usize)> = HashSet::new();
        let over_budget = Cell::new(None);
        let charge = |work: usize| match budget.map(|budget| budget.charge(work)) {
            Some(Err(error)) => {
                over_budget.set(Some(error));
                false
            }
            _ => true,
        };
        let completed = self
            .matcher
            .scan_block_charged(bytes, charge, |c: Candidate| {
                if !self.in_scope(c.rule, scope) {
                    return true;
                }
                if !charge(CANDIDATE_COST) {
                    return false;
                }
                if resolver.covered(c) {
                    return true;
                }
                let Some(start) = self.matcher.start_of(c.rule, bytes, 0, c.end) else {
                    return true;
                };
                if !resolver.first_start(c.rule, start) {
                    return true;
                }
                let confirmed = self.matcher.confirm(c.rule, bytes, 0, start);
                let match_end = confirmed.as_ref().map_or(c.end, |found| found.match_end);
                resolver.add(Known {
                    rule: c.rule,
                    start,
                    match_end,
                });
                if let Some(Confirmed {
                    secret: Some(span), ..
                }) = confirmed
                {
                    if seen_spans.insert((c.rule, span.start, span.end)) {
                        spans.push(SecretSpan {
                            rule: c.rule,
                            span,
                            known: false,
                        });
                    }
                }
                true
            })?;
        if let Some(error) = over_budget.take() {
            return Err(error);
        }
        debug_assert!(completed);
        if let Some(known) = &self.known {
            if let Some(budget) = budget {
                budget.charge(bytes.len())?;
            }
            known.find(bytes, |rule, span| {
                spans.push(SecretSpan {
                    rule,
                    span,
                    known: true,
                })
            });
        }
        if spans.is_empty() {
            return Ok(Masked {
                text: Cow::Borrowed(text),
                findings: Vec::new(),
            });
        }
        // Room for every placeholder up front: a placeholder is often longer than its secret,
        // and growing a multi-megabyte buffer once copies the whole text again.
        let capacity = if write {
            bytes.len()
                + spans
                    .iter()
                    .map(|s| PLACEHOLDER_OVERHEAD + self.matcher.rule(s.rule).id().len())
                    .sum::<usize>()
        } else {
            0
        };
        let mut out = Vec::with_capacity(capacity);
        let mut findings = Vec::new();
        let mut emitter = Emitter {
            engine: self,
            scope,
            write,
            pause: 0,
        };
        emitter.emit(
            bytes,
            0,
            0..bytes.len(),
            &mut spans,
            &mut out,
            &mut findings,
            &mut 0,
        );
        if !write || findings.iter().all(|f| !f.rewritten) {
            return Ok(Masked {
                text: Cow::Borrowed(text),
                findings,
            });
        }
        Ok(Masked {
            text: Cow::Owned(rewritten_text(text, out, &findings)),
            findings,
        })
    }

    /// A streaming masker over one logical text (one content block).
    pub fn stream(self: &Arc<Self>, scope: Scope) -> Result<StreamMasker, MaskError> {
        Ok(StreamMasker {
            stream: Some(self.matcher.open_stream()?),
            engine: Arc::clone(self),
            scope,
            buf: Vec::new(),
            base: 0,
            emitted: 0,
            after_last_space: 0,
            word_starts: VecDeque::new(),
            pending: Vec::new(),
            resolved: Vec::new(),
            finals: Vec::new(),
            findings: Vec::new(),
            late_matches: 0,
            reopened: Vec::new(),
            last_pause: 0,
            known_found_to: 0,
        })
    }
}

/// How many runs of whitespace `text` holds (a trailing run counts).
fn whitespace_runs(text: &[u8]) -> usize {
    let mut runs = 0;
    let mut in_run = false;
    for byte in text {
        let space = byte.is_ascii_whitespace();
        if space && !in_run {
            runs += 1;
        }
        in_run = space;
    }
    runs
}

/// A candidate whose start is known, with the end of its confirmed match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    rule: u32,
    start: usize,
    match_end: usize,
}

/// Hyperscan reports every end of a long match (a private key body ends at each of its
/// thousands of bytes); a report inside a match already confirmed for the same rule adds
/// nothing, and skipping it keeps long matches linear instead of quadratic. Both modes skip
/// by the same rule, so they still see the same candidates.
fn covered<'k>(mut known: impl Iterator<Item = &'k Known>, candidate: Candidate) -> bool {
    known.any(|k| {
        k.rule == candidate.rule && k.start < candidate.end && candidate.end <= k.match_end
    })
}

/// Block mode's record of the candidates whose start is known, answering [`covered`] and the
/// "same start already confirmed" question in O(1) each.
///
/// Hyperscan reports matches in ascending end order. While that holds, every known candidate
/// started before the current end (its start is before its own end, which is not after the
/// current one), so "some known match of this rule covers `end`" is "the furthest match end
/// known for this rule reaches `end`": one number per rule. Should a report ever come out of
/// order, the rule's full list is searched instead, exactly as [`covered`] does.
#[derive(Debug, Default)]
struct Resolver {
    /// Per rule: the furthest match end and every known (start, match end).
    rules: HashMap<u32, (usize, Vec<(usize, usize)>)>,
    starts: HashSet<(u32, usize)>,
    /// The largest candidate end seen so far.
    last_end: usize,
}

impl Resolver {
    fn covered(&mut self, candidate: Candidate) -> bool {
        let in_order = candidate.end >= self.last_end;
        self.last_end = self.last_end.max(candidate.end);
        let Some((furthest, known)) = self.rules.get(&candidate.rule) else {
            return false;
        };
        if in_order {
            *furthest >= candidate.end
        } else {
            known
                .iter()
                .any(|&(start, match_end)| start < candidate.end && candidate.end <= match_end)
        }
    }

    /// Whether `start` is new for `rule` (a confirmed match of it starting there is not known).
    fn first_start(&self, rule: u32, start: usize) -> bool {
        !self.starts.contains(&(rule, start))
    }

    fn add(&mut self, known: Known) {
        self.starts.insert((known.rule, known.start));
        let (furthest, list) = self.rules.entry(known.rule).or_default();
        *furthest = (*furthest).max(known.match_end);
        list.push((known.start, known.match_end));
    }
}

fn push_unique(spans: &mut Vec<SecretSpan>, span: SecretSpan) {
    if !spans.contains(&span) {
        spans.push(span);
    }
}

/// Turns resolved spans into output: merges overlapping spans into one placeholder (named after
/// the earliest, then longest, span; see `emit` for the tie-break) and copies everything else through. Shared by both modes
/// so they cannot disagree on overlap handling.
struct Emitter<'e> {
    engine: &'e Engine,
    scope: Scope,
    /// Whether to write the masked text to `out`; findings are reported either way.
    write: bool,
    /// Offset of the last [`StreamMasker::flush`] (0 without one): a secret that started before
    /// it was cut by a pause the client joins across, and finishing it after the pause is the
    /// design, not a hold bound that was too small, so it is not a late match.
    pause: usize,
}

/// The masked text the emitter wrote for `text`, as a `String`.
///
/// The emitter's output is slices of `text` cut only at `cursor`/span boundaries, with ASCII
/// placeholders between them; every cut is a rewritten finding's span start or end (or 0 or
/// the end). When all those are char boundaries of `text`, the output is valid UTF-8 and the
/// 4 MiB-per-request validation pass (≈7 % of block masking) is skipped; otherwise it is
/// validated. A failure (a rule span splitting a character) is a rule bug: debug builds stop on
/// it, and release builds replace the stray bytes of the split character with U+FFFD rather
/// than panic on the request path (the secret's bytes are already replaced either way).
fn rewritten_text(text: &str, out: Vec<u8>, findings: &[Finding]) -> String {
    let cuts_on_char_boundaries = findings
        .iter()
        .filter(|f| f.rewritten)
        .all(|f| text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
    if cuts_on_char_boundaries {
        debug_assert!(std::str::from_utf8(&out).is_ok());
        // SAFETY: `out` is a concatenation of `text[a..b]` slices whose ends are all char
        // boundaries of the valid `text` (checked above), and ASCII placeholders.
        unsafe { String::from_utf8_unchecked(out) }
    } else {
        String::from_utf8(out).unwrap_or_else(|split| {
            debug_assert!(false, "a rule span split a UTF-8 character");
            String::from_utf8_lossy(split.as_bytes()).into_owned()
        })
    }
}

impl Emitter<'_> {
    /// Remove every rewriting span of a context rule (`generic`) that overlaps a rewriting
    /// span of a format rule or a known secret: the format rule names the finding and decides
    /// the span (see [`crate::engine::rules::Rule::generic`]). `spans` is sorted by start.
    fn drop_generic_overlaps(&self, spans: &mut Vec<SecretSpan>) {
        let matcher = self.engine.matcher();
        let rewriting = |s: &SecretSpan| rewrites(self.scope, matcher.rule(s.rule).action());
        let generic = |s: &SecretSpan| !s.known && matcher.rule(s.rule).rule.generic;
        if !spans.iter().any(|s| generic(s) && rewriting(s)) {
            return;
        }
        // Precise spans by start, with the furthest end reached so far: a generic span
        // overlaps one iff some precise span starting before its end ends after its start.
        let mut precise: Vec<(usize, usize)> = Vec::new();
        for s in spans.iter().filter(|s| !generic(s) && rewriting(s)) {
            let furthest = precise.last().map_or(0, |&(_, end)| end).max(s.span.end);
            precise.push((s.span.start, furthest));
        }
        if precise.is_empty() {
            return;
        }
        spans.retain(|s| {
            if !(generic(s) && rewriting(s)) {
                return true;
            }
            let before_end = precise.partition_point(|&(start, _)| start < s.span.end);
            before_end == 0 || precise[before_end - 1].1 <= s.span.start
        });
    }

    /// Emit `region` (absolute) of the text held in `buf` (starting at absolute `base`).
    /// `spans` must hold every final span starting before `region.end`; the ones consumed are
    /// removed. Spans starting before `region.start` were already emitted: they count as late.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        buf: &[u8],
        base: usize,
        region: Range<usize>,
        spans: &mut Vec<SecretSpan>,
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
        late_matches: &mut u64,
    ) {
        let matcher = self.engine.matcher();
        let write = self.write;
        // Earliest, then longest, then a known secret's occurrence (so every occurrence of it
        // gets the same placeholder), then the rule whose format carries a checksum (a token
        // format rule is more specific than a generic `TOKEN=…` rule over the same span, and
        // names the placeholder), then pack order.
        let has_checksum = |rule: u32| matcher.rule(rule).checksum().is_some();
        spans.sort_by(|a, b| {
            a.span
                .start
                .cmp(&b.span.start)
                .then(b.span.end.cmp(&a.span.end))
                .then(b.known.cmp(&a.known))
                .then(has_checksum(b.rule).cmp(&has_checksum(a.rule)))
                .then(a.rule.cmp(&b.rule))
        });
        self.drop_generic_overlaps(spans);
        let mut cursor = region.start;
        let mut consumed = 0;
        let mut group: Option<(u32, Range<usize>)> = None;
        let mut flush_group =
            |group: (u32, Range<usize>), cursor: &mut usize, out: &mut Vec<u8>| {
                let (rule, span) = group;
                let compiled = matcher.rule(rule);
                let secret = &buf[span.start - base..span.end - base];
                let placeholder = self.engine.key.placeholder(compiled.id(), secret);
                let rewritten = rewrites(self.scope, compiled.action());
                if span.start < *cursor && span.start >= self.pause {
                    *late_matches += 1;
                }
                if rewritten {
                    let from = span.start.max(*cursor);
                    if write {
                        out.extend_from_slice(&buf[*cursor - base..from - base]);
                    }
                    if span.end > *cursor {
                        if write {
                            out.extend_from_slice(placeholder.as_bytes());
                        }
                        *cursor = span.end;
                    }
                }
                findings.push(Finding {
                    rule,
                    rule_id: compiled.id().to_string(),
                    action: compiled.action(),
                    span: span.clone(),
                    placeholder,
                    rewritten,
                    secret_chars: String::from_utf8_lossy(secret).chars().count(),
                    checksum_valid: compiled.checksum().map(|checksum| checksum.verify(secret)),
                    detail: None,
                });
            };
        for candidate in spans.iter() {
            if candidate.span.start >= region.end {
                break;
            }
            consumed += 1;
            let rewriting = rewrites(self.scope, matcher.rule(candidate.rule).action());
            match &mut group {
                // Non-rewriting findings are reported on their own and never merged, so an
                // audit-only rule cannot widen a masked span.
                Some((rule, span))
                    if candidate.span.start < span.end
                        && rewriting
                        && rewrites(self.scope, matcher.rule(*rule).action()) =>
                {
                    span.end = span.end.max(candidate.span.end);
                }
                _ => {
                    if let Some(done) = group.take() {
                        flush_group(done, &mut cursor, out);
                    }
                    group = Some((candidate.rule, candidate.span.clone()));
                }
            }
        }
        if let Some(done) = group.take() {
            flush_group(done, &mut cursor, out);
        }
        spans.drain(..consumed);
        if cursor < region.end && self.write {
            out.extend_from_slice(&buf[cursor - base..region.end - base]);
        }
    }
}

/// Masks one logical text that arrives in pieces. See the module docs for the invariants.
pub struct StreamMasker {
    engine: Arc<Engine>,
    scope: Scope,
    stream: Option<MatchStream>,
    /// Text from absolute offset `base` to the end of what was received.
    buf: Vec<u8>,
    base: usize,
    emitted: usize,
    /// Absolute offset just after the last whitespace byte received.
    after_last_space: usize,
    /// Where each of the last `word_gaps + 1` whitespace runs ended, oldest first: only kept
    /// when a rule's match may hold whitespace (a dictionary's multi-word term), whose start
    /// is then that many words back.
    word_starts: VecDeque<usize>,
    /// Candidates not yet final, with their tentative secret start.
    pending: Vec<(Known, usize)>,
    /// Candidates already decided, so later reports of the same match are ignored.
    resolved: Vec<Known>,
    /// Final secret spans not yet emitted.
    finals: Vec<SecretSpan>,
    findings: Vec<Finding>,
    late_matches: u64,
    /// Candidates decided at a [`StreamMasker::flush`] and re-opened because the text goes on:
    /// (rule, start). Once decided again they yield a final span only if they grew past what
    /// was emitted, so a flushed secret is not reported twice.
    reopened: Vec<(u32, usize)>,
    /// Offset of the last [`StreamMasker::flush`].
    last_pause: usize,
    /// Every occurrence of a known secret ending at or before this offset is in `finals`.
    known_found_to: usize,
}

impl std::fmt::Debug for StreamMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMasker")
            .field("received", &self.received())
            .field("emitted", &self.emitted)
            .field("held", &self.held())
            .finish()
    }
}

impl StreamMasker {
    fn received(&self) -> usize {
        self.base + self.buf.len()
    }

    /// Bytes received but not yet emitted.
    pub fn held(&self) -> usize {
        self.received() - self.emitted
    }

    /// Bytes of memory this stream holds on to (buffer capacity plus Hyperscan state).
    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity()
            + self.engine.matcher().stream_state_size()
            + self.pending.capacity() * std::mem::size_of::<(Known, usize)>()
            + self.resolved.capacity() * std::mem::size_of::<Known>()
            + self.finals.capacity() * std::mem::size_of::<SecretSpan>()
    }

    /// Findings emitted so far (and drained by the caller with [`take_findings`]).
    ///
    /// [`take_findings`]: StreamMasker::take_findings
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// Secrets whose start had already been emitted when they were found. Zero unless a rule
    /// breaks the length or whitespace contract.
    pub fn late_matches(&self) -> u64 {
        self.late_matches
    }

    pub fn is_finished(&self) -> bool {
        self.stream.is_none()
    }

    /// Feed the next piece of text (any byte boundary, even inside a UTF-8 character) and
    /// append whatever can now be emitted to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), MaskError> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(MaskError::Finished);
        };
        let chunk_start = self.received();
        self.buf.extend_from_slice(chunk);
        if let Some(last_space) = chunk.iter().rposition(u8::is_ascii_whitespace) {
            self.after_last_space = chunk_start + last_space + 1;
        }
        let word_gaps = self.engine.matcher().word_gaps();
        if word_gaps > 0 {
            for (at, _) in chunk
                .iter()
                .enumerate()
                .filter(|(_, byte)| byte.is_ascii_whitespace())
            {
                let after = chunk_start + at + 1;
                match self.word_starts.back_mut() {
                    Some(last) if *last + 1 == after => *last = after,
                    _ => {
                        self.word_starts.push_back(after);
                        if self.word_starts.len() > word_gaps + 1 {
                            self.word_starts.pop_front();
                        }
                    }
                }
            }
        }
        let engine = Arc::clone(&self.engine);
        let matcher = engine.matcher();
        let scope = self.scope;
        let mut fresh = Vec::new();
        matcher.scan_stream(stream, chunk, |c| {
            if matcher.rule(c.rule).scope_bits & scope.bit() != 0 {
                fresh.push(c);
            }
        })?;
        // Re-confirm what is pending first, so the reports this chunk adds to a growing
        // match are recognised as covered and cost nothing.
        self.resolve(false);
        self.admit(fresh);
        self.resolve(false);
        self.find_known();
        let boundary = self.emit_boundary();
        self.emit_to(boundary, out);
        self.trim();
        Ok(())
    }

    /// End of the text: emit everything still held, masked as block mode would.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), MaskError> {
        let Some(stream) = self.stream.take() else {
            return Err(MaskError::Finished);
        };
        let engine = Arc::clone(&self.engine);
        let matcher = engine.matcher();
        let scope = self.scope;
        let mut fresh = Vec::new();
        matcher.close_stream(stream, |c| {
            if matcher.rule(c.rule).scope_bits & scope.bit() != 0 {
                fresh.push(c);
            }
        })?;
        self.admit(fresh);
        self.resolve(true);
        let end = self.received();
        self.emit_to(end, out);
        self.buf.clear();
        self.base = end;
        Ok(())
    }

    /// A pause in the text that a client nevertheless joins with what follows (the end of one
    /// content block when the next block continues the same joined text): emit everything
    /// held, masked as [`StreamMasker::finish`] masks the end of a text, but keep the stream
    /// and the left context. A secret that goes on after the pause is then still found when
    /// its match completes, and the part of it after the pause is replaced by its placeholder
    /// (not counted as a late match); what was emitted before the pause is at
    /// most the head a rule could not yet tell from ordinary text.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), MaskError> {
        if self.stream.is_none() {
            return Err(MaskError::Finished);
        }
        // Matches that only the end of the data decides (a trailing `\b` or `$`): Hyperscan
        // reports them when a stream closes, and this one stays open, so the kept text (at
        // least the longest rule back) is scanned once in block mode for them.
        let engine = Arc::clone(&self.engine);
        let matcher = engine.matcher();
        let (scope, base, emitted) = (self.scope, self.base, self.emitted);
        let mut fresh = Vec::new();
        matcher.scan_block(&self.buf, |c| {
            if base + c.end > emitted && matcher.rule(c.rule).scope_bits & scope.bit() != 0 {
                fresh.push(Candidate {
                    rule: c.rule,
                    end: base + c.end,
                });
            }
        })?;
        self.admit(fresh);
        let open: Vec<(u32, usize)> = self
            .pending
            .iter()
            .map(|(known, _)| (known.rule, known.start))
            .collect();
        self.resolve(true);
        let end = self.received();
        self.emit_to(end, out);
        self.last_pause = end;
        // Matches decided only because the text paused may still grow: re-open them.
        for (rule, start) in open {
            if let Some(at) = self
                .resolved
                .iter()
                .position(|k| (k.rule, k.start) == (rule, start))
            {
                let known = self.resolved.swap_remove(at);
                self.pending.push((known, start));
                self.reopened.push((rule, start));
            }
        }
        self.trim();
        Ok(())
    }

    /// Add every occurrence of a known secret that ended since the last call to the final
    /// spans. An occurrence is whitespace-free, so until its last byte arrives it lies in the
    /// held trailing run and nothing of it has been emitted.
    fn find_known(&mut self) {
        let received = self.received();
        let Some(known) = self.engine.known() else {
            return;
        };
        let from = self
            .known_found_to
            .saturating_sub(known.longest().saturating_sub(1))
            .max(self.base);
        let (base, found_to) = (self.base, self.known_found_to);
        let finals = &mut self.finals;
        known.find(&self.buf[from - base..], |rule, span| {
            let span = span.start + from..span.end + from;
            if span.end > found_to {
                push_unique(
                    finals,
                    SecretSpan {
                        rule,
                        span,
                        known: true,
                    },
                );
            }
        });
        self.known_found_to = received;
    }

    fn admit(&mut self, fresh: Vec<Candidate>) {
        let engine = Arc::clone(&self.engine);
        let matcher = engine.matcher();
        for candidate in fresh {
            let known_now = || {
                self.resolved
                    .iter()
                    .chain(self.pending.iter().map(|(k, _)| k))
            };
            if covered(known_now(), candidate) {
                continue;
            }
            let Some(start) = matcher.start_of(candidate.rule, &self.buf, self.base, candidate.end)
            else {
                continue;
            };
            let known = known_now().any(|k| (k.rule, k.start) == (candidate.rule, start));
            // A start already trimmed away cannot be confirmed; it is older than any rule's
            // maximum length, so it can only be a report Hyperscan repeats for a long match.
            if !known && start >= self.base {
                // Confirm now, so the rest of this chunk's reports for the same match are
                // recognised as covered instead of each costing a reverse search.
                let match_end = matcher
                    .confirm(candidate.rule, &self.buf, self.base, start)
                    .map_or(candidate.end, |c| c.match_end.max(candidate.end));
                let entry = Known {
                    rule: candidate.rule,
                    start,
                    match_end,
                };
                self.pending.push((entry, start));
            }
        }
    }

    fn resolve(&mut self, at_end: bool) {
        let received = self.received();
        let matcher = self.engine.matcher();
        let mut index = 0;
        while index < self.pending.len() {
            let (known, _) = self.pending[index];
            let confirmed = matcher.confirm(known.rule, &self.buf, self.base, known.start);
            let compiled = matcher.rule(known.rule);
            let too_long = received - known.start > compiled.max_len;
            // Final once whitespace follows the secret (inside the match as its terminator,
            // or after it): no response rule's match continues past that. A match that may
            // hold `gaps` whitespace runs is final once more runs than it can hold follow its
            // start: a dictionary term starts at the term and holds `gaps`; a regex match
            // also holds the one character before its secret and the one after, each of
            // which may be whitespace. (Deciding sooner drops a match that is still growing:
            // `4464 4921 7070 4781` is no card, `4464 4921 7070 4781 475` is one, and its
            // start would then be known as decided.)
            let holds = if compiled.rule.dictionary.is_some() {
                compiled.gaps
            } else {
                compiled.gaps + 2
            };
            let decided = at_end
                || too_long
                || if compiled.gaps > 0 {
                    whitespace_runs(&self.buf[known.start.max(self.base) - self.base..]) > holds
                } else {
                    confirmed.as_ref().is_some_and(|c| {
                        let secret_end = c
                            .secret
                            .as_ref()
                            .map_or(c.match_end.saturating_sub(1), |s| s.end);
                        self.buf[secret_end.max(self.base) - self.base..]
                            .iter()
                            .any(u8::is_ascii_whitespace)
                    })
                };
            let match_end = confirmed.as_ref().map_or(known.match_end, |c| c.match_end);
            let known = Known { match_end, ..known };
            if decided {
                self.pending.swap_remove(index);
                self.resolved.push(known);
                let reopened = self
                    .reopened
                    .iter()
                    .position(|&r| r == (known.rule, known.start))
                    .map(|at| self.reopened.swap_remove(at))
                    .is_some();
                if let Some(Confirmed {
                    secret: Some(span), ..
                }) = confirmed
                {
                    if reopened && span.end <= self.emitted {
                        // Emitted (and reported) at the flush, and it did not grow since.
                        continue;
                    }
                    push_unique(
                        &mut self.finals,
                        SecretSpan {
                            rule: known.rule,
                            span,
                            known: false,
                        },
                    );
                }
            } else {
                let tentative = confirmed
                    .and_then(|c| c.secret.map(|s| s.start))
                    .unwrap_or(known.start);
                self.pending[index] = (known, tentative);
                index += 1;
            }
        }
    }

    fn emit_boundary(&self) -> usize {
        let received = self.received();
        let word_gaps = self.engine.matcher().word_gaps();
        let hold_from = if word_gaps == 0 {
            self.after_last_space
        } else if self.word_starts.len() > word_gaps {
            self.word_starts[self.word_starts.len() - 1 - word_gaps]
        } else {
            // Fewer words than a term may span: any of them may start one.
            0
        };
        let mut boundary = hold_from.max(self.emitted);
        // A single-line secret has no whitespace, so the trailing run already covers any that
        // is still in progress; only multi-line secrets (private keys) and secrets that may
        // hold spaces extend the hold to their start.
        let matcher = self.engine.matcher();
        for &(known, tentative) in &self.pending {
            let compiled = matcher.rule(known.rule);
            if compiled.rule.multiline || compiled.gaps > 0 {
                boundary = boundary.min(tentative);
            }
        }
        if received - boundary > self.engine.max_hold {
            boundary = received - self.engine.max_hold;
            while boundary < received && is_continuation(self.buf[boundary - self.base]) {
                boundary += 1;
            }
        }
        for span in &self.finals {
            if span.span.start < boundary && boundary < span.span.end {
                boundary = span.span.start;
            }
        }
        boundary.max(self.emitted)
    }

    fn emit_to(&mut self, boundary: usize, out: &mut Vec<u8>) {
        if boundary <= self.emitted && self.finals.iter().all(|s| s.span.start >= boundary) {
            return;
        }
        let engine = Arc::clone(&self.engine);
        let mut emitter = Emitter {
            engine: &engine,
            scope: self.scope,
            write: true,
            pause: self.last_pause,
        };
        emitter.emit(
            &self.buf,
            self.base,
            self.emitted..boundary,
            &mut self.finals,
            out,
            &mut self.findings,
            &mut self.late_matches,
        );
        self.emitted = boundary;
    }

    /// Drop text nobody can need any more: before the emitted point, before any pending
    /// candidate, and older than the longest rule (plus one byte of look-behind).
    fn trim(&mut self) {
        let received = self.received();
        let longest = self.engine.matcher().max_match_len() + 1;
        let mut keep_from = self.emitted.min(received.saturating_sub(longest));
        for (known, _) in &self.pending {
            keep_from = keep_from.min(known.start);
        }
        let keep_from = keep_from.saturating_sub(1);
        self.resolved.retain(|known| known.start >= keep_from);
        // Amortise: only move memory once a few KiB are dead.
        if keep_from > self.base + 4096 {
            self.buf.drain(..keep_from - self.base);
            self.base = keep_from;
        }
    }
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

impl Drop for StreamMasker {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            // Hyperscan frees stream state only on close; the matches it reports are unwanted.
            let _ = self.engine.matcher().close_stream(stream, |_| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rules::RuleSet;

    const DEMO: &str = r#"
[[rules]]
id = "demo-key"
description = "demo"
pattern = '''\bkey=(?P<secret>[a-z]{4,40})'''
action = "mask"
"#;

    fn engine() -> Engine {
        let set = RuleSet::from_toml("demo.toml", DEMO).expect("rules parse");
        let key = PlaceholderKey::new(b"0123456789abcdef0123").expect("key");
        Engine::compile(&set, key, 1024).expect("engine")
    }

    #[test]
    fn protocol_words_are_sorted_and_unique() {
        assert!(PROTOCOL_WORDS
            .windows(2)
            .all(|pair| protocol_word_order(pair[0], pair[1]).is_lt()));
    }

    #[test]
    fn every_protocol_word_is_found_and_nothing_else() {
        for (index, word) in PROTOCOL_WORDS.iter().enumerate() {
            assert_eq!(protocol_word_index(word), Some(index), "{word}");
            // A word cut short, grown by a byte, or changed in one byte is not a word (unless
            // the list holds that text too).
            let mut probes = vec![word[..word.len() - 1].to_string(), format!("{word}x")];
            for at in 0..word.len() {
                let mut changed = word.as_bytes().to_vec();
                changed[at] ^= 0x20;
                probes.extend(String::from_utf8(changed).ok());
            }
            for probe in probes {
                let listed = PROTOCOL_WORDS.iter().position(|w| *w == probe);
                assert_eq!(protocol_word_index(&probe), listed, "{probe:?}");
            }
        }
        for text in [
            "",
            "x",
            "sk-ant-api03-",
            "content_block_deltaa",
            "anthropic-version:",
        ] {
            assert_eq!(protocol_word_index(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_rule_that_matches_a_protocol_word_still_finds_it() {
        // One rule for every scope, one only for tool input: a word is skipped only when no
        // scope finds anything in it.
        let rules = r#"
[[rules]]
id = "org-role"
description = "an organisation's term that happens to be an API word"
pattern = '''assistant'''
action = "mask"

[[rules]]
id = "org-tool-term"
description = "a term only tool input is scanned for"
pattern = '''content_block_delta'''
action = "block"
applies_to = ["tool_input"]
"#;
        let set = RuleSet::from_toml("org.toml", rules).expect("rules parse");
        let key = PlaceholderKey::new(b"0123456789abcdef0123").expect("key");
        let engine = Engine::compile(&set, key, 1024).expect("engine");
        for _ in 0..2 {
            // the first call works out which words are clean, the second uses the answer
            let masked = engine.mask("assistant", Scope::Response).unwrap();
            assert_eq!(masked.findings.len(), 1, "{:?}", masked.findings);
            assert_ne!(masked.text, "assistant");
            let tool = engine
                .scan("content_block_delta", Scope::ToolInput)
                .unwrap();
            assert_eq!(tool.len(), 1, "{tool:?}");
            assert!(engine
                .scan("content_block_delta", Scope::Response)
                .unwrap()
                .is_empty());
            assert!(engine
                .scan("message_start", Scope::Response)
                .unwrap()
                .is_empty());
        }
        assert!(engine.protocol_word_is_clean("message_start"));
        assert!(!engine.protocol_word_is_clean("assistant"));
        assert!(!engine.protocol_word_is_clean("content_block_delta"));
        assert!(!engine.protocol_word_is_clean("not an API word"));
    }

    fn text() -> String {
        // Every value reports many candidate ends (`{4,40}` is unterminated).
        (0..200)
            .map(|i| format!("line {i} {}={} ", "key", "abcdefghijklmnopqrst"))
            .collect()
    }

    #[test]
    fn a_spent_budget_ends_the_scan_with_an_error_naming_it() {
        let engine = engine();
        // A deadline already in the past: no wall-clock assumption about how fast anything is.
        let spent = Budget::until(Instant::now() - Duration::from_millis(1), 7);
        let err = engine
            .scan_within(&text(), Scope::Request, Some(&spent))
            .unwrap_err();
        assert!(
            matches!(err, MaskError::OverBudget { budget_ms: 7 }),
            "{err}"
        );
        assert!(err.to_string().contains("7 ms"), "{err}");
        // Spent stays spent, also for a text without candidates.
        assert!(engine
            .mask_within(
                "nothing to see here, only words",
                Scope::Request,
                Some(&spent)
            )
            .is_err());
    }

    #[test]
    fn a_budget_that_is_not_spent_changes_nothing() {
        let engine = engine();
        let text = text();
        let generous = Budget::new(600_000);
        let plain = engine.mask(&text, Scope::Request).unwrap();
        let budgeted = engine
            .mask_within(&text, Scope::Request, Some(&generous))
            .unwrap();
        assert_eq!(plain.findings.len(), 200);
        assert_eq!(plain.findings, budgeted.findings);
        assert_eq!(plain.text, budgeted.text);
        assert!(!plain.text.contains("abcdefghijklmnopqrst"));
    }

    fn known(rule: u32, start: usize, match_end: usize) -> Known {
        Known {
            rule,
            start,
            match_end,
        }
    }

    #[test]
    fn resolver_answers_as_the_linear_search_does_in_and_out_of_order() {
        let list = [known(0, 10, 30), known(1, 5, 8), known(0, 40, 45)];
        let mut resolver = Resolver::default();
        for k in list {
            resolver.covered(Candidate {
                rule: k.rule,
                end: k.start + 1,
            });
            resolver.add(k);
        }
        // In order (ascending ends), then out of order (an end below one already seen).
        for end in [41, 44, 45, 46, 50, 12, 30, 31, 39, 41] {
            for rule in [0, 1, 2] {
                let candidate = Candidate { rule, end };
                assert_eq!(
                    resolver.covered(candidate),
                    covered(list.iter(), candidate),
                    "{candidate:?}"
                );
            }
        }
        assert!(!resolver.first_start(0, 40));
        assert!(resolver.first_start(0, 41));
    }
}
