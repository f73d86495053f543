//! The response side of an exchange: the upstream's header relayed (framing and encoding
//! rewritten), its body masked on the way — SSE through the Messages stream transformer, JSON
//! Lines line by line, JSON through the walker, anything else scanned as text or refused.
//!
//! Invariants:
//! - nothing unscanned reaches the client: the scanner is chosen from the response's label,
//!   route, what the request asked for (`stream: true`) and the bytes — an SSE-labelled body is
//!   streamed through the SSE transformer; any other body is read whole and scanned the way
//!   its readers may read it: as JSON (leniently) when it parses, else as SSE when the request
//!   asked for a stream or an SSE reader would find events in it, else as text. A body that
//!   cannot be scanned (not text, not decodable, over the size limit, duplicate JSON keys, a
//!   finding where no placeholder fits) is answered with a 502 or ends the stream with an SSE
//!   `error` event;
//! - an upgrade answer (`101`) and a response header with a finding are answered with a 502
//!   before anything is sent ([`super::response_headers`]);
//! - a compressed response is decompressed before scanning or refused;
//! - a client that disconnects mid-stream drops the upstream connection (cancelling it); only a
//!   response read to its end returns its connection to the pool;
//! - streams are written as chunked HTTP/1.1 (or plain HTTP/2 data frames), since masking
//!   changes their length;
//! - thinking is always masked for the client; the original of each thinking block masking
//!   changed goes to the thinking vault (when `thinking = "restore"`) as soon as the block is
//!   complete, before the bytes that end it are written. Keeping never delays client bytes: a
//!   put that does not finish at its first poll (a networked vault) continues in a task of its
//!   own, and a failed put is logged (the returning block is then masked, never leaked).

use super::drain::DrainPhase;
use super::encoding::Decoder;
use super::headers::{copied_headers, end_to_end_headers, header_str};
use super::provider::Routed;
use super::response_headers;
use super::upstream::{unavailable, Opened};
use super::{ProxyState, RequestCtx, REQUEST_ID_HEADER};
use crate::anthropic::api::{ApiError, ErrorKind, Provider, Route};
use crate::anthropic::batches::point_results_url_at_proxy;
use crate::anthropic::bedrock::{exception_bytes, BedrockStream};
use crate::anthropic::jsonl::JsonlMasker;
use crate::anthropic::messages::{
    error_event, mask_json_response_restoring, SseTransformer, ThinkingOriginal,
};
use crate::anthropic::restore::RestoreMap;
use crate::anthropic::thinking_vault::VaultEntry;
use crate::anthropic::transcript::{ResponseTranscript, StreamTranscript};
use crate::anthropic::usage::Usage;
use crate::engine::json_walk::WalkError;
use crate::engine::{Engine, Findings, Scope, ThinkingMode};
use crate::exchange::{Exchange, UpstreamError};
use crate::observe::metrics::StreamGuard;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession as ClientSession;
use pingora::proxy::Session;
use std::time::Instant;

/// The request id's header name, made once at compile time (`from_static` checks every
/// byte of a name when it runs).
const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// How an upstream response body is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// Labelled SSE: streamed through the SSE transformer.
    Sse,
    /// Batch results: streamed line by line.
    Jsonl,
    /// AWS event-stream frames (Bedrock's streamed invoke): streamed through the Bedrock
    /// stream masker.
    EventStream,
    /// Anything else (JSON, text, no label): read whole and scanned every way a reader may
    /// read it ([`mask_buffered`]).
    Buffered,
}

impl BodyKind {
    fn of(routed: &Routed, content_type: &str) -> BodyKind {
        let route = routed.route;
        let content_type = content_type.to_ascii_lowercase();
        let content_type = content_type.trim_start();
        if content_type.starts_with("text/event-stream") {
            BodyKind::Sse
        } else if content_type.starts_with("application/vnd.amazon.eventstream")
            // A Bedrock stream is read as frames whatever its label, unless it is JSON (an
            // error): anything else fails the frame checks and ends the stream.
            || (routed.provider == Provider::Bedrock
                && routed.stream == Some(true)
                && !content_type.contains("json"))
        {
            BodyKind::EventStream
        } else if route == Route::BatchResults
            || content_type.contains("jsonl")
            || content_type.contains("ndjson")
        {
            BodyKind::Jsonl
        } else {
            BodyKind::Buffered
        }
    }
}

