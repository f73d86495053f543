//! Engine benchmarks (DESIGN.md "Performance budget"):
//! - block throughput of the whole default pack over ≥ 4 MiB of realistic mixed text, beside a
//!   `regex::bytes::RegexSet` baseline of the same rules in the same run;
//! - streaming cost per Claude-sized delta (1–20 bytes), mean from criterion and p50/p99 from
//!   a direct per-delta timing;
//! - memory per open stream in steady state.
//!
//! Run: `cargo bench --bench engine` (figures are recorded in bench/README.md).

// The same allocator as the shipped binary (src/main.rs), so figures describe what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/support/corpus.rs"]
mod corpus;

use criterion::{black_box, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streammask::anthropic::bedrock::{chunk_frame_bytes, BedrockStream};
use streammask::anthropic::messages::SseTransformer;
use streammask::anthropic::sse::SseFramer;
use streammask::engine::dictionary::{Dictionary, MatchOptions};
use streammask::engine::json_walk::{mask_json, mask_json_learning, ThinkingMode, WalkOptions};
use streammask::engine::masker::{Engine, DEFAULT_MAX_HOLD_BYTES};
use streammask::engine::matcher::InterimOptions;
use streammask::engine::placeholder::PlaceholderKey;
use streammask::engine::rules::Rule;
use streammask::engine::Action;
use streammask::{RuleSet, Scope};

const CORPUS_BYTES: usize = 4 << 20;

/// The default pack, or with `STREAMMASK_BENCH_PACK=DIR` only the rule files in DIR (a same-run
/// comparison with another pack: the texts stay the default pack's).
fn engine() -> Arc<Engine> {
    let set = match std::env::var_os("STREAMMASK_BENCH_PACK") {
        Some(dir) => RuleSet::from_dir_only(std::path::Path::new(&dir)).expect("pack dir"),
        None => RuleSet::embedded().expect("embedded pack"),
    };
    Arc::new(
        Engine::compile(
            &set,
            PlaceholderKey::new(b"bench-key-0123456789abcdef").unwrap(),
            DEFAULT_MAX_HOLD_BYTES,
        )
        .expect("pack compiles"),
    )
}

/// Ordinary text with a realistic sprinkling of secrets (one example every ~64 KiB), so the
/// confirm path is exercised, not only the no-match fast path.
fn mixed_corpus() -> String {
    let set = RuleSet::embedded().unwrap();
    let examples: Vec<&String> = set.enabled().flat_map(|r| r.examples.iter()).collect();
    let ordinary = corpus::ordinary_text(42, CORPUS_BYTES);
    let mut text = String::with_capacity(ordinary.len() + 8192);
    let mut next_example = 0;
    for (i, line) in ordinary.split_inclusive('\n').enumerate() {
        text.push_str(line);
        if i % 700 == 0 && !examples.is_empty() {
            text.push_str(examples[next_example % examples.len()]);
            text.push('\n');
            next_example += 1;
        }
    }
    text
}

/// The worst ordinary text for the context rules: every line names a token, secret, password
/// or API key (code that handles credentials without holding one), so every keyword starts a
/// candidate that the value tests then drop.
fn keyword_dense_corpus() -> String {
    let lines = [
        "token_count = len(tokens)\n",
        "max_tokens: 1024\n",
        "api_key = settings.OPENAI_API_KEY\n",
        "password: ${DB_PASSWORD}\n",
        "secret_name: db-credentials-v2\n",
        "const apiKey = process.env.API_KEY;\n",
        "if access_token is None: raise AuthError(\"missing access token\")\n",
        "client_secret = os.environ[\"CLIENT_SECRET\"]\n",
        "    \"refresh_token\": refresh_token_from(response),\n",
        "TOKEN_URL=https://auth.example.com/oauth/token\n",
        "$config['db_password'] = getenv('DB_PASSWORD');\n",
        "<secretKeyRef name=\"app-secrets\" key=\"api-key\"/>\n",
    ];
    let mut text = String::with_capacity(CORPUS_BYTES + 128);
    let mut at = 0;
    while text.len() < CORPUS_BYTES {
        text.push_str(lines[at % lines.len()]);
        at += 1;
    }
    text
}

/// A ~1 MiB request shaped like Claude Code's: a long system prompt, tool definitions, and a
/// conversation whose tool results carry file contents (JSON-escaped newlines and quotes), with
/// a few secrets in a `.env` file it read.
fn claude_code_request(target: usize) -> Vec<u8> {
    let set = RuleSet::embedded().unwrap();
    let examples: Vec<&String> = set.enabled().flat_map(|r| r.examples.iter()).collect();
    let tools: Vec<serde_json::Value> = (0..16)
        .map(|i| {
            serde_json::json!({
                "name": format!("Tool{i}"),
                "description": corpus::ordinary_text(100 + i, 2048),
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            })
        })
        .collect();
    let mut messages = Vec::new();
    let mut size = 0;
    let mut turn = 0u64;
    while size < target {
        let file = corpus::ordinary_text(1000 + turn, 24 * 1024);
        let content = if turn % 8 == 3 {
            let secrets: Vec<&str> = examples
                .iter()
                .skip(turn as usize * 5)
                .take(4)
                .map(|e| e.as_str())
                .collect();
            format!("# .env\n{}\n{file}", secrets.join("\n"))
        } else {
            file
        };
        size += content.len();
        messages.push(serde_json::json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": format!("toolu_{turn}"), "name": "Read",
             "input": {"file_path": format!("/repo/src/file{turn}.rs")}}]}));
        messages.push(serde_json::json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": format!("toolu_{turn}"), "content": content}]}));
        turn += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "stream": true,
        "system": [{"type": "text", "text": corpus::ordinary_text(7, 16 * 1024)}],
        "tools": tools,
        "messages": messages,
    }))
    .expect("request serialises")
}

