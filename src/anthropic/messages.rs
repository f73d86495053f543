//! The response path: a streamed Messages response (SSE) or a JSON response in, the masked
//! response out.
//!
//! SSE invariants:
//! - text and thinking deltas of one content block go through one [`StreamMasker`], so a
//!   secret split across any number of events is masked as if the block had arrived whole;
//!   held text is flushed as an extra delta before the block's `content_block_stop`;
//! - `tool_use` blocks are buffered to their stop, judged whole with the `tool_input` rules,
//!   and emitted as start, one `input_json_delta`, stop — or, when a `block` rule matches, as a
//!   text block naming the rule; `stop_reason: tool_use` becomes `end_turn` when no tool call
//!   is left;
//! - every other event is walked like a JSON body; an event that needs no change is forwarded
//!   as its original bytes;
//! - nothing unscanned is forwarded: malformed or oversized events end the stream with an
//!   Anthropic-shaped `error` event, and [`SseTransformer::finish`] flushes every open block.

use crate::anthropic::compact::{compact_block_stop, write_delta_event, CompactDelta};
use crate::anthropic::sse::{encode_event, write_event, Event, SseError, SseFramer};
use crate::anthropic::tools::{judge_message_tools, judge_tool_input, ToolBlock, ToolVerdict};
use crate::anthropic::usage::Usage;
use crate::engine::json_walk::{mask_json, ThinkingMode, WalkError, WalkOptions};
use crate::engine::{Engine, Findings, MaskError, Scope, StreamMasker};
use serde_json::{json, Value};
use std::sync::Arc;

/// A complete JSON response body after masking.
#[derive(Debug, Default)]
pub struct MaskedBody {
    /// The new body, or `None` when it is unchanged (forward the original bytes).
    pub body: Option<Vec<u8>>,
    pub findings: Findings,
    /// Tool calls replaced by a text block.
    pub blocked_tools: Vec<ToolBlock>,
}

/// Mask a complete JSON response body (non-streaming Messages response, batch object, model
/// list, error). Tool calls are judged whole with the `tool_input` rules first.
pub fn mask_json_response(
    engine: &Engine,
    body: &[u8],
    thinking: ThinkingMode,
) -> Result<MaskedBody, WalkError> {
    let options = WalkOptions {
        scope: Scope::Response,
        thinking,
        lenient: false,
    };
    let mut masked = MaskedBody::default();
    let mut rewritten: Option<Vec<u8>> = None;
    if let Ok(mut message) = serde_json::from_slice::<Value>(body) {
        let tools = judge_message_tools(engine, &mut message);
        if tools.changed {
            rewritten = Some(serde_json::to_vec(&message).unwrap_or_default());
        }
        masked.findings = tools.findings;
        masked.blocked_tools = tools.blocked;
    }
    let source = rewritten.as_deref().unwrap_or(body);
    let walked = mask_json(engine, source, &options)?;
    masked.findings.append(walked.findings);
    masked.body = walked.body.or(rewritten);
    Ok(masked)
}

enum Block {
    /// Text or thinking: streamed through a masker. `rewrite` is false for report-only
    /// thinking, whose original events are forwarded while the masker only reports.
    Streamed {
        masker: StreamMasker,
        delta_type: &'static str,
        field: &'static str,
        rewrite: bool,
    },
    /// A tool call buffered to its stop.
    Tool { start: Value, partial_json: String },
    /// Anything else: events walked one by one.
    Other,
}

/// Why a stream was ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFault {
    Malformed(String),
    Oversized,
}

/// Masks one SSE response. Feed it upstream bytes; it appends client bytes to `out`.
pub struct SseTransformer {
    engine: Arc<Engine>,
    thinking: ThinkingMode,
    framer: SseFramer,
    blocks: OpenBlocks,
    blocked_tools: Vec<ToolBlock>,
    tools_allowed: usize,
    saw_message_stop: bool,
    fault: Option<StreamFault>,
    findings: Findings,
    late_matches: u64,
    usage: Usage,
    /// Upstream events handled so far (for the per-event cost metric).
    events: u64,
    /// Reused for the masker output of each delta.
    scratch: Vec<u8>,
}

impl SseTransformer {
    pub fn new(
        engine: Arc<Engine>,
        thinking: ThinkingMode,
        max_event_bytes: usize,
    ) -> SseTransformer {
        SseTransformer {
            engine,
            thinking,
            framer: SseFramer::new(max_event_bytes),
            blocks: OpenBlocks::default(),
            blocked_tools: Vec::new(),
            tools_allowed: 0,
            saw_message_stop: false,
            fault: None,
            findings: Findings::new(),
            late_matches: 0,
            usage: Usage::default(),
            events: 0,
            scratch: Vec::new(),
        }
    }

