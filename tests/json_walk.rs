//! The JSON walker against an independent decoder (serde_json): only the raw bytes of secrets
//! change, the output always parses, skips are honoured in a realistic Claude Code request,
//! and no input panics. The 1 MiB timing is printed (`--nocapture`), never asserted.

mod support;

use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use streammask::engine::json_walk::{mask_json, mask_jsonl, ThinkingMode, WalkError, WalkOptions};
use streammask::engine::masker::Engine;
use streammask::Scope;
use support::corpus::{ordinary_text, Rng};

fn engine() -> &'static Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| support::fixture_engine(8192))
}

fn opts() -> WalkOptions {
    WalkOptions {
        scope: Scope::Request,
        thinking: ThinkingMode::Report,
        lenient: false,
    }
}

fn placeholder(secret: &str) -> String {
    engine()
        .placeholder_key()
        .placeholder("test-token", secret.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Random documents with planted secrets, written with random escapes and whitespace.

enum Piece {
    Text(String),
    Secret(String),
}

enum Doc {
    Str(Vec<Piece>),
    Raw(&'static str),
    Arr(Vec<Doc>),
    Obj(Vec<(String, Doc)>),
}

/// No `_` (so no `tok_`/`audit_`), no `-` (no PEM header), no word "password".
const FILLER: &[&str] = &[
    "a", "b", "x", "yz", " ", ",", ".", ":", "\n", "\t", "\r", "\"", "\\", "/", "\u{1}", "\u{1f}",
    "\u{7f}", "é", "€", "😀", "\u{2028}", "\u{fffd}",
];
/// Non-word characters around a secret, so `\b` holds whatever the filler is.
const BOUNDARY: &[&str] = &[" ", "\n", "\"", "(", "\t", ",", "\\", "/"];
const KEYS: &[&str] = &[
    "text", "content", "a", "b c", "k\"ey", "é", "", "messages", "x.y", "nested", "😀",
];
const SCALARS: &[&str] = &[
    "0",
    "-1",
    "3.25",
    "1e10",
    "-0.5E-3",
    "12345678901234567890",
    "true",
    "false",
    "null",
];
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn gen_string(rng: &mut Rng) -> Doc {
    let mut pieces = Vec::new();
    for _ in 0..rng.below(4) {
        if rng.below(3) == 0 {
            pieces.push(Piece::Text(rng.pick(BOUNDARY).to_string()));
            let len = 20 + rng.below(21);
            let secret: String = std::iter::once("tok_".to_string())
                .chain((0..len).map(|_| (*rng.pick(ALNUM) as char).to_string()))
                .collect();
            pieces.push(Piece::Secret(secret));
            pieces.push(Piece::Text(rng.pick(BOUNDARY).to_string()));
        } else {
            let text: String = (0..rng.below(8)).map(|_| *rng.pick(FILLER)).collect();
            pieces.push(Piece::Text(text));
        }
    }
    Doc::Str(pieces)
}

fn gen_doc(rng: &mut Rng, depth: usize) -> Doc {
    let kind = if depth >= 5 {
        rng.below(2)
    } else {
        rng.below(4)
    };
    match kind {
        0 => gen_string(rng),
        1 => Doc::Raw(SCALARS[rng.below(SCALARS.len())]),
        2 => Doc::Arr((0..rng.below(5)).map(|_| gen_doc(rng, depth + 1)).collect()),
        _ => {
            // Distinct keys: a duplicate is refused, which its own tests cover.
            let mut members: Vec<(String, Doc)> = Vec::new();
            for _ in 0..rng.below(5) {
                let key = rng.pick(KEYS).to_string();
                if members.iter().all(|(seen, _)| *seen != key) {
                    members.push((key, gen_doc(rng, depth + 1)));
                }
            }
            Doc::Obj(members)
        }
    }
}

struct Writer<'r> {
    rng: &'r mut Rng,
    out: String,
    /// Raw byte ranges of planted secrets and the secret each encodes.
    secrets: Vec<(std::ops::Range<usize>, String)>,
}

impl Writer<'_> {
    fn ws(&mut self) {
        let ws = *self.rng.pick(&["", "", "", " ", "\n  ", "\t", "\r\n"]);
        self.out.push_str(ws);
    }

    fn hex(&mut self, unit: u32) {
        let hex = format!("\\u{unit:04x}");
        if self.rng.below(2) == 0 {
            self.out.push_str(&hex.to_uppercase().replace("\\U", "\\u"));
        } else {
            self.out.push_str(&hex);
        }
    }

    fn char(&mut self, c: char) {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '/' => Some("\\/"),
            _ => None,
        };
        let must = matches!(c, '"' | '\\') || (c as u32) < 0x20;
        let choice = self.rng.below(6);
        if let Some(short) = short {
            if (must && choice < 4) || (!must && choice == 0) {
                self.out.push_str(short);
                return;
            }
        }
        if must || choice == 1 {
            let mut units = [0u16; 2];
            for &unit in c.encode_utf16(&mut units).iter() {
                self.hex(u32::from(unit));
            }
        } else {
            self.out.push(c);
        }
    }

    fn string(&mut self, pieces: &[Piece]) {
        self.out.push('"');
        for piece in pieces {
            match piece {
                Piece::Text(text) => text.chars().for_each(|c| self.char(c)),
                Piece::Secret(secret) => {
                    let start = self.out.len();
                    secret.chars().for_each(|c| self.char(c));
                    self.secrets.push((start..self.out.len(), secret.clone()));
                }
            }
        }
        self.out.push('"');
    }

    fn doc(&mut self, doc: &Doc) {
        self.ws();
        match doc {
            Doc::Str(pieces) => self.string(pieces),
            Doc::Raw(raw) => self.out.push_str(raw),
            Doc::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.doc(item);
                }
                self.ws();
                self.out.push(']');
            }
            Doc::Obj(members) => {
                self.out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.ws();
                    self.string(&[Piece::Text(key.clone())]);
                    self.ws();
                    self.out.push(':');
                    self.doc(value);
                }
                self.ws();
                self.out.push('}');
            }
        }
        self.ws();
    }
}

