//! The Pingora proxy: one request, start to finish, in Pingora's phases.
//!
//! - `request_filter` does the whole exchange: [`admit`] (route, caller, body, decision), then
//!   [`upstream`] (send the masked body, read the response header), then [`stream`] (relay
//!   the response, masking its body);
//! - `logging` hands the finished [`Exchange`] to observability: the log line, then metrics,
//!   then the audit record.
//! - thinking masked for the client is kept in the thinking vault by [`stream`] and put back by
//!   [`admit`] when its signed block returns ([`ProxyState::thinking_vault`]).
//! - placeholders are given back to the caller who sent their secrets: [`restore`] learns and
//!   recalls them after [`admit`] masked the request, [`stream`] restores them in the response.
//!
//! Why forwarding happens in `request_filter` and not in Pingora's later phases: once
//! `request_filter` has read the body, Pingora 0.9 can only replay it to the upstream from its
//! retry buffer, which is capped at 64 KiB; Claude Code requests are routinely larger. So
//! streammask forwards through Pingora's own upstream connector (pooling, TLS, HTTP/1.1 and
//! HTTP/2) from this phase and drives the response itself, which also lets it hold SSE bytes
//! back and flush them later.
//!
//! Layer: the top of the request path. It may import every layer below `app`; its per-request
//! context is private, and what observability reads is the [`Exchange`], never a Pingora type.
//!
//! Invariants:
//! - every decision is made before any connection to the upstream, and nothing unscanned
//!   reaches either side (see [`admit`] and [`stream`]);
//! - no error message carries request or response content.

mod admit;
mod approve;
pub mod drain;
pub mod encoding;
mod headers;
mod masking_pool;
mod metadata;
mod open_requests;
mod provider;
pub use metadata::percent_decode;
mod response_headers;
pub mod restore;
mod stream;
pub mod tls;
mod upstream;

use crate::anthropic::api::{ApiError, ErrorKind};
use crate::anthropic::restore::RestoreMap;
use crate::anthropic::thinking_vault::Vault;
use crate::config::Config;
use crate::engine::Engine;
use crate::exchange::{Exchange, Outcome};
use crate::observe::audit::Auditor;
use crate::observe::metrics::Metrics;
use crate::policy::profiles::Profile;
use crate::policy::Security;
use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use upstream::Upstream;

/// Everything requests share: one snapshot, built at start-up from the validated config and
/// replaced as a whole by a reload ([`ProxyState::reloaded`]). A request takes the current
/// snapshot when it starts and keeps it to its last phase, so a stream in flight finishes on
/// the rules it started with.
pub struct ProxyState {
    pub config: Config,
    /// The engine of the rule set as loaded (the `default` profile's unless it changes rules).
    pub engine: Arc<Engine>,
    pub security: Security,
    /// `None` when `metrics.enabled = false`.
    pub metrics: Option<Arc<Metrics>>,
    /// `None` when `audit.sink = "off"`.
    pub auditor: Option<Auditor>,
    /// Originals of thinking masked for clients (`None` when `thinking = "mask"`).
    pub thinking_vault: Option<Arc<dyn Vault>>,
    /// Placeholders given back to their owner (`None` when `[restore] enabled = false`).
    pub restore: Option<restore::Restore>,
    /// Human approval of `approve` findings (`None` only in tests that build a bare state:
    /// requests with approve findings are then refused).
    pub approvals: Option<Arc<crate::policy::approvals::Approvals>>,
    upstream: Arc<Upstream>,
    /// The first-party API and the clouds ([`provider`]): routes, upstream credentials,
    /// framing.
    providers: Arc<provider::Providers>,
    /// The workers that mask large request bodies off the event loop
    /// (`[masking] offload_threads`, see [`admit`] and [`masking_pool`]).
    masking_pool: Arc<masking_pool::MaskingPool>,
    /// `[server] max_connections`; shared by every snapshot, so a reload neither resets the
    /// count nor lets it exceed the limit.
    open_requests: Arc<open_requests::OpenRequests>,
    /// Where a graceful shutdown is ([`drain`]).
    pub drain: drain::Drain,
}