    pub fn fault(&self) -> Option<&StreamFault> {
        self.fault.as_ref()
    }

    pub fn saw_message_stop(&self) -> bool {
        self.saw_message_stop
    }

    pub fn late_matches(&self) -> u64 {
        self.late_matches
    }

    /// Upstream events handled so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Token usage reported by `message_start` and `message_delta` so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The findings so far, leaving none behind (call once the stream is over).
    pub fn take_findings(&mut self) -> Findings {
        std::mem::take(&mut self.findings)
    }

    /// The tool calls replaced so far, leaving none behind.
    pub fn take_blocked_tools(&mut self) -> Vec<ToolBlock> {
        std::mem::take(&mut self.blocked_tools)
    }

    /// Bytes held back across all open blocks right now.
    pub fn held(&self) -> usize {
        self.blocks
            .0
            .iter()
            .map(|(_, b)| match b {
                Block::Streamed { masker, .. } => masker.held(),
                Block::Tool { partial_json, .. } => partial_json.len(),
                Block::Other => 0,
            })
            .sum::<usize>()
            + self.framer.pending()
    }

    /// Feed upstream bytes. After a fault, input is ignored (the stream is over).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.fault.is_some() {
            return;
        }
        match self.framer.push(chunk) {
            Ok(events) => {
                for event in events {
                    if self.fault.is_some() {
                        break;
                    }
                    self.events += 1;
                    self.on_event(event, out);
                }
            }
            Err(SseError::EventTooLarge(_)) => self.fail(StreamFault::Oversized, out),
            Err(err) => self.fail(
                StreamFault::Malformed(format!("the upstream sent a malformed stream ({err})")),
                out,
            ),
        }
    }

    /// The upstream body ended (cleanly or not): flush every open block so nothing is held,
    /// masked as block mode would mask it. When the stream ended without `message_stop`, the
    /// client is told with an `error` event rather than left guessing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.fault.is_none() {
            match self.framer.finish() {
                // The body ended inside an event: complete its framing so nothing is glued to
                // what follows, then judge it like any other event.
                // An unterminated event is not canonical, so it is re-encoded with its blank line
                // when forwarded: nothing is glued to what follows.
                Ok(Some(event)) => {
                    if event.is_empty() {
                        // Unterminated bytes that are not even an event: nothing a client could
                        // use, so they are dropped rather than glued to the closing error.
                    } else if serde_json::from_str::<serde::de::IgnoredAny>(event.data()).is_err() {
                        self.fail(
                            StreamFault::Malformed(
                                "the upstream connection ended mid-event".into(),
                            ),
                            out,
                        );
                    } else {
                        self.on_event(event, out);
                    }
                }
                Ok(None) => {}
                Err(err) => self.fail(
                    StreamFault::Malformed(format!("the upstream sent a malformed stream ({err})")),
                    out,
                ),
            }
        }
        self.close_open_blocks(out);
        if self.fault.is_none() && !self.saw_message_stop {
            out.extend(error_event(
                "api_error",
                "streammask: the upstream connection ended before the response was complete",
            ));
        }
    }

    fn fail(&mut self, fault: StreamFault, out: &mut Vec<u8>) {
        self.close_open_blocks(out);
        let message = match &fault {
            StreamFault::Oversized => {
                "streammask: the upstream sent an oversized event; the stream was ended".to_string()
            }
            StreamFault::Malformed(why) => format!("streammask: {why}; the stream was ended"),
        };
        out.extend(error_event("api_error", &message));
        self.fault = Some(fault);
    }

    /// Flush maskers of blocks that never got their stop (upstream cut mid-block).
    fn close_open_blocks(&mut self, out: &mut Vec<u8>) {
        for (index, block) in self.blocks.take_sorted() {
            // A tool call that never completed is dropped: a partial command must not run.
            if let Block::Streamed { .. } = block {
                self.flush_block(index, block, out);
                out.extend(encode_event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": index}).to_string(),
                ));
            }
        }
    }

    fn flush_block(&mut self, index: u64, block: Block, out: &mut Vec<u8>) {
        if let Block::Streamed {
            mut masker,
            delta_type,
            field,
            rewrite,
        } = block
        {
            let mut tail = Vec::new();
            if masker.finish(&mut tail).is_ok() && rewrite && !tail.is_empty() {
                write_delta_event(
                    out,
                    index,
                    delta_type,
                    field,
                    &String::from_utf8_lossy(&tail),
                );
            }
            self.collect(index, &mut masker);
        }
    }

    fn collect(&mut self, index: u64, masker: &mut StreamMasker) {
        self.late_matches += masker.late_matches();
        let path = format!("content[{index}]");
        for finding in masker.take_findings() {
            self.findings.push(path.as_str(), finding);
        }
    }

    fn on_event(&mut self, event: Event, out: &mut Vec<u8>) {
        if event.is_empty() {
            self.forward_as_text(&event, out);
            return;
        }
        let (name, data) = (event.name(), event.data());
        // Most of a response is deltas, and the rest is mostly events of one fixed shape:
        // recognise those in the compact form the API sends without building a `Value` tree.
        // Anything else (other spacing, extra fields, other events) takes the general path.
        match (name, data) {
            (Some("content_block_delta"), data) => {
                if let Some(delta) = CompactDelta::parse(data) {
                    if self.on_compact_delta(delta, &event, out) {
                        return;
                    }
                }
            }
            (Some("ping"), r#"{"type":"ping"}"#) => return event.write_to(out),
            (Some("message_stop"), r#"{"type":"message_stop"}"#) => {
                self.close_open_blocks(out);
                self.saw_message_stop = true;
                return event.write_to(out);
            }
            (Some("content_block_stop"), data) => {
                if let Some(index) = compact_block_stop(data) {
                    return self.on_block_stop(index, &event, out);
                }
            }
            _ => {}
        }
        let Ok(data) = serde_json::from_str::<Value>(data) else {
            self.fail(
                StreamFault::Malformed("the upstream sent an event whose data is not JSON".into()),
                out,
            );
            return;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let index = data.get("index").and_then(Value::as_u64);
        match (kind.as_str(), index) {
            ("content_block_start", Some(index)) => self.on_block_start(index, data, &event, out),
            ("content_block_delta", Some(index)) => self.on_block_delta(index, data, &event, out),
            ("content_block_stop", Some(index)) => self.on_block_stop(index, &event, out),
            ("message_delta", _) => self.on_message_delta(data, &event, out),
            ("message_start", _) => {
                self.record_usage(data.pointer("/message/usage"));
                self.forward_walked(&event, out);
            }
            ("message_stop", _) => {
                self.close_open_blocks(out);
                self.saw_message_stop = true;
                self.forward_walked(&event, out);
            }
            _ => self.forward_walked(&event, out),
        }
    }

    fn record_usage(&mut self, usage: Option<&Value>) {
        if let Some(Value::Object(usage)) = usage {
            self.usage.record(usage);
        }
    }

    /// Comments, `id:`/`retry:` lines and stray bytes carry no event a client acts on, but they
    /// are still bytes on the wire: scan them as text.
    fn forward_as_text(&mut self, event: &Event, out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(event.raw());
        match self.engine.mask(&text, Scope::Response) {
            Ok(masked) => {
                for finding in masked.findings {
                    self.findings.push("(sse comment)", finding);
                }
                out.extend_from_slice(masked.text.as_bytes());
            }
            Err(_) => self.fail(StreamFault::Malformed("scanning failed".into()), out),
        }
    }

    /// Walk the event's JSON like a body: forward original bytes when unchanged.
    fn forward_walked(&mut self, event: &Event, out: &mut Vec<u8>) {
        let options = WalkOptions {
            scope: Scope::Response,
            thinking: self.thinking,
            lenient: false,
        };
        match mask_json(&self.engine, event.data().as_bytes(), &options) {
            Ok(walked) => {
                self.findings.append(walked.findings);
                match walked.body {
                    None => event.write_to(out),
                    Some(body) => write_event(out, event.name(), &String::from_utf8_lossy(&body)),
                }
            }
            Err(_) => self.fail(
                StreamFault::Malformed(
                    "the upstream sent an event whose data is not valid JSON".into(),
                ),
                out,
            ),
        }
    }

    fn new_masker(&self) -> Result<StreamMasker, MaskError> {
        self.engine.stream(Scope::Response)
    }

    fn on_block_start(&mut self, index: u64, data: Value, event: &Event, out: &mut Vec<u8>) {
        let block_type = data
            .pointer("/content_block/type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (delta_type, field, rewrite) = match block_type.as_str() {
            "text" => ("text_delta", "text", true),
            "thinking" => (
                "thinking_delta",
                "thinking",
                self.thinking == ThinkingMode::Mask,
            ),
            "tool_use" | "server_tool_use" => {
                self.blocks.insert(
                    index,
                    Block::Tool {
                        start: data,
                        partial_json: String::new(),
                    },
                );
                return;
            }
            _ => {
                self.blocks.insert(index, Block::Other);
                self.forward_walked(event, out);
                return;
            }
        };
        let Ok(mut masker) = self.new_masker() else {
            self.fail(
                StreamFault::Malformed("a masking stream could not be opened".into()),
                out,
            );
            return;
        };
        // The start event usually carries empty text; if not, its text joins the stream.
        let initial = data
            .get("content_block")
            .and_then(|block| block.get(field))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut emitted = Vec::new();
        if masker.push(initial.as_bytes(), &mut emitted).is_err() {
            self.fail(StreamFault::Malformed("masking failed".into()), out);
            return;
        }
        if initial.is_empty() || !rewrite {
            event.write_to(out);
        } else {
            let mut start = data.clone();
            start["content_block"][field] = json!("");
            out.extend(encode_event("content_block_start", &start.to_string()));
            if !emitted.is_empty() {
                write_delta_event(
                    out,
                    index,
                    delta_type,
                    field,
                    &String::from_utf8_lossy(&emitted),
                );
            }
        }
        self.blocks.insert(
            index,
            Block::Streamed {
                masker,
                delta_type,
                field,
                rewrite,
            },
        );
    }

    /// The fast path for a compact delta event: a text or thinking delta of an open streamed
    /// block, or a tool-input piece of an open tool block. Returns false, having done nothing,
    /// when the delta does not belong to such a block (the general path then decides).
    fn on_compact_delta(
        &mut self,
        delta: CompactDelta<'_>,
        event: &Event,
        out: &mut Vec<u8>,
    ) -> bool {
        let (masker, delta_type, field, rewrite) = match self.blocks.get_mut(delta.index) {
            Some(Block::Streamed {
                masker,
                delta_type,
                field,
                rewrite,
            }) if *delta_type == delta.delta_type => (masker, *delta_type, *field, *rewrite),
            // Tool input is buffered to the block's stop and judged whole.
            Some(Block::Tool { partial_json, .. }) if delta.delta_type == "input_json_delta" => {
                partial_json.push_str(&delta.text);
                return true;
            }
            _ => return false,
        };
        let mut emitted = std::mem::take(&mut self.scratch);
        emitted.clear();
        if masker.push(delta.text.as_bytes(), &mut emitted).is_err() {
            self.fail(StreamFault::Malformed("masking failed".into()), out);
            return true;
        }
        if !rewrite || emitted.as_slice() == delta.text.as_bytes() {
            // Report-only blocks, and the common case of nothing held or masked: the event as
            // it came (it carries nothing but the delta, so everything in it was scanned).
            event.write_to(out);
        } else if !emitted.is_empty() {
            write_delta_event(
                out,
                delta.index,
                delta_type,
                field,
                &String::from_utf8_lossy(&emitted),
            );
        }
        self.scratch = emitted;
        true
    }

    fn on_block_delta(&mut self, index: u64, data: Value, event: &Event, out: &mut Vec<u8>) {
        let delta_kind = data
            .pointer("/delta/type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match self.blocks.get_mut(index) {
            Some(Block::Streamed {
                masker,
                delta_type,
                field,
                rewrite,
            }) if delta_kind == *delta_type => {
                let text = data
                    .get("delta")
                    .and_then(|delta| delta.get(*field))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let mut emitted = Vec::with_capacity(text.len() + 16);
                if masker.push(text.as_bytes(), &mut emitted).is_err() {
                    self.fail(StreamFault::Malformed("masking failed".into()), out);
                    return;
                }
                // Original bytes only when the event carries nothing but the delta: a field the
                // masker did not see must not reach the client unscanned (fail closed), so an
                // event with extra fields is rewritten to the known ones.
                let plain = only_delta_fields(&data, field);
                if !*rewrite && plain {
                    event.write_to(out);
                } else if !*rewrite {
                    self.forward_walked(event, out);
                } else if plain && emitted.as_slice() == text.as_bytes() {
                    event.write_to(out);
                } else if !emitted.is_empty() {
                    write_delta_event(
                        out,
                        index,
                        delta_type,
                        field,
                        &String::from_utf8_lossy(&emitted),
                    );
                }
            }
            Some(Block::Tool { partial_json, .. }) if delta_kind == "input_json_delta" => {
                partial_json.push_str(
                    data.pointer("/delta/partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
            // signature_delta, citations_delta and anything new: walked and forwarded.
            _ => self.forward_walked(event, out),
        }
    }

    fn on_block_stop(&mut self, index: u64, event: &Event, out: &mut Vec<u8>) {
        match self.blocks.remove(index) {
            Some(block @ Block::Streamed { .. }) => {
                self.flush_block(index, block, out);
                event.write_to(out);
            }
            Some(Block::Tool {
                start,
                partial_json,
            }) => self.emit_tool(index, start, &partial_json, event, out),
            Some(Block::Other) | None => event.write_to(out),
        }
    }

    fn emit_tool(
        &mut self,
        index: u64,
        start: Value,
        partial_json: &str,
        stop: &Event,
        out: &mut Vec<u8>,
    ) {
        let (verdict, findings) = judge_tool_input(
            &self.engine,
            partial_json.as_bytes(),
            &format!("content[{index}]"),
        );
        self.findings.append(findings);
        match verdict {
            ToolVerdict::Allow(input) => {
                self.tools_allowed += 1;
                out.extend(encode_event("content_block_start", &start.to_string()));
                let input = String::from_utf8_lossy(&input).into_owned();
                let delta = json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": input},
                });
                out.extend(encode_event("content_block_delta", &delta.to_string()));
                stop.write_to(out);
            }
            ToolVerdict::Block(refusal) => {
                let name = start
                    .pointer("/content_block/name")
                    .and_then(Value::as_str)
                    .unwrap_or("tool");
                let text = refusal.client_text(&self.engine, name);
                self.blocked_tools.push(refusal);
                let start = json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}});
                out.extend(encode_event("content_block_start", &start.to_string()));
                write_delta_event(out, index, "text_delta", "text", &text);
                stop.write_to(out);
            }
        }
    }

    fn on_message_delta(&mut self, mut data: Value, event: &Event, out: &mut Vec<u8>) {
        self.record_usage(data.get("usage"));
        let stop_is_tool_use =
            data.pointer("/delta/stop_reason").and_then(Value::as_str) == Some("tool_use");
        if stop_is_tool_use && !self.blocked_tools.is_empty() && self.tools_allowed == 0 {
            data["delta"]["stop_reason"] = json!("end_turn");
            let rewritten = Event::new("message_delta", &data.to_string());
            self.forward_walked(&rewritten, out);
        } else {
            self.forward_walked(event, out);
        }
    }
}