/// Whether the request body asked for a streamed response (`"stream": true`).
fn stream_requested(request_body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Flag {
        #[serde(default)]
        stream: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Flag>(request_body)
        .is_ok_and(|flag| flag.stream == Some(serde_json::Value::Bool(true)))
}

/// Whether an SSE reader would find a field line (`data:`/`event:`) in `body`; a leading
/// byte-order mark is skipped as SSE readers skip it.
fn has_sse_fields(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    body.split(|&b| b == b'\n' || b == b'\r')
        .any(|line| line.starts_with(b"data") || line.starts_with(b"event"))
}

/// What the upstream's response header decided: how its body is relayed, and the client's
/// header. Boxed where it is passed on: the future that relays a stream holds it for the
/// stream's life.
struct Prepared {
    kind: BodyKind,
    decoder: Decoder,
    engine: std::sync::Arc<Engine>,
    /// Made a `ResponseHeader` when it is written, once the framing is known.
    downstream: http::response::Parts,
}

/// Relay the upstream's response to the client, masking its body.
pub(super) async fn relay(
    state: &ProxyState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    routed: &Routed,
    opened: Box<Opened>,
    request_body: &[u8],
) -> Result<(), ApiError> {
    let prepared = prepare(state, ctx, routed, &opened)?;
    match prepared.kind {
        BodyKind::Sse | BodyKind::Jsonl | BodyKind::EventStream => {
            relay_stream(state, session, ctx, opened, prepared).await;
            Ok(())
        }
        // Boxed: its state is not part of a streamed response's.
        BodyKind::Buffered => {
            Box::pin(relay_whole(
                state,
                session,
                ctx,
                routed,
                opened,
                prepared,
                request_body,
            ))
            .await
        }
    }
}

/// Read the upstream's response header (the session's own copy: nothing of it is kept for
/// the body) and build the client's.
fn prepare(
    state: &ProxyState,
    ctx: &mut RequestCtx,
    routed: &Routed,
    opened: &Opened,
) -> Result<Box<Prepared>, ApiError> {
    let exchange = &mut ctx.exchange;
    let Some(upstream_header) = opened.session.response_header() else {
        exchange.upstream_failed(UpstreamError::Read, None);
        return Err(unavailable("no response header"));
    };
    let header_text = |name| {
        upstream_header
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
    };
    let kind = BodyKind::of(routed, header_text(header::CONTENT_TYPE).unwrap_or(""));
    exchange.upstream_status(upstream_header.status.as_u16());
    if let Err(error) = response_headers::refuse_upgrade(upstream_header) {
        exchange.upstream_failed(UpstreamError::Malformed, None);
        return Err(error);
    }
    let Some(decoder) = Decoder::for_encoding(header_text(header::CONTENT_ENCODING)) else {
        exchange.upstream_failed(UpstreamError::Malformed, None);
        return Err(unavailable("unsupported response Content-Encoding"));
    };
    let mut downstream = client_header(upstream_header)?;
    let engine = ctx.engine(state);
    let mut header_findings = Findings::new();
    let scanned = response_headers::scan(&engine, &downstream.headers, &mut header_findings);
    ctx.exchange.response_findings.append(header_findings);
    if let Err(error) = scanned {
        ctx.exchange.upstream_failed(UpstreamError::Malformed, None);
        return Err(error);
    }
    // The proxy's own words, added once the upstream's were scanned.
    if let Ok(id) = HeaderValue::from_str(&ctx.exchange.request_id) {
        let _ = downstream.headers.try_insert(REQUEST_ID, id);
    }
    Ok(Box::new(Prepared {
        kind,
        decoder,
        engine,
        downstream,
    }))
}

/// Stream a labelled body (SSE, JSON lines, event-stream) to the client, masking as it goes.
async fn relay_stream(
    state: &ProxyState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut opened: Box<Opened>,
    mut prepared: Box<Prepared>,
) {
    ctx.exchange.streamed = true;
    let mut downstream = prepared.downstream;
    if !session.as_downstream().is_http2() {
        let chunked = HeaderValue::from_static("chunked");
        let _ = downstream
            .headers
            .try_insert(header::TRANSFER_ENCODING, chunked);
    }
    let downstream = Box::new(ResponseHeader::from(downstream));
    let stream = Stream {
        state,
        engine: &prepared.engine,
        kind: prepared.kind,
        restore: ctx.restore.clone(),
    };
    // Borrowed, not moved out of the box: a moved-out copy would sit in this future.
    if stream
        .run(
            session,
            downstream,
            &mut ctx.exchange,
            &mut opened.session,
            &mut prepared.decoder,
        )
        .await
    {
        let Opened {
            session: upstream,
            peer,
        } = *opened;
        Box::pin(state.upstream.release(upstream, &peer)).await;
    }
}

/// Read a body whole (JSON, text, no label), mask it every way a reader may read it and send
/// it with its length.
async fn relay_whole(
    state: &ProxyState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    routed: &Routed,
    mut opened: Box<Opened>,
    prepared: Box<Prepared>,
    request_body: &[u8],
) -> Result<(), ApiError> {
    let Prepared {
        mut decoder,
        engine,
        downstream,
        ..
    } = *prepared;
    let exchange = &mut ctx.exchange;
    let body = read_whole(state, &mut opened.session, &mut decoder)
        .await
        .inspect_err(|_| exchange.upstream_failed(UpstreamError::Read, None))?;
    // The connection is done with once the body is read, whatever the client does.
    let Opened {
        session: upstream,
        peer,
    } = *opened;
    state.upstream.release(upstream, &peer).await;
    let masking = Instant::now();
    let restore = ctx.restore.as_ref();
    let route = routed.route;
    let body = mask_buffered(state, &engine, restore, exchange, body, || {
        routed
            .stream
            .unwrap_or_else(|| route == Route::Messages && stream_requested(request_body))
    });
    exchange.masking += masking.elapsed();
    let mut body = body?;
    if route == Route::Batches {
        if let Some(host) = header_str(session, "host") {
            let tls = state.config.tls.is_some();
            if let Some(rewritten) = point_results_url_at_proxy(&body, host, tls) {
                body = rewritten;
            }
        }
    }
    send_whole(session, exchange, downstream, body, restore.map(|m| &**m)).await;
    Ok(())
}

/// The client's response header: the upstream's status and end-to-end headers, framing and
/// encoding left to the proxy, and so is the request id (added by the caller). It becomes a
/// `ResponseHeader` without a case-preserving name map (the names come from a `HeaderMap`,
/// lowercase already).
fn client_header(upstream: &ResponseHeader) -> Result<http::response::Parts, ApiError> {
    // Room for the request id, the framing and the two headers Pingora adds when it writes the
    // header (`Date`, `Connection`): a map grown once past its hint doubles, and the client's
    // session keeps this header for the life of the stream.
    let rewritten = [header::CONTENT_LENGTH, header::CONTENT_ENCODING, REQUEST_ID];
    let end_to_end = end_to_end_headers(&upstream.headers, &rewritten);
    let headers = copied_headers(end_to_end, upstream.headers.len() + 4)
        .map_err(|_| unavailable("bad response header"))?;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = upstream.status;
    parts.headers = headers;
    Ok(parts)
}

/// Send a whole (masked) body with its length.
async fn send_whole(
    session: &mut Session,
    exchange: &mut Exchange,
    mut header: http::response::Parts,
    body: Vec<u8>,
    restore: Option<&RestoreMap>,
) {
    let length = HeaderValue::from(body.len());
    let _ = header.headers.try_insert(header::CONTENT_LENGTH, length);
    exchange.usage = Usage::from_json_body(&body);
    exchange.bytes_out += body.len();
    let body = Bytes::from(body);
    if exchange.keep_transcripts {
        // What restore gave the client is kept as the placeholder it was.
        let kept = match restore.and_then(|map| map.conceal(&body)) {
            Some(concealed) => Bytes::from(concealed),
            None => body.clone(),
        };
        exchange.response_transcript = Some(ResponseTranscript::Body(kept));
    }
    let _ = session
        .write_response_header_with_body(Box::new(ResponseHeader::from(header)), Some(body), true)
        .await;
}

/// Read a whole (decoded) response body, refusing more than `max_response_bytes`.
async fn read_whole(
    state: &ProxyState,
    upstream: &mut ClientSession,
    decoder: &mut Decoder,
) -> Result<Vec<u8>, ApiError> {
    let limit = state.upstream.max_response_bytes();
    let bad_gateway =
        |message: &'static str| ApiError::new(ErrorKind::Api, message).with_status(502);
    let mut body = Vec::new();
    loop {
        match upstream.read_response_body_joined(WRITE_AT).await {
            Ok(Some(chunk)) => {
                decoder.decode_into(&chunk, &mut body).map_err(|_| {
                    bad_gateway("streammask: the upstream response could not be decompressed")
                })?;
                if body.len() > limit {
                    return Err(bad_gateway(
                        "streammask: the upstream response is too large to scan",
                    ));
                }
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(bad_gateway(
                    "streammask: the upstream connection failed mid-response",
                ))
            }
        }
    }
}

/// Mask a whole response body every way a reader may read it: as JSON (leniently, tool calls
/// judged whole) when it parses — a JSON document holds no SSE event, so that covers SSE
/// readers too —, else as SSE when the request asked for a stream or an SSE reader would find
/// events in it, else as text. A body that is not even text, or whose JSON repeats a key, or
/// that has a finding where no placeholder fits, is refused.
fn mask_buffered(
    state: &ProxyState,
    engine: &std::sync::Arc<Engine>,
    restore: Option<&std::sync::Arc<RestoreMap>>,
    exchange: &mut Exchange,
    body: Vec<u8>,
    stream_requested: impl FnOnce() -> bool,
) -> Result<Vec<u8>, ApiError> {
    let bad_gateway = |message: &str| ApiError::new(ErrorKind::Api, message).with_status(502);
    match mask_json_response_restoring(engine, &body, ThinkingMode::Mask, restore.map(|m| &**m)) {
        Ok(masked) => {
            exchange.restore_events.extend(masked.restored);
            exchange.blocked_tools.extend(masked.blocked_tools);
            exchange.response_findings.append(masked.findings);
            if !masked.refusals.is_empty() {
                exchange.response_findings.append(masked.refusals);
                return Err(bad_gateway(
                    "streammask: the upstream response carried a secret where it cannot be masked",
                ));
            }
            keep_thinking(state, masked.thinking_originals);
            return Ok(masked.body.unwrap_or(body));
        }
        Err(WalkError::DuplicateKey { .. }) => {
            return Err(bad_gateway(
                "streammask: the upstream response repeats a JSON key and cannot be scanned",
            ))
        }
        Err(_) => {}
    }
    if has_sse_fields(&body) || stream_requested() {
        let mut sse = sse_transformer(state, engine, restore);
        let mut out = Vec::with_capacity(body.len() + 256);
        sse.push(&body, &mut out);
        sse.finish(&mut out);
        exchange.restore_events.extend(sse.take_restore_events());
        keep_thinking(state, sse.take_thinking_originals());
        exchange.blocked_tools.extend(sse.take_blocked_tools());
        exchange.late_matches += sse.late_matches();
        exchange.response_findings.append(sse.take_findings());
        return Ok(out);
    }
    // Not JSON and not SSE: scan it as text, and refuse what cannot be read as text.
    let text = String::from_utf8(body).map_err(|_| {
        bad_gateway("streammask: the upstream response is not text and cannot be scanned")
    })?;
    let masked = engine
        .mask(&text, Scope::Response)
        .map_err(|_| ApiError::new(ErrorKind::Api, "streammask: scanning failed"))?;
    let mut findings = Findings::new();
    for finding in masked.findings {
        findings.push("", finding);
    }
    exchange.response_findings.append(findings);
    Ok(masked.text.into_owned().into_bytes())
}

/// The Messages stream masker of a response, as configured (event and tool input caps) and
/// giving back the caller's placeholders when restore is on.
fn sse_transformer(
    state: &ProxyState,
    engine: &std::sync::Arc<Engine>,
    restore: Option<&std::sync::Arc<RestoreMap>>,
) -> SseTransformer {
    let sse = SseTransformer::new(
        std::sync::Arc::clone(engine),
        ThinkingMode::Mask,
        state.config.max_sse_event_bytes,
    )
    .with_max_tool_input(state.config.max_tool_input_bytes);
    match restore {
        Some(map) => sse.with_restore(std::sync::Arc::clone(map)),
        None => sse,
    }
}

/// How the upstream body ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UpstreamEnd {
    Complete,
    Failed,
}