fn regex_set_baseline() -> regex::bytes::RegexSet {
    let set = RuleSet::embedded().unwrap();
    regex::bytes::RegexSetBuilder::new(set.enabled().map(|r| r.pattern.clone()))
        .unicode(false)
        .size_limit(1 << 30)
        .dfa_size_limit(1 << 30)
        .build()
        .expect("pack compiles as a RegexSet")
}

fn time_per_iteration(mut f: impl FnMut(), min_time: Duration) -> Duration {
    f();
    let start = Instant::now();
    let mut iterations = 0u32;
    while start.elapsed() < min_time || iterations < 3 {
        f();
        iterations += 1;
    }
    start.elapsed() / iterations
}

/// Cut `text` into deltas of 1..=20 bytes at char boundaries, like Claude's text_delta events.
fn deltas(text: &str, seed: u64) -> Vec<&str> {
    let mut rng = corpus::Rng::new(seed);
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + 1 + rng.below(20)).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[at..end]);
        at = end;
    }
    out
}

fn report_same_run_comparison(engine: &Engine, text: &str) {
    let baseline = regex_set_baseline();
    let bytes = text.len() as f64;
    let gbps = |d: Duration| bytes / d.as_secs_f64() / 1e9;
    let window = Duration::from_secs(3);
    let mask = time_per_iteration(
        || {
            black_box(engine.mask(black_box(text), Scope::Request).unwrap());
        },
        window,
    );
    let scan = time_per_iteration(
        || {
            black_box(engine.scan(black_box(text), Scope::Request).unwrap());
        },
        window,
    );
    let hyperscan_only = time_per_iteration(
        || {
            let mut candidates = 0usize;
            engine
                .matcher()
                .scan_block(black_box(text.as_bytes()), |_| candidates += 1)
                .unwrap();
            black_box(candidates);
        },
        window,
    );
    let rs = time_per_iteration(
        || {
            black_box(baseline.matches(black_box(text.as_bytes())));
        },
        window,
    );
    let findings = engine.mask(text, Scope::Request).unwrap().findings.len();
    println!(
        "block, {} rules, {:.1} MiB, {} findings: mask {:.2} GB/s, scan (findings only) {:.2} GB/s, \
         Hyperscan pass alone {:.2} GB/s, RegexSet {:.3} GB/s, ratio mask/RegexSet {:.1}x",
        engine.matcher().rules().count(),
        bytes / (1 << 20) as f64,
        findings,
        gbps(mask),
        gbps(scan),
        gbps(hyperscan_only),
        gbps(rs),
        rs.as_secs_f64() / mask.as_secs_f64()
    );
}