/// Whether a delta event holds only `type`, `index` and `delta: {type, <field>}`.
fn only_delta_fields(data: &Value, field: &str) -> bool {
    let top_ok = data.as_object().is_some_and(|o| {
        o.keys()
            .all(|k| matches!(k.as_str(), "type" | "index" | "delta"))
    });
    let delta_ok = data
        .get("delta")
        .and_then(Value::as_object)
        .is_some_and(|o| o.keys().all(|k| k == "type" || k == field));
    top_ok && delta_ok
}

/// The open content blocks of one response, by index. A response has a handful, so a
/// vector beats hashing the index on every delta.
#[derive(Default)]
struct OpenBlocks(Vec<(u64, Block)>);

impl OpenBlocks {
    fn insert(&mut self, index: u64, block: Block) {
        match self.get_mut(index) {
            Some(open) => *open = block,
            None => self.0.push((index, block)),
        }
    }

    fn get_mut(&mut self, index: u64) -> Option<&mut Block> {
        self.0
            .iter_mut()
            .find(|(open, _)| *open == index)
            .map(|(_, block)| block)
    }

    fn remove(&mut self, index: u64) -> Option<Block> {
        let position = self.0.iter().position(|(open, _)| *open == index)?;
        Some(self.0.remove(position).1)
    }

    /// Every open block, in index order, leaving none open.
    fn take_sorted(&mut self) -> Vec<(u64, Block)> {
        let mut blocks = std::mem::take(&mut self.0);
        blocks.sort_unstable_by_key(|(index, _)| *index);
        blocks
    }
}

/// An Anthropic-shaped SSE error event.
pub fn error_event(error_type: &str, message: &str) -> Vec<u8> {
    let data = json!({"type": "error", "error": {"type": error_type, "message": message}});
    encode_event("error", &data.to_string())
}
