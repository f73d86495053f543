//! Routing of API requests (every path outside `/_mock/`): `/v1/messages`, `count_tokens`,
//! the models endpoints, message batches (answered by `batches`), and the cloud endpoints:
//! Bedrock runtime (`/model/…`, `/inference-profiles`, answered by `bedrock`), Vertex AI
//! (`/v1/projects/…`, `vertex`), AWS STS (`POST /`, `sts`) and the Google OAuth token endpoint
//! (`POST /token`, `oauth`). Bedrock and Vertex generate their replies with the same
//! `messages` function as `/v1/messages`, so every script works on all three.
//!
//! Each API request has its own RNG (see `server`), and everything random about its answer is
//! drawn from it in a fixed order: the reply's tool ids and signature, the message id, the SSE
//! cuts (for Bedrock then the event-stream padding and the `x-amzn-RequestId`), then the
//! `request-id` header and the write splits. STS and the token endpoint draw the credentials
//! they issue from it. A seeded run replays byte for byte only while that order holds.

use serde::Serialize;
use serde_json::Value;

use crate::batches::{batch_results, create_batch, get_batch};
use crate::cloud::AuthNote;
use crate::eventstream::{self, EVENTSTREAM_CONTENT_TYPE};
use crate::http::Request;
use crate::messages::{build_reply, error_parts, message_out, DEFAULT_MODEL};
use crate::response::{Response, Transport, SSE_CONTENT_TYPE};
use crate::rng::{random_id, Rng};
use crate::script::{take_script_for, Kind, Script};
use crate::server::State;
use crate::sse::{sse_events, Events};
use crate::{bedrock, oauth, sts, vertex};

/// (id, display_name, created_at). The default model comes first because clients and tests
/// take `data[0]` as the default.
const MODELS: &[(&str, &str, &str)] = &[
    (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "2025-10-01T00:00:00Z",
    ),
    ("claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
];

/// A script header is JSON, or `hex:` and the hex of the JSON: test scripts carry secrets the
/// mock must answer with, and the proxy refuses a request whose headers hold one.
fn decode_script_header(raw: &str) -> String {
    let Some(hex) = raw.strip_prefix("hex:") else {
        return raw.to_string();
    };
    let digits: Option<Vec<u8>> = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect();
    digits
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default()
}

pub(crate) fn api(state: &State, req: &Request, rng: &mut Rng, note: &mut AuthNote) -> Response {
    let header_script = match req.header("x-mock-script").map(decode_script_header) {
        None => None,
        Some(raw) => match serde_json::from_str::<Script>(&raw) {
            Ok(s) => Some(s),
            Err(e) => {
                let msg = format!("x-mock-script: {e}");
                return Response::error(400, "invalid_request_error", &msg);
            }
        },
    };
    let (method, path) = (req.method.as_str(), req.path.as_str());
    if method == "POST" && path == "/v1/messages" {
        return messages(state, req, header_script, rng, &MessagesRoute::ANTHROPIC);
    }
    if bedrock::handles(path) {
        return bedrock::bedrock(state, req, header_script, rng, note);
    }
    if vertex::handles(path) {
        return vertex::vertex(state, req, header_script, rng, note);
    }
    match (method, path) {
        ("POST", "/") => plain(state, header_script, Dialect::Anthropic, || {
            sts::sts(state, req, rng)
        }),
        ("POST", "/token") => plain(state, header_script, Dialect::Anthropic, || {
            oauth::token(state, req, rng)
        }),
        _ => plain(state, header_script, Dialect::Anthropic, || {
            route_other(state, req, rng)
        }),
    }
}

/// An endpoint that is not a Messages endpoint. A header script works here for errors and
/// transport faults only; the script queue belongs to the Messages endpoints and batch results.
pub(crate) fn plain(
    state: &State,
    header_script: Option<Script>,
    dialect: Dialect,
    answer: impl FnOnce() -> Response,
) -> Response {
    let script = header_script.unwrap_or_default();
    let mut resp = if script.kind == Some(Kind::Error) {
        script_error(&script, dialect)
    } else {
        answer()
    };
    resp.transport = Transport::from_script(&script, resp.sse, state.default_split);
    resp
}

fn route_other(state: &State, req: &Request, rng: &mut Rng) -> Response {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    match method {
        "POST" if path == "/v1/messages/count_tokens" => {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(_)) => Response::json(
                    200,
                    &serde_json::json!({"input_tokens": req.body.len() / 4}),
                ),
                Ok(_) => bad_request("request body must be a JSON object"),
                Err(e) => bad_request(&format!("malformed JSON in request body: {e}")),
            }
        }
        "POST" if path == "/v1/messages/batches" => create_batch(state, req, rng),
        "GET" if path == "/v1/models" => models_list(),
        "GET" => {
            if let Some(rest) = path.strip_prefix("/v1/messages/batches/") {
                if let Some(id) = rest.strip_suffix("/results") {
                    return batch_results(state, id, rng);
                }
                if !rest.is_empty() && !rest.contains('/') {
                    return get_batch(state, req, rest);
                }
            }
            if let Some(id) = path.strip_prefix("/v1/models/") {
                if let Some(&m) = MODELS.iter().find(|m| m.0 == id) {
                    return Response::json(200, &model_out(&m));
                }
                return not_found(&format!("model: {id}"));
            }
            not_found(path)
        }
        _ => not_found(path),
    }
}

pub(crate) fn bad_request(msg: &str) -> Response {
    Response::error(400, "invalid_request_error", msg)
}

