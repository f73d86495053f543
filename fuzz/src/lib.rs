//! The fuzz targets and their oracles, one module per target (`run` takes the fuzzer's bytes),
//! and what they share: one engine built once per process (the shipped rule pack), the secret
//! they plant, and readers that say what a client would make of the output.
//!
//! Oracles are checked with `assert!`: a failed oracle is a crash to libFuzzer, saved as an
//! artifact like any panic. The same functions replay the seeds and every input that once
//! failed (`fuzz/regressions/<target>/`) under `cargo test` (`tests/fuzz_regressions.rs`
//! includes this file), so a crash found once stays fixed without the nightly toolchain.
//! Modules refer to their siblings through `super::`, never `crate::`, for that reason.

use std::sync::{Arc, OnceLock};
use streammask::anthropic::sse::SseFramer;
use streammask::engine::masker::{Engine, DEFAULT_MAX_HOLD_BYTES};
use streammask::engine::placeholder::PlaceholderKey;
use streammask::RuleSet;

/// The shipped pack, compiled once per fuzzing process (compiling takes a second).
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let set = RuleSet::embedded().expect("the embedded pack loads");
        let key = PlaceholderKey::new(b"streammask-fuzz-key-0123456789").expect("key is long");
        Arc::new(Engine::compile(&set, key, DEFAULT_MAX_HOLD_BYTES).expect("the pack compiles"))
    }))
}

/// The planted secret: a GitHub token the pack must always mask, built from pieces so that no
/// literal secret sits in the source.
pub fn planted() -> String {
    format!("ghp_{}{}", "QENbkqiGtLIUjENVR5mB", "wFuzzPlant0d8RXsh")
}

/// Where a planted secret goes: this marker in the fuzz input is replaced by the secret with a
/// space on each side (so the token is always whole, never glued to neighbouring characters
/// that would make it a different, longer token).
pub const PLANT_MARKER: &[u8] = b"@@";

/// `data` with every [`PLANT_MARKER`] replaced by ` <secret> `; the count of replacements.
/// Copies of the secret's prefix already in `data` (crossed over from a seed or an earlier
/// input) are defused first (`ghp_` → `gxp_`): glued to other characters they make a longer
/// token that is, by design, no GitHub token, and the oracles would take it for a leak.
pub fn plant(data: &[u8]) -> (Vec<u8>, usize) {
    let secret = format!(" {} ", planted());
    let defused = defuse(data);
    let data = &defused[..];
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut planted = 0;
    let mut rest = data;
    while let Some(at) = find(rest, PLANT_MARKER) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(secret.as_bytes());
        planted += 1;
        rest = &rest[at + PLANT_MARKER.len()..];
    }
    out.extend_from_slice(rest);
    (out, planted)
}

fn defuse(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut from = 0;
    while let Some(at) = find(&out[from..], b"ghp_") {
        out[from + at + 1] = b'x';
        from += at + 4;
    }
    out
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Cut points for feeding `len` bytes in pieces, read from `spec` (each byte a piece length of
/// 1–256); the pieces cycle through `spec`.
pub fn cuts(spec: &[u8], len: usize) -> Vec<usize> {
    if spec.is_empty() {
        return Vec::new();
    }
    let mut cuts = Vec::new();
    let mut at = 0;
    for &step in spec.iter().cycle() {
        at += step as usize + 1;
        if at >= len {
            break;
        }
        cuts.push(at);
    }
    cuts
}

/// Every string (keys too) of a JSON value, for checking what a reader of the value sees.
pub fn strings(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => into.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, into)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                into.push(k.clone());
                strings(v, into);
            }
        }
        _ => {}
    }
}

/// What an SDK makes of a stream: the joined `text_delta` and `thinking_delta` texts, every
/// content block accumulated by index (text, thinking, signature, tool input parsed), and every
/// string of every event.
#[derive(Debug, Default)]
pub struct ClientView {
    pub text: String,
    pub thinking: String,
    pub blocks: std::collections::BTreeMap<u64, serde_json::Value>,
    pub strings: Vec<String>,
}

