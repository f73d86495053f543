//! Protected-code fingerprinting benchmark (`src/engine/protected_code.rs`), on real code: the
//! `.rs` files of the crates in the local cargo registry.
//!
//! - protected tree: the newest `serde_json`, `regex-syntax` and `tokio` present (any other
//!   three crates if none of them is), fingerprinted with `add_paths` as `[[protected_code]]`
//!   entries are (every text file of the crate directories: sources, tests, manifests,
//!   READMEs); reports time and index memory per MiB of it;
//! - recall: excerpts of 5–50 code lines drawn from the protected files with a fixed seed,
//!   re-indented, comments dropped or reworded, wrapped in prose and a Markdown fence; found
//!   when `find(…, 10)` names the excerpt's file;
//! - false positives: excerpts of the same lengths, transformed alike, from the newest version
//!   of every other crate. Some of those crates hold real copies of protected code
//!   (`atomic-waker` and `tokio-util` of `tokio`, `aho-corasick` of `regex-syntax`): their
//!   matches count as false positives here and are listed after the table for a reader to judge;
//! - query throughput over a few MiB of unrelated code.
//!
//! Excerpt lengths count code lines (lines that are neither blank nor comment-only), the unit of
//! `min_match_lines`. Run: `cargo bench --bench protected_code`; `STREAMMASK_BENCH_QUICK=1`
//! shrinks it to a smoke test.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;
use streammask::engine::protected_code::FingerprintIndex;

const PREFERRED_PROTECTED: [&str; 3] = ["serde_json", "regex-syntax", "tokio"];
const EXCERPT_LINES: [usize; 6] = [5, 10, 15, 20, 30, 50];
const MIN_MATCH_LINES: usize = 10;
const SEED: u64 = 0x5eed_c0de_2026_0001;
const MIB: f64 = (1u64 << 20) as f64;

