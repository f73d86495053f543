//! The Messages API's JSON shapes and the reply model: what a reply contains (blocks, stop
//! reason, usage) before `sse` frames it as a stream or it is sent as one JSON message.
//!
//! Struct fields are declared in the real API's order, which serde keeps. Errors have one shape
//! everywhere (HTTP error bodies, SSE error events, errored batch results), and scripted errors
//! fill in what is missing the way the real API does.

use std::io;

use serde::Serialize;
use serde_json::Value;

use crate::rng::{fake_signature, random_id, Rng};
use crate::script::{default_tool_name, Kind, Script, ToolSpec};
use crate::sse::text_delta_skeleton_len;

pub(crate) const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
const DEFAULT_THINKING: &str = "Let me think about how to answer this.";

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UsageOut {
    pub(crate) input_tokens: u64,
    pub(crate) cache_creation_input_tokens: u64,
    pub(crate) cache_read_input_tokens: u64,
    pub(crate) output_tokens: u64,
}

#[derive(Serialize)]
pub(crate) struct MessageOut<'a> {
    pub(crate) id: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) role: &'static str,
    pub(crate) model: &'a str,
    pub(crate) content: Vec<BlockOut<'a>>,
    pub(crate) stop_reason: Option<&'a str>,
    pub(crate) stop_sequence: Option<&'a str>,
    pub(crate) usage: UsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum BlockOut<'a> {
    Text {
        text: &'a str,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// `{"type":"error","error":{...}}`. The same shape is used for HTTP error bodies, SSE error
/// events and errored batch results.
#[derive(Serialize)]
pub(crate) struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
}

impl<'a> ErrorEnvelope<'a> {
    pub(crate) fn new(kind: &'a str, message: &'a str) -> Self {
        ErrorEnvelope {
            kind: "error",
            error: ErrorBody { kind, message },
        }
    }
}

pub(crate) fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn status_for_error_type(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Status, error type and message of a scripted error. The defaults follow the real API: a
/// bare `{"kind":"error"}` is a 529 overloaded_error, and a status alone gets the type the
/// API uses for it (and the other way round).
pub(crate) fn error_parts(s: &Script) -> (u16, &str, &str) {
    let (status, kind) = match (s.status, s.error_type.as_deref()) {
        (Some(st), Some(k)) => (st, k),
        (Some(st), None) => (st, error_type_for_status(st)),
        (None, Some(k)) => (status_for_error_type(k), k),
        (None, None) => (529, "overloaded_error"),
    };
    let default_message = match kind {
        "overloaded_error" => "Overloaded",
        "rate_limit_error" => "Number of requests has exceeded your rate limit",
        _ => "mock error",
    };
    (
        status,
        kind,
        s.message.as_deref().unwrap_or(default_message),
    )
}

#[derive(Debug)]
pub(crate) enum Block {
    Thinking {
        text: String,
        signature: String,
    },
    Text {
        text: String,
        /// When set, the first delta carries exactly this many bytes (ASCII filler). This is how
        /// `oversized_event_bytes` gets one event of an exact size.
        forced_first: Option<usize>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
        /// The JSON text that is streamed as `partial_json`. It is computed once so that the
        /// streamed pieces and the token count use the same text.
        input_json: String,
    },
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) blocks: Vec<Block>,
    pub(crate) stop_reason: String,
    pub(crate) usage: UsageOut,
}

