//! The upstream side of an exchange: resolving the host, sending the request a provider built
//! ([`super::provider`]) with the already-masked body, and reading the response header.
//!
//! Invariants:
//! - the host is resolved asynchronously and cached briefly; Pingora's `HttpPeer::new` would
//!   resolve with a blocking call and panic on failure, so a peer is always built from an
//!   address resolved here;
//! - every upstream failure is recorded in the exchange as an [`UpstreamError`] (timeouts told
//!   apart) with Pingora's own name for it as the cause, and answered with a 502 that carries no
//!   request content.

use super::provider::Outbound;
use crate::anthropic::api::{ApiError, ErrorKind};
use crate::config::{self, Endpoint};
use crate::exchange::{Exchange, UpstreamError};
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a resolved upstream address is reused.
const DNS_TTL: Duration = Duration::from_secs(30);
/// The most upstream hosts whose address is remembered at once.
const MAX_CACHED_HOSTS: usize = 64;
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Resolves upstream hosts without blocking a worker thread, caching each answer briefly.
#[derive(Default)]
struct Resolver {
    cached: Mutex<HashMap<(String, u16), (SocketAddr, Instant)>>,
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> Option<SocketAddr> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Some(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        if let Ok(cached) = self.cached.lock() {
            if let Some((addr, at)) = cached.get(&key) {
                if at.elapsed() < DNS_TTL {
                    return Some(*addr);
                }
            }
        }
        let fresh = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next());
        if let (Some(addr), Ok(mut cached)) = (fresh, self.cached.lock()) {
            // Usually a handful of hosts (the API, a region or two per cloud), but a Vertex
            // caller chooses the location and so the host: expired entries are dropped and the
            // cache is capped (past the cap a host is resolved each time, not remembered).
            cached.retain(|_, (_, at)| at.elapsed() < DNS_TTL);
            if cached.len() < MAX_CACHED_HOSTS {
                cached.insert(key, (addr, Instant::now()));
            }
        }
        fresh
    }
}

/// An upstream response whose header has arrived (the session holds it); its body is still
/// to be read.
pub(super) struct Opened {
    pub session: ClientSession,
    pub peer: HttpPeer,
}

/// The upstreams as the proxy reaches them: pooled connections (TLS, HTTP/1.1) to the Claude
/// API and to the cloud providers' hosts, with `[upstream]`'s timeouts and limits.
pub(super) struct Upstream {
    settings: config::Upstream,
    connector: Connector,
    resolver: Resolver,
}

impl Upstream {
    /// `settings.ca_file` must have been checked ([`crate::policy::trust::check_ca_file`]):
    /// Pingora's connector panics on an unreadable CA bundle.
    pub fn new(settings: &config::Upstream) -> Upstream {
        let options = settings.ca_file.as_ref().map(|ca| {
            let mut options = pingora::connectors::ConnectorOptions::new(128);
            options.ca_file = Some(ca.display().to_string());
            options
        });
        Upstream {
            settings: settings.clone(),
            connector: Connector::new(options),
            resolver: Resolver::default(),
        }
    }

