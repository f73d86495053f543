//! Metrics: every Prometheus series the proxy exports, updated from an [`Exchange`] when a
//! request is over and from a [`StreamGuard`] while a response streams.
//!
//! Invariants:
//! - metric names follow `streammask_<noun>_<unit>[_total]`; every label value comes from a
//!   fixed set known at start-up — the enums' labels (routes, outcomes, directions, upstream
//!   errors, auth failures, token kinds), status classes, rule ids of the loaded rules,
//!   configured groups and a bounded model-family grammar — never a user id, a path, a header
//!   value or anything else a client chooses freely;
//! - every series of a fixed label set exists from start-up (at 0), so rates and alerts that
//!   add series work on a fresh proxy;
//! - label handles are resolved once (at start-up, or once per model family slot), so the hot
//!   path indexes arrays and never builds label strings;
//! - nothing here ever sees or records secret text: findings are counted by rule;
//! - a [`Metrics`] is a value owned by whoever built it (start-up), not a process-wide static,
//!   so tests build their own and a reload can keep or replace it.

use super::batch_histogram::{BatchHistogram, LocalBatches};
use crate::anthropic::api::{Provider, Route};
use crate::anthropic::restore::Unrestored;
use crate::anthropic::tools::ToolBlock;
use crate::anthropic::usage::TokenKind;
use crate::engine::{Action, Engine, Finding, Located, Scope};
use crate::exchange::{Direction, Exchange, Outcome, UpstreamError};
use crate::policy::approvals::{ApprovalEvent, EventKind, State as ApprovalState};
use crate::policy::auth::AuthFailure;
use crate::policy::identity::Identity;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::OnceLock;
use std::time::Duration;

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

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The endpoint label slot of a route; requests no route took come last (`unknown`).
fn endpoint_index(route: Option<Route>) -> usize {
    route.map_or(Route::ALL.len(), |route| route as usize)
}

fn endpoint_labels() -> impl Iterator<Item = &'static str> {
    Route::ALL.iter().map(|r| r.label()).chain(["unknown"])
}

fn status_class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => STATUS_CLASSES.len() - 1,
    }
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Registers metrics in one registry. Names and labels are literals of this module, so a
/// failure here is a programming error caught by the first test that builds [`Metrics`].
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    fn batch_histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> BatchHistogram {
        self.register(BatchHistogram::new(name, help, buckets).expect("valid metric"))
    }

    fn histograms_by_endpoint(&self, name: &str, help: &str, buckets: Vec<f64>) -> Vec<Histogram> {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        let vec = self
            .register(prometheus::HistogramVec::new(opts, &["endpoint"]).expect("valid metric"));
        endpoint_labels()
            .map(|e| vec.with_label_values(&[e]))
            .collect()
    }
}

/// Every metric. Built once at start-up ([`Metrics::new`]) and shared by every request.
pub struct Metrics {
    registry: Registry,
    requests: RequestMetrics,
    rules: RuleMetrics,
    streams: StreamMetrics,
    callers: CallerMetrics,
    audit: AuditCounters,
    restore: RestoreMetrics,
    approvals: ApprovalMetrics,
    pack: PackMetrics,
}

impl Metrics {
    /// Every metric, with per-rule handles for `engine`'s rules and group labels for
    /// `known_groups` (every other group is counted as `other`).
    pub fn new(engine: &Engine, known_groups: &[String]) -> Metrics {
        let registry = Registry::new();
        let r = Registrar(&registry);
        Metrics {
            requests: RequestMetrics::register(&r),
            rules: RuleMetrics::register(&r, engine),
            streams: StreamMetrics::register(&r),
            callers: CallerMetrics::register(&r, known_groups),
            audit: AuditCounters::register(&r),
            restore: RestoreMetrics::register(&r, engine),
            approvals: ApprovalMetrics::register(&r),
            pack: PackMetrics::register(&r, engine),
            registry,
        }
    }

    /// A reload swapped in `engine`: its rules get their series (at 0) and handles,
    /// `streammask_rules_loaded` and `streammask_rules_info` describe it, and the reload is
    /// counted. Series of rules the reload removed stay (counters never go back).
    pub fn rules_reloaded(&self, engine: &Engine) {
        self.rules.reload(engine);
        self.restore.reload(engine);
        self.pack.loaded(engine);
        self.pack.reloads[0].inc();
    }

    /// A reload was refused (the running snapshot stays).
    pub fn reload_failed(&self) {
        self.pack.reloads[1].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 * 1024);
        // Encoding into a Vec fails only for invalid metric families, which `new` cannot build.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// An approval changed (see [`crate::policy::approvals::EventKind`]).
    pub fn approval_event(&self, event: &ApprovalEvent) {
        self.approvals.record(event);
    }

