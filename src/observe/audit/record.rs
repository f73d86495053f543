//! One audit record: its shape (read back by `audit show|replay`) and how it is built from a
//! finished [`Exchange`].
//!
//! Invariant: nothing raw from a request reaches a record — findings by rule, placeholder and a
//! pattern-derived preview; paths and model names redacted with the engine that made the
//! findings; transcripts embedded as forwarded and sent, and scrubbed again when a rule only
//! reported (so its text was left in place).

use crate::anthropic::transcript::ResponseTranscript;
use crate::engine::{Engine, Finding, Scope};
use crate::exchange::{Direction, Exchange};
use crate::policy::approvals::ApprovalEvent;
use crate::policy::store::now_ms;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditFinding<'a> {
    pub rule: Cow<'a, str>,
    pub direction: Cow<'a, str>,
    pub action: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub placeholder: Cow<'a, str>,
    pub preview: String,
    pub rewritten: bool,
}

/// A placeholder given back to the caller in the response: which, where, by which rule. Never
/// the value.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditRestore<'a> {
    pub rule: Cow<'a, str>,
    pub placeholder: Cow<'a, str>,
    pub path: Cow<'a, str>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditIdentity {
    pub subject: String,
    pub groups: Vec<String>,
    pub profile: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub total_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ttfb_ms: Option<f64>,
    pub masking_ms: f64,
}

/// The bytes the client sent and received.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ByteCounts {
    pub request: usize,
    pub response: usize,
}

/// A record's transcripts before they are rendered.
struct Pending {
    request: Option<Bytes>,
    response: Option<ResponseTranscript>,
}

/// One audit line. Fields borrow from the request when written (no copies on the request
/// path); read back, they are owned.
fn first_party() -> Cow<'static, str> {
    Cow::Borrowed("anthropic")
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub request_id: Cow<'a, str>,
    #[serde(default)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub identity: Option<AuditIdentity>,
    pub endpoint: Cow<'a, str>,
    /// `anthropic`, `bedrock` or `vertex` (records written before providers existed:
    /// `anthropic`).
    #[serde(default = "first_party")]
    pub provider: Cow<'a, str>,
    pub method: Cow<'a, str>,
    #[serde(default)]
    pub model: Option<Cow<'a, str>>,
    pub streamed: bool,
    pub status: u16,
    pub decision: Cow<'a, str>,
    #[serde(default)]
    pub blocked_rule: Option<Cow<'a, str>>,
    /// Why authentication or authorisation refused the request (a bounded reason label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_failure: Option<Cow<'a, str>>,
    pub tools_blocked: usize,
    #[serde(default)]
    pub upstream_error: Option<Cow<'a, str>>,
    pub late_matches: u64,
    pub timings: Timings,
    pub bytes: ByteCounts,
    #[serde(default)]
    pub usage: Option<crate::anthropic::usage::Usage>,
    pub findings: Vec<AuditFinding<'a>>,
    /// Placeholders restored in the response (`[restore]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<AuditRestore<'a>>,
    /// Placeholders in the response left masked where restore applies.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unrestored: usize,
    /// The approvals whose grants let the request go upstream (`approve` findings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Value>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn scrub(engine: &Engine, value: &mut Value, scope: Scope) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(masked) = engine.redact(text, scope) {
                *text = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(engine, v, scope)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(engine, v, scope)),
        _ => {}
    }
}

/// A JSON document as embedded text: parsed (or kept as one string when it is not JSON), cut
/// down to the limit and scrubbed.
fn embed(
    engine: &Engine,
    body: &[u8],
    scope: Scope,
    limit: usize,
    cut: impl FnOnce(&mut Value),
) -> String {
    let mut value: Value =
        serde_json::from_slice(body).unwrap_or_else(|_| json!(String::from_utf8_lossy(body)));
    if body.len() > limit {
        cut(&mut value);
        if serde_json::to_vec(&value).map_or(true, |v| v.len() > limit) {
            value = json!({"truncated": true, "bytes": body.len()});
        }
    }
    scrub(engine, &mut value, scope);
    if scope == Scope::Request {
        // A request may carry the upstream's own thinking restored from the vault: scrubbed
        // with the response rules as well, since that is what the text once was.
        scrub(engine, &mut value, Scope::Response);
    }
    value.to_string()
}

