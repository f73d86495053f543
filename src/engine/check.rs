//! `rules check`: every rule compiled under both engines, every example and negative example
//! run, every rule's maximum length checked, and the placeholder contract verified.
//!
//! A rule passes only if:
//! - it compiles in Hyperscan (block and streaming, with start of match) and in `regex`;
//! - its maximum match length is finite and below the hold cap;
//! - it has at least one example and one negative example;
//! - every example yields a finding of this rule in each of its scopes, and masking is
//!   idempotent (a masked example yields no new finding, so placeholders are never re-masked);
//! - for rules that apply to responses (the only streamed text): secrets are free of whitespace
//!   unless the rule is `multiline`, and streaming the example in 1-byte and 7-byte deltas
//!   gives the block result;
//! - no negative example yields a finding of this rule.
//!
//! Then the whole pack is compiled together and placeholders of every rule id, put where a
//! secret would be, must not be matched by any rule.

use crate::engine::masker::{Engine, MaskError, DEFAULT_MAX_HOLD_BYTES};
use crate::engine::matcher::{MatcherError, RuleError};
use crate::engine::placeholder::PlaceholderKey;
use crate::engine::rules::{Rule, RuleSet, Scope};
use std::sync::Arc;

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
    let engine = match Engine::compile(&RuleSet::single(&single), check_key(), max_hold) {
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
                if rule.checksum.is_some() && finding.checksum_valid != Some(true) {
                    // A checksum rule's examples must look like real tokens, so the check
                    // also proves the verifier accepts the format.
                    report.problem(
                        id,
                        format!("example {n}: the token's checksum does not verify"),
                    );
                }
                if streamed && !rule.multiline && secret.bytes().any(|b| b.is_ascii_whitespace()) {
                    report.problem(
                        id,
                        format!(
                            "example {n}: secret contains whitespace but the rule is not multiline"
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
