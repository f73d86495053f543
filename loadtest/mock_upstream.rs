//! `streammask-mock`: a mock of the Anthropic Messages API. It is the upstream for
//! streammask's integration tests and for the load benchmark that compares nginx pass-through
//! against the proxy.
//!
//! This binary does not link the `streammask` library. It has to keep building while `src/`
//! changes, and it must stay a neutral reference that shares no code with the proxy it tests.
//!
//! # Guarantees
//!
//! * **Wire format.** `POST /v1/messages` answers with the same JSON message shape and the same
//!   SSE grammar as the real API: `message_start`, `ping`, then for each block
//!   `content_block_start`, deltas, `content_block_stop`, then `message_delta` and
//!   `message_stop`. A script can add a mid-stream `event: error`. Every `data:` line is one
//!   complete JSON document, except under `kind: garbage`, which exists to break that. The
//!   `text_delta`/`thinking_delta` pieces of a block concatenate to the block's text. The
//!   `input_json_delta.partial_json` pieces concatenate to the tool input's JSON text, which
//!   parses back to the scripted input.
//! * **Legal but awkward framing.** Deltas are cut at random *character* boundaries (never
//!   inside a UTF-8 sequence). By default a streamed response goes out as many small writes
//!   (TCP_NODELAY, 1..=64 bytes). Those writes do not line up with event, line, chunk or
//!   header boundaries, so the proxy under test has to reassemble them.
//! * **Determinism.** With `--seed N`, ids, delta sizes and write sizes depend only on the seed
//!   and the API-request sequence number. `POST /_mock/reset` sets that number back to 0.
//! * **Observability.** Every API request (any path outside `/_mock/`) is counted. Unless
//!   `--no-record` is given, it is also recorded verbatim. Control-plane traffic is never counted
//!   or recorded, so tests can inspect the mock without disturbing what they measure.
//! * **Exact fault injection.** `disconnect_after_events` writes exactly N whole events and
//!   `disconnect_after_bytes` writes exactly N entity bytes. In both cases the socket is then
//!   closed without finishing the HTTP message. The one exception is a body shorter than N
//!   bytes: it is sent complete, and the connection is closed after it anyway.
//!
//! `loadtest/README.md` documents the control plane and the reply-script language.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
const DEFAULT_THINKING: &str = "Let me think about how to answer this.";
const DEFAULT_MAX_DELTA: usize = 12;
const DEFAULT_MAX_WRITE: usize = 64;
const MAX_HEADERS: usize = 128;
const MAX_HEAD_BYTES: usize = 64 * 1024;
// Large enough for any realistic Claude Code request (long conversations with images), small
// enough that a runaway client cannot make the mock eat the host's memory.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";
const JSONL_CONTENT_TYPE: &str = "application/x-jsonl";

/// (id, display_name, created_at). The default model comes first because clients and tests
/// take `data[0]` as the default.
const MODELS: &[(&str, &str, &str)] = &[
    (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "2025-10-01T00:00:00Z",
    ),
    ("claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
];

#[derive(Parser, Debug)]
#[command(
    name = "streammask-mock",
    about = "Mock Anthropic Messages API upstream for streammask tests and load benchmarks"
)]
struct Cli {
    /// Address to listen on. Use port 0 for an ephemeral port; the bound address is printed as
    /// `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Seed for ids, delta sizes and write splits. Random if omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the bound port (decimal, no newline) to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Do not keep received requests in memory (for load tests; /_mock/received stays empty).
    #[arg(long)]
    no_record: bool,
    /// Make `split_writes` default to off for streamed responses too (scripts can still turn
    /// it on). Benchmarks need this when they cannot inject an `x-mock-script` header.
    #[arg(long)]
    no_split_writes: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .context("building tokio runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&cli.listen)
            .await
            .with_context(|| format!("binding {}", cli.listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(
            addr,
            cli.seed.unwrap_or_else(rand::random),
            !cli.no_record,
            !cli.no_split_writes,
        ));
        if let Some(path) = &cli.port_file {
            write_port_file(path, addr.port())?;
        }
        // Announce last: a harness that waits for this line can connect right away.
        println!("listening on {addr}");
        io::stdout().flush()?;
        serve(listener, state).await;
        Ok(())
    })
}

/// Writes to a temporary file and renames it, so a test polling for the file never reads it
/// half-written.
fn write_port_file(path: &Path, port: u16) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, port.to_string()).with_context(|| format!("writing {tmp:?}"))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

struct State {
    local_addr: SocketAddr,
    base_seed: u64,
    record: bool,
    default_split: bool,
    /// API-request sequence number. Per-request RNGs are derived from it, which is what makes a
    /// seeded run reproducible.
    seq: AtomicU64,
    connections: AtomicU64,
    requests: AtomicU64,
    /// API responses whose write failed because the peer had gone away (a client, or a proxy,
    /// that closed the connection before the response was complete).
    aborted_streams: AtomicU64,
    queue: Mutex<VecDeque<Script>>,
    received: Mutex<Vec<Received>>,
    batches: Mutex<HashMap<String, Batch>>,
}

