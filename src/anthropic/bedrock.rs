//! Claude's stream as Amazon Bedrock sends it (`InvokeModelWithResponseStream`): AWS
//! event-stream frames whose `chunk` events carry `{"bytes": "<base64 of an Anthropic stream
//! event>"}`, masked by the same [`SseTransformer`] as the first-party SSE stream.
//!
//! Each decoded event goes into the transformer as the SSE event it would have been on the
//! first-party API; every event the transformer writes comes back out as a `chunk` frame
//! (its `error` events as `exception` frames), re-encoded with correct lengths and checksums.
//! So text and thinking stream with the same cross-event window, tool calls are buffered and
//! judged whole, a secret cut across frames is masked, and held text is flushed before
//! `content_block_stop` — exactly as for SSE.
//!
//! Invariants:
//! - nothing reaches the client that the transformer did not write: the frames are rebuilt
//!   from its output, and the upstream's own padding (`p`) and unknown fields are dropped;
//! - an upstream `exception` frame goes through the transformer as an SSE `error` event (so
//!   its message is scanned) and comes out as an `exception` frame of the same type;
//! - a frame with a bad checksum or an impossible length, a `chunk` whose payload is not the
//!   documented JSON and base64, a frame of an unknown event type, or a body that ends inside
//!   a frame ends the stream: open blocks are closed, an `exception` frame says why, and
//!   nothing after it is read (fail closed);
//! - memory is bounded by `max_event_bytes` per frame, as SSE events are.

use super::api::top_level_string;
use super::event_stream::{encode_strings, Frame, FrameDecoder};
use super::messages::SseTransformer;
use super::sse::{write_event, SseFramer};
use base64::Engine as _;
use serde::Deserialize;

/// Base64 costs 4 bytes per 3 and the JSON wrapper some more: a frame may be this much larger
/// than the event it carries.
fn max_frame_bytes(max_event_bytes: usize) -> usize {
    max_event_bytes.saturating_mul(4) / 3 + 4096
}

/// Masks one Bedrock response stream. Feed it upstream bytes; it appends client bytes to `out`.
pub struct BedrockStream {
    decoder: FrameDecoder,
    sse: SseTransformer,
    /// Reads the transformer's output back into events, to frame them again.
    reframer: SseFramer,
    /// The transformer's output for the frames of one push.
    scratch: Vec<u8>,
    /// The payload of the chunk being written (reused).
    payload: String,
    frames: Vec<Frame>,
    /// Set once the stream was ended (a corrupt frame, an upstream exception): input after it
    /// is ignored.
    ended: bool,
    /// Whether the framing ended the stream (the reason went to the client in the exception).
    framing_fault: bool,
}

/// The payload of a `chunk` event (base64 needs no JSON escapes, so `bytes` is borrowed).
#[derive(Deserialize)]
struct ChunkPayload<'a> {
    #[serde(borrow)]
    bytes: std::borrow::Cow<'a, str>,
}

/// The payload of an `exception` frame.
#[derive(Deserialize)]
struct ExceptionPayload {
    #[serde(default)]
    message: String,
}

impl BedrockStream {
    /// `sse` is configured by the caller (restore, tool input cap); `max_event_bytes` bounds
    /// one decoded event as it bounds an SSE event.
    pub fn new(sse: SseTransformer, max_event_bytes: usize) -> BedrockStream {
        BedrockStream {
            decoder: FrameDecoder::new(max_frame_bytes(max_event_bytes)),
            sse,
            reframer: SseFramer::new(usize::MAX),
            scratch: Vec::new(),
            payload: String::new(),
            frames: Vec::new(),
            ended: false,
            framing_fault: false,
        }
    }

    /// The masker of the events, for what it found and kept.
    pub fn sse(&mut self) -> &mut SseTransformer {
        &mut self.sse
    }

    /// Whether the stream was ended early, by the framing or by the masker.
    pub fn faulted(&self) -> bool {
        self.framing_fault || self.sse.fault().is_some()
    }

    pub fn events(&self) -> u64 {
        self.sse.events()
    }

    pub fn held(&self) -> usize {
        self.sse.held() + self.decoder.pending()
    }