/// One streamed response body (SSE or JSON Lines) on its way to the client.
struct Stream<'s> {
    state: &'s ProxyState,
    engine: &'s std::sync::Arc<Engine>,
    kind: BodyKind,
    /// The caller's placeholders to give back (`[restore]`).
    restore: Option<std::sync::Arc<RestoreMap>>,
}

/// The masker of a streamed body.
enum StreamMasker {
    Sse(Box<SseTransformer>),
    Bedrock(Box<BedrockStream>),
    Jsonl(JsonlMasker),
}

impl StreamMasker {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match self {
            StreamMasker::Sse(sse) => sse.push(chunk, out),
            StreamMasker::Bedrock(bedrock) => bedrock.push(chunk, out),
            StreamMasker::Jsonl(jsonl) => jsonl.push(chunk, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            StreamMasker::Sse(sse) => sse.finish(out),
            StreamMasker::Bedrock(bedrock) => bedrock.finish(out),
            StreamMasker::Jsonl(jsonl) => jsonl.finish(out),
        }
    }

    /// Whether the stream was ended for a malformed or oversized upstream event (or frame).
    fn faulted(&self) -> bool {
        match self {
            StreamMasker::Sse(sse) => sse.fault().is_some(),
            StreamMasker::Bedrock(bedrock) => bedrock.faulted(),
            StreamMasker::Jsonl(_) => false,
        }
    }