/// Read a stream as an SDK does. The output must frame as SSE and every event's data must be
/// JSON, or this panics (an oracle).
pub fn read_sse(out: &[u8]) -> ClientView {
    use serde_json::{json, Value};
    let mut framer = SseFramer::new(usize::MAX);
    let mut events = framer.push(out).expect("the output frames as SSE");
    events.extend(framer.finish().expect("the output frames as SSE"));
    let mut view = ClientView::default();
    let mut json_bufs: std::collections::BTreeMap<u64, String> = Default::default();
    for event in events {
        if event.is_empty() {
            continue;
        }
        let data: Value = serde_json::from_str(event.data())
            .unwrap_or_else(|e| panic!("output event data is JSON ({e}): {:?}", event.data()));
        strings(&data, &mut view.strings);
        let index = data["index"].as_u64().unwrap_or(u64::MAX);
        match data["type"].as_str().unwrap_or_default() {
            "content_block_start" => {
                view.blocks.insert(index, data["content_block"].clone());
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                let block = view.blocks.entry(index).or_insert(json!({}));
                let mut append = |field: &str, text: &str| {
                    let joined = format!("{}{text}", block[field].as_str().unwrap_or(""));
                    block[field] = json!(joined);
                };
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => {
                        let text = delta["text"].as_str().unwrap_or_default();
                        view.text.push_str(text);
                        append("text", text);
                    }
                    "thinking_delta" => {
                        let text = delta["thinking"].as_str().unwrap_or_default();
                        view.thinking.push_str(text);
                        append("thinking", text);
                    }
                    "signature_delta" => block["signature"] = delta["signature"].clone(),
                    "input_json_delta" => json_bufs
                        .entry(index)
                        .or_default()
                        .push_str(delta["partial_json"].as_str().unwrap_or_default()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for (index, buf) in json_bufs {
        if let Some(block) = view.blocks.get_mut(&index) {
            block["input"] = serde_json::from_str(&buf).unwrap_or(json!(buf));
        }
    }
    view
}

/// The Messages stream masker (`SseTransformer`, which frames SSE itself) over random bytes and
/// over generated streams, fed in random pieces.
///
/// Oracles: no panic; the output frames as SSE and every event's data is JSON; a secret planted
/// anywhere in the input is in neither the raw output nor any string a client reads from it nor
/// the joined text or thinking or any accumulated block; a generated clean stream reads the
/// same to a client (joined texts and every block as an SDK accumulates it).
pub mod sse_stream {
    use super::{cuts, engine, plant, planted, read_sse, ClientView};
    use serde_json::json;
    use streammask::anthropic::messages::SseTransformer;
    use streammask::engine::ThinkingMode;

    pub fn run(data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let Some((&spec_len, rest)) = rest.split_first() else {
            return;
        };
        let spec_len = (spec_len as usize % 16).min(rest.len());
        let (spec, payload) = rest.split_at(spec_len);
        if mode & 1 == 0 {
            raw(spec, payload);
        } else {
            generated(spec, payload);
        }
    }

    fn transform(input: &[u8], spec: &[u8]) -> Vec<u8> {
        let mut sse = SseTransformer::new(engine(), ThinkingMode::Mask, 1 << 20);
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts(spec, input.len()).into_iter().chain([input.len()]) {
            sse.push(&input[from..cut], &mut out);
            from = cut;
        }
        sse.finish(&mut out);
        out
    }

    pub fn assert_no_secret(out: &[u8], view: &ClientView) {
        let secret = planted();
        let raw = String::from_utf8_lossy(out);
        if let Some(at) = raw.find(&secret) {
            let from = (0..=at.saturating_sub(300))
                .rev()
                .find(|&i| raw.is_char_boundary(i))
                .unwrap_or(0);
            let to = ((at + 300).min(raw.len())..=raw.len())
                .find(|&i| raw.is_char_boundary(i))
                .unwrap_or(raw.len());
            panic!("planted secret in the raw output: {:?}", &raw[from..to]);
        }
        assert!(
            !view.text.contains(&secret),
            "planted secret in the joined text"
        );
        assert!(
            !view.thinking.contains(&secret),
            "planted secret in the joined thinking"
        );
        assert!(
            view.strings.iter().all(|s| !s.contains(&secret)),
            "planted secret in a string of an output event"
        );
        assert!(
            view.blocks
                .values()
                .all(|b| !b.to_string().contains(&secret)),
            "planted secret in an accumulated block"
        );
    }

    /// Any bytes, with `@@` replaced by the planted secret.
    fn raw(spec: &[u8], payload: &[u8]) {
        let (input, planted_count) = plant(payload);
        let out = transform(&input, spec);
        let view = read_sse(&out);
        if planted_count > 0 {
            assert_no_secret(&out, &view);
        }
    }

    /// A stream of text, thinking and tool blocks whose texts come from `payload`; the secret may
    /// be planted split across two deltas or two adjacent text blocks.
    fn generated(spec: &[u8], payload: &[u8]) {
        let (input, plants) = generate(payload);
        let out = transform(input.as_bytes(), spec);
        let view = read_sse(&out);
        if plants > 0 {
            assert_no_secret(&out, &view);
            return;
        }
        // Clean: what a client reads is what the upstream sent. (Not byte for byte: the masker
        // may hold a block's tail past a later delta of that block, e.g. its signature.)
        let before = read_sse(input.as_bytes());
        assert_eq!(
            view.text, before.text,
            "a clean stream's joined text changed"
        );
        assert_eq!(
            view.thinking, before.thinking,
            "a clean stream's joined thinking changed"
        );
        assert_eq!(
            view.blocks, before.blocks,
            "a clean stream's blocks changed"
        );
    }

    /// A Messages stream generated from `payload` (see [`generated`]) and how many secrets
    /// were planted in it.
    pub fn generate(payload: &[u8]) -> (String, usize) {
        let mut bytes = payload.iter().copied();
        let mut next = move || bytes.next().unwrap_or(0);
        const ALPHABET: &[&str] = &["a", "b", "c", "x", "y", "z", " ", " ", "\n", "é", "✓", "q"];
        let blocks_len = 1 + next() as usize % 4;
        let mut blocks: Vec<(u8, Vec<String>)> = (0..blocks_len)
            .map(|_| {
                let kind = next() % 3;
                let pieces = (0..1 + next() as usize % 5)
                    .map(|_| {
                        (0..next() as usize % 13)
                            .map(|_| ALPHABET[next() as usize % ALPHABET.len()])
                            .collect::<String>()
                    })
                    .collect();
                (kind, pieces)
            })
            .collect();
        let secret = planted();
        let mut plants = 0;
        for _ in 0..next() % 3 {
            let b = next() as usize % blocks.len();
            let split = 1 + next() as usize % (secret.len() - 1);
            let (head, tail) = secret.split_at(split);
            let next_is_text = blocks.get(b + 1).is_some_and(|(k, _)| *k == 0);
            let p = next() as usize % blocks[b].1.len();
            plants += 1;
            if blocks[b].0 == 0 && next_is_text && p == blocks[b].1.len() - 1 {
                blocks[b].1[p].push_str(&format!(" {head}"));
                let following = &mut blocks[b + 1].1[0];
                *following = format!("{tail} {following}");
            } else {
                blocks[b].1[p].push_str(&format!(" {head}"));
                blocks[b].1.insert(p + 1, format!("{tail} "));
            }
        }
        (render(&blocks), plants)
    }

    fn event(name: &str, data: serde_json::Value) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    fn render(blocks: &[(u8, Vec<String>)]) -> String {
        let mut out = event(
            "message_start",
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",
                "model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,
                "usage":{"input_tokens":1,"output_tokens":1}}}),
        );
        for (index, (kind, pieces)) in blocks.iter().enumerate() {
            let delta = |d: serde_json::Value| {
                event(
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":index,"delta":d}),
                )
            };
            match kind {
                0 => {
                    out += &event(
                        "content_block_start",
                        json!({"type":"content_block_start","index":index,"content_block":{"type":"text","text":""}}),
                    );
                    for p in pieces {
                        out += &delta(json!({"type":"text_delta","text":p}));
                    }
                }
                1 => {
                    out += &event(
                        "content_block_start",
                        json!({"type":"content_block_start","index":index,
                            "content_block":{"type":"thinking","thinking":"","signature":""}}),
                    );
                    for p in pieces {
                        out += &delta(json!({"type":"thinking_delta","thinking":p}));
                    }
                    out += &delta(json!({"type":"signature_delta","signature":"EqQBsig=="}));
                }
                _ => {
                    out += &event(
                        "content_block_start",
                        json!({"type":"content_block_start","index":index,
                            "content_block":{"type":"tool_use","id":"toolu_1","name":"note","input":{}}}),
                    );
                    let input = json!({ "text": pieces.concat() }).to_string();
                    let mid = (input.len() / 2..input.len())
                        .find(|&i| input.is_char_boundary(i))
                        .unwrap_or(input.len());
                    out += &delta(json!({"type":"input_json_delta","partial_json":&input[..mid]}));
                    out += &delta(json!({"type":"input_json_delta","partial_json":&input[mid..]}));
                }
            }
            out += &event(
                "content_block_stop",
                json!({"type":"content_block_stop","index":index}),
            );
        }
        out += &event(
            "message_delta",
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
                "usage":{"output_tokens":5}}),
        );
        out += &event("message_stop", json!({"type":"message_stop"}));
        out
    }
}

