//! Hostile-input benchmark (DESIGN.md "Performance budget": request masking is linear in body
//! size for every input shape): masking time against body size, 64 KiB to the 32 MiB body limit, for the
//! shapes that make a matcher do the most work per byte:
//! - `bearer_log`: an access log whose every line ends `Authorization: Bearer <JWT>`;
//! - `bearer_log_json`: the same log as the text of a Messages API request (the proxy's request
//!   path: JSON walk, scan, rewrite of the raw body);
//! - `jwt_prefix_run`: a JWT header segment and a dot, repeated (`eyJhbGciOiJIUzI1NiJ9.` × N);
//! - `password_dense`: `password=` × N;
//! - `base64_blob`: one long run of base64 characters;
//! - `jsonl_long_line`: one batch-results line as long as the body, fed to the JSON Lines
//!   masker in 16 KiB reads, as an upstream sends it (it used to look for the end of the line
//!   in everything held so far at every read: quadratic).
//!
//! For each shape the fitted exponent (slope of log time over log size, least squares) is
//! printed as a Markdown table: ≈ 1.0 is linear. Figures are recorded in bench/README.md.
//!
//! Run: `cargo bench --bench hostile`. Criterion measures sizes up to 4 MiB; the direct timings
//! and exponents cover every size. `HOSTILE_MAX_BYTES` caps the largest size (to time a
//! super-linear build in reasonable time), `HOSTILE_SHAPE=name` times one shape, and
//! `HOSTILE_DIRECT_ONLY=1` skips criterion and prints only the direct timings and the exponents.

// The same allocator as the shipped binary (src/main.rs), so figures describe what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use base64::Engine as _;
use criterion::{black_box, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streammask::anthropic::jsonl::JsonlMasker;
use streammask::engine::json_walk::{mask_json, ThinkingMode, WalkOptions};
use streammask::engine::masker::{Engine, DEFAULT_MAX_HOLD_BYTES};
use streammask::engine::placeholder::PlaceholderKey;
use streammask::{RuleSet, Scope};

const SIZES: [usize; 6] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 32 << 20];
/// Criterion's samples stop here (the larger sizes are timed directly).
const CRITERION_MAX: usize = 4 << 20;

fn engine() -> Arc<Engine> {
    let set = RuleSet::embedded().expect("embedded pack");
    Arc::new(
        Engine::compile(
            &set,
            PlaceholderKey::new(b"bench-key-0123456789abcdef").unwrap(),
            DEFAULT_MAX_HOLD_BYTES,
        )
        .expect("pack compiles"),
    )
}

/// A deterministic pseudo-random byte source (xorshift), so every run sees the same text.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT-shaped token built from its parts (no secret-shaped literal in the source).
fn jwt(n: usize, random: &mut Bytes) -> String {
    let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64url(format!(r#"{{"sub":"user-{n}","iat":{}}}"#, 1_700_000_000 + n).as_bytes());
    let signature = b64url(&random.take(32));
    format!("{header}.{claims}.{signature}")
}

fn fill(size: usize, mut piece: impl FnMut(usize) -> String) -> String {
    let mut text = String::with_capacity(size + 512);
    let mut n = 0;
    while text.len() < size {
        text.push_str(&piece(n));
        n += 1;
    }
    text
}

fn bearer_log(size: usize) -> String {
    let mut random = Bytes(0x9e37_79b9_7f4a_7c15);
    fill(size, |n| {
        format!(
            "10.0.{}.{} - - [01/Jan/2026:00:00:{:02}] \"GET /api/v1/items/{n} HTTP/1.1\" 200 512 \
             \"-\" \"curl/8\" Authorization: Bearer {}\n",
            n / 256 % 256,
            n % 256,
            n % 60,
            jwt(n, &mut random)
        )
    })
}

fn bearer_log_json(size: usize) -> String {
    let log = bearer_log(size);
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": log}]}],
    })
    .to_string()
}