/// The document's value with every secret replaced by its placeholder.
fn expected_value(doc: &Doc) -> Value {
    match doc {
        Doc::Str(pieces) => Value::String(
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => t.clone(),
                    Piece::Secret(s) => placeholder(s),
                })
                .collect(),
        ),
        Doc::Raw(raw) => serde_json::from_str(raw).unwrap(),
        Doc::Arr(items) => Value::Array(items.iter().map(expected_value).collect()),
        Doc::Obj(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), expected_value(v)))
                .collect(),
        ),
    }
}

/// Every string value of `value` masked by the engine on its own.
fn mask_values(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(engine().mask(s, Scope::Request).unwrap().text.into()),
        Value::Array(items) => Value::Array(items.iter().map(mask_values).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), mask_values(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn random_document(seed: u64) -> (String, Doc, Vec<(std::ops::Range<usize>, String)>) {
    let mut rng = Rng::new(seed);
    let doc = gen_doc(&mut rng, 0);
    let mut writer = Writer {
        rng: &mut rng,
        out: String::new(),
        secrets: Vec::new(),
    };
    writer.doc(&doc);
    let Writer { out, secrets, .. } = writer;
    (out, doc, secrets)
}

fn mutate(raw: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = raw.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = if bytes.is_empty() {
            0
        } else {
            rng.below(bytes.len() + 1)
        };
        let interesting = *rng.pick(&[
            b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'u', b'0', b'e', b'-', b'.', b' ',
            0x01, 0x7f, 0xc3, 0xff, b'd', b'8',
        ]);
        match rng.below(5) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, interesting),
            2 if at < bytes.len() => bytes[at] = interesting,
            3 => bytes.truncate(at),
            _ if at < bytes.len() => {
                let end = (at + rng.below(8)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            _ => bytes.push(interesting),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Output = input with exactly the raw bytes of each planted secret replaced; it parses to the
    /// expected value and to what the engine makes of each decoded string.
    #[test]
    fn only_secret_bytes_change(seed in any::<u64>()) {
        let (raw, doc, secrets) = random_document(seed);
        let walked = mask_json(engine(), raw.as_bytes(), &opts()).unwrap();
        prop_assert_eq!(walked.findings.len(), secrets.len());
        prop_assert!(walked.findings.iter().all(|f| f.finding.rewritten));

        let mut expected = String::new();
        let mut copied = 0;
        for (range, secret) in &secrets {
            expected.push_str(&raw[copied..range.start]);
            expected.push_str(&placeholder(secret));
            copied = range.end;
        }
        expected.push_str(&raw[copied..]);

        let output = match &walked.body {
            None => {
                prop_assert!(secrets.is_empty());
                raw.clone()
            }
            Some(body) => String::from_utf8(body.clone()).unwrap(),
        };
        prop_assert_eq!(&output, &expected);

        let parsed: Value = serde_json::from_str(&output).unwrap();
        prop_assert_eq!(&parsed, &expected_value(&doc));
        let input: Value = serde_json::from_str(&raw).unwrap();
        prop_assert_eq!(&parsed, &mask_values(&input));
    }

    /// Same documents, one per line, with blank lines between.
    #[test]
    fn jsonl_lines_are_independent(seeds in proptest::collection::vec(any::<u64>(), 1..5)) {
        let mut raw = String::new();
        let mut expected = String::new();
        for seed in seeds {
            let (line, _, _) = random_document(seed);
            let line = line.replace(['\n', '\r'], " ");
            let walked = mask_json(engine(), line.as_bytes(), &opts()).unwrap();
            let masked = walked.body.map_or(line.clone(), |b| String::from_utf8(b).unwrap());
            raw.push_str(&line);
            raw.push_str("\n\n");
            expected.push_str(&masked);
            expected.push_str("\n\n");
        }
        let walked = mask_jsonl(engine(), raw.as_bytes(), &opts()).unwrap();
        let output = walked.body.map_or(raw.clone(), |b| String::from_utf8(b).unwrap());
        prop_assert_eq!(output, expected);
        prop_assert!(walked.findings.iter().all(|f| f.path.starts_with("[line ")));
    }

    /// Mutated documents: accepted exactly when serde_json accepts them (save lone surrogates,
    /// which we accept, and numbers out of f64 range, which serde_json refuses), never a panic,
    /// and an accepted document's output still parses. Mutations insert `d`, `8` and `\`, so
    /// lone and broken surrogate escapes do come up.
    #[test]
    fn mutated_documents_agree_with_serde(seed in any::<u64>()) {
        let (raw, _, _) = random_document(seed);
        let mut rng = Rng::new(seed ^ 0x5eed);
        let bytes = mutate(raw.as_bytes(), &mut rng);
        let ours = mask_json(engine(), &bytes, &opts());
        let _ = mask_jsonl(engine(), &bytes, &opts());
        match serde_json::from_slice::<Value>(&bytes) {
            // serde_json's `Value` takes the last of duplicate keys; the walker refuses them
            // (a mutation can turn one key into its sibling).
            Ok(_) if matches!(ours, Err(WalkError::DuplicateKey { .. })) => {}
            Ok(_) => {
                let walked = ours.unwrap();
                if let Some(body) = walked.body {
                    serde_json::from_slice::<Value>(&body).unwrap();
                }
            }
            Err(e) => {
                let message = e.to_string();
                // serde_json reports a lone surrogate as "lone … surrogate" or, when no `\u`
                // follows a high surrogate, as "unexpected end of hex escape".
                let lone_surrogate = message.contains("surrogate") || message.contains("hex escape");
                if !lone_surrogate && !message.contains("out of range") {
                    // A duplicate key seen before the syntax error is refused first.
                    prop_assert!(
                        matches!(ours, Err(WalkError::Syntax { .. } | WalkError::DuplicateKey { .. })),
                        "serde_json: {}; ours: {:?}; input {:?}",
                        message,
                        ours,
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = mask_json(engine(), &raw, &opts());
        let _ = mask_jsonl(engine(), &raw, &opts());
    }
}

// ---------------------------------------------------------------------------------------------
// A realistic Claude Code request.

const MASKED: &str = "tok_MASKMEabcdefghijklmnop1234";
const KEPT: &str = "tok_KEEPMEabcdefghijklmnop5678";

fn claude_code_request(filler: usize) -> Value {
    let text = |seed| ordinary_text(seed, filler);
    json!({
        "model": KEPT,
        "max_tokens": 32000,
        "stream": true,
        "system": [
            {"type": "text", "text": format!("You are Claude Code.\n{MASKED}\n{}", text(1)),
             "cache_control": {"type": "ephemeral"}}
        ],
        "tools": [{
            "name": "Bash",
            "description": text(2),
            "input_schema": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command to run"},
                    "id": {"type": "string", "description": format!("e.g. {MASKED}")}
                },
                "required": ["command"]
            }
        }],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": format!("deploy with {MASKED} please")},
                {"type": "image", "source": {"data": KEPT, "type": "base64", "media_type": "image/png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": KEPT}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": format!("the user pasted {MASKED}"), "signature": KEPT},
                {"data": KEPT, "type": "redacted_thinking"},
                {"type": "tool_use", "id": KEPT, "name": "Bash",
                 "input": {"command": format!("curl -H 'Authorization: {MASKED}' https://x"), "id": MASKED}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": KEPT, "content": format!("{}\n\"{MASKED}\"\n", text(3))},
                {"type": "tool_result", "tool_use_id": KEPT, "content": [
                    {"type": "text", "text": format!("é😀\t{MASKED}")}
                ]}
            ]},
            {"role": "system", "content": format!("reminder: {MASKED}")}
        ],
        "context_management": {"foo": format!("{MASKED} bar"), "edits": []},
        "metadata": {"user_id": "user_abc"}
    })
}

#[test]
fn realistic_request_masks_everywhere_and_refuses_opaque_values() {
    // The tool result's last text ends with MASKED and the next turn starts with `reminder`:
    // read side by side (the joined view) that is one longer token, masked in both parts.
    let joined_secret = format!("{MASKED}reminder");
    for pretty in [false, true] {
        let value = claude_code_request(2000);
        let raw = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let walked = mask_json(engine(), raw.as_bytes(), &opts()).unwrap();
        let body = String::from_utf8(walked.body.unwrap()).unwrap();
        let thinking = raw
            .replace(
                &format!("reminder: {MASKED}"),
                &format!("{}: {MASKED}", placeholder(&joined_secret)),
            )
            .replace(MASKED, &placeholder(MASKED));
        // Report mode: the thinking text keeps its secret.
        let expected = thinking.replacen(
            &format!("the user pasted {}", placeholder(MASKED)),
            &format!("the user pasted {MASKED}"),
            1,
        );
        assert_eq!(body, expected);
        // Opaque values are scanned: their findings are refusals, left in place.
        assert_eq!(body.matches(KEPT).count(), 8);
        let mut refused: Vec<&str> = walked.refusals.iter().map(|f| f.path.as_str()).collect();
        refused.sort();
        assert_eq!(
            refused,
            [
                "messages[0].content[1].source.data",
                "messages[0].content[2].source.data",
                "messages[1].content[0].signature",
                "messages[1].content[1].data",
                "messages[1].content[2].id",
                "messages[2].content[0].tool_use_id",
                "messages[2].content[1].tool_use_id",
                "model",
            ]
        );

        let mut paths: Vec<(&str, bool)> = walked
            .findings
            .iter()
            .map(|f| (f.path.as_str(), f.finding.rewritten))
            .collect();
        paths.sort();
        let mut want = vec![
            ("context_management.foo", true),
            ("messages[0].content[0].text", true),
            ("messages[1].content[0].thinking", false),
            ("messages[1].content[2].input.command", true),
            ("messages[1].content[2].input.id", true),
            ("messages[2].content[0].content", true),
            ("messages[2].content[1].content[0].text", true),
            // The joined finding, reported at its first part.
            ("messages[2].content[1].content[0].text", true),
            ("messages[3].content", true),
            ("system[0].text", true),
            ("tools[0].input_schema.properties.id.description", true),
        ];
        want.sort();
        assert_eq!(paths, want);

        let masking = WalkOptions {
            thinking: ThinkingMode::Mask,
            ..opts()
        };
        let walked = mask_json(engine(), raw.as_bytes(), &masking).unwrap();
        assert_eq!(String::from_utf8(walked.body.unwrap()).unwrap(), thinking);
    }
}

/// A ~1 MiB request shaped like Claude Code's: long text and tool_result strings full of
/// newlines and quotes, a tools array of JSON schemas, system blocks.
fn one_mib_request(plant: bool) -> String {
    let mut rng = Rng::new(7);
    let tools: Vec<Value> = (0..40)
        .map(|i| {
            let properties: serde_json::Map<String, Value> = (0..12)
                .map(|p| {
                    (
                        format!("param_{p}"),
                        json!({"type": *rng.pick(&["string", "integer", "boolean", "array"]),
                               "description": ordinary_text(1000 + i * 100 + p, 120)}),
                    )
                })
                .collect();
            json!({"name": format!("tool_{i}"), "description": ordinary_text(i, 1500),
                   "input_schema": {"type": "object", "properties": properties,
                                    "required": ["param_0"], "additionalProperties": false}})
        })
        .collect();
    let mut messages = Vec::new();
    for turn in 0..40u64 {
        let mut result = ordinary_text(100 + turn, 12_000);
        if plant && turn % 10 == 3 {
            result.push_str(&format!("\nexport TOKEN=\"{MASKED}\"\n"));
        }
        messages.push(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": format!("toolu_{turn:020}"), "content": result},
            {"type": "text", "text": ordinary_text(200 + turn, 1000)}
        ]}));
        messages.push(json!({"role": "assistant", "content": [
            {"type": "thinking", "thinking": ordinary_text(300 + turn, 600), "signature": "EqQBCkYIBxgCKkB".repeat(20)},
            {"type": "text", "text": ordinary_text(400 + turn, 800)},
            {"type": "tool_use", "id": format!("toolu_{turn:020}"), "name": "tool_1",
             "input": {"command": ordinary_text(500 + turn, 200), "description": "run it"}}
        ]}));
    }
    let value = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "system": [{"type": "text", "text": ordinary_text(9, 20_000)},
                   {"type": "text", "text": ordinary_text(10, 10_000), "cache_control": {"type": "ephemeral"}}],
        "tools": tools,
        "messages": messages,
        "metadata": {"user_id": "user_0123456789abcdef"},
        "stream": true
    });
    serde_json::to_string(&value).unwrap()
}

