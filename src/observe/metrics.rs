//! Events: every Prometheus metric the proxy exports, and the one place the request path
//! reports what happened (`request_finished`, `sse_event_masked`, `auth_failure`, …).
//!
//! Invariants:
//! - metric names follow `streammask_<noun>_<unit>[_total]`; every label value comes from a
//!   fixed set known at start-up (endpoints, status classes, outcomes, rule ids, configured
//!   groups, a bounded model-family grammar, fixed reason lists) — never a user id, a path, a
//!   header value or anything else a client chooses freely;
//! - label handles are resolved once (at start-up, or once per model family slot), so the hot
//!   path indexes arrays and never builds label strings;
//! - nothing here ever sees or records secret text: findings are counted by rule index;
//! - without [`install`] (unit tests, `metrics.enabled = false`) every function is a no-op.

use crate::api::Route;
use crate::identity::Identity;
use crate::masker::Engine;
use crate::proxy::{Outcome, RequestCtx};
use crate::response::Located;
use crate::rules::{Action, Scope};
use bytes::Bytes;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

static EVENTS: OnceLock<Events> = OnceLock::new();

/// `[metrics]` in the config file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Record metrics and serve `/metrics` on the admin listener.
    pub enabled: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { enabled: true }
    }
}

/// `[log]` in the config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Endpoint labels: the routes, then `unknown` for requests no route took.
const ENDPOINTS: [&str; 7] = [
    "messages",
    "count_tokens",
    "batches",
    "batch_results",
    "models",
    "passthrough",
    "unknown",
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// `approval` is reserved for requests held for a human approver.
const OUTCOMES: [&str; 5] = ["allowed", "masked", "blocked", "approval", "error"];
const DIRECTIONS: [&str; 2] = ["request", "response"];

/// Reasons an authentication layer may report; anything else is counted as `other`.
pub const AUTH_FAILURE_REASONS: [&str; 16] = [
    "missing",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "unknown_kid",
    "alg_not_allowed",
    "missing_claim",
    "invalid_token",
    "unknown_key",
    "keys_unavailable",
    "group_not_allowed",
    "model_not_allowed",
    "other",
];

/// Token usage kinds, in the order of [`Usage::kinds`].
pub const TOKEN_KINDS: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

/// What went wrong talking to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// The upstream host did not resolve.
    Resolve,
    /// No connection (refused, TLS, unreachable).
    Connect,
    /// A connect, read or write timed out.
    Timeout,
    /// Sending the request failed.
    Send,
    /// The response broke off or could not be read.
    Read,
    /// The response could not be decoded or scanned (compression, size, malformed stream).
    Malformed,
    /// The upstream answered 429.
    Status429,
    /// The upstream answered 5xx.
    Status5xx,
}

impl UpstreamError {
    const ALL: [UpstreamError; 8] = [
        UpstreamError::Resolve,
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Send,
        UpstreamError::Read,
        UpstreamError::Malformed,
        UpstreamError::Status429,
        UpstreamError::Status5xx,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Resolve => "resolve",
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Send => "send",
            UpstreamError::Read => "read",
            UpstreamError::Malformed => "malformed",
            UpstreamError::Status429 => "status_429",
            UpstreamError::Status5xx => "status_5xx",
        }
    }

    /// Classify a Pingora error at a stage of the exchange: timeouts are told apart.
    pub fn from_pingora(stage: UpstreamError, error: &pingora::Error) -> UpstreamError {
        if error.etype().as_str().ends_with("Timedout") {
            UpstreamError::Timeout
        } else {
            stage
        }
    }
}

/// Token usage of one response; numbers are cumulative, so the last report of each wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
}

impl Usage {
    pub fn record(&mut self, kind: &str, value: u64) {
        match kind {
            "input_tokens" => self.input_tokens = Some(value),
            "output_tokens" => self.output_tokens = Some(value),
            "cache_read_input_tokens" => self.cache_read_input_tokens = Some(value),
            "cache_creation_input_tokens" => self.cache_creation_input_tokens = Some(value),
            _ => {}
        }
    }

