//! The audit log: one JSON line per request, to a size-rotated file or to stdout; and the
//! reader behind `streammask audit show|replay`. The line is built when the request has been
//! answered (Pingora's logging phase, so it adds no latency to the response) and written by a
//! writer thread, so a slow disk never holds a request.
//!
//! Invariants:
//! - a record never carries a raw secret. Findings carry the rule id, direction, JSON path
//!   (itself scanned, since object keys are client text), placeholder and a preview built from
//!   the rule's pattern (its literal prefix, at most 4 characters) and the secret's length
//!   only. Transcripts are the masked request as forwarded and the masked response as sent;
//!   with report-only rules (`audit` action, report-only thinking) the raw text would stay in
//!   a transcript, so transcripts are scanned again and every finding in them is replaced.
//!   Model names and session ids are scanned or restricted to id characters;
//! - the request path never blocks on the sink: records go through a bounded queue; a full
//!   queue or a failing sink is counted (`streammask_audit_failures_total`) and logged, and
//!   with `on_failure = "refuse"` new requests get a 503 until a write succeeds again;
//! - rotation keeps `max_files` old files (`audit.jsonl.1` is the newest); readers read the
//!   rotated files oldest first, then the live one.

use crate::api::{ApiError, ErrorKind};
use crate::config::ConfigError;
use crate::events::ResponseTranscript;
use crate::masker::Engine;
use crate::proxy::RequestCtx;
use crate::rules::Scope;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit.path {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Off,
    Stdout,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Keep serving; lost records are counted and logged.
    Continue,
    /// Refuse new requests (503) while the sink fails.
    Refuse,
}

/// `[audit]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    pub sink: SinkKind,
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_files: usize,
    pub transcripts: bool,
    pub transcript_max_bytes: usize,
    pub queue: usize,
    pub on_failure: OnFailure,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            sink: SinkKind::Off,
            path: PathBuf::from("/var/log/streammask/audit.jsonl"),
            max_bytes: 100 << 20,
            max_files: 10,
            transcripts: false,
            transcript_max_bytes: 1 << 20,
            queue: 4096,
            on_failure: OnFailure::Continue,
        }
    }
}