/// Bedrock's event-stream framing: the frame decoder on any bytes, and the Bedrock stream masker
/// on frames built from SSE streams (raw with `@@` planted, or generated with secrets split
/// across deltas), cut anywhere, optionally with one frame corrupted.
///
/// Oracles: no panic; bytes that decode as frames encode back to themselves; what the masker
/// writes always decodes as whole, valid frames, with an `exception` frame only last; the events
/// in its `chunk` frames read as an SDK reads SSE (JSON data); a planted secret is in none of
/// them; a clean, uncorrupted stream reads the same after masking.
pub mod event_stream {
    use super::{cuts, plant, read_sse, sse_stream};
    use base64::Engine as _;
    use streammask::anthropic::bedrock::{chunk_frame_bytes, BedrockStream};
    use streammask::anthropic::event_stream::{encode, FrameDecoder};
    use streammask::anthropic::messages::SseTransformer;
    use streammask::anthropic::sse::{write_event, SseFramer};
    use streammask::engine::ThinkingMode;

    pub fn run(data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let Some((&spec_len, rest)) = rest.split_first() else {
            return;
        };
        let spec_len = (spec_len as usize % 16).min(rest.len());
        let (spec, payload) = rest.split_at(spec_len);
        let corrupt = (mode >> 2) as usize;
        match mode & 3 {
            0 => {
                let (input, planted) = plant(payload);
                let frames = frames_of_sse(&input);
                check(&frames, spec, corrupt % 8 == 1, planted > 0);
            }
            1 => {
                let (input, planted) = sse_stream::generate(payload);
                let frames = frames_of_sse(input.as_bytes());
                check(&frames, spec, corrupt % 8 == 1, planted > 0);
            }
            _ => decode_raw(payload, spec),
        }
    }