    fn events(&self) -> u64 {
        match self {
            StreamMasker::Sse(sse) => sse.events(),
            StreamMasker::Bedrock(bedrock) => bedrock.events(),
            StreamMasker::Jsonl(_) => 0,
        }
    }

    fn held(&self) -> usize {
        match self {
            StreamMasker::Sse(sse) => sse.held(),
            StreamMasker::Bedrock(bedrock) => bedrock.held(),
            StreamMasker::Jsonl(_) => 0,
        }
    }

    /// The bytes that tell the client the proxy ended the stream (`error_type` is an
    /// Anthropic error type): an SSE `error` event, or a Bedrock `exception` frame.
    fn ending(&self, error_type: &str, message: &str) -> Vec<u8> {
        match self {
            StreamMasker::Bedrock(_) => exception_bytes(error_type, message),
            _ => error_event(error_type, message),
        }
    }

    /// The originals of thinking blocks masked and completed since the last call.
    fn take_thinking_originals(&mut self) -> Vec<ThinkingOriginal> {
        match self {
            StreamMasker::Sse(sse) => sse.take_thinking_originals(),
            StreamMasker::Bedrock(bedrock) => bedrock.sse().take_thinking_originals(),
            StreamMasker::Jsonl(_) => Vec::new(),
        }
    }