/// The current snapshot, swapped whole by a reload.
pub type LiveState = arc_swap::ArcSwap<ProxyState>;

impl ProxyState {
    /// `config.upstream.ca_file` must have been checked ([`crate::policy::trust::check_ca_file`]):
    /// Pingora's connector panics on an unreadable CA bundle.
    pub fn new(
        config: Config,
        engine: Arc<Engine>,
        security: Security,
        metrics: Option<Arc<Metrics>>,
        auditor: Option<Auditor>,
        thinking_vault: Option<Arc<dyn Vault>>,
    ) -> ProxyState {
        let upstream = Arc::new(Upstream::new(&config.upstream));
        let providers = Arc::new(provider::Providers::new(&config));
        let masking_pool = Arc::new(masking_pool::MaskingPool::start(config.offload_threads));
        let open_requests = Arc::new(open_requests::OpenRequests::new(config.max_connections));
        ProxyState {
            drain: drain::Drain::default(),
            masking_pool,
            open_requests,
            config,
            engine,
            security,
            metrics,
            auditor,
            thinking_vault,
            restore: None,
            approvals: None,
            upstream,
            providers,
        }
    }

    /// Approvals (`[approvals]`).
    pub fn with_approvals(
        mut self,
        approvals: Option<Arc<crate::policy::approvals::Approvals>>,
    ) -> ProxyState {
        self.approvals = approvals;
        self
    }

    /// Turn restore on with `restore` (`[restore]`).
    pub fn with_restore(mut self, restore: Option<restore::Restore>) -> ProxyState {
        self.restore = restore;
        self
    }

    /// The snapshot a reload makes: `config`, `engine` and `security` replace this one's;
    /// what lives across reloads (metrics, audit writer, vaults, approvals, the masking pool,
    /// the open-request count, the drain) is shared, and so is the upstream connection pool
    /// unless `[upstream]` changed. Settings that only a restart can change are the
    /// reloader's to refuse, not this function's.
    pub fn reloaded(&self, config: Config, engine: Arc<Engine>, security: Security) -> ProxyState {
        let upstream = if format!("{:?}", config.upstream) == format!("{:?}", self.config.upstream)
        {
            Arc::clone(&self.upstream)
        } else {
            Arc::new(Upstream::new(&config.upstream))
        };
        let providers = Arc::new(self.providers.reloaded(&config));
        let restore = self.restore.clone().map(|restore| restore::Restore {
            // Whether owners are known follows `[auth]`, which a reload may change.
            owners_known: config.auth.enabled(),
            ..restore
        });
        ProxyState {
            config,
            engine,
            security,
            restore,
            metrics: self.metrics.clone(),
            auditor: self.auditor.clone(),
            thinking_vault: self.thinking_vault.clone(),
            approvals: self.approvals.clone(),
            upstream,
            providers,
            masking_pool: Arc::clone(&self.masking_pool),
            open_requests: Arc::clone(&self.open_requests),
            drain: self.drain.clone(),
        }
    }

    /// Requests being served now, all snapshots together.
    pub fn open_requests(&self) -> usize {
        self.open_requests.open()
    }

    fn transcript_limit(&self) -> usize {
        self.auditor.as_ref().map_or(0, Auditor::transcript_limit)
    }
}