fn count_strings(value: &Value) -> usize {
    match value {
        Value::String(_) => 1,
        Value::Array(items) => items.iter().map(count_strings).sum(),
        Value::Object(members) => members.values().map(count_strings).sum(),
        _ => 0,
    }
}

/// The default pack, if it loads and compiles (it may still be in progress).
fn default_engine() -> Option<Engine> {
    let set = streammask::RuleSet::embedded().ok()?;
    if set.is_empty() {
        return None;
    }
    let matcher = streammask::engine::matcher::Matcher::compile(&set, 8190).ok()?;
    Engine::new(matcher, support::key(), 8192).ok()
}

fn time_walk(engine: &Engine, raw: &[u8], rounds: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut findings = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let walked = mask_json(engine, raw, &opts()).unwrap();
        times.push(start.elapsed());
        findings = walked.findings.len();
        std::hint::black_box(walked);
    }
    times.sort();
    (times[0], times[times.len() / 2], findings)
}

#[test]
fn one_mib_request_timing() {
    for plant in [false, true] {
        let raw = one_mib_request(plant);
        assert!(raw.len() > 900 * 1024, "{} bytes", raw.len());
        let strings = serde_json::from_str::<Value>(&raw)
            .map(|v| count_strings(&v))
            .unwrap();
        let (min, median, findings) = time_walk(engine(), raw.as_bytes(), 30);
        assert_eq!(findings, if plant { 4 } else { 0 });
        // Baseline: the engine alone over the same bytes as one text.
        let mut engine_only = (0..30)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(engine().mask(&raw, Scope::Request).unwrap());
                start.elapsed()
            })
            .collect::<Vec<_>>();
        engine_only.sort();
        eprintln!(
            "json_walk: {} KiB request, {strings} string values, {findings} findings: \
             min {min:?}, median {median:?}; engine alone on the raw body: min {:?} \
             (fixture rules; informational)",
            raw.len() / 1024,
            engine_only[0]
        );
    }
    match default_engine() {
        Some(engine) => {
            let raw = one_mib_request(true);
            let (min, median, findings) = time_walk(&engine, raw.as_bytes(), 30);
            let engine_only = (0..30)
                .map(|_| {
                    let start = Instant::now();
                    std::hint::black_box(engine.mask(&raw, Scope::Request).unwrap());
                    start.elapsed()
                })
                .min()
                .unwrap_or_default();
            eprintln!(
                "json_walk: same request, default pack ({} rules): {findings} findings, \
                 min {min:?}, median {median:?}; engine alone on the raw body: min \
                 {engine_only:?} (informational)",
                engine.matcher().rules().count()
            );
        }
        None => eprintln!("json_walk: default pack not loadable yet; timed fixture rules only"),
    }
}

