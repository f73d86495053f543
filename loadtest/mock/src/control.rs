//! The `/_mock/` control plane: queue reply scripts, reset, read back the recorded requests
//! and the counters (`/_mock/stats`, and the cloud mocks' `/_mock/clouds`).
//!
//! Control requests never touch the counters or the record (`server` routes them here before
//! counting). `reset` clears everything and sets the sequence number back to 0, so a seeded
//! mock then answers exactly as it did after start-up. The one exception: STS keys and OAuth
//! tokens already issued stay valid (see `cloud`); only the cloud counters are reset.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::http::Request;
use crate::response::Response;
use crate::script::Script;
use crate::server::{lock, State};

pub(crate) fn control_plane(state: &State, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/_mock/script") => {
            // Parse to a Value first: serde's untagged-enum errors ("did not match any
            // variant") would hide which field of which script is wrong.
            let parsed = serde_json::from_slice::<Value>(&req.body).and_then(|v| match v {
                Value::Array(_) => serde_json::from_value::<Vec<Script>>(v),
                other => serde_json::from_value::<Script>(other).map(|s| vec![s]),
            });
            match parsed {
                Ok(scripts) => {
                    let mut q = lock(&state.queue);
                    let queued = scripts.len();
                    q.extend(scripts);
                    Response::json(
                        200,
                        &serde_json::json!({"queued": queued, "pending": q.len()}),
                    )
                }
                Err(e) => Response::error(400, "invalid_request_error", &format!("script: {e}")),
            }
        }
        ("POST", "/_mock/reset") => {
            lock(&state.queue).clear();
            lock(&state.received).clear();
            lock(&state.batches).clear();
            state.connections.store(0, Ordering::Relaxed);
            state.requests.store(0, Ordering::Relaxed);
            state.aborted_streams.store(0, Ordering::Relaxed);
            state.seq.store(0, Ordering::Relaxed);
            state.cloud.reset_counters();
            Response::json(200, &serde_json::json!({"ok": true}))
        }
        ("GET", "/_mock/received") => Response::json(200, &*lock(&state.received)),
        ("GET", "/_mock/stats") => Response::json(
            200,
            &serde_json::json!({
                "connections": state.connections.load(Ordering::Relaxed),
                "requests": state.requests.load(Ordering::Relaxed),
                "pending_scripts": lock(&state.queue).len(),
                "aborted_streams": state.aborted_streams.load(Ordering::Relaxed),
            }),
        ),
        ("GET", "/_mock/clouds") => Response::json(200, &state.cloud.counters()),
        _ => Response::error(404, "not_found_error", "unknown mock control endpoint"),
    }
}
