//! Amazon Bedrock runtime: `POST /model/{modelId}/invoke`, `…/invoke-with-response-stream`,
//! `…/count-tokens`, and `GET /inference-profiles`.
//!
//! Guarantees:
//!
//! * **Every request is authenticated before anything else** (before the body is parsed or a
//!   script is taken), the way AWS does it: no `Authorization` is 403
//!   `MissingAuthenticationTokenException`; `Bearer K` passes iff K is a `--bedrock-api-key`
//!   (else 403 `UnrecognizedClientException`); `AWS4-HMAC-SHA256 …` is verified by `sigv4`
//!   for the service `bedrock` against the `--aws-credentials` keys and the keys STS issued.
//!   A refusal is a 403 with `{"message": …}` and `x-amzn-ErrorType: <Type>`, and counts in
//!   `bedrock_auth_failures`. How a request authenticated (kind, region, access key id, or
//!   the refusal) is noted in its record.
//! * **Replies.** `invoke` answers like a non-streaming `/v1/messages` and
//!   `invoke-with-response-stream` like a streaming one, framed as AWS event-stream (see
//!   `eventstream`); the body is Bedrock's (no `model`, no `stream`, `anthropic_version`
//!   instead), and the reply's model is the path's model id, percent-decoded. Scripts work as
//!   on `/v1/messages` (the `stream` match is the endpoint); a scripted error is AWS-shaped.
//! * Every response carries `x-amzn-RequestId`.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use serde_json::Value;

use crate::api::{messages, plain, Dialect, MessagesRoute};
use crate::clock::unix_now;
use crate::cloud::AuthNote;
use crate::form::percent_decode;
use crate::http::Request;
use crate::response::Response;
use crate::rng::{random_chars, Rng};
use crate::script::Script;
use crate::server::State;
use crate::sigv4::{self, SignedRequest, ALGORITHM};

const SERVICE: &str = "bedrock";

pub(crate) fn handles(path: &str) -> bool {
    path.starts_with("/model/") || path == "/inference-profiles"
}

/// An AWS JSON error: `{"message": …}` with `x-amzn-ErrorType`.
pub(crate) fn error(status: u16, kind: &str, message: &str) -> Response {
    let mut resp = Response::json(status, &serde_json::json!({ "message": message }));
    resp.headers
        .push(("x-amzn-ErrorType".into(), kind.to_owned()));
    resp
}

/// The AWS error type of a scripted error: its `error_type` if that already names an AWS
/// exception, else the type Bedrock uses for the status.
pub(crate) fn error_type(s: &Script, status: u16) -> &str {
    match s.error_type.as_deref() {
        Some(t) if t.ends_with("Exception") => t,
        _ => match status {
            400 => "ValidationException",
            403 => "AccessDeniedException",
            404 => "ResourceNotFoundException",
            408 => "ModelTimeoutException",
            424 => "ModelErrorException",
            429 => "ThrottlingException",
            503 | 529 => "ServiceUnavailableException",
            _ => "InternalServerException",
        },
    }
}

pub(crate) fn bedrock(
    state: &State,
    req: &Request,
    header_script: Option<Script>,
    rng: &mut Rng,
    note: &mut AuthNote,
) -> Response {
    let mut resp = match authenticate(state, req, unix_now(), note) {
        Err((kind, message)) => {
            state
                .cloud
                .bedrock_auth_failures
                .fetch_add(1, Ordering::Relaxed);
            note.auth_error = Some(format!("{kind}: {message}"));
            error(403, kind, &message)
        }
        Ok(()) => route(state, req, header_script, rng),
    };
    let request_id = format!(
        "{}-{}-{}-{}-{}",
        random_chars(HEX, 8, rng),
        random_chars(HEX, 4, rng),
        random_chars(HEX, 4, rng),
        random_chars(HEX, 4, rng),
        random_chars(HEX, 12, rng)
    );
    resp.headers.push(("x-amzn-RequestId".into(), request_id));
    resp
}

const HEX: &[u8] = b"0123456789abcdef";

