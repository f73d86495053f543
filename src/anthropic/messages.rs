//! The response path: a streamed Messages response (SSE) or a JSON response in, the masked
//! response out.
//!
//! The principle: what goes out is what was scanned, in the form the receiver (the SDK) reads
//! it, and where a finding sits in a value that cannot carry a placeholder the stream is ended
//! with an Anthropic-shaped `error` event instead.
//!
//! SSE invariants:
//! - **Texts are masked as the client joins them.** Every `text_delta` of the response goes
//!   through one [`StreamMasker`] (the SDK's `text_stream` joins every text block), every
//!   `thinking_delta` through another, so a secret split across any number of events *and*
//!   across adjacent blocks is found. Held text is flushed, masked as the end of a text is
//!   masked, as an extra delta before the block's `content_block_stop` ("flush before stop");
//!   the masker keeps its state across the stop, so the part of a secret that continues in the
//!   next block is replaced by a placeholder when its match completes;
//! - **deltas that arrive together go out together**: consecutive compact text (or thinking)
//!   deltas of one block within one [`SseTransformer::push`] are masked as one piece and sent
//!   as one delta. The text a client joins is the same; nothing is held for later input (the
//!   run ends with the call), so a paced stream's events go out one by one as before;
//! - **tool-like blocks** (`tool_use`, `server_tool_use`, `mcp_tool_use`, and any block whose
//!   start carries an `input`) are buffered to their stop, judged whole with the `tool_input`
//!   rules, and emitted as start, one `input_json_delta`, stop — or, when a `block` rule
//!   matches, as a text block naming the rule; `stop_reason: tool_use` becomes `end_turn` when
//!   no tool call is left;
//! - deltas of kinds the proxy does not know have each top-level string field streamed through
//!   a masker of its own (per block, delta type and field), so a text-like field split across
//!   events is masked too; everything else in them is scanned whole;
//! - **every byte is scanned**: an event not in the compact form is parsed strictly (duplicate
//!   keys end the stream), every key and string of it is scanned (event names too), and its
//!   original bytes are forwarded only when nothing in it changed. A finding in an id, `model`,
//!   `signature`, a `type`, a key or the event name ends the stream with an `error` event;
//! - a delta for a block that was never started, or a block event without an exact integer
//!   `index` (`0.0`, `"0"`), ends the stream: it is never forwarded unscanned;
//! - thinking is always masked for the client; for each thinking block that masking changed,
//!   the original text and its signature are kept (up to [`MAX_THINKING_ORIGINAL_BYTES`]) for
//!   [`SseTransformer::take_thinking_originals`], so a later request can restore it;
//! - nothing unscanned is forwarded: malformed or oversized events end the stream with an
//!   Anthropic-shaped `error` event, and [`SseTransformer::finish`] flushes every open block.

use crate::anthropic::compact::{
    compact_block_start, compact_block_stop, write_delta_event, CompactDelta, DeltaKind,
};
use crate::anthropic::restore::{RestoreEvent, RestoreMap, TextRestorer};
use crate::anthropic::scan_value::{
    lenient_value, parse_strict, scan_clean, scan_value, CleanDocument, ScanFault,
};
use crate::anthropic::sse::{encode_event, write_event, Event, Framed, SseError, SseFramer};
use crate::anthropic::tools::{
    is_tool_like, judge_message_tools, judge_tool_input, restore_allowed_input, restore_message,
    ToolBlock, ToolVerdict,
};
use crate::anthropic::usage::Usage;
use crate::engine::json_walk::{mask_json, ThinkingMode, WalkError, WalkOptions};
use crate::engine::{text_of, Engine, Findings, Scope, StreamMasker};
use serde_json::{json, Value};
use std::ops::Range;
use std::sync::Arc;

/// The most original thinking text kept per block; a longer block is not kept (the later
/// request then simply carries the masked text).
pub const MAX_THINKING_ORIGINAL_BYTES: usize = 1 << 20;

/// The original text of a thinking block whose text masking changed, with the block's
/// signature: what the upstream signed, so that a later request carrying the masked block can
/// have it put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinkingOriginal {
    pub signature: String,
    pub original: String,
}

/// A complete JSON response body after masking.
#[derive(Debug, Default)]
pub struct MaskedBody {
    /// The new body, or `None` when it is unchanged (forward the original bytes).
    pub body: Option<Vec<u8>>,
    pub findings: Findings,
    /// Findings in values that cannot carry a placeholder (ids, `model`, `signature`): the body
    /// must not be forwarded at all.
    pub refusals: Findings,
    /// Tool calls replaced by a text block.
    pub blocked_tools: Vec<ToolBlock>,
    /// Thinking blocks whose text masking changed, with their original text.
    pub thinking_originals: Vec<ThinkingOriginal>,
    /// Placeholders met where restore applies, restored or not.
    pub restored: Vec<RestoreEvent>,
}

/// [`mask_json_response`], then the caller's secrets given back where `restore`'s scopes say
/// ([`restore_message`]): the last step, so nothing masks them again.
pub fn mask_json_response_restoring(
    engine: &Engine,
    body: &[u8],
    thinking: ThinkingMode,
    restore: Option<&RestoreMap>,
) -> Result<MaskedBody, WalkError> {
    let mut masked = mask_json_response(engine, body, thinking)?;
    let Some(map) = restore else {
        return Ok(masked);
    };
    if !masked.refusals.is_empty() {
        return Ok(masked);
    }
    let current = masked.body.as_deref().unwrap_or(body);
    if memchr::memmem::find(current, b"[MASKED:").is_none() {
        return Ok(masked);
    }
    let Some(mut message) = lenient_value(current) else {
        return Ok(masked);
    };
    let done = restore_message(engine, &mut message, map);
    masked.restored = done.restored;
    masked.findings.append(done.findings);
    if done.changed {
        let tools_left = message
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|blocks| {
                blocks.iter().any(|b| {
                    let kind = b.get("type").and_then(Value::as_str).unwrap_or_default();
                    is_tool_like(kind, b.get("input").is_some())
                })
            });
        if !done.blocked.is_empty()
            && !tools_left
            && message.get("stop_reason").and_then(Value::as_str) == Some("tool_use")
        {
            message["stop_reason"] = json!("end_turn");
        }
        masked.blocked_tools.extend(done.blocked);
        masked.body = Some(serde_json::to_vec(&message).unwrap_or_default());
    }
    Ok(masked)
}