    /// Any bytes as an upstream body: no panic, whole frames out, and identity where it decodes.
    fn decode_raw(payload: &[u8], spec: &[u8]) {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut frames = Vec::new();
        if decoder.push(payload, &mut frames).is_ok() && decoder.finish().is_ok() {
            let mut again = Vec::new();
            for frame in &frames {
                encode(frame, &mut again);
            }
            assert_eq!(
                again, payload,
                "decoded frames do not encode back to their bytes"
            );
        }
        client_view(&mask(payload, spec));
    }

    /// One `chunk` frame per event of an SSE stream.
    fn frames_of_sse(input: &[u8]) -> Vec<u8> {
        let mut framer = SseFramer::new(usize::MAX);
        let mut events = framer.push(input).unwrap_or_default();
        events.extend(framer.finish().ok().flatten());
        let mut out = Vec::new();
        for event in events.iter().filter(|e| !e.is_empty()) {
            chunk_frame_bytes(event.data(), &mut out);
        }
        out
    }

    fn mask(input: &[u8], spec: &[u8]) -> Vec<u8> {
        let sse = SseTransformer::new(super::engine(), ThinkingMode::Mask, 1 << 20);
        let mut stream = BedrockStream::new(sse, 1 << 20);
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts(spec, input.len()).into_iter().chain([input.len()]) {
            stream.push(&input[from..cut], &mut out);
            from = cut;
        }
        stream.finish(&mut out);
        out
    }