    /// Feed upstream bytes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        let mut frames = std::mem::take(&mut self.frames);
        let decoded = self.decoder.push(chunk, &mut frames);
        for frame in frames.drain(..) {
            if self.ended {
                break;
            }
            self.on_frame(&frame);
        }
        self.frames = frames;
        if let Err(error) = decoded {
            if !self.ended {
                self.end(&format!(
                    "the upstream sent a corrupt event stream ({error})"
                ));
            }
        }
        self.reframe(out);
    }

    /// The upstream body ended: flush what is held, as [`SseTransformer::finish`] does, after
    /// ending the stream if it stopped inside a frame.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.ended {
            if let Err(error) = self.decoder.finish() {
                self.end(&format!("the upstream event stream {error}"));
            } else {
                self.sse.finish(&mut self.scratch);
            }
            self.ended = true;
        }
        self.reframe(out);
    }

    fn on_frame(&mut self, frame: &Frame) {
        match frame.header_str(":message-type") {
            Some("event") => {}
            Some("exception" | "error") => {
                self.on_exception(frame);
                return;
            }
            _ => return self.end("the upstream sent an event-stream frame of an unknown kind"),
        }
        if frame.header_str(":event-type") != Some("chunk") {
            return self.end("the upstream sent an event of an unknown type");
        }
        let Some(event) = decode_chunk(&frame.payload) else {
            return self.end("the upstream sent a chunk that is not base64-encoded JSON");
        };
        // The event name is the event's `type`, as the first-party API names it. (Read without
        // parsing the event: the transformer parses it, and judges it whatever its name.)
        let name = top_level_string(event.as_bytes(), "type");
        let mut sse_event = Vec::with_capacity(event.len() + 32);
        write_event(&mut sse_event, name.as_deref(), &event);
        self.sse.push(&sse_event, &mut self.scratch);
    }

    /// An upstream exception ends the stream: open blocks are flushed and closed, then its
    /// message is scanned as an SSE `error` event's would be, and it goes out last.
    fn on_exception(&mut self, frame: &Frame) {
        let kind = frame
            .header_str(":exception-type")
            .or_else(|| frame.header_str(":error-code"))
            .unwrap_or("internalServerException");
        let message = serde_json::from_slice::<ExceptionPayload>(&frame.payload)
            .map(|payload| payload.message)
            .ok()
            .or_else(|| frame.header_str(":error-message").map(str::to_string))
            .unwrap_or_default();
        let data =
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
        let mut sse_event = Vec::new();
        write_event(&mut sse_event, Some("error"), &data.to_string());
        // Held text goes out before the exception, which must be the last frame.
        self.sse.close_before_upstream_error(&mut self.scratch);
        self.sse.push(&sse_event, &mut self.scratch);
        self.ended = true;
    }

    /// End the stream for a framing fault (the transformer closes open blocks and writes the
    /// `error` event that becomes an `exception` frame).
    fn end(&mut self, why: &str) {
        self.framing_fault = true;
        self.sse.end_malformed(why, &mut self.scratch);
        self.ended = true;
    }

    /// Frame the transformer's output for the client.
    fn reframe(&mut self, out: &mut Vec<u8>) {
        if self.scratch.is_empty() {
            return;
        }
        // The transformer writes whole events, so the reframer never holds a partial one.
        let events = self.reframer.push(&self.scratch).unwrap_or_default();
        self.scratch.clear();
        for event in events {
            if event.name() == Some("error") {
                write_exception(event.data(), out);
            } else {
                write_chunk(event.data(), &mut self.payload, out);
            }
        }
    }
}

/// An `exception` frame, encoded, for an error of Anthropic type `error_type` that the proxy
/// itself ends a Bedrock stream with (shutdown, an undecodable body).
pub fn exception_bytes(error_type: &str, message: &str) -> Vec<u8> {
    let data =
        serde_json::json!({"type": "error", "error": {"type": error_type, "message": message}});
    let mut out = Vec::new();
    write_exception(&data.to_string(), &mut out);
    out
}

/// The Anthropic event a `chunk` payload carries, as text.
fn decode_chunk(payload: &[u8]) -> Option<String> {
    let chunk: ChunkPayload = serde_json::from_slice(payload).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(chunk.bytes.as_bytes())
        .ok()?;
    let event = String::from_utf8(bytes).ok()?;
    if !event.contains(['\r', '\n']) {
        return Some(event);
    }
    // Line breaks are JSON whitespace here, but SSE reads them as line ends: re-serialise.
    let value: serde_json::Value = serde_json::from_str(&event).ok()?;
    Some(value.to_string())
}

/// A `chunk` frame carrying the Anthropic stream event `event`, as Bedrock writes one (and the
/// proxy writes it back): for the tests, benches and fuzzers that play the upstream.
pub fn chunk_frame_bytes(event: &str, out: &mut Vec<u8>) {
    write_chunk(event, &mut String::new(), out);
}

/// A `chunk` frame carrying `event`; `payload` is a buffer reused from event to event.
fn write_chunk(event: &str, payload: &mut String, out: &mut Vec<u8>) {
    // Base64 is JSON-safe as it is: the payload is written, not serialised.
    payload.clear();
    payload.push_str("{\"bytes\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(event.as_bytes(), payload);
    payload.push_str("\"}");
    encode_strings(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
        out,
    );
}

/// An SSE `error` event (`{"type":"error","error":{"type":…,"message":…}}`) as a Bedrock
/// exception: the upstream's exception types are kept, the proxy's own errors get the
/// Bedrock type a client retries or reports as a server error.
fn write_exception(data: &str, out: &mut Vec<u8>) {
    let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let error = &value["error"];
    let kind = match error["type"].as_str().unwrap_or("") {
        "overloaded_error" => "serviceUnavailableException",
        kind if kind.ends_with("Exception") => kind,
        _ => "internalServerException",
    };
    let message = error["message"].as_str().unwrap_or("");
    let payload = serde_json::json!({ "message": message }).to_string();
    encode_strings(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
        out,
    );
}