    /// Move what the masker found into the exchange.
    fn record(&mut self, exchange: &mut Exchange) {
        match self {
            StreamMasker::Bedrock(bedrock) => StreamMasker::record_sse(bedrock.sse(), exchange),
            StreamMasker::Sse(sse) => StreamMasker::record_sse(sse, exchange),
            StreamMasker::Jsonl(jsonl) => {
                exchange.blocked_tools.extend(jsonl.take_blocked_tools());
                exchange.response_findings.append(jsonl.take_findings());
            }
        }
    }

    fn record_sse(sse: &mut SseTransformer, exchange: &mut Exchange) {
        exchange.restore_events.extend(sse.take_restore_events());
        exchange.blocked_tools.extend(sse.take_blocked_tools());
        exchange.late_matches += sse.late_matches();
        exchange.response_findings.append(sse.take_findings());
        exchange.usage = sse.usage();
    }
}

/// Write what is ready once this much is waiting, even if more is readable.
const WRITE_AT: usize = 64 * 1024;

impl Stream<'_> {
    /// Stream the body to the client, masking as it goes. Returns whether the upstream
    /// connection may be reused (the body was read to its end and the client stayed).
    ///
    /// Each round waits for upstream bytes (or the client leaving), then takes every chunk that
    /// is already readable without waiting, masks them together and writes once. The Claude API
    /// sends one small write per event, and one client write per event would make syscalls the
    /// proxy's main cost. Reading in this task rather than a spawned reader costs no task
    /// wake-up or channel hop per chunk; Pingora's body reader keeps its parse state across a
    /// dropped read, so the reads raced against the client and polled once are cancel-safe.
    ///
    /// The response header waits for the first round if that round's bytes are already
    /// readable, and goes out with them in one write (with the end of the body too, when the
    /// whole reply is there): a reply read in one go costs the client one wake-up, not three.
    /// When nothing is readable yet the header goes out at once, so a client sees the response
    /// start however long the upstream takes over its first event.
    ///
    /// The upstream's read timeout is kept here rather than by the session: the session arms a
    /// timer for every read that waits (a paced stream waits once per event, and a poll that
    /// finds nothing ready arms and drops one too), while this loop keeps one timer per stream,
    /// moved only when it fires before the upstream was silent that long. A silence of the
    /// timeout ends the stream as the session's timeout did: as a failed upstream read.
    async fn run(
        &self,
        session: &mut Session,
        header: Box<ResponseHeader>,
        exchange: &mut Exchange,
        upstream: &mut ClientSession,
        decoder: &mut Decoder,
    ) -> bool {
        let config = &self.state.config;
        let mut masker = match self.kind {
            BodyKind::Sse => StreamMasker::Sse(Box::new(sse_transformer(
                self.state,
                self.engine,
                self.restore.as_ref(),
            ))),
            BodyKind::EventStream => {
                let sse = sse_transformer(self.state, self.engine, self.restore.as_ref());
                StreamMasker::Bedrock(Box::new(BedrockStream::new(
                    sse,
                    config.max_sse_event_bytes,
                )))
            }
            _ => StreamMasker::Jsonl(
                JsonlMasker::new(std::sync::Arc::clone(self.engine), ThinkingMode::Mask)
                    .with_max_line(self.state.upstream.max_response_bytes()),
            ),
        };
        let mut guard = StreamGuard::start(self.state.metrics.as_deref());
        let mut transcript = exchange
            .keep_transcripts
            .then(|| StreamTranscript::new(self.state.transcript_limit()));
        // Sized per round from what was read (see mask_batch), not ahead: a buffer reserved
        // once for the first round stayed resident for the life of a stream.
        let mut out = Vec::new();
        let mut batch: Vec<Bytes> = Vec::new();
        let mut completed = false;
        let mut client_gone = false;
        let mut cut_at_deadline = false;
        let deadline = self.state.drain.reached(DrainPhase::Deadline);
        let mut deadline = std::pin::pin!(deadline);
        let read_timeout = self.state.upstream.read_timeout();
        upstream.set_read_timeout(None);
        let mut last_read = Instant::now();
        let mut silence = std::pin::pin!(tokio::time::sleep(read_timeout));
        let mut header = Some(header);
        loop {
            out.clear();
            let ready = match header {
                Some(_) => ready_now(upstream.read_response_body_joined(WRITE_AT)),
                None => None,
            };
            let first = match ready {
                Some(read) => read,
                None => {
                    if let Some(header) = header.take() {
                        if Box::pin(session.write_response_header(header, false))
                            .await
                            .is_err()
                        {
                            client_gone = true;
                            break;
                        }
                    }
                    tokio::select! {
                        biased;
                        read = upstream.read_response_body_joined(WRITE_AT) => read,
                        _ = session.as_downstream_mut().read_body_or_idle(true) => {
                            client_gone = true;
                            break;
                        }
                        () = &mut deadline => {
                            cut_at_deadline = true;
                            break;
                        }
                        () = &mut silence => {
                            let until = last_read + read_timeout;
                            if Instant::now() < until {
                                silence.as_mut().reset(until.into());
                                continue;
                            }
                            Err(pingora::Error::explain(
                                pingora::ErrorType::ReadTimedout,
                                "the upstream sent nothing for the read timeout",
                            ))
                        }
                    }
                }
            };
            let ended = read_ready(upstream, first, &mut batch);
            completed = ended == Some(UpstreamEnd::Complete);
            let masking = Instant::now();
            last_read = masking;
            let events_before = masker.events();
            let decoded_all = mask_batch(&mut masker, decoder, &mut batch, &mut out);
            let done = ended.is_some() || !decoded_all || masker.faulted();
            if !decoded_all {
                completed = false;
            }
            if done {
                masker.finish(&mut out);
            }
            let elapsed = masking.elapsed();
            exchange.masking += elapsed;
            guard.events_masked(masker.events() - events_before, elapsed);
            guard.held(masker.held());
            // Kept before the bytes that end the block go out, so a client's next turn finds it.
            keep_thinking(self.state, masker.take_thinking_originals());
            exchange.bytes_out += out.len();
            if let Some(transcript) = transcript.as_mut() {
                // What restore gave the client is kept as the placeholder it was.
                match self.restore.as_ref().and_then(|map| map.conceal(&out)) {
                    Some(concealed) => transcript.push(&concealed),
                    None => transcript.push(&out),
                }
            }
            let body = Bytes::from(std::mem::take(&mut out));
            if done {
                let _ = write_out(session, &mut header, body, true).await;
                break;
            }
            if (header.is_some() || !body.is_empty())
                && write_out(session, &mut header, body, false).await.is_err()
            {
                client_gone = true;
                break;
            }
        }
        if cut_at_deadline {
            // Held bytes are dropped, not flushed: the client retries the whole request, and
            // what the masker still holds was never judged in full.
            let ending = match self.kind {
                BodyKind::Sse | BodyKind::EventStream => masker.ending(
                    "overloaded_error",
                    "streammask: this proxy instance is shutting down; retry the request",
                ),
                _ => Vec::new(),
            };
            exchange.bytes_out += ending.len();
            exchange.shutdown_cut = true;
            let _ = write_out(session, &mut header, Bytes::from(ending), true).await;
        }
        masker.record(exchange);
        if let Some(transcript) = transcript {
            exchange.response_transcript = Some(ResponseTranscript::Stream(transcript));
        }
        if masker.faulted() {
            exchange.upstream_failed(UpstreamError::Malformed, None);
        } else if !completed && !client_gone && !cut_at_deadline {
            exchange.upstream_failed(UpstreamError::Read, None);
        }
        guard.held(0);
        // Dropping the upstream session closes its connection: a request the client left is
        // cancelled, and a connection in an unknown state is never pooled.
        completed && !client_gone && !masker.faulted()
    }
}

