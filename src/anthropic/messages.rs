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

use crate::config::ThinkingPolicy;
use crate::json_walk::{mask_json, ThinkingMode, WalkFinding, WalkOptions};
use crate::masker::{Engine, Finding, MaskError, StreamMasker};
use crate::rules::{Action, Scope};
use crate::sse::{encode_event, write_event, Event, SseFramer};
use serde_json::{json, Value};
use std::sync::Arc;

/// A finding with where it was (JSON path or content block).
#[derive(Debug, Clone)]
pub struct Located {
    pub path: String,
    pub finding: Finding,
}

impl From<WalkFinding> for Located {
    fn from(found: WalkFinding) -> Located {
        Located {
            path: found.path,
            finding: found.finding,
        }
    }
}

/// The decision on one complete tool call.
#[derive(Debug)]
pub enum ToolVerdict {
    /// Forward this (possibly masked) input JSON.
    Allow(Vec<u8>),
    /// A `block` rule matched: the call must not reach the client.
    Block {
        rule_id: String,
        description: String,
    },
}

fn thinking_mode(policy: ThinkingPolicy) -> ThinkingMode {
    match policy {
        ThinkingPolicy::Report => ThinkingMode::Report,
        ThinkingPolicy::Mask => ThinkingMode::Mask,
    }
}

/// Judge a complete tool input (`{}` when empty) with the `tool_input` rules.
pub fn judge_tool_input(
    engine: &Engine,
    input: &[u8],
    findings: &mut Vec<Located>,
    path: &str,
) -> ToolVerdict {
    let input: &[u8] = if input.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        input
    };
    let options = WalkOptions {
        scope: Scope::ToolInput,
        thinking: ThinkingMode::Report,
    };
    let walked = match mask_json(engine, input, &options) {
        Ok(walked) => walked,
        // Input that is not JSON cannot be judged: refuse it rather than pass it unscanned.
        Err(_) => {
            return ToolVerdict::Block {
                rule_id: "streammask-unparseable-tool-input".into(),
                description: "the tool input could not be parsed, so it could not be checked"
                    .into(),
            }
        }
    };
    let blocking = walked
        .findings
        .iter()
        .find(|f| f.finding.action == Action::Block)
        .map(|f| f.finding.rule_id.clone());
    for found in walked.findings {
        findings.push(Located {
            path: format!("{path}.input{}", prefix_path(&found.path)),
            finding: found.finding,
        });
    }
    match blocking {
        Some(rule_id) => {
            let description = engine
                .matcher()
                .rules()
                .iter()
                .find(|r| r.id() == rule_id)
                .map(|r| r.rule.description.clone())
                .unwrap_or_default();
            ToolVerdict::Block {
                rule_id,
                description,
            }
        }
        None => ToolVerdict::Allow(walked.body.unwrap_or_else(|| input.to_vec())),
    }
}

fn prefix_path(path: &str) -> String {
    if path.is_empty() || path.starts_with('[') {
        path.to_string()
    } else {
        format!(".{path}")
    }
}

/// What the client sees instead of a blocked tool call.
pub fn blocked_tool_text(tool_name: &str, rule_id: &str, description: &str) -> String {
    format!(
        "[streammask] The {tool_name} tool call was blocked by the organisation's policy \
         (rule `{rule_id}`: {description}). It was not run. Ask your security team if you \
         need this action."
    )
}

/// Mask a complete JSON response body (non-streaming Messages response, batch object, model
/// list, error). Returns the new body, or `None` when it is unchanged.
pub fn mask_json_response(
    engine: &Engine,
    body: &[u8],
    thinking: ThinkingPolicy,
    findings: &mut Vec<Located>,
) -> Result<Option<Vec<u8>>, crate::json_walk::WalkError> {
    let options = WalkOptions {
        scope: Scope::Response,
        thinking: thinking_mode(thinking),
    };
    // Tool calls are judged whole with the tool_input rules first.
    let mut rewritten: Option<Vec<u8>> = None;
    if let Ok(mut message) = serde_json::from_slice::<Value>(body) {
        if judge_message_tools(engine, &mut message, findings) {
            rewritten = Some(serde_json::to_vec(&message).unwrap_or_default());
        }
    }
    let source = rewritten.as_deref().unwrap_or(body);
    let walked = mask_json(engine, source, &options)?;
    findings.extend(walked.findings.into_iter().map(Located::from));
    Ok(walked.body.or(rewritten))
}