fn main() {
    let quick = std::env::var("STREAMMASK_BENCH_QUICK").is_ok_and(|v| v == "1");
    let samples = if quick { 25 } else { 200 };
    let Some(registry) = registry_sources() else {
        println!(
            "protected_code bench skipped: no crate sources under $CARGO_HOME/registry/src \
             (run `cargo fetch` in any project first)"
        );
        return;
    };
    let crates = crate_dirs(&registry);
    let (protected, unrelated) = split_crates(&crates, quick);
    if protected.is_empty() || unrelated.is_empty() {
        println!(
            "protected_code bench skipped: too few crates in {}",
            registry.display()
        );
        return;
    }
    println!("registry: {}", registry.display());
    println!(
        "protected: {} ({} unrelated crates)",
        protected
            .iter()
            .map(|c| c.dir_name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        unrelated.len()
    );

    let roots: Vec<PathBuf> = protected.iter().map(|c| c.path.clone()).collect();
    let mut index = FingerprintIndex::new();
    let started = Instant::now();
    if let Err(error) = index.add_paths(&roots) {
        println!("protected_code bench failed: {error}");
        return;
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = index.stats();
    let mib = stats.bytes as f64 / MIB;
    println!();
    println!("## Fingerprinting\n");
    println!("| files | code | time | throughput | fingerprints | index memory | index bytes per MiB of code |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.2} MiB | {:.3} s | {:.1} MiB/s | {} ({:.0} per MiB) | {:.2} MiB | {:.0} ({:.1} %) |",
        stats.files,
        mib,
        seconds,
        mib / seconds,
        stats.fingerprints,
        stats.fingerprints as f64 / mib,
        stats.memory_bytes as f64 / MIB,
        stats.memory_bytes as f64 / mib,
        100.0 * stats.memory_bytes as f64 / stats.bytes as f64,
    );

    let protected_files: Vec<SourceFile> =
        protected.iter().flat_map(|c| rust_files(&c.path)).collect();
    let unrelated_files: Vec<SourceFile> =
        unrelated.iter().flat_map(|c| rust_files(&c.path)).collect();
    if protected_files.is_empty() || unrelated_files.is_empty() {
        println!("protected_code bench stopped: no .rs files to draw excerpts from");
        return;
    }
    let mut texts = TextCache::default();
    let mut rng = XorShift(SEED);

    println!();
    println!("## Precision and recall (min_match_lines = {MIN_MATCH_LINES}, {samples} excerpts per cell)\n");
    println!("| excerpt (code lines) | recall: re-indented, comments edited | recall: also 1 line in 12 with a renamed identifier | wrong file named | false positives: unrelated excerpts found | mean lines reported |");
    println!("|---|---|---|---|---|---|");
    let mut query_seconds = 0.0;
    let mut query_bytes = 0usize;
    let mut false_positive_examples = Vec::new();
    for &length in &EXCERPT_LINES {
        let mut found = [0usize; 2];
        let mut wrong_file = 0;
        let mut reported_lines = 0;
        for _ in 0..samples {
            let Some((file, excerpt)) =
                draw_excerpt(&protected_files, length, &mut texts, &mut rng)
            else {
                continue;
            };
            for (renames, found) in [false, true].into_iter().zip(found.iter_mut()) {
                let request = as_request(&transform(&excerpt, renames, &mut rng), &mut rng);
                let started = Instant::now();
                let matches = index.find(&request, MIN_MATCH_LINES);
                query_seconds += started.elapsed().as_secs_f64();
                query_bytes += request.len();
                if let Some(hit) = matches.iter().find(|m| m.file == file.relative) {
                    *found += 1;
                    if !renames {
                        reported_lines += hit.lines;
                    }
                } else if !matches.is_empty() {
                    wrong_file += 1;
                }
            }
        }
        let mut false_positives = 0;
        for _ in 0..samples {
            let Some((file, excerpt)) =
                draw_excerpt(&unrelated_files, length, &mut texts, &mut rng)
            else {
                continue;
            };
            let request = as_request(&transform(&excerpt, false, &mut rng), &mut rng);
            let matches = index.find(&request, MIN_MATCH_LINES);
            if let Some(first) = matches.first() {
                false_positives += 1;
                false_positive_examples.push(format!(
                    "{} excerpt of {}: {} ({} lines)",
                    length,
                    file.path
                        .strip_prefix(&registry)
                        .unwrap_or(&file.path)
                        .display(),
                    first.file,
                    first.lines
                ));
            }
        }
        let percent = |count: usize| {
            format!(
                "{:.1} % ({count}/{samples})",
                100.0 * count as f64 / samples as f64
            )
        };
        println!(
            "| {length} | {} | {} | {wrong_file} | {} | {} |",
            percent(found[0]),
            percent(found[1]),
            percent(false_positives),
            if found[0] > 0 {
                format!("{:.1}", reported_lines as f64 / found[0] as f64)
            } else {
                "—".to_owned()
            },
        );
    }
    if !false_positive_examples.is_empty() {
        println!("\nUnrelated excerpts found (does the crate copy protected code?):\n");
    }
    for example in false_positive_examples.iter().take(20) {
        println!("- {example}");
    }

    // Query throughput: whole unrelated files, as a large tool result would carry them.
    let budget = if quick { 1 << 20 } else { 8 << 20 };
    let mut corpus = String::new();
    for _attempt in 0..100_000 {
        if corpus.len() >= budget {
            break;
        }
        let file = &unrelated_files[rng.below(unrelated_files.len())];
        if let Some(text) = texts.get(&file.path) {
            corpus.push_str(text);
        }
    }
    let mut seconds = f64::MAX;
    let mut matches = Vec::new();
    for _run in 0..if quick { 1 } else { 3 } {
        let started = Instant::now();
        matches = index.find(&corpus, MIN_MATCH_LINES);
        seconds = seconds.min(started.elapsed().as_secs_f64());
    }
    println!();
    println!("## Query\n");
    println!("| text | time | per MiB | throughput | findings |");
    println!("|---|---|---|---|---|");
    let corpus_mib = corpus.len() as f64 / MIB;
    println!(
        "| {corpus_mib:.2} MiB of unrelated code in one text (best of runs) | {:.1} ms | {:.2} ms | {:.1} MiB/s | {} |",
        seconds * 1e3,
        seconds * 1e3 / corpus_mib,
        corpus_mib / seconds,
        matches.len()
    );
    let excerpts_mib = query_bytes as f64 / MIB;
    println!(
        "| the {} protected excerpt requests above, one by one | {:.1} ms | {:.2} ms | {:.1} MiB/s | — |",
        EXCERPT_LINES.len() * samples * 2,
        query_seconds * 1e3,
        query_seconds * 1e3 / excerpts_mib,
        excerpts_mib / query_seconds,
    );
}

/// `$CARGO_HOME/registry/src/<index>/`, the one with the most crates.
fn registry_sources() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    let mut indexes: Vec<(usize, PathBuf)> = fs::read_dir(cargo_home.join("registry/src"))
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            Some((fs::read_dir(&path).ok()?.count(), path))
        })
        .collect();
    indexes.sort();
    indexes.pop().map(|(_, path)| path)
}