fn render_transcript(engine: &Engine, pending: Pending, limit: usize) -> String {
    let mut parts = Vec::new();
    if let Some(body) = pending.request {
        // Keep what a reader needs for the turn: the last messages, not the history.
        let cut = |value: &mut Value| {
            if let Some(obj) = value.as_object_mut() {
                obj.remove("system");
                obj.remove("tools");
                if let Some(Value::Array(messages)) = obj.get_mut("messages") {
                    let keep = messages.len().saturating_sub(2);
                    messages.drain(..keep);
                }
                obj.insert("truncated".into(), json!(true));
            }
        };
        let text = embed(engine, &body, Scope::Request, limit, cut);
        parts.push(format!("\"request\":{text}"));
    }
    match pending.response {
        Some(ResponseTranscript::Body(body)) => {
            let text = embed(engine, &body, Scope::Response, limit, |v| {
                *v = json!({"truncated": true})
            });
            parts.push(format!("\"response\":{text}"));
        }
        Some(ResponseTranscript::Stream(stream)) => {
            let mut value = stream.render();
            scrub(engine, &mut value, Scope::Response);
            parts.push(format!("\"response\":{value}"));
        }
        None => {}
    }
    format!("{{{}}}", parts.join(","))
}

/// The preview of a secret: its rule's literal prefix (at most 4 characters, from the
/// pattern, never from the secret) and its length; for a finding that is not a span, its
/// detail (a protected file's path and lines matched). The rule is looked up in `engine`, the one
/// that made the finding, and only trusted when its id is the finding's.
pub fn preview(engine: &Engine, finding: &Finding) -> String {
    // A finding that is not a span (protected code) says what it matched in its detail.
    if let Some(detail) = &finding.detail {
        return detail.clone();
    }
    let prefix = engine
        .matcher()
        .all_rules()
        .get(finding.rule as usize)
        .filter(|rule| rule.id() == finding.rule_id)
        .map_or("", |rule| rule.preview_prefix());
    format!("{prefix}…({} chars)", finding.secret_chars)
}

/// RFC 3339 UTC time with milliseconds, without a date library.
/// [`rfc3339`] of Unix epoch milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The exchange's record as one JSON line (newline included); `None` only if it cannot be
/// serialised. The transcripts are taken out of the exchange.
pub fn line(exchange: &mut Exchange, engine: &Engine, transcript_limit: usize) -> Option<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(&mut line, &record(exchange, engine)).ok()?;
    // Transcripts are scanned again whatever the findings say: what is stored must be what
    // the writer itself scanned, not what the request path believes it forwarded.
    let pending = Pending {
        request: exchange.request_transcript.take(),
        response: exchange.response_transcript.take(),
    };
    if pending.request.is_some() || pending.response.is_some() {
        // The record serialises as an object: append the transcript before its `}`.
        let transcript = render_transcript(engine, pending, transcript_limit);
        line.pop();
        line.extend_from_slice(b",\"transcript\":");
        line.extend_from_slice(transcript.as_bytes());
        line.push(b'}');
    }
    line.push(b'\n');
    Some(line)
}