// ---------------------------------------------------------------------------------------------
// Message-like bodies: nested blocks, unknown fields, second-level escapes, secrets split across
// adjacent text blocks and secrets in values that cannot carry a placeholder.

struct Planted {
    secrets: Vec<String>,
    /// Some secret sits in a value that cannot carry a placeholder (it must be refused).
    refusable: bool,
}

fn random_token(rng: &mut Rng) -> String {
    let len = 20 + rng.below(21);
    std::iter::once("tok_".to_string())
        .chain((0..len).map(|_| (*rng.pick(ALNUM) as char).to_string()))
        .collect()
}

/// Filler the model might read: words, JSON punctuation, literal backslash sequences that are
/// not in front of a secret, no `_` (so no accidental token).
fn filler(rng: &mut Rng) -> String {
    const WORDS: &[&str] = &[
        "a", "word", " ", "\n", "\"", "é", "😀", "{", "}", ":", ",", "\\", "\\\\", "/", "x y",
    ];
    (0..rng.below(6)).map(|_| *rng.pick(WORDS)).collect()
}

/// The secret written as decoded text that still holds escapes the model reads through.
fn second_level(rng: &mut Rng, secret: &str) -> String {
    let (head, tail) = secret.split_at(4 + rng.below(secret.len() - 4));
    let mut chars = tail.chars();
    let first = chars.next().map(String::from).unwrap_or_default();
    let rest: String = chars.collect();
    match rng.below(6) {
        0 => format!(" {secret} "),
        1 => format!("\\n{secret}\\t"),
        2 => format!(
            " {head}\\u{:04X}{rest} ",
            first.chars().next().map_or(0, u32::from)
        ),
        3 => format!(
            " {head}\\x{:02x}{rest} ",
            first.chars().next().map_or(0, u32::from)
        ),
        4 => format!("\\/{secret}\\/"),
        _ => format!("\\\"{secret}\\\""),
    }
}

