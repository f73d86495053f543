//! Google Vertex AI, Anthropic publisher:
//! `POST /v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict`
//! (a JSON message), `…:streamRawPredict` (SSE), and `…/models/count-tokens:rawPredict`
//! (`{"input_tokens": n}`, n = body bytes / 4 as on `/v1/messages/count_tokens`).
//!
//! Guarantees:
//!
//! * **Authentication first**: `Authorization: Bearer <token>` where the token was issued by the
//!   mock's `/token` endpoint and has not expired; anything else is 401 with Google's
//!   `UNAUTHENTICATED` error body, counts in `vertex_auth_failures`, and takes no script. The
//!   record notes `auth_kind` `google_oauth` (or `none`) and the refusal.
//! * **Replies** are exactly those of `/v1/messages` (same reply model, SSE machinery and
//!   scripts; the `stream` match is the endpoint), with the path's model (percent-decoded) as
//!   the reply's model. The body is Vertex's: `anthropic_version` and no `model`.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::api::{bad_request, messages, not_found, plain, Dialect, MessagesRoute};
use crate::clock::unix_now;
use crate::cloud::AuthNote;
use crate::form::percent_decode;
use crate::http::Request;
use crate::response::Response;
use crate::rng::Rng;
use crate::script::Script;
use crate::server::State;

const PREFIX: &str = "/v1/projects/";

pub(crate) fn handles(path: &str) -> bool {
    path.starts_with(PREFIX)
}

fn unauthenticated() -> Response {
    let mut resp = Response::json(
        401,
        &serde_json::json!({"error": {
            "code": 401,
            "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            "status": "UNAUTHENTICATED"
        }}),
    );
    resp.headers.push((
        "www-authenticate".into(),
        "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"".into(),
    ));
    resp
}

/// `(model, method)` of `/v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:{method}`.
fn parse_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    let parts: Vec<&str> = rest.splitn(7, '/').collect();
    match parts[..] {
        [project, "locations", location, "publishers", "anthropic", "models", tail]
            if !project.is_empty() && !location.is_empty() && !tail.contains('/') =>
        {
            tail.rsplit_once(':')
        }
        _ => None,
    }
}

pub(crate) fn vertex(
    state: &State,
    req: &Request,
    header_script: Option<Script>,
    rng: &mut Rng,
    note: &mut AuthNote,
) -> Response {
    let token = req
        .header("authorization")
        .and_then(|a| a.trim().strip_prefix("Bearer "))
        .map(str::trim);
    note.auth_kind = Some(if token.is_some() {
        "google_oauth"
    } else {
        "none"
    });
    if !token.is_some_and(|t| state.cloud.oauth_token_valid(t, unix_now())) {
        state
            .cloud
            .vertex_auth_failures
            .fetch_add(1, Ordering::Relaxed);
        note.auth_error = Some(
            if token.is_some() {
                "UNAUTHENTICATED: unknown or expired access token"
            } else {
                "UNAUTHENTICATED: no bearer token"
            }
            .to_owned(),
        );
        return unauthenticated();
    }
    let Some((model, method)) = parse_path(&req.path).filter(|_| req.method == "POST") else {
        return not_found(&req.path);
    };
    let model = percent_decode(model, false);
    let stream = match (model.as_str(), method) {
        ("count-tokens", "rawPredict") => {
            return plain(
                state,
                header_script,
                Dialect::Vertex,
                || match serde_json::from_slice::<Value>(&req.body) {
                    Ok(Value::Object(_)) => Response::json(
                        200,
                        &serde_json::json!({"input_tokens": req.body.len() / 4}),
                    ),
                    Ok(_) => bad_request("request body must be a JSON object"),
                    Err(e) => bad_request(&format!("malformed JSON in request body: {e}")),
                },
            );
        }
        (_, "rawPredict") => false,
        (_, "streamRawPredict") => true,
        _ => return not_found(&req.path),
    };
    let route = MessagesRoute {
        dialect: Dialect::Vertex,
        model: Some(&model),
        stream: Some(stream),
    };
    messages(state, req, header_script, rng, &route)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::Value;

    use super::parse_path;
    use crate::server::lock;
    use crate::testing::{concat, dechunk, exchange, parse_sse, post, split_head, start_with};

    #[test]
    fn paths() {
        let p = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict";
        assert_eq!(
            parse_path(p),
            Some(("claude-sonnet-4-5@20250929", "streamRawPredict"))
        );
        let p =
            "/v1/projects/p/locations/global/publishers/anthropic/models/count-tokens:rawPredict";
        assert_eq!(parse_path(p), Some(("count-tokens", "rawPredict")));
        assert_eq!(
            parse_path("/v1/projects/p/locations/l/publishers/google/models/m:rawPredict"),
            None
        );
        assert_eq!(
            parse_path("/v1/projects/p/locations/l/publishers/anthropic/models/m"),
            None
        );
    }

    #[tokio::test]
    async fn token_then_stream_and_refusals() {
        let (addr, state) = start_with(Default::default()).await;
        let close = "Connection: close\r\n";
        let base = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-x";
        let body = r#"{"anthropic_version":"vertex-2023-10-16","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi vertex"}]}"#;
        let resp = exchange(
            addr,
            &post(&format!("{base}:streamRawPredict"), body, close),
        )
        .await;
        assert!(split_head(&resp).0.starts_with("HTTP/1.1 401"));
        let bad = format!("Authorization: Bearer ya29.nope\r\n{close}");
        let resp = exchange(addr, &post(&format!("{base}:rawPredict"), body, &bad)).await;
        let (head, rbody) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 401"));
        let v: Value = serde_json::from_slice(rbody).unwrap();
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(state.cloud.vertex_auth_failures.load(Ordering::Relaxed), 2);

        // Issue a token directly (the token endpoint is tested in `oauth`).
        lock(&state.cloud.oauth_tokens).insert("ya29.ok".into(), crate::clock::unix_now() + 60);
        let good = format!("Authorization: Bearer ya29.ok\r\n{close}");
        let resp = exchange(
            addr,
            &post(&format!("{base}:streamRawPredict"), body, &good),
        )
        .await;
        let (head, rbody) = split_head(&resp);
        assert!(head.contains("text/event-stream"), "{head}");
        let ev = parse_sse(&dechunk(rbody));
        assert_eq!(ev[0].1["message"]["model"], "claude-x");
        assert_eq!(concat(&ev, 0, "text_delta", "text"), "hi vertex");
        let ct =
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict";
        let resp = exchange(addr, &post(ct, body, &good)).await;
        let v: Value = serde_json::from_slice(split_head(&resp).1).unwrap();
        assert_eq!(v["input_tokens"], body.len() / 4);
        let j = serde_json::to_value(&*lock(&state.received)).unwrap();
        assert_eq!(j[0]["auth_kind"], "none");
        assert_eq!(j[2]["auth_kind"], "google_oauth");
        assert!(j[2].get("auth_error").is_none());
        // An expired token is refused.
        lock(&state.cloud.oauth_tokens).insert("ya29.old".into(), crate::clock::unix_now());
        let old = format!("Authorization: Bearer ya29.old\r\n{close}");
        let resp = exchange(addr, &post(&format!("{base}:rawPredict"), body, &old)).await;
        assert!(split_head(&resp).0.starts_with("HTTP/1.1 401"));
    }
}
