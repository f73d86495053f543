//! The admin listener: `/healthz` (the process is up), `/readyz` (it takes traffic) and
//! `/metrics` (Prometheus).
//!
//! Invariants:
//! - the listener is bound at start-up, so a taken address fails start-up, not the first probe;
//! - it keeps answering while the proxy drains after SIGTERM (Pingora's own listeners stop
//!   accepting at once): `/readyz` then answers 503 `draining`, so a load balancer stops
//!   sending work, and `/metrics` still shows the streams finishing;
//! - one request per connection, read with a deadline and Pingora's HTTP/1 parser, so a slow or
//!   broken client holds nothing for long.

use crate::observe::metrics::Metrics;
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
}

impl Admin {
    /// Bind `addr` now; serving starts with the server.
    pub fn bind(
        addr: SocketAddr,
        metrics: Option<Arc<Metrics>>,
        rules_loaded: usize,
    ) -> std::io::Result<Admin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Admin {
            listener: Mutex::new(Some(listener)),
            state: Arc::new(AdminState {
                metrics,
                rules_loaded,
                ready: AtomicBool::new(true),
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
    async fn serve(&self, stream: tokio::net::TcpStream) {
        let stream = pingora::protocols::l4::stream::Stream::from(stream);
        let mut session = ServerSession::new_http1(Box::new(stream));
        match tokio::time::timeout(REQUEST_DEADLINE, session.read_request()).await {
            Ok(Ok(true)) => {}
            _ => return,
        }
        let (status, content_type, body) = self.respond(session.req_header().uri.path());
        session.set_keepalive(None);
        let Ok(mut header) = ResponseHeader::build(status, Some(3)) else {
            return;
        };
        let _ = header.insert_header("content-type", content_type);
        let _ = header.insert_header("content-length", body.len().to_string());
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
