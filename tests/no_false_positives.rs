//! Ordinary text passes through the default pack untouched: generated code, prose, logs,
//! lockfiles, UUIDs, git SHAs, digests and base64 images, and the project's own sources.

mod support;

use std::path::Path;
use streammask::Scope;
use support::*;

/// `text[from..to]` widened to character boundaries (a finding's context is only shown).
fn context(text: &str, mut from: usize, to: usize) -> &str {
    let mut to = to.min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    while !text.is_char_boundary(to) {
        to += 1;
    }
    &text[from..to]
}

fn assert_clean(engine: &streammask::Engine, name: &str, text: &str) {
    for scope in [Scope::Request, Scope::Response, Scope::ToolInput] {
        let masked = engine.mask(text, scope).unwrap();
        let ids: Vec<String> = masked
            .findings
            .iter()
            .map(|f| {
                format!(
                    "{} at {}: {:?}",
                    f.rule_id,
                    f.span.start,
                    context(text, f.span.start.saturating_sub(30), f.span.end + 10)
                )
            })
            .collect();
        assert!(ids.is_empty(), "{name} ({scope:?}): {ids:#?}");
        assert_eq!(masked.text, text);
    }
}

#[test]
fn generated_ordinary_text_has_no_findings() {
    let engine = default_engine();
    for seed in 1..=4 {
        let text = corpus::ordinary_text(seed, 1 << 20);
        assert_clean(&engine, &format!("corpus seed {seed}"), &text);
    }
}

fn collect_sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "md") {
            out.push(path);
        }
    }
}

#[test]
fn project_sources_have_no_findings() {
    let engine = default_engine();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("Cargo.toml"), root.join("build.rs")];
    for dir in ["src", "bench"] {
        collect_sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 5);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert_clean(&engine, &file.display().to_string(), &text);
    }
}

/// `CORPUS_OUT=/tmp/corpus.txt cargo test --release --test no_false_positives -- --ignored`
/// writes the generated corpus, for `streammask rules bench` and rule authors.
#[test]
#[ignore]
fn dump_corpus() {
    if let Ok(path) = std::env::var("CORPUS_OUT") {
        std::fs::write(path, corpus::ordinary_text(42, 4 << 20)).unwrap();
    }
}