/// Mask a complete JSON response body (non-streaming Messages response, batch object, model
/// list, error). The body is read as a lenient client reads it (a byte-order mark, `NaN`);
/// tool calls (any tool-like block) are judged whole with the `tool_input` rules first, and
/// thinking is masked like any other text. The `ThinkingMode` is no longer consulted for
/// responses: the client always gets masked thinking.
pub fn mask_json_response(
    engine: &Engine,
    body: &[u8],
    _thinking: ThinkingMode,
) -> Result<MaskedBody, WalkError> {
    let options = WalkOptions {
        scope: Scope::Response,
        thinking: ThinkingMode::Mask,
        lenient: true,
    };
    let mut masked = MaskedBody::default();
    let mut rewritten: Option<Vec<u8>> = None;
    let mut thinking_before = Vec::new();
    if let Some(mut message) = lenient_value(body) {
        thinking_before = thinking_texts(&message);
        let tools = judge_message_tools(engine, &mut message);
        if tools.changed {
            rewritten = Some(serde_json::to_vec(&message).unwrap_or_default());
        }
        masked.findings = tools.findings;
        masked.blocked_tools = tools.blocked;
    }
    // A byte-order mark is skipped as lenient readers skip it (the walker's own leniency
    // covers `NaN`/`Infinity`); an unchanged body still goes out as its original bytes.
    let unmarked = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let source = rewritten.as_deref().unwrap_or(unmarked);
    let walked = mask_json(engine, source, &options)?;
    masked.findings.append(walked.findings);
    masked.refusals = walked.refusals;
    masked.body = walked.body.or(rewritten);
    if let (Some(after), false) = (&masked.body, thinking_before.is_empty()) {
        let after = lenient_value(after)
            .map(|v| thinking_texts(&v))
            .unwrap_or_default();
        for (index, signature, original) in thinking_before {
            let unchanged = after
                .iter()
                .any(|(i, _, text)| *i == index && *text == original);
            if !unchanged && original.len() <= MAX_THINKING_ORIGINAL_BYTES {
                masked.thinking_originals.push(ThinkingOriginal {
                    signature,
                    original,
                });
            }
        }
    }
    Ok(masked)
}

/// (index, signature, thinking) of every thinking block of a message.
fn thinking_texts(message: &Value) -> Vec<(usize, String, String)> {
    let Some(content) = message.get("content").and_then(Value::as_array) else {
        return Vec::new();
    };
    content
        .iter()
        .enumerate()
        .filter(|(_, block)| block.get("type").and_then(Value::as_str) == Some("thinking"))
        .filter_map(|(index, block)| {
            let text = block.get("thinking")?.as_str()?;
            let signature = block.get("signature").and_then(Value::as_str).unwrap_or("");
            Some((index, signature.to_string(), text.to_string()))
        })
        .collect()
}

/// The texts a client joins across blocks: one masker each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Text,
    Thinking,
}

impl Which {
    fn delta_type(self) -> &'static str {
        match self {
            Which::Text => "text_delta",
            Which::Thinking => "thinking_delta",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Which::Text => "text",
            Which::Thinking => "thinking",
        }
    }
}

/// One joined text: its masker (opened on first use) and the block whose text it holds.
#[derive(Default)]
struct Channel {
    masker: Option<StreamMasker>,
    holder: Option<u64>,
}

struct ThinkingState {
    original: String,
    over_cap: bool,
    changed: bool,
    signature: String,
}

enum Kind {
    Text,
    Thinking(Box<ThinkingState>),
    /// A tool call buffered to its stop: its (scanned) start without `input`, the `input` the
    /// start carried, and the input pieces.
    Tool {
        start: Value,
        input: Option<Value>,
        partial_json: String,
    },
    /// Any other block: its deltas' string fields are streamed through `generic` maskers.
    Other,
}

impl Kind {
    /// A thinking block just started, with the signature its start carried.
    fn thinking(signature: String) -> Kind {
        Kind::Thinking(Box::new(ThinkingState {
            original: String::new(),
            over_cap: false,
            changed: false,
            signature,
        }))
    }
}

struct OpenBlock {
    kind: Kind,
    /// (delta type, field, masker) for the string fields of delta types the proxy does not
    /// know.
    generic: Vec<(String, String, StreamMasker)>,
}

/// A compact delta the framer let [`SseTransformer::push`] read in place; its text is a span of
/// the push's kept texts.
struct ClaimedDelta {
    index: u64,
    kind: DeltaKind,
    text: Range<usize>,
}

/// The text at `span` of `texts` (the claimed deltas' texts, one after another), when it is
/// UTF-8 on its own. `all` is all of `texts` when that is UTF-8: then a span is exactly when it
/// starts and ends on a character boundary, and nothing is read again.
fn claimed_text<'t>(texts: &'t [u8], all: Option<&'t str>, span: Range<usize>) -> Option<&'t str> {
    match all {
        Some(all) => all.get(span),
        None => std::str::from_utf8(texts.get(span)?).ok(),
    }
}

/// Consecutive compact deltas of one block's text (or thinking), gathered within one
/// [`SseTransformer::push`] to be masked as one piece.
struct DeltaRun {
    which: Which,
    index: u64,
    /// The deltas' texts, joined.
    text: String,
    /// The event itself while the run is one event long (a delta read in place has none: its
    /// template is its bytes).
    only: Option<Event>,
}

/// Why a stream was ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFault {
    Malformed(String),
    Oversized,
    /// A tool call's input grew past the cap before its block stopped.
    ToolInputTooLarge(usize),
    /// A finding where no placeholder fits (an id, `model`, `signature`, the event name):
    /// its rule and where it was.
    Refused {
        rule_id: String,
        path: String,
    },
}

const KNOWN_EVENTS: [&str; 8] = [
    "message_start",
    "message_delta",
    "message_stop",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "ping",
    "error",
];

