//! Bedrock's streamed responses (AWS event-stream frames carrying base64 Anthropic events):
//! 1. encode → cut anywhere → decode is the identity, for every cut of every frame sequence;
//! 2. masking through frames equals block masking of the concatenated text, for every cut of
//!    the byte stream and every split of the text into deltas — so a secret split across
//!    frames is masked;
//! 3. a corrupt frame, an unknown event type or a body that ends inside a frame ends the
//!    stream with an `exception` frame, and nothing after it reaches the client.

mod support;

use base64::Engine as _;
use proptest::prelude::*;
use std::sync::Arc;
use streammask::anthropic::bedrock::BedrockStream;
use streammask::anthropic::event_stream::{encode, Frame, FrameDecoder, HeaderValue};
use streammask::anthropic::messages::SseTransformer;
use streammask::engine::ThinkingMode;
use streammask::{Engine, Scope};
use support::*;

const MAX_EVENT: usize = 1 << 20;

fn chunk_frame(event: &serde_json::Value) -> Frame {
    let bytes = base64::engine::general_purpose::STANDARD.encode(event.to_string());
    Frame::with_strings(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        serde_json::json!({"bytes": bytes, "p": "abcdefghij"}).to_string(),
    )
}

/// The events of a streamed reply whose one text block is `deltas` joined.
fn reply_events(deltas: &[&str]) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ];
    for delta in deltas {
        events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}}));
    }
    events.push(json!({"type": "content_block_stop", "index": 0}));
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 9}}));
    events.push(
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3}}),
    );
    events
}

fn wire(events: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        encode(&chunk_frame(event), &mut out);
    }
    out
}

/// Run `input` through a Bedrock stream masker, cut at `cuts`; decode what the client gets.
fn through_proxy(engine: &Arc<Engine>, input: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let sse = SseTransformer::new(Arc::clone(engine), ThinkingMode::Mask, MAX_EVENT);
    let mut stream = BedrockStream::new(sse, MAX_EVENT);
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(at, input.len());
        stream.push(&input[at..cut], &mut out);
        at = cut;
    }
    stream.finish(&mut out);
    let mut decoder = FrameDecoder::new(usize::MAX);
    let mut frames = Vec::new();
    decoder
        .push(&out, &mut frames)
        .expect("the proxy writes valid frames");
    decoder.finish().expect("the proxy writes whole frames");
    frames
}

/// The Anthropic events the client decodes from `frames` (exceptions as `("exception", type)`).
fn client_events(frames: &[Frame]) -> Vec<serde_json::Value> {
    frames
        .iter()
        .map(|frame| match frame.header_str(":message-type") {
            Some("event") => {
                let payload: serde_json::Value =
                    serde_json::from_slice(&frame.payload).expect("payload is JSON");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(payload["bytes"].as_str().expect("bytes"))
                    .expect("base64");
                serde_json::from_slice(&bytes).expect("an Anthropic event")
            }
            _ => serde_json::json!({
                "exception": frame.header_str(":exception-type"),
                "payload": String::from_utf8_lossy(&frame.payload),
            }),
        })
        .collect()
}

fn streamed_text(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .map(|e| e["delta"]["text"].as_str().unwrap_or_default())
        .collect()
}

#[test]
fn frames_decode_to_what_was_encoded_at_every_cut() {
    let mut frames = vec![Frame::default()];
    frames.extend(reply_events(&["hello ", "world"]).iter().map(chunk_frame));
    frames.push(Frame {
        headers: vec![
            ("b".into(), HeaderValue::Bytes(vec![0, 1, 2])),
            ("t".into(), HeaderValue::Timestamp(1_700_000_000_000)),
            ("i".into(), HeaderValue::Int(-3)),
            ("s".into(), HeaderValue::Short(7)),
            ("y".into(), HeaderValue::Byte(-1)),
            ("yes".into(), HeaderValue::Bool(true)),
        ],
        payload: bytes::Bytes::from_static(b"\x00\xffbinary"),
    });
    let mut bytes = Vec::new();
    for frame in &frames {
        encode(frame, &mut bytes);
    }
    for first in 0..=bytes.len() {
        for second in [first, (first + 13).min(bytes.len()), bytes.len()] {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut decoded = Vec::new();
            for part in [&bytes[..first], &bytes[first..second], &bytes[second..]] {
                decoder.push(part, &mut decoded).expect("valid");
            }
            decoder.finish().expect("whole");
            assert_eq!(decoded, frames, "cuts at {first} and {second}");
        }
    }
}