fn jwt_prefix_run(size: usize) -> String {
    let segment = format!("{}.", b64url(br#"{"alg":"HS256"}"#));
    fill(size, |_| segment.clone())
}

fn password_dense(size: usize) -> String {
    let keyword = ["pass", "word="].concat();
    fill(size, |_| keyword.clone())
}

fn base64_blob(size: usize) -> String {
    let mut random = Bytes(0x2545_f491_4f6c_dd1d);
    base64::engine::general_purpose::STANDARD.encode(random.take(size * 3 / 4 + 3))
}

fn jsonl_long_line(size: usize) -> String {
    let words = fill(size, |n| format!("word{} ", n % 1000));
    let line = serde_json::json!({
        "custom_id": "req-1",
        "result": {"type": "succeeded", "message": {"type": "message", "role": "assistant",
            "content": [{"type": "text", "text": words}]}},
    });
    format!("{line}\n")
}

#[derive(Clone, Copy)]
enum Path {
    /// `Engine::mask` of the text (block masking with a masked copy).
    Block,
    /// `mask_json` of the body (the proxy's request path).
    Json,
    /// The JSON Lines masker fed 16 KiB reads (batch results).
    JsonlReads,
}

struct Shape {
    name: &'static str,
    build: fn(usize) -> String,
    path: Path,
}

const SHAPES: [Shape; 6] = [
    Shape {
        name: "bearer_log",
        build: bearer_log,
        path: Path::Block,
    },
    Shape {
        name: "bearer_log_json",
        build: bearer_log_json,
        path: Path::Json,
    },
    Shape {
        name: "jwt_prefix_run",
        build: jwt_prefix_run,
        path: Path::Block,
    },
    Shape {
        name: "password_dense",
        build: password_dense,
        path: Path::Block,
    },
    Shape {
        name: "base64_blob",
        build: base64_blob,
        path: Path::Block,
    },
    Shape {
        name: "jsonl_long_line",
        build: jsonl_long_line,
        path: Path::JsonlReads,
    },
];

const WALK: WalkOptions = WalkOptions {
    scope: Scope::Request,
    thinking: ThinkingMode::Mask,
    lenient: false,
};

/// Mask once; returns the number of findings (so the work cannot be optimised away).
fn run(engine: &Arc<Engine>, path: Path, text: &str) -> usize {
    match path {
        Path::JsonlReads => {
            let mut masker =
                JsonlMasker::new(Arc::clone(engine), ThinkingMode::Mask).with_max_line(64 << 20);
            let mut out = Vec::with_capacity(text.len() + 1024);
            for read in black_box(text.as_bytes()).chunks(16 << 10) {
                masker.push(read, &mut out);
            }
            masker.finish(&mut out);
            black_box(out.len());
            masker.take_findings().len()
        }
        Path::Block => engine
            .mask(black_box(text), Scope::Request)
            .unwrap()
            .findings
            .len(),
        Path::Json => mask_json(engine, black_box(text.as_bytes()), &WALK)
            .unwrap()
            .findings
            .len(),
    }
}

/// The fastest of a few runs (at least 3, or as many as fit in ~1 s).
fn direct_time(engine: &Arc<Engine>, path: Path, text: &str) -> Duration {
    let mut best = Duration::MAX;
    let started = Instant::now();
    let mut runs = 0;
    while runs < 3 || (started.elapsed() < Duration::from_secs(1) && runs < 50) {
        let t = Instant::now();
        black_box(run(engine, path, text));
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

/// Least-squares slope of ln(time) over ln(size).
fn exponent(points: &[(usize, Duration)]) -> f64 {
    let xy: Vec<(f64, f64)> = points
        .iter()
        .map(|(size, time)| ((*size as f64).ln(), time.as_secs_f64().ln()))
        .collect();
    let n = xy.len() as f64;
    let mean_x = xy.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = xy.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = xy.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let var: f64 = xy.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    cov / var
}

fn main() {
    let engine = engine();
    let max_bytes = std::env::var("HOSTILE_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let direct_only = std::env::var_os("HOSTILE_DIRECT_ONLY").is_some();
    let sizes: Vec<usize> = SIZES.into_iter().filter(|&s| s <= max_bytes).collect();
    let only = std::env::var("HOSTILE_SHAPE").ok();
    let inputs: Vec<(&Shape, Vec<(usize, String)>)> = SHAPES
        .iter()
        .filter(|shape| only.as_deref().is_none_or(|name| name == shape.name))
        .map(|shape| {
            let texts = sizes.iter().map(|&s| (s, (shape.build)(s))).collect();
            (shape, texts)
        })
        .collect();

    if !direct_only {
        let mut criterion = Criterion::default()
            .configure_from_args()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let mut group = criterion.benchmark_group("hostile");
        for (shape, texts) in &inputs {
            for (size, text) in texts.iter().filter(|(size, _)| *size <= CRITERION_MAX) {
                group.throughput(Throughput::Bytes(text.len() as u64));
                let id = format!("{}/{}KiB", shape.name, size >> 10);
                group.bench_function(id, |b| b.iter(|| run(&engine, shape.path, text)));
            }
        }
        group.finish();
        criterion.final_summary();
    }

    println!("\n| shape | {} | exponent |", {
        let heads: Vec<String> = sizes.iter().map(|s| format!("{} KiB", s >> 10)).collect();
        heads.join(" | ")
    });
    println!("|---|{}---|", "---|".repeat(sizes.len()));
    for (shape, texts) in &inputs {
        let points: Vec<(usize, Duration)> = texts
            .iter()
            .map(|(_, text)| (text.len(), direct_time(&engine, shape.path, text)))
            .collect();
        let findings = texts
            .last()
            .map_or(0, |(_, text)| run(&engine, shape.path, text));
        let cells: Vec<String> = points
            .iter()
            .map(|(_, t)| format!("{:.2} ms", t.as_secs_f64() * 1e3))
            .collect();
        println!(
            "| {} ({findings} findings at the largest) | {} | **{:.2}** |",
            shape.name,
            cells.join(" | "),
            exponent(&points)
        );
    }
}