/// What an organisation dictionary costs (issue 20): a generated list of
/// `STREAMMASK_BENCH_DICTIONARY` terms (default 100,000; 0 skips) added to the pack — the time
/// to compile the pack's databases with it (no cache: a first start after the list changed;
/// later starts load the cached databases), and block throughput over `text` with and without
/// it, measured in the same run.
fn report_dictionary_cost(text: &str) {
    let count = std::env::var("STREAMMASK_BENCH_DICTIONARY")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(100_000);
    if count == 0 {
        return;
    }
    let names = corpus::made_up_names(count, 20);
    let dictionary =
        Dictionary::parse("bench", &names.join("\n"), MatchOptions::default()).expect("terms");
    let mut rule = Rule::synthetic(
        "dict-bench".into(),
        "bench dictionary".into(),
        Action::Mask,
        vec![Scope::Request, Scope::Response],
    );
    rule.dictionary = Some(Arc::new(dictionary));
    let mut set = RuleSet::embedded().expect("embedded pack");
    set.push(rule).expect("new id");
    streammask::engine::databases::configure_cache(
        streammask::engine::databases::CacheSetting::Off,
    );
    let key = PlaceholderKey::new(b"bench-key-0123456789abcdef").unwrap();
    // What the proxy scans with until the databases are compiled: the terms in automata.
    let started = Instant::now();
    let interim = Engine::compile_with(
        &set,
        key.clone(),
        DEFAULT_MAX_HOLD_BYTES,
        Some(InterimOptions {
            min_terms: 1,
            compile: false,
        }),
    )
    .expect("compiles");
    let interim_build = started.elapsed();
    assert!(interim.matcher().is_interim());
    let started = Instant::now();
    let with = Engine::compile(&set, key.clone(), DEFAULT_MAX_HOLD_BYTES).expect("compiles");
    let compile = started.elapsed();
    let without = Engine::compile(
        &RuleSet::embedded().expect("embedded pack"),
        key,
        DEFAULT_MAX_HOLD_BYTES,
    )
    .expect("compiles");
    let gbps = |d: Duration| text.len() as f64 / d.as_secs_f64() / 1e9;
    let window = Duration::from_secs(3);
    let sample = |engine: &Engine| {
        time_per_iteration(
            || {
                black_box(engine.scan(black_box(text), Scope::Request).unwrap());
            },
            window,
        )
    };
    let (plain, dict, automata) = (sample(&without), sample(&with), sample(&interim));
    println!(
        "dictionary of {count} terms: databases compiled in {:.2} s (no cache), scan {:.2} GB/s \
         with it vs {:.2} GB/s without (same run, ratio {:.2}); interim automata built in \
         {:.2} s, scan {:.2} GB/s with them (ratio {:.2})",
        compile.as_secs_f64(),
        gbps(dict),
        gbps(plain),
        plain.as_secs_f64() / dict.as_secs_f64(),
        interim_build.as_secs_f64(),
        gbps(automata),
        plain.as_secs_f64() / automata.as_secs_f64()
    );
}

fn report_delta_percentiles_and_memory(engine: &Arc<Engine>, text: &str) {
    let pieces = deltas(text, 7);
    let mut samples = Vec::with_capacity(pieces.len());
    let mut out = Vec::with_capacity(64);
    let mut masker = engine.stream(Scope::Response).unwrap();
    let mut peak_memory = 0;
    let mut peak_held = 0;
    for piece in &pieces {
        out.clear();
        let start = Instant::now();
        masker.push(piece.as_bytes(), &mut out).unwrap();
        samples.push(start.elapsed().as_nanos() as u64);
        black_box(&out);
        peak_memory = peak_memory.max(masker.memory_bytes());
        peak_held = peak_held.max(masker.held());
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "streaming, {} deltas of 1-20 bytes: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns per delta",
        samples.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[samples.len() - 1]
    );
    println!(
        "memory per open stream: steady-state peak {} bytes ({} bytes Hyperscan stream state), peak held {} bytes",
        peak_memory,
        engine.matcher().stream_state_size(),
        peak_held
    );
}

/// The same delta events through the whole SSE transformer, once back to back and once with the
/// thread asleep between events as a proxy is between a model's events. On a VM the second is
/// dominated by caches emptied while idle (the code path is identical), which is why
/// `bench_proxy.py` part 1 (one paced stream) shows a far higher cost per event than part 3 (many
/// streams keeping the proxy busy).
fn report_sse_event_cost_warm_and_after_idle(engine: &Arc<Engine>) {
    let pieces = deltas(PROSE, 11);
    for idle in [Duration::ZERO, Duration::from_millis(5)] {
        let mut transformer =
            SseTransformer::new(Arc::clone(engine), ThinkingMode::Report, 1 << 20);
        let mut out = Vec::with_capacity(1024);
        transformer.push(
            br#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

"#,
            &mut out,
        );
        let mut samples = Vec::new();
        for piece in pieces.iter().cycle().take(400) {
            let event = format!(
                "event: content_block_delta\ndata: {}\n\n",
                serde_json::json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}})
            );
            if !idle.is_zero() {
                std::thread::sleep(idle);
            }
            out.clear();
            let start = Instant::now();
            transformer.push(event.as_bytes(), &mut out);
            samples.push(start.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        println!(
            "sse event, {} ms idle before each: p50 {} ns, p99 {} ns per event ({} events)",
            idle.as_millis(),
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100],
            samples.len()
        );
    }
}

