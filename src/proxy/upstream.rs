//! The upstream side of an exchange: resolving the API host, building the upstream request
//! (end-to-end headers, the org's key instead of the caller's, `Accept-Encoding: identity`),
//! sending the already-masked body and reading the response header.
//!
//! Invariants:
//! - the host is resolved asynchronously and cached briefly; Pingora's `HttpPeer::new` would
//!   resolve with a blocking call and panic on failure, so a peer is always built from an
//!   address resolved here;
//! - with an upstream key configured, the caller's `Authorization` and `x-api-key` never go
//!   upstream;
//! - every upstream failure is recorded in the exchange as an [`UpstreamError`] (timeouts told
//!   apart) with Pingora's own name for it as the cause, and answered with a 502 that carries no
//!   request content.

use super::metadata::{forwarded_headers, is_credential};
use crate::anthropic::api::{ApiError, ErrorKind};
use crate::config;
use crate::exchange::{Exchange, UpstreamError};
use crate::policy::credentials::UpstreamKey;
use bytes::Bytes;
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::protocols::ALPN;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a resolved upstream address is reused.
const DNS_TTL: Duration = Duration::from_secs(30);
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Resolves the upstream host without blocking a worker thread, caching the answer briefly.
struct Resolver {
    host: String,
    port: u16,
    cached: Mutex<Option<(SocketAddr, Instant)>>,
}

impl Resolver {
    fn new(host: &str, port: u16) -> Resolver {
        Resolver {
            host: host.to_string(),
            port,
            cached: Mutex::new(None),
        }
    }

    async fn resolve(&self) -> Option<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Some(SocketAddr::new(ip, self.port));
        }
        if let Ok(cached) = self.cached.lock() {
            if let Some((addr, at)) = *cached {
                if at.elapsed() < DNS_TTL {
                    return Some(addr);
                }
            }
        }
        let fresh = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next());
        if let (Some(addr), Ok(mut cached)) = (fresh, self.cached.lock()) {
            *cached = Some((addr, Instant::now()));
        }
        fresh
    }
}

/// An upstream response whose header has arrived; its body is still to be read.
pub(super) struct Opened {
    pub session: ClientSession,
    pub header: ResponseHeader,
    pub peer: HttpPeer,
}

/// The Claude API as the proxy reaches it: pooled connections (TLS, HTTP/1.1) to one host.
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
            resolver: Resolver::new(&settings.host, settings.port),
        }
    }

    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.settings.tls, self.settings.host.clone());
        peer.options.connection_timeout =
            Some(Duration::from_millis(self.settings.connect_timeout_ms));
        peer.options.read_timeout = Some(Duration::from_millis(self.settings.read_timeout_ms));
        peer.options.idle_timeout = Some(POOL_IDLE);
        peer.options.alpn = ALPN::H1;
        peer
    }

    /// The most response body bytes read whole (JSON, text) before giving up.
    pub fn max_response_bytes(&self) -> usize {
        self.settings.max_response_bytes
    }

    /// The upstream request for the client's: same method, path and query under the upstream
    /// base path, end-to-end headers, the proxy's key when it holds one.
    fn request_header(
        &self,
        session: &Session,
        method: &str,
        body_len: usize,
        key: Option<&UpstreamKey>,
    ) -> Result<RequestHeader, ApiError> {
        let original = session.req_header();
        let path_and_query = original
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let target = format!("{}{}", self.settings.base_path, path_and_query);
        let internal = |_| {
            ApiError::new(
                ErrorKind::Api,
                "streammask: could not build the upstream request",
            )
        };
        let mut request =
            RequestHeader::build(method, target.as_bytes(), Some(original.headers.len() + 4))
                .map_err(internal)?;
        // The headers admission scanned (metadata.rs), the same function picks them here.
        for (name, value) in forwarded_headers(&original.headers) {
            if key.is_some() && is_credential(name) {
                // The caller's credential never goes upstream when the proxy holds the key.
                continue;
            }
            request
                .append_header(name.clone(), value.clone())
                .map_err(internal)?;
        }
        if let Some(value) = key.map(UpstreamKey::header) {
            request
                .insert_header("x-api-key", value)
                .map_err(internal)?;
        }
        request
            .insert_header(header::HOST, self.settings.authority())
            .map_err(internal)?;
        // Ask for identity so every byte can be scanned; a compressed reply is decoded anyway.
        request
            .insert_header(header::ACCEPT_ENCODING, "identity")
            .map_err(internal)?;
        if body_len > 0 || method == "POST" {
            request
                .insert_header(header::CONTENT_LENGTH, body_len.to_string())
                .map_err(internal)?;
        }
        Ok(request)
    }

    /// Send the request with `body` (already masked) and read the response header.
    pub async fn send(
        &self,
        session: &Session,
        exchange: &mut Exchange,
        key: Option<&UpstreamKey>,
        body: Bytes,
    ) -> Result<Opened, ApiError> {
        let request = self.request_header(session, &exchange.method, body.len(), key)?;
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
        let Some(addr) = self.resolver.resolve().await else {
            exchange.upstream_failed(UpstreamError::Resolve, None);
            return Err(unavailable("the upstream host does not resolve"));
        };
        let peer = self.peer(addr);
        let (mut upstream, _reused) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| failed(exchange, UpstreamError::Connect, e))?;
        // The connector does not apply the peer's timeouts to the session; without them a
        // silent upstream would hold the client forever.
        let timeout = Duration::from_millis(self.settings.read_timeout_ms);
        upstream.set_read_timeout(Some(timeout));
        upstream.set_write_timeout(Some(timeout));
        upstream
            .write_request_header(Box::new(request))
            .await
            .map_err(|e| failed(exchange, UpstreamError::Send, e))?;
        if !body.is_empty() {
            upstream
                .write_request_body(body, true)
                .await
                .map_err(|e| failed(exchange, UpstreamError::Send, e))?;
        }
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
        let Some(header) = upstream.response_header().cloned() else {
            exchange.upstream_failed(UpstreamError::Read, None);
            return Err(unavailable("no response header"));
        };
        Ok(Opened {
            session: upstream,
            header,
            peer,
        })
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
