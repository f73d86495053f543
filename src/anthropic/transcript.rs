//! Transcripts: the masked response as the client received it, kept for the audit log when
//! `[audit] transcripts = true`. A streamed response is reassembled from the events the proxy
//! wrote into the shape of a non-streamed Messages response.
//!
//! Invariants: a transcript is built only from bytes that were already sent to the client (so
//! only from masked text), and a streamed one holds at most its limit of delta text (the rest
//! is dropped and the message says `truncated`).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;

/// The masked response as the client received it.
#[derive(Debug)]
pub enum ResponseTranscript {
    /// A complete (masked) response body.
    Body(Bytes),
    /// A streamed response, reassembled from the masked events.
    Stream(StreamTranscript),
}

/// A streamed response reassembled from the masked events the client received.
#[derive(Debug)]
pub struct StreamTranscript {
    /// Per content block: its index, its start object, and the text its deltas added.
    blocks: Vec<(u64, Value, String)>,
    stop_reason: Option<String>,
    error: Option<Value>,
    kept: usize,
    limit: usize,
    truncated: bool,
}

/// The parts of a sent event the transcript uses; strings are borrowed from the event.
#[derive(Deserialize)]
struct SentEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    index: Option<u64>,
    #[serde(borrow)]
    delta: Option<SentDelta<'a>>,
    content_block: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct SentDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

impl StreamTranscript {
    pub fn new(limit: usize) -> StreamTranscript {
        StreamTranscript {
            blocks: Vec::new(),
            stop_reason: None,
            error: None,
            kept: 0,
            limit,
            truncated: false,
        }
    }

    /// Feed bytes exactly as they were written to the client. The SSE transformer only ever
    /// writes whole events, so each `data:` line is parsed where it is, without re-framing
    /// (an event whose data spans several lines is not transcribed).
    pub fn push(&mut self, sent: &[u8]) {
        for line in sent.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_suffix(b"\r").unwrap_or(data);
            if let Ok(event) = serde_json::from_slice::<SentEvent>(data) {
                self.on_event(event);
            }
        }
    }

    fn on_event(&mut self, data: SentEvent) {
        match (data.kind.as_ref(), data.index) {
            ("content_block_start", Some(index)) => {
                self.blocks.push((
                    index,
                    data.content_block.unwrap_or(Value::Null),
                    String::new(),
                ));
            }
            ("content_block_delta", Some(index)) => {
                let Some(delta) = data.delta else {
                    return;
                };
                let piece = match delta.kind.as_deref() {
                    Some("text_delta") => delta.text,
                    Some("thinking_delta") => delta.thinking,
                    Some("input_json_delta") => delta.partial_json,
                    _ => None,
                };
                let Some(piece) = piece else {
                    return;
                };
                if self.kept + piece.len() > self.limit {
                    self.truncated = true;
                    return;
                }
                self.kept += piece.len();
                if let Some((_, _, text)) = self.blocks.iter_mut().find(|(i, _, _)| *i == index) {
                    text.push_str(&piece);
                }
            }
            ("message_delta", _) => {
                if let Some(reason) = data.delta.and_then(|d| d.stop_reason) {
                    self.stop_reason = Some(reason.into_owned());
                }
            }
            ("error", _) => self.error = data.error,
            _ => {}
        }
    }

    /// The reassembled message, shaped like a non-streamed Messages response.
    pub fn render(self) -> Value {
        let content: Vec<Value> = self
            .blocks
            .into_iter()
            .map(|(_, mut block, text)| {
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "tool_use" | "server_tool_use" => {
                        block["input"] = if text.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(&text).unwrap_or_else(|_| json!(text))
                        };
                    }
                    "thinking" | "text" => {
                        // The start event may carry text of its own (forwarded unchanged when
                        // thinking is report-only).
                        let mut full = block
                            .get(kind)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        full.push_str(&text);
                        let field = kind.to_string();
                        block[field] = json!(full);
                    }
                    _ => {}
                }
                if let Some(obj) = block.as_object_mut() {
                    obj.remove("signature");
                }
                block
            })
            .collect();
        let mut message = json!({"type": "message", "role": "assistant", "content": content,
            "stop_reason": self.stop_reason});
        if let Some(error) = self.error {
            message["error"] = error;
        }
        if self.truncated {
            message["truncated"] = json!(true);
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_transcript_reassembles_blocks() {
        let mut t = StreamTranscript::new(1 << 20);
        let sse = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"Bash\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"command\\\": \\\"ls\\\"}\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"}}\n\n",
        );
        // The proxy writes whole events, one or several per write.
        let events: Vec<&str> = sse.split_inclusive("\n\n").collect();
        t.push(events[..3].concat().as_bytes());
        for event in &events[3..] {
            t.push(event.as_bytes());
        }
        let message = t.render();
        assert_eq!(message["content"][0]["text"], "Hello");
        assert_eq!(message["content"][1]["name"], "Bash");
        assert_eq!(message["content"][1]["input"]["command"], "ls");
        assert_eq!(message["stop_reason"], "tool_use");
    }

    #[test]
    fn stream_transcript_is_bounded() {
        let mut t = StreamTranscript::new(4);
        t.push(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        for _ in 0..3 {
            t.push(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"abc\"}}\n\n");
        }
        let message = t.render();
        assert_eq!(message["content"][0]["text"], "abc");
        assert_eq!(message["truncated"], true);
    }
}