fn text_value(rng: &mut Rng, planted: &mut Planted) -> String {
    let mut text = filler(rng);
    if rng.below(3) == 0 {
        let secret = random_token(rng);
        // Filler backslashes stay out of the secret's own escapes: `\\` before `\n` is an
        // escaped backslash and a letter `n` glued to the token, not a line break before it.
        if text.ends_with('\\') {
            text.push(' ');
        }
        text.push_str(&second_level(rng, &secret));
        planted.secrets.push(secret);
        text.push_str(&filler(rng));
    }
    text
}

fn text_block_value(text: String) -> Value {
    json!({"type": "text", "text": text})
}

/// Text blocks, some with a secret cut across two or three adjacent ones.
fn text_blocks(rng: &mut Rng, planted: &mut Planted) -> Vec<Value> {
    let mut blocks = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if rng.below(3) == 0 {
            let secret = random_token(rng);
            let cut1 = 1 + rng.below(secret.len() - 1);
            let cut2 = cut1 + rng.below(secret.len() - cut1);
            let mut pieces = vec![&secret[..cut1], &secret[cut1..cut2], &secret[cut2..]];
            pieces.retain(|p| !p.is_empty());
            let last = pieces.len() - 1;
            for (i, piece) in pieces.iter().enumerate() {
                let mut text = String::new();
                if i == 0 {
                    text.push_str(&filler(rng));
                    text.push(' ');
                }
                text.push_str(piece);
                if i == last {
                    text.push(' ');
                    text.push_str(&filler(rng));
                }
                blocks.push(text_block_value(text));
            }
            planted.secrets.push(secret);
        } else {
            blocks.push(text_block_value(text_value(rng, planted)));
        }
    }
    blocks
}