/// Masks one SSE response. Feed it upstream bytes; it appends client bytes to `out`.
pub struct SseTransformer {
    engine: Arc<Engine>,
    framer: SseFramer,
    blocks: OpenBlocks,
    text: Channel,
    thinking: Channel,
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
    thinking_originals: Vec<ThinkingOriginal>,
    /// A tool call's input is buffered to its stop; this many bytes at most.
    max_tool_input_bytes: usize,
    /// The caller's placeholders to give back ([`SseTransformer::with_restore`]).
    restore: Option<Arc<RestoreMap>>,
    /// Restores the joined text after its masker, when the restore scopes include text.
    text_restorer: TextRestorer,
    restore_events: Vec<RestoreEvent>,
}

/// The default cap on one tool call's buffered input (`[masking] max_tool_input_bytes`).
pub const DEFAULT_MAX_TOOL_INPUT_BYTES: usize = 4 << 20;

impl SseTransformer {
    /// `thinking` is kept for the config's sake: thinking is always masked for the client now
    /// (its original is kept, see [`SseTransformer::take_thinking_originals`]).
    pub fn new(
        engine: Arc<Engine>,
        _thinking: ThinkingMode,
        max_event_bytes: usize,
    ) -> SseTransformer {
        SseTransformer {
            engine,
            framer: SseFramer::new(max_event_bytes),
            blocks: OpenBlocks::default(),
            text: Channel::default(),
            thinking: Channel::default(),
            blocked_tools: Vec::new(),
            tools_allowed: 0,
            saw_message_stop: false,
            fault: None,
            findings: Findings::new(),
            late_matches: 0,
            usage: Usage::default(),
            events: 0,
            scratch: Vec::new(),
            thinking_originals: Vec::new(),
            max_tool_input_bytes: DEFAULT_MAX_TOOL_INPUT_BYTES,
            restore: None,
            text_restorer: TextRestorer::new(),
            restore_events: Vec::new(),
        }
    }

    /// Give the caller's secrets back in what the client acts on: tool inputs (judged again
    /// with the `block` rules after restore) and, when the map's scopes say so, text.
    pub fn with_restore(mut self, map: Arc<RestoreMap>) -> SseTransformer {
        self.restore = Some(map);
        self
    }

    /// The placeholders met where restore applies so far, restored or not.
    pub fn take_restore_events(&mut self) -> Vec<RestoreEvent> {
        std::mem::take(&mut self.restore_events)
    }

    /// Put back the caller's placeholders in `piece` of block `index`'s text (held across
    /// calls when a placeholder may be cut; `flush` releases everything), when the restore
    /// scopes include text; `piece` as it is otherwise.
    fn restore_text(&mut self, index: u64, piece: Vec<u8>, flush: bool) -> Vec<u8> {
        let Some(map) = self.restore.as_deref().filter(|m| m.scopes().text) else {
            return piece;
        };
        let path = format!("content[{index}].text");
        let events = &mut self.restore_events;
        let mut out = self.text_restorer.push(map, &piece, &path, events);
        if flush {
            out.extend(self.text_restorer.flush(map, &path, events));
        }
        out
    }

    /// Caps one tool call's buffered input: beyond `bytes` the stream ends with an `error`
    /// event (a call cut short must not run, and one upstream must not grow the proxy).
    pub fn with_max_tool_input(mut self, bytes: usize) -> SseTransformer {
        self.max_tool_input_bytes = bytes;
        self
    }

    /// Whether a tool input of `len` bytes is over the cap; ends the stream when it is.
    fn tool_input_over_cap(&mut self, len: usize, out: &mut Vec<u8>) -> bool {
        if len <= self.max_tool_input_bytes {
            return false;
        }
        self.fail(
            StreamFault::ToolInputTooLarge(self.max_tool_input_bytes),
            out,
        );
        true
    }

    /// Flush and close every open block now (held text masked as at the end of the stream),
    /// before an upstream error that ends the stream is passed on: a framing whose error
    /// frame must come last (Bedrock's `exception`) calls this, then pushes the error event.
    pub fn close_before_upstream_error(&mut self, out: &mut Vec<u8>) {
        self.close_open_blocks(out);
    }

    /// End the stream because what carried it (a frame of a binary framing around the events)
    /// is malformed: open blocks are closed as for any fault and an `error` event follows.
    pub fn end_malformed(&mut self, why: &str, out: &mut Vec<u8>) {
        self.fail(StreamFault::Malformed(why.to_string()), out);
    }

    pub fn fault(&self) -> Option<&StreamFault> {
        self.fault.as_ref()
    }

    pub fn saw_message_stop(&self) -> bool {
        self.saw_message_stop
    }

