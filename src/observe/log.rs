//! The log: one line per request when it is over, plus start-up of the `tracing` subscriber.
//!
//! Invariants: the request line is built from the [`Exchange`] only, and carries ids, labels,
//! counts and rule ids — never request or response text, a credential or a secret. Lines
//! logged while a request is handled carry its `request_id` (the proxy's `request` span).

use crate::exchange::Exchange;

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

/// The cloud credential libraries' own logs are off unless `RUST_LOG` asks for them: their
/// debug forms print raw responses of token and metadata endpoints (credentials included) and
/// access key ids. streammask logs their failures itself, as error messages only
/// (`crate::policy::aws`, `crate::policy::google`).
const DEFAULT_FILTER: &str = "info,aws_config=off,aws_runtime=off,aws_smithy_runtime=off,\
    aws_smithy_http_client=off,aws_sdk_sts=off,aws_sdk_sso=off,aws_sdk_ssooidc=off,\
    aws_credential_types=off,aws_sigv4=off,gcp_auth=off";

/// Logs go to stderr through `tracing`; `RUST_LOG` filters (default [`DEFAULT_FILTER`]).
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A subscriber installed earlier (a test harness) keeps its place.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The request's log line.
pub fn request_finished(exchange: &Exchange) {
    let rules: Vec<&str> = exchange
        .request_findings
        .iter()
        .chain(exchange.response_findings.iter())
        .map(|f| f.finding.rule_id.as_str())
        .collect();
    let caller = exchange.caller.as_deref();
    let upstream_error = exchange
        .upstream_error
        .map_or("", |failure| failure.cause.unwrap_or(failure.kind.label()));
    tracing::info!(
        request_id = %exchange.request_id,
        endpoint = exchange.route.map_or("unknown", |r| r.label()),
        status = exchange.status,
        outcome = exchange.outcome.label(),
        request_findings = exchange.request_findings.len(),
        response_findings = exchange.response_findings.len(),
        rules = ?rules,
        blocked_rule = exchange.blocked_rule.as_deref().unwrap_or(""),
        tools_blocked = exchange.blocked_tools.len(),
        late_matches = exchange.late_matches,
        subject = caller.map_or("", |c| c.subject.as_str()),
        profile = caller.map_or("", |c| c.profile.as_str()),
        auth_failure = exchange.auth_failure.map_or("", |r| r.label()),
        upstream_error,
        duration_ms = exchange.started.elapsed().as_millis() as u64,
        "request"
    );
}
