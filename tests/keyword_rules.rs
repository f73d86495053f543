//! Keyword rules (`keyword` + `after_keyword`, `src/engine/keyword.rs`) against the same rules
//! run whole in Hyperscan: the pack's keyword rules, split and unsplit, must report the same
//! candidates (those a match of the pattern ends at) in block scans and in streams of every
//! chunking, and mask the same. A profile that turns off the rule Hyperscan reports a key word
//! under still finds the other rules of that key word.

mod support;

use std::collections::BTreeSet;
use streammask::engine::matcher::Matcher;
use streammask::engine::rules::{Overrides, Rule, RuleSet};
use streammask::Scope;
use support::*;

/// The pack's keyword rules as written (the generic grammar rules and the vendor context rules
/// whose key name the generator split off), and the same rules with Hyperscan running their
/// patterns whole.
fn split_and_whole() -> (RuleSet, RuleSet) {
    let pack = RuleSet::embedded().unwrap();
    let mut split = RuleSet::from_toml("keyword-rules.toml", "rules = []").unwrap();
    let mut whole = RuleSet::from_toml("keyword-rules.toml", "rules = []").unwrap();
    for rule in pack.all().iter().filter(|r| r.keyword.is_some()) {
        split.push(rule.clone()).unwrap();
        whole
            .push(Rule {
                keyword: None,
                after_keyword: None,
                ..rule.clone()
            })
            .unwrap();
    }
    let generic = split
        .all()
        .iter()
        .filter(|r| r.id.starts_with("generic-"))
        .count();
    assert!(generic >= 9, "{generic} generic keyword rules");
    assert!(split.len() >= 70, "{} keyword rules", split.len());
    (split, whole)
}

/// A small deterministic generator (no seed to keep: the texts are the same every run).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Texts dense in key words, separators and values: the rules' own examples and negatives,
/// and random assignments of awkward pieces.
fn texts(set: &RuleSet) -> Vec<String> {
    let mut texts: Vec<String> = set
        .all()
        .iter()
        .flat_map(|r| r.examples.iter().chain(&r.negative_examples).cloned())
        .collect();
    texts.push(texts.join("\n"));
    texts.push(texts[..texts.len() - 1].join(" "));
    let keys = [
        "token",
        "TOKEN",
        "adafruitToken",
        "db_password",
        "_PASS",
        "x-api-key",
        "API_KEY",
        "secret",
        "clientSecret",
        "MY_SECRET_KEY",
        "pwd",
        "passphrase",
        "tokens",
        "tokenizer",
        "secret_name",
        "GITHUB_TOKEN",
        "app key",
        "Password",
        "mysecret",
        "AUTH",
        "DROPBOX_TOKEN",
        "twilioAuthToken",
        "aws_secret_access_key",
        "azure_storage_key",
        "GITHUB_OAUTH_SECRET",
        "SUMO_LOGIC_ACCESS_KEY",
        "x-functions-key",
        "cosmos db key",
        "hubspot api key",
        "travis_token",
    ];
    let separators = [
        "=", " = ", ": ", ":", " := ", " => ", "?=", ".=", " <- ", " is ", " - ", "\", ", ">",
        "\"]=", "==", ": str = ", "", " ",
    ];
    let values = [
        "\"hMIQs4r25JrTYZ8c2wEXAMPLEV0x0LH8\"",
        "'pibfhw850uvyym1ku1tokaly5q-nxcom'",
        "Puq4FAKEpXyZFu",
        "7vef9yhgg49dmld2w26rjmmsbr-suaas",
        "\"short\"",
        "${TOKEN}",
        "xxxxxxxxxxxxxxxx",
        "`kq8Zr2LmW9xT4vB1nC7d`",
        "abc def",
        "\"unterminated Zr2LmW9xT4vB1nC7",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "a\\nB=1",
    ];
    let glue = ["\n", " ", "; ", ", ", "\\n", "", "\t", "&"];
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..60 {
        let mut text = String::new();
        for _ in 0..(random.next() % 12 + 1) {
            text.push_str(random.pick(&keys));
            text.push_str(random.pick(&separators));
            text.push_str(random.pick(&values));
            text.push_str(random.pick(&glue));
        }
        texts.push(text);
    }
    texts
}