    /// Read the `usage` object of a complete JSON response body.
    pub fn from_json_body(body: &[u8]) -> Usage {
        #[derive(serde::Deserialize)]
        struct Body {
            usage: Option<serde_json::Map<String, serde_json::Value>>,
        }
        let mut usage = Usage::default();
        if let Ok(Body { usage: Some(map) }) = serde_json::from_slice::<Body>(body) {
            for (kind, value) in map {
                if let Some(n) = value.as_u64() {
                    usage.record(&kind, n);
                }
            }
        }
        usage
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    fn kinds(&self) -> [Option<u64>; 4] {
        [
            self.input_tokens,
            self.output_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
        ]
    }
}

/// The masked response as the client received it, for audit transcripts.
#[derive(Debug)]
pub enum ResponseTranscript {
    /// A complete (masked) response body.
    Body(Bytes),
    /// A streamed response, reassembled from the masked events.
    Stream(crate::audit::StreamTranscript),
}

/// What the request path records about one request for metrics and audit, beyond the
/// findings and outcome the proxy keeps anyway.
#[derive(Debug, Default)]
pub struct RequestObs {
    /// The `x-claude-code-session-id` header, when it is a plausible id.
    pub session_id: Option<String>,
    /// The top-level `model` of the request body, as the client sent it.
    pub model: Option<String>,
    pub method: String,
    pub streamed: bool,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub upstream_ttfb: Option<Duration>,
    /// Time spent masking the request and the response.
    pub masking: Duration,
    pub upstream_error: Option<UpstreamError>,
    pub usage: Usage,
    /// The request body as forwarded upstream (kept only when transcripts are on).
    pub request_transcript: Option<Bytes>,
    pub response_transcript: Option<ResponseTranscript>,
}

impl RequestObs {
    /// Record the caller's Claude Code session id; values that are not a short token of
    /// `[A-Za-z0-9._:-]` are ignored so the audit log only ever carries ids.
    pub fn set_session_id(&mut self, value: Option<&str>) {
        self.session_id = value
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 128
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            })
            .map(str::to_string);
    }

    pub fn upstream_failed(&mut self, kind: UpstreamError) {
        self.upstream_error.get_or_insert(kind);
    }

    pub fn upstream_status(&mut self, status: u16) {
        if status == 429 {
            self.upstream_failed(UpstreamError::Status429);
        } else if status >= 500 {
            self.upstream_failed(UpstreamError::Status5xx);
        }
    }

    pub fn wants_transcripts(&self) -> bool {
        crate::audit::transcripts_enabled()
    }
}

/// Per-rule handles, indexed like the default engine's `Matcher::rules()`. A policy profile's
/// engine may number or act on rules differently, so a handle is used only when its id and
/// action match the finding; otherwise the labelled vector is used (rule ids come from the
/// loaded rules, so the label set stays bounded).
struct RuleHandles {
    id: String,
    action: Action,
    findings: [Option<IntCounter>; 2],
    blocked_requests: Option<IntCounter>,
    blocked_tool_calls: Option<IntCounter>,
}