#[test]
fn a_secret_split_across_frames_is_masked_at_every_cut() {
    let engine = default_engine();
    let secret_line = format!(
        "export GITHUB_TOKEN={}{}",
        "ghp_", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    );
    let text = format!("Here you go:\n{secret_line}\nDone.");
    let block = engine
        .mask(&text, Scope::Response)
        .expect("masks")
        .text
        .into_owned();
    assert_ne!(block, text, "the pack masks the token");
    // The token itself is cut across three deltas, so across three frames.
    let at = text.find("ghp_").expect("token") + 6;
    let deltas = [&text[..at], &text[at..at + 9], &text[at + 9..]];
    let input = wire(&reply_events(&deltas));
    for cut in 0..=input.len() {
        let frames = through_proxy(&engine, &input, &[cut]);
        let events = client_events(&frames);
        assert_eq!(streamed_text(&events), block, "cut at {cut}");
        assert_eq!(
            events.last().map(|e| e["type"].clone()),
            Some("message_stop".into())
        );
        assert!(frames
            .iter()
            .all(|f| f.header_str(":message-type") == Some("event")));
    }
}

#[test]
fn a_corrupt_frame_ends_the_stream_with_an_exception_and_nothing_after_it() {
    let engine = fixture_engine(8192);
    let events = reply_events(&["first part ", "second part"]);
    let mut input = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let mut frame = Vec::new();
        encode(&chunk_frame(event), &mut frame);
        if i == 3 {
            let last = frame.len() - 1;
            frame[last] ^= 0x55;
        }
        input.extend(frame);
    }
    for cut in [0, 10, input.len() / 2] {
        let frames = through_proxy(&engine, &input, &[cut]);
        let last = frames.last().expect("frames");
        assert_eq!(last.header_str(":message-type"), Some("exception"));
        assert_eq!(
            last.header_str(":exception-type"),
            Some("internalServerException")
        );
        let client = client_events(&frames);
        assert!(
            !streamed_text(&client).contains("second part"),
            "{client:?}"
        );
        assert!(
            client.iter().all(|e| e["type"] != "message_stop"),
            "nothing after the corrupt frame: {client:?}"
        );
    }
    // A body that stops inside a frame, and a frame of an unknown type, end it the same way.
    let whole = wire(&events);
    let frames = through_proxy(&engine, &whole[..whole.len() - 5], &[]);
    assert_eq!(
        frames.last().and_then(|f| f.header_str(":message-type")),
        Some("exception")
    );
    let mut odd = Vec::new();
    encode(
        &Frame::with_strings(
            &[(":message-type", "event"), (":event-type", "surprise")],
            "{}",
        ),
        &mut odd,
    );
    let frames = through_proxy(&engine, &odd, &[]);
    assert_eq!(
        frames.last().and_then(|f| f.header_str(":message-type")),
        Some("exception")
    );
}

#[test]
fn an_upstream_exception_is_scanned_and_forwarded_with_its_type() {
    let engine = default_engine();
    let token = format!("{}{}", "ghp_", "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2");
    let mut input = wire(&reply_events(&["partial answer"])[..3]);
    encode(
        &Frame::with_strings(
            &[
                (":message-type", "exception"),
                (":exception-type", "modelStreamErrorException"),
                (":content-type", "application/json"),
            ],
            serde_json::json!({"message": format!("failed near GITHUB_TOKEN={token}")}).to_string(),
        ),
        &mut input,
    );
    let frames = through_proxy(&engine, &input, &[7]);
    let last = frames.last().expect("frames");
    assert_eq!(
        last.header_str(":exception-type"),
        Some("modelStreamErrorException")
    );
    let payload = String::from_utf8_lossy(&last.payload);
    assert!(!payload.contains(&token), "{payload}");
    assert!(payload.contains("failed near"), "{payload}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn masking_through_frames_equals_block_masking(
        pieces in proptest::collection::vec(prop_oneof![
            Just("password = \"hunter2hunter2\" ".to_string()),
            Just("Authorization: Bearer tok_abcdefghijklmnopqrstuv ".to_string()),
            Just("plain words here ".to_string()),
            Just("日本語 ".to_string()),
            "[a-zA-Z0-9 =:\"_-]{0,30}",
        ], 1..6),
        delta_seed in any::<u64>(),
        cut_seed in any::<u64>(),
    ) {
        let engine = fixture_engine(8192);
        let text: String = pieces.concat();
        let block = engine.mask(&text, Scope::Response).expect("masks").text.into_owned();
        // Split the text into deltas at random character boundaries.
        let mut rng = support::corpus::Rng::new(delta_seed);
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        let mut cuts: Vec<usize> = boundaries.into_iter().filter(|_| rng.below(4) == 0).collect();
        cuts.push(text.len());
        let mut deltas = Vec::new();
        let mut at = 0;
        for cut in cuts {
            deltas.push(&text[at..cut]);
            at = cut;
        }
        let input = wire(&reply_events(&deltas));
        let mut rng = support::corpus::Rng::new(cut_seed);
        let mut byte_cuts: Vec<usize> = (0..8).map(|_| rng.below(input.len() + 1)).collect();
        byte_cuts.sort_unstable();
        let events = client_events(&through_proxy(&engine, &input, &byte_cuts));
        prop_assert_eq!(streamed_text(&events), block);
    }
}