    /// Pending approvals in the store, as this replica last read it.
    pub fn set_approvals_pending(&self, pending: usize) {
        self.approvals
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// The counters the audit writer updates.
    pub fn audit_counters(&self) -> AuditCounters {
        self.audit.clone()
    }

    /// The request is over: count everything its exchange records.
    pub fn request_finished(&self, exchange: &Exchange) {
        self.requests.record(exchange);
        self.rules.record(exchange);
        self.restore.record(exchange);
        if exchange.approval_store_failed {
            self.approvals.store_failures.inc();
        }
        if exchange.late_matches > 0 {
            self.streams.late_matches.inc_by(exchange.late_matches);
        }
        if exchange.panicked {
            self.streams.panics.inc();
        }
        if exchange.over_budget {
            self.streams.over_budget.inc();
        }
        if exchange.masking_pool_busy {
            self.streams.masking_pool_busy.inc();
        }
        if exchange.shutdown_cut {
            self.streams.shutdown_cuts.inc();
        }
        self.callers.record(exchange);
    }
}

/// Requests: counts by endpoint, status class and outcome; latencies; upstream errors.
struct RequestMetrics {
    /// Indexed by (provider, endpoint, status class, outcome).
    requests: Vec<IntCounter>,
    duration: Vec<Histogram>,
    upstream_ttfb: Vec<Histogram>,
    masking: Histogram,
    upstream_errors: Vec<IntCounter>,
}

impl RequestMetrics {
    fn register(r: &Registrar) -> RequestMetrics {
        let requests_vec = r.counter_vec(
            "streammask_requests_total",
            "Requests by provider, endpoint, status class and outcome",
            &["provider", "endpoint", "status_class", "outcome"],
        );
        let mut requests = Vec::new();
        for provider in Provider::ALL {
            for endpoint in endpoint_labels() {
                for class in STATUS_CLASSES {
                    for outcome in Outcome::ALL {
                        requests.push(requests_vec.with_label_values(&[
                            provider.label(),
                            endpoint,
                            class,
                            outcome.label(),
                        ]));
                    }
                }
            }
        }
        let upstream_vec = r.counter_vec(
            "streammask_upstream_errors_total",
            "Failed upstream exchanges by kind",
            &["kind"],
        );
        RequestMetrics {
            requests,
            duration: r.histograms_by_endpoint(
                "streammask_request_duration_seconds",
                "Time from request start to the end of the response",
                LATENCY_BUCKETS.to_vec(),
            ),
            upstream_ttfb: r.histograms_by_endpoint(
                "streammask_upstream_ttfb_seconds",
                "Time from opening the upstream exchange to the upstream response header",
                LATENCY_BUCKETS.to_vec(),
            ),
            masking: r.histogram(
                "streammask_request_masking_seconds",
                "Time the proxy spent masking one request and its response (the overhead it adds)",
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0,
                ],
            ),
            upstream_errors: UpstreamError::ALL
                .iter()
                .map(|k| upstream_vec.with_label_values(&[k.label()]))
                .collect(),
        }
    }

    fn record(&self, exchange: &Exchange) {
        let endpoint = endpoint_index(exchange.route);
        let endpoints = Route::ALL.len() + 1;
        let index = (((exchange.provider as usize) * endpoints + endpoint) * STATUS_CLASSES.len()
            + status_class_index(exchange.status))
            * Outcome::ALL.len()
            + exchange.outcome as usize;
        self.requests[index].inc();
        self.duration[endpoint].observe(exchange.started.elapsed().as_secs_f64());
        if let Some(ttfb) = exchange.upstream_ttfb {
            self.upstream_ttfb[endpoint].observe(ttfb.as_secs_f64());
        }
        if exchange.route.is_some() {
            self.masking.observe(exchange.masking.as_secs_f64());
        }
        if let Some(failure) = exchange.upstream_error {
            self.upstream_errors[failure.kind as usize].inc();
        }
    }
}

/// Per-rule handles, indexed like the default engine's `Matcher::all_rules()` (an inactive
/// rule has no handles). A policy profile's
/// engine may number or act on rules differently, so a handle is used only when its id and
/// action match the finding; otherwise the labelled vector is used (rule ids come from the
/// loaded rules, so the label set stays bounded).
struct RuleHandles {
    id: String,
    action: Action,
    /// Indexed by [`Direction`].
    findings: [Option<IntCounter>; 2],
    blocked_requests: Option<IntCounter>,
    blocked_tool_calls: Option<IntCounter>,
}

/// Findings and what block rules stopped.
struct RuleMetrics {
    /// Replaced whole by a reload; a request that finishes on the old snapshot's engine
    /// falls back to the labelled vectors (handles match by id and action).
    rules: arc_swap::ArcSwap<Vec<RuleHandles>>,
    rules_loaded: IntGaugeVec,
    findings_vec: IntCounterVec,
    blocked_requests_vec: IntCounterVec,
    blocked_tools_vec: IntCounterVec,
    blocked_tool_calls_unparseable: IntCounter,
}