    /// The client's reading of the masker's output: frames (all whole and valid, an exception
    /// only last) and the SSE stream their chunks carry.
    fn client_view(out: &[u8]) -> (super::ClientView, Vec<u8>) {
        let mut decoder = FrameDecoder::new(usize::MAX);
        let mut frames = Vec::new();
        decoder
            .push(out, &mut frames)
            .expect("the masker writes valid frames");
        decoder.finish().expect("the masker writes whole frames");
        let mut sse = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            match frame.header_str(":message-type") {
                Some("event") => {
                    let payload: serde_json::Value =
                        serde_json::from_slice(&frame.payload).expect("chunk payload is JSON");
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(payload["bytes"].as_str().expect("chunk has bytes"))
                        .expect("chunk bytes are base64");
                    let data = String::from_utf8(bytes).expect("chunk event is UTF-8");
                    write_event(&mut sse, None, &data);
                }
                Some("exception") => {
                    assert_eq!(i, frames.len() - 1, "an exception frame is not the last");
                    sse.extend_from_slice(b"data: ");
                    sse.extend_from_slice(&frame.payload);
                    sse.extend_from_slice(b"\n\n");
                }
                other => panic!("the masker wrote a frame of kind {other:?}"),
            }
        }
        (read_sse(&sse), sse)
    }

    fn check(input: &[u8], spec: &[u8], corrupt: bool, planted: bool) {
        let mut input = input.to_vec();
        if corrupt && !input.is_empty() {
            let at = spec.first().map_or(0, |&b| b as usize * 97) % input.len();
            input[at] ^= 0x20;
        }
        let out = mask(&input, spec);
        let (view, sse) = client_view(&out);
        if planted {
            sse_stream::assert_no_secret(&sse, &view);
            sse_stream::assert_no_secret(&out, &view);
        }
    }
}

/// The request JSON walker over random bodies, strict (requests) and lenient (responses).
///
/// Oracles: no panic; a rewritten body serde read before is one it reads after; a body without a
/// finding comes back unrewritten (forwarded byte for byte); a secret planted anywhere (`@@`
/// in the input) is, when the walk succeeds without refusals, in no string or key of what would
/// be forwarded — read as a client reads it, escapes decoded.
pub mod json_walk {
    use super::{engine, plant, planted, strings};
    use streammask::engine::json_walk::{mask_json, mask_json_learning, WalkOptions};
    use streammask::engine::ThinkingMode;
    use streammask::Scope;