/// The candidates a match of its rule's pattern ends at, as (rule id, end).
fn block_candidates(matcher: &Matcher, text: &[u8]) -> BTreeSet<(String, usize)> {
    let mut found = BTreeSet::new();
    matcher
        .scan_block(text, |c| {
            if matcher.start_of(c.rule, text, 0, c.end).is_some() {
                found.insert((matcher.rule(c.rule).id().to_string(), c.end));
            }
        })
        .unwrap();
    found
}

fn stream_candidates(matcher: &Matcher, text: &[u8], cuts: &[usize]) -> BTreeSet<(String, usize)> {
    let mut ends = Vec::new();
    let stream = matcher.open_stream().unwrap();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&text.len())) {
        matcher
            .scan_stream(&stream, &text[from..to], |c| ends.push(c))
            .unwrap();
        from = to;
    }
    matcher.close_stream(stream, |c| ends.push(c)).unwrap();
    // Per rule, ends come in ascending order and each once.
    for rule in ends.iter().map(|c| c.rule).collect::<BTreeSet<_>>() {
        let of_rule: Vec<usize> = ends
            .iter()
            .filter(|c| c.rule == rule)
            .map(|c| c.end)
            .collect();
        assert!(
            of_rule.windows(2).all(|pair| pair[0] < pair[1]),
            "rule {} ends out of order or twice: {of_rule:?}",
            matcher.rule(rule).id()
        );
    }
    ends.iter()
        .filter(|c| matcher.start_of(c.rule, text, 0, c.end).is_some())
        .map(|c| (matcher.rule(c.rule).id().to_string(), c.end))
        .collect()
}

#[test]
fn split_rules_report_what_whole_rules_report_in_blocks_and_streams() {
    let (split, whole) = split_and_whole();
    let split_matcher = Matcher::compile(&split, 8192).unwrap();
    let whole_matcher = Matcher::compile(&whole, 8192).unwrap();
    let mut random = XorShift(42);
    let mut total = 0;
    for text in texts(&split) {
        let bytes = text.as_bytes();
        let expected = block_candidates(&whole_matcher, bytes);
        total += expected.len();
        assert_eq!(
            block_candidates(&split_matcher, bytes),
            expected,
            "block: {text:?}"
        );
        let mut chunkings: Vec<Vec<usize>> = vec![(1..bytes.len()).collect()];
        for _ in 0..4 {
            let mut cuts: Vec<usize> = (0..random.next() % 6)
                .map(|_| (random.next() % (bytes.len() as u64 + 1)) as usize)
                .collect();
            cuts.sort_unstable();
            chunkings.push(cuts);
        }
        if bytes.len() < 80 {
            chunkings.extend((0..=bytes.len()).map(|cut| vec![cut]));
        }
        for cuts in chunkings {
            assert_eq!(
                stream_candidates(&split_matcher, bytes, &cuts),
                expected,
                "stream cut at {cuts:?}: {text:?}"
            );
        }
    }
    assert!(
        total > 300,
        "only {total} candidates: the texts test too little"
    );
}

#[test]
fn split_rules_mask_as_whole_rules_do() {
    let (split, whole) = split_and_whole();
    let split_engine = engine_for(&split, 12 * 1024);
    let whole_engine = engine_for(&whole, 12 * 1024);
    let mut masked = 0;
    for text in texts(&split) {
        let expected = whole_engine.mask(&text, Scope::Request).unwrap();
        let got = split_engine.mask(&text, Scope::Request).unwrap();
        assert_eq!(got.text, expected.text, "{text:?}");
        masked += expected.findings.len();
        assert_eq!(
            stream_in_chunks(&split_engine, &text, Scope::Request, 3),
            expected.text
        );
    }
    assert!(masked > 50, "only {masked} findings");
}