/// Per-request state, private to the proxy: the snapshot the request runs on, the exchange
/// record and the caller's profile.
pub struct RequestCtx {
    state: Arc<ProxyState>,
    /// Held from the first phase to the end of `logging`, so a drain waiting for open
    /// requests also waits for their audit records.
    slot: Option<open_requests::Slot>,
    /// Boxed: Pingora keeps this context in its request future (in more than one copy), for
    /// as long as a stream is open.
    exchange: Box<Exchange>,
    /// The caller's policy profile (its engine masks this request and its response).
    profile: Option<Arc<Profile>>,
    /// The caller's placeholders to give back in the response ([`restore`]).
    restore: Option<Arc<RestoreMap>>,
    /// The profile's engine plus the secrets the request's scan masked, once it found any:
    /// it masks their bare repeats in the response too.
    exchange_engine: Option<Arc<Engine>>,
}

impl RequestCtx {
    /// The engine of this exchange: the profile's (the base engine before the caller is
    /// known), knowing the request's secrets once it has been scanned.
    fn engine(&self, state: &ProxyState) -> Arc<Engine> {
        if let Some(engine) = &self.exchange_engine {
            return Arc::clone(engine);
        }
        Arc::clone(self.profile.as_ref().map_or(&state.engine, |p| &p.engine))
    }
}

pub struct Proxy {
    live: Arc<LiveState>,
}

impl Proxy {
    pub fn new(live: Arc<LiveState>) -> Proxy {
        Proxy { live }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ApiError> {
        let state = Arc::clone(&ctx.state);
        let state = &*state;
        // Held until logging is done: a stream counts for as long as it is open.
        ctx.slot = state.open_requests.try_acquire();
        if ctx.slot.is_none() {
            return Err(ApiError::new(
                ErrorKind::Overloaded,
                "streammask: this proxy is serving as many requests as server.max_connections \
                 allows; retry shortly",
            )
            .with_status(503));
        }
        // Until the response starts, the shutdown deadline answers the request with a 503
        // (an approval wait or a slow upstream header would otherwise outlive the process).
        // Boxed: its state (the request's scan, the upstream connect) is freed when the
        // response starts instead of staying in this future for the life of a stream.
        let opening = Box::pin(async {
            let admitted = admit::admit(state, session, ctx).await?;
            let body = Bytes::from(admitted.body);
            if ctx.exchange.keep_transcripts && !body.is_empty() {
                ctx.exchange.request_transcript = Some(body.clone());
            }
            let key = state.security.upstream_key.as_deref();
            // Kept (a reference count, not a copy) so the relay can tell what the request
            // asked for (`stream: true`) when the response's label does not say.
            let request_body = body.clone();
            let outbound = state
                .providers
                .outbound(
                    &admitted.routed,
                    &state.config,
                    key,
                    session.req_header(),
                    &body,
                )
                .await?;
            let opened = state
                .upstream
                .send(&mut ctx.exchange, outbound, body)
                .await?;
            Ok::<_, ApiError>((admitted.routed, opened, request_body))
        });
        let (routed, opened, request_body) = tokio::select! {
            opened = opening => opened?,
            () = state.drain.reached(drain::DrainPhase::Deadline) => {
                return Err(shutting_down().with_status(503));
            }
        };
        stream::relay(state, session, ctx, &routed, opened, &request_body).await
    }
}

/// What a request still open at the shutdown deadline is told (clients retry it).
fn shutting_down() -> ApiError {
    ApiError::new(
        ErrorKind::Overloaded,
        "streammask: this proxy instance is shutting down; retry the request",
    )
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a (disabled) response-compression module
    /// whose filter would still run on every body write; streammask never compresses what it
    /// writes (a client asking for gzip gets an identity-encoded response).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        let state = self.live.load_full();
        let keep_transcripts = state
            .auditor
            .as_ref()
            .is_some_and(Auditor::keeps_transcripts);
        RequestCtx {
            state,
            slot: None,
            exchange: Box::new(Exchange::new(keep_transcripts)),
            profile: None,
            restore: None,
            exchange_engine: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let span = tracing::info_span!("request", request_id = %ctx.exchange.request_id);
        let handled = CatchUnwind(Box::pin(tracing::Instrument::instrument(
            self.handle(session, ctx),
            span,
        )))
        .await;
        let result = match handled {
            Ok(result) => result,
            Err(_) => {
                // The payload is not logged: a panic message is no place to trust with
                // request content.
                ctx.exchange.panicked = true;
                tracing::error!(request_id = %ctx.exchange.request_id, "request handling panicked");
                if session.response_written().is_some() {
                    // The client has a header already: all that can be done is to end it.
                    ctx.exchange.outcome = Outcome::Error;
                    return Ok(true);
                }
                Err(ApiError::new(
                    ErrorKind::Api,
                    "streammask: internal error while handling the request",
                )
                .with_status(502))
            }
        };
        if let Err(error) = result {
            // A refusal because of a finding is a block whatever its status (a finding where no
            // placeholder fits is a 400).
            ctx.exchange.outcome = if ctx.exchange.outcome == Outcome::Approval {
                Outcome::Approval
            } else if error.kind == ErrorKind::Permission || ctx.exchange.blocked_rule.is_some() {
                Outcome::Blocked
            } else {
                Outcome::Error
            };
            // Boxed: inline, its state would be part of this phase's future, which Pingora
            // keeps for as long as a stream is open.
            Box::pin(respond_error(session, &mut ctx.exchange, &error)).await;
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        // Every request is answered in request_filter; reaching this phase is a bug.
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "streammask forwards from request_filter",
        ))
    }