/// Write `body` to the client, after the response header if that is still `pending` (in the
/// same write).
async fn write_out(
    session: &mut Session,
    pending: &mut Option<Box<ResponseHeader>>,
    body: Bytes,
    end: bool,
) -> pingora::Result<()> {
    // Boxed: a stream's future is resident for its whole life and is as large as its largest
    // await, while a write is done with at once. One allocation per round.
    match pending.take() {
        Some(header) => {
            Box::pin(session.write_response_header_with_body(header, Some(body), end)).await
        }
        None => Box::pin(session.write_response_body(Some(body), end)).await,
    }
}

/// Collect `first` and every chunk readable right now into `batch` (up to [`WRITE_AT`]
/// bytes); returns how the body ended, if it did.
fn read_ready(
    upstream: &mut ClientSession,
    first: pingora::Result<Option<Bytes>>,
    batch: &mut Vec<Bytes>,
) -> Option<UpstreamEnd> {
    let mut read = Some(first);
    let mut batched = 0;
    while let Some(result) = read.take() {
        match result {
            Ok(Some(chunk)) => {
                // A joined read that stopped short of its cap took everything readable: it
                // stopped at a read that would wait, unless the body is done (its end or an
                // error, which the next read reports at once). Probing again would only wait.
                let drained = chunk.len() < WRITE_AT && !upstream.response_done();
                batched += chunk.len();
                batch.push(chunk);
                if drained {
                    return None;
                }
            }
            Ok(None) => return Some(UpstreamEnd::Complete),
            // An upstream failure ends the stream without `completed`.
            Err(_) => return Some(UpstreamEnd::Failed),
        }
        if batched < WRITE_AT {
            read = ready_now(upstream.read_response_body_joined(WRITE_AT));
        }
    }
    None
}