impl RuleMetrics {
    fn register(r: &Registrar, engine: &Engine) -> RuleMetrics {
        let findings_vec = r.counter_vec(
            "streammask_findings_total",
            "Findings by rule, direction and action",
            &["rule", "direction", "action"],
        );
        let blocked_requests = r.counter_vec(
            "streammask_blocked_requests_total",
            "Requests refused by a block rule",
            &["rule"],
        );
        let blocked_tools = r.counter_vec(
            "streammask_blocked_tool_calls_total",
            "Tool calls replaced by a block rule",
            &["rule"],
        );
        let rules_loaded = r.register(
            IntGaugeVec::new(
                Opts::new("streammask_rules_loaded", "Rules compiled into the engine"),
                &["action"],
            )
            .expect("valid metric"),
        );
        let metrics = RuleMetrics {
            rules: arc_swap::ArcSwap::from_pointee(Vec::new()),
            rules_loaded,
            findings_vec,
            blocked_tool_calls_unparseable: blocked_tools
                .with_label_values(&[ToolBlock::Unparseable.rule_id()]),
            blocked_requests_vec: blocked_requests,
            blocked_tools_vec: blocked_tools,
        };
        metrics.reload(engine);
        metrics
    }

    /// Handles and zeroed series for `engine`'s rules; `streammask_rules_loaded` counts them.
    fn reload(&self, engine: &Engine) {
        let (rules_loaded, findings_vec) = (&self.rules_loaded, &self.findings_vec);
        let (blocked_requests, blocked_tools) =
            (&self.blocked_requests_vec, &self.blocked_tools_vec);
        for action in Action::ALL {
            rules_loaded.with_label_values(&[action.as_str()]).set(0);
        }
        let mut rules = Vec::new();
        for compiled in engine.matcher().all_rules() {
            let rule = &compiled.rule;
            if !compiled.active() {
                rules.push(RuleHandles {
                    id: rule.id.clone(),
                    action: rule.action,
                    findings: [None, None],
                    blocked_requests: None,
                    blocked_tool_calls: None,
                });
                continue;
            }
            let action = rule.action.as_str();
            rules_loaded.with_label_values(&[action]).inc();
            let applies = |scope: Scope| rule.applies_to.contains(&scope);
            let direction_applies = [
                applies(Scope::Request),
                applies(Scope::Response) || applies(Scope::ToolInput),
            ];
            let findings = Direction::ALL.map(|direction| {
                direction_applies[direction as usize]
                    .then(|| findings_vec.with_label_values(&[&rule.id, direction.label(), action]))
            });
            let block = rule.action == Action::Block;
            if block {
                // Every block rule has its series in both families from start-up, so dashboards
                // and alerts find them on a fresh proxy even when no rule of the pack blocks
                // requests (the default pack's block rules all judge tool calls): one that
                // cannot block a request stays at 0.
                blocked_requests.with_label_values(&[&rule.id]);
                blocked_tools.with_label_values(&[&rule.id]);
            }
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
        self.rules.store(std::sync::Arc::new(rules));
    }

    fn finding(&self, rules: &[RuleHandles], located: &Located, direction: Direction) {
        let finding = &located.finding;
        match handles(rules, finding).and_then(|r| r.findings[direction as usize].as_ref()) {
            Some(counter) => counter.inc(),
            None => self
                .findings_vec
                .with_label_values(&[&finding.rule_id, direction.label(), finding.action.as_str()])
                .inc(),
        }
    }

    fn record(&self, exchange: &Exchange) {
        let rules = self.rules.load();
        for direction in Direction::ALL {
            for located in exchange.findings(direction) {
                self.finding(&rules, located, direction);
            }
        }
        if let Some(blocked) = &exchange.blocked_rule {
            let handle = exchange
                .request_findings
                .iter()
                .find(|f| &f.finding.rule_id == blocked)
                .and_then(|f| handles(&rules, &f.finding))
                .and_then(|r| r.blocked_requests.as_ref());
            match handle {
                Some(counter) => counter.inc(),
                None => self
                    .blocked_requests_vec
                    .with_label_values(&[blocked])
                    .inc(),
            }
        }
        for refusal in &exchange.blocked_tools {
            match refusal {
                ToolBlock::Rule(finding) => {
                    match handles(&rules, finding).and_then(|r| r.blocked_tool_calls.as_ref()) {
                        Some(counter) => counter.inc(),
                        None => self
                            .blocked_tools_vec
                            .with_label_values(&[&finding.rule_id])
                            .inc(),
                    }
                }
                ToolBlock::Unparseable => self.blocked_tool_calls_unparseable.inc(),
            }
        }
    }
}

/// The pre-resolved handles for this finding's rule, when they describe it.
fn handles<'r>(rules: &'r [RuleHandles], finding: &Finding) -> Option<&'r RuleHandles> {
    rules
        .get(finding.rule as usize)
        .filter(|r| r.id == finding.rule_id && r.action == finding.action)
}