pub(crate) fn not_found(what: &str) -> Response {
    Response::error(404, "not_found_error", &format!("Not found: {what}"))
}

fn script_error(s: &Script, dialect: Dialect) -> Response {
    let (status, kind, message) = error_parts(s);
    match dialect {
        Dialect::Bedrock => bedrock::error(status, bedrock::error_type(s, status), message),
        Dialect::Anthropic | Dialect::Vertex => Response::error(status, kind, message),
    }
}

/// Which flavour of the Messages API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `POST /v1/messages`.
    Anthropic,
    /// `invoke` / `invoke-with-response-stream`: AWS-shaped errors, event-stream framing.
    Bedrock,
    /// `rawPredict` / `streamRawPredict`: Anthropic errors and SSE.
    Vertex,
}

pub(crate) struct MessagesRoute<'a> {
    pub(crate) dialect: Dialect,
    /// The model named by the path (Bedrock, Vertex). `None`: the body's `model`.
    pub(crate) model: Option<&'a str>,
    /// Streaming as decided by the path (Bedrock, Vertex). `None`: the body's `stream`.
    pub(crate) stream: Option<bool>,
}

impl MessagesRoute<'_> {
    const ANTHROPIC: MessagesRoute<'static> = MessagesRoute {
        dialect: Dialect::Anthropic,
        model: None,
        stream: None,
    };
}

pub(crate) fn messages(
    state: &State,
    req: &Request,
    header_script: Option<Script>,
    rng: &mut Rng,
    route: &MessagesRoute<'_>,
) -> Response {
    let bad = |msg: &str| match route.dialect {
        Dialect::Bedrock => bedrock::error(400, "ValidationException", msg),
        Dialect::Anthropic | Dialect::Vertex => bad_request(msg),
    };
    // Validate before taking a queued script, so that a malformed request does not consume a
    // reply the test meant for the next one.
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad("request body must be a JSON object"),
        Err(e) => return bad(&format!("malformed JSON in request body: {e}")),
    };
    let stream = route
        .stream
        .unwrap_or_else(|| body.get("stream").and_then(Value::as_bool) == Some(true));
    let script = header_script
        .or_else(|| take_script_for(state, &body, &req.body, stream))
        .unwrap_or_default();
    let mut resp = match script.kind.unwrap_or_default() {
        Kind::Error => script_error(&script, route.dialect),
        Kind::Garbage => Response {
            status: script.status.unwrap_or(200),
            content_type: script.content_type.clone().unwrap_or_else(|| {
                if route.dialect == Dialect::Bedrock {
                    EVENTSTREAM_CONTENT_TYPE
                } else {
                    SSE_CONTENT_TYPE
                }
                .to_owned()
            }),
            headers: script.headers.clone().unwrap_or_default(),
            sse: true,
            body: Events::single(script.raw.clone().unwrap_or_default().into_bytes()),
            transport: Transport::default(),
        },
        Kind::ModelsPassthrough => models_list(),
        Kind::Echo | Kind::Text | Kind::ToolUse | Kind::ThinkingText => {
            let model = route
                .model
                .or_else(|| body.get("model").and_then(Value::as_str))
                .unwrap_or(DEFAULT_MODEL);
            let reply = build_reply(&script, &body, req.body.len(), rng);
            let msg_id = random_id("msg_01", 22, rng);
            if stream {
                let events = sse_events(&reply, model, &msg_id, &script, rng);
                if route.dialect == Dialect::Bedrock {
                    let frames = eventstream::from_sse(&events, script.corrupt_frame_after, rng);
                    let mut resp = Response::sse(frames);
                    resp.content_type = EVENTSTREAM_CONTENT_TYPE.to_owned();
                    resp.headers.push((
                        "x-amzn-bedrock-content-type".into(),
                        "application/json".into(),
                    ));
                    resp
                } else {
                    Response::sse(events)
                }
            } else {
                Response::json(200, &message_out(&reply, model, &msg_id, true))
            }
        }
    };
    resp.transport = Transport::from_script(&script, resp.sse, state.default_split);
    resp
}

#[derive(Serialize)]
struct ModelOut {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'static str,
    display_name: &'static str,
    created_at: &'static str,
}

fn model_out(m: &(&'static str, &'static str, &'static str)) -> ModelOut {
    ModelOut {
        kind: "model",
        id: m.0,
        display_name: m.1,
        created_at: m.2,
    }
}

fn models_list() -> Response {
    #[derive(Serialize)]
    struct List {
        data: Vec<ModelOut>,
        has_more: bool,
        first_id: Option<&'static str>,
        last_id: Option<&'static str>,
    }
    Response::json(
        200,
        &List {
            data: MODELS.iter().map(model_out).collect(),
            has_more: false,
            first_id: MODELS.first().map(|m| m.0),
            last_id: MODELS.last().map(|m| m.0),
        },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::testing::{exchange, post, split_head, start};

    #[test]
    fn script_headers_are_json_or_hex_of_json() {
        let json = r#"{"kind":"text","text":"hi"}"#;
        let hex: String = json.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::decode_script_header(json), json);
        assert_eq!(super::decode_script_header(&format!("hex:{hex}")), json);
        assert_eq!(super::decode_script_header("hex:zz"), "");
    }

    #[tokio::test]
    async fn malformed_json_and_unknown_path() {
        let (addr, _) = start().await;
        let close = "Connection: close\r\n";
        let resp = exchange(addr, &post("/v1/messages", "{nope", close)).await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 400"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let resp = exchange(
            addr,
            b"GET /v2/nothing HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 404"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
    }
}