/// Judge every tool_use block of a message in place. Returns whether anything changed.
fn judge_message_tools(engine: &Engine, message: &mut Value, findings: &mut Vec<Located>) -> bool {
    let Some(content) = message.get_mut("content").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut changed = false;
    let mut blocked = 0;
    let mut remaining = 0;
    for (index, block) in content.iter_mut().enumerate() {
        if block.get("type").and_then(Value::as_str) != Some("tool_use") {
            continue;
        }
        let input =
            serde_json::to_vec(block.get("input").unwrap_or(&Value::Null)).unwrap_or_default();
        let name = block
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("tool")
            .to_string();
        match judge_tool_input(engine, &input, findings, &format!("content[{index}]")) {
            ToolVerdict::Allow(masked) => {
                remaining += 1;
                if masked != input {
                    if let Ok(value) = serde_json::from_slice(&masked) {
                        block["input"] = value;
                        changed = true;
                    }
                }
            }
            ToolVerdict::Block {
                rule_id,
                description,
            } => {
                blocked += 1;
                *block = json!({"type": "text", "text": blocked_tool_text(&name, &rule_id, &description)});
                changed = true;
            }
        }
    }
    if blocked > 0
        && remaining == 0
        && message.get("stop_reason").and_then(Value::as_str) == Some("tool_use")
    {
        message["stop_reason"] = json!("end_turn");
    }
    changed
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
    thinking: ThinkingPolicy,
    framer: SseFramer,
    blocks: OpenBlocks,
    tools_blocked: usize,
    tools_allowed: usize,
    saw_message_stop: bool,
    fault: Option<StreamFault>,
    pub findings: Vec<Located>,
    late_matches: u64,
    /// Largest number of bytes held by any one block's masker (for metrics).
    pub max_held: usize,
    /// Usage numbers seen in message_start / message_delta.
    pub usage: Vec<(String, u64)>,
    /// Upstream events handled so far (for the per-event cost metric).
    pub events: u64,
    /// Reused for the masker output of each delta.
    scratch: Vec<u8>,
}

