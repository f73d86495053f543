//! Connections and the state they share. Each connection reads requests in a loop and answers
//! them in order; `/_mock/` paths go to the control plane, everything else to the API.
//!
//! Only API requests touch the counters, the request record and the sequence number. Control
//! traffic never does, so a test can inspect the mock without changing what it measures. A
//! connection is counted on its first API request. A request is recorded once its answer is
//! decided (before any byte of it is written), so that its record can say how it
//! authenticated.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::api::api;
use crate::batches::Batch;
use crate::cloud::{AuthNote, Cloud};
use crate::control::control_plane;
use crate::http::{read_request, ReadError};
use crate::messages::error_type_for_status;
use crate::response::{write_response, Response};
use crate::rng::Rng;
use crate::script::Script;

pub(crate) struct State {
    pub(crate) local_addr: SocketAddr,
    pub(crate) base_seed: u64,
    pub(crate) record: bool,
    pub(crate) default_split: bool,
    /// API-request sequence number. Per-request RNGs are derived from it, which is what makes a
    /// seeded run reproducible.
    pub(crate) seq: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// API responses whose write failed because the peer had gone away (a client, or a proxy,
    /// that closed the connection before the response was complete).
    pub(crate) aborted_streams: AtomicU64,
    pub(crate) queue: Mutex<VecDeque<Script>>,
    pub(crate) received: Mutex<Vec<Received>>,
    pub(crate) batches: Mutex<HashMap<String, Batch>>,
    pub(crate) cloud: Cloud,
}

impl State {
    pub(crate) fn new(
        local_addr: SocketAddr,
        base_seed: u64,
        record: bool,
        default_split: bool,
    ) -> Self {
        State {
            local_addr,
            base_seed,
            record,
            default_split,
            seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            aborted_streams: AtomicU64::new(0),
            queue: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            batches: Mutex::new(HashMap::new()),
            cloud: Cloud::default(),
        }
    }

    /// The same state, with the cloud mocks configured.
    pub(crate) fn with_cloud(self, cloud: Cloud) -> Self {
        State { cloud, ..self }
    }

    fn next_rng(&self) -> Rng {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Rng::new(self.base_seed ^ seq.wrapping_mul(0xA076_1D64_78BD_642F))
    }
}

/// A panic while one of these locks was held must not take the whole mock down with it. The
/// data under each lock stays consistent after any single operation, so a poisoned lock is
/// safe to use.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize)]
pub(crate) struct Received {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
    /// Cloud endpoints only: `auth_kind`, `aws_region`, `aws_access_key_id`, `auth_error`.
    #[serde(flatten)]
    pub(crate) auth: AuthNote,
}

pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(stream, state.clone()));
            }
            Err(e) => {
                // Usually EMFILE under load. Back off briefly rather than spinning.
                eprintln!("streammask-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn is_control(path: &str) -> bool {
    path == "/_mock" || path.starts_with("/_mock/")
}

async fn serve_conn(mut stream: TcpStream, state: Arc<State>) {
    // Without NODELAY, Nagle would merge the small split writes and hide the split points.
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut first = true;
    loop {
        let req = match read_request(&mut stream, &mut buf).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(status, msg)) => {
                let kind = error_type_for_status(status);
                let resp = Response::error(status, kind, msg);
                let _ = write_response(&mut stream, resp, false, &mut Rng::new(0)).await;
                return;
            }
        };
        let control = is_control(&req.path);
        if first && !control {
            state.connections.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let (resp, mut rng) = if control {
            (control_plane(&state, &req), Rng::new(state.base_seed))
        } else {
            state.requests.fetch_add(1, Ordering::Relaxed);
            let mut rng = state.next_rng();
            let mut auth = AuthNote::default();
            let resp = api(&state, &req, &mut rng, &mut auth);
            if state.record {
                lock(&state.received).push(Received {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    query: req.query.clone(),
                    headers: req.headers.clone(),
                    body: String::from_utf8_lossy(&req.body).into_owned(),
                    auth,
                });
            }
            (resp, rng)
        };
        match write_response(&mut stream, resp, req.keep_alive, &mut rng).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                if !control {
                    state.aborted_streams.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::testing::{post, start};

    #[tokio::test]
    async fn a_client_that_leaves_mid_stream_is_counted_as_aborted() {
        let (addr, state) = start().await;
        let req = post(
            "/v1/messages",
            r#"{"stream":true,"messages":[{"role":"user","content":"one two three four five six seven eight nine ten"}]}"#,
            "x-mock-script: {\"delay_ms\": 20, \"max_delta\": 1}\r\n",
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut first = [0u8; 64];
        let _ = s.read(&mut first).await.unwrap();
        drop(s);
        for _ in 0..200 {
            if state.aborted_streams.load(Ordering::Relaxed) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the aborted stream was not counted");
    }
}
