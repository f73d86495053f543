//! The record of one request: who called, which route, what was found in each direction, what
//! the proxy decided, what the upstream answered or how it failed, token usage and timings.
//!
//! The proxy fills an [`Exchange`] as the request goes; when it is over, observability (log
//! line, metrics, audit record) reads it. Nothing here knows Pingora: the proxy translates its
//! errors into [`UpstreamError`] before they are recorded, so observability never sees a
//! Pingora type.
//!
//! Layer: above `engine`, `anthropic` and `policy` (its fields are their types); below
//! `observe`, which reads it. Invariant: an exchange holds no secret text — findings carry rule
//! ids and placeholders, transcripts are the masked bytes as forwarded and sent.

use crate::anthropic::api::{Provider, Route};
use crate::anthropic::restore::RestoreEvent;
use crate::anthropic::tools::ToolBlock;
use crate::anthropic::transcript::ResponseTranscript;
use crate::anthropic::usage::Usage;
use crate::engine::Findings;
use crate::policy::auth::AuthFailure;
use crate::policy::identity::Identity;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the proxy decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Forwarded unchanged (whatever the upstream then answered).
    #[default]
    Allowed,
    /// Forwarded with findings replaced by placeholders.
    Masked,
    /// Refused by a `block` rule (or by policy) before anything went upstream.
    Blocked,
    /// Not forwarded for want of a human approval (`approve` rules): pending, denied, or the
    /// approvals store unavailable. An approved request is `Allowed` or `Masked`.
    Approval,
    /// The proxy answered with its own error.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Masked,
        Outcome::Blocked,
        Outcome::Approval,
        Outcome::Error,
    ];

    /// Bounded label value for metrics, logs and audit (`decision`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Masked => "masked",
            Outcome::Blocked => "blocked",
            Outcome::Approval => "approval",
            Outcome::Error => "error",
        }
    }
}

/// Which way text was going when a rule found something in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the model.
    Request,
    /// From the model to the client.
    Response,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Request, Direction::Response];

    pub fn label(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

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
    pub const ALL: [UpstreamError; 8] = [
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
}

/// An upstream failure: its kind, and for the log the transport's own name for what happened
/// (`TLSHandshakeFailure`, `ConnectRefused`), when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamFailure {
    pub kind: UpstreamError,
    pub cause: Option<&'static str>,
}

/// Everything known about one request.
#[derive(Debug)]
pub struct Exchange {
    /// `smreq_…`, also sent to the client as `x-streammask-request-id`.
    pub request_id: String,
    pub started: Instant,
    pub method: String,
    /// `None` for a request no route took (answered 404).
    pub route: Option<Route>,
    /// Which API surface the request came through (the first-party API until routed).
    pub provider: Provider,
    /// The `x-claude-code-session-id` header, when it is a plausible id.
    pub session_id: Option<String>,
    /// Set once the caller is authenticated (anonymous when authentication is off).
    pub caller: Option<Arc<Identity>>,
    /// Why authentication or authorisation refused the request.
    pub auth_failure: Option<AuthFailure>,
    /// The top-level `model` of the request body, as the client sent it.
    pub model: Option<String>,
    /// Whether the response was streamed (SSE or JSON Lines).
    pub streamed: bool,
    /// The status the client got (0 until a response was written).
    pub status: u16,
    pub outcome: Outcome,
    pub request_findings: Findings,
    pub response_findings: Findings,
    /// The rule that refused the request, when one did.
    pub blocked_rule: Option<String>,
    /// Tool calls of the response replaced by a text block.
    pub blocked_tools: Vec<ToolBlock>,
    /// Secrets whose start had already been sent when they were recognised (should stay 0).
    pub late_matches: u64,
    /// Whether handling the request panicked (the client got a 502, or its stream was cut).
    pub panicked: bool,
    /// Whether the stream was still open at the shutdown deadline and ended with an
    /// `overloaded_error` event.
    pub shutdown_cut: bool,
    /// Whether masking the request body ran out of its time budget (answered 422).
    pub over_budget: bool,
    /// A large request body found no masking worker within its budget (answered 529).
    pub masking_pool_busy: bool,
    /// The first thing that went wrong with the upstream, if anything did.
    pub upstream_error: Option<UpstreamFailure>,
    pub usage: Usage,
    /// Bytes the client sent (the body as received) and received.
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub upstream_ttfb: Option<Duration>,
    /// Time spent masking the request and the response.
    pub masking: Duration,
    /// Whether transcripts are kept for the audit log.
    pub keep_transcripts: bool,
    /// The request body as forwarded upstream (kept only with `keep_transcripts`).
    pub request_transcript: Option<Bytes>,
    pub response_transcript: Option<ResponseTranscript>,
    /// Placeholders met in the response where restore applies: restored or not, and why.
    pub restore_events: Vec<RestoreEvent>,
    /// The restore vault failed for this request (it then restored only what it carried).
    pub restore_store_failed: bool,
    /// The approvals whose grants let this request go upstream (`approve` findings).
    pub approvals_used: Vec<String>,
    /// The approvals store did not answer for this request (refused with a 503).
    pub approval_store_failed: bool,
}