impl SseTransformer {
    pub fn new(
        engine: Arc<Engine>,
        thinking: ThinkingPolicy,
        max_event_bytes: usize,
    ) -> SseTransformer {
        SseTransformer {
            engine,
            thinking,
            framer: SseFramer::new(max_event_bytes),
            blocks: OpenBlocks::default(),
            tools_blocked: 0,
            tools_allowed: 0,
            saw_message_stop: false,
            fault: None,
            findings: Vec::new(),
            late_matches: 0,
            max_held: 0,
            usage: Vec::new(),
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

    pub fn tools_blocked(&self) -> usize {
        self.tools_blocked
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
            Err(crate::sse::SseError::EventTooLarge(_)) => self.fail(StreamFault::Oversized, out),
            Err(err) => self.fail(
                StreamFault::Malformed(format!("the upstream sent a malformed stream ({err})")),
                out,
            ),
        }
        let held = self.held();
        self.max_held = self.max_held.max(held);
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
        for finding in masker.take_findings() {
            self.findings.push(Located {
                path: format!("content[{index}]"),
                finding,
            });
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
            for (kind, value) in usage {
                if let Some(n) = value.as_u64() {
                    self.usage.push((kind.clone(), n));
                }
            }
        }
    }

    /// Comments, `id:`/`retry:` lines and stray bytes carry no event a client acts on, but they
    /// are still bytes on the wire: scan them as text.
    fn forward_as_text(&mut self, event: &Event, out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(event.raw());
        match self.engine.mask(&text, Scope::Response) {
            Ok(masked) => {
                for finding in masked.findings {
                    self.findings.push(Located {
                        path: "(sse comment)".into(),
                        finding,
                    });
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
            thinking: thinking_mode(self.thinking),
        };
        match mask_json(&self.engine, event.data().as_bytes(), &options) {
            Ok(walked) => {
                self.findings
                    .extend(walked.findings.into_iter().map(Located::from));
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
                self.thinking == ThinkingPolicy::Mask,
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
        if initial.is_empty() || !rewrite {
            event.write_to(out);
            let _ = masker.push(initial.as_bytes(), &mut emitted);
        } else {
            let mut start = data.clone();
            start["content_block"][field] = json!("");
            out.extend(encode_event("content_block_start", &start.to_string()));
            let _ = masker.push(initial.as_bytes(), &mut emitted);
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
        let name = start
            .pointer("/content_block/name")
            .and_then(Value::as_str)
            .unwrap_or("tool")
            .to_string();
        let verdict = judge_tool_input(
            &self.engine,
            partial_json.as_bytes(),
            &mut self.findings,
            &format!("content[{index}]"),
        );
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
            ToolVerdict::Block {
                rule_id,
                description,
            } => {
                self.tools_blocked += 1;
                let start = json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}});
                out.extend(encode_event("content_block_start", &start.to_string()));
                write_delta_event(
                    out,
                    index,
                    "text_delta",
                    "text",
                    &blocked_tool_text(&name, &rule_id, &description),
                );
                stop.write_to(out);
            }
        }
    }

    fn on_message_delta(&mut self, mut data: Value, event: &Event, out: &mut Vec<u8>) {
        self.record_usage(data.get("usage"));
        let stop_is_tool_use =
            data.pointer("/delta/stop_reason").and_then(Value::as_str) == Some("tool_use");
        if stop_is_tool_use && self.tools_blocked > 0 && self.tools_allowed == 0 {
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

/// A `content_block_delta` in the compact form the API sends, exactly:
/// `{"type":"content_block_delta","index":N,"delta":{"type":"T","F":"…"}}` where (T, F) is
/// (`text_delta`, `text`), (`thinking_delta`, `thinking`) or (`input_json_delta`,
/// `partial_json`). Anything else (spacing, another key order, an extra field) does not parse
/// and takes the general path, so nothing beyond the delta text can ride along unscanned.
struct CompactDelta<'a> {
    index: u64,
    delta_type: &'static str,
    text: std::borrow::Cow<'a, str>,
}

impl<'a> CompactDelta<'a> {
    fn parse(data: &'a str) -> Option<CompactDelta<'a>> {
        const KINDS: [(&str, &str); 3] = [
            ("text_delta", r#","delta":{"type":"text_delta","text":"#),
            (
                "thinking_delta",
                r#","delta":{"type":"thinking_delta","thinking":"#,
            ),
            (
                "input_json_delta",
                r#","delta":{"type":"input_json_delta","partial_json":"#,
            ),
        ];
        let rest = data.strip_prefix(r#"{"type":"content_block_delta","index":"#)?;
        let (index, rest) = compact_index(rest)?;
        let (delta_type, literal) = KINDS.iter().find_map(|(delta_type, prefix)| {
            Some((*delta_type, rest.strip_prefix(prefix)?.strip_suffix("}}")?))
        })?;
        Some(CompactDelta {
            index,
            delta_type,
            text: json_string_literal(literal)?,
        })
    }
}

/// `{"type":"content_block_stop","index":N}` exactly: its index.
fn compact_block_stop(data: &str) -> Option<u64> {
    let rest = data.strip_prefix(r#"{"type":"content_block_stop","index":"#)?;
    match compact_index(rest)? {
        (index, "}") => Some(index),
        _ => None,
    }
}

/// A JSON index (no sign, no leading zero) at the start of `text`, and what follows it.
fn compact_index(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 || (digits > 1 && text.starts_with('0')) {
        return None;
    }
    Some((text[..digits].parse().ok()?, &text[digits..]))
}

/// The value of `literal` when it is exactly one JSON string literal (quotes included).
/// Without escapes the value is borrowed; with them, serde_json decodes and validates it.
fn json_string_literal(literal: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    if inner.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Escapes (or a stray quote or control byte, which the decoder then refuses).
        return serde_json::from_str::<String>(literal)
            .ok()
            .map(std::borrow::Cow::Owned);
    }
    Some(std::borrow::Cow::Borrowed(inner))
}

#[cfg(test)]
fn delta_event(index: u64, delta_type: &str, field: &str, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 96);
    write_delta_event(&mut out, index, delta_type, field, text);
    out
}

/// Appends a `content_block_delta` event, written from a template: the same bytes
/// `encode_event` produces for the equivalent `Value` (key order type, index, delta), without
/// building one per event.
fn write_delta_event(out: &mut Vec<u8>, index: u64, delta_type: &str, field: &str, text: &str) {
    out.reserve(text.len() + 120);
    out.extend_from_slice(
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
    );
    out.extend_from_slice(index.to_string().as_bytes());
    out.extend_from_slice(b",\"delta\":{\"type\":\"");
    out.extend_from_slice(delta_type.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b"\":");
    write_json_string(out, text);
    out.extend_from_slice(b"}}\n\n");
}

/// Appends `text` as a JSON string literal, escaped exactly as serde_json escapes it (`"`, `\`,
/// the short forms `\b \f \n \r \t`, other control characters as `\u00XX`).
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean_from..at]);
        clean_from = at + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        }
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

/// An Anthropic-shaped SSE error event.
pub fn error_event(error_type: &str, message: &str) -> Vec<u8> {
    let data = json!({"type": "error", "error": {"type": error_type, "message": message}});
    encode_event("error", &data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templated_delta_event_equals_the_value_encoding() {
        for text in [
            "",
            "plain words ",
            "quote \" backslash \\ newline \n tab \t",
            "ünïcödé ✓ \u{1}",
        ] {
            let value = json!({
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "text_delta", "text": text},
            });
            let expected = encode_event("content_block_delta", &value.to_string());
            assert_eq!(
                delta_event(3, "text_delta", "text", text),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn compact_delta_shape_is_exact() {
        let ok = r#"{"type":"content_block_delta","index":12,"delta":{"type":"text_delta","text":"hi \"x\"\n"}}"#;
        let parsed = CompactDelta::parse(ok).expect("compact delta");
        assert_eq!((parsed.index, parsed.delta_type), (12, "text_delta"));
        assert_eq!(parsed.text, "hi \"x\"\n");
        let borrowed = r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"plain"}}"#;
        let parsed = CompactDelta::parse(borrowed).expect("compact delta");
        assert!(matches!(parsed.text, std::borrow::Cow::Borrowed("plain")));
        let tool = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#;
        assert_eq!(
            CompactDelta::parse(tool).expect("tool piece").text,
            "{\"a\":"
        );
        // Everything else goes to the general (walked) path: extra fields anywhere, a second
        // string smuggled after the first, other spacing or order, odd indexes, bad escapes.
        for other in [
            r#"{"type":"content_block_delta","index":0,"extra":"ghp_x","delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi","extra":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi","x":"y"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\"","x":"b"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"},"x":1}"#,
            r#"{"type": "content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"index":0,"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"bad \q"}}"#,
            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"raw \n newline\"}}",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}"#,
        ] {
            assert!(CompactDelta::parse(other).is_none(), "{other}");
        }
        assert_eq!(
            compact_block_stop(r#"{"type":"content_block_stop","index":4}"#),
            Some(4)
        );
        assert_eq!(
            compact_block_stop(r#"{"type":"content_block_stop","index":4,"x":1}"#),
            None
        );
    }
}