/// Placeholders given back to their owner, and those left masked.
struct RestoreMetrics {
    restored: IntCounterVec,
    unrestored: IntCounterVec,
    store_failures: IntCounter,
}

impl RestoreMetrics {
    fn register(r: &Registrar, engine: &Engine) -> RestoreMetrics {
        let restored = r.counter_vec(
            "streammask_placeholders_restored_total",
            "Placeholders in responses given back their secret for the caller who sent it, by rule",
            &["rule"],
        );
        let unrestored = r.counter_vec(
            "streammask_placeholders_unrestored_total",
            "Placeholders in responses left masked where restore applies, by reason",
            &["reason"],
        );
        for reason in [
            Unrestored::Unknown,
            Unrestored::RuleOptOut,
            Unrestored::StoreUnavailable,
            Unrestored::ToolNotAllowed,
        ] {
            unrestored.with_label_values(&[reason.label()]);
        }
        let metrics = RestoreMetrics {
            restored,
            unrestored,
            store_failures: r.counter(
                "streammask_restore_store_failures_total",
                "Requests for which the restore vault could not be read or written",
            ),
        };
        metrics.reload(engine);
        metrics
    }

    /// Every rule whose placeholders can come back has its series from start-up (and from
    /// the reload that added it), so rates and dashboards see a zero rather than nothing.
    fn reload(&self, engine: &Engine) {
        for compiled in engine.matcher().rules() {
            if compiled.rule.restore && compiled.rule.action == Action::Mask {
                self.restored.with_label_values(&[&compiled.rule.id]);
            }
        }
    }

    fn record(&self, exchange: &Exchange) {
        // Rule labels come only from restored placeholders, which the proxy made itself: a
        // made-up placeholder is counted by reason, so labels stay bounded by the rule pack.
        for event in &exchange.restore_events {
            match event.unrestored {
                None => self.restored.with_label_values(&[&event.rule_id]).inc(),
                Some(reason) => self.unrestored.with_label_values(&[reason.label()]).inc(),
            }
        }
        if exchange.restore_store_failed {
            self.store_failures.inc();
        }
    }
}

/// Human approvals: decisions, what is waiting, how long approvers take, and what failed.
struct ApprovalMetrics {
    /// By state: `pending` (a new approval was requested), `approved`, `denied`, `expired`.
    by_state: [IntCounter; 4],
    used: IntCounter,
    pending: IntGauge,
    decision_seconds: Histogram,
    webhook_failures: IntCounter,
    store_failures: IntCounter,
}

const DECISION_BUCKETS: [f64; 12] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

impl ApprovalMetrics {
    fn register(r: &Registrar) -> ApprovalMetrics {
        let total = r.counter_vec(
            "streammask_approvals_total",
            "Approvals by state reached: pending (requested), approved, denied, expired",
            &["state"],
        );
        ApprovalMetrics {
            by_state: ApprovalState::ALL.map(|s| total.with_label_values(&[s.label()])),
            used: r.counter(
                "streammask_approval_grants_used_total",
                "Requests forwarded on an approved grant",
            ),
            pending: r.gauge(
                "streammask_approvals_pending",
                "Approvals waiting for a decision, as this replica last read the store (replicas \
                 sharing a Redis report the same number: aggregate with max)",
            ),
            decision_seconds: r.histogram(
                "streammask_approval_decision_seconds",
                "Time from an approval's request to its decision",
                DECISION_BUCKETS.to_vec(),
            ),
            webhook_failures: r.counter(
                "streammask_approval_webhook_failures_total",
                "New approvals the webhook could not be told of (after retries)",
            ),
            store_failures: r.counter(
                "streammask_approval_store_failures_total",
                "Requests needing approval refused because the approvals store did not answer",
            ),
        }
    }

    fn state(&self, state: ApprovalState) -> &IntCounter {
        &self.by_state[state as usize]
    }

    fn record(&self, event: &ApprovalEvent) {
        match event.kind {
            EventKind::Requested => self.state(ApprovalState::Pending).inc(),
            EventKind::Approved | EventKind::Denied => {
                let state = if event.kind == EventKind::Approved {
                    ApprovalState::Approved
                } else {
                    ApprovalState::Denied
                };
                self.state(state).inc();
                if let Some(decision) = &event.approval.decision {
                    let waited = decision.at_ms.saturating_sub(event.approval.created_at_ms);
                    self.decision_seconds.observe(waited as f64 / 1000.0);
                }
            }
            EventKind::Expired => self.state(ApprovalState::Expired).inc(),
            EventKind::Used => self.used.inc(),
            EventKind::WebhookFailed => self.webhook_failures.inc(),
        }
    }
}