    pub fn run(data: &[u8]) {
        let Some((&mode, payload)) = data.split_first() else {
            return;
        };
        let options = WalkOptions {
            scope: if mode & 1 == 0 {
                Scope::Request
            } else {
                Scope::Response
            },
            thinking: ThinkingMode::Mask,
            lenient: mode & 2 != 0,
        };
        let (body, planted_count) = plant(payload);
        let engine = engine();
        let Ok(walked) = mask_json(&engine, &body, &options) else {
            return;
        };
        let forwarded: &[u8] = walked.body.as_deref().unwrap_or(&body);
        // What serde reads before the rewrite, it reads after. (The walker also accepts what
        // stricter readers refuse and lenient ones take: lone surrogate escapes, and in lenient
        // mode a byte-order mark and `NaN`; those bodies are compared as they are.)
        if walked.body.is_some() && serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
            let parsed = serde_json::from_slice::<serde_json::Value>(forwarded);
            assert!(
                parsed.is_ok(),
                "a rewritten body is not JSON: {:?}",
                parsed.err()
            );
        }
        if walked.findings.is_empty() && walked.refusals.is_empty() {
            assert!(
                walked.body.is_none(),
                "a body without findings was rewritten"
            );
        }
        learning_agrees(&engine, &body, &options, &walked);
        if planted_count > 0 && walked.refusals.is_empty() {
            let secret = planted();
            assert!(
                !String::from_utf8_lossy(forwarded).contains(&secret),
                "planted secret forwarded raw"
            );
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(forwarded) {
                let mut all = Vec::new();
                strings(&value, &mut all);
                assert!(
                    all.iter().all(|s| !s.contains(&secret)),
                    "planted secret in a string a client reads"
                );
            }
        }
    }

    /// The learning walk (restore) rewrites exactly as the plain walk does; each placeholder it
    /// reports is one its findings carry and stands for a non-empty text — the very text the
    /// placeholder names when the body has no escapes (through an escape the text is kept as
    /// the string held it, which is what restore must give back); each signed-thinking range
    /// of the output is a whole JSON string.
    fn learning_agrees(
        engine: &streammask::engine::Engine,
        body: &[u8],
        options: &WalkOptions,
        plain: &streammask::engine::json_walk::Walked,
    ) {
        let learning = match mask_json_learning(engine, body, options, None, None) {
            Ok(learning) => learning,
            Err(error) => panic!("the learning walk failed where the plain one did not: {error}"),
        };
        assert_eq!(learning.body, plain.body, "learning changed the rewrite");
        assert_eq!(
            learning.findings, plain.findings,
            "learning changed the findings"
        );
        let forwarded: &[u8] = learning.body.as_deref().unwrap_or(body);
        let escapes = body.contains(&b'\\');
        for learned in &learning.learned {
            assert!(!learned.secret.is_empty(), "learned an empty text");
            assert!(
                learning
                    .findings
                    .iter()
                    .any(|f| f.finding.placeholder == learned.placeholder),
                "a learned placeholder no finding carries"
            );
            if !escapes {
                let rule_id = learned
                    .placeholder
                    .trim_start_matches("[MASKED:")
                    .rsplit_once(':')
                    .map(|(id, _)| id)
                    .unwrap_or_default();
                assert_eq!(
                    engine
                        .placeholder_key()
                        .placeholder(rule_id, learned.secret.as_bytes()),
                    learned.placeholder,
                    "a learned text is not what its placeholder names"
                );
            }
        }
        for range in &learning.signed_thinking {
            let slice = forwarded.get(range.clone()).expect("range inside the body");
            assert!(
                slice.len() >= 2 && slice.first() == Some(&b'"') && slice.last() == Some(&b'"'),
                "a signed-thinking range is not a JSON string"
            );
        }
    }
}

/// `decode_body` (request bodies, every coding and stack of codings) and the streaming
/// `Decoder` (responses) over random, truncated, lying and bomb-like inputs.
///
/// Oracles: no panic; a decoded body is never over its limit; a streaming decoder never returns
/// more than its per-chunk cap from one call; what a coding encodes, both decoders give back
/// exactly (round trip), whole or in random pieces; the two decoders agree on valid input.
pub mod decode_body {
    use super::cuts;
    use std::io::Write;
    use streammask::proxy::encoding::{decode_body, Decoder};

    const CODINGS: &[&str] = &["identity", "gzip", "deflate", "br", "zstd", "x-gzip"];
    const LIMIT: usize = 1 << 20;
    const CHUNK_CAP: usize = 256 << 10;