struct CrateDir {
    name: String,
    version: Vec<u64>,
    dir_name: String,
    path: PathBuf,
}

fn crate_dirs(registry: &Path) -> Vec<CrateDir> {
    let mut crates: Vec<CrateDir> = fs::read_dir(registry)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            // `name-1.2.3`: the version starts after the last '-' followed by a digit.
            let split = dir_name
                .char_indices()
                .rev()
                .find(|&(i, c)| {
                    c == '-' && dir_name[i + 1..].starts_with(|d: char| d.is_ascii_digit())
                })
                .map(|(i, _)| i)?;
            let version = dir_name[split + 1..]
                .split(['.', '-', '+'])
                .map(|part| part.parse().unwrap_or(0))
                .collect();
            Some(CrateDir {
                name: dir_name[..split].to_owned(),
                version,
                dir_name,
                path: entry.path(),
            })
        })
        .collect();
    crates.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.version.cmp(&b.version)));
    crates
}

/// The protected crates (newest version of each preferred name, or the three largest crates if
/// none is present) and the unrelated ones (the newest version of every other crate).
fn split_crates(crates: &[CrateDir], quick: bool) -> (Vec<&CrateDir>, Vec<&CrateDir>) {
    let newest = |name: &str| crates.iter().rev().find(|c| c.name == name);
    let wanted: &[&str] = if quick {
        &PREFERRED_PROTECTED[..2]
    } else {
        &PREFERRED_PROTECTED
    };
    let mut protected: Vec<&CrateDir> = wanted.iter().filter_map(|name| newest(name)).collect();
    if protected.is_empty() {
        println!(
            "none of {PREFERRED_PROTECTED:?} in the registry: protecting the three largest crates"
        );
        let mut by_size: Vec<(u64, &CrateDir)> = crates
            .iter()
            .map(|c| (rust_files(&c.path).iter().map(|f| f.bytes).sum(), c))
            .collect();
        by_size.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.dir_name.cmp(&b.1.dir_name)));
        protected = by_size.into_iter().take(3).map(|(_, c)| c).collect();
    } else if protected.len() < wanted.len() {
        println!("only {} of {wanted:?} in the registry", protected.len());
    }
    let is_protected = |name: &str| protected.iter().any(|p| p.name == name);
    let mut unrelated = Vec::new();
    for (i, c) in crates.iter().enumerate() {
        let newest_of_name = crates.get(i + 1).is_none_or(|next| next.name != c.name);
        if newest_of_name && !is_protected(&c.name) {
            unrelated.push(c);
        }
    }
    (protected, unrelated)
}

struct SourceFile {
    path: PathBuf,
    /// As `add_paths` names it: relative to the crate directory, '/'-separated.
    relative: String,
    bytes: u64,
}