/// Which build and which rule pack this process runs, and how its reloads went.
struct PackMetrics {
    rules_info: IntGaugeVec,
    /// `result="ok"`, `result="error"`.
    reloads: [IntCounter; 2],
}

impl PackMetrics {
    fn register(r: &Registrar, engine: &Engine) -> PackMetrics {
        let build_info = r.register(
            IntGaugeVec::new(
                Opts::new(
                    "streammask_build_info",
                    "Always 1: the version of the running binary",
                ),
                &["version"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let rules_info = r.register(
            IntGaugeVec::new(
                Opts::new(
                    "streammask_rules_info",
                    "Always 1: the checksum of the loaded rule pack (rules, dictionaries, protected code and profiles), so replicas running different packs show apart",
                ),
                &["checksum"],
            )
            .expect("valid metric"),
        );
        let reloads_vec = r.counter_vec(
            "streammask_config_reloads_total",
            "Reloads of the config file and rules (SIGHUP, POST /admin/reload, file watch), by result",
            &["result"],
        );
        let pack = PackMetrics {
            rules_info,
            reloads: ["ok", "error"].map(|result| reloads_vec.with_label_values(&[result])),
        };
        pack.loaded(engine);
        pack
    }

    /// The one `streammask_rules_info` series names `engine`'s pack.
    fn loaded(&self, engine: &Engine) {
        self.rules_info.reset();
        self.rules_info
            .with_label_values(&[engine.matcher().pack_checksum()])
            .set(1);
    }
}

/// Streamed responses while they stream.
struct StreamMetrics {
    active_streams: IntGauge,
    held_bytes: IntGauge,
    stream_peak_held: Histogram,
    sse_event_masking: BatchHistogram,
    late_matches: IntCounter,
    panics: IntCounter,
    over_budget: IntCounter,
    masking_pool_busy: IntCounter,
    shutdown_cuts: IntCounter,
}

impl StreamMetrics {
    fn register(r: &Registrar) -> StreamMetrics {
        StreamMetrics {
            active_streams: r.gauge(
                "streammask_active_streams",
                "Responses being streamed right now",
            ),
            held_bytes: r.gauge(
                "streammask_held_bytes",
                "Response bytes held back by the streaming maskers right now",
            ),
            stream_peak_held: r.histogram(
                "streammask_stream_peak_held_bytes",
                "Largest number of bytes one stream held back",
                vec![
                    0.0, 64.0, 256.0, 1024.0, 4096.0, 12288.0, 65536.0, 1048576.0,
                ],
            ),
            sse_event_masking: r.batch_histogram(
                "streammask_sse_event_masking_seconds",
                "Time the proxy spent on one upstream SSE event (the mean over the events handled together)",
                vec![
                    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025,
                    0.0005, 0.001, 0.005,
                ],
            ),
            late_matches: r.counter(
                "streammask_late_matches_total",
                "Secrets whose start had already been sent to the client (should stay 0)",
            ),
            panics: r.counter(
                "streammask_request_panics_total",
                "Requests whose handling panicked (answered 502, or their stream cut; should stay 0)",
            ),
            over_budget: r.counter(
                "streammask_masking_over_budget_total",
                "Request bodies refused (422) because masking them ran out of [masking] max_scan_ms",
            ),
            masking_pool_busy: r.counter(
                "streammask_masking_pool_busy_total",
                "Large request bodies answered 529 because no masking worker was free within [masking] max_scan_ms",
            ),
            shutdown_cuts: r.counter(
                "streammask_shutdown_cut_streams_total",
                "Streams still open at the shutdown deadline (shutdown.grace_secs), ended with an overloaded_error event",
            ),
        }
    }
}

/// Who called: authentication refusals, requests and tokens by caller group.
struct CallerMetrics {
    auth_failures: Vec<IntCounter>,
    groups: Vec<IntCounter>,
    known_groups: Vec<String>,
    tokens_vec: IntCounterVec,
    /// One slot per model family label (see [`model_family`]); filled on first use.
    tokens: Vec<OnceLock<Vec<IntCounter>>>,
}

impl CallerMetrics {
    fn register(r: &Registrar, known_groups: &[String]) -> CallerMetrics {
        let auth_vec = r.counter_vec(
            "streammask_auth_failures_total",
            "Requests refused by authentication or authorisation, by reason",
            &["reason"],
        );
        let groups_vec = r.counter_vec(
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
        let callers = CallerMetrics {
            auth_failures: AuthFailure::ALL
                .iter()
                .map(|reason| auth_vec.with_label_values(&[reason.label()]))
                .collect(),
            groups,
            known_groups: known,
            tokens_vec: r.counter_vec(
                "streammask_tokens_total",
                "Claude token usage by model family, caller group and kind",
                &["model", "group", "kind"],
            ),
            tokens: (0..MODEL_SLOTS).map(|_| OnceLock::new()).collect(),
        };
        // The `other` model's series for every group exist from start-up (model families get
        // theirs on first use), so the token panels and any rate over them see a 0.
        callers.tokens_for(OTHER_MODEL_SLOT, 0);
        callers
    }

    fn record(&self, exchange: &Exchange) {
        if let Some(reason) = exchange.auth_failure {
            self.auth_failure(reason);
        }
        let group = self.group_index(exchange.caller.as_deref());
        self.groups[group].inc();
        if !exchange.usage.is_empty() {
            let slot = exchange
                .model
                .as_deref()
                .and_then(model_family)
                .unwrap_or(OTHER_MODEL_SLOT);
            let handles = self.tokens_for(slot, group);
            for (handle, kind) in handles.iter().zip(TokenKind::ALL) {
                if let Some(value) = exchange.usage.get(kind) {
                    handle.inc_by(value);
                }
            }
        }
    }

    fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].inc();
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
        let kinds = TokenKind::ALL.len();
        let handles = self.tokens[slot].get_or_init(|| {
            let model = model_slot_label(slot);
            (0..self.known_groups.len() + 2)
                .flat_map(|g| {
                    let group = self.group_label(g).to_string();
                    let model = model.clone();
                    TokenKind::ALL.into_iter().map(move |kind| {
                        self.tokens_vec.with_label_values(&[
                            model.as_str(),
                            group.as_str(),
                            kind.label(),
                        ])
                    })
                })
                .collect()
        });
        &handles[group * kinds..(group + 1) * kinds]
    }
}

/// The audit writer's counters: records written, and records lost by reason.
#[derive(Clone)]
pub struct AuditCounters {
    written: IntCounter,
    /// `queue_full`, then `write`.
    lost: [IntCounter; 2],
}

impl AuditCounters {
    fn register(r: &Registrar) -> AuditCounters {
        let written = r.counter(
            "streammask_audit_records_total",
            "Audit records written to the sink",
        );
        let lost = r.counter_vec(
            "streammask_audit_failures_total",
            "Audit records lost: the queue was full or the sink failed",
            &["reason"],
        );
        AuditCounters {
            written,
            lost: [
                lost.with_label_values(&["queue_full"]),
                lost.with_label_values(&["write"]),
            ],
        }
    }

    pub fn written(&self, records: u64) {
        self.written.inc_by(records);
    }

    /// Records were lost: the queue was full (`write` false) or the sink failed (true).
    pub fn lost(&self, write: bool, records: u64) {
        self.lost[usize::from(write)].inc_by(records);
    }
}

/// Tracks one streamed response: counted in `streammask_active_streams` while it lives, its
/// held bytes in `streammask_held_bytes`.
/// Per-event costs are accumulated in a local histogram and added to the shared one when the
/// stream ends: a few atomic additions per stream instead of several per event (the shared
/// histogram's cache lines bounce between worker threads).
pub struct StreamGuard<'m> {
    metrics: Option<&'m StreamMetrics>,
    held: i64,
    peak: usize,
    event_costs: Option<LocalBatches>,
}

impl<'m> StreamGuard<'m> {
    /// Start tracking a stream (`metrics` is `None` when metrics are off).
    pub fn start(metrics: Option<&'m Metrics>) -> StreamGuard<'m> {
        let metrics = metrics.map(|m| &m.streams);
        let event_costs = metrics.map(|streams| {
            streams.active_streams.inc();
            streams.sse_event_masking.local()
        });
        StreamGuard {
            metrics,
            held: 0,
            peak: 0,
            event_costs,
        }
    }

    /// `events` upstream SSE events were transformed in `elapsed` (one batch of the stream
    /// loop). Each is recorded with the batch's mean, so the clock is not read around every
    /// event (and the batch is one bucket search, [`BatchHistogram`]).
    pub fn events_masked(&mut self, events: u64, elapsed: Duration) {
        if let (Some(local), true) = (&mut self.event_costs, events > 0) {
            local.observe_many(elapsed.as_secs_f64() / events as f64, events);
        }
    }

    /// The stream now holds `held` bytes.
    pub fn held(&mut self, held: usize) {
        self.peak = self.peak.max(held);
        let held = held as i64;
        if held != self.held {
            if let Some(streams) = self.metrics {
                streams.held_bytes.add(held - self.held);
            }
            self.held = held;
        }
    }
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        if let Some(local) = &mut self.event_costs {
            local.flush();
        }
        if let Some(streams) = self.metrics {
            streams.active_streams.dec();
            streams.held_bytes.sub(self.held);
            streams.stream_peak_held.observe(self.peak as f64);
        }
    }
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
    // Read once per request: compared without case and counted without allocating.
    let model = model.split('[').next().unwrap_or("");
    let mut parts = model.split('-');
    if !parts.next()?.eq_ignore_ascii_case("claude") {
        return None;
    }
    let mut family = None;
    let mut numbers = [0usize; 2];
    let mut count = 0;
    for part in parts {
        if let Some(f) = FAMILIES.iter().position(|f| f.eq_ignore_ascii_case(part)) {
            if family.replace(f).is_some() {
                return None;
            }
        } else if part.len() == 1 && part.as_bytes()[0].is_ascii_digit() {
            *numbers.get_mut(count)? = usize::from(part.as_bytes()[0] - b'0');
            count += 1;
        } else if (part.len() == 8 && part.bytes().all(|b| b.is_ascii_digit()))
            || part.eq_ignore_ascii_case("latest")
        {
            // A snapshot date or alias: the same family.
        } else {
            return None;
        }
    }
    let family = family?;
    let (major, minor) = match (count, numbers) {
        (1, [major, _]) => (major, 0),
        (2, [major, minor]) => (major, minor + 1),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anthropic::usage::Usage;
    use crate::engine::Findings;
    use std::sync::Arc;

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
            "claude-opus-4-5-6-7",
            "claude-opus-4-LATEST-x",
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

    const RULES: &str = r#"
[[rules]]
id = "test-token"
description = "a test token"
pattern = 'tok_[a-z0-9]{12}'
action = "mask"
applies_to = ["request", "response", "tool_input"]

[[rules]]
id = "test-denied"
description = "a denylisted command"
pattern = 'shred --all [a-z]{1,16}'
action = "block"
applies_to = ["request", "tool_input"]
"#;

    fn engine() -> Engine {
        crate::engine::test_engine(RULES)
    }

    fn exposition(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render()).unwrap()
    }

