//! `rules check`: every rule compiled under both engines, every example and negative example
//! run, every rule's maximum length checked, and the placeholder contract verified.
//!
//! A rule passes only if:
//! - it compiles in Hyperscan (block and streaming, with start of match) and in `regex`;
//! - its maximum match length is finite and below the hold cap;
//! - it has at least one example and one negative example;
//! - every example yields a finding of this rule in each of its scopes, and masking is
//!   idempotent (a masked example yields no new finding, so placeholders are never re-masked);
//! - for rules that apply to responses (the only streamed text): secrets hold no more runs
//!   of whitespace than the rule's `spaces` (none for most) unless the rule is `multiline`,
//!   and streaming the example in 1-byte and 7-byte deltas gives the block result;
//! - no negative example yields a finding of this rule;
//! - for a checksum rule, every full-length example (the longest secret among its examples)
//!   carries a valid checksum, and every example reports a checksum verdict; shorter secrets
//!   are cut-off tokens, which report an invalid checksum and are masked all the same;
//! - for each `truncated` entry of a rule: the first example whose secret starts with the
//!   entry's prefix, its secret cut after `min_len` body characters and ended by the end of text or a truncation marker (`…`, `...`,
//!   `[truncated]`, a newline), is found by the rule, the finding covering the whole cut; cut
//!   after `min_len - 1` body characters, it is not found.
//!
//! Then the whole pack is compiled together and placeholders of every rule id, put where a
//! secret would be, must not be matched by any rule.

use crate::engine::masker::{Engine, MaskError, DEFAULT_MAX_HOLD_BYTES};
use crate::engine::matcher::{Matcher, MatcherError, RuleError};
use crate::engine::placeholder::PlaceholderKey;
use crate::engine::rules::{Rule, RuleSet, Scope, Truncation};
use crate::engine::validators::{ValidationContext, DEFAULT_EMAIL_ALLOW_DOMAINS};
use std::collections::HashSet;
use std::sync::Arc;

/// What may follow a cut-off token: nothing (a JSON string or the text ends), a line end, or
/// the markers Claude Code and shells put where they cut a line.
const TRUNCATION_ENDS: &[&str] = &[
    "",
    "\n",
    "…",
    "...",
    " [truncated]",
    "… [1234 chars truncated]",
];
/// The ends a token cut below `min_len` is checked with: not `...`, which a body alphabet with
/// `.` in it would read as more body characters.
const SHORT_ENDS: &[&str] = &["", "\n", "…", " [truncated]"];

/// Contexts a placeholder is put in to check that no rule re-masks it.
const PLACEHOLDER_CONTEXTS: &[&str] = &[
    "{p}",
    "password = \"{p}\"",
    "password: {p}",
    "token={p}",
    "export API_TOKEN={p}",
    "\"api_key\": \"{p}\"",
    "Authorization: Bearer {p}",
    "Authorization: Basic {p}",
    "postgres://user:{p}@db.internal:5432/app",
    "https://user:{p}@example.com/",
    "client_secret={p}&grant_type=client_credentials",
    "aws_secret_access_key = {p}",
];

#[derive(Debug, Default)]
pub struct CheckReport {
    pub rules_checked: usize,
    pub examples_checked: usize,
    pub problems: Vec<RuleError>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, id: &str, message: impl Into<String>) {
        self.problems.push(RuleError {
            id: id.to_string(),
            message: message.into(),
        });
    }
}

fn check_key() -> PlaceholderKey {
    PlaceholderKey::new(b"streammask-rules-check-key").expect("static key is long enough")
}