/// A value that cannot carry a placeholder: sometimes a secret.
fn opaque(rng: &mut Rng, planted: &mut Planted, clean: &str) -> Value {
    if rng.below(8) == 0 {
        planted.refusable = true;
        Value::String(random_token(rng))
    } else {
        Value::String(clean.to_string())
    }
}

fn random_input(rng: &mut Rng, planted: &mut Planted, depth: usize) -> Value {
    match rng.below(if depth > 2 { 2 } else { 4 }) {
        0 => Value::String(text_value(rng, planted)),
        1 => json!(rng.below(100)),
        2 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_input(rng, planted, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for key in ["id", "model", "command", "text"] {
                if rng.below(2) == 0 {
                    map.insert(key.to_string(), random_input(rng, planted, depth + 1));
                }
            }
            Value::Object(map)
        }
    }
}

fn random_block(rng: &mut Rng, planted: &mut Planted) -> Vec<Value> {
    match rng.below(6) {
        0 | 1 => text_blocks(rng, planted),
        2 => {
            let content = if rng.below(2) == 0 {
                Value::String(text_value(rng, planted))
            } else {
                Value::Array(text_blocks(rng, planted))
            };
            vec![
                json!({"type": "tool_result", "tool_use_id": opaque(rng, planted, "toolu_1"),
                        "content": content, "is_error": false}),
            ]
        }
        3 => vec![
            json!({"type": "tool_use", "id": opaque(rng, planted, "toolu_2"), "name": "Bash",
                         "input": random_input(rng, planted, 0)}),
        ],
        4 => vec![json!({"type": "thinking", "thinking": filler(rng),
                         "signature": opaque(rng, planted, "EqQBCkY")})],
        _ => vec![
            json!({"type": "future_block", "payload": {"note": text_value(rng, planted)},
                         "extra": [1, null, true]}),
        ],
    }
}