/// Decode and mask every chunk of `batch` into `out`. Returns false when a chunk could not be
/// decompressed: the stream then ends with an `error` event.
///
/// The round's chunks are decoded into one piece and masked together (in pieces of at most
/// [`WRITE_AT`] bytes plus one decoded chunk, so memory stays bounded as before): the Claude API
/// sends one chunk per event, and the masker's fixed cost per call — framing, a Hyperscan
/// stream scan, a delta event written — was paid once per event. Masking is the same however
/// the input is cut (the masker's invariant), so only the number of calls changes.
fn mask_batch(
    masker: &mut StreamMasker,
    decoder: &mut Decoder,
    batch: &mut Vec<Bytes>,
    out: &mut Vec<u8>,
) -> bool {
    let mut decoded_all = true;
    let total: usize = batch.iter().map(Bytes::len).sum();
    // Masked output is about as long as its input (placeholders are near a secret's length),
    // plus the text held back from the previous read, which goes out with this one (a word,
    // rarely more): room for it, so the vector is not grown and copied for a one-event read.
    out.reserve(total + 128);
    if let ([chunk], true) = (batch.as_slice(), decoder.is_identity()) {
        // One piece already (reads join what arrived together): no copy to join it.
        masker.push(chunk, out);
        batch.clear();
        return true;
    }
    let mut input = Vec::with_capacity(total.min(WRITE_AT));
    for chunk in batch.drain(..) {
        if decoder.decode_into(&chunk, &mut input).is_err() {
            masker.push(&input, out);
            input.clear();
            if !masker.faulted() {
                out.extend(masker.ending(
                    "api_error",
                    "streammask: the upstream response could not be decompressed",
                ));
            }
            decoded_all = false;
            break;
        }
        if input.len() >= WRITE_AT {
            masker.push(&input, out);
            input.clear();
            if masker.faulted() {
                break;
            }
        }
    }
    if !input.is_empty() {
        masker.push(&input, out);
    }
    batch.clear();
    decoded_all
}

/// Hand the originals of thinking masked for the client to the thinking vault (if any). The
/// put is polled once here — an in-memory vault is done by then — and otherwise continues in
/// a task of its own, so client bytes never wait for it.
fn keep_thinking(state: &ProxyState, originals: Vec<ThinkingOriginal>) {
    let Some(vault) = state.thinking_vault.as_ref() else {
        return;
    };
    if originals.is_empty() {
        return;
    }
    let vault = std::sync::Arc::clone(vault);
    let entries: Vec<VaultEntry> = originals.into_iter().map(VaultEntry::from).collect();
    let mut put = Box::pin(async move {
        if let Err(error) = vault.put(entries).await {
            tracing::warn!(%error, "thinking originals not kept: their blocks will be masked when they return");
        }
    });
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if std::future::Future::poll(put.as_mut(), &mut cx).is_pending() {
        tokio::spawn(put);
    }
}

/// Polls a future once: its output if it is ready now, `None` (dropping it) if it would wait.
/// Only for futures that are cancel-safe while pending.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
