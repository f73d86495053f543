//! Restore on the response path, through the real SSE transformer: a placeholder the caller
//! owns is given back exactly wherever the upstream cuts the stream (every byte position of
//! the `input_json_delta` pieces, of the text deltas with the text scope on), what the caller
//! does not own stays, and a block rule still judges the restored input.

mod support;

use proptest::prelude::*;
use serde_json::Value;
use std::sync::Arc;
use streammask::anthropic::messages::{mask_json_response_restoring, SseTransformer};
use streammask::anthropic::restore::{RestoreMap, RestoreScopes, Unrestored};
use streammask::engine::{RuleSet, ThinkingMode};
use support::*;

/// The default pack, compiled once for the whole file.
fn engine() -> Arc<streammask::engine::Engine> {
    static ENGINE: std::sync::OnceLock<Arc<streammask::engine::Engine>> =
        std::sync::OnceLock::new();
    Arc::clone(ENGINE.get_or_init(default_engine))
}

/// A secret with characters JSON must escape, and the placeholder that stands for it.
const SECRET: &str = "pa\"ss\\wo/rd-ZXCV-1234";
const PLACEHOLDER: &str = "[MASKED:uri-postgres:0a1b2c3d]";
const FOREIGN: &str = "[MASKED:uri-postgres:ffff0000]";