impl State {
    fn new(local_addr: SocketAddr, base_seed: u64, record: bool, default_split: bool) -> Self {
        State {
            local_addr,
            base_seed,
            record,
            default_split,
            seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            aborted_streams: AtomicU64::new(0),
            queue: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            batches: Mutex::new(HashMap::new()),
        }
    }

    fn next_rng(&self) -> Rng {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Rng::new(self.base_seed ^ seq.wrapping_mul(0xA076_1D64_78BD_642F))
    }
}

/// A panic while one of these locks was held must not take the whole mock down with it. The
/// data under each lock stays consistent after any single operation, so a poisoned lock is
/// safe to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize)]
struct Received {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
}

struct Batch {
    id: String,
    created_at: String,
    expires_at: String,
    /// (custom_id, params, serialized length of params)
    items: Vec<(String, Value, usize)>,
    /// Results are generated on the first GET of `/results`, not at creation. A test can
    /// therefore create the batch first and script the replies afterwards. Later GETs return
    /// the same bytes.
    results: Option<Vec<u8>>,
    succeeded: usize,
    errored: usize,
}

// ---------------------------------------------------------------------------------------------
// Reply scripts
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
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
struct Script {
    /// Only a request this matches may take the script from the queue (see `take_script`).
    #[serde(rename = "match")]
    when: Option<ScriptMatch>,
    kind: Option<Kind>,
    text: Option<String>,
    thinking: Option<String>,
    tool: Option<ToolSpec>,
    tools: Option<Vec<ToolSpec>>,
    status: Option<u16>,
    error_type: Option<String>,
    message: Option<String>,
    stop_reason: Option<String>,
    sse_error_after_events: Option<usize>,
    disconnect_after_events: Option<usize>,
    disconnect_after_bytes: Option<usize>,
    rst: Option<bool>,
    delay_ms: Option<u64>,
    first_byte_delay_ms: Option<u64>,
    gzip: Option<bool>,
    chunked: Option<bool>,
    max_delta: Option<usize>,
    max_write: Option<usize>,
    split_writes: Option<bool>,
    raw: Option<String>,
    oversized_event_bytes: Option<usize>,
    crlf: Option<bool>,
    usage: Option<UsageSpec>,
}

/// Conditions on the request body. Every condition given must hold.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ScriptMatch {
    /// `true`: the body has a non-empty `tools` array; `false`: it has none (or an empty one).
    has_tools: Option<bool>,
    /// The request's `stream` flag (absent counts as `false`).
    stream: Option<bool>,
    /// The raw request body contains this string.
    body_contains: Option<String>,
    /// The raw request body does not contain this string.
    body_lacks: Option<String>,
}