/// Ordinary assistant prose with no secrets: the common case on the response path.
const PROSE: &str = "the deploy script builds the release image then pushes it to the registry \
    and rolls the service one pod at a time while the health checks watch the error rate so a bad \
    build stops early and the previous version keeps serving traffic until an operator looks at \
    the logs and decides whether to retry or to roll back the change by hand. ";

/// A Messages API text stream in the exact shape the API (and loadtest's mock) sends, with the
/// text cut into deltas of about `delta_chars` characters.
fn sse_response(text: &str, delta_chars: usize) -> String {
    let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
    let mut out = event(
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_01nAEzImLMlu2TnKMU5uGZ2n","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":40,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
    );
    out += &event("ping", r#"{"type":"ping"}"#);
    out += &event(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(delta_chars) {
        let piece: String = piece.iter().collect();
        let data = serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": piece}});
        out += &event("content_block_delta", &data.to_string());
    }
    out += &event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    );
    out += &event(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":59}}"#,
    );
    out += &event("message_stop", r#"{"type":"message_stop"}"#);
    out
}

/// `response` (SSE) as Bedrock's event-stream `chunk` frames.
fn bedrock_frames(response: &str) -> Vec<u8> {
    let mut framer = SseFramer::new(usize::MAX);
    let mut out = Vec::new();
    for event in framer.push(response.as_bytes()).expect("SSE") {
        chunk_frame_bytes(event.data(), &mut out);
    }
    out
}

fn main() {
    let engine = engine();
    let text = mixed_corpus();
    // `STREAMMASK_BENCH_DUMP=DIR` writes both corpora there, for `streammask rules bench
    // --per-rule` (which rules cost the most on exactly this text).
    if let Some(dir) = std::env::var_os("STREAMMASK_BENCH_DUMP") {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("mixed.txt"), &text).expect("write mixed corpus");
        std::fs::write(dir.join("keyword_dense.txt"), keyword_dense_corpus())
            .expect("write keyword-dense corpus");
    }
    // `STREAMMASK_BENCH_SCAN_PASSES=N`: only N block scans of the mixed corpus, then exit, for
    // instruction counts (`valgrind --tool=callgrind`; the difference between two N is the cost
    // of the passes between them, without set-up).
    if let Some(passes) = std::env::var("STREAMMASK_BENCH_SCAN_PASSES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let findings: usize = (0..passes)
            .map(|_| engine.scan(&text, Scope::Request).unwrap().len())
            .sum();
        println!(
            "{passes} scans of {} bytes, {findings} findings",
            text.len()
        );
        return;
    }
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));

    let mut block = criterion.benchmark_group("block");
    block.throughput(Throughput::Bytes(text.len() as u64));
    block.bench_function("streammask_mask_4MiB", |b| {
        b.iter(|| engine.mask(black_box(&text), Scope::Request).unwrap())
    });
    // What the proxy's request path runs: the JSON walker takes findings and rewrites the raw
    // body itself, so no masked copy of the text is built.
    block.bench_function("streammask_scan_4MiB", |b| {
        b.iter(|| engine.scan(black_box(&text), Scope::Request).unwrap())
    });
    let baseline = regex_set_baseline();
    block.bench_function("regexset_matches_4MiB", |b| {
        b.iter(|| baseline.matches(black_box(text.as_bytes())))
    });
    block.finish();

    // DESIGN.md: masking a 1 MiB Claude Code request takes ≤ 2 ms (the proxy's whole request
    // path: JSON walk, scan of every string, rewrite of the raw body).
    let request = claude_code_request(1 << 20);
    let walk = WalkOptions {
        scope: Scope::Request,
        thinking: ThinkingMode::Report,
        lenient: false,
    };
    let mut requests = criterion.benchmark_group("request");
    requests.throughput(Throughput::Bytes(request.len() as u64));
    requests.bench_function("mask_json_claude_code_1MiB", |b| {
        b.iter(|| mask_json(&engine, black_box(&request), &walk).unwrap())
    });
    // What restore adds to a request (issue 15): the walk that also learns what each
    // placeholder replaced, then every other occurrence of those secrets masked in the body.
    requests.bench_function("mask_json_learning_and_repeats_claude_code_1MiB", |b| {
        b.iter(|| {
            let walked =
                mask_json_learning(&engine, black_box(&request), &walk, None, None).unwrap();
            let known: Vec<(String, String)> = walked
                .learned
                .into_iter()
                .map(|l| (l.placeholder, l.secret))
                .collect();
            let body = walked.body.unwrap_or_else(|| request.clone());
            let mut findings = streammask::engine::Findings::new();
            streammask::proxy::restore::mask_repeats(
                &engine,
                &mut findings,
                &known,
                &walked.signed_thinking,
                body,
            )
        })
    });
    // What approvals add to a request with an approve finding (issue 12): the matched lines
    // and their masked previews, found again by reading the body's strings (the walk itself is
    // measured above). Only requests with such a finding pay it.
    let approving = {
        let mut value: serde_json::Value = serde_json::from_slice(&request).unwrap();
        let line = concat!("terraform", " destroy -target=module.cache");
        value["messages"].as_array_mut().unwrap().push(
            serde_json::json!({"role": "user", "content": format!("now run\n{line}\nplease")}),
        );
        serde_json::to_vec(&value).unwrap()
    };
    let approving_walk = mask_json(&engine, &approving, &walk).unwrap();
    requests.bench_function("approval_matched_lines_claude_code_1MiB", |b| {
        b.iter(|| {
            streammask::policy::approvals::matched_lines(
                &engine,
                black_box(&approving),
                &approving_walk.findings,
            )
        })
    });
    requests.finish();
    let walked = mask_json(&engine, &request, &walk).unwrap();
    println!(
        "request: {} bytes, {} findings, body rewritten: {}",
        request.len(),
        walked.findings.len(),
        walked.body.is_some()
    );

    let stream_text = &text[..256 * 1024];
    let pieces = deltas(stream_text, 3);
    let mut streaming = criterion.benchmark_group("streaming");
    streaming.throughput(Throughput::Elements(pieces.len() as u64));
    streaming.bench_function("per_delta_1_to_20_bytes", |b| {
        b.iter(|| {
            let mut masker = engine.stream(Scope::Response).unwrap();
            let mut out = Vec::with_capacity(64);
            for piece in &pieces {
                out.clear();
                masker.push(piece.as_bytes(), &mut out).unwrap();
            }
            masker.finish(&mut out).unwrap();
        })
    });
    streaming.finish();

    // What the proxy runs per streamed response: SSE framing, event parsing, the delta
    // maskers and re-encoding, over a whole Messages API stream handed over in one piece (the
    // proxy batches every chunk already read).
    let prose = PROSE.repeat(4);
    let response = sse_response(&prose, 6);
    let events = response.matches("\n\n").count();
    let mut sse = criterion.benchmark_group("sse");
    sse.throughput(Throughput::Elements(events as u64));
    sse.bench_function("response_text_stream", |b| {
        let mut out = Vec::with_capacity(response.len() + 1024);
        b.iter(|| {
            out.clear();
            let mut transformer =
                SseTransformer::new(Arc::clone(&engine), ThinkingMode::Report, 1 << 20);
            transformer.push(black_box(response.as_bytes()), &mut out);
            transformer.finish(&mut out);
            assert!(transformer.saw_message_stop());
        })
    });
    // The same stream as Bedrock frames it: event-stream decoding, base64, the same masker,
    // and the frames encoded again (the cost Bedrock adds over SSE, in one run).
    let frames = bedrock_frames(&response);
    sse.bench_function("bedrock_response_frames", |b| {
        let mut out = Vec::with_capacity(frames.len() + 1024);
        b.iter(|| {
            out.clear();
            let transformer =
                SseTransformer::new(Arc::clone(&engine), ThinkingMode::Report, 1 << 20);
            let mut stream = BedrockStream::new(transformer, 1 << 20);
            stream.push(black_box(&frames), &mut out);
            stream.finish(&mut out);
            assert!(stream.sse().saw_message_stop());
        })
    });
    sse.finish();
    println!(
        "sse: one response is {} bytes, {events} events",
        response.len()
    );
    criterion.final_summary();

    report_same_run_comparison(&engine, &text);
    println!("keyword-dense worst case (every line names a credential, none holds one):");
    report_same_run_comparison(&engine, &keyword_dense_corpus());
    report_delta_percentiles_and_memory(&engine, stream_text);
    report_sse_event_cost_warm_and_after_idle(&engine);
    report_dictionary_cost(&text);
}