/// The record of `exchange`, borrowing from it (no copies of request data on the way out).
fn record<'x>(exchange: &'x Exchange, engine: &Engine) -> AuditRecord<'x> {
    let started_at = SystemTime::now() - exchange.started.elapsed();
    let findings = Direction::ALL
        .into_iter()
        .flat_map(|direction| {
            exchange
                .findings(direction)
                .iter()
                .map(move |located| (direction, located))
        })
        .map(|(direction, located)| {
            let f = &located.finding;
            AuditFinding {
                rule: Cow::Borrowed(&f.rule_id),
                direction: Cow::Borrowed(direction.label()),
                action: Cow::Borrowed(f.action.as_str()),
                path: engine.redact_all(&located.path),
                placeholder: Cow::Borrowed(&f.placeholder),
                preview: preview(engine, f),
                rewritten: f.rewritten,
            }
        })
        .collect();
    AuditRecord {
        time: rfc3339(started_at),
        request_id: Cow::Borrowed(&exchange.request_id),
        session_id: exchange.session_id.as_deref().map(Cow::Borrowed),
        identity: exchange.caller.as_ref().map(|id| AuditIdentity {
            subject: id.subject.clone(),
            groups: id.groups.clone(),
            profile: id.profile.clone(),
        }),
        endpoint: Cow::Borrowed(exchange.route.map_or("unknown", |r| r.label())),
        provider: Cow::Borrowed(exchange.provider.label()),
        method: Cow::Borrowed(&exchange.method),
        model: exchange.model.as_deref().map(|m| {
            let cut = m.char_indices().nth(128).map_or(m, |(at, _)| &m[..at]);
            engine.redact(cut, Scope::Request)
        }),
        streamed: exchange.streamed,
        status: exchange.status,
        decision: Cow::Borrowed(exchange.outcome.label()),
        blocked_rule: exchange.blocked_rule.as_deref().map(Cow::Borrowed),
        auth_failure: exchange.auth_failure.map(|r| Cow::Borrowed(r.label())),
        tools_blocked: exchange.blocked_tools.len(),
        upstream_error: exchange
            .upstream_error
            .map(|failure| Cow::Borrowed(failure.kind.label())),
        late_matches: exchange.late_matches,
        timings: Timings {
            total_ms: exchange.started.elapsed().as_secs_f64() * 1e3,
            upstream_ttfb_ms: exchange.upstream_ttfb.map(|d| d.as_secs_f64() * 1e3),
            masking_ms: exchange.masking.as_secs_f64() * 1e3,
        },
        bytes: ByteCounts {
            request: exchange.bytes_in,
            response: exchange.bytes_out,
        },
        usage: (!exchange.usage.is_empty()).then_some(exchange.usage),
        findings,
        restored: exchange
            .restore_events
            .iter()
            .filter(|event| event.unrestored.is_none())
            .map(|event| AuditRestore {
                rule: Cow::Borrowed(&event.rule_id),
                placeholder: Cow::Borrowed(&event.placeholder),
                path: engine.redact_all(&event.path),
            })
            .collect(),
        unrestored: exchange
            .restore_events
            .iter()
            .filter(|event| event.unrestored.is_some())
            .count(),
        approvals: exchange
            .approvals_used
            .iter()
            .map(|id| Cow::Borrowed(id.as_str()))
            .collect(),
        transcript: None,
    }
}

/// One approval event as an audit line (`"kind": "approval"`): ids, rule, caller, decision
/// and the approver's reason (masked by whoever took it). Never the preview, which is request
/// text: the console shows it, the log does not need it.
#[derive(Debug, Serialize)]
pub struct ApprovalLine<'a> {
    pub time: String,
    pub kind: &'static str,
    pub event: &'static str,
    pub approval_id: &'a str,
    pub rule_id: &'a str,
    pub subject: &'a str,
    pub groups: &'a [String],
    pub session_id: Option<&'a str>,
    /// The request that asked for or used the grant.
    pub request_id: Option<&'a str>,
    pub state: &'static str,
    pub decided_by: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub created_at: String,
    pub expires_at: String,
}

