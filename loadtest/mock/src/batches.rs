//! Message batches: create, get, and results.
//!
//! A batch is `ended` from the moment it is created. Its results are built once, on the first
//! GET of `/results`: each item takes a reply from the script queue the way a `/v1/messages`
//! request would, and the request counts are corrected to match.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{bad_request, not_found};
use crate::clock::{rfc3339, unix_now};
use crate::http::Request;
use crate::messages::{
    build_reply, error_parts, message_out, ErrorEnvelope, MessageOut, DEFAULT_MODEL,
};
use crate::response::Response;
use crate::rng::{random_id, Rng};
use crate::script::{take_script, Kind};
use crate::server::{lock, State};

const JSONL_CONTENT_TYPE: &str = "application/x-jsonl";

pub(crate) struct Batch {
    id: String,
    created_at: String,
    expires_at: String,
    /// (custom_id, params, serialized length of params)
    items: Vec<(String, Value, usize)>,
    /// Results are generated on the first GET of `/results`, not at creation. A test can
    /// therefore create the batch first and script the replies afterwards. Later GETs return
    /// the same bytes.
    results: Option<Vec<u8>>,
    succeeded: usize,
    errored: usize,
}

fn batch_json(b: &Batch, host: &str) -> Response {
    #[derive(Serialize)]
    struct Counts {
        processing: usize,
        succeeded: usize,
        errored: usize,
        canceled: usize,
        expired: usize,
    }
    #[derive(Serialize)]
    struct BatchOut<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        processing_status: &'static str,
        request_counts: Counts,
        ended_at: &'a str,
        created_at: &'a str,
        expires_at: &'a str,
        archived_at: Option<&'a str>,
        cancel_initiated_at: Option<&'a str>,
        results_url: String,
    }
    Response::json(
        200,
        &BatchOut {
            id: &b.id,
            kind: "message_batch",
            processing_status: "ended",
            request_counts: Counts {
                processing: 0,
                succeeded: b.succeeded,
                errored: b.errored,
                canceled: 0,
                expired: 0,
            },
            ended_at: &b.created_at,
            created_at: &b.created_at,
            expires_at: &b.expires_at,
            archived_at: None,
            cancel_initiated_at: None,
            results_url: format!("http://{host}/v1/messages/batches/{}/results", b.id),
        },
    )
}

/// Host for `results_url`. The request's Host header is preferred so that the URL points back
/// through the proxy when the request came through it.
fn request_host(state: &State, req: &Request) -> String {
    req.header("host")
        .map(str::to_owned)
        .unwrap_or_else(|| state.local_addr.to_string())
}

pub(crate) fn create_batch(state: &State, req: &Request, rng: &mut Rng) -> Response {
    #[derive(Deserialize)]
    struct Create {
        requests: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        custom_id: String,
        params: Value,
    }
    let create: Create = match serde_json::from_slice(&req.body) {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("invalid batch request: {e}")),
    };
    let now = unix_now();
    let items: Vec<(String, Value, usize)> = create
        .requests
        .into_iter()
        .map(|it| {
            let len = serde_json::to_vec(&it.params).map_or(0, |v| v.len());
            (it.custom_id, it.params, len)
        })
        .collect();
    let batch = Batch {
        id: random_id("msgbatch_01", 22, rng),
        created_at: rfc3339(now),
        expires_at: rfc3339(now + 24 * 3600),
        succeeded: items.len(),
        errored: 0,
        items,
        results: None,
    };
    let resp = batch_json(&batch, &request_host(state, req));
    lock(&state.batches).insert(batch.id.clone(), batch);
    resp
}

pub(crate) fn get_batch(state: &State, req: &Request, id: &str) -> Response {
    let host = request_host(state, req);
    match lock(&state.batches).get(id) {
        Some(b) => batch_json(b, &host),
        None => not_found(&format!("message batch {id}")),
    }
}

pub(crate) fn batch_results(state: &State, id: &str, rng: &mut Rng) -> Response {
    #[derive(Serialize)]
    struct Line<'a> {
        custom_id: &'a str,
        result: ResultOut<'a>,
    }
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum ResultOut<'a> {
        Succeeded { message: MessageOut<'a> },
        Errored { error: ErrorEnvelope<'a> },
    }

    // Lock order is always batches then queue; no path takes them the other way round.
    let mut batches = lock(&state.batches);
    let Some(batch) = batches.get_mut(id) else {
        return not_found(&format!("message batch {id}"));
    };
    if batch.results.is_none() {
        let mut out = Vec::new();
        let (mut ok, mut failed) = (0, 0);
        for (custom_id, params, len) in &batch.items {
            let raw = serde_json::to_vec(params).unwrap_or_default();
            let script = take_script(state, params, &raw).unwrap_or_default();
            let line = if script.kind == Some(Kind::Error) {
                failed += 1;
                let (_, kind, message) = error_parts(&script);
                serde_json::to_vec(&Line {
                    custom_id,
                    result: ResultOut::Errored {
                        error: ErrorEnvelope::new(kind, message),
                    },
                })
            } else {
                ok += 1;
                let model = params
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_MODEL);
                let reply = build_reply(&script, params, *len, rng);
                let msg_id = random_id("msg_01", 22, rng);
                serde_json::to_vec(&Line {
                    custom_id,
                    result: ResultOut::Succeeded {
                        message: message_out(&reply, model, &msg_id, true),
                    },
                })
            };
            out.extend(line.expect("serializing plain structs cannot fail"));
            out.push(b'\n');
        }
        batch.succeeded = ok;
        batch.errored = failed;
        batch.results = Some(out);
    }
    let body = batch.results.clone().unwrap_or_default();
    Response::with_body(200, JSONL_CONTENT_TYPE, body)
}
