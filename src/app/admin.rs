//! The admin listener: `/healthz` (the process is up), `/readyz` (it takes traffic),
//! `/metrics` (Prometheus), `POST /admin/reload` ([`super::reload`]), and the approvals
//! console and API ([`super::console`]).
//!
//! Invariants:
//! - the listener is bound at start-up, so a taken address fails start-up, not the first probe
//!   (it is bound with `SO_REUSEPORT`, so a graceful upgrade's new process can bind it while
//!   the old one drains);
//! - it keeps answering while the proxy drains after SIGTERM: `/readyz` answers 503
//!   `draining` from the signal on, so a load balancer stops sending work, and `/metrics`
//!   still shows the streams finishing;
//! - `POST /admin/reload` answers only a caller with the admin token or in an admin group;
//!   the compile runs on a blocking thread, never on this listener's event loop;
//! - one request per connection, read with a deadline and Pingora's HTTP/1 parser, its body
//!   capped at [`MAX_BODY_BYTES`], so a slow or broken client holds nothing for long.

use super::console::{AdminRequest, Console, Reply};
use super::reload::{Reloader, Trigger};
use crate::observe::metrics::Metrics;
use crate::policy::credentials::KeySource;
use crate::proxy::drain::DrainPhase;
use crate::proxy::{LiveState, ProxyState};
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
    live: Arc<LiveState>,
    reloader: Arc<Reloader>,
    ready: AtomicBool,
    console: Option<Console>,
}

impl Admin {
    /// Bind `addr` now; serving starts with the server.
    /// `key_material` is the placeholder key's (console sessions are sealed under a key
    /// derived from it).
    pub fn bind(
        addr: SocketAddr,
        live: Arc<LiveState>,
        reloader: Arc<Reloader>,
        key_material: Option<&[u8]>,
    ) -> std::io::Result<Admin> {
        let listener = bind_shared(addr)?;
        let metrics = live.load().metrics.clone();
        Ok(Admin {
            listener: Mutex::new(Some(listener)),
            state: Arc::new(AdminState {
                metrics,
                console: Console::new(Arc::clone(&live), key_material),
                live,
                reloader,
                ready: AtomicBool::new(true),
            }),
        })
    }
}

/// A listening socket on `addr` that another streammask process may bind too
/// (`SO_REUSEPORT`): during a graceful upgrade both processes hold it for a few seconds.
fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
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
        let drain = self.state.live.load().drain.clone();
        let mut signalled = false;
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
                // A graceful upgrade's new process has bound this address too (the socket
                // is shared): leave the admin endpoints to it. A drain after SIGTERM keeps
                // serving them, `/readyz` answering 503.
                () = drain.reached(DrainPhase::Draining), if !signalled => {
                    signalled = true;
                    if drain.handed_over() {
                        tracing::info!("graceful upgrade: the admin listener is left to the new process");
                        return;
                    }
                }
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
            Ok(request) if request.path == "/admin/reload" => self.reload(&request).await,
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

    /// `POST /admin/reload`: the reload's outcome as JSON, errors in the Anthropic shape.
    async fn reload(&self, request: &AdminRequest) -> Reply {
        if request.method != "POST" {
            let reply = Reply::error(
                405,
                "invalid_request_error",
                "streammask: use POST /admin/reload",
            );
            return Reply {
                headers: vec![("allow", "POST".to_string())],
                ..reply
            };
        }
        let state = self.live.load_full();
        if let Err(refused) = authorise_admin(&state, request).await {
            return refused;
        }
        let reloader = Arc::clone(&self.reloader);
        match tokio::task::spawn_blocking(move || reloader.reload(Trigger::Admin)).await {
            Ok(Ok(done)) => Reply::json(
                200,
                &serde_json::json!({
                    "result": "ok",
                    "rules": done.rules,
                    "profiles": done.profiles,
                    "checksum": done.checksum,
                    "took_ms": done.took.as_millis() as u64,
                }),
            ),
            Ok(Err(error)) => Reply::error(
                422,
                "invalid_request_error",
                &format!("streammask: reload refused, the running configuration is kept: {error}"),
            ),
            Err(_) => Reply::error(
                500,
                "api_error",
                "streammask: the reload failed unexpectedly; the running configuration is kept",
            ),
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.live.load().drain.phase() == DrainPhase::Serving
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
            "/readyz" if self.ready() => {
                let state = self.live.load();
                let matcher = state.engine.matcher();
                let line = format!(
                    "ready: {} rules loaded, pack {}\n",
                    matcher.rules().count(),
                    matcher.pack_checksum()
                );
                (200, TEXT, line.into_bytes())
            }
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

/// Whether `request` may use the admin write endpoints: the static admin token
/// (`Authorization: Bearer`, compared in constant time), or an `[auth]` caller in one of
/// `server.admin_groups`. Refusals name no token.
async fn authorise_admin(state: &ProxyState, request: &AdminRequest) -> Result<(), Reply> {
    let access = &state.config.admin_access;
    if access.token.is_none() && access.groups.is_empty() {
        return Err(Reply::error(
            403,
            "permission_error",
            "streammask: POST /admin/reload is off: set server.admin_token_env, \
             server.admin_token_file or server.admin_groups (SIGHUP reloads too)",
        ));
    }
    let presented = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(source), Some(presented)) = (&access.token, presented) {
        match admin_token(source) {
            Some(token) if constant_time_eq(token.as_bytes(), presented.as_bytes()) => {
                return Ok(())
            }
            Some(_) => {}
            None => tracing::warn!("the admin token is not set or not readable (server.admin_token_env / admin_token_file)"),
        }
    }
    if !access.groups.is_empty() && presented.is_some() {
        return match state.security.auth.authenticate(&request.headers).await {
            Ok(caller) if caller.groups.iter().any(|g| access.groups.contains(g)) => Ok(()),
            Ok(_) => Err(Reply::error(
                403,
                "permission_error",
                "streammask: the caller is in none of server.admin_groups",
            )),
            Err(refused) => Err(Reply::auth_refused(&refused)),
        };
    }
    Err(Reply::error(
        401,
        "authentication_error",
        "streammask: admin authentication required (Authorization: Bearer <admin token>)",
    ))
}

/// The admin token as configured now (read at each use, so a rotated file counts at once).
fn admin_token(source: &KeySource) -> Option<String> {
    let token = match source {
        KeySource::Env(name) => std::env::var(name).ok()?,
        KeySource::File(path) => std::fs::read_to_string(path).ok()?,
    };
    let token = token.trim().to_string();
    (!token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Hashing first makes the comparison independent of where the inputs differ and of
    // their lengths.
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
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