impl AuditSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            key,
            message: message.to_string(),
        };
        if self.sink == SinkKind::File && self.path.as_os_str().is_empty() {
            return Err(invalid(
                "audit.path",
                "must be set when audit.sink = \"file\"",
            ));
        }
        if self.max_bytes < 4096 {
            return Err(invalid("audit.max_bytes", "must be at least 4096"));
        }
        if !(1..=1000).contains(&self.max_files) {
            return Err(invalid("audit.max_files", "must be between 1 and 1000"));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(invalid("audit.queue", "must be between 1 and 1000000"));
        }
        if self.transcript_max_bytes < 1024 {
            return Err(invalid(
                "audit.transcript_max_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

/// One finding as the audit log shows it. Fields borrow from the request when written.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditFinding<'a> {
    pub rule: Cow<'a, str>,
    pub direction: Cow<'a, str>,
    pub action: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub placeholder: Cow<'a, str>,
    pub preview: String,
    pub rewritten: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditIdentity {
    pub subject: String,
    pub groups: Vec<String>,
    pub profile: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub total_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ttfb_ms: Option<f64>,
    pub masking_ms: f64,
}

/// The bytes the client sent and received.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ByteCounts {
    pub request: usize,
    pub response: usize,
}

/// A record's transcripts before they are rendered.
struct Pending {
    request: Option<Bytes>,
    response: Option<ResponseTranscript>,
    /// Whether a transcript may hold raw text a rule found (report-only findings) and must be
    /// scanned again; when every finding was rewritten, the masked text holds none.
    scrub_request: bool,
    scrub_response: bool,
}

/// One audit line. Fields borrow from the request when written (no copies on the request
/// path); read back, they are owned.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditRecord<'a> {
    pub time: String,
    pub request_id: Cow<'a, str>,
    #[serde(default)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub identity: Option<AuditIdentity>,
    pub endpoint: Cow<'a, str>,
    pub method: Cow<'a, str>,
    #[serde(default)]
    pub model: Option<Cow<'a, str>>,
    pub streamed: bool,
    pub status: u16,
    pub decision: Cow<'a, str>,
    #[serde(default)]
    pub blocked_rule: Option<Cow<'a, str>>,
    /// Why authentication or authorisation refused the request (a bounded reason label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_failure: Option<Cow<'a, str>>,
    pub tools_blocked: usize,
    #[serde(default)]
    pub upstream_error: Option<Cow<'a, str>>,
    pub late_matches: u64,
    pub timings: Timings,
    pub bytes: ByteCounts,
    #[serde(default)]
    pub usage: Option<crate::events::Usage>,
    pub findings: Vec<AuditFinding<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Value>,
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
    kind: std::borrow::Cow<'a, str>,
    index: Option<u64>,
    #[serde(borrow)]
    delta: Option<SentDelta<'a>>,
    content_block: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct SentDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<std::borrow::Cow<'a, str>>,
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
    fn render(self) -> Value {
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

struct Auditor {
    sender: SyncSender<Vec<u8>>,
    refuse: bool,
    transcripts: bool,
    transcript_max_bytes: usize,
    healthy: Arc<AtomicBool>,
}

static AUDITOR: OnceLock<Auditor> = OnceLock::new();

/// Whether requests should keep their transcripts for the audit log.
pub fn transcripts_enabled() -> bool {
    AUDITOR.get().is_some_and(|a| a.transcripts)
}

/// The transcript size limit (for streamed responses).
pub fn transcript_limit() -> usize {
    AUDITOR.get().map_or(0, |a| a.transcript_max_bytes)
}

/// With `on_failure = "refuse"` and a failing sink, the error new requests get.
pub fn refusal() -> Option<ApiError> {
    let auditor = AUDITOR.get()?;
    (auditor.refuse && !auditor.healthy.load(Ordering::Relaxed)).then(|| {
        ApiError::new(
            ErrorKind::Overloaded,
            "streammask: the audit log is unavailable, so requests are refused until it recovers",
        )
        .with_status(503)
    })
}

enum Output {
    Stdout,
    File {
        path: PathBuf,
        file: Option<std::io::BufWriter<std::fs::File>>,
        size: u64,
        max_bytes: u64,
        max_files: usize,
    },
}

fn open_append(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Output {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Output::File {
                path,
                file,
                size,
                max_bytes,
                max_files,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max_bytes {
                    if let Some(mut f) = file.take() {
                        f.flush()?;
                    }
                    for n in (1..*max_files).rev() {
                        let from = rotated(path, n);
                        if from.exists() {
                            std::fs::rename(&from, rotated(path, n + 1))?;
                        }
                    }
                    std::fs::rename(&*path, rotated(path, 1))?;
                    *size = 0;
                }
                if file.is_none() {
                    let (f, len) = open_append(path)?;
                    *file = Some(std::io::BufWriter::with_capacity(64 * 1024, f));
                    *size = len;
                }
                let writer = file.as_mut().expect("opened above");
                if let Err(err) = writer.write_all(line) {
                    // Drop the handle: the next record reopens the file.
                    *file = None;
                    return Err(err);
                }
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout => Ok(()),
            Output::File { file, .. } => match file.as_mut().map(|f| f.flush()) {
                Some(Err(err)) => {
                    *file = None;
                    Err(err)
                }
                _ => Ok(()),
            },
        }
    }
}

/// Logs a sink problem at most once a second, so a broken disk cannot flood the logs.
fn log_failure(what: &str, error: &dyn std::fmt::Display) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<Instant> = OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::error!(error = %error, "audit log: {what}");
    }
}

/// Start the writer thread. Called once at start-up; a file that cannot be opened stops
/// start-up with an error naming `audit.path`.
pub fn install(section: &AuditSection) -> Result<(), AuditError> {
    let mut output = match section.sink {
        SinkKind::Off => return Ok(()),
        SinkKind::Stdout => Output::Stdout,
        SinkKind::File => {
            let (file, size) = open_append(&section.path).map_err(|source| AuditError::Open {
                path: section.path.clone(),
                source,
            })?;
            Output::File {
                path: section.path.clone(),
                file: Some(std::io::BufWriter::with_capacity(64 * 1024, file)),
                size,
                max_bytes: section.max_bytes,
                max_files: section.max_files,
            }
        }
    };
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(section.queue);
    let healthy = Arc::new(AtomicBool::new(true));
    let auditor = Auditor {
        sender,
        refuse: section.on_failure == OnFailure::Refuse,
        transcripts: section.transcripts,
        transcript_max_bytes: section.transcript_max_bytes,
        healthy: Arc::clone(&healthy),
    };
    if AUDITOR.set(auditor).is_err() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("streammask-audit".into())
        .spawn(move || writer(receiver, &mut output, &healthy))
        .map_err(|source| AuditError::Open {
            path: section.path.clone(),
            source,
        })?;
    Ok(())
}

/// The writer wakes up this often and takes every record waiting. It does not block on the
/// channel: a receiver blocked in `recv` makes every `try_send` wake a thread (a futex call and
/// a context switch per request), which cost more than the whole record. Records cross to it
/// as finished lines (one buffer each): handing over the many small allocations of a record
/// made glibc's allocator fragment and slow down over time (frees on a foreign arena).
const WRITER_TICK: Duration = Duration::from_millis(10);

fn writer(receiver: Receiver<Vec<u8>>, output: &mut Output, healthy: &AtomicBool) {
    loop {
        let mut written = 0u64;
        let mut open = true;
        loop {
            let line = match receiver.try_recv() {
                Ok(line) => line,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            };
            match output.write_line(&line) {
                Ok(()) => written += 1,
                Err(err) => {
                    healthy.store(false, Ordering::Relaxed);
                    crate::events::audit_failed(true, 1);
                    log_failure("write failed", &err);
                }
            }
        }
        if written > 0 {
            // Records count as written once they reached the file.
            match output.flush() {
                Ok(()) => {
                    crate::events::audit_written(written);
                    healthy.store(true, Ordering::Relaxed);
                }
                Err(err) => {
                    healthy.store(false, Ordering::Relaxed);
                    crate::events::audit_failed(true, written);
                    log_failure("write failed", &err);
                }
            }
        }
        if !open {
            return;
        }
        std::thread::sleep(WRITER_TICK);
    }
}

/// Replace every finding in every string of `value` (transcripts must hold no raw secret even
/// where a rule only reports).
fn scrub(engine: &Engine, value: &mut Value, scope: Scope) {
    match value {
        Value::String(text) => {
            if let Cow::Owned(masked) = crate::events::masked_label(engine, text, scope) {
                *text = masked;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(engine, v, scope)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub(engine, v, scope)),
        _ => {}
    }
}

/// A JSON document as embedded text: the original bytes when they need no scrubbing and fit
/// the limit (checked to be one JSON value), else parsed, cut down and scrubbed.
fn embed(
    engine: &Engine,
    body: &[u8],
    scrub_it: bool,
    scope: Scope,
    limit: usize,
    cut: impl FnOnce(&mut Value),
) -> String {
    if !scrub_it && body.len() <= limit {
        if let Ok(raw) = serde_json::from_slice::<&serde_json::value::RawValue>(body) {
            return raw.get().to_string();
        }
    }
    let mut value: Value =
        serde_json::from_slice(body).unwrap_or_else(|_| json!(String::from_utf8_lossy(body)));
    if body.len() > limit {
        cut(&mut value);
        if serde_json::to_vec(&value).map_or(true, |v| v.len() > limit) {
            value = json!({"truncated": true, "bytes": body.len()});
        }
    }
    scrub(engine, &mut value, scope);
    value.to_string()
}

fn render_transcript(engine: &Engine, pending: Pending, limit: usize) -> String {
    let mut parts = Vec::new();
    if let Some(body) = pending.request {
        // Keep what a reader needs for the turn: the last messages, not the history.
        let cut = |value: &mut Value| {
            if let Some(obj) = value.as_object_mut() {
                obj.remove("system");
                obj.remove("tools");
                if let Some(Value::Array(messages)) = obj.get_mut("messages") {
                    let keep = messages.len().saturating_sub(2);
                    messages.drain(..keep);
                }
                obj.insert("truncated".into(), json!(true));
            }
        };
        let text = embed(
            engine,
            &body,
            pending.scrub_request,
            Scope::Request,
            limit,
            cut,
        );
        parts.push(format!("\"request\":{text}"));
    }
    match pending.response {
        Some(ResponseTranscript::Body(body)) => {
            let text = embed(
                engine,
                &body,
                pending.scrub_response,
                Scope::Response,
                limit,
                |v| *v = json!({"truncated": true}),
            );
            parts.push(format!("\"response\":{text}"));
        }
        Some(ResponseTranscript::Stream(stream)) => {
            let mut value = stream.render();
            if pending.scrub_response {
                scrub(engine, &mut value, Scope::Response);
            }
            parts.push(format!("\"response\":{value}"));
        }
        None => {}
    }
    format!("{{{}}}", parts.join(","))
}

/// The preview of a secret: its rule's literal prefix (at most 4 characters, from the
/// pattern, never from the secret) and its length.
pub fn preview(engine: &Engine, rule: u32, chars: usize) -> String {
    static PREFIXES: OnceLock<Vec<String>> = OnceLock::new();
    let prefixes = PREFIXES.get_or_init(|| {
        engine
            .matcher()
            .rules()
            .iter()
            .map(|r| literal_prefix(&r.rule.pattern))
            .collect()
    });
    let prefix = prefixes.get(rule as usize).map_or("", String::as_str);
    format!("{prefix}…({chars} chars)")
}

/// The literal every match of the pattern's secret (group `secret`, else the whole match)
/// starts with, cut to 4 characters; empty when there is none or it is case-insensitive.
pub fn literal_prefix(pattern: &str) -> String {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    use regex_syntax::hir::{Hir, HirKind};
    fn secret_group(hir: &Hir) -> Option<&Hir> {
        match hir.kind() {
            HirKind::Capture(cap) if cap.name.as_deref() == Some("secret") => Some(&cap.sub),
            HirKind::Capture(cap) => secret_group(&cap.sub),
            HirKind::Repetition(rep) => secret_group(&rep.sub),
            HirKind::Concat(items) | HirKind::Alternation(items) => {
                items.iter().find_map(secret_group)
            }
            _ => None,
        }
    }
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return String::new();
    };
    let target = secret_group(&hir).unwrap_or(&hir);
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(target);
    let Some(common) = seq.longest_common_prefix() else {
        return String::new();
    };
    // A case-insensitive prefix expands into several literals whose common prefix is empty.
    String::from_utf8_lossy(common)
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(4)
        .collect()
}

/// RFC 3339 UTC time with milliseconds, without a date library.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Build the request's audit record and queue it. Called once per request at its end.
pub fn record(ctx: &mut RequestCtx, engine: &Engine) {
    let Some(auditor) = AUDITOR.get() else {
        return;
    };
    let started_at = SystemTime::now() - ctx.started.elapsed();
    let findings = ctx
        .request_findings
        .iter()
        .map(|f| ("request", f))
        .chain(ctx.response_findings.iter().map(|f| ("response", f)))
        .map(|(direction, located)| {
            let f = &located.finding;
            AuditFinding {
                rule: Cow::Borrowed(&f.rule_id),
                direction: Cow::Borrowed(direction),
                action: Cow::Borrowed(f.action.as_str()),
                path: crate::events::masked_label(engine, &located.path, Scope::Request),
                placeholder: Cow::Borrowed(&f.placeholder),
                preview: preview(engine, f.rule, f.secret_chars),
                rewritten: f.rewritten,
            }
        })
        .collect();
    let obs = &ctx.obs;
    let record = AuditRecord {
        time: rfc3339(started_at),
        request_id: Cow::Borrowed(&ctx.request_id),
        session_id: obs.session_id.as_deref().map(Cow::Borrowed),
        identity: ctx.identity.as_ref().map(|id| AuditIdentity {
            subject: id.subject.clone(),
            groups: id.groups.clone(),
            profile: id.profile.clone(),
        }),
        endpoint: Cow::Borrowed(ctx.route.map_or("unknown", |r| r.label())),
        method: Cow::Borrowed(&obs.method),
        model: obs.model.as_deref().map(|m| {
            let cut = m.char_indices().nth(128).map_or(m, |(at, _)| &m[..at]);
            crate::events::masked_label(engine, cut, Scope::Request)
        }),
        streamed: obs.streamed,
        status: ctx.status,
        decision: Cow::Borrowed(ctx.outcome.label()),
        blocked_rule: ctx.blocked_rule.as_deref().map(Cow::Borrowed),
        auth_failure: ctx.auth_failure.map(Cow::Borrowed),
        tools_blocked: ctx.tools_blocked,
        upstream_error: obs.upstream_error.map(|e| Cow::Borrowed(e.label())),
        late_matches: ctx.late_matches,
        timings: Timings {
            total_ms: ctx.started.elapsed().as_secs_f64() * 1e3,
            upstream_ttfb_ms: obs.upstream_ttfb.map(|d| d.as_secs_f64() * 1e3),
            masking_ms: obs.masking.as_secs_f64() * 1e3,
        },
        bytes: ByteCounts {
            request: obs.bytes_in,
            response: obs.bytes_out,
        },
        usage: (!obs.usage.is_empty()).then_some(obs.usage),
        findings,
        transcript: None,
    };
    let mut line = Vec::with_capacity(1024);
    if serde_json::to_writer(&mut line, &record).is_err() {
        return;
    }
    drop(record);
    let obs = &mut ctx.obs;
    let pending = Pending {
        request: obs.request_transcript.take(),
        response: obs.response_transcript.take(),
        scrub_request: ctx.request_findings.iter().any(|f| !f.finding.rewritten),
        scrub_response: ctx.response_findings.iter().any(|f| !f.finding.rewritten),
    };
    if pending.request.is_some() || pending.response.is_some() {
        // The record serialises as an object: append the transcript before its `}`.
        let transcript = render_transcript(engine, pending, auditor.transcript_max_bytes);
        line.pop();
        line.extend_from_slice(b",\"transcript\":");
        line.extend_from_slice(transcript.as_bytes());
        line.push(b'}');
    }
    line.push(b'\n');
    match auditor.sender.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            auditor.healthy.store(false, Ordering::Relaxed);
            crate::events::audit_failed(false, 1);
            log_failure("queue full, record dropped", &"the writer is behind");
        }
        Err(TrySendError::Disconnected(_)) => {
            auditor.healthy.store(false, Ordering::Relaxed);
            crate::events::audit_failed(true, 1);
            log_failure("writer stopped, record dropped", &"no writer");
        }
    }
}