fn map(text: bool) -> Arc<RestoreMap> {
    let mut map = RestoreMap::new(RestoreScopes {
        tool_input: true,
        text,
    });
    map.insert(PLACEHOLDER.to_string(), SECRET.to_string());
    Arc::new(map)
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// A message whose block 0 starts as `block` and gets `deltas` (of `delta_type`, each piece
/// in field `field`).
fn message_stream(block: Value, delta_type: &str, field: &str, pieces: &[&str]) -> Vec<String> {
    let mut events = vec![
        event(
            "message_start",
            &serde_json::json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":1,"output_tokens":0}}}),
        ),
        event(
            "content_block_start",
            &serde_json::json!({"type":"content_block_start","index":0,"content_block":block}),
        ),
    ];
    for piece in pieces {
        let mut delta = serde_json::json!({"type": delta_type});
        delta[field] = Value::from(*piece);
        events.push(event(
            "content_block_delta",
            &serde_json::json!({"type":"content_block_delta","index":0,"delta":delta}),
        ));
    }
    events.push(event(
        "content_block_stop",
        &serde_json::json!({"type":"content_block_stop","index":0}),
    ));
    if delta_type == "input_json_delta" {
        events.push(event("message_delta", &serde_json::json!({"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}})));
    }
    events.push(event(
        "message_stop",
        &serde_json::json!({"type":"message_stop"}),
    ));
    events
}

/// A message whose block 0 is a tool call with `input` sent in `pieces`.
fn tool_stream(pieces: &[&str]) -> Vec<String> {
    let block = serde_json::json!({"type":"tool_use","id":"toolu_1","name":"Bash","input":{}});
    message_stream(block, "input_json_delta", "partial_json", pieces)
}

fn text_stream(pieces: &[&str]) -> Vec<String> {
    let block = serde_json::json!({"type":"text","text":""});
    message_stream(block, "text_delta", "text", pieces)
}

/// Run `events` through a transformer restoring with `map`; returns what a client joins: the
/// tool inputs (parsed) and the text, and the transformer's restore events.
fn client_view(
    events: &[String],
    map: Option<Arc<RestoreMap>>,
) -> (Vec<Value>, String, Vec<Option<Unrestored>>) {
    let mut sse = SseTransformer::new(engine(), ThinkingMode::Mask, 1 << 20);
    if let Some(map) = map {
        sse = sse.with_restore(map);
    }
    let mut out = Vec::new();
    for chunk in events {
        sse.push(chunk.as_bytes(), &mut out);
    }
    sse.finish(&mut out);
    let restore = sse.take_restore_events();
    let mut inputs = Vec::new();
    let mut text = String::new();
    let mut partial = String::new();
    for block in String::from_utf8(out).expect("utf-8").split("\n\n") {
        let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        let value: Value = serde_json::from_str(data).expect("every event is JSON");
        match value.pointer("/delta/type").and_then(Value::as_str) {
            Some("input_json_delta") => {
                partial.push_str(value["delta"]["partial_json"].as_str().unwrap_or_default())
            }
            Some("text_delta") => {
                text.push_str(value["delta"]["text"].as_str().unwrap_or_default())
            }
            _ => {}
        }
        if value["type"] == "content_block_stop" && !partial.is_empty() {
            inputs.push(serde_json::from_str(&partial).expect("tool input is JSON"));
            partial.clear();
        }
    }
    (
        inputs,
        text,
        restore.into_iter().map(|e| e.unrestored).collect(),
    )
}

fn tool_input() -> String {
    serde_json::json!({"command": format!("psql '{PLACEHOLDER}' && echo {FOREIGN}")}).to_string()
}

#[test]
fn a_tool_input_split_at_every_byte_is_restored_exactly() {
    let input = tool_input();
    let expected = serde_json::json!({"command": format!("psql '{SECRET}' && echo {FOREIGN}")});
    for cut in 0..=input.len() {
        let (head, tail) = input.split_at(cut);
        let (inputs, _, events) = client_view(&tool_stream(&[head, tail]), Some(map(false)));
        assert_eq!(inputs, vec![expected.clone()], "cut at {cut}");
        assert_eq!(
            events,
            vec![None, Some(Unrestored::Unknown)],
            "cut at {cut}"
        );
    }
    // Without a map nothing is restored.
    let (inputs, _, events) = client_view(&tool_stream(&[&input]), None);
    assert_eq!(
        inputs[0]["command"],
        format!("psql '{PLACEHOLDER}' && echo {FOREIGN}")
    );
    assert!(events.is_empty());
}

#[test]
fn text_is_restored_only_with_the_text_scope_at_every_cut() {
    let text = format!("use {PLACEHOLDER} not {FOREIGN} [MASKED:");
    let expected = text.replace(PLACEHOLDER, SECRET);
    for cut in 0..=text.len() {
        let (head, tail) = text.split_at(cut);
        let (_, joined, _) = client_view(&text_stream(&[head, tail]), Some(map(true)));
        assert_eq!(joined, expected, "cut at {cut}");
        let (_, joined, events) = client_view(&text_stream(&[head, tail]), Some(map(false)));
        assert_eq!(joined, text, "cut at {cut}");
        assert!(events.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn any_cutting_of_input_and_text_restores_exactly(
        cuts in proptest::collection::vec(0usize..200, 0..10),
    ) {
        let input = tool_input();
        let text = format!("a {PLACEHOLDER} b {PLACEHOLDER}");
        let pieces = |whole: &str| -> Vec<String> {
            let mut at: Vec<usize> = cuts.iter().map(|c| (*c).min(whole.len())).collect();
            at.sort_unstable();
            let mut out = Vec::new();
            let mut last = 0;
            for cut in at {
                out.push(whole[last..cut].to_string());
                last = cut;
            }
            out.push(whole[last..].to_string());
            out
        };
        let input_pieces = pieces(&input);
        let refs: Vec<&str> = input_pieces.iter().map(String::as_str).collect();
        let (inputs, _, _) = client_view(&tool_stream(&refs), Some(map(true)));
        let expected = format!("psql '{SECRET}' && echo {FOREIGN}");
        prop_assert_eq!(inputs[0]["command"].as_str(), Some(expected.as_str()));
        let text_pieces = pieces(&text);
        let refs: Vec<&str> = text_pieces.iter().map(String::as_str).collect();
        let (_, joined, _) = client_view(&text_stream(&refs), Some(map(true)));
        prop_assert_eq!(joined, text.replace(PLACEHOLDER, SECRET));
    }
}

/// An engine with one tool-input block rule that only the restored value matches.
fn engine_with_block_rule() -> Arc<streammask::engine::Engine> {
    let set = RuleSet::from_toml(
        "restore-block.toml",
        r#"
[[rules]]
id = "deny-restored-danger"
description = "a command naming the danger word"
pattern = 'danger-word-[0-9]{4}'
action = "block"
applies_to = ["tool_input"]
examples = ["danger-word-1234"]
"#,
    )
    .expect("rules parse");
    engine_for(&set, 4096)
}

#[test]
fn block_rules_judge_the_restored_input_and_name_no_secret() {
    let mut map = RestoreMap::new(RestoreScopes {
        tool_input: true,
        text: false,
    });
    map.insert(PLACEHOLDER.to_string(), "danger-word-4242".to_string());
    let map = Arc::new(map);
    let input = serde_json::json!({"command": format!("run {PLACEHOLDER}")}).to_string();
    let mut sse = SseTransformer::new(engine_with_block_rule(), ThinkingMode::Mask, 1 << 20)
        .with_restore(Arc::clone(&map));
    let mut out = Vec::new();
    for chunk in tool_stream(&[&input]) {
        sse.push(chunk.as_bytes(), &mut out);
    }
    sse.finish(&mut out);
    let out = String::from_utf8(out).expect("utf-8");
    assert!(!out.contains("danger-word-4242"), "{out}");
    assert!(
        out.contains("deny-restored-danger") && out.contains("blocked"),
        "{out}"
    );
    assert!(out.contains("\"end_turn\""), "{out}");
    assert_eq!(sse.take_blocked_tools().len(), 1);
    assert!(
        sse.take_restore_events().is_empty(),
        "a blocked call restored nothing"
    );

    // The same for a whole JSON response.
    let body = serde_json::json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": format!("run {PLACEHOLDER}")}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}
    })
    .to_string();
    let masked = mask_json_response_restoring(
        &engine_with_block_rule(),
        body.as_bytes(),
        ThinkingMode::Mask,
        Some(&map),
    )
    .expect("masks");
    let out = String::from_utf8(masked.body.expect("rewritten")).expect("utf-8");
    assert!(
        !out.contains("danger-word-4242") && out.contains("deny-restored-danger"),
        "{out}"
    );
    assert!(out.contains("\"end_turn\""), "{out}");
    assert_eq!(masked.blocked_tools.len(), 1);
}

#[test]
fn a_whole_json_response_is_restored_in_tool_input_only_by_default() {
    let body = serde_json::json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [
            {"type": "text", "text": format!("see {PLACEHOLDER}")},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": format!("psql '{PLACEHOLDER}'")}}
        ],
        "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}
    })
    .to_string();
    let masked = mask_json_response_restoring(
        &engine(),
        body.as_bytes(),
        ThinkingMode::Mask,
        Some(&map(false)),
    )
    .expect("masks");
    let value: Value = serde_json::from_slice(&masked.body.expect("rewritten")).expect("JSON");
    assert_eq!(value["content"][0]["text"], format!("see {PLACEHOLDER}"));
    assert_eq!(
        value["content"][1]["input"]["command"],
        format!("psql '{SECRET}'")
    );
    assert_eq!(masked.restored.len(), 1);
    assert_eq!(masked.restored[0].path, "content[1].input.command");
}