    pub fn run(data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let Some((&spec_len, rest)) = rest.split_first() else {
            return;
        };
        let spec_len = (spec_len as usize % 8).min(rest.len());
        let (spec, body) = rest.split_at(spec_len);
        let first = CODINGS[mode as usize % CODINGS.len()];
        let second = CODINGS[(mode as usize / 8) % CODINGS.len()];
        let label = if mode & 0x40 != 0 {
            format!("{first}, {second}")
        } else {
            first.to_string()
        };
        if mode & 0x80 != 0 {
            round_trip(first, body, spec);
            return;
        }
        // Arbitrary bytes under a (possibly stacked) label: an error or at most the limit.
        if let Ok(decoded) = decode_body(body.to_vec(), Some(&label), LIMIT) {
            assert!(decoded.len() <= LIMIT, "decoded past the limit");
        }
        let whole = decode_body(body.to_vec(), Some(first), LIMIT);
        if let Some(streamed) = stream(first, body, spec) {
            if let Ok(whole) = whole {
                // A stream that decodes cleanly in pieces decodes to what the whole body does
                // (the whole decoder may also accept a body the streaming one still waits on).
                assert!(
                    whole.starts_with(&streamed) || streamed.starts_with(&whole),
                    "whole and streamed decoding disagree"
                );
            }
        }
    }

    /// Feed `body` to a streaming decoder in pieces; its output, or `None` when it refused.
    fn stream(coding: &str, body: &[u8], spec: &[u8]) -> Option<Vec<u8>> {
        let mut decoder = Decoder::with_cap(Some(coding), CHUNK_CAP).expect("a known coding");
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts(spec, body.len()).into_iter().chain([body.len()]) {
            let piece = decoder.decode(&body[from..cut]).ok()?;
            assert!(piece.len() <= CHUNK_CAP, "a chunk decoded past its cap");
            out.extend(piece);
            from = cut;
        }
        let tail = decoder.decode(&[]).ok()?;
        assert!(tail.len() <= CHUNK_CAP, "a chunk decoded past its cap");
        out.extend(tail);
        Some(out)
    }

    fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
        match coding {
            "gzip" | "x-gzip" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).expect("in memory");
                e.finish().expect("in memory")
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).expect("in memory");
                e.finish().expect("in memory")
            }
            "br" => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 3, 20);
                    w.write_all(data).expect("in memory");
                }
                out
            }
            "zstd" => zstd::stream::encode_all(data, 1).expect("in memory"),
            _ => data.to_vec(),
        }
    }

    fn round_trip(coding: &str, data: &[u8], spec: &[u8]) {
        let encoded = encode(coding, data);
        let whole =
            decode_body(encoded.clone(), Some(coding), LIMIT).expect("a valid body decodes");
        assert_eq!(whole, data, "{coding}: whole round trip");
        let streamed = stream(coding, &encoded, spec).expect("a valid stream decodes");
        assert_eq!(streamed, data, "{coding}: streamed round trip");
    }
}

/// The JSON Lines (batch results) masker over random bodies fed in random pieces, with a small
/// line cap so the too-long path is reached.
///
/// Oracles: no panic; output has exactly as many lines as input; every non-blank output line is
/// JSON (lenient readers' JSON: a masked line, an error line or a line left as it was); a
/// planted secret is in no output line; nothing is held after `finish`.
pub mod jsonl {
    use super::{cuts, engine, plant, planted};
    use streammask::anthropic::jsonl::JsonlMasker;
    use streammask::engine::ThinkingMode;

    const MAX_LINE: usize = 4096;

    pub fn run(data: &[u8]) {
        let Some((&spec_len, rest)) = data.split_first() else {
            return;
        };
        let spec_len = (spec_len as usize % 16).min(rest.len());
        let (spec, payload) = rest.split_at(spec_len);
        let (input, planted_count) = plant(payload);
        let mut masker = JsonlMasker::new(engine(), ThinkingMode::Mask).with_max_line(MAX_LINE);
        let mut out = Vec::new();
        let mut from = 0;
        for cut in cuts(spec, input.len()).into_iter().chain([input.len()]) {
            masker.push(&input[from..cut], &mut out);
            assert!(masker.held() <= MAX_LINE, "held {} bytes", masker.held());
            from = cut;
        }
        masker.finish(&mut out);
        assert_eq!(masker.held(), 0, "bytes held after finish");
        let newlines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count();
        assert_eq!(newlines(&out), newlines(&input), "line count changed");
        if planted_count > 0 {
            let secret = planted();
            assert!(
                !String::from_utf8_lossy(&out).contains(&secret),
                "planted secret in the output"
            );
        }
    }
}