    fn peer(&self, addr: SocketAddr, endpoint: &Endpoint) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, endpoint.tls, endpoint.host.clone());
        peer.options.connection_timeout =
            Some(Duration::from_millis(self.settings.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(self.settings.read_timeout_ms));
        peer.options.idle_timeout = Some(POOL_IDLE);
        peer.options.alpn = ALPN::H1;
        peer
    }

    /// The longest the upstream may stay silent while the proxy waits to read from it.
    pub fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.read_timeout_ms)
    }

    /// The most response body bytes read whole (JSON, text) before giving up.
    pub fn max_response_bytes(&self) -> usize {
        self.settings.max_response_bytes
    }

    /// Send `outbound`'s request with `body` (already masked) and read the response header.
    pub async fn send(
        &self,
        exchange: &mut Exchange,
        outbound: Outbound,
        body: Bytes,
    ) -> Result<Box<Opened>, ApiError> {
        let Outbound { endpoint, request } = outbound;
        let opened = Instant::now();
        let failed = |exchange: &mut Exchange, stage: UpstreamError, e: pingora::BError| {
            let cause = e.etype().as_str();
            // The request line records the kind only; the operating system's reason (too many
            // open files, connection refused) is what an SRE needs. Pingora's error names the
            // peer and the cause, never request content.
            tracing::warn!(stage = ?stage, error = %e, "upstream request failed");
            exchange.upstream_failed(classify(stage, &e), Some(cause));
            unavailable(cause)
        };
        let Some(addr) = self.resolver.resolve(&endpoint.host, endpoint.port).await else {
            exchange.upstream_failed(UpstreamError::Resolve, None);
            return Err(unavailable("the upstream host does not resolve"));
        };
        let peer = self.peer(addr, &endpoint);
        let (mut upstream, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| failed(exchange, UpstreamError::Connect, e))?;
        // The connector does not apply the peer's timeouts to the session; without them a
        // silent upstream would hold the client forever.
        let timeout = self.read_timeout();
        upstream.set_read_timeout(Some(timeout));
        upstream.set_write_timeout(Some(timeout));
        // The client's header is built from the names' map (`stream::client_header`), so the
        // case of the upstream's names is never written (a patch in `vendor/pingora-core`).
        upstream.set_response_header_case(false);
        // One write for the header and the body: one `send` and one wake-up of the upstream,
        // not two (a patch in `vendor/pingora-core`).
        if body.is_empty() {
            upstream.write_request_header(Box::new(request)).await
        } else {
            upstream
                .write_request_header_with_body(Box::new(request), body)
                .await
        }
        .map_err(|e| failed(exchange, UpstreamError::Send, e))?;
        upstream
            .finish_request_body()
            .await
            .map_err(|e| failed(exchange, UpstreamError::Send, e))?;
        // Informational answers (`100 Continue`, `103 Early Hints`) may come before the final
        // one: skipped, as HTTP lets a proxy do, since reading a body after one panics inside
        // Pingora. `101` is final here (a protocol switch) and refused by the relay. A bounded
        // number, so an upstream cannot hold the request with an endless run of them.
        let mut informational = 0;
        loop {
            upstream
                .read_response_header()
                .await
                .map_err(|e| failed(exchange, UpstreamError::Read, e))?;
            let status = upstream.response_header().map(|h| h.status.as_u16());
            match status {
                Some(100 | 102..=199) if informational < MAX_INFORMATIONAL => informational += 1,
                Some(100 | 102..=199) => {
                    exchange.upstream_failed(UpstreamError::Read, None);
                    return Err(unavailable("too many informational responses"));
                }
                _ => break,
            }
        }
        exchange.upstream_ttfb = Some(opened.elapsed());
        if upstream.response_header().is_none() {
            exchange.upstream_failed(UpstreamError::Read, None);
            return Err(unavailable("no response header"));
        }
        Ok(Box::new(Opened {
            session: upstream,
            peer,
        }))
    }

    /// Return a connection whose response was read to its end to the pool.
    pub async fn release(&self, session: ClientSession, peer: &HttpPeer) {
        self.connector
            .release_http_session(session, peer, Some(POOL_IDLE))
            .await;
    }
}

/// Informational responses skipped before a final one.
const MAX_INFORMATIONAL: usize = 8;

/// The 502 a client gets when the upstream cannot be reached or fails.
pub(super) fn unavailable(what: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Api,
        format!("streammask: the upstream API is unavailable ({what})"),
    )
    .with_status(502)
}

/// The kind of a Pingora error at a stage of the exchange: timeouts are told apart.
fn classify(stage: UpstreamError, error: &pingora::Error) -> UpstreamError {
    if error.etype().as_str().ends_with("Timedout") {
        UpstreamError::Timeout
    } else {
        stage
    }
}