fn route(state: &State, req: &Request, header_script: Option<Script>, rng: &mut Rng) -> Response {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    if path == "/inference-profiles" {
        if method != "GET" {
            return unknown_operation(method, path);
        }
        return plain(state, header_script, Dialect::Bedrock, || {
            Response::json(200, &serde_json::json!({"inferenceProfileSummaries": []}))
        });
    }
    let Some((id, action)) = path
        .strip_prefix("/model/")
        .and_then(|r| r.rsplit_once('/'))
    else {
        return unknown_operation(method, path);
    };
    let model = percent_decode(id, false);
    if method != "POST" || model.is_empty() {
        return unknown_operation(method, path);
    }
    let stream = match action {
        "invoke" => false,
        "invoke-with-response-stream" => true,
        "count-tokens" => {
            return plain(state, header_script, Dialect::Bedrock, || count_tokens(req));
        }
        _ => return unknown_operation(method, path),
    };
    let route = MessagesRoute {
        dialect: Dialect::Bedrock,
        model: Some(&model),
        stream: Some(stream),
    };
    messages(state, req, header_script, rng, &route)
}

fn unknown_operation(method: &str, path: &str) -> Response {
    error(
        404,
        "UnknownOperationException",
        &format!("Unknown operation: {method} {path}"),
    )
}

/// `{"inputTokens": n}`: a quarter of the length of the model body (the base64-decoded
/// `input.invokeModel.body` when there is one, else the whole request body), at least 1.
fn count_tokens(req: &Request) -> Response {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                400,
                "ValidationException",
                "request body must be a JSON object",
            )
        }
    };
    let inner_len = body["input"]["invokeModel"]["body"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map_or(req.body.len(), |b| b.len());
    Response::json(
        200,
        &serde_json::json!({ "inputTokens": (inner_len / 4).max(1) }),
    )
}