fn stream_all(
    engine: &Arc<Engine>,
    text: &str,
    scope: Scope,
    chunk: usize,
) -> Result<String, String> {
    let mut masker = engine.stream(scope).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for piece in text.as_bytes().chunks(chunk) {
        masker.push(piece, &mut out).map_err(|e| e.to_string())?;
    }
    masker.finish(&mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// What validators read while examples are checked: national phone numbers are read as US
/// numbers (the pack's `phone-national` examples are), and the default e-mail allow-list holds.
fn check_validation() -> ValidationContext {
    ValidationContext {
        phone_region: Some("US".to_string()),
        email_allow_domains: DEFAULT_EMAIL_ALLOW_DOMAINS
            .iter()
            .map(|domain| domain.to_string())
            .collect(),
    }
}

fn check_rule(rule: &Rule, max_hold: usize, report: &mut CheckReport) {
    let id = rule.id.as_str();
    if rule.examples.is_empty() {
        report.problem(id, "has no examples");
    }
    if rule.negative_examples.is_empty() {
        report.problem(id, "has no negative examples");
    }
    let mut single = rule.clone();
    single.enabled = true;
    let set = RuleSet::single(&single).with_validation(check_validation());
    let engine = match Engine::compile(&set, check_key(), max_hold) {
        Ok(engine) => Arc::new(engine),
        Err(MaskError::Matcher(MatcherError::Rules(errors))) => {
            report.problems.extend(errors);
            return;
        }
        Err(other) => {
            report.problem(id, other.to_string());
            return;
        }
    };
    if rule.prefilter.is_some() || rule.keyword.is_some() {
        check_prefilter(rule, engine.matcher(), report);
    }
    // (example, secret length, checksum valid) of every finding of a checksum rule.
    let mut checksums: Vec<(usize, usize, bool)> = Vec::new();
    for (n, example) in rule.examples.iter().enumerate() {
        report.examples_checked += 1;
        for &scope in &rule.applies_to {
            let masked = match engine.mask(example, scope) {
                Ok(masked) => masked,
                Err(err) => {
                    report.problem(id, format!("example {n}: {err}"));
                    continue;
                }
            };
            if masked.findings.is_empty() {
                report.problem(
                    id,
                    format!(
                        "example {n} ({}) is not matched: {example:?}",
                        scope.as_str()
                    ),
                );
                continue;
            }
            // Only response text is streamed; requests and tool inputs are judged whole, so the
            // streaming contract (whitespace-free secrets, streaming equals block) binds only
            // rules that apply to responses.
            let streamed = scope == Scope::Response;
            for finding in &masked.findings {
                let secret = &example[finding.span.clone()];
                if rule.checksum.is_some() {
                    if finding.checksum_valid.is_none() {
                        report.problem(id, format!("example {n}: no checksum verdict"));
                    }
                    checksums.push((n, secret.len(), finding.checksum_valid == Some(true)));
                }
                let runs = secret
                    .as_bytes()
                    .split(u8::is_ascii_whitespace)
                    .filter(|word| !word.is_empty())
                    .count()
                    .saturating_sub(1);
                if streamed && !rule.multiline && runs > rule.spaces {
                    report.problem(
                        id,
                        format!(
                            "example {n}: secret holds {runs} run(s) of whitespace, more than the \
                             rule's `spaces` ({}), and the rule is not multiline",
                            rule.spaces
                        ),
                    );
                }
            }
            match engine.mask(&masked.text, scope) {
                Ok(again) if again.findings.iter().any(|f| f.rewritten) => report.problem(
                    id,
                    format!(
                        "example {n}: the masked text is matched again (placeholder re-masked)"
                    ),
                ),
                Err(err) => report.problem(id, format!("example {n}: {err}")),
                Ok(_) => {}
            }
            // A multi-line rule is held open by the pack's unterminated-key rule, so it is
            // streamed with the whole pack (below), not alone.
            for chunk in [1, 7].into_iter().filter(|_| streamed && !rule.multiline) {
                match stream_all(&engine, example, scope, chunk) {
                    Ok(streamed) if streamed == masked.text => {}
                    Ok(_) => report.problem(
                        id,
                        format!("example {n}: streaming in {chunk}-byte deltas differs from block masking"),
                    ),
                    Err(err) => report.problem(id, format!("example {n}: {err}")),
                }
            }
        }
    }
    // Checksummed formats have one length: the longest secrets are whole tokens and must
    // look real (which also proves the verifier accepts the format); shorter ones are tokens
    // cut short, masked whatever their checksum says.
    let full = checksums.iter().map(|&(_, len, _)| len).max().unwrap_or(0);
    for &(n, _, valid) in checksums.iter().filter(|&&(_, len, _)| len == full) {
        if !valid {
            report.problem(
                id,
                format!("example {n}: the token's checksum does not verify"),
            );
        }
    }
    for truncation in &rule.truncated {
        check_truncation(rule, truncation, &engine, report);
    }
    for (n, negative) in rule.negative_examples.iter().enumerate() {
        report.examples_checked += 1;
        for &scope in &rule.applies_to {
            match engine.scan(negative, scope) {
                Ok(findings) if findings.is_empty() => {}
                Ok(_) => {
                    report.problem(id, format!("negative example {n} is matched: {negative:?}"))
                }
                Err(err) => report.problem(id, format!("negative example {n}: {err}")),
            }
        }
    }
}

/// Prove one of a rule's `truncated` claims on the first example of its format (see the
/// module docs).
fn check_truncation(
    rule: &Rule,
    truncation: &Truncation,
    engine: &Arc<Engine>,
    report: &mut CheckReport,
) {
    let id = rule.id.as_str();
    let min_len = truncation.min_len;
    let prefix = match regex::bytes::RegexBuilder::new(&format!("^(?:{})", truncation.prefix))
        .unicode(false)
        .build()
    {
        Ok(prefix) => prefix,
        Err(err) => {
            report.problem(id, format!("truncated.prefix does not compile: {err}"));
            return;
        }
    };
    for &scope in &rule.applies_to {
        // The first example with a secret of this format: (example, secret start, secret,
        // where its body starts).
        let mut chosen = None;
        for example in &rule.examples {
            let Ok(masked) = engine.mask(example, scope) else {
                continue; // reported with the examples
            };
            let Some(first) = masked.findings.iter().min_by_key(|f| f.span.start) else {
                continue; // reported with the examples
            };
            let secret = &example[first.span.clone()];
            if let Some(found) = prefix.find(secret.as_bytes()) {
                chosen = Some((example, first.span.start, secret, found.end()));
                break;
            }
        }
        let Some((example, start, secret, body)) = chosen else {
            report.problem(
                id,
                format!(
                    "truncated: no example's secret starts with prefix {:?} ({})",
                    truncation.prefix,
                    scope.as_str()
                ),
            );
            continue;
        };
        let cut = body + min_len;
        if cut > secret.len() || !secret.is_char_boundary(cut) || !secret.is_char_boundary(cut - 1)
        {
            report.problem(
                id,
                format!(
                    "truncated: the example's secret {secret:?} has {} body characters, fewer than min_len {min_len}",
                    secret.len() - body
                ),
            );
            return;
        }
        let head = &example[..start];
        for end in TRUNCATION_ENDS {
            let text = format!("{head}{}{end}", &secret[..cut]);
            let covered = match engine.mask(&text, scope) {
                Ok(found) => found
                    .findings
                    .iter()
                    .any(|f| f.span.start <= start && f.span.end >= start + cut),
                Err(err) => {
                    report.problem(id, format!("truncated: {err}"));
                    return;
                }
            };
            if !covered {
                report.problem(
                    id,
                    format!(
                        "truncated: example cut after min_len = {min_len} body characters and ended by {end:?} is not masked ({}): {text:?}",
                        scope.as_str()
                    ),
                );
            }
        }
        for end in SHORT_ENDS {
            let text = format!("{head}{}{end}", &secret[..cut - 1]);
            // A context rule (`generic`) may still take the cut token as the value of its key
            // name: the claim is about this rule's format, so only format rules count here.
            match engine.scan(&text, scope) {
                Ok(found)
                    if found
                        .iter()
                        .all(|f| engine.matcher().rule(f.rule).rule.generic) => {}
                Ok(_) => report.problem(
                    id,
                    format!(
                        "truncated: example cut after min_len - 1 = {} body characters and ended by {end:?} is still matched ({}), so min_len is not the shortest masked cut: {text:?}",
                        min_len - 1,
                        scope.as_str()
                    ),
                ),
                Err(err) => report.problem(id, format!("truncated: {err}")),
            }
        }
    }
}

/// A prefilter (or a key word with what follows it) must report every end at which the
/// pattern matches, in every example and negative example: an end it misses is a secret never
/// looked at.
fn check_prefilter(rule: &Rule, matcher: &Matcher, report: &mut CheckReport) {
    for (kind, text) in rule.examples.iter().map(|e| ("example", e)).chain(
        rule.negative_examples
            .iter()
            .map(|e| ("negative example", e)),
    ) {
        let hay = text.as_bytes();
        let mut reported = HashSet::new();
        if let Err(e) = matcher.scan_block(hay, |c| {
            reported.insert(c.end);
        }) {
            report.problem(&rule.id, format!("prefilter: {e}"));
            return;
        }
        let missed = (0..=hay.len())
            .find(|&end| !reported.contains(&end) && matcher.start_of(0, hay, 0, end).is_some());
        if let Some(end) = missed {
            let what = if rule.keyword.is_some() {
                "keyword and after_keyword miss"
            } else {
                "prefilter misses"
            };
            report.problem(
                &rule.id,
                format!("{what} the pattern's match ending at byte {end} of {kind} {text:?}"),
            );
        }
    }
}

/// Check every rule in `set` (disabled ones too) and the pack as a whole.
pub fn check_rules(set: &RuleSet, max_hold: usize) -> CheckReport {
    let mut report = CheckReport::default();
    for rule in set.all() {
        report.rules_checked += 1;
        check_rule(rule, max_hold, &mut report);
    }
    if !report.passed() {
        return report;
    }
    let engine = match Engine::compile(set, check_key(), max_hold) {
        Ok(engine) => engine,
        Err(err) => {
            report.problem("(pack)", err.to_string());
            return report;
        }
    };
    let engine = Arc::new(engine);
    for rule in set.enabled() {
        if !rule.applies_to.contains(&Scope::Response) {
            continue;
        }
        for (n, example) in rule.examples.iter().enumerate() {
            let Ok(block) = engine.mask(example, Scope::Response) else {
                continue;
            };
            for chunk in [1, 7] {
                match stream_all(&engine, example, Scope::Response, chunk) {
                    Ok(streamed) if streamed == block.text => {}
                    Ok(_) => report.problem(
                        &rule.id,
                        format!("example {n}: with the whole pack, streaming in {chunk}-byte deltas differs from block masking"),
                    ),
                    Err(err) => report.problem(&rule.id, format!("example {n}: {err}")),
                }
            }
        }
    }
    for rule in set.enabled() {
        let placeholder = engine.placeholder_key().placeholder(&rule.id, b"check");
        for context in PLACEHOLDER_CONTEXTS {
            let text = context.replace("{p}", &placeholder);
            for scope in Scope::ALL {
                if let Ok(findings) = engine.scan(&text, scope) {
                    for finding in findings.iter().filter(|f| f.rewritten) {
                        report.problem(
                            &finding.rule_id,
                            format!("matches a placeholder in context {text:?}"),
                        );
                    }
                }
            }
        }
    }
    report
}

/// The default hold cap, exposed for the CLI.
pub fn default_max_hold() -> usize {
    DEFAULT_MAX_HOLD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A demo rule whose pattern accepts `demo_` + `lo..=8` letters and claims `min_len`.
    fn demo(lo: usize, min_len: usize, prefix: &str) -> RuleSet {
        let text = format!(
            r#"
[[rules]]
id = "demo-token"
description = "demo"
pattern = 'demo_[a-z]{{{lo},8}}'
action = "mask"
examples = ["token: demo_abcdefgh"]
negative_examples = ["demo_ab"]

[[rules.truncated]]
prefix = '{prefix}'
min_len = {min_len}
reason = "test"
"#
        );
        RuleSet::from_toml("demo.toml", &text).expect("demo rule parses")
    }

    fn problems(set: &RuleSet) -> Vec<String> {
        check_rules(set, default_max_hold())
            .problems
            .into_iter()
            .map(|p| format!("{}: {}", p.id, p.message))
            .collect()
    }

    #[test]
    fn a_keyword_rule_whose_walk_misses_a_match_of_the_pattern_is_reported_with_where() {
        let rule = |after: &str| {
            RuleSet::from_toml(
                "k.toml",
                &format!(
                    r#"
[[rules]]
id = "demo-token"
description = "demo"
pattern = '(?P<key>[a-z_]{{0,10}}token)(?: is |[ ]?=[ ]?)(?P<secret>[a-z0-9]{{8,20}})\b'
keyword = 'token'
after_keyword = '{after}'
action = "mask"
examples = ["auth_token = abababab1212", "the token is zzzzyyyy9999 now"]
negative_examples = ["tokens are counted"]
"#
                ),
            )
            .expect("parses")
        };
        let found = problems(&rule(r"(?: is |[ ]?=[ ]?)[a-z0-9]{8,20}\b"));
        assert!(found.is_empty(), "{found:?}");
        // A walk that forgot the ` is ` separator never reports the second example.
        let found = problems(&rule(r"[ ]?=[ ]?[a-z0-9]{8,20}\b"));
        assert!(
            found.iter().any(|p| p.starts_with(
                "demo-token: keyword and after_keyword miss the pattern's match \
                 ending at byte 25 of example \"the token is zzzzyyyy9999 now\""
            )),
            "{found:?}"
        );
        // Only together, and never unbounded.
        let error = RuleSet::from_toml(
            "k.toml",
            "[[rules]]\nid = \"demo\"\ndescription = \"d\"\npattern = \"token=[a-z]{8}\"\n\
             action = \"mask\"\nkeyword = \"token\"\n",
        )
        .map(|_| ())
        .expect_err("keyword without after_keyword");
        assert!(error.to_string().contains("go together"), "{error}");
        let found = problems(&rule(r"[ ]?=[ ]?[a-z0-9]+"));
        assert!(
            found.iter().any(|p| p.contains("no finite maximum length")),
            "{found:?}"
        );
    }

    #[test]
    fn a_prefilter_that_misses_a_match_of_the_pattern_is_reported_with_where() {
        let rule = |prefilter: &str| {
            RuleSet::from_toml(
                "p.toml",
                &format!(
                    r#"
[[rules]]
id = "demo-mail"
description = "demo"
pattern = '[a-z]{{1,20}}@(?P<secret>[a-z]{{2,10}}\.(?:com|org))\b'
prefilter = '{prefilter}'
action = "mask"
examples = ["mail ann@contoso.com", "or bob@fabrikam.org now"]
negative_examples = ["@contoso.com alone"]
"#
                ),
            )
            .expect("parses")
        };
        // From the literal `@` on, ending where the pattern ends: every match is reported.
        assert!(problems(&rule(r"@[a-z]{2,10}\.(?:com|org)\b")).is_empty());
        // A prefilter that forgot `.org` never reports the second example.
        let found = problems(&rule(r"@[a-z]{2,10}\.com\b"));
        assert!(
            found.iter().any(|p| p.starts_with(
                "demo-mail: prefilter misses the pattern's match \
                 ending at byte 19 of example \"or bob@fabrikam.org now\""
            )),
            "{found:?}"
        );
    }

    #[test]
    fn truncation_claim_that_holds_passes() {
        assert_eq!(problems(&demo(5, 5, "demo_")), Vec::<String>::new());
    }

    #[test]
    fn truncated_example_that_is_not_matched_fails_with_a_clear_message() {
        // The pattern wants all 8 letters, the rule claims 5 are enough.
        let found = problems(&demo(8, 5, "demo_"));
        assert!(
            found.iter().any(|p| p
                .starts_with("demo-token: truncated: example cut after min_len = 5")
                && p.contains("is not masked")),
            "{found:#?}"
        );
    }

    #[test]
    fn truncated_example_below_min_len_that_still_matches_fails() {
        // The pattern already masks 3 letters, the rule claims the shortest masked cut is 5.
        let found = problems(&demo(3, 5, "demo_"));
        assert!(
            found
                .iter()
                .any(|p| p.contains("min_len - 1 = 4") && p.contains("still matched")),
            "{found:#?}"
        );
        assert!(
            !found.iter().any(|p| p.contains("is not masked")),
            "{found:#?}"
        );
    }

    #[test]
    fn truncation_prefix_must_match_the_example_secret() {
        let found = problems(&demo(5, 5, "nope_"));
        assert!(
            found
                .iter()
                .any(|p| p.contains("no example's secret starts with prefix \"nope_\"")),
            "{found:#?}"
        );
        let found = problems(&demo(5, 5, "demo_("));
        assert!(
            found.iter().any(|p| p.contains("does not compile")),
            "{found:#?}"
        );
    }

    #[test]
    fn min_len_longer_than_the_example_body_is_reported() {
        let found = problems(&demo(5, 9, "demo_"));
        assert!(
            found
                .iter()
                .any(|p| p.contains("has 8 body characters, fewer than min_len 9")),
            "{found:#?}"
        );
    }
}