/// The `.rs` files of a crate that `add_paths` fingerprints (≤ 1 MiB, outside hidden dirs).
fn rust_files(root: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if file_type.is_dir() && !hidden {
                dirs.push(path);
            } else if file_type.is_file() && path.extension().is_some_and(|e| e == "rs") {
                let bytes = entry.metadata().map_or(u64::MAX, |m| m.len());
                if bytes <= 1 << 20 {
                    let relative = path
                        .strip_prefix(root)
                        .unwrap_or(&path)
                        .components()
                        .map(|part| part.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    files.push(SourceFile {
                        path,
                        relative,
                        bytes,
                    });
                }
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

#[derive(Default)]
struct TextCache(HashMap<PathBuf, Option<String>>);

impl TextCache {
    fn get(&mut self, path: &Path) -> Option<&str> {
        self.0
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let bytes = fs::read(path).ok()?;
                (!bytes[..bytes.len().min(8192)].contains(&0))
                    .then(|| String::from_utf8_lossy(&bytes).into_owned())
            })
            .as_deref()
    }
}

/// Whether a line holds code: not blank, not a comment-only line (`//`, `/*`, ` * `, `*/`).
/// Tracks block comments roughly, as a reader would count lines of code.
fn code_lines(text: &str) -> Vec<bool> {
    let mut in_block = false;
    text.lines()
        .map(|line| {
            let trimmed = line.trim();
            if in_block {
                in_block = !trimmed.contains("*/");
                return false;
            }
            if trimmed.starts_with("/*") {
                in_block = !trimmed.contains("*/");
                return false;
            }
            !(trimmed.is_empty() || trimmed.starts_with("//"))
        })
        .collect()
}

/// `length` code lines (and the blank and comment lines between them) from a random file that
/// has them, starting at a random code line.
fn draw_excerpt<'f>(
    files: &'f [SourceFile],
    length: usize,
    texts: &mut TextCache,
    rng: &mut XorShift,
) -> Option<(&'f SourceFile, String)> {
    for _attempt in 0..1000 {
        let file = &files[rng.below(files.len())];
        let Some(text) = texts.get(&file.path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let is_code = code_lines(text);
        let code_at: Vec<usize> = (0..lines.len()).filter(|&i| is_code[i]).collect();
        if code_at.len() < length {
            continue;
        }
        let first = rng.below(code_at.len() + 1 - length);
        let (start, end) = (code_at[first], code_at[first + length - 1]);
        let excerpt = lines[start..=end]
            .iter()
            .map(|line| format!("{line}\n"))
            .collect();
        return Some((file, excerpt));
    }
    None
}

/// What happens to code pasted into a prompt: a new indentation (tabs, two spaces, or an extra
/// level), comment lines dropped or reworded, trailing comments dropped, a comment added.
fn transform(excerpt: &str, renames: bool, rng: &mut XorShift) -> String {
    let indent_style = rng.below(4);
    let mut out = String::new();
    for line in excerpt.lines() {
        let body = line.trim_start();
        let width = line.len() - body.len();
        let depth = line[..width]
            .chars()
            .map(|c| if c == '\t' { 4 } else { 1 })
            .sum::<usize>()
            / 4;
        let indent = match indent_style {
            0 => "\t".repeat(depth),
            1 => "  ".repeat(depth),
            2 => "    ".repeat(depth + 1),
            _ => " ".repeat(depth * 3),
        };
        let comment_only =
            body.starts_with("//") || body.starts_with("* ") || body.starts_with("/*");
        if comment_only {
            match rng.below(3) {
                0 => continue,
                1 => {
                    out.push_str(&indent);
                    out.push_str("// (comment reworded for the question)\n");
                    continue;
                }
                _ => {}
            }
        }
        let mut code = body.to_owned();
        if !comment_only {
            if let Some(at) = trailing_comment(body) {
                if rng.below(2) == 0 {
                    code.truncate(at);
                    code.truncate(code.trim_end().len());
                }
            }
        }
        // Someone adapting the code: one identifier renamed on about one line in twelve.
        if renames && !comment_only && rng.below(12) == 0 {
            code = rename_first_identifier(&code);
        }
        if rng.below(12) == 0 {
            out.push_str(&indent);
            out.push_str("// NOTE: is this the part that fails?\n");
        }
        out.push_str(&indent);
        out.push_str(&code);
        out.push('\n');
    }
    out
}

fn rename_first_identifier(code: &str) -> String {
    let start = code.find(|c: char| c.is_ascii_alphabetic() || c == '_');
    let Some(start) = start else {
        return code.to_owned();
    };
    let end = code[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(code.len(), |len| start + len);
    format!(
        "{}{}_renamed{}",
        &code[..start],
        &code[start..end],
        &code[end..]
    )
}

/// Where a trailing `//` comment starts, if it is outside a string (an even number of quotes
/// before it).
fn trailing_comment(code: &str) -> Option<usize> {
    let at = code.find(" //")?;
    code[..at]
        .matches('"')
        .count()
        .is_multiple_of(2)
        .then_some(at)
}

fn as_request(code: &str, rng: &mut XorShift) -> String {
    const OPENINGS: [&str; 3] = [
        "Can you explain why this doesn't compile? It's from our service:",
        "I'm refactoring the following; what would you change?",
        "Here's the function that's slow in production:",
    ];
    format!(
        "{}\n\n```rust\n{code}```\n\nThanks! Let me know if you need the surrounding module.\n",
        OPENINGS[rng.below(OPENINGS.len())]
    )
}

/// xorshift64*: a fixed sequence for a fixed seed, so every run draws the same excerpts.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..bound` for sampling (bound > 0).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}