    async fn logging(
        &self,
        _session: &mut Session,
        _error: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        let exchange = &mut ctx.exchange;
        crate::observe::log::request_finished(exchange);
        let state = Arc::clone(&ctx.state);
        if let Some(metrics) = &state.metrics {
            metrics.request_finished(exchange);
        }
        if let Some(auditor) = &state.auditor {
            // Findings carry rule indices of the engine that produced them: the caller's
            // profile's.
            let engine = ctx.profile.as_ref().map_or(&state.engine, |p| &p.engine);
            auditor.record(&mut ctx.exchange, engine);
        }
        ctx.slot = None;
    }
}

/// A future whose panic is caught and returned, so a bug on the request path ends in a 502
/// (and a metric) rather than a dropped connection.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// The response header that carries the exchange's id (`smreq_…`) to the client.
pub(crate) const REQUEST_ID_HEADER: &str = "x-streammask-request-id";

async fn respond_error(session: &mut Session, exchange: &mut Exchange, error: &ApiError) {
    let body = error.body();
    exchange.status = error.status;
    exchange.bytes_out += body.len();
    let Ok(mut header) = ResponseHeader::build(error.status, Some(4)) else {
        return;
    };
    let _ = header.insert_header(header::CONTENT_TYPE, "application/json");
    let _ = header.insert_header(header::CONTENT_LENGTH, body.len().to_string());
    let _ = header.insert_header(REQUEST_ID_HEADER, exchange.request_id.as_str());
    for (name, value) in &error.headers {
        let _ = header.insert_header(*name, value.as_str());
    }
    if error.status == 413 || error.status == 400 || exchange.auth_failure.is_some() {
        // The rest of the request body may still be on the wire: do not reuse the connection.
        session.set_keepalive(None);
    }
    let _ = session
        .write_response_header_with_body(Box::new(header), Some(Bytes::from(body)), true)
        .await;
}

#[cfg(test)]
mod tests {
    use super::CatchUnwind;

    #[tokio::test]
    async fn a_panicking_future_is_caught_and_a_finishing_one_passes_through() {
        let panicking = CatchUnwind(Box::pin(async {
            tokio::task::yield_now().await;
            let empty: Vec<u8> = Vec::new();
            empty
                .iter()
                .max()
                .copied()
                .expect("a bug on the request path")
        }));
        assert!(panicking.await.is_err());
        let fine = CatchUnwind(Box::pin(async { 7 }));
        assert_eq!(fine.await.ok(), Some(7));
    }
}
