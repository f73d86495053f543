//! The reply-script language (documented in `loadtest/README.md`) and the script queue.
//!
//! Scripts reject unknown fields. A request takes the first queued script it matches; scripts it
//! does not match stay queued, in order.

use serde::Deserialize;
use serde_json::Value;

use crate::server::{lock, State};

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    #[default]
    Echo,
    Text,
    ToolUse,
    ThinkingText,
    Error,
    Garbage,
    ModelsPassthrough,
}

// Unknown fields are rejected so that a typo in a test's script fails loudly instead of
// being silently ignored.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Script {
    /// Only a request this matches may take the script from the queue (see `take_script`).
    #[serde(rename = "match")]
    pub(crate) when: Option<ScriptMatch>,
    pub(crate) kind: Option<Kind>,
    pub(crate) text: Option<String>,
    pub(crate) thinking: Option<String>,
    pub(crate) tool: Option<ToolSpec>,
    pub(crate) tools: Option<Vec<ToolSpec>>,
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) stop_reason: Option<String>,
    pub(crate) sse_error_after_events: Option<usize>,
    pub(crate) disconnect_after_events: Option<usize>,
    pub(crate) disconnect_after_bytes: Option<usize>,
    pub(crate) rst: Option<bool>,
    pub(crate) delay_ms: Option<u64>,
    pub(crate) first_byte_delay_ms: Option<u64>,
    /// The response head is written on its own, then this long passes before the first event
    /// (a model that answers the request at once and thinks before its first token).
    pub(crate) head_delay_ms: Option<u64>,
    pub(crate) gzip: Option<bool>,
    pub(crate) chunked: Option<bool>,
    pub(crate) max_delta: Option<usize>,
    pub(crate) max_write: Option<usize>,
    pub(crate) split_writes: Option<bool>,
    pub(crate) raw: Option<String>,
    /// For `kind: garbage`: the Content-Type to label the body with (`""` sends none).
    pub(crate) content_type: Option<String>,
    /// For `kind: garbage`: extra response headers, as `[name, value]` pairs.
    pub(crate) headers: Option<Vec<(String, String)>>,
    pub(crate) oversized_event_bytes: Option<usize>,
    /// The scripted `text` is sent this many times over (a stream as long as a test needs, from
    /// a script small enough for a header).
    pub(crate) repeat: Option<usize>,
    /// Informational answers (`100`, `103`, …, or `101`) written before the final head, each
    /// with one header (`link` for 103), as a real server may.
    pub(crate) informational: Option<Vec<u16>>,
    pub(crate) crlf: Option<bool>,
    pub(crate) usage: Option<UsageSpec>,
    /// Bedrock streams only: after this many good event-stream frames, one frame with a wrong
    /// message CRC, and then the end of the body.
    pub(crate) corrupt_frame_after: Option<usize>,
}

/// Conditions on the request body. Every condition given must hold.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScriptMatch {
    /// `true`: the body has a non-empty `tools` array; `false`: it has none (or an empty one).
    has_tools: Option<bool>,
    /// Whether the request streams: its `stream` flag (absent counts as `false`), or for
    /// Bedrock and Vertex the endpoint (`invoke-with-response-stream`, `streamRawPredict`).
    stream: Option<bool>,
    /// The raw request body contains this string.
    body_contains: Option<String>,
    /// The raw request body does not contain this string.
    body_lacks: Option<String>,
}

impl ScriptMatch {
    fn matches(&self, body: &Value, raw: &[u8], stream: bool) -> bool {
        let has_tools = body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
        let contains = |needle: &str| {
            needle.is_empty() || raw.windows(needle.len()).any(|w| w == needle.as_bytes())
        };
        self.has_tools.is_none_or(|want| want == has_tools)
            && self.stream.is_none_or(|want| want == stream)
            && self.body_contains.as_deref().is_none_or(contains)
            && self.body_lacks.as_deref().is_none_or(|n| !contains(n))
    }
}

/// Takes the first queued script that this request matches: scripts without `match` match
/// every request, so a queue without `match` is a plain FIFO. Scripts that do not match stay
/// queued, in order. `None` when nothing matches (the caller then echoes).
pub(crate) fn take_script(state: &State, body: &Value, raw: &[u8]) -> Option<Script> {
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    take_script_for(state, body, raw, stream)
}

/// `take_script` for a request whose streaming is known from elsewhere (the path).
pub(crate) fn take_script_for(
    state: &State,
    body: &Value,
    raw: &[u8],
    stream: bool,
) -> Option<Script> {
    let mut queue = lock(&state.queue);
    let position = queue
        .iter()
        .position(|s| s.when.as_ref().is_none_or(|m| m.matches(body, raw, stream)))?;
    queue.remove(position)
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolSpec {
    #[serde(default = "default_tool_name")]
    pub(crate) name: String,
    #[serde(default = "empty_object")]
    pub(crate) input: Value,
    pub(crate) id: Option<String>,
}

pub(crate) fn default_tool_name() -> String {
    "Bash".to_owned()
}

pub(crate) fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageSpec {
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cache_read_input_tokens: Option<u64>,
    pub(crate) cache_creation_input_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use crate::server::lock;
    use crate::testing::{exchange, post, script, split_head, start};

    #[tokio::test]
    async fn match_selects_the_first_matching_script_and_keeps_the_rest() {
        let (addr, state) = start().await;
        {
            let mut q = lock(&state.queue);
            q.push_back(script(serde_json::json!({
                "match": {"has_tools": true, "body_lacks": "tool_result"},
                "kind": "text", "text": "first tools turn"
            })));
            q.push_back(script(serde_json::json!({
                "match": {"has_tools": true, "body_contains": "tool_result"},
                "kind": "text", "text": "after the tool"
            })));
        }
        let close = "Connection: close\r\n";
        let reply = |resp: Vec<u8>| -> Value {
            let (_, body) = split_head(&resp);
            serde_json::from_slice::<Value>(body).unwrap()["content"][0]["text"].clone()
        };
        // No tools: nothing matches, so the request is echoed and the queue is untouched.
        let plain = r#"{"messages":[{"role":"user","content":"plain"}]}"#;
        assert_eq!(
            reply(exchange(addr, &post("/v1/messages", plain, close)).await),
            "plain"
        );
        assert_eq!(lock(&state.queue).len(), 2);
        let tools = r#"{"tools":[{"name":"Read"}],"messages":[{"role":"user","content":[{"type":"tool_result","content":"x"}]}]}"#;
        assert_eq!(
            reply(exchange(addr, &post("/v1/messages", tools, close)).await),
            "after the tool"
        );
        let first = r#"{"tools":[{"name":"Read"}],"messages":[{"role":"user","content":"go"}]}"#;
        assert_eq!(
            reply(exchange(addr, &post("/v1/messages", first, close)).await),
            "first tools turn"
        );
        assert!(lock(&state.queue).is_empty());
    }
}
