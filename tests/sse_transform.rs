//! The SSE transformer fails closed on events of an unexpected shape: a field the
//! streaming masker does not read never reaches the client unscanned.

mod support;

use streammask::anthropic::messages::SseTransformer;
use streammask::engine::ThinkingMode;
use support::*;

const PLANTED: &str = "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";

fn transform(events: &[String]) -> String {
    let mut sse = SseTransformer::new(default_engine(), ThinkingMode::Report, 1 << 20);
    let mut out = Vec::new();
    for event in events {
        sse.push(event.as_bytes(), &mut out);
    }
    sse.finish(&mut out);
    String::from_utf8(out).expect("utf-8")
}

fn event(name: Option<&str>, data: &str) -> String {
    match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

fn stream_with_delta(delta: String) -> Vec<String> {
    vec![
        event(
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        delta,
        event(
            Some("content_block_stop"),
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        event(Some("message_stop"), r#"{"type":"message_stop"}"#),
    ]
}

#[test]
fn extra_fields_in_a_text_delta_are_not_forwarded_unscanned() {
    for name in [Some("content_block_delta"), None] {
        for data in [
            format!(
                r#"{{"type":"content_block_delta","index":0,"note":"{PLANTED}","delta":{{"type":"text_delta","text":"hello world "}}}}"#
            ),
            format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"hello world ","extra":"{PLANTED}"}}}}"#
            ),
        ] {
            let out = transform(&stream_with_delta(event(name, &data)));
            assert!(!out.contains(PLANTED), "{name:?} {data}\n{out}");
            assert!(out.contains("hello world"), "{out}");
        }
    }
}

#[test]
fn a_plain_delta_is_forwarded_byte_for_byte() {
    let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello world "}}"#;
    for name in [Some("content_block_delta"), None] {
        let delta = event(name, data);
        let out = transform(&stream_with_delta(delta.clone()));
        assert!(out.contains(&delta), "{out}");
    }
}

#[test]
fn a_secret_split_across_plain_deltas_is_masked() {
    let (a, b) = PLANTED.split_at(17);
    let delta = |text: &str| {
        event(
            Some("content_block_delta"),
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{text}"}}}}"#
            ),
        )
    };
    let mut events = stream_with_delta(delta(&format!("token {a}")));
    events.insert(2, delta(&format!("{b} done")));
    let out = transform(&events);
    assert!(!out.contains(a) || !out.contains(b), "{out}");
    assert!(!out.contains(PLANTED));
    assert!(out.contains("[MASKED:github-pat-classic:"), "{out}");
}

#[test]
fn lines_beside_name_and_data_are_never_forwarded_unscanned() {
    // Comments and `id:` lines are legal SSE but carry nothing a client acts on; an event that
    // has them is re-encoded from its (scanned) name and data instead of forwarded raw. Every
    // event kind with a fast path is covered: start, delta, stop, ping, message_stop.
    let delta = event(
        Some("content_block_delta"),
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello world "}}"#,
    );
    let mut events = stream_with_delta(delta);
    events.insert(0, event(Some("ping"), r#"{"type":"ping"}"#));
    let extras = [format!(": {PLANTED}\n"), format!("id: {PLANTED}\n")];
    let events: Vec<String> = events
        .iter()
        .enumerate()
        .map(|(i, e)| e.replacen("\ndata:", &format!("\n{}data:", extras[i % 2]), 1))
        .collect();
    assert!(events.iter().all(|e| e.contains(PLANTED)));
    let out = transform(&events);
    assert!(!out.contains(PLANTED), "{out}");
    assert!(out.contains("hello world"), "{out}");
    assert!(
        out.contains("event: ping\ndata: {\"type\":\"ping\"}\n\n"),
        "{out}"
    );
    assert!(
        out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{out}"
    );
}

#[test]
fn a_secret_in_a_delta_with_json_escapes_is_masked() {
    let data = format!(
        r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"line one\n\"GITHUB_TOKEN\": \"{PLANTED}\"\tdone "}}}}"#
    );
    let out = transform(&stream_with_delta(event(
        Some("content_block_delta"),
        &data,
    )));
    assert!(!out.contains(PLANTED), "{out}");
    assert!(out.contains("[MASKED:github-pat-classic:"), "{out}");
    assert!(out.contains(r#"line one\n\"GITHUB_TOKEN\""#), "{out}");
}