/// The config file loader: TOML parsing, then validation into the internal config.
///
/// Oracles: no panic; every refusal has a message; a secret planted in the file (`@@`) never
/// appears in an error message (a config holds keys: an error must name the key, not echo it).
pub mod config_toml {
    use super::{plant, planted};
    use streammask::config::FileConfig;

    pub fn run(data: &[u8]) {
        let (text, planted_count) = plant(data);
        let Ok(text) = std::str::from_utf8(&text) else {
            return;
        };
        let message = match FileConfig::parse("fuzz.toml", text).and_then(FileConfig::validate) {
            Ok(_) => return,
            Err(error) => error.to_string(),
        };
        assert!(!message.trim().is_empty(), "an empty error message");
        if planted_count > 0 {
            assert!(
                !message.contains(&planted()),
                "a config error echoes a secret: {message}"
            );
        }
    }
}

/// The rule file loader: TOML parsing and rule validation (patterns, examples, actions).
///
/// Oracles: no panic; every refusal has a message naming the file.
pub mod rules_toml {
    use streammask::RuleSet;

    pub fn run(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Err(error) = RuleSet::from_toml("fuzz-rules.toml", text) {
            let message = error.to_string();
            assert!(!message.trim().is_empty(), "an empty error message");
        }
    }
}

/// JWT verification with keys from a JWKS file: the input is a JWKS document, a NUL byte and a
/// bearer token, and both halves are mutated.
///
/// Oracles: no panic; a JWKS the verifier refuses gets a message; a token is accepted only if
/// its signed part is one the seed keys really signed (`seeds/jwt/signed.txt`; the private keys
/// were thrown away), so no change to header, claims, signature or key set (`alg: none`, HMAC
/// with the public key as secret, a swapped key) lets a forged token through; an accepted
/// token's caller is its `sub`.
pub mod jwt {
    use std::sync::OnceLock;
    use streammask::policy::auth::jwt::JwtVerifier;
    use streammask::policy::auth::{JwtConfig, KeySource};

    const SIGNED: &str = include_str!("../seeds/jwt/signed.txt");

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
        })
    }

    /// A JWKS file of this thread's own (tests replay inputs on several threads).
    fn jwks_path() -> std::path::PathBuf {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let thread = format!("{:?}", std::thread::current().id());
        let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
        dir.join(format!(
            "streammask-fuzz-jwks-{}-{thread}.json",
            std::process::id()
        ))
    }

    pub fn run(data: &[u8]) {
        let Some(nul) = data.iter().position(|&b| b == 0) else {
            return;
        };
        let (jwks, token) = (&data[..nul], &data[nul + 1..]);
        let Ok(token) = std::str::from_utf8(token) else {
            return;
        };
        let path = jwks_path();
        std::fs::write(&path, jwks).expect("write the JWKS");
        let config = JwtConfig {
            issuer: "https://idp.fuzz.test".into(),
            audience: vec!["streammask".into()],
            source: KeySource::File(path.clone()),
            groups_claim: vec!["groups".into()],
            leeway_secs: 60,
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::EdDSA,
            ],
            refresh_min_secs: 60,
            max_age_secs: 3600,
            ca_file: None,
        };
        let verifier = match JwtVerifier::new(config) {
            Ok(verifier) => verifier,
            Err(error) => {
                assert!(!error.to_string().trim().is_empty(), "an empty start error");
                return;
            }
        };
        if let Ok(caller) = runtime().block_on(verifier.verify(token)) {
            let signed_part = token.rsplit_once('.').map_or("", |(signed, _)| signed);
            assert!(
                SIGNED.lines().any(|line| line == signed_part),
                "a token the seed keys never signed was accepted: {token}"
            );
            assert_eq!(caller.subject, "dev@fuzz.test");
        }
    }
}