// --- reading: `streammask audit show|replay` -------------------------------------------------

/// Every record in the log at `path` and its rotated files, oldest first. Lines that do not
/// parse (a torn last line) are skipped.
pub fn read_records(path: &Path) -> Result<Vec<AuditRecord<'static>>, AuditError> {
    let mut files = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        files.push(rotated(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    let mut records = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && file != path => continue,
            Err(source) => return Err(AuditError::Read { path: file, source }),
        };
        for line in text.lines() {
            if let Ok(record) = serde_json::from_str::<AuditRecord>(line) {
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn content_text(content: &Value) -> Vec<String> {
    match content {
        Value::String(s) => vec![s.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| {
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" => block
                        .get("text")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    "thinking" => block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .map(|t| format!("(thinking) {t}")),
                    "tool_use" => Some(format!(
                        "[tool_use {}] {}",
                        block.get("name").and_then(Value::as_str).unwrap_or("?"),
                        block.get("input").map(Value::to_string).unwrap_or_default()
                    )),
                    "tool_result" => Some(format!(
                        "[tool_result] {}",
                        content_text(block.get("content").unwrap_or(&Value::Null)).join("\n")
                    )),
                    other => Some(format!("[{other}]")),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn header_line(record: &AuditRecord<'_>) -> String {
    let who = record
        .identity
        .as_ref()
        .map_or("anonymous".to_string(), |i| i.subject.clone());
    format!(
        "{} {} {} {} model={} status={} decision={}{} caller={}",
        record.time,
        record.request_id,
        record.method,
        record.endpoint,
        record.model.as_deref().unwrap_or("-"),
        record.status,
        record.decision,
        record
            .blocked_rule
            .as_deref()
            .map(|r| format!(" rule={r}"))
            .unwrap_or_default(),
        who
    )
}

fn write_findings(out: &mut String, record: &AuditRecord<'_>) {
    for f in &record.findings {
        out.push_str(&format!(
            "  finding {} {} {} at {}: {} {}\n",
            f.direction, f.rule, f.action, f.path, f.placeholder, f.preview
        ));
    }
}

fn write_response(out: &mut String, record: &AuditRecord<'_>) {
    let response = record.transcript.as_ref().and_then(|t| t.get("response"));
    match response {
        Some(message) => {
            if let Some(content) = message.get("content") {
                for text in content_text(content) {
                    out.push_str(&format!("assistant: {text}\n"));
                }
            } else if let Some(error) = message.get("error") {
                out.push_str(&format!("assistant: (error) {error}\n"));
            }
            if let Some(error) = message
                .get("error")
                .filter(|_| message.get("content").is_some())
            {
                out.push_str(&format!("assistant: (stream error) {error}\n"));
            }
        }
        None if record.decision == "blocked" => out.push_str(&format!(
            "(blocked by rule {}: nothing reached the model)\n",
            record.blocked_rule.as_deref().unwrap_or("?")
        )),
        None => out.push_str("(no transcript recorded)\n"),
    }
}

/// `streammask audit show`: one request in full.
pub fn show(records: &[AuditRecord<'static>], request_id: &str) -> Option<String> {
    let record = records.iter().find(|r| r.request_id == request_id)?;
    let mut out = header_line(record);
    out.push('\n');
    if let Some(session) = &record.session_id {
        out.push_str(&format!("session: {session}\n"));
    }
    if let Some(usage) = &record.usage {
        out.push_str(&format!(
            "usage: {}\n",
            serde_json::to_string(usage).unwrap_or_default()
        ));
    }
    write_findings(&mut out, record);
    let request = record.transcript.as_ref().and_then(|t| t.get("request"));
    if let Some(system) = request.and_then(|r| r.get("system")) {
        for text in content_text(system) {
            out.push_str(&format!("system: {text}\n"));
        }
    }
    if let Some(Value::Array(messages)) = request.and_then(|r| r.get("messages")) {
        for message in messages {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("?");
            for text in content_text(message.get("content").unwrap_or(&Value::Null)) {
                out.push_str(&format!("{role}: {text}\n"));
            }
        }
    }
    write_response(&mut out, record);
    Some(out)
}

/// `streammask audit replay`: a session turn by turn. Clients resend the whole conversation
/// each turn, so each turn prints only the user messages added since the previous request
/// and then the response.
pub fn replay(records: &[AuditRecord<'static>], session: &str) -> Option<String> {
    let turns: Vec<&AuditRecord<'static>> = records
        .iter()
        .filter(|r| r.session_id.as_deref() == Some(session))
        .collect();
    if turns.is_empty() {
        return None;
    }
    let mut out = format!("session {session}: {} request(s)\n", turns.len());
    let mut seen = 0usize;
    for (n, record) in turns.iter().enumerate() {
        out.push_str(&format!("\n=== turn {} · {}\n", n + 1, header_line(record)));
        write_findings(&mut out, record);
        let messages = record
            .transcript
            .as_ref()
            .and_then(|t| t.pointer("/request/messages"))
            .and_then(Value::as_array);
        if let Some(messages) = messages {
            let start = if messages.len() > seen { seen } else { 0 };
            for message in &messages[start..] {
                let role = message.get("role").and_then(Value::as_str).unwrap_or("?");
                if role == "assistant" {
                    continue;
                }
                for text in content_text(message.get("content").unwrap_or(&Value::Null)) {
                    out.push_str(&format!("{role}: {text}\n"));
                }
            }
            seen = messages.len() + 1;
        }
        write_response(&mut out, record);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes_come_from_the_pattern_only() {
        assert_eq!(literal_prefix("ghp_[A-Za-z0-9]{36}"), "ghp_");
        assert_eq!(literal_prefix("AKIA[0-9A-Z]{16}"), "AKIA");
        assert_eq!(literal_prefix("sk-ant-api03-[A-Za-z0-9_-]{90,}"), "sk-a");
        assert_eq!(
            literal_prefix(r"password\s*=\s*(?P<secret>[^\s]{8,64})"),
            ""
        );
        assert_eq!(
            literal_prefix(r"token: (?P<secret>xoxb-[0-9]{10,})"),
            "xoxb"
        );
        assert_eq!(literal_prefix("(?i)secret_[a-z]{10}"), "");
        assert_eq!(literal_prefix("("), "");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_825_869_123);
        assert_eq!(rfc3339(t), "2026-11-28T00:31:09.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

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