/// Authenticates a Bedrock request at time `now` (see the module doc), noting how in `note`.
/// A refusal is (AWS error type, message).
pub(crate) fn authenticate(
    state: &State,
    req: &Request,
    now: u64,
    note: &mut AuthNote,
) -> Result<(), (&'static str, String)> {
    let Some(authorization) = req.header("authorization") else {
        note.auth_kind = Some("none");
        return Err((
            "MissingAuthenticationTokenException",
            "Missing Authentication Token".into(),
        ));
    };
    let authorization = authorization.trim();
    if let Some(key) = authorization.strip_prefix("Bearer ") {
        note.auth_kind = Some("bedrock_api_key");
        if state
            .cloud
            .config
            .bedrock_api_keys
            .iter()
            .any(|k| k == key.trim())
        {
            return Ok(());
        }
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".into(),
        ));
    }
    if !authorization.starts_with(ALGORITHM) {
        note.auth_kind = Some("unknown");
        return Err((
            "IncompleteSignatureException",
            format!("Authorization header requires the '{ALGORITHM}' scheme or a Bearer API key."),
        ));
    }
    note.auth_kind = Some("sigv4");
    let signed = SignedRequest {
        method: &req.method,
        path: &req.path,
        query: req.query.as_deref(),
        headers: &req.headers,
        body: &req.body,
    };
    let result = sigv4::verify(&signed, authorization, SERVICE, now, |akid| {
        state.cloud.aws_key(akid, now)
    });
    let scope = match &result {
        Ok(scope) => Some(scope),
        Err(r) => r.scope.as_deref(),
    };
    if let Some(scope) = scope {
        note.aws_region = Some(scope.region.clone());
        note.aws_access_key_id = Some(scope.access_key_id.clone());
    }
    result.map(|_| ()).map_err(|r| (r.kind, r.message))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use base64::Engine as _;
    use serde_json::Value;

    use crate::eventstream::decode::frames;
    use crate::server::lock;
    use crate::testing::{dechunk, exchange, post, split_head, start_with};

    fn config() -> crate::cloud::CloudConfig {
        crate::cloud::CloudConfig {
            bedrock_api_keys: vec!["br-key".into()],
            ..Default::default()
        }
    }

    const BODY: &str = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":10,"messages":[{"role":"user","content":"hello bedrock"}]}"#;

    #[tokio::test]
    async fn api_key_invoke_and_stream() {
        let (addr, state) = start_with(config()).await;
        let auth = "Authorization: Bearer br-key\r\nConnection: close\r\n";
        let path = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke";
        let resp = exchange(addr, &post(path, BODY, auth)).await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("x-amzn-RequestId: "));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["model"], "us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        assert_eq!(v["content"][0]["text"], "hello bedrock");

        let path = "/model/m1/invoke-with-response-stream";
        let resp = exchange(addr, &post(path, BODY, auth)).await;
        let (head, body) = split_head(&resp);
        assert!(
            head.contains("content-type: application/vnd.amazon.eventstream"),
            "{head}"
        );
        let f = frames(&dechunk(body)).unwrap();
        let mut text = String::new();
        for fr in &f {
            let p: Value = serde_json::from_slice(&fr.payload).unwrap();
            let data = base64::engine::general_purpose::STANDARD
                .decode(p["bytes"].as_str().unwrap())
                .unwrap();
            let ev: Value = serde_json::from_slice(&data).unwrap();
            if ev["type"] == "message_start" {
                assert_eq!(ev["message"]["model"], "m1");
            }
            if let Some(t) = ev["delta"]["text"].as_str() {
                text.push_str(t);
            }
        }
        assert_eq!(text, "hello bedrock");
        let rec = lock(&state.received);
        let j = serde_json::to_value(&*rec).unwrap();
        assert_eq!(j[1]["auth_kind"], "bedrock_api_key");
        assert!(j[1].get("auth_error").is_none());
    }

    #[tokio::test]
    async fn refusals_are_aws_shaped_and_counted() {
        let (addr, state) = start_with(config()).await;
        let close = "Connection: close\r\n";
        let cases = [
            ("", "MissingAuthenticationTokenException"),
            ("Authorization: Bearer nope\r\n", "UnrecognizedClientException"),
            ("Authorization: Basic eA==\r\n", "IncompleteSignatureException"),
            (
                "Authorization: AWS4-HMAC-SHA256 Credential=AKIDX/20261204/eu-west-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\nX-Amz-Date: 20261204T120000Z\r\n",
                "InvalidSignatureException", // the date is far from the real clock
            ),
        ];
        for (extra, kind) in cases {
            let resp = exchange(
                addr,
                &post("/model/m/invoke", BODY, &format!("{extra}{close}")),
            )
            .await;
            let (head, body) = split_head(&resp);
            assert!(head.starts_with("HTTP/1.1 403"), "{head}");
            assert!(
                head.contains(&format!("x-amzn-ErrorType: {kind}")),
                "{head}"
            );
            let v: Value = serde_json::from_slice(body).unwrap();
            assert!(v["message"].is_string());
        }
        assert_eq!(state.cloud.bedrock_auth_failures.load(Ordering::Relaxed), 4);
        let j = serde_json::to_value(&*lock(&state.received)).unwrap();
        assert_eq!(j[0]["auth_kind"], "none");
        assert_eq!(j[3]["auth_kind"], "sigv4");
        assert_eq!(j[3]["aws_region"], "eu-west-1");
        assert_eq!(j[3]["aws_access_key_id"], "AKIDX");
        // A refused request does not take a queued script.
        assert!(lock(&state.queue).is_empty());
    }

    #[tokio::test]
    async fn count_tokens_profiles_and_scripted_errors() {
        let (addr, _) = start_with(config()).await;
        let auth = "Authorization: Bearer br-key\r\nConnection: close\r\n";
        let inner = base64::engine::general_purpose::STANDARD.encode(BODY);
        let ct = format!(r#"{{"input":{{"invokeModel":{{"body":"{inner}"}}}}}}"#);
        let resp = exchange(addr, &post("/model/m/count-tokens", &ct, auth)).await;
        let v: Value = serde_json::from_slice(split_head(&resp).1).unwrap();
        assert_eq!(v["inputTokens"], BODY.len() / 4);
        let get = format!(
            "GET /inference-profiles?typeEquals=SYSTEM_DEFINED HTTP/1.1\r\nHost: m\r\n{auth}\r\n"
        );
        let resp = exchange(addr, get.as_bytes()).await;
        let v: Value = serde_json::from_slice(split_head(&resp).1).unwrap();
        assert_eq!(v, serde_json::json!({"inferenceProfileSummaries": []}));
        let script = "x-mock-script: {\"kind\":\"error\",\"status\":429}\r\n";
        let resp = exchange(
            addr,
            &post("/model/m/invoke", BODY, &format!("{script}{auth}")),
        )
        .await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 429"));
        assert!(head.contains("x-amzn-ErrorType: ThrottlingException"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            v["message"],
            "Number of requests has exceeded your rate limit"
        );
    }
}