impl Exchange {
    pub fn new(keep_transcripts: bool) -> Exchange {
        Exchange {
            request_id: new_request_id(),
            started: Instant::now(),
            method: String::new(),
            route: None,
            provider: Provider::Anthropic,
            session_id: None,
            caller: None,
            auth_failure: None,
            model: None,
            streamed: false,
            status: 0,
            outcome: Outcome::Allowed,
            request_findings: Findings::new(),
            response_findings: Findings::new(),
            blocked_rule: None,
            blocked_tools: Vec::new(),
            late_matches: 0,
            panicked: false,
            shutdown_cut: false,
            over_budget: false,
            masking_pool_busy: false,
            upstream_error: None,
            usage: Usage::default(),
            bytes_in: 0,
            bytes_out: 0,
            upstream_ttfb: None,
            restore_events: Vec::new(),
            restore_store_failed: false,
            approvals_used: Vec::new(),
            approval_store_failed: false,
            masking: Duration::ZERO,
            keep_transcripts,
            request_transcript: None,
            response_transcript: None,
        }
    }

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

    /// Record an upstream failure; the first one is the cause, later ones are its effects.
    pub fn upstream_failed(&mut self, kind: UpstreamError, cause: Option<&'static str>) {
        self.upstream_error
            .get_or_insert(UpstreamFailure { kind, cause });
    }

    /// Record the upstream's status: 429 and 5xx count as upstream errors.
    pub fn upstream_status(&mut self, status: u16) {
        self.status = status;
        if status == 429 {
            self.upstream_failed(UpstreamError::Status429, None);
        } else if status >= 500 {
            self.upstream_failed(UpstreamError::Status5xx, None);
        }
    }

    /// The findings of one direction.
    pub fn findings(&self, direction: Direction) -> &Findings {
        match direction {
            Direction::Request => &self.request_findings,
            Direction::Response => &self.response_findings,
        }
    }
}

/// `smreq_` and 24 random lower-case hex digits, written by hand: `format!`'s hex took ~1 k
/// instructions, a few per cent of a short streamed request.
fn new_request_id() -> String {
    const PREFIX: &str = "smreq_";
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = (u128::from(rand::random::<u64>()) << 32) | u128::from(rand::random::<u32>());
    let mut id = String::with_capacity(PREFIX.len() + 24);
    id.push_str(PREFIX);
    for digit in (0..24).rev() {
        id.push(char::from(HEX[(random >> (digit * 4)) as usize & 0xf]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_and_24_hex_digits_and_differ() {
        let ids: Vec<String> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            let digits = id.strip_prefix("smreq_").expect("the prefix");
            assert_eq!(digits.len(), 24, "{id}");
            assert!(
                digits
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position takes more than one value: none is left unwritten.
        for position in 6..30 {
            let values: std::collections::HashSet<u8> =
                ids.iter().map(|id| id.as_bytes()[position]).collect();
            assert!(values.len() > 1, "position {position}");
        }
    }

    #[test]
    fn session_ids_are_ids_or_nothing() {
        let mut exchange = Exchange::new(false);
        exchange.set_session_id(Some("3f2a-9c1b_x:y.z"));
        assert_eq!(exchange.session_id.as_deref(), Some("3f2a-9c1b_x:y.z"));
        for not_an_id in ["", "has space", "ghp_x\"", &"a".repeat(129)] {
            exchange.set_session_id(Some(not_an_id));
            assert_eq!(exchange.session_id, None, "{not_an_id:?}");
        }
    }

    #[test]
    fn the_first_upstream_failure_is_the_cause() {
        let mut exchange = Exchange::new(false);
        exchange.upstream_failed(UpstreamError::Connect, Some("ConnectRefused"));
        exchange.upstream_status(503);
        assert_eq!(
            exchange.upstream_error,
            Some(UpstreamFailure {
                kind: UpstreamError::Connect,
                cause: Some("ConnectRefused")
            })
        );
        assert_eq!(exchange.status, 503);
    }
}