/// The audit line of an approval event.
pub fn approval_line(event: &ApprovalEvent) -> Option<Vec<u8>> {
    let approval = &event.approval;
    let decision = approval.decision.as_ref();
    let line = ApprovalLine {
        time: rfc3339(SystemTime::now()),
        kind: "approval",
        event: event.kind.label(),
        approval_id: &approval.id,
        rule_id: &approval.rule_id,
        subject: &approval.subject,
        groups: &approval.groups,
        session_id: approval.session_id.as_deref(),
        request_id: event
            .request_id
            .as_deref()
            .or(Some(approval.request_id.as_str())),
        state: approval.state_at(now_ms()).label(),
        decided_by: decision.map(|d| d.by.as_str()),
        reason: decision.and_then(|d| d.reason.as_deref()),
        created_at: rfc3339_ms(approval.created_at_ms),
        expires_at: rfc3339_ms(approval.expires_at_ms()),
    };
    let mut bytes = serde_json::to_vec(&line).ok()?;
    bytes.push(b'\n');
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::placeholder::PlaceholderKey;
    use crate::engine::RuleSet;

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_825_869_123);
        assert_eq!(rfc3339(t), "2026-11-28T00:31:09.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    const RULES: &str = r#"
[[rules]]
id = "aws-key"
description = "an AWS access key id"
pattern = 'AKIA[0-9A-Z]{16}'
action = "mask"

[[rules]]
id = "github-token"
description = "a GitHub token"
pattern = 'ghp_[A-Za-z0-9]{36}'
action = "mask"
"#;

    /// Two profiles as the policy builds them: the default engine, and one whose profile
    /// disables the first rule (both number the rules alike: they share one pack).
    fn two_profile_engines() -> (Engine, Engine) {
        let set = RuleSet::from_toml("audit-test.toml", RULES).unwrap();
        let key = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
        let base = Engine::compile(&set, key.clone(), 8192).unwrap();
        let narrowed = set
            .with_overrides(&crate::engine::rules::Overrides {
                disable_rules: &["aws-key".to_string()],
                ..Default::default()
            })
            .unwrap();
        let profile = Engine::compile(&narrowed, key, 8192).unwrap();
        (base, profile)
    }

    #[test]
    fn previews_come_from_the_engine_that_made_the_finding() {
        let (base, profile) = two_profile_engines();
        let token = format!("ghp_{}", "a1B2c3D4".repeat(4) + "e5F6");
        let aws = format!("AKIA{}", "ABCDEFGHIJKLMNOP");
        // The default profile's finding first: a preview table filled from the first engine
        // seen would then name the wrong rule's prefix for the other profile.
        let from_base = base.scan(&aws, Scope::Request).unwrap().remove(0);
        assert_eq!(preview(&base, &from_base), "AKIA…(20 chars)");
        let from_profile = profile.scan(&token, Scope::Request).unwrap().remove(0);
        assert_eq!(
            from_profile.rule, 1,
            "profiles of one pack share its numbering"
        );
        assert_eq!(preview(&profile, &from_profile), "ghp_…(40 chars)");
        // Looked up in an engine of another pack, which numbers rules differently, the prefix
        // is left out rather than taken from whatever rule has that index there.
        let github_only = RuleSet::from_toml(
            "other.toml",
            &RULES[RULES.find("[[rules]]\nid = \"github-token\"").unwrap()..],
        )
        .unwrap();
        let other = Engine::compile(
            &github_only,
            PlaceholderKey::new(b"0123456789abcdef0123").unwrap(),
            8192,
        )
        .unwrap();
        let from_other = other.scan(&token, Scope::Request).unwrap().remove(0);
        assert_eq!(from_other.rule, 0);
        assert_eq!(preview(&other, &from_other), "ghp_…(40 chars)");
        assert_eq!(preview(&base, &from_other), "…(40 chars)");
    }

    #[test]
    fn a_record_carries_previews_and_placeholders_never_the_secret() {
        let (_, profile) = two_profile_engines();
        let token = format!("ghp_{}", "Zy9Xw8Vu".repeat(4) + "t7S6");
        let mut exchange = Exchange::new(false);
        exchange.method = "POST".into();
        exchange.model = Some(format!("claude-{token}"));
        for finding in profile.scan(&token, Scope::Request).unwrap() {
            exchange
                .request_findings
                .push(format!("messages[0].{token}"), finding);
        }
        let line = line(&mut exchange, &profile, 4096).unwrap();
        let text = String::from_utf8(line).unwrap();
        assert!(!text.contains(&token), "{text}");
        let record: AuditRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(record.findings.len(), 1);
        assert_eq!(record.findings[0].preview, "ghp_…(40 chars)");
        assert!(record.findings[0]
            .placeholder
            .starts_with("[MASKED:github-token:"));
        assert!(record.findings[0].path.contains("[MASKED:github-token:"));
    }

    #[test]
    fn transcripts_are_scanned_by_the_writer_whatever_the_findings_say() {
        let (base, _) = two_profile_engines();
        let token = format!("ghp_{}", "Qw3Er4Ty".repeat(4) + "u5I6");
        let aws = format!("AKIA{}", "QRSTUVWXYZ234567");
        // No finding recorded at all: the request path believed these bodies clean.
        let mut exchange = Exchange::new(true);
        exchange.request_transcript = Some(Bytes::from(format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"key {token}"}}]}}"#
        )));
        exchange.response_transcript = Some(ResponseTranscript::Body(Bytes::from(format!(
            r#"{{"content":[{{"type":"text","text":"{aws}"}}]}}"#
        ))));
        let text = String::from_utf8(line(&mut exchange, &base, 1 << 20).unwrap()).unwrap();
        assert!(!text.contains(&token) && !text.contains(&aws), "{text}");
        assert!(text.contains("[MASKED:github-token:"), "{text}");
        assert!(text.contains("[MASKED:aws-key:"), "{text}");
        // A body that is not JSON is stored as one string, scanned all the same.
        let mut exchange = Exchange::new(true);
        exchange.request_transcript = Some(Bytes::from(format!("not json {token}")));
        let text = String::from_utf8(line(&mut exchange, &base, 1 << 20).unwrap()).unwrap();
        assert!(!text.contains(&token), "{text}");
    }
}
