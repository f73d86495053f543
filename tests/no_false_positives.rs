//! Ordinary text passes through the default pack untouched: generated code, prose, logs,
//! lockfiles, UUIDs, git SHAs, digests and base64 images, the project's own sources, and real
//! code and prose about tokens, secrets and passwords vendored under tests/fixtures/fp-real.

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
fn the_api_s_own_words_have_no_findings() {
    // The engine skips the scan of these words once it has found them clean; the pack should
    // find them clean, or every stream would pay for the scans (and a match in an event type
    // would refuse the stream). Joined into one text, so the scan runs.
    let text = streammask::engine::masker::PROTOCOL_WORDS.join(" ");
    assert_clean(&default_engine(), "the API's own words", &text);
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

/// Every vendored file under `root` except the corpus README, its list of accepted findings and
/// each source's licence files (`LICENSE*`, `LICENCE*`, `NOTICE*`, `COPYING*`, `AUTHORS*`
/// directly in `fp-real/<source>/`).
fn collect_vendored(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_vendored(root, &path, out);
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let depth = path
            .strip_prefix(root)
            .map_or(0, |rel| rel.components().count());
        let upper = name.to_ascii_uppercase();
        let licence = ["LICENSE", "LICENCE", "NOTICE", "COPYING", "AUTHORS"]
            .iter()
            .any(|prefix| upper.starts_with(*prefix));
        if (depth == 1 && (name == "README.md" || name == "EXPECTED-FINDINGS"))
            || (depth == 2 && licence)
        {
            continue;
        }
        out.push(path);
    }
}

/// The corpus: real, permissively licensed code, docstrings, READMEs and changelogs of auth
/// libraries (OAuth 1/2, JWT, HTTP auth, .env loaders, SDK credential providers, URL parsers),
/// full of token/secret/password/api_key/Authorization talk but holding no credential. Sources,
/// versions and licences are in tests/fixtures/fp-real/README.md;
/// `tests/fixtures/rules_tools/fp_rate.py` measures a pack's false-positive rate on it.
///
/// The findings the pack makes there, in any scope, must be exactly the ones listed (each with
/// the reason it is accepted) in tests/fixtures/fp-real/EXPECTED-FINDINGS: a new one is a false
/// positive a rule change introduced, a vanished one a list to bring up to date.
#[test]
fn vendored_real_code_and_prose_make_only_the_accepted_findings() {
    let engine = default_engine();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fp-real");
    let mut files = Vec::new();
    collect_vendored(&root, &root, &mut files);
    files.sort();
    assert!(files.len() > 100, "only {} vendored files", files.len());
    let mut found = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let relative = file.strip_prefix(&root).unwrap().display().to_string();
        for scope in [Scope::Request, Scope::Response, Scope::ToolInput] {
            // As a request is masked: a secret found once counts everywhere in the file.
            let knowing = engine.knowing_secrets_of(&text, scope).unwrap();
            for finding in knowing.scan(&text, scope).unwrap() {
                let line = text[..finding.span.start].matches('\n').count() + 1;
                found.insert(format!("{relative}:{line} {}", finding.rule_id));
            }
        }
    }
    let listed = std::fs::read_to_string(root.join("EXPECTED-FINDINGS")).unwrap();
    let expected: std::collections::BTreeSet<String> = listed
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (entry, why) = line.split_once("  # ").expect("every entry says why");
            assert!(!why.trim().is_empty(), "{line}");
            entry.trim().to_string()
        })
        .collect();
    let unexpected: Vec<_> = found.difference(&expected).collect();
    let vanished: Vec<_> = expected.difference(&found).collect();
    assert!(
        unexpected.is_empty() && vanished.is_empty(),
        "false positives not in EXPECTED-FINDINGS: {unexpected:#?}\nlisted but no longer found: {vanished:#?}"
    );
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