fn random_message_body(seed: u64) -> (String, Planted) {
    let mut rng = Rng::new(seed);
    let mut planted = Planted {
        secrets: Vec::new(),
        refusable: false,
    };
    let mut messages = Vec::new();
    for turn in 0..1 + rng.below(4) {
        let role = if turn % 2 == 0 || rng.below(3) == 0 {
            "user"
        } else {
            "assistant"
        };
        let content = if rng.below(3) == 0 {
            Value::String(text_value(&mut rng, &mut planted))
        } else {
            let mut blocks = Vec::new();
            for _ in 0..1 + rng.below(3) {
                blocks.extend(random_block(&mut rng, &mut planted));
            }
            Value::Array(blocks)
        };
        messages.push(json!({"role": role, "content": content}));
    }
    let system = if rng.below(2) == 0 {
        Value::String(text_value(&mut rng, &mut planted))
    } else {
        Value::Array(text_blocks(&mut rng, &mut planted))
    };
    let body = json!({
        "model": opaque(&mut rng, &mut planted, "claude-sonnet-4-5"),
        "system": system,
        "messages": messages,
        "metadata": {"user_id": "u1", "trace": {"id": opaque(&mut rng, &mut planted, "t1")}},
        "context_management": {"edits": [{"note": text_value(&mut rng, &mut planted)}]},
    });
    // Written with random escapes and whitespace by the same writer as the documents above.
    let doc = value_to_doc(&body);
    let mut writer = Writer {
        rng: &mut rng,
        out: String::new(),
        secrets: Vec::new(),
    };
    writer.doc(&doc);
    (writer.out, planted)
}