impl ScriptMatch {
    fn matches(&self, body: &Value, raw: &[u8]) -> bool {
        let has_tools = body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
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
fn take_script(state: &State, body: &Value, raw: &[u8]) -> Option<Script> {
    let mut queue = lock(&state.queue);
    let position = queue
        .iter()
        .position(|s| s.when.as_ref().is_none_or(|m| m.matches(body, raw)))?;
    queue.remove(position)
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    #[serde(default = "default_tool_name")]
    name: String,
    #[serde(default = "empty_object")]
    input: Value,
    id: Option<String>,
}

fn default_tool_name() -> String {
    "Bash".to_owned()
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
struct UsageSpec {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Output wire types (field order matches the real API, which serde keeps for structs)
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
struct UsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<BlockOut<'a>>,
    stop_reason: Option<&'a str>,
    stop_sequence: Option<&'a str>,
    usage: UsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockOut<'a> {
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
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// `{"type":"error","error":{...}}`. The same shape is used for HTTP error bodies, SSE error
/// events and errored batch results.
#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
}

impl<'a> ErrorEnvelope<'a> {
    fn new(kind: &'a str, message: &'a str) -> Self {
        ErrorEnvelope {
            kind: "error",
            error: ErrorBody { kind, message },
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Reply model
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Block {
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
struct Reply {
    blocks: Vec<Block>,
    stop_reason: String,
    usage: UsageOut,
}

fn build_reply(script: &Script, req: &Value, body_len: usize, rng: &mut Rng) -> Reply {
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
            (Some(t), k) if k != Kind::Echo => t.clone(),
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

/// Length of the `data:` JSON of a text_delta with empty text at `index`. Used to size
/// `oversized_event_bytes` filler so the whole data line is exactly the requested size.
fn text_delta_skeleton_len(index: usize) -> usize {
    serde_json::to_vec(&StreamEvent::ContentBlockDelta {
        index,
        delta: DeltaOut::TextDelta { text: "" },
    })
    .map(|v| v.len())
    .unwrap_or(0)
}

fn message_out<'a>(
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

// ---------------------------------------------------------------------------------------------
// Event buffer and SSE generation
// ---------------------------------------------------------------------------------------------

/// A sequence of body pieces (SSE events, or one JSON body) kept in a single allocation.
/// Streaming a reply therefore costs two vectors rather than one allocation per event.
#[derive(Default, Debug)]
struct Events {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Events {
    fn single(bytes: Vec<u8>) -> Self {
        let ends = vec![bytes.len()];
        Events { buf: bytes, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn piece(&self, i: usize) -> &[u8] {
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

fn sse_events(reply: &Reply, model: &str, msg_id: &str, script: &Script, rng: &mut Rng) -> Events {
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
fn gzip_pieces(ev: &Events) -> io::Result<Events> {
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

// ---------------------------------------------------------------------------------------------
// Responses and transport
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug, Clone)]
struct Transport {
    chunked: bool,
    gzip: bool,
    /// `Some(max_write)` when the response is written in random 1..=max_write pieces.
    split: Option<usize>,
    delay: Duration,
    first_byte_delay: Duration,
    disconnect_after_events: Option<usize>,
    disconnect_after_bytes: Option<usize>,
    rst: bool,
}

impl Transport {
    fn from_script(s: &Script, sse: bool, default_split: bool) -> Self {
        let split = s.split_writes.unwrap_or(sse && default_split);
        Transport {
            // The real API streams with chunked encoding and sends JSON with a length.
            chunked: s.chunked.unwrap_or(sse),
            gzip: s.gzip.unwrap_or(false),
            split: split.then(|| s.max_write.unwrap_or(DEFAULT_MAX_WRITE).max(1)),
            delay: Duration::from_millis(s.delay_ms.unwrap_or(0)),
            first_byte_delay: Duration::from_millis(s.first_byte_delay_ms.unwrap_or(0)),
            disconnect_after_events: s.disconnect_after_events,
            disconnect_after_bytes: s.disconnect_after_bytes,
            rst: s.rst.unwrap_or(false),
        }
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    sse: bool,
    body: Events,
    transport: Transport,
}

impl Response {
    fn with_body(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type,
            sse: false,
            body: Events::single(body),
            transport: Transport::default(),
        }
    }

    fn json<T: Serialize>(status: u16, value: &T) -> Self {
        let body = serde_json::to_vec(value).expect("serializing plain structs cannot fail");
        Self::with_body(status, JSON_CONTENT_TYPE, body)
    }

    fn error(status: u16, kind: &str, message: &str) -> Self {
        Self::json(status, &ErrorEnvelope::new(kind, message))
    }

    fn sse(events: Events) -> Self {
        Response {
            status: 200,
            content_type: SSE_CONTENT_TYPE,
            sse: true,
            body: events,
            transport: Transport::default(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn error_type_for_status(status: u16) -> &'static str {
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
fn error_parts(s: &Script) -> (u16, &str, &str) {
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

fn script_error(s: &Script) -> Response {
    let (status, kind, message) = error_parts(s);
    Response::error(status, kind, message)
}

/// Writes one response. Returns `Ok(true)` if the connection can carry another request.
async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
    rng: &mut Rng,
) -> io::Result<bool> {
    let t = resp.transport;
    if !t.first_byte_delay.is_zero() {
        tokio::time::sleep(t.first_byte_delay).await;
    }
    let body = if t.gzip {
        gzip_pieces(&resp.body)?
    } else {
        resp.body
    };
    let n = body.len();

    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\nrequest-id: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        random_id("req_011C", 20, rng),
    );
    if resp.sse {
        head.push_str("cache-control: no-cache\r\n");
    }
    if t.gzip {
        head.push_str("content-encoding: gzip\r\n");
    }
    if t.chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    } else {
        let _ = write!(head, "content-length: {}\r\n", body.buf.len());
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");

    // Everything is staged in `out` and sent by `send`. Without delays the whole response
    // therefore goes out as one write, or as one run of random splits that cross event and
    // chunk boundaries.
    let mut out = Vec::with_capacity(head.len() + body.buf.len() + n * 8 + 8);
    out.extend_from_slice(head.as_bytes());
    let mut sent = 0usize;
    for i in 0..n {
        if t.disconnect_after_events == Some(i) {
            return abort(stream, &mut out, &t, rng).await;
        }
        let piece = body.piece(i);
        if piece.is_empty() {
            // A zero-length chunk would terminate the chunked body early.
            continue;
        }
        let (take, cut) = match t.disconnect_after_bytes {
            Some(limit) if sent + piece.len() >= limit => (limit - sent, true),
            _ => (piece.len(), false),
        };
        if take > 0 {
            if t.chunked {
                // The chunk header announces the full piece even when it is cut, so the client
                // sees a real mid-chunk truncation and not a well-formed shorter chunk.
                let _ = write!(ByteWriter(&mut out), "{:x}\r\n", piece.len());
            }
            out.extend_from_slice(&piece[..take]);
        }
        sent += take;
        if cut {
            return abort(stream, &mut out, &t, rng).await;
        }
        if t.chunked {
            out.extend_from_slice(b"\r\n");
        }
        if !t.delay.is_zero() && i + 1 < n {
            // Flush before sleeping so each event is complete on the wire before the pause. A
            // test that checks the proxy forwards events promptly depends on this.
            send(stream, &mut out, t.split, rng).await?;
            tokio::time::sleep(t.delay).await;
        }
    }
    if t.disconnect_after_events.is_some_and(|k| k >= n) {
        // Every event is delivered but the body is never terminated: a stream that dies just
        // before its end.
        return abort(stream, &mut out, &t, rng).await;
    }
    if t.chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    send(stream, &mut out, t.split, rng).await?;
    Ok(keep_alive && t.disconnect_after_bytes.is_none())
}

/// Adapts `Vec<u8>` to `fmt::Write` so that hex chunk sizes are formatted without a temporary
/// String.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

async fn abort(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    t: &Transport,
    rng: &mut Rng,
) -> io::Result<bool> {
    send(stream, out, t.split, rng).await?;
    if t.rst {
        // SO_LINGER=0 makes close() send RST instead of FIN. The deprecation warns that a
        // non-zero linger blocks the thread on drop; a zero linger never blocks.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
    }
    // The caller drops the stream, which closes it; nothing after this point is written.
    Ok(false)
}

async fn send(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    split: Option<usize>,
    rng: &mut Rng,
) -> io::Result<()> {
    match split {
        None => stream.write_all(out).await?,
        Some(max) => {
            let mut rest = &out[..];
            while !rest.is_empty() {
                let k = rng.between(1, max).min(rest.len());
                stream.write_all(&rest[..k]).await?;
                rest = &rest[k..];
                // Yield so the reader can drain this piece before the next one lands. Without
                // that, the reader tends to see the pieces coalesced and the splits are lost.
                tokio::task::yield_now().await;
            }
        }
    }
    out.clear();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 request reading
// ---------------------------------------------------------------------------------------------

struct Request {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
enum ReadError {
    /// Connection-level failure or EOF mid-request: nothing sensible can be answered.
    Io,
    /// Protocol error: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

enum BodyKind {
    Empty,
    Length(usize),
    Chunked,
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    buf.reserve(16 * 1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(ReadError::Io);
    }
    Ok(())
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads one request from `stream`. `buf` carries bytes over between requests, which covers
/// pipelining and keep-alive. Returns `Ok(None)` on a clean EOF between requests.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let (mut req, body_kind, expect_continue) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let r = head_to_request(&parsed)?;
                    buf.drain(..head_len);
                    break r;
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ReadError::Bad(431, "too many request headers"))
                }
                Err(_) => return Err(ReadError::Bad(400, "malformed HTTP request head")),
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Bad(431, "request head too large"));
            }
        }
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io)
            };
        }
    };

    let needs_body = !matches!(body_kind, BodyKind::Empty | BodyKind::Length(0));
    if expect_continue && needs_body && buf.is_empty() {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    req.body = match body_kind {
        BodyKind::Empty => Vec::new(),
        BodyKind::Length(n) => {
            while buf.len() < n {
                fill(stream, buf).await?;
            }
            if buf.len() == n {
                std::mem::take(buf)
            } else {
                let body = buf[..n].to_vec();
                buf.drain(..n);
                body
            }
        }
        BodyKind::Chunked => read_chunked(stream, buf).await?,
    };
    Ok(Some(req))
}

fn head_to_request(p: &httparse::Request<'_, '_>) -> Result<(Request, BodyKind, bool), ReadError> {
    let method = p.method.unwrap_or("GET").to_owned();
    let target = p.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, q)) => (path.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let http11 = p.version == Some(1);
    let mut headers = Vec::with_capacity(p.headers.len());
    let (mut close, mut keep) = (false, false);
    let (mut chunked, mut length, mut expect) = (false, None, false);
    for h in p.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("connection") {
            close |= has_token(&value, "close");
            keep |= has_token(&value, "keep-alive");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| ReadError::Bad(400, "invalid content-length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(ReadError::Bad(400, "conflicting content-length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect = value.trim().eq_ignore_ascii_case("100-continue");
        }
        headers.push((h.name.to_owned(), value));
    }
    // As RFC 9112 says, chunked wins over a content-length.
    let body_kind = match (chunked, length) {
        (true, _) => BodyKind::Chunked,
        (false, Some(n)) if n > MAX_BODY_BYTES => {
            return Err(ReadError::Bad(413, "request body too large"))
        }
        (false, Some(n)) => BodyKind::Length(n),
        (false, None) => BodyKind::Empty,
    };
    let keep_alive = if http11 { !close } else { keep && !close };
    let req = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
        keep_alive,
    };
    Ok((req, body_kind, expect))
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find_crlf(buf) {
                break i;
            }
            if buf.len() > 4096 {
                return Err(ReadError::Bad(400, "chunk size line too long"));
            }
            fill(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end])
            .ok()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .ok_or(ReadError::Bad(400, "invalid chunk size"))?;
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Bad(400, "invalid chunk size"))?;
        if size == 0 {
            // Skip the trailer section, which ends with an empty line.
            let mut pos = line_end + 2;
            loop {
                match find_crlf(&buf[pos..]) {
                    Some(0) => {
                        buf.drain(..pos + 2);
                        return Ok(body);
                    }
                    Some(i) => pos += i + 2,
                    None => {
                        if buf.len() > MAX_HEAD_BYTES {
                            return Err(ReadError::Bad(400, "chunked trailer too large"));
                        }
                        fill(stream, buf).await?;
                    }
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(ReadError::Bad(413, "request body too large"));
        }
        let need = line_end + 2 + size + 2;
        while buf.len() < need {
            fill(stream, buf).await?;
        }
        if &buf[need - 2..need] != b"\r\n" {
            return Err(ReadError::Bad(400, "chunk not terminated by CRLF"));
        }
        body.extend_from_slice(&buf[line_end + 2..need - 2]);
        buf.drain(..need);
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_conn(stream, state.clone()));
            }
            Err(e) => {
                // Usually EMFILE under load. Back off briefly rather than spinning.
                eprintln!("streammask-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn is_control(path: &str) -> bool {
    path == "/_mock" || path.starts_with("/_mock/")
}

async fn serve_conn(mut stream: TcpStream, state: Arc<State>) {
    // Without NODELAY, Nagle would merge the small split writes and hide the split points.
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut first = true;
    loop {
        let req = match read_request(&mut stream, &mut buf).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(status, msg)) => {
                let kind = error_type_for_status(status);
                let resp = Response::error(status, kind, msg);
                let _ = write_response(&mut stream, resp, false, &mut Rng::new(0)).await;
                return;
            }
        };
        let control = is_control(&req.path);
        if first && !control {
            state.connections.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let (resp, mut rng) = if control {
            (control_plane(&state, &req), Rng::new(state.base_seed))
        } else {
            state.requests.fetch_add(1, Ordering::Relaxed);
            if state.record {
                lock(&state.received).push(Received {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    query: req.query.clone(),
                    headers: req.headers.clone(),
                    body: String::from_utf8_lossy(&req.body).into_owned(),
                });
            }
            let mut rng = state.next_rng();
            (api(&state, &req, &mut rng), rng)
        };
        match write_response(&mut stream, resp, req.keep_alive, &mut rng).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                if !control {
                    state.aborted_streams.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

fn control_plane(state: &State, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/_mock/script") => {
            // Parse to a Value first: serde's untagged-enum errors ("did not match any
            // variant") would hide which field of which script is wrong.
            let parsed = serde_json::from_slice::<Value>(&req.body).and_then(|v| match v {
                Value::Array(_) => serde_json::from_value::<Vec<Script>>(v),
                other => serde_json::from_value::<Script>(other).map(|s| vec![s]),
            });
            match parsed {
                Ok(scripts) => {
                    let mut q = lock(&state.queue);
                    let queued = scripts.len();
                    q.extend(scripts);
                    Response::json(
                        200,
                        &serde_json::json!({"queued": queued, "pending": q.len()}),
                    )
                }
                Err(e) => Response::error(400, "invalid_request_error", &format!("script: {e}")),
            }
        }
        ("POST", "/_mock/reset") => {
            lock(&state.queue).clear();
            lock(&state.received).clear();
            lock(&state.batches).clear();
            state.connections.store(0, Ordering::Relaxed);
            state.requests.store(0, Ordering::Relaxed);
            state.aborted_streams.store(0, Ordering::Relaxed);
            state.seq.store(0, Ordering::Relaxed);
            Response::json(200, &serde_json::json!({"ok": true}))
        }
        ("GET", "/_mock/received") => Response::json(200, &*lock(&state.received)),
        ("GET", "/_mock/stats") => Response::json(
            200,
            &serde_json::json!({
                "connections": state.connections.load(Ordering::Relaxed),
                "requests": state.requests.load(Ordering::Relaxed),
                "pending_scripts": lock(&state.queue).len(),
                "aborted_streams": state.aborted_streams.load(Ordering::Relaxed),
            }),
        ),
        _ => Response::error(404, "not_found_error", "unknown mock control endpoint"),
    }
}

fn api(state: &State, req: &Request, rng: &mut Rng) -> Response {
    let header_script = match req.header("x-mock-script") {
        None => None,
        Some(raw) => match serde_json::from_str::<Script>(raw) {
            Ok(s) => Some(s),
            Err(e) => {
                let msg = format!("x-mock-script: {e}");
                return Response::error(400, "invalid_request_error", &msg);
            }
        },
    };
    let (method, path) = (req.method.as_str(), req.path.as_str());
    if method == "POST" && path == "/v1/messages" {
        return messages(state, req, header_script, rng);
    }
    // A header script also works on the other endpoints, for errors and transport faults only.
    // The script queue belongs to /v1/messages and batch results.
    let script = header_script.unwrap_or_default();
    let mut resp = if script.kind == Some(Kind::Error) {
        script_error(&script)
    } else {
        route_other(state, req, rng)
    };
    resp.transport = Transport::from_script(&script, resp.sse, state.default_split);
    resp
}

fn route_other(state: &State, req: &Request, rng: &mut Rng) -> Response {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    match method {
        "POST" if path == "/v1/messages/count_tokens" => {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(_)) => Response::json(
                    200,
                    &serde_json::json!({"input_tokens": req.body.len() / 4}),
                ),
                Ok(_) => bad_request("request body must be a JSON object"),
                Err(e) => bad_request(&format!("malformed JSON in request body: {e}")),
            }
        }
        "POST" if path == "/v1/messages/batches" => create_batch(state, req, rng),
        "GET" if path == "/v1/models" => models_list(),
        "GET" => {
            if let Some(rest) = path.strip_prefix("/v1/messages/batches/") {
                if let Some(id) = rest.strip_suffix("/results") {
                    return batch_results(state, id, rng);
                }
                if !rest.is_empty() && !rest.contains('/') {
                    return get_batch(state, req, rest);
                }
            }
            if let Some(id) = path.strip_prefix("/v1/models/") {
                if let Some(&m) = MODELS.iter().find(|m| m.0 == id) {
                    return Response::json(200, &model_out(&m));
                }
                return not_found(&format!("model: {id}"));
            }
            not_found(path)
        }
        _ => not_found(path),
    }
}

fn bad_request(msg: &str) -> Response {
    Response::error(400, "invalid_request_error", msg)
}

fn not_found(what: &str) -> Response {
    Response::error(404, "not_found_error", &format!("Not found: {what}"))
}

fn messages(
    state: &State,
    req: &Request,
    header_script: Option<Script>,
    rng: &mut Rng,
) -> Response {
    // Validate before taking a queued script, so that a malformed request does not consume a
    // reply the test meant for the next one.
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad_request("request body must be a JSON object"),
        Err(e) => return bad_request(&format!("malformed JSON in request body: {e}")),
    };
    let script = header_script
        .or_else(|| take_script(state, &body, &req.body))
        .unwrap_or_default();
    let mut resp = match script.kind.unwrap_or_default() {
        Kind::Error => script_error(&script),
        Kind::Garbage => Response {
            status: script.status.unwrap_or(200),
            content_type: SSE_CONTENT_TYPE,
            sse: true,
            body: Events::single(script.raw.clone().unwrap_or_default().into_bytes()),
            transport: Transport::default(),
        },
        Kind::ModelsPassthrough => models_list(),
        Kind::Echo | Kind::Text | Kind::ToolUse | Kind::ThinkingText => {
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_MODEL);
            let reply = build_reply(&script, &body, req.body.len(), rng);
            let msg_id = random_id("msg_01", 22, rng);
            if body.get("stream").and_then(Value::as_bool) == Some(true) {
                Response::sse(sse_events(&reply, model, &msg_id, &script, rng))
            } else {
                Response::json(200, &message_out(&reply, model, &msg_id, true))
            }
        }
    };
    resp.transport = Transport::from_script(&script, resp.sse, state.default_split);
    resp
}

#[derive(Serialize)]
struct ModelOut {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'static str,
    display_name: &'static str,
    created_at: &'static str,
}

fn model_out(m: &(&'static str, &'static str, &'static str)) -> ModelOut {
    ModelOut {
        kind: "model",
        id: m.0,
        display_name: m.1,
        created_at: m.2,
    }
}

fn models_list() -> Response {
    #[derive(Serialize)]
    struct List {
        data: Vec<ModelOut>,
        has_more: bool,
        first_id: Option<&'static str>,
        last_id: Option<&'static str>,
    }
    Response::json(
        200,
        &List {
            data: MODELS.iter().map(model_out).collect(),
            has_more: false,
            first_id: MODELS.first().map(|m| m.0),
            last_id: MODELS.last().map(|m| m.0),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Message batches
// ---------------------------------------------------------------------------------------------

fn batch_json(b: &Batch, host: &str) -> Response {
    #[derive(Serialize)]
    struct Counts {
        processing: usize,
        succeeded: usize,
        errored: usize,
        canceled: usize,
        expired: usize,
    }
    #[derive(Serialize)]
    struct BatchOut<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        processing_status: &'static str,
        request_counts: Counts,
        ended_at: &'a str,
        created_at: &'a str,
        expires_at: &'a str,
        archived_at: Option<&'a str>,
        cancel_initiated_at: Option<&'a str>,
        results_url: String,
    }
    Response::json(
        200,
        &BatchOut {
            id: &b.id,
            kind: "message_batch",
            processing_status: "ended",
            request_counts: Counts {
                processing: 0,
                succeeded: b.succeeded,
                errored: b.errored,
                canceled: 0,
                expired: 0,
            },
            ended_at: &b.created_at,
            created_at: &b.created_at,
            expires_at: &b.expires_at,
            archived_at: None,
            cancel_initiated_at: None,
            results_url: format!("http://{host}/v1/messages/batches/{}/results", b.id),
        },
    )
}

/// Host for `results_url`. The request's Host header is preferred so that the URL points back
/// through the proxy when the request came through it.
fn request_host(state: &State, req: &Request) -> String {
    req.header("host")
        .map(str::to_owned)
        .unwrap_or_else(|| state.local_addr.to_string())
}

fn create_batch(state: &State, req: &Request, rng: &mut Rng) -> Response {
    #[derive(Deserialize)]
    struct Create {
        requests: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        custom_id: String,
        params: Value,
    }
    let create: Create = match serde_json::from_slice(&req.body) {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("invalid batch request: {e}")),
    };
    let now = unix_now();
    let items: Vec<(String, Value, usize)> = create
        .requests
        .into_iter()
        .map(|it| {
            let len = serde_json::to_vec(&it.params).map_or(0, |v| v.len());
            (it.custom_id, it.params, len)
        })
        .collect();
    let batch = Batch {
        id: random_id("msgbatch_01", 22, rng),
        created_at: rfc3339(now),
        expires_at: rfc3339(now + 24 * 3600),
        succeeded: items.len(),
        errored: 0,
        items,
        results: None,
    };
    let resp = batch_json(&batch, &request_host(state, req));
    lock(&state.batches).insert(batch.id.clone(), batch);
    resp
}

fn get_batch(state: &State, req: &Request, id: &str) -> Response {
    let host = request_host(state, req);
    match lock(&state.batches).get(id) {
        Some(b) => batch_json(b, &host),
        None => not_found(&format!("message batch {id}")),
    }
}

fn batch_results(state: &State, id: &str, rng: &mut Rng) -> Response {
    #[derive(Serialize)]
    struct Line<'a> {
        custom_id: &'a str,
        result: ResultOut<'a>,
    }
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum ResultOut<'a> {
        Succeeded { message: MessageOut<'a> },
        Errored { error: ErrorEnvelope<'a> },
    }

    // Lock order is always batches then queue; no path takes them the other way round.
    let mut batches = lock(&state.batches);
    let Some(batch) = batches.get_mut(id) else {
        return not_found(&format!("message batch {id}"));
    };
    if batch.results.is_none() {
        let mut out = Vec::new();
        let (mut ok, mut failed) = (0, 0);
        for (custom_id, params, len) in &batch.items {
            let raw = serde_json::to_vec(params).unwrap_or_default();
            let script = take_script(state, params, &raw).unwrap_or_default();
            let line = if script.kind == Some(Kind::Error) {
                failed += 1;
                let (_, kind, message) = error_parts(&script);
                serde_json::to_vec(&Line {
                    custom_id,
                    result: ResultOut::Errored {
                        error: ErrorEnvelope::new(kind, message),
                    },
                })
            } else {
                ok += 1;
                let model = params
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_MODEL);
                let reply = build_reply(&script, params, *len, rng);
                let msg_id = random_id("msg_01", 22, rng);
                serde_json::to_vec(&Line {
                    custom_id,
                    result: ResultOut::Succeeded {
                        message: message_out(&reply, model, &msg_id, true),
                    },
                })
            };
            out.extend(line.expect("serializing plain structs cannot fail"));
            out.push(b'\n');
        }
        batch.succeeded = ok;
        batch.errored = failed;
        batch.results = Some(out);
    }
    let body = batch.results.clone().unwrap_or_default();
    Response::with_body(200, JSONL_CONTENT_TYPE, body)
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// SplitMix64. It is fast, seedable and has no internal state worth protecting. The mock
/// needs reproducible randomness, not cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `lo..=hi`. The modulo bias is irrelevant at these ranges.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi.saturating_sub(lo) as u64).saturating_add(1);
        lo + (self.next_u64() % span) as usize
    }
}

fn random_id(prefix: &str, len: usize, rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    for _ in 0..len {
        s.push(ALPHABET[rng.between(0, ALPHABET.len() - 1)] as char);
    }
    s
}

fn fake_signature(rng: &mut Rng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // 96 random bytes give 128 base64 characters with no padding, which looks like a real
    // signature and is valid base64.
    let mut out = String::with_capacity(128);
    for _ in 0..32 {
        let n = rng.next_u64() & 0xFF_FFFF;
        for shift in [18, 12, 6, 0] {
            out.push(B64[((n >> shift) & 63) as usize] as char);
        }
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC timestamp. Hand-rolled so the mock needs no date crate; this uses Howard
/// Hinnant's days-to-civil algorithm.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn script(v: Value) -> Script {
        serde_json::from_value(v).expect("valid script")
    }

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

    /// Splits an SSE body into (event name, parsed data) pairs, and checks the framing on the
    /// way.
    fn parse_sse(body: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(body).expect("SSE is UTF-8");
        let text = text.replace("\r\n", "\n");
        assert!(text.ends_with("\n\n"), "stream ends with a blank line");
        text.trim_end_matches('\n')
            .split("\n\n")
            .map(|ev| {
                let mut lines = ev.lines();
                let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                assert!(lines.next().is_none(), "exactly two lines per event");
                let v: Value = serde_json::from_str(data).expect("data is one JSON document");
                assert_eq!(v["type"], name, "event name matches data.type");
                (name.to_owned(), v)
            })
            .collect()
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

    /// Concatenation of the given delta field over all deltas of block `index`.
    fn concat(events: &[(String, Value)], index: u64, kind: &str, field: &str) -> String {
        events
            .iter()
            .filter(|(n, v)| n == "content_block_delta" && v["index"] == index)
            .filter(|(_, v)| v["delta"]["type"] == kind)
            .map(|(_, v)| v["delta"][field].as_str().unwrap().to_owned())
            .collect()
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

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_759_104_000), "2025-09-29T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
    }

    // --- over real sockets -----------------------------------------------------------------

    async fn start() -> (SocketAddr, Arc<State>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::new(addr, 42, true, true));
        tokio::spawn(serve(listener, state.clone()));
        (addr, state)
    }

    async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    }

    fn split_head(resp: &[u8]) -> (String, &[u8]) {
        let i = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&resp[..i]).into_owned(),
            &resp[i + 4..],
        )
    }

    fn dechunk(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let i = find_crlf(b).unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap(), 16).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&b[i + 2..i + 2 + n]);
            assert_eq!(&b[i + 2 + n..i + 4 + n], b"\r\n");
            b = &b[i + 4 + n..];
        }
    }

    fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn keep_alive_chunked_request_and_split_stream() {
        let (addr, state) = start().await;
        let body = r#"{"model":"claude-sonnet-4-5","stream":true,"messages":[{"role":"user","content":"ping pong"}]}"#;
        let (a, b) = body.split_at(17);
        let mut raw = format!(
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: mock\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .into_bytes();
        raw.extend(post(
            "/v1/messages",
            &body.replace("true", "false"),
            "Connection: close\r\n",
        ));
        let resp = exchange(addr, &raw).await;
        let second = resp
            .windows(12)
            .rposition(|w| w == b"HTTP/1.1 200")
            .unwrap();
        let (head, rest) = split_head(&resp[..second]);
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let events = parse_sse(&dechunk(rest));
        assert_eq!(concat(&events, 0, "text_delta", "text"), "ping pong");
        let (head2, json) = split_head(&resp[second..]);
        assert!(head2.contains("connection: close"));
        let msg: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(msg["content"][0]["text"], "ping pong");
        assert_eq!(msg["stop_reason"], "end_turn");

        assert_eq!(state.connections.load(Ordering::Relaxed), 1);
        assert_eq!(state.requests.load(Ordering::Relaxed), 2);
        let rec = lock(&state.received);
        assert_eq!(rec[0].query.as_deref(), Some("beta=true"));
        assert_eq!(rec[0].body, body);
    }

    #[tokio::test]
    async fn disconnect_after_bytes_is_exact() {
        let (addr, _) = start().await;
        let req = post(
            "/v1/messages",
            r#"{"messages":[{"role":"user","content":"a fairly long echo to cut"}]}"#,
            "x-mock-script: {\"disconnect_after_bytes\": 10}\r\n",
        );
        let resp = exchange(addr, &req).await;
        let (head, body) = split_head(&resp);
        assert!(head.contains("content-length: "));
        assert_eq!(body.len(), 10);
    }

    #[tokio::test]
    async fn malformed_json_and_unknown_path() {
        let (addr, _) = start().await;
        let close = "Connection: close\r\n";
        let resp = exchange(addr, &post("/v1/messages", "{nope", close)).await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 400"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let resp = exchange(
            addr,
            b"GET /v2/nothing HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 404"));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
    }

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

    #[tokio::test]
    async fn a_client_that_leaves_mid_stream_is_counted_as_aborted() {
        let (addr, state) = start().await;
        let req = post(
            "/v1/messages",
            r#"{"stream":true,"messages":[{"role":"user","content":"one two three four five six seven eight nine ten"}]}"#,
            "x-mock-script: {\"delay_ms\": 20, \"max_delta\": 1}\r\n",
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut first = [0u8; 64];
        let _ = s.read(&mut first).await.unwrap();
        drop(s);
        for _ in 0..200 {
            if state.aborted_streams.load(Ordering::Relaxed) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the aborted stream was not counted");
    }
}