    /// The value of the series written exactly as `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_fresh_proxy_exports_the_block_and_token_families() {
        // A pack whose only block rule judges tool calls (like the default pack): the request
        // family must still be there, at 0, and so must the token family.
        let engine = crate::engine::test_engine(
            r#"
[[rules]]
id = "test-tool-only"
description = "a denylisted command"
pattern = 'shred --all [a-z]{1,16}'
action = "block"
applies_to = ["tool_input"]
"#,
        );
        let metrics = Metrics::new(&engine, &["eng".to_string()]);
        let text = exposition(&metrics);
        for series in [
            r#"streammask_blocked_requests_total{rule="test-tool-only"}"#,
            r#"streammask_blocked_tool_calls_total{rule="test-tool-only"}"#,
            r#"streammask_tokens_total{group="eng",kind="input",model="other"}"#,
            r#"streammask_tokens_total{group="none",kind="output",model="other"}"#,
            r#"streammask_approvals_total{state="expired"}"#,
            "streammask_approvals_pending",
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn groups_and_auth_reasons_use_bounded_labels() {
        let engine = engine();
        let metrics = Metrics::new(&engine, &["eng".to_string(), "sre".to_string()]);
        let callers = &metrics.callers;
        let identity = |groups: &[&str]| Identity {
            subject: "alice@example.com".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            profile: "default".into(),
        };
        let label = |identity: Option<&Identity>| {
            callers
                .group_label(callers.group_index(identity))
                .to_string()
        };
        assert_eq!(label(None), "none");
        assert_eq!(label(Some(&identity(&[]))), "none");
        assert_eq!(label(Some(&identity(&["contractors"]))), "other");
        assert_eq!(
            label(Some(&identity(&["contractors", "sre", "eng"]))),
            "sre"
        );
        for reason in [
            AuthFailure::Expired,
            AuthFailure::UnknownKid,
            AuthFailure::Expired,
        ] {
            callers.auth_failure(reason);
        }
        let text = exposition(&metrics);
        assert!(text.contains(r#"streammask_auth_failures_total{reason="expired"} 2"#));
        assert!(text.contains(r#"streammask_auth_failures_total{reason="unknown_kid"} 1"#));
        let reasons = text
            .lines()
            .filter(|l| l.starts_with("streammask_auth_failures_total{"))
            .count();
        assert_eq!(reasons, AuthFailure::ALL.len(), "one series per reason");
        for group in ["eng", "sre", "other", "none"] {
            assert!(text.contains(&format!(
                r#"streammask_group_requests_total{{group="{group}"}} 0"#
            )));
        }
        assert!(!text.contains("alice"), "no subject in any label");
        let rules = engine.matcher().rules().count();
        let loaded: usize = text
            .lines()
            .filter(|l| l.starts_with("streammask_rules_loaded{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(loaded, rules);
    }

    #[test]
    fn panics_and_budget_refusals_are_counted() {
        let engine = engine();
        let metrics = Metrics::new(&engine, &[]);
        let text = exposition(&metrics);
        assert_eq!(value(&text, "streammask_request_panics_total"), Some(0.0));
        assert_eq!(
            value(&text, "streammask_masking_over_budget_total"),
            Some(0.0)
        );
        let mut exchange = Exchange::new(false);
        exchange.panicked = true;
        metrics.request_finished(&exchange);
        let mut exchange = Exchange::new(false);
        exchange.over_budget = true;
        metrics.request_finished(&exchange);
        metrics.request_finished(&exchange);
        let mut exchange = Exchange::new(false);
        exchange.masking_pool_busy = true;
        metrics.request_finished(&exchange);
        let text = exposition(&metrics);
        assert_eq!(value(&text, "streammask_request_panics_total"), Some(1.0));
        assert_eq!(
            value(&text, "streammask_masking_over_budget_total"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "streammask_masking_pool_busy_total"),
            Some(1.0)
        );
    }

    #[test]
    fn a_finished_exchange_is_counted_by_its_labels() {
        let engine = engine();
        let metrics = Metrics::new(&engine, &["eng".to_string()]);
        let finding = |text: &str| engine.scan(text, Scope::ToolInput).unwrap().remove(0);
        let token = finding("tok_abcdefghijkl");
        let denied = finding("shred --all disks");
        let mut exchange = Exchange::new(false);
        exchange.route = Some(Route::Messages);
        exchange.status = 200;
        exchange.outcome = Outcome::Masked;
        exchange.caller = Some(Arc::new(Identity {
            subject: "ci".into(),
            groups: vec!["eng".into()],
            profile: "default".into(),
        }));
        exchange.model = Some("claude-opus-4-8".into());
        exchange.usage = Usage {
            input_tokens: Some(12),
            output_tokens: Some(7),
            ..Usage::default()
        };
        exchange.request_findings = {
            let mut findings = Findings::new();
            findings.push("messages[0].content", token.clone());
            findings
        };
        exchange.response_findings = {
            let mut findings = Findings::new();
            findings.push("content[0]", token);
            findings.push("content[1].input.command", denied.clone());
            findings
        };
        exchange.blocked_tools = vec![ToolBlock::Rule(denied), ToolBlock::Unparseable];
        exchange.upstream_failed(UpstreamError::Read, None);
        metrics.request_finished(&exchange);
        let text = exposition(&metrics);
        let count = |series: &str| value(&text, series).unwrap_or(-1.0);
        assert_eq!(
            count(
                r#"streammask_requests_total{endpoint="messages",outcome="masked",provider="anthropic",status_class="2xx"}"#
            ),
            1.0
        );
        assert_eq!(
            count(
                r#"streammask_requests_total{endpoint="unknown",outcome="error",provider="anthropic",status_class="none"}"#
            ),
            0.0,
            "every series of the fixed label set exists from the start"
        );
        assert_eq!(
            count(
                r#"streammask_findings_total{action="mask",direction="request",rule="test-token"}"#
            ),
            1.0
        );
        assert_eq!(
            count(
                r#"streammask_findings_total{action="mask",direction="response",rule="test-token"}"#
            ),
            1.0
        );
        assert_eq!(
            count(r#"streammask_blocked_tool_calls_total{rule="test-denied"}"#),
            1.0
        );
        assert_eq!(
            count(
                r#"streammask_blocked_tool_calls_total{rule="streammask-unparseable-tool-input"}"#
            ),
            1.0
        );
        assert_eq!(
            count(r#"streammask_upstream_errors_total{kind="read"}"#),
            1.0
        );
        assert_eq!(
            count(r#"streammask_group_requests_total{group="eng"}"#),
            1.0
        );
        assert_eq!(
            count(r#"streammask_tokens_total{group="eng",kind="input",model="claude-opus-4-8"}"#),
            12.0
        );
        assert_eq!(
            count(r#"streammask_tokens_total{group="eng",kind="output",model="claude-opus-4-8"}"#),
            7.0
        );
        // A second proxy in the same process keeps its own counts.
        let other = Metrics::new(&engine, &[]);
        assert_eq!(
            value(
                &exposition(&other),
                r#"streammask_requests_total{endpoint="messages",outcome="masked",provider="anthropic",status_class="2xx"}"#
            ),
            Some(0.0)
        );
    }

    #[test]
    fn a_stream_is_active_while_its_guard_lives() {
        let metrics = Metrics::new(&engine(), &[]);
        let mut guard = StreamGuard::start(Some(&metrics));
        guard.held(300);
        guard.events_masked(3, Duration::from_micros(6));
        let text = exposition(&metrics);
        assert_eq!(value(&text, "streammask_active_streams"), Some(1.0));
        assert_eq!(value(&text, "streammask_held_bytes"), Some(300.0));
        drop(guard);
        let text = exposition(&metrics);
        assert_eq!(value(&text, "streammask_active_streams"), Some(0.0));
        assert_eq!(value(&text, "streammask_held_bytes"), Some(0.0));
        assert_eq!(
            value(&text, "streammask_sse_event_masking_seconds_count"),
            Some(3.0)
        );
        assert_eq!(
            value(&text, "streammask_stream_peak_held_bytes_count"),
            Some(1.0)
        );
    }
}