#[test]
fn a_profile_without_the_rule_a_key_word_is_reported_under_still_finds_the_others() {
    let (split, _) = split_and_whole();
    let text = b"token = \"hMIQs4r25JrTYZ8c2wEXAMPLEV0x0LH8\" AUTH_TOKEN=Puq4FAKEpXyZFu77\n";
    let ids = |matcher: &Matcher| -> BTreeSet<String> {
        block_candidates(matcher, text)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    let base = Matcher::compile(&split, 8192).unwrap();
    assert!(ids(&base).contains("generic-token-quoted"));
    assert!(ids(&base).contains("generic-token-unquoted"));
    // The quoted rule comes first in the pack: Hyperscan reports `token` under its id.
    let without_quoted = split
        .with_overrides(&Overrides {
            disable_rules: &["generic-token-quoted".to_string()],
            ..Overrides::default()
        })
        .unwrap();
    let profile = Matcher::compile(&without_quoted, 8192).unwrap();
    assert!(profile.shares_databases_with(&base));
    let found = ids(&profile);
    assert!(!found.contains("generic-token-quoted"), "{found:?}");
    assert!(found.contains("generic-token-unquoted"), "{found:?}");
    let without_both = split
        .with_overrides(&Overrides {
            disable_rules: &[
                "generic-token-quoted".to_string(),
                "generic-token-unquoted".to_string(),
            ],
            ..Overrides::default()
        })
        .unwrap();
    let profile = Matcher::compile(&without_both, 8192).unwrap();
    let found = ids(&profile);
    assert!(
        !found.iter().any(|id| id.starts_with("generic-token")),
        "{found:?}"
    );
}

#[test]
fn a_text_of_key_words_is_bounded_by_the_masking_budget() {
    use streammask::engine::masker::{Budget, MaskError};
    // Every `token` starts a walk through the rest of the text as one long value: the walks,
    // not the candidates (there are none), are the work.
    let text = "token:x".repeat(600_000);
    let engine = default_engine();
    let unbounded = engine.scan_within(&text, Scope::Request, None).unwrap();
    assert!(unbounded.is_empty());
    match engine.scan_within(&text, Scope::Request, Some(&Budget::new(5))) {
        Err(MaskError::OverBudget { budget_ms: 5 }) => {}
        other => panic!("a 5 ms budget let the walks run: {other:?}"),
    }
}

#[test]
fn a_block_scan_hands_out_reports_in_a_streams_order_across_its_report_batches() {
    // A block scan walks key words and hands out reports a batch at a time; a stream does it
    // report by report. Thousands of reports of every kind of rule (several batches) must come
    // out the same.
    let pack = RuleSet::embedded().unwrap();
    let matcher = Matcher::compile(&pack, 8192).unwrap();
    let examples: Vec<&str> = pack
        .all()
        .iter()
        .flat_map(|r| r.examples.iter().map(String::as_str))
        .collect();
    let text = examples.join("\n");
    let mut block = Vec::new();
    matcher
        .scan_block(text.as_bytes(), |c| block.push((c.rule, c.end)))
        .unwrap();
    assert!(block.len() > 8 * 1024, "only {} reports", block.len());
    let mut streamed = Vec::new();
    let stream = matcher.open_stream().unwrap();
    for chunk in text.as_bytes().chunks(4093) {
        matcher
            .scan_stream(&stream, chunk, |c| streamed.push((c.rule, c.end)))
            .unwrap();
    }
    matcher
        .close_stream(stream, |c| streamed.push((c.rule, c.end)))
        .unwrap();
    // Hyperscan may order reports of equal end differently in block and stream mode: compare
    // the order of ends, and what is reported at each.
    let ends = |reports: &[(u32, usize)]| reports.iter().map(|r| r.1).collect::<Vec<_>>();
    assert!(
        ends(&block) == ends(&streamed),
        "block and stream report orders differ"
    );
    let sorted = |reports: &[(u32, usize)]| reports.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(sorted(&block), sorted(&streamed));
}