    /// Secrets found after their start had been emitted: a secret split across two blocks
    /// (its head went out at the first block's stop), or a rule breaking its length contract.
    pub fn late_matches(&self) -> u64 {
        let open = |channel: &Channel| channel.masker.as_ref().map_or(0, |m| m.late_matches());
        self.late_matches + open(&self.text) + open(&self.thinking)
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

    /// The original text and signature of every finished thinking block whose text masking
    /// changed (at most [`MAX_THINKING_ORIGINAL_BYTES`] each), leaving none behind.
    pub fn take_thinking_originals(&mut self) -> Vec<ThinkingOriginal> {
        std::mem::take(&mut self.thinking_originals)
    }

    /// Bytes held back across all open blocks right now.
    pub fn held(&self) -> usize {
        let channel = |channel: &Channel| channel.masker.as_ref().map_or(0, StreamMasker::held);
        self.blocks
            .0
            .iter()
            .map(|(_, b)| {
                let generic: usize = b.generic.iter().map(|(_, _, m)| m.held()).sum();
                generic
                    + match &b.kind {
                        Kind::Tool { partial_json, .. } => partial_json.len(),
                        _ => 0,
                    }
            })
            .sum::<usize>()
            + channel(&self.text)
            + channel(&self.thinking)
            + self.framer.pending()
    }

    /// Feed upstream bytes. After a fault, input is ignored (the stream is over).
    ///
    /// Consecutive text (or thinking) deltas of one block that arrive in the same call are
    /// masked as one piece and go out as one delta: a reply read in one go pays the masker's
    /// fixed cost per call (a Hyperscan stream scan, a delta event written) once, not once per
    /// event. What the client joins is unchanged (streaming equals block), and nothing waits
    /// for later input: the run is flushed before any other event and at the end of the call.
    /// A run of one delta whose text goes out unchanged is forwarded as its original bytes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.fault.is_some() {
            return;
        }
        // Room for every event of the read (the API's smallest, a compact delta, is about 90
        // bytes) without growing the vector from four, moving them at each doubling.
        let mut events = Vec::with_capacity((self.framer.pending() + chunk.len()) / 80 + 2);
        // Compact deltas are read in place (no event of their own): their texts are kept here,
        // one after another, and checked as UTF-8 together.
        let mut claimed_texts = Vec::with_capacity(self.framer.pending() + chunk.len());
        // The events completed before a framing error are whole: they go out before it.
        let framed = self.framer.push_claiming(
            chunk,
            |buf| {
                let compact = CompactDelta::at_event_start(buf)?;
                let at = claimed_texts.len();
                claimed_texts.extend_from_slice(compact.text);
                Some((
                    compact.len,
                    ClaimedDelta {
                        index: compact.index,
                        kind: compact.kind,
                        text: at..claimed_texts.len(),
                    },
                ))
            },
            &mut events,
        );
        // Each text is UTF-8 exactly when all of them are and each starts and ends on a
        // character boundary; if not all are, each is checked alone.
        let all_texts = std::str::from_utf8(&claimed_texts).ok();
        let mut run = None;
        for framed in events {
            if self.fault.is_some() {
                break;
            }
            self.events += 1;
            let event = match framed {
                Framed::Event(event) => self.join_delta(event, &mut run, out),
                Framed::Claimed(delta) => {
                    // The texts claimed from here on are at most what a run started here
                    // collects in this read: its room, so it does not grow for them.
                    let room = claimed_texts.len() - delta.text.start;
                    let Some(text) = claimed_text(&claimed_texts, all_texts, delta.text) else {
                        // What came before it goes out first, as when the framer stops at
                        // such an event.
                        self.flush_run(&mut run, out);
                        let why = format!(
                            "the upstream sent a malformed stream ({})",
                            SseError::NotUtf8
                        );
                        self.fail(StreamFault::Malformed(why), out);
                        break;
                    };
                    // Not one to join here: the event it was, rebuilt from its template (its
                    // exact bytes, as the text has no escape), takes the general path.
                    let (index, kind) = (delta.index, delta.kind);
                    let joined = self.join_text(index, kind, text, room, &mut run, out);
                    joined.is_err().then(|| {
                        Event::new("content_block_delta", &kind.unescaped_data(index, text))
                    })
                }
            };
            if let Some(event) = event {
                self.flush_run(&mut run, out);
                self.on_event(event, out);
            }
        }
        self.flush_run(&mut run, out);
        match framed {
            Ok(()) => {}
            Err(SseError::EventTooLarge(_)) => self.fail(StreamFault::Oversized, out),
            Err(err) => self.fail(
                StreamFault::Malformed(format!("the upstream sent a malformed stream ({err})")),
                out,
            ),
        }
    }

    /// Takes a delta in the compact form the API sends for an open block of its kind: a text
    /// or thinking delta joins `run` (which is flushed first when it is another block's), a
    /// tool-input piece is buffered to its block's stop. Anything else is handed back for the
    /// general path ([`SseTransformer::on_event`]).
    fn join_delta(
        &mut self,
        event: Event,
        run: &mut Option<DeltaRun>,
        out: &mut Vec<u8>,
    ) -> Option<Event> {
        if event.name() != Some("content_block_delta") {
            return Some(event);
        }
        let Some(delta) = CompactDelta::parse(event.data()) else {
            return Some(event);
        };
        let joined = self.join_text(
            delta.index,
            delta.kind,
            &delta.text,
            delta.text.len(),
            run,
            out,
        );
        let Ok(started) = joined else {
            return Some(event);
        };
        drop(delta);
        if let (true, Some(run)) = (started, run.as_mut()) {
            run.only = Some(event);
        }
        None
    }

    /// [`SseTransformer::join_delta`] of a delta already read: `Err` when the delta is not one
    /// to join (no open block of its kind), `Ok(true)` when it started a new run, with room
    /// for `room` bytes of text (at least the text's own).
    fn join_text(
        &mut self,
        index: u64,
        kind: DeltaKind,
        text: &str,
        room: usize,
        run: &mut Option<DeltaRun>,
        out: &mut Vec<u8>,
    ) -> Result<bool, ()> {
        let which = match (kind, self.blocks.get_mut(index)) {
            (
                DeltaKind::TEXT,
                Some(OpenBlock {
                    kind: Kind::Text | Kind::Other,
                    ..
                }),
            ) => Which::Text,
            (
                DeltaKind::THINKING,
                Some(OpenBlock {
                    kind: Kind::Thinking(_),
                    ..
                }),
            ) => Which::Thinking,
            // Tool input is buffered to the block's stop and judged whole.
            (
                DeltaKind::INPUT_JSON,
                Some(OpenBlock {
                    kind: Kind::Tool { partial_json, .. },
                    ..
                }),
            ) => {
                partial_json.push_str(text);
                let len = partial_json.len();
                // An over-cap input ends the stream: what the run holds goes out before.
                self.flush_run(run, out);
                self.tool_input_over_cap(len, out);
                return Ok(false);
            }
            _ => return Err(()),
        };
        match run {
            Some(run) if run.which == which && run.index == index => {
                run.text.push_str(text);
                run.only = None;
                Ok(false)
            }
            _ => {
                self.flush_run(run, out);
                let mut joined = String::with_capacity(room.max(text.len()));
                joined.push_str(text);
                *run = Some(DeltaRun {
                    which,
                    index,
                    text: joined,
                    only: None,
                });
                Ok(true)
            }
        }
    }

    /// Mask a run's text through its channel and write what can go out now.
    fn flush_run(&mut self, run: &mut Option<DeltaRun>, out: &mut Vec<u8>) {
        let Some(DeltaRun {
            which,
            index,
            text,
            only,
            ..
        }) = run.take()
        else {
            return;
        };
        let mut emitted = std::mem::take(&mut self.scratch);
        emitted.clear();
        if self.channel_push(which, index, &text, &mut emitted, out) {
            match only {
                // Nothing held or masked: the event as it came (it carries nothing but the
                // delta, so everything in it was scanned).
                Some(event) if emitted.as_slice() == text.as_bytes() => event.write_to(out),
                _ if !emitted.is_empty() => write_delta_event(
                    out,
                    index,
                    which.delta_type(),
                    which.field(),
                    &text_of(&emitted),
                ),
                _ => {}
            }
        }
        self.scratch = emitted;
    }

    /// The upstream body ended (cleanly or not): flush every open block so nothing is held,
    /// masked as block mode would mask it. When the stream ended without `message_stop`, the
    /// client is told with an `error` event rather than left guessing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.fault.is_none() {
            match self.framer.finish() {
                // The body ended inside an event. An unterminated event is not canonical, so it
                // is re-encoded with its blank line when forwarded: nothing is glued to what
                // follows.
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
        if self.fault.is_some() {
            return;
        }
        // Set first: flushing below must not fail again.
        self.fault = Some(fault.clone());
        self.close_open_blocks(out);
        let message = match &fault {
            StreamFault::Oversized => {
                "streammask: the upstream sent an oversized event; the stream was ended".to_string()
            }
            StreamFault::Malformed(why) => format!("streammask: {why}; the stream was ended"),
            StreamFault::ToolInputTooLarge(cap) => format!(
                "streammask: a tool call's input exceeded {cap} bytes; the stream was ended"
            ),
            StreamFault::Refused { rule_id, path } => format!(
                "streammask: the response carried a secret (rule `{rule_id}`) in `{path}`, \
                 where it cannot be masked; the stream was ended"
            ),
        };
        out.extend(error_event("api_error", &message));
    }

    fn refuse(&mut self, fault: ScanFault, out: &mut Vec<u8>) {
        let fault = match fault {
            // The path is built from keys the upstream chose: it is quoted to the client only
            // once every rule's match in it is replaced.
            ScanFault::Refused { rule_id, path } => StreamFault::Refused {
                rule_id,
                path: self.engine.redact_all(&path).into_owned(),
            },
            ScanFault::Failed => StreamFault::Malformed("scanning failed".into()),
        };
        self.fail(fault, out);
    }

    /// Flush both joined texts, then end every open block: a tool call that never completed is
    /// dropped (a partial command must not run); every other block gets its stop.
    fn close_open_blocks(&mut self, out: &mut Vec<u8>) {
        self.flush_channel(Which::Text, out);
        self.flush_channel(Which::Thinking, out);
        for (index, block) in self.blocks.take_sorted() {
            if matches!(block.kind, Kind::Tool { .. }) {
                continue;
            }
            self.end_block(index, block, out);
            out.extend(encode_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}).to_string(),
            ));
        }
    }

    /// A text or thinking or other block's end (its channel already flushed): flush its
    /// generic maskers, keep its thinking original.
    fn end_block(&mut self, index: u64, block: OpenBlock, out: &mut Vec<u8>) {
        for (delta_type, field, mut masker) in block.generic {
            let mut tail = Vec::new();
            let finished = masker.finish(&mut tail);
            self.collect(index, &mut masker);
            if finished.is_err() {
                self.fail(StreamFault::Malformed("masking failed".into()), out);
                continue;
            }
            if !tail.is_empty() {
                let mut delta = serde_json::Map::new();
                delta.insert("type".into(), Value::String(delta_type));
                delta.insert(field, Value::String(String::from_utf8_lossy(&tail).into()));
                let event = json!({"type": "content_block_delta", "index": index, "delta": delta});
                out.extend(encode_event("content_block_delta", &event.to_string()));
            }
        }
        if let Kind::Thinking(state) = block.kind {
            if state.changed && !state.over_cap {
                self.thinking_originals.push(ThinkingOriginal {
                    signature: state.signature,
                    original: state.original,
                });
            }
        }
    }

    fn collect(&mut self, index: u64, masker: &mut StreamMasker) {
        self.late_matches += masker.late_matches();
        let path = format!("content[{index}]");
        for finding in masker.take_findings() {
            self.findings.push(path.as_str(), finding);
        }
    }

    fn channel(&mut self, which: Which) -> &mut Channel {
        match which {
            Which::Text => &mut self.text,
            Which::Thinking => &mut self.thinking,
        }
    }

    /// Move the channel's new findings to the stream's, under `index`; a rewritten one marks
    /// that thinking block as changed.
    fn drain_channel_findings(&mut self, which: Which, index: u64) {
        let Some(masker) = self.channel(which).masker.as_mut() else {
            return;
        };
        if masker.findings().is_empty() {
            return;
        }
        let found = masker.take_findings();
        let rewritten = found.iter().any(|f| f.rewritten);
        let path = format!("content[{index}]");
        for finding in found {
            self.findings.push(path.as_str(), finding);
        }
        if rewritten {
            if let Some(OpenBlock {
                kind: Kind::Thinking(state),
                ..
            }) = self.blocks.get_mut(index)
            {
                state.changed = true;
            }
        }
    }

    /// Emit what the channel holds as a delta of the block it holds it for.
    fn flush_channel(&mut self, which: Which, out: &mut Vec<u8>) {
        let channel = self.channel(which);
        let Some(holder) = channel.holder.take() else {
            return;
        };
        let Some(masker) = channel.masker.as_mut() else {
            return;
        };
        let mut tail = Vec::new();
        let flushed = masker.flush(&mut tail);
        self.drain_channel_findings(which, holder);
        if flushed.is_err() {
            self.fail(StreamFault::Malformed("masking failed".into()), out);
            return;
        }
        if which == Which::Text {
            tail = self.restore_text(holder, tail, true);
        }
        if !tail.is_empty() {
            write_delta_event(
                out,
                holder,
                which.delta_type(),
                which.field(),
                &String::from_utf8_lossy(&tail),
            );
        }
    }

    /// Push a piece of block `index`'s text into its channel; the masked text that can go out
    /// now is left in `emitted`. Text another block left held is flushed to that block first.
    fn channel_push(
        &mut self,
        which: Which,
        index: u64,
        text: &str,
        emitted: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        if self.channel(which).holder.is_some_and(|h| h != index) {
            self.flush_channel(which, out);
        }
        if which == Which::Thinking {
            if let Some(OpenBlock {
                kind: Kind::Thinking(state),
                ..
            }) = self.blocks.get_mut(index)
            {
                if !state.over_cap {
                    if state.original.len() + text.len() > MAX_THINKING_ORIGINAL_BYTES {
                        state.over_cap = true;
                        state.original = String::new();
                    } else {
                        state.original.push_str(text);
                    }
                }
            }
        }
        if self.channel(which).masker.is_none() {
            match self.engine.stream(Scope::Response) {
                Ok(masker) => self.channel(which).masker = Some(masker),
                Err(_) => {
                    self.fail(
                        StreamFault::Malformed("a masking stream could not be opened".into()),
                        out,
                    );
                    return false;
                }
            }
        }
        let channel = self.channel(which);
        channel.holder = Some(index);
        let pushed = channel
            .masker
            .as_mut()
            .map(|masker| masker.push(text.as_bytes(), emitted));
        self.drain_channel_findings(which, index);
        if !matches!(pushed, Some(Ok(()))) {
            self.fail(StreamFault::Malformed("masking failed".into()), out);
            return false;
        }
        if which == Which::Text && self.restore.is_some() {
            let masked = std::mem::take(emitted);
            *emitted = self.restore_text(index, masked, false);
        }
        true
    }

    fn on_event(&mut self, event: Event, out: &mut Vec<u8>) {
        if event.is_empty() {
            self.forward_as_text(&event, out);
            return;
        }
        let (name, data) = (event.name(), event.data());
        // Compact deltas were taken by `join_delta`; the rest is mostly events of one fixed
        // shape: recognise those in the compact form the API sends without building a `Value`
        // tree. Anything else (other spacing, extra fields, other events) takes the general
        // path.
        match (name, data) {
            (Some("ping"), r#"{"type":"ping"}"#) => return event.write_to(out),
            (Some("message_stop"), r#"{"type":"message_stop"}"#) => {
                self.close_open_blocks(out);
                self.saw_message_stop = true;
                return event.write_to(out);
            }
            (Some("content_block_start"), data) => {
                if let Some((index, block_type)) = compact_block_start(data) {
                    if self.blocks.get_mut(index).is_none() {
                        let kind = match block_type {
                            "thinking" => Kind::thinking(String::new()),
                            _ => Kind::Text,
                        };
                        self.blocks.insert(index, kind);
                        return event.write_to(out);
                    }
                }
            }
            (Some("content_block_stop"), data) => {
                if let Some(index) = compact_block_stop(data) {
                    let mut stop = Vec::new();
                    event.write_to(&mut stop);
                    return self.on_block_stop(index, stop, out);
                }
            }
            _ => {}
        }
        // The event name is on the wire too; one the client does not know is scanned.
        if let Some(name) = name.filter(|name| !KNOWN_EVENTS.contains(name)) {
            let mut name_text = Value::String(name.to_string());
            let mut found = Findings::new();
            let scanned = scan_value(&self.engine, &mut name_text, "", &mut found);
            let refused = found.iter().find(|f| f.finding.rewritten).cloned();
            self.findings.append(found);
            if let Some(located) = refused {
                return self.refuse(
                    ScanFault::Refused {
                        rule_id: located.finding.rule_id,
                        path: "(event name)".into(),
                    },
                    out,
                );
            }
            if let Err(fault) = scanned {
                return self.refuse(fault, out);
            }
        }
        // A content block event needs its tree (index, block); most others pass as they came,
        // once scanned clean without one.
        let block_event = matches!(
            name,
            Some("content_block_start" | "content_block_delta" | "content_block_stop")
        );
        if !block_event {
            if let Some(clean) = scan_clean(&self.engine, data) {
                if self.on_clean_event(clean, &event, out) {
                    return;
                }
            }
        }
        let Ok(data) = parse_strict(data) else {
            self.fail(
                StreamFault::Malformed(
                    "the upstream sent an event whose data is not JSON or repeats a key".into(),
                ),
                out,
            );
            return;
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "content_block_start" | "content_block_delta" | "content_block_stop" => {
                // Only an exact integer index says which block the client will touch.
                let Some(index) = data.get("index").and_then(Value::as_u64) else {
                    self.fail(
                        StreamFault::Malformed(format!(
                            "the upstream sent a {kind} without an integer index"
                        )),
                        out,
                    );
                    return;
                };
                match kind.as_str() {
                    "content_block_start" => self.on_block_start(index, data, &event, out),
                    "content_block_delta" => self.on_block_delta(index, data, &event, out),
                    _ => {
                        let mut stop = Vec::new();
                        if self.forward_scanned(&event, data, &mut stop) {
                            self.on_block_stop(index, stop, out);
                        }
                    }
                }
            }
            "message_delta" => self.on_message_delta(data, &event, out),
            "message_start" => {
                self.record_usage(data.get("message").and_then(|v| v.get("usage")));
                self.forward_scanned(&event, data, out);
            }
            "message_stop" => {
                self.close_open_blocks(out);
                self.saw_message_stop = true;
                self.forward_scanned(&event, data, out);
            }
            _ => {
                self.forward_scanned(&event, data, out);
            }
        }
    }

    /// A document [`scan_clean`] passed: forwarded as it came, with what the tree path would
    /// have recorded from it. `false` when it needs the tree path after all (a content block
    /// event under another name; a tool-use stop that must be rewritten).
    fn on_clean_event(&mut self, clean: CleanDocument, event: &Event, out: &mut Vec<u8>) -> bool {
        match clean.kind.as_deref() {
            Some("content_block_start" | "content_block_delta" | "content_block_stop") => {
                return false
            }
            Some("message_start") => self.usage.update(clean.message_usage),
            Some("message_delta") => {
                if clean.stop_reason.as_deref() == Some("tool_use") && self.hides_tool_use_stop() {
                    return false;
                }
                self.usage.update(clean.usage);
            }
            Some("message_stop") => {
                self.close_open_blocks(out);
                self.saw_message_stop = true;
            }
            _ => {}
        }
        event.write_to(out);
        true
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

    /// Scan every key and string of the event's data: forward the original event when nothing
    /// changed, else the masked data. Returns false (the stream ended) on a refusal.
    fn forward_scanned(&mut self, event: &Event, mut data: Value, out: &mut Vec<u8>) -> bool {
        let path = event.name().unwrap_or("event").to_string();
        match scan_value(&self.engine, &mut data, &path, &mut self.findings) {
            Ok(false) => event.write_to(out),
            Ok(true) => write_event(out, event.name(), &data.to_string()),
            Err(fault) => {
                self.refuse(fault, out);
                return false;
            }
        }
        true
    }

    fn on_block_start(&mut self, index: u64, mut data: Value, event: &Event, out: &mut Vec<u8>) {
        let Some(block_type) = data
            .get("content_block")
            .and_then(|v| v.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return self.fail(
                StreamFault::Malformed("a content block started without a type".into()),
                out,
            );
        };
        if self.blocks.get_mut(index).is_some() {
            return self.fail(
                StreamFault::Malformed(format!("content block {index} was started twice")),
                out,
            );
        }
        let path = format!("content_block_start[{index}]");
        let Some(block) = data.get_mut("content_block").and_then(Value::as_object_mut) else {
            return self.fail(
                StreamFault::Malformed("a content block start without a block".into()),
                out,
            );
        };
        if is_tool_like(&block_type, block.contains_key("input")) {
            // The input is judged whole at the stop, with the pieces that follow.
            let input = block
                .get_mut("input")
                .map(|v| std::mem::replace(v, json!({})));
            if let Err(fault) = scan_value(&self.engine, &mut data, &path, &mut self.findings) {
                return self.refuse(fault, out);
            }
            self.blocks.insert(
                index,
                Kind::Tool {
                    start: data,
                    input,
                    partial_json: String::new(),
                },
            );
            return;
        }
        let which = match block_type.as_str() {
            "text" => Some(Which::Text),
            "thinking" => Some(Which::Thinking),
            _ => None,
        };
        let Some(which) = which else {
            if self.forward_scanned(event, data, out) {
                self.blocks.insert(index, Kind::Other);
            }
            return;
        };
        // The start usually carries empty text; if not, its text joins the stream.
        let initial = match block.get_mut(which.field()) {
            Some(Value::String(text)) => std::mem::take(text),
            _ => String::new(),
        };
        let signature = block
            .get("signature")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let changed = match scan_value(&self.engine, &mut data, &path, &mut self.findings) {
            Ok(changed) => changed,
            Err(fault) => return self.refuse(fault, out),
        };
        let kind = match which {
            Which::Text => Kind::Text,
            Which::Thinking => Kind::thinking(signature),
        };
        self.blocks.insert(index, kind);
        if initial.is_empty() && !changed {
            return event.write_to(out);
        }
        out.extend(encode_event("content_block_start", &data.to_string()));
        if !initial.is_empty() {
            let mut emitted = Vec::new();
            if !self.channel_push(which, index, &initial, &mut emitted, out) {
                return;
            }
            if !emitted.is_empty() {
                write_delta_event(
                    out,
                    index,
                    which.delta_type(),
                    which.field(),
                    &text_of(&emitted),
                );
            }
        }
    }

    fn on_block_delta(&mut self, index: u64, mut data: Value, event: &Event, out: &mut Vec<u8>) {
        let Some(delta_kind) = data
            .get("delta")
            .and_then(|v| v.get("type"))
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return self.fail(
                StreamFault::Malformed("a content block delta without a type".into()),
                out,
            );
        };
        let Some(block) = self.blocks.get_mut(index) else {
            return self.fail(
                StreamFault::Malformed(format!(
                    "the upstream sent a delta for content block {index}, which was not started"
                )),
                out,
            );
        };
        let which = match (delta_kind.as_str(), &mut block.kind) {
            ("text_delta", Kind::Text | Kind::Other) => Some(Which::Text),
            ("thinking_delta", Kind::Thinking(_)) => Some(Which::Thinking),
            ("input_json_delta", Kind::Tool { partial_json, .. }) => {
                let Some(piece) = data
                    .get("delta")
                    .and_then(|v| v.get("partial_json"))
                    .and_then(Value::as_str)
                else {
                    return self.fail(
                        StreamFault::Malformed("an input_json_delta without its input".into()),
                        out,
                    );
                };
                // The rest of the event is not forwarded: the call is re-emitted whole.
                partial_json.push_str(piece);
                let len = partial_json.len();
                self.tool_input_over_cap(len, out);
                return;
            }
            ("signature_delta", Kind::Thinking(_)) => {
                let signature = data
                    .get("delta")
                    .and_then(|v| v.get("signature"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if self.forward_scanned(event, data, out) {
                    if let Some(OpenBlock {
                        kind: Kind::Thinking(state),
                        ..
                    }) = self.blocks.get_mut(index)
                    {
                        state.signature = signature;
                    }
                }
                return;
            }
            (
                "text_delta" | "thinking_delta" | "input_json_delta" | "signature_delta",
                Kind::Text | Kind::Thinking(_) | Kind::Tool { .. },
            ) => {
                return self.fail(
                    StreamFault::Malformed(format!(
                        "the upstream sent a {delta_kind} for a block of another kind"
                    )),
                    out,
                )
            }
            _ => None,
        };
        let Some(which) = which else {
            return self.generic_delta(index, delta_kind, data, event, out);
        };
        let field = which.field();
        let text = match data.pointer_mut(&format!("/delta/{field}")) {
            Some(Value::String(text)) => std::mem::take(text),
            _ => {
                return self.fail(
                    StreamFault::Malformed(format!("a {delta_kind} without its {field}")),
                    out,
                )
            }
        };
        // Everything beside the text is scanned whole.
        let plain = only_delta_fields(&data, field);
        let path = format!("content_block_delta[{index}]");
        if let Err(fault) = scan_value(&self.engine, &mut data, &path, &mut self.findings) {
            return self.refuse(fault, out);
        }
        let mut emitted = Vec::with_capacity(text.len() + 16);
        if !self.channel_push(which, index, &text, &mut emitted, out) {
            return;
        }
        if plain && emitted.as_slice() == text.as_bytes() {
            event.write_to(out);
        } else if plain {
            if !emitted.is_empty() {
                write_delta_event(out, index, which.delta_type(), field, &text_of(&emitted));
            }
        } else {
            data["delta"][field] = Value::String(String::from_utf8_lossy(&emitted).into_owned());
            write_event(out, event.name(), &data.to_string());
        }
    }

    /// A delta of a kind the proxy does not know (or `citations_delta`): each top-level string
    /// field of the delta is streamed through a masker of its own, everything else is scanned
    /// whole.
    fn generic_delta(
        &mut self,
        index: u64,
        delta_kind: String,
        mut data: Value,
        event: &Event,
        out: &mut Vec<u8>,
    ) {
        let mut streamed: Vec<(String, String)> = Vec::new();
        if let Some(delta) = data.get_mut("delta").and_then(Value::as_object_mut) {
            for (key, value) in delta.iter_mut() {
                if key == "type" {
                    continue;
                }
                if let Value::String(text) = value {
                    streamed.push((key.clone(), std::mem::take(text)));
                }
            }
        }
        let path = format!("content_block_delta[{index}]");
        let mut changed = match scan_value(&self.engine, &mut data, &path, &mut self.findings) {
            Ok(changed) => changed,
            Err(fault) => return self.refuse(fault, out),
        };
        let engine = Arc::clone(&self.engine);
        for (field, text) in streamed {
            let Some(block) = self.blocks.get_mut(index) else {
                return;
            };
            let position = block
                .generic
                .iter()
                .position(|(t, f, _)| *t == delta_kind && *f == field);
            let position = match position {
                Some(position) => position,
                None => match engine.stream(Scope::Response) {
                    Ok(masker) => {
                        block
                            .generic
                            .push((delta_kind.clone(), field.clone(), masker));
                        block.generic.len() - 1
                    }
                    Err(_) => {
                        return self.fail(
                            StreamFault::Malformed("a masking stream could not be opened".into()),
                            out,
                        )
                    }
                },
            };
            let mut emitted = Vec::new();
            let masker = &mut block.generic[position].2;
            let pushed = masker.push(text.as_bytes(), &mut emitted);
            let mut masker_findings = masker.take_findings();
            if pushed.is_err() {
                return self.fail(StreamFault::Malformed("masking failed".into()), out);
            }
            let path = format!("content[{index}].{field}");
            for finding in masker_findings.drain(..) {
                self.findings.push(path.as_str(), finding);
            }
            changed |= emitted.as_slice() != text.as_bytes();
            data["delta"][field.as_str()] =
                Value::String(String::from_utf8_lossy(&emitted).into_owned());
        }
        if changed {
            write_event(out, event.name(), &data.to_string());
        } else {
            event.write_to(out);
        }
    }

    /// A block's stop (`stop` is the scanned stop event, ready to write).
    fn on_block_stop(&mut self, index: u64, stop: Vec<u8>, out: &mut Vec<u8>) {
        for which in [Which::Text, Which::Thinking] {
            if self.channel(which).holder == Some(index) {
                self.flush_channel(which, out);
            }
        }
        match self.blocks.remove(index) {
            Some(OpenBlock {
                kind:
                    Kind::Tool {
                        start,
                        input,
                        partial_json,
                    },
                ..
            }) => self.emit_tool(index, start, input, &partial_json, &stop, out),
            Some(block) => {
                self.end_block(index, block, out);
                out.extend_from_slice(&stop);
            }
            None => out.extend_from_slice(&stop),
        }
    }

    fn emit_tool(
        &mut self,
        index: u64,
        start: Value,
        input: Option<Value>,
        partial_json: &str,
        stop: &[u8],
        out: &mut Vec<u8>,
    ) {
        // What the client ends up with: the pieces when there are any (the SDK replaces the
        // start's input with them), else the input the start carried.
        let whole = if partial_json.trim().is_empty() {
            input
                .as_ref()
                .map(|v| serde_json::to_string(v).unwrap_or_default())
                .unwrap_or_default()
        } else {
            partial_json.to_string()
        };
        let at = format!("content[{index}]");
        let (mut verdict, findings) = judge_tool_input(&self.engine, whole.as_bytes(), &at);
        self.findings.append(findings);
        if let ToolVerdict::Allow(masked) = verdict {
            let name = start
                .get("content_block")
                .and_then(|v| v.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (after, findings) = restore_allowed_input(
                &self.engine,
                self.restore.as_deref(),
                name,
                masked,
                &at,
                &mut self.restore_events,
            );
            self.findings.append(findings);
            verdict = after;
        }
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
                out.extend_from_slice(stop);
            }
            ToolVerdict::Block(refusal) => {
                let name = start
                    .get("content_block")
                    .and_then(|v| v.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("tool");
                let text = refusal.client_text(&self.engine, name);
                self.blocked_tools.push(refusal);
                let start = json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}});
                out.extend(encode_event("content_block_start", &start.to_string()));
                write_delta_event(out, index, "text_delta", "text", &text);
                out.extend_from_slice(stop);
            }
        }
    }

    /// Whether a `tool_use` stop is turned into `end_turn`: every tool call of the response
    /// was blocked, so the client has none to run.
    fn hides_tool_use_stop(&self) -> bool {
        !self.blocked_tools.is_empty() && self.tools_allowed == 0
    }

    fn on_message_delta(&mut self, mut data: Value, event: &Event, out: &mut Vec<u8>) {
        self.record_usage(data.get("usage"));
        let stop_is_tool_use = data
            .get("delta")
            .and_then(|v| v.get("stop_reason"))
            .and_then(Value::as_str)
            == Some("tool_use");
        if stop_is_tool_use && self.hides_tool_use_stop() {
            data["delta"]["stop_reason"] = json!("end_turn");
            let rewritten = Event::new("message_delta", &data.to_string());
            self.forward_scanned(&rewritten, data, out);
        } else {
            self.forward_scanned(event, data, out);
        }
    }
}

/// Whether a delta event (its text field taken out) holds only `type`, `index` and
/// `delta: {type, <field>}`.
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
struct OpenBlocks(Vec<(u64, OpenBlock)>);

impl OpenBlocks {
    fn insert(&mut self, index: u64, kind: Kind) {
        let block = OpenBlock {
            kind,
            generic: Vec::new(),
        };
        match self.get_mut(index) {
            Some(open) => *open = block,
            None => {
                // Most replies hold one block open at a time; the first push would otherwise
                // reserve four for the life of the stream.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.push((index, block));
            }
        }
    }

    fn get_mut(&mut self, index: u64) -> Option<&mut OpenBlock> {
        self.0
            .iter_mut()
            .find(|(open, _)| *open == index)
            .map(|(_, block)| block)
    }

    fn remove(&mut self, index: u64) -> Option<OpenBlock> {
        let position = self.0.iter().position(|(open, _)| *open == index)?;
        Some(self.0.remove(position).1)
    }

    /// Every open block, in index order, leaving none open.
    fn take_sorted(&mut self) -> Vec<(u64, OpenBlock)> {
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
