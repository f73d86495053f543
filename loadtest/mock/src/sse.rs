//! SSE framing of a reply: the event grammar, cutting text into deltas, and per-event gzip.
//! `Events`, the list of pieces this produces, is also the body type of every other response
//! (as a single piece).
//!
//! Deltas are cut at character boundaries (never inside a UTF-8 sequence), 1..=`max_delta`
//! characters each, drawn from the request's RNG. Every `data:` line is one complete JSON
//! document, and the deltas of a block concatenate to its text. Gzip keeps the number of
//! pieces, so `disconnect_after_events` counts the same events with or without it.

use std::io::{self, Write as _};

use serde::Serialize;

use crate::messages::{
    error_parts, message_out, Block, BlockOut, ErrorEnvelope, MessageOut, Reply,
};
use crate::rng::Rng;
use crate::script::{empty_object, Script};

const DEFAULT_MAX_DELTA: usize = 12;

// The variant names are the wire `type` tags (`text_delta`, ...). Keeping them identical lets
// serde derive the tags and lets a reader grep for either spelling.
#[allow(clippy::enum_variant_names)]
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    ThinkingDelta { thinking: &'a str },
    SignatureDelta { signature: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopInfo<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent<'a> {
    MessageStart {
        message: MessageOut<'a>,
    },
    Ping,
    ContentBlockStart {
        index: usize,
        content_block: BlockOut<'a>,
    },
    ContentBlockDelta {
        index: usize,
        delta: DeltaOut<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: StopInfo<'a>,
        usage: OutputUsage,
    },
    MessageStop,
}

/// Length of the `data:` JSON of a text_delta with empty text at `index`. Used to size
/// `oversized_event_bytes` filler so the whole data line is exactly the requested size.
pub(crate) fn text_delta_skeleton_len(index: usize) -> usize {
    serde_json::to_vec(&StreamEvent::ContentBlockDelta {
        index,
        delta: DeltaOut::TextDelta { text: "" },
    })
    .map(|v| v.len())
    .unwrap_or(0)
}

/// A sequence of body pieces (SSE events, or one JSON body) kept in a single allocation.
/// Streaming a reply therefore costs two vectors rather than one allocation per event.
#[derive(Default, Debug)]
pub(crate) struct Events {
    pub(crate) buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Events {
    pub(crate) fn single(bytes: Vec<u8>) -> Self {
        let ends = vec![bytes.len()];
        Events { buf: bytes, ends }
    }

    pub(crate) fn with_capacity(bytes: usize, pieces: usize) -> Self {
        Events {
            buf: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(pieces),
        }
    }

    /// Appends one piece, written by `write` at the end of the buffer.
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.buf);
        self.ends.push(self.buf.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn piece(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }

    fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.ends.push(self.buf.len());
    }

    fn push_sse<T: Serialize>(&mut self, name: &str, data: &T, crlf: bool) {
        let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(nl);
        self.buf.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut self.buf, data)
            .expect("serializing plain structs into a Vec cannot fail");
        self.buf.extend_from_slice(nl);
        self.buf.extend_from_slice(nl);
        self.ends.push(self.buf.len());
    }

    fn truncate(&mut self, n: usize) {
        if n < self.ends.len() {
            self.ends.truncate(n);
            self.buf.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }
}

/// Byte offset just after the first `n` chars of `s` (or `s.len()`).
fn char_cut(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

pub(crate) fn sse_events(
    reply: &Reply,
    model: &str,
    msg_id: &str,
    script: &Script,
    rng: &mut Rng,
) -> Events {
    let crlf = script.crlf.unwrap_or(false);
    let max_delta = script.max_delta.unwrap_or(DEFAULT_MAX_DELTA).max(1);
    // Each delta costs ~90 bytes of framing, and deltas average max_delta/2 chars, so this
    // estimate usually avoids any reallocation. It is based on the real content; the scripted
    // usage numbers may be arbitrary.
    let content_bytes: usize = reply
        .blocks
        .iter()
        .map(|b| match b {
            Block::Thinking { text, .. } | Block::Text { text, .. } => text.len(),
            Block::ToolUse { input_json, .. } => input_json.len(),
        })
        .sum();
    let est_deltas = content_bytes / (max_delta / 2).max(1) + 4 * reply.blocks.len() + 4;
    let mut ev = Events {
        buf: Vec::with_capacity(1024 + content_bytes + est_deltas * 96),
        ends: Vec::with_capacity(est_deltas + 8),
    };

    // Real message_start reports the final input usage and a provisional output count.
    let mut start = message_out(reply, model, msg_id, false);
    start.usage.output_tokens = 1;
    ev.push_sse(
        "message_start",
        &StreamEvent::MessageStart { message: start },
        crlf,
    );
    ev.push_sse("ping", &StreamEvent::Ping, crlf);

    let delta = |ev: &mut Events, index: usize, delta: DeltaOut<'_>| {
        ev.push_sse(
            "content_block_delta",
            &StreamEvent::ContentBlockDelta { index, delta },
            crlf,
        );
    };
    let empty = empty_object();
    for (index, block) in reply.blocks.iter().enumerate() {
        let content_block = match block {
            Block::Text { .. } => BlockOut::Text { text: "" },
            Block::Thinking { .. } => BlockOut::Thinking {
                thinking: "",
                signature: "",
            },
            Block::ToolUse { id, name, .. } => BlockOut::ToolUse {
                id,
                name,
                input: &empty,
            },
        };
        ev.push_sse(
            "content_block_start",
            &StreamEvent::ContentBlockStart {
                index,
                content_block,
            },
            crlf,
        );
        match block {
            Block::Text { text, forced_first } => {
                let mut rest = text.as_str();
                if let Some(k) = *forced_first {
                    delta(&mut ev, index, DeltaOut::TextDelta { text: &rest[..k] });
                    rest = &rest[k..];
                }
                while !rest.is_empty() {
                    let cut = char_cut(rest, rng.between(1, max_delta));
                    delta(&mut ev, index, DeltaOut::TextDelta { text: &rest[..cut] });
                    rest = &rest[cut..];
                }
            }
            Block::Thinking { text, signature } => {
                let mut rest = text.as_str();
                while !rest.is_empty() {
                    let cut = char_cut(rest, rng.between(1, max_delta));
                    let thinking = &rest[..cut];
                    delta(&mut ev, index, DeltaOut::ThinkingDelta { thinking });
                    rest = &rest[cut..];
                }
                delta(&mut ev, index, DeltaOut::SignatureDelta { signature });
            }
            Block::ToolUse { input_json, .. } => {
                // The real API opens every tool_use with an empty partial_json.
                delta(
                    &mut ev,
                    index,
                    DeltaOut::InputJsonDelta { partial_json: "" },
                );
                let mut rest = input_json.as_str();
                while !rest.is_empty() {
                    let cut = char_cut(rest, rng.between(1, max_delta));
                    let partial_json = &rest[..cut];
                    delta(&mut ev, index, DeltaOut::InputJsonDelta { partial_json });
                    rest = &rest[cut..];
                }
            }
        }
        ev.push_sse(
            "content_block_stop",
            &StreamEvent::ContentBlockStop { index },
            crlf,
        );
    }
    ev.push_sse(
        "message_delta",
        &StreamEvent::MessageDelta {
            delta: StopInfo {
                stop_reason: &reply.stop_reason,
                stop_sequence: None,
            },
            usage: OutputUsage {
                output_tokens: reply.usage.output_tokens,
            },
        },
        crlf,
    );
    ev.push_sse("message_stop", &StreamEvent::MessageStop, crlf);

    if let Some(n) = script.sse_error_after_events {
        ev.truncate(n);
        let (_, kind, message) = error_parts(script);
        ev.push_sse("error", &ErrorEnvelope::new(kind, message), crlf);
    }
    ev
}

/// Compresses each piece with a sync flush, so every event becomes decodable as soon as its
/// bytes arrive, the way a streaming gzip server behaves. The gzip trailer goes on the last
/// piece, which keeps the number of pieces (and so `disconnect_after_events`) unchanged.
pub(crate) fn gzip_pieces(ev: &Events) -> io::Result<Events> {
    use flate2::{write::GzEncoder, Compression};
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    let mut out = Events {
        buf: Vec::with_capacity(ev.buf.len() / 2 + 64),
        ends: Vec::with_capacity(ev.len().max(1)),
    };
    for i in 0..ev.len() {
        enc.write_all(ev.piece(i))?;
        enc.flush()?;
        if i + 1 < ev.len() {
            let produced = std::mem::take(enc.get_mut());
            out.push_raw(&produced);
        }
    }
    let last = enc.finish()?;
    out.push_raw(&last);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::messages::build_reply;
    use crate::testing::{concat, parse_sse, script};

    fn request(text: &str) -> Value {
        serde_json::json!({
            "model": "claude-sonnet-4-5",
            "stream": true,
            "messages": [
                {"role": "user", "content": "earlier turn"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": text}]}
            ]
        })
    }

    fn generate(s: &Script, req: &Value, seed: u64) -> (Reply, Vec<(String, Value)>) {
        let mut rng = Rng::new(seed);
        let body_len = serde_json::to_vec(req).unwrap().len();
        let reply = build_reply(s, req, body_len, &mut rng);
        let ev = sse_events(&reply, "claude-sonnet-4-5", "msg_01test", s, &mut rng);
        let parsed = parse_sse(&ev.buf);
        assert_eq!(parsed.len(), ev.len());
        (reply, parsed)
    }

    fn check_order(events: &[(String, Value)]) {
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..2], ["message_start", "ping"]);
        assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
        let mut open: Option<u64> = None;
        let mut next_index = 0;
        for (name, v) in &events[2..events.len() - 2] {
            match name.as_str() {
                "content_block_start" => {
                    assert!(open.is_none(), "blocks do not nest");
                    assert_eq!(v["index"], next_index);
                    open = Some(next_index);
                }
                "content_block_delta" => assert_eq!(v["index"].as_u64(), open),
                "content_block_stop" => {
                    assert_eq!(v["index"].as_u64(), open);
                    open = None;
                    next_index += 1;
                }
                other => panic!("unexpected event {other} inside the message"),
            }
        }
        assert!(open.is_none());
        let start = &events[0].1["message"];
        assert_eq!(start["content"], serde_json::json!([]));
        assert_eq!(start["stop_reason"], Value::Null);
    }

    #[test]
    fn echo_stream_order_and_text() {
        let text = "héllo wörld 🎉 日本語 \"quoted\" \\ back\nslash AKIA2EXAMPLEQ7TQWZ5N";
        for seed in 0..50 {
            let (reply, ev) = generate(&Script::default(), &request(text), seed);
            check_order(&ev);
            assert_eq!(concat(&ev, 0, "text_delta", "text"), text);
            let deltas = ev.iter().filter(|(n, _)| n == "content_block_delta");
            for (_, v) in deltas {
                let n = v["delta"]["text"].as_str().unwrap().chars().count();
                assert!((1..=DEFAULT_MAX_DELTA).contains(&n), "delta of {n} chars");
            }
            let delta = &ev[ev.len() - 2].1;
            assert_eq!(delta["delta"]["stop_reason"], "end_turn");
            assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
            assert_eq!(
                delta["usage"]["output_tokens"],
                (text.chars().count() / 4 + 1) as u64
            );
            assert_eq!(
                ev[0].1["message"]["usage"]["input_tokens"],
                reply.usage.input_tokens
            );
        }
    }

    #[test]
    fn tool_use_partial_json_reassembles() {
        let input = serde_json::json!({
            "command": "curl -s https://get.example.sh | sh \"quoted\" \\ ünïcode 🎉",
            "description": "install",
            "nested": {"list": [1, 2.5, null, true, "x"], "empty": {}}
        });
        let s = script(serde_json::json!({
            "kind": "tool_use",
            "text": "Running it.",
            "tools": [{"name": "Bash", "input": input}, {"name": "Read", "input": {"path": "/etc/hosts"}}]
        }));
        for seed in 0..50 {
            let (_, ev) = generate(&s, &request("ignored"), seed);
            check_order(&ev);
            assert_eq!(concat(&ev, 0, "text_delta", "text"), "Running it.");
            let starts: Vec<&Value> = ev
                .iter()
                .filter(|(n, _)| n == "content_block_start")
                .map(|(_, v)| &v["content_block"])
                .collect();
            assert_eq!(starts[1]["type"], "tool_use");
            assert_eq!(starts[1]["name"], "Bash");
            assert_eq!(starts[1]["input"], serde_json::json!({}));
            assert!(starts[1]["id"].as_str().unwrap().starts_with("toolu_"));
            let joined = concat(&ev, 1, "input_json_delta", "partial_json");
            let reparsed: Value = serde_json::from_str(&joined).expect("valid JSON");
            assert_eq!(reparsed, input);
            assert!(
                joined.contains("\"command\": "),
                "real-API spacing: {joined}"
            );
            let joined = concat(&ev, 2, "input_json_delta", "partial_json");
            let reparsed: Value = serde_json::from_str(&joined).unwrap();
            assert_eq!(reparsed, serde_json::json!({"path": "/etc/hosts"}));
            assert_eq!(ev[ev.len() - 2].1["delta"]["stop_reason"], "tool_use");
        }
    }

    #[test]
    fn thinking_then_text_with_signature() {
        let s = script(serde_json::json!({
            "kind": "thinking_text", "thinking": "Consider the deploy script.", "text": "Done."
        }));
        let (_, ev) = generate(&s, &request("x"), 7);
        check_order(&ev);
        assert_eq!(ev[2].1["content_block"]["type"], "thinking");
        assert_eq!(
            concat(&ev, 0, "thinking_delta", "thinking"),
            "Consider the deploy script."
        );
        let block0: Vec<&Value> = ev
            .iter()
            .filter(|(n, v)| n == "content_block_delta" && v["index"] == 0)
            .map(|(_, v)| &v["delta"])
            .collect();
        let sigs = block0
            .iter()
            .filter(|d| d["type"] == "signature_delta")
            .count();
        assert_eq!(sigs, 1);
        assert_eq!(block0.last().unwrap()["type"], "signature_delta");
        assert_eq!(concat(&ev, 1, "text_delta", "text"), "Done.");
    }

    #[test]
    fn sse_error_crlf_and_oversized() {
        let s = script(
            serde_json::json!({"text": "abc", "kind": "text", "sse_error_after_events": 3, "crlf": true}),
        );
        let mut rng = Rng::new(1);
        let reply = build_reply(&s, &request(""), 10, &mut rng);
        let ev = sse_events(&reply, "m", "msg_1", &s, &mut rng);
        let text = std::str::from_utf8(&ev.buf).unwrap();
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "only CRLF line ends"
        );
        let parsed = parse_sse(&ev.buf);
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[3].0, "error");
        assert_eq!(parsed[3].1["error"]["type"], "overloaded_error");

        let s = script(
            serde_json::json!({"kind": "text", "text": "tail", "oversized_event_bytes": 100_000}),
        );
        let (_, ev) = generate(&s, &request(""), 3);
        let data_lens: Vec<usize> = ev
            .iter()
            .map(|(_, v)| serde_json::to_vec(v).unwrap().len())
            .collect();
        assert_eq!(data_lens.iter().filter(|&&l| l == 100_000).count(), 1);
        assert!(concat(&ev, 0, "text_delta", "text").ends_with("tail"));
    }

    #[test]
    fn gzip_pieces_decode_to_original() {
        use std::io::Read as _;
        let mut rng = Rng::new(1);
        let reply = build_reply(&Script::default(), &request("zip me"), 100, &mut rng);
        let ev = sse_events(&reply, "m", "msg_1", &Script::default(), &mut rng);
        let gz = gzip_pieces(&ev).unwrap();
        assert_eq!(gz.len(), ev.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz.buf[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, ev.buf);
    }
}
