//! The Claude API surface streammask serves: which routes exist, and errors in the Anthropic
//! shape `{"type":"error","error":{"type":…,"message":…}}` with the matching status.
//!
//! Invariant: error messages are built only from static text, rule ids and sizes — never from
//! request content — so an error can never echo a secret.

use serde_json::json;

/// Anthropic error types and the status each goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RequestTooLarge,
    Api,
    Overloaded,
}

impl ErrorKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::Api => "api_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }

    pub fn default_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::Permission => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::RequestTooLarge => 413,
            ErrorKind::Api => 500,
            ErrorKind::Overloaded => 529,
        }
    }
}

/// An error response ready to send.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
    /// Extra response headers (`x-streammask-approval-id`, …): static names, values built
    /// from ids and states only.
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            status: kind.default_status(),
            kind,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_status(mut self, status: u16) -> ApiError {
        self.status = status;
        self
    }

    pub fn body(&self) -> Vec<u8> {
        json!({"type": "error", "error": {"type": self.kind.type_name(), "message": self.message}})
            .to_string()
            .into_bytes()
    }
}

/// Where a client reaches Claude through the proxy: the first-party API, Amazon Bedrock or
/// Google Vertex AI. Each has its own routes, upstream authentication and response framing
/// (`crate::proxy::provider`); masking, policy, audit and metrics are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    #[default]
    Anthropic,
    Bedrock,
    Vertex,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Anthropic, Provider::Bedrock, Provider::Vertex];

    /// Bounded label value for metrics and audit.
    pub fn label(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::Bedrock => "bedrock",
            Provider::Vertex => "vertex",
        }
    }
}

/// The endpoints streammask knows. Anything else is a 404, never an unscanned pass-through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Messages,
    CountTokens,
    Batches,
    BatchResults,
    Models,
    /// A configured extra prefix: forwarded with the same scanning as everything else.
    Passthrough,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::Messages,
        Route::CountTokens,
        Route::Batches,
        Route::BatchResults,
        Route::Models,
        Route::Passthrough,
    ];

    /// Bounded label value for metrics and audit.
    pub fn label(self) -> &'static str {
        match self {
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::Batches => "batches",
            Route::BatchResults => "batch_results",
            Route::Models => "models",
            Route::Passthrough => "passthrough",
        }
    }
}

/// Route `method path` (path without query).
pub fn route(method: &str, path: &str, extra_prefixes: &[String]) -> Option<Route> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match (method, path) {
        ("POST", "/v1/messages") => Some(Route::Messages),
        ("POST", "/v1/messages/count_tokens") => Some(Route::CountTokens),
        ("GET", "/v1/models") => Some(Route::Models),
        (_, p) if p.starts_with("/v1/models/") && method == "GET" => Some(Route::Models),
        (_, p) if p.starts_with("/v1/messages/batches") => {
            if p.ends_with("/results") && method == "GET" {
                Some(Route::BatchResults)
            } else if matches!(method, "GET" | "POST" | "DELETE") {
                Some(Route::Batches)
            } else {
                None
            }
        }
        (_, p)
            if extra_prefixes
                .iter()
                .any(|prefix| p.starts_with(prefix.as_str())) =>
        {
            Some(Route::Passthrough)
        }
        _ => None,
    }
}

/// The `model` a request body names at its top level, as the client wrote it.
pub fn request_model(body: &[u8]) -> Option<String> {
    top_level_string(body, "model")
}

/// The string value of top-level `key` in a JSON object, without parsing the rest: strings are
/// skipped with `memchr`, so a multi-megabyte request costs microseconds. Meant for valid JSON
/// (the walker checked it); on anything else it returns some string or `None`, never panics.
pub fn top_level_string(body: &[u8], key: &str) -> Option<String> {
    fn string_end(body: &[u8], mut at: usize) -> Option<usize> {
        loop {
            let found = at + memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
            if body[found] == b'"' {
                return Some(found);
            }
            at = found + 2;
        }
    }
    let skip_ws = |mut at: usize| {
        while body.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let mut at = skip_ws(0);
    if body.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut depth = 1usize;
    let mut expect_key = true;
    while at < body.len() {
        match body[at] {
            b'"' => {
                let end = string_end(body, at + 1)?;
                if depth == 1 && expect_key {
                    expect_key = false;
                    if &body[at + 1..end] == key.as_bytes() {
                        let colon = skip_ws(end + 1);
                        let value = skip_ws(colon + 1);
                        if body.get(value) != Some(&b'"') {
                            return None;
                        }
                        let value_end = string_end(body, value + 1)?;
                        return serde_json::from_slice(&body[value..=value_end]).ok();
                    }
                }
                at = end + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                at += 1;
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
                at += 1;
            }
            b',' => {
                expect_key = depth == 1;
                at += 1;
            }
            _ => at += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_model_is_found_anywhere_in_the_object() {
        let cases: [(&str, Option<&str>); 6] = [
            (
                r#"{"model":"claude-opus-4-8","messages":[]}"#,
                Some("claude-opus-4-8"),
            ),
            (
                r#" { "messages" : [{"model":"inner","content":"a \" \\ \"model\": \"x"}], "model" : "m\u0031" } "#,
                Some("m1"),
            ),
            (r#"{"messages":[{"model":"inner"}]}"#, None),
            (r#"{"metadata":{"model":"inner"},"max_tokens":5}"#, None),
            (r#"["model","x"]"#, None),
            (r#"{"model":5}"#, None),
        ];
        for (body, want) in cases {
            assert_eq!(
                top_level_string(body.as_bytes(), "model").as_deref(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/v1/messages", &[]), Some(Route::Messages));
        assert_eq!(
            route("POST", "/v1/messages/count_tokens", &[]),
            Some(Route::CountTokens)
        );
        assert_eq!(
            route("POST", "/v1/messages/batches", &[]),
            Some(Route::Batches)
        );
        assert_eq!(
            route("GET", "/v1/messages/batches/msgbatch_1/results", &[]),
            Some(Route::BatchResults)
        );
        assert_eq!(route("GET", "/v1/models", &[]), Some(Route::Models));
        assert_eq!(route("GET", "/v1/messages", &[]), None);
        assert_eq!(route("POST", "/v1/complete", &[]), None);
        assert_eq!(
            route("POST", "/v1/files", &["/v1/files".into()]),
            Some(Route::Passthrough)
        );
    }

    #[test]
    fn error_shape() {
        let body = ApiError::new(ErrorKind::Permission, "blocked").body();
        let value: serde_json::Value =
            serde_json::from_slice(&body).expect("the error body is JSON");
        assert_eq!(value["type"], "error");
        assert_eq!(value["error"]["type"], "permission_error");
        assert_eq!(value["error"]["message"], "blocked");
    }
}