/// Every metric. Built once by [`install`].
pub struct Events {
    registry: Registry,
    requests: Vec<IntCounter>,
    request_duration: Vec<Histogram>,
    upstream_ttfb: Vec<Histogram>,
    request_masking: Histogram,
    sse_event_masking: Histogram,
    rules: Vec<RuleHandles>,
    findings_vec: IntCounterVec,
    blocked_requests_vec: IntCounterVec,
    blocked_tools_vec: IntCounterVec,
    blocked_tool_calls_unparseable: IntCounter,
    active_streams: IntGauge,
    held_bytes: IntGauge,
    stream_peak_held: Histogram,
    late_matches: IntCounter,
    upstream_errors: Vec<IntCounter>,
    auth_failures: Vec<IntCounter>,
    tokens_vec: IntCounterVec,
    /// One slot per model family label (see [`model_family`]); filled on first use.
    tokens: Vec<OnceLock<Vec<IntCounter>>>,
    groups: Vec<IntCounter>,
    known_groups: Vec<String>,
    audit_records: IntCounter,
    audit_failures: [IntCounter; 2],
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    vec
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

fn histograms_by_endpoint(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Vec<Histogram> {
    let vec = prometheus::HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets),
        &["endpoint"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(vec.clone()))
        .expect("unique metric");
    ENDPOINTS
        .iter()
        .map(|e| vec.with_label_values(&[e]))
        .collect()
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

impl Events {
    fn new(engine: &Engine, known_groups: &[String]) -> Events {
        let registry = Registry::new();
        let r = &registry;
        let requests_vec = counter_vec(
            r,
            "streammask_requests_total",
            "Requests by endpoint, status class and outcome",
            &["endpoint", "status_class", "outcome"],
        );
        let mut requests = Vec::new();
        for endpoint in ENDPOINTS {
            for class in STATUS_CLASSES {
                for outcome in OUTCOMES {
                    requests.push(requests_vec.with_label_values(&[endpoint, class, outcome]));
                }
            }
        }
        let findings_vec = counter_vec(
            r,
            "streammask_findings_total",
            "Findings by rule, direction and action",
            &["rule", "direction", "action"],
        );
        let blocked_requests = counter_vec(
            r,
            "streammask_blocked_requests_total",
            "Requests refused by a block rule",
            &["rule"],
        );
        let blocked_tools = counter_vec(
            r,
            "streammask_blocked_tool_calls_total",
            "Tool calls replaced by a block rule",
            &["rule"],
        );
        let rules_loaded = IntGaugeVec::new(
            Opts::new("streammask_rules_loaded", "Rules compiled into the engine"),
            &["action"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(rules_loaded.clone()))
            .expect("unique metric");
        let mut rules = Vec::new();
        for compiled in engine.matcher().rules() {
            let rule = &compiled.rule;
            let action = rule.action.as_str();
            rules_loaded.with_label_values(&[action]).inc();
            let applies = |scope: Scope| rule.applies_to.contains(&scope);
            let findings = [
                applies(Scope::Request)
                    .then(|| findings_vec.with_label_values(&[&rule.id, "request", action])),
                (applies(Scope::Response) || applies(Scope::ToolInput))
                    .then(|| findings_vec.with_label_values(&[&rule.id, "response", action])),
            ];
            let block = rule.action == Action::Block;
            rules.push(RuleHandles {
                id: rule.id.clone(),
                action: rule.action,
                findings,
                blocked_requests: (block && applies(Scope::Request))
                    .then(|| blocked_requests.with_label_values(&[&rule.id])),
                blocked_tool_calls: (block && applies(Scope::ToolInput))
                    .then(|| blocked_tools.with_label_values(&[&rule.id])),
            });
        }
        for action in ["mask", "block", "approve", "audit"] {
            rules_loaded.with_label_values(&[action]).add(0);
        }
        let upstream_vec = counter_vec(
            r,
            "streammask_upstream_errors_total",
            "Failed upstream exchanges by kind",
            &["kind"],
        );
        let auth_vec = counter_vec(
            r,
            "streammask_auth_failures_total",
            "Requests refused by authentication or authorisation, by reason",
            &["reason"],
        );
        let tokens_vec = counter_vec(
            r,
            "streammask_tokens_total",
            "Claude token usage by model family, caller group and kind",
            &["model", "group", "kind"],
        );
        let groups_vec = counter_vec(
            r,
            "streammask_group_requests_total",
            "Requests by caller group (groups named in config; others are `other`, no identity `none`)",
            &["group"],
        );
        let mut known: Vec<String> = known_groups.to_vec();
        known.retain(|g| g != "other" && g != "none");
        let groups = known
            .iter()
            .map(String::as_str)
            .chain(["other", "none"])
            .map(|g| groups_vec.with_label_values(&[g]))
            .collect();
        let audit_records = IntCounter::new(
            "streammask_audit_records_total",
            "Audit records written to the sink",
        )
        .expect("valid metric");
        registry
            .register(Box::new(audit_records.clone()))
            .expect("unique metric");
        let audit_vec = counter_vec(
            r,
            "streammask_audit_failures_total",
            "Audit records lost: the queue was full or the sink failed",
            &["reason"],
        );
        Events {
            requests,
            request_duration: histograms_by_endpoint(
                r,
                "streammask_request_duration_seconds",
                "Time from request start to the end of the response",
                LATENCY_BUCKETS.to_vec(),
            ),
            upstream_ttfb: histograms_by_endpoint(
                r,
                "streammask_upstream_ttfb_seconds",
                "Time from opening the upstream exchange to the upstream response header",
                LATENCY_BUCKETS.to_vec(),
            ),
            request_masking: histogram(
                r,
                "streammask_request_masking_seconds",
                "Time the proxy spent masking one request and its response (the overhead it adds)",
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0,
                ],
            ),
            sse_event_masking: histogram(
                r,
                "streammask_sse_event_masking_seconds",
                "Time the proxy spent on one upstream SSE event (the mean over the events handled together)",
                vec![
                    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                    0.0005, 0.001, 0.005,
                ],
            ),
            rules,
            findings_vec,
            blocked_tool_calls_unparseable: blocked_tools
                .with_label_values(&["streammask-unparseable-tool-input"]),
            blocked_requests_vec: blocked_requests,
            blocked_tools_vec: blocked_tools,
            active_streams: gauge(
                r,
                "streammask_active_streams",
                "Responses being streamed right now",
            ),
            held_bytes: gauge(
                r,
                "streammask_held_bytes",
                "Response bytes held back by the streaming maskers right now",
            ),
            stream_peak_held: histogram(
                r,
                "streammask_stream_peak_held_bytes",
                "Largest number of bytes one stream held back",
                vec![
                    0.0, 64.0, 256.0, 1024.0, 4096.0, 12288.0, 65536.0, 1048576.0,
                ],
            ),
            late_matches: {
                let c = IntCounter::new(
                    "streammask_late_matches_total",
                    "Secrets whose start had already been sent to the client (should stay 0)",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            upstream_errors: UpstreamError::ALL
                .iter()
                .map(|k| upstream_vec.with_label_values(&[k.label()]))
                .collect(),
            auth_failures: AUTH_FAILURE_REASONS
                .iter()
                .map(|reason| auth_vec.with_label_values(&[reason]))
                .collect(),
            tokens_vec,
            tokens: (0..MODEL_SLOTS).map(|_| OnceLock::new()).collect(),
            groups,
            known_groups: known,
            audit_records,
            audit_failures: [
                audit_vec.with_label_values(&["queue_full"]),
                audit_vec.with_label_values(&["write"]),
            ],
            registry,
        }
    }

    fn auth_failure(&self, reason: &str) {
        let index = AUTH_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(AUTH_FAILURE_REASONS.len() - 1);
        self.auth_failures[index].inc();
    }

    fn group_index(&self, identity: Option<&Identity>) -> usize {
        let other = self.known_groups.len();
        match identity {
            None => other + 1,
            Some(identity) if identity.groups.is_empty() => other + 1,
            Some(identity) => identity
                .groups
                .iter()
                .find_map(|g| self.known_groups.iter().position(|k| k == g))
                .unwrap_or(other),
        }
    }

    fn group_label(&self, index: usize) -> &str {
        self.known_groups.get(index).map(String::as_str).unwrap_or(
            if index == self.known_groups.len() {
                "other"
            } else {
                "none"
            },
        )
    }

    fn tokens_for(&self, slot: usize, group: usize) -> &[IntCounter] {
        let handles = self.tokens[slot].get_or_init(|| {
            let model = model_slot_label(slot);
            (0..self.known_groups.len() + 2)
                .flat_map(|g| {
                    let group = self.group_label(g).to_string();
                    let model = model.clone();
                    TOKEN_KINDS.iter().map(move |kind| {
                        self.tokens_vec
                            .with_label_values(&[model.as_str(), group.as_str(), kind])
                    })
                })
                .collect()
        });
        &handles[group * TOKEN_KINDS.len()..(group + 1) * TOKEN_KINDS.len()]
    }

    /// The pre-resolved handles for this finding's rule, when they describe it.
    fn handles(&self, finding: &crate::masker::Finding) -> Option<&RuleHandles> {
        self.rules
            .get(finding.rule as usize)
            .filter(|r| r.id == finding.rule_id && r.action == finding.action)
    }

    fn finding(&self, located: &Located, direction: usize) {
        match self
            .handles(&located.finding)
            .and_then(|r| r.findings[direction].as_ref())
        {
            Some(counter) => counter.inc(),
            None => self
                .findings_vec
                .with_label_values(&[
                    &located.finding.rule_id,
                    DIRECTIONS[direction],
                    located.finding.action.as_str(),
                ])
                .inc(),
        }
    }
}

/// Build every metric for this engine and configuration. Called once at start-up; later
/// calls keep the first registry.
pub fn install(engine: &Engine, known_groups: &[String]) {
    let _ = EVENTS.get_or_init(|| Events::new(engine, known_groups));
}

/// The Prometheus text exposition of every metric, or `None` when metrics are off.
pub fn render() -> Option<Vec<u8>> {
    let events = EVENTS.get()?;
    let mut out = Vec::with_capacity(64 * 1024);
    TextEncoder::new()
        .encode(&events.registry.gather(), &mut out)
        .ok()?;
    Some(out)
}

/// The authentication layer refused a request. `reason` is one of [`AUTH_FAILURE_REASONS`];
/// any other value is counted as `other`, so a label never carries caller input.
pub fn auth_failure(reason: &'static str) {
    if let Some(events) = EVENTS.get() {
        events.auth_failure(reason);
    }
}

pub(crate) fn audit_written(records: u64) {
    if let Some(events) = EVENTS.get() {
        events.audit_records.inc_by(records);
    }
}

/// Audit records were lost: `queue_full` (false) or a sink write failure (true).
pub(crate) fn audit_failed(write: bool, records: u64) {
    if let Some(events) = EVENTS.get() {
        events.audit_failures[usize::from(write)].inc_by(records);
    }
}

/// Tracks one streamed response: counted in `streammask_active_streams` while it lives, its
/// held bytes in `streammask_held_bytes`.
/// Per-event costs are accumulated in a local histogram and added to the shared one when the
/// stream ends: a few atomic additions per stream instead of several per event (the shared
/// histogram's cache lines bounce between worker threads).
pub struct StreamGuard {
    held: i64,
    peak: usize,
    event_costs: Option<prometheus::local::LocalHistogram>,
}

impl StreamGuard {
    pub fn start() -> StreamGuard {
        let event_costs = EVENTS.get().map(|events| {
            events.active_streams.inc();
            events.sse_event_masking.local()
        });
        StreamGuard {
            held: 0,
            peak: 0,
            event_costs,
        }
    }

    /// `events` upstream SSE events were transformed in `elapsed` (one batch of the stream
    /// loop). Each is recorded with the batch's mean, so the clock is not read around every
    /// event.
    pub fn events_masked(&mut self, events: u64, elapsed: Duration) {
        if let (Some(local), true) = (&self.event_costs, events > 0) {
            let each = elapsed.as_secs_f64() / events as f64;
            for _ in 0..events {
                local.observe(each);
            }
        }
    }

    /// The stream now holds `held` bytes.
    pub fn held(&mut self, held: usize) {
        self.peak = self.peak.max(held);
        let held = held as i64;
        if held != self.held {
            if let Some(events) = EVENTS.get() {
                events.held_bytes.add(held - self.held);
            }
            self.held = held;
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(local) = &self.event_costs {
            local.flush();
        }
        if let Some(events) = EVENTS.get() {
            events.active_streams.dec();
            events.held_bytes.sub(self.held);
            events.stream_peak_held.observe(self.peak as f64);
        }
    }
}

fn endpoint_index(route: Option<Route>) -> usize {
    match route {
        Some(Route::Messages) => 0,
        Some(Route::CountTokens) => 1,
        Some(Route::Batches) => 2,
        Some(Route::BatchResults) => 3,
        Some(Route::Models) => 4,
        Some(Route::Passthrough) => 5,
        None => 6,
    }
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allowed => 0,
        Outcome::Masked => 1,
        Outcome::Blocked => 2,
        Outcome::Error => 4,
    }
}

/// Blocked tool calls in the response findings: one per tool block (`content[i].input…`
/// paths), attributed to the first block rule found in it.
fn blocked_tool_rules(findings: &[Located]) -> Vec<&crate::masker::Finding> {
    let mut seen: Vec<&str> = Vec::new();
    let mut rules = Vec::new();
    for found in findings {
        if found.finding.action != Action::Block {
            continue;
        }
        let Some((block, _)) = found.path.split_once(".input") else {
            continue;
        };
        if !seen.contains(&block) {
            seen.push(block);
            rules.push(&found.finding);
        }
    }
    rules
}

/// The request is over: update every metric, then hand the audit record to the writer.
pub fn request_finished(ctx: &mut RequestCtx, engine: &Engine) {
    if let Some(events) = EVENTS.get() {
        let endpoint = endpoint_index(ctx.route);
        let index = (endpoint * STATUS_CLASSES.len() + status_class_index(ctx.status))
            * OUTCOMES.len()
            + outcome_index(ctx.outcome);
        events.requests[index].inc();
        events.request_duration[endpoint].observe(ctx.started.elapsed().as_secs_f64());
        if let Some(ttfb) = ctx.obs.upstream_ttfb {
            events.upstream_ttfb[endpoint].observe(ttfb.as_secs_f64());
        }
        if ctx.route.is_some() {
            events
                .request_masking
                .observe(ctx.obs.masking.as_secs_f64());
        }
        for found in &ctx.request_findings {
            events.finding(found, 0);
        }
        for found in &ctx.response_findings {
            events.finding(found, 1);
        }
        if let Some(blocked) = &ctx.blocked_rule {
            let handle = ctx
                .request_findings
                .iter()
                .find(|f| &f.finding.rule_id == blocked)
                .and_then(|f| events.handles(&f.finding))
                .and_then(|r| r.blocked_requests.as_ref());
            match handle {
                Some(counter) => counter.inc(),
                None => events
                    .blocked_requests_vec
                    .with_label_values(&[blocked])
                    .inc(),
            }
        }
        let tool_rules = blocked_tool_rules(&ctx.response_findings);
        for finding in &tool_rules {
            match events
                .handles(finding)
                .and_then(|r| r.blocked_tool_calls.as_ref())
            {
                Some(counter) => counter.inc(),
                None => events
                    .blocked_tools_vec
                    .with_label_values(&[&finding.rule_id])
                    .inc(),
            }
        }
        // Tool calls blocked without a finding could not be parsed at all.
        for _ in tool_rules.len()..ctx.tools_blocked {
            events.blocked_tool_calls_unparseable.inc();
        }
        if ctx.late_matches > 0 {
            events.late_matches.inc_by(ctx.late_matches);
        }
        if let Some(kind) = ctx.obs.upstream_error {
            events.upstream_errors[kind as usize].inc();
        }
        if let Some(reason) = ctx.auth_failure {
            events.auth_failure(reason);
        }
        let group = events.group_index(ctx.identity.as_deref());
        events.groups[group].inc();
        if !ctx.obs.usage.is_empty() {
            let slot = ctx
                .obs
                .model
                .as_deref()
                .and_then(model_family)
                .unwrap_or(OTHER_MODEL_SLOT);
            let handles = events.tokens_for(slot, group);
            for (handle, value) in handles.iter().zip(ctx.obs.usage.kinds()) {
                if let Some(value) = value {
                    handle.inc_by(value);
                }
            }
        }
    }
    crate::audit::record(ctx, engine);
}

// --- model families ------------------------------------------------------------------------

const FAMILIES: [&str; 3] = ["opus", "sonnet", "haiku"];
/// family × major (0–9) × minor (none or 0–9), then `other`.
const MODEL_SLOTS: usize = FAMILIES.len() * 10 * 11 + 1;
const OTHER_MODEL_SLOT: usize = MODEL_SLOTS - 1;

/// The bounded model label slot of a client-supplied model string: `claude-<family>-<major>
/// [-<minor>]` for the Claude naming schemes (`claude-opus-4-5-20251101`,
/// `claude-3-5-sonnet-latest`, `claude-sonnet-4-20250514`), or `None` for anything else.
pub fn model_family(model: &str) -> Option<usize> {
    let model = model.split('[').next().unwrap_or("").to_ascii_lowercase();
    let mut parts = model.split('-');
    if parts.next() != Some("claude") {
        return None;
    }
    let mut family = None;
    let mut numbers: Vec<usize> = Vec::new();
    for part in parts {
        if let Some(f) = FAMILIES.iter().position(|f| *f == part) {
            if family.replace(f).is_some() {
                return None;
            }
        } else if part.len() == 1 && part.as_bytes()[0].is_ascii_digit() {
            numbers.push(usize::from(part.as_bytes()[0] - b'0'));
        } else if (part.len() == 8 && part.bytes().all(|b| b.is_ascii_digit())) || part == "latest"
        {
            // A snapshot date or alias: the same family.
        } else {
            return None;
        }
    }
    let family = family?;
    let (major, minor) = match numbers.as_slice() {
        [major] => (*major, 0),
        [major, minor] => (*major, minor + 1),
        _ => return None,
    };
    Some((family * 10 + major) * 11 + minor)
}

/// The label of a model slot.
pub fn model_slot_label(slot: usize) -> String {
    if slot >= OTHER_MODEL_SLOT {
        return "other".to_string();
    }
    let minor = slot % 11;
    let major = (slot / 11) % 10;
    let family = FAMILIES[slot / 110];
    if minor == 0 {
        format!("claude-{family}-{major}")
    } else {
        format!("claude-{family}-{major}-{}", minor - 1)
    }
}

/// The string value of top-level `key` in a JSON object, without parsing the rest: strings are
/// skipped with `memchr`, so a multi-megabyte request costs microseconds. `body` must already
/// be valid JSON (the walker checked it).
pub fn top_level_string(body: &[u8], key: &str) -> Option<String> {
    fn string_end(body: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let found = at + memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
            if body[found] == b'"' {
                return Some(found);
            }
            at = found + 2;
        }
    }
    let skip_ws = |mut at: usize| {
        while body.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let mut at = skip_ws(0);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut depth = 1usize;
    let mut expect_key = true;
    while at < body.len() {
        match body[at] {
            b'"' => {
                let end = string_end(body, at + 1)?;
                if depth == 1 && expect_key {
                    expect_key = false;
                    if &body[at + 1..end] == key.as_bytes() {
                        let colon = skip_ws(end + 1);
                        let value = skip_ws(colon + 1);
                        if body.get(value) != Some(&b'"') {
                            return None;
                        }
                        let value_end = string_end(body, value + 1)?;
                        return serde_json::from_slice(&body[value..=value_end]).ok();
                    }
                }
                at = end + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
                at += 1;
            }
            b',' => {
                expect_key = depth == 1;
                at += 1;
            }
            _ => at += 1,
        }
    }
    None
}

/// Scan a short client-chosen string (a model name, a JSON path) and mask any secret in it,
/// so audit records carry only text that matches no rule.
pub fn masked_label<'t>(engine: &Engine, text: &'t str, scope: Scope) -> std::borrow::Cow<'t, str> {
    match engine.mask(text, scope) {
        Ok(masked) if masked.findings.is_empty() => std::borrow::Cow::Borrowed(text),
        Ok(masked) => {
            // Every finding is replaced, whatever its action: this text is for the audit log.
            let mut out = String::with_capacity(text.len());
            let mut last = 0;
            for finding in &masked.findings {
                if finding.span.start >= last {
                    out.push_str(&text[last..finding.span.start]);
                    out.push_str(&finding.placeholder);
                    last = finding.span.end;
                }
            }
            out.push_str(&text[last..]);
            std::borrow::Cow::Owned(out)
        }
        Err(_) => std::borrow::Cow::Borrowed("[unscannable]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_families_are_bounded_and_normalised() {
        let label = |m: &str| model_family(m).map(model_slot_label);
        assert_eq!(
            label("claude-opus-4-5-20251101").as_deref(),
            Some("claude-opus-4-5")
        );
        assert_eq!(
            label("claude-sonnet-4-20250514").as_deref(),
            Some("claude-sonnet-4")
        );
        assert_eq!(
            label("claude-3-5-haiku-latest").as_deref(),
            Some("claude-haiku-3-5")
        );
        assert_eq!(
            label("claude-opus-4-8[1m]").as_deref(),
            Some("claude-opus-4-8")
        );
        assert_eq!(label("CLAUDE-OPUS-4-1").as_deref(), Some("claude-opus-4-1"));
        for other in [
            "gpt-4",
            "claude",
            "claude-opus",
            "claude-opus-4-5-6",
            "claude-opus-44",
            "claude-opus-4-ghp_abcdef",
            "claude-opus-sonnet-4",
            "",
        ] {
            assert_eq!(model_family(other), None, "{other}");
        }
        let mut labels: Vec<String> = (0..MODEL_SLOTS).map(model_slot_label).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), MODEL_SLOTS, "every slot has its own label");
        for slot in 0..OTHER_MODEL_SLOT {
            assert_eq!(model_family(&model_slot_label(slot)), Some(slot));
        }
    }

    #[test]
    fn top_level_model_is_found_anywhere_in_the_object() {
        let cases: [(&str, Option<&str>); 6] = [
            (
                r#"{"model":"claude-opus-4-8","messages":[]}"#,
                Some("claude-opus-4-8"),
            ),
            (
                r#" { "messages" : [{"model":"inner","content":"a \" \\ \"model\": \"x"}], "model" : "m\u0031" } "#,
                Some("m1"),
            ),
            (r#"{"messages":[{"model":"inner"}]}"#, None),
            (r#"{"metadata":{"model":"inner"},"max_tokens":5}"#, None),
            (r#"["model","x"]"#, None),
            (r#"{"model":5}"#, None),
        ];
        for (body, want) in cases {
            assert_eq!(
                top_level_string(body.as_bytes(), "model").as_deref(),
                want,
                "{body}"
            );
        }
    }

    fn engine() -> Engine {
        use crate::matcher::Matcher;
        use crate::placeholder::PlaceholderKey;
        use crate::rules::RuleSet;
        let rules = include_str!("../tests/fixtures/engine-rules.toml");
        let set = RuleSet::from_toml("engine-rules.toml", rules).unwrap();
        let matcher = Matcher::compile(&set, 8190).unwrap();
        let key = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
        Engine::new(matcher, key, 8192).unwrap()
    }

    #[test]
    fn groups_and_auth_reasons_use_bounded_labels() {
        let engine = engine();
        let events = Events::new(&engine, &["eng".to_string(), "sre".to_string()]);
        let identity = |groups: &[&str]| Identity {
            subject: "alice@example.com".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            profile: "default".into(),
        };
        let label = |identity: Option<&Identity>| {
            events.group_label(events.group_index(identity)).to_string()
        };
        assert_eq!(label(None), "none");
        assert_eq!(label(Some(&identity(&[]))), "none");
        assert_eq!(label(Some(&identity(&["contractors"]))), "other");
        assert_eq!(
            label(Some(&identity(&["contractors", "sre", "eng"]))),
            "sre"
        );
        for reason in ["expired", "unknown_kid", "expired", "made-up reason"] {
            events.auth_failure(reason);
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&events.registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(r#"streammask_auth_failures_total{reason="expired"} 2"#));
        assert!(text.contains(r#"streammask_auth_failures_total{reason="unknown_kid"} 1"#));
        assert!(text.contains(r#"streammask_auth_failures_total{reason="other"} 1"#));
        assert!(!text.contains("made-up"));
        for group in ["eng", "sre", "other", "none"] {
            assert!(text.contains(&format!(
                r#"streammask_group_requests_total{{group="{group}"}} 0"#
            )));
        }
        assert!(!text.contains("alice"), "no subject in any label");
        let rules = engine.matcher().rules().len();
        let loaded: usize = text
            .lines()
            .filter(|l| l.starts_with("streammask_rules_loaded{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(loaded, rules);
    }

    #[test]
    fn blocked_tool_calls_count_once_per_block() {
        use crate::masker::Finding;
        let finding = |rule: u32, action: Action| Finding {
            rule,
            rule_id: format!("r{rule}"),
            action,
            span: 0..1,
            placeholder: String::new(),
            rewritten: true,
            secret_chars: 1,
            checksum_valid: None,
        };
        let at = |path: &str, rule: u32, action: Action| Located {
            path: path.into(),
            finding: finding(rule, action),
        };
        let findings = [
            at("content[1].input.command", 3, Action::Block),
            at("content[1].input.command", 4, Action::Block),
            at("content[2].input", 5, Action::Mask),
            at("content[0]", 6, Action::Block),
            at("content[3].input.x", 7, Action::Block),
        ];
        assert_eq!(
            blocked_tool_rules(&findings)
                .iter()
                .map(|f| f.rule)
                .collect::<Vec<_>>(),
            vec![3, 7]
        );
    }
}