fn value_to_doc(value: &Value) -> Doc {
    match value {
        Value::String(s) => Doc::Str(vec![Piece::Text(s.clone())]),
        Value::Array(items) => Doc::Arr(items.iter().map(value_to_doc).collect()),
        Value::Object(m) => Doc::Obj(
            m.iter()
                .map(|(k, v)| (k.clone(), value_to_doc(v)))
                .collect(),
        ),
        Value::Bool(true) => Doc::Raw("true"),
        Value::Bool(false) => Doc::Raw("false"),
        Value::Null => Doc::Raw("null"),
        Value::Number(_) => Doc::Raw("12345678901234567890"),
    }
}

/// One more level of escapes undone, independently of the walker: JSON escapes, `\xHH`, `\'`.
fn unescape_once(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let rest: String = chars.clone().take(5).collect();
        let simple = match rest.chars().next() {
            Some('n') => Some('\n'),
            Some('t') => Some('\t'),
            Some('r') => Some('\r'),
            Some('b') => Some('\u{8}'),
            Some('f') => Some('\u{c}'),
            Some(c @ ('"' | '\\' | '/' | '\'')) => Some(c),
            _ => None,
        };
        if let Some(s) = simple {
            out.push(s);
            chars.next();
        } else if let Some(Ok(v)) = rest
            .strip_prefix('x')
            .and_then(|h| h.get(..2))
            .map(|h| u8::from_str_radix(h, 16))
        {
            out.push(char::from(v));
            chars.nth(2);
        } else if let Some(Some(c)) = rest
            .strip_prefix('u')
            .and_then(|h| h.get(..4))
            .map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32))
        {
            out.push(c);
            chars.nth(4);
        } else {
            out.push('\\');
        }
    }
    out
}

/// Every string of `value` (keys too) and the joined text the model reads, in document order.
fn readable(value: &Value, strings: &mut Vec<String>, joined: &mut String) {
    fn texts(value: &Value, joined: &mut String) {
        match value {
            Value::String(s) => joined.push_str(s),
            Value::Array(blocks) => {
                for block in blocks {
                    if block["type"] == "text" {
                        if let Some(t) = block["text"].as_str() {
                            joined.push_str(t);
                        }
                    } else if block["type"] == "tool_result" {
                        texts(&block["content"], joined);
                    }
                }
            }
            _ => {}
        }
    }
    fn all(value: &Value, strings: &mut Vec<String>) {
        match value {
            Value::String(s) => strings.push(s.clone()),
            Value::Array(items) => items.iter().for_each(|i| all(i, strings)),
            Value::Object(m) => m.iter().for_each(|(k, v)| {
                strings.push(k.clone());
                all(v, strings)
            }),
            _ => {}
        }
    }
    all(value, strings);
    texts(&value["system"], joined);
    if let Some(messages) = value["messages"].as_array() {
        for message in messages {
            texts(&message["content"], joined);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Either a secret sits in a value that cannot carry a placeholder and the walk refuses, or
    /// no planted secret can be read in the output: not in any string, not one escape level
    /// down, not in the joined text. A clean body is forwarded byte for byte.
    #[test]
    fn message_bodies_leak_nothing(seed in any::<u64>()) {
        let (raw, planted) = random_message_body(seed);
        let walked = mask_json(engine(), raw.as_bytes(), &opts()).unwrap();
        if planted.refusable {
            prop_assert!(!walked.refusals.is_empty(), "{}", raw);
        } else {
            prop_assert!(walked.refusals.is_empty(), "{:?}", walked.refusals);
        }
        if planted.secrets.is_empty() && !planted.refusable {
            prop_assert!(walked.body.is_none());
            prop_assert!(walked.findings.is_empty());
        }
        let output = walked.body.clone().unwrap_or_else(|| raw.clone().into_bytes());
        let value: Value = serde_json::from_slice(&output).unwrap();
        let mut strings = Vec::new();
        let mut joined = String::new();
        readable(&value, &mut strings, &mut joined);
        for secret in &planted.secrets {
            prop_assert!(!joined.contains(secret.as_str()), "joined: {} in {}", secret, raw);
            for s in &strings {
                prop_assert!(!s.contains(secret.as_str()), "{} in {:?} from {}", secret, s, raw);
                prop_assert!(!unescape_once(s).contains(secret.as_str()), "{} in {:?} from {}", secret, s, raw);
            }
        }
    }
}