pub(crate) fn build_reply(script: &Script, req: &Value, body_len: usize, rng: &mut Rng) -> Reply {
    let kind = script.kind.unwrap_or_default();
    let mut blocks = Vec::with_capacity(2);

    if kind == Kind::ThinkingText || script.thinking.is_some() {
        blocks.push(Block::Thinking {
            text: script
                .thinking
                .clone()
                .unwrap_or_else(|| DEFAULT_THINKING.to_owned()),
            signature: fake_signature(rng),
        });
    }

    let mut tools: Vec<ToolSpec> = script
        .tool
        .iter()
        .chain(script.tools.iter().flatten())
        .cloned()
        .collect();
    if kind == Kind::ToolUse && tools.is_empty() {
        tools.push(ToolSpec {
            name: default_tool_name(),
            input: serde_json::json!({"command": "ls"}),
            id: None,
        });
    }

    // A tool_use reply has a text block only if a text was scripted, which mirrors the real
    // API sometimes emitting a preamble and sometimes not.
    let want_text =
        kind != Kind::ToolUse || script.text.is_some() || script.oversized_event_bytes.is_some();
    if want_text {
        let mut text = match (&script.text, kind) {
            (Some(t), k) if k != Kind::Echo => t.repeat(script.repeat.unwrap_or(1)),
            _ => echo_text(req),
        };
        let mut forced_first = None;
        if let Some(n) = script.oversized_event_bytes {
            let fill = n.saturating_sub(text_delta_skeleton_len(blocks.len()));
            text.insert_str(0, &"x".repeat(fill));
            forced_first = Some(fill);
        }
        blocks.push(Block::Text { text, forced_first });
    }

    for t in tools {
        let input_json = spaced_json(&t.input);
        blocks.push(Block::ToolUse {
            id: t.id.unwrap_or_else(|| random_id("toolu_01", 22, rng)),
            name: t.name,
            input: t.input,
            input_json,
        });
    }

    let chars: usize = blocks
        .iter()
        .map(|b| match b {
            Block::Thinking { text, .. } | Block::Text { text, .. } => text.chars().count(),
            Block::ToolUse { input_json, .. } => input_json.chars().count(),
        })
        .sum();
    let has_tool = blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }));
    let u = script.usage.clone().unwrap_or_default();
    Reply {
        blocks,
        stop_reason: script
            .stop_reason
            .clone()
            .unwrap_or_else(|| if has_tool { "tool_use" } else { "end_turn" }.to_owned()),
        usage: UsageOut {
            input_tokens: u.input_tokens.unwrap_or((body_len / 4) as u64),
            cache_creation_input_tokens: u.cache_creation_input_tokens.unwrap_or(0),
            cache_read_input_tokens: u.cache_read_input_tokens.unwrap_or(0),
            output_tokens: u.output_tokens.unwrap_or((chars / 4 + 1) as u64),
        },
    }
}

/// Text of the last user turn, with its text blocks joined by `\n`. The newline keeps a
/// secret at the end of one block from merging with the start of the next. A turn that has
/// only tool results echoes their text instead, so that secrets arriving through tool output
/// also come back in the reply.
fn echo_text(req: &Value) -> String {
    let last_user = req.get("messages").and_then(Value::as_array).and_then(|m| {
        m.iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    });
    let Some(msg) = last_user else {
        return String::new();
    };
    let blocks = match msg.get("content") {
        Some(Value::String(s)) => return s.clone(),
        Some(Value::Array(blocks)) => blocks,
        _ => return String::new(),
    };
    let is_type = |b: &Value, t: &str| b.get("type").and_then(Value::as_str) == Some(t);
    fn text_of(b: &Value) -> Option<&str> {
        b.get("text").and_then(Value::as_str)
    }
    let texts: Vec<&str> = blocks
        .iter()
        .filter(|b| is_type(b, "text"))
        .filter_map(text_of)
        .collect();
    if !texts.is_empty() {
        return texts.join("\n");
    }
    let mut out = Vec::new();
    for b in blocks.iter().filter(|b| is_type(b, "tool_result")) {
        match b.get("content") {
            Some(Value::String(s)) => out.push(s.as_str()),
            Some(Value::Array(inner)) => out.extend(
                inner
                    .iter()
                    .filter(|b| is_type(b, "text"))
                    .filter_map(text_of),
            ),
            _ => {}
        }
    }
    out.join("\n")
}

/// Serializes like the real API's `partial_json` stream: `{"k": "v", "n": [1, 2]}`, with a
/// space after `:` and `,`. A proxy that only copes with compact JSON would fail against the
/// real service, so the mock must not hide that.
fn spaced_json(v: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> io::Result<()> {
            if first {
                Ok(())
            } else {
                w.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::with_capacity(64);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Spaced);
    v.serialize(&mut ser)
        .expect("serializing a Value into a Vec cannot fail");
    String::from_utf8(out).expect("serde_json emits UTF-8")
}

pub(crate) fn message_out<'a>(
    reply: &'a Reply,
    model: &'a str,
    id: &'a str,
    with_content: bool,
) -> MessageOut<'a> {
    let content = if with_content {
        reply
            .blocks
            .iter()
            .map(|b| match b {
                Block::Text { text, .. } => BlockOut::Text { text },
                Block::Thinking { text, signature } => BlockOut::Thinking {
                    thinking: text,
                    signature,
                },
                Block::ToolUse {
                    id, name, input, ..
                } => BlockOut::ToolUse { id, name, input },
            })
            .collect()
    } else {
        Vec::new()
    };
    MessageOut {
        id,
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: with_content.then_some(reply.stop_reason.as_str()),
        stop_sequence: None,
        usage: reply.usage,
    }
}
