//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod corpus;

use std::path::Path;
use std::sync::Arc;
use streammask::engine::dictionary::{Dictionary, MatchOptions};
use streammask::engine::masker::{Engine, DEFAULT_MAX_HOLD_BYTES};
use streammask::engine::placeholder::PlaceholderKey;
use streammask::engine::rules::Rule;
use streammask::engine::Action;
use streammask::{RuleSet, Scope};

pub fn key() -> PlaceholderKey {
    PlaceholderKey::new(b"streammask-test-key-0123456789").unwrap()
}

pub fn engine_for(set: &RuleSet, max_hold: usize) -> Arc<Engine> {
    Arc::new(Engine::compile(set, key(), max_hold).expect("rules compile"))
}

/// The default pack as shipped.
pub fn default_engine() -> Arc<Engine> {
    engine_for(
        &RuleSet::embedded().expect("embedded pack"),
        DEFAULT_MAX_HOLD_BYTES,
    )
}

/// The engine's own small rule set (one rule of each shape).
pub fn fixture_engine(max_hold: usize) -> Arc<Engine> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine-rules.toml"),
    )
    .unwrap();
    engine_for(
        &RuleSet::from_toml("engine-rules.toml", &text).unwrap(),
        max_hold,
    )
}

/// Stream `text` cut at `cuts` (sorted byte offsets); returns the output and the largest hold
/// observed after any push, checked against `check_hold(received, held)`.
pub fn stream_with_cuts(
    engine: &Arc<Engine>,
    text: &str,
    scope: Scope,
    cuts: &[usize],
    mut check_hold: impl FnMut(usize, usize),
) -> String {
    let mut masker = engine.stream(scope).unwrap();
    let mut out = Vec::new();
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&text.len())) {
        if cut < last || cut > text.len() {
            continue;
        }
        masker.push(&text.as_bytes()[last..cut], &mut out).unwrap();
        check_hold(cut, masker.held());
        last = cut;
    }
    masker.finish(&mut out).unwrap();
    assert_eq!(masker.held(), 0, "nothing may be held after finish");
    String::from_utf8(out).expect("streamed output is UTF-8")
}

pub fn stream_in_chunks(engine: &Arc<Engine>, text: &str, scope: Scope, chunk: usize) -> String {
    let cuts: Vec<usize> = (chunk..text.len()).step_by(chunk).collect();
    stream_with_cuts(engine, text, scope, &cuts, |_, _| {})
}

/// Every example and negative example of the pack, for building test texts.
pub fn pack_pieces() -> (Vec<String>, Vec<String>) {
    let set = RuleSet::embedded().unwrap();
    let examples = set.enabled().flat_map(|r| r.examples.clone()).collect();
    let negatives = set
        .enabled()
        .flat_map(|r| r.negative_examples.clone())
        .collect();
    (examples, negatives)
}

/// A `[[dictionaries]]` rule (`dict-<id>`) of `text`'s terms, masking in requests and responses.
pub fn dictionary_rule(id: &str, text: &str, options: MatchOptions) -> Rule {
    let mut rule = Rule::synthetic(
        format!("dict-{id}"),
        format!("a term of {id}"),
        Action::Mask,
        vec![Scope::Request, Scope::Response],
    );
    rule.dictionary = Some(Arc::new(
        Dictionary::parse(id, text, options).expect("dictionary parses"),
    ));
    rule
}
