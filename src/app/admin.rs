//! The admin listener: `/healthz` (the process is up), `/readyz` (it takes traffic),
//! `/metrics` (Prometheus), and the approvals console and API ([`super::console`]).
//!
//! Invariants:
//! - the listener is bound at start-up, so a taken address fails start-up, not the first probe;
//! - it keeps answering while the proxy drains after SIGTERM (Pingora's own listeners stop
//!   accepting at once): `/readyz` then answers 503 `draining`, so a load balancer stops
//!   sending work, and `/metrics` still shows the streams finishing;
//! - one request per connection, read with a deadline and Pingora's HTTP/1 parser, its body
//!   capped at [`MAX_BODY_BYTES`], so a slow or broken client holds nothing for long.

use super::console::{AdminRequest, Console, Reply};
use crate::observe::metrics::Metrics;
use crate::proxy::ProxyState;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// The largest admin request body (sign-in forms, decisions).
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// How often the pending-approvals gauge is refreshed from the store.
const PENDING_REFRESH: Duration = Duration::from_secs(5);

/// The admin listener, bound and waiting for the server to start it.
pub struct Admin {
    listener: Mutex<Option<std::net::TcpListener>>,
    state: Arc<AdminState>,
}

/// What the admin endpoints report.
struct AdminState {
    metrics: Option<Arc<Metrics>>,
    rules_loaded: usize,
    ready: AtomicBool,
    console: Option<Console>,
}

impl Admin {
    /// Bind `addr` now; serving starts with the server.
    /// `key_material` is the placeholder key's (console sessions are sealed under a key
    /// derived from it).
    pub fn bind(
        addr: SocketAddr,
        state: Arc<ProxyState>,
        rules_loaded: usize,
        key_material: Option<&[u8]>,
    ) -> std::io::Result<Admin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Admin {
            listener: Mutex::new(Some(listener)),
            state: Arc::new(AdminState {
                metrics: state.metrics.clone(),
                rules_loaded,
                ready: AtomicBool::new(true),
                console: Console::new(state, key_material),
            }),
        })
    }
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = listener.and_then(|l| tokio::net::TcpListener::from_std(l).ok())
        else {
            tracing::error!("admin listener unavailable");
            return;
        };
        let refresher = Arc::clone(&self.state);
        tokio::spawn(async move { refresher.refresh_pending().await });
        let mut draining = false;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let state = Arc::clone(&self.state);
                        tokio::spawn(async move { state.serve(stream).await });
                    }
                    Err(error) => {
                        // Out of descriptors, most likely: back off instead of spinning.
                        tracing::warn!(%error, "admin listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                // Once the server drains, stop watching and keep serving until the runtime
                // ends.
                changed = shutdown.changed(), if !draining => {
                    if changed.is_err() || *shutdown.borrow() {
                        draining = true;
                        self.state.ready.store(false, Ordering::Relaxed);
                        tracing::info!("draining: /readyz now answers 503");
                    }
                }
            }
        }
    }
}

impl AdminState {
    /// Keep `streammask_approvals_pending` current: the store is the truth (another replica
    /// may have decided), so it is read rather than counted.
    async fn refresh_pending(&self) {
        let (Some(console), Some(metrics)) = (&self.console, &self.metrics) else {
            return;
        };
        loop {
            if let Ok(all) = console.approvals().list().await {
                let now = crate::policy::store::now_ms();
                let pending = all
                    .iter()
                    .filter(|a| a.state_at(now) == crate::policy::approvals::State::Pending)
                    .count();
                metrics.set_approvals_pending(pending);
            }
            tokio::time::sleep(PENDING_REFRESH).await;
        }
    }

    async fn serve(&self, stream: tokio::net::TcpStream) {
        let stream = pingora::protocols::l4::stream::Stream::from(stream);
        let mut session = ServerSession::new_http1(Box::new(stream));
        let read = match tokio::time::timeout(REQUEST_DEADLINE, read(&mut session)).await {
            Ok(Some(read)) => read,
            _ => return,
        };
        let reply = match read {
            Err(refused) => refused,
            Ok(request) => {
                let console = match &self.console {
                    Some(console) => console.handle(&request).await,
                    None => None,
                };
                console.unwrap_or_else(|| {
                    let (status, content_type, body) = self.respond(&request.path);
                    Reply {
                        status,
                        content_type,
                        headers: Vec::new(),
                        body,
                    }
                })
            }
        };
        let Reply {
            status,
            content_type,
            headers,
            body,
        } = reply;
        session.set_keepalive(None);
        let Ok(mut header) = ResponseHeader::build(status, Some(4 + headers.len())) else {
            return;
        };
        let _ = header.insert_header("content-type", content_type);
        let _ = header.insert_header("content-length", body.len().to_string());
        for (name, value) in headers {
            let _ = header.insert_header(name, value);
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Bytes::from(body), true).await;
            let _ = session.finish().await;
        }
    }

    fn respond(&self, path: &str) -> (u16, &'static str, Vec<u8>) {
        if path == "/" && self.console.is_some() {
            return (
                200,
                "text/plain; charset=utf-8",
                b"streammask admin: /healthz /readyz /metrics /approvals /api/approvals\n".to_vec(),
            );
        }
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/healthz" => (200, TEXT, b"ok\n".to_vec()),
            "/readyz" if self.ready.load(Ordering::Relaxed) => (
                200,
                TEXT,
                format!("ready: {} rules loaded\n", self.rules_loaded).into_bytes(),
            ),
            "/readyz" => (503, TEXT, b"draining\n".to_vec()),
            "/metrics" => match &self.metrics {
                Some(metrics) => (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render(),
                ),
                None => (
                    404,
                    TEXT,
                    b"metrics are disabled (metrics.enabled = false)\n".to_vec(),
                ),
            },
            _ => (404, TEXT, b"not found\n".to_vec()),
        }
    }
}

/// The request on `session`, its body read whole; a body past [`MAX_BODY_BYTES`] gets a 413.
/// `None` when no request could be read at all.
async fn read(session: &mut ServerSession) -> Option<Result<AdminRequest, Reply>> {
    if !matches!(session.read_request().await, Ok(true)) {
        return None;
    }
    let header = session.req_header();
    let method = header.method.as_str().to_string();
    let path = header.uri.path().to_string();
    let query = header.uri.query().unwrap_or("").to_string();
    let headers = header.headers.clone();
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Some(Err(Reply::text(
                413,
                format!("request body over {MAX_BODY_BYTES} bytes\n"),
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Some(Ok(AdminRequest {
        method,
        path,
        query,
        headers,
        body,
    }))
}
