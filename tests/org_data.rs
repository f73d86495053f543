//! The organisation's own data in the engine: dictionary terms masked alike in block and
//! streaming mode for every cut point (multi-word terms included), a generated list of 100,000
//! terms in the shared databases, personal-data rules off until a profile's tags turn them on,
//! and protected code found by fingerprints.

mod support;

use std::sync::Arc;
use streammask::engine::dictionary::MatchOptions;
use streammask::engine::masker::Engine;
use streammask::engine::protected_code::FingerprintIndex;
use streammask::engine::rules::{Overrides, ProtectedTree, Rule};
use streammask::engine::{Action, RuleSet, Scope};
use support::*;

fn pack_with(rules: Vec<Rule>) -> RuleSet {
    let mut set = RuleSet::embedded().expect("embedded pack");
    for rule in rules {
        set.push(rule).expect("new rule id");
    }
    set
}

const CODENAMES: &str =
    "# code names\nProject Falcon\nOsprey\nAcme\nAcme Corp Europe\nC++ Tooling\n";

fn codenames_engine() -> Arc<Engine> {
    engine_for(
        &pack_with(vec![dictionary_rule(
            "codenames",
            CODENAMES,
            MatchOptions::default(),
        )]),
        8192,
    )
}

#[test]
fn dictionary_terms_stream_exactly_as_block_masking_at_every_cut() {
    let engine = codenames_engine();
    let text = "Ship project falcon\nto Acme  Corp Europe? No: Acme Corp Europe Ltd and OSPREY, \
                ospreys, C++ Tooling; also ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 end";
    let block = engine.mask(text, Scope::Response).expect("masks").text;
    for term in [
        "project falcon",
        "Acme Corp Europe Ltd",
        "OSPREY,",
        "C++ Tooling",
    ] {
        assert!(!block.contains(term), "{term} in {block}");
    }
    assert!(
        block.contains("]  Corp Europe?"),
        "whitespace inside a term is exact: only `Acme` is a term there"
    );
    assert!(block.contains("ospreys"), "whole words only");
    assert_eq!(
        block.matches("[MASKED:dict-codenames:").count(),
        5,
        "{block}"
    );
    for cut in 1..text.len() {
        let cuts = [cut];
        assert_eq!(
            stream_with_cuts(&engine, text, Scope::Response, &cuts, |_, _| {}),
            block,
            "one cut at {cut}"
        );
    }
    for chunk in [1, 2, 3, 5, 8] {
        assert_eq!(
            stream_in_chunks(&engine, text, Scope::Response, chunk),
            block,
            "{chunk}-byte deltas"
        );
    }
}

#[test]
fn a_streamed_multi_word_term_is_held_until_it_is_whole_and_no_longer() {
    let engine = codenames_engine();
    let mut masker = engine.stream(Scope::Response).expect("stream");
    let mut out = Vec::new();
    let text = "we met Acme Corp Europe today and then many more words followed here";
    for byte in text.as_bytes() {
        masker
            .push(std::slice::from_ref(byte), &mut out)
            .expect("push");
        let emitted = String::from_utf8_lossy(&out).to_string();
        assert!(!emitted.contains("Acme"), "a term's first word left early");
        // Two gaps in the longest term: at most the last three words are held.
        let held = masker.held();
        let tail = &text[text.len() - held.min(text.len())..];
        assert!(
            held == 0 || tail.split_whitespace().count() <= 3 || held < 30,
            "held {held} bytes"
        );
    }
    masker.finish(&mut out).expect("finish");
    assert_eq!(
        String::from_utf8(out).expect("utf-8"),
        engine.mask(text, Scope::Response).expect("masks").text
    );
    assert_eq!(masker.late_matches(), 0);
}

#[test]
fn a_list_of_100000_terms_compiles_into_the_shared_databases_and_masks_only_its_terms() {
    let terms = corpus::made_up_names(100_000, 20);
    let rule = dictionary_rule(
        "customers",
        &terms.join("\n"),
        MatchOptions {
            case_sensitive: true,
            whole_word: true,
        },
    );
    let engine = engine_for(&pack_with(vec![rule]), 8192);
    let chosen: Vec<&String> = terms.iter().step_by(4999).collect();
    let mut text = String::from("Accounts: ");
    for term in &chosen {
        text.push_str(term);
        text.push_str(", ");
    }
    text.push_str("and Kazotalx, which is not one.");
    let masked = engine.mask(&text, Scope::Request).expect("masks").text;
    for term in &chosen {
        assert!(!masked.contains(term.as_str()), "{term}");
    }
    assert_eq!(
        masked.matches("[MASKED:dict-customers:").count(),
        chosen.len()
    );
    assert!(masked.contains("Kazotalx, which is not one."));
    assert_eq!(stream_in_chunks(&engine, &text, Scope::Request, 7), masked);
    // The same term masks the same way in another text.
    let again_text = format!("see {}", chosen[3]);
    let again = engine
        .mask(&again_text, Scope::Request)
        .expect("masks")
        .text;
    let placeholder = again.strip_prefix("see ").expect("prefix");
    assert!(masked.contains(placeholder));
}

#[test]
fn personal_data_rules_are_off_until_a_profile_enables_their_tag() {
    let pack = RuleSet::embedded().expect("embedded pack");
    let pii: Vec<&Rule> = pack
        .all()
        .iter()
        .filter(|rule| rule.tags.iter().any(|tag| tag == "pii"))
        .collect();
    assert!(pii.len() >= 6, "the pack has personal-data rules");
    assert!(pii
        .iter()
        .all(|rule| !rule.enabled && rule.validate.is_some()));
    let text = "card 4556 0182 3497 2018 ssn 512-48-3907 mail marta.kowalska@tarnowbikes.pl";
    let off = engine_for(&pack, 8192);
    assert!(off.scan(text, Scope::Request).expect("scans").is_empty());
    let on = pack
        .with_overrides(&Overrides {
            enable_tags: &["pii".to_string()],
            disable_rules: &["pii-email".to_string()],
            ..Overrides::default()
        })
        .expect("known tag");
    let found: Vec<String> = engine_for(&on, 8192)
        .scan(text, Scope::Request)
        .expect("scans")
        .into_iter()
        .map(|finding| finding.rule_id)
        .collect();
    assert!(found.contains(&"pii-us-ssn".to_string()), "{found:?}");
    assert!(
        !found.contains(&"pii-email".to_string()),
        "a rule id wins over a tag"
    );
    let typo = pack.with_overrides(&Overrides {
        enable_tags: &["pi".to_string()],
        ..Overrides::default()
    });
    assert!(typo.is_err(), "a tag no rule carries is an error");
}

#[test]
fn protected_code_is_a_finding_of_its_rule_with_the_file_named() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/mock/src");
    let mut index = FingerprintIndex::new();
    index
        .add_paths(std::slice::from_ref(&root))
        .expect("fingerprints");
    let mut rule = Rule::synthetic(
        "protected-code-mock".into(),
        "mock code".into(),
        Action::Block,
        vec![Scope::Request],
    );
    rule.protected_code = Some(Arc::new(ProtectedTree {
        index,
        min_match_lines: 10,
    }));
    let engine = engine_for(&pack_with(vec![rule]), 8192);
    assert!(engine.has_protected_code());
    let source = std::fs::read_to_string(root.join("sse.rs")).expect("read");
    let lines: Vec<&str> = source.lines().collect();
    let start = (40..lines.len() - 20)
        .find(|&at| lines[at..at + 20].iter().all(|l| !l.trim().is_empty()))
        .unwrap_or(40);
    let excerpt: String = lines[start..start + 20]
        .iter()
        .map(|line| format!("  {}\n", line.trim_start()))
        .collect();
    let found = engine.find_protected_code(&excerpt, Scope::Request);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule_id, "protected-code-mock");
    assert_eq!(found[0].action, Action::Block);
    let detail = found[0].detail.as_deref().expect("detail");
    assert!(detail.ends_with("`sse.rs`"), "{detail}");
    assert!(
        engine
            .find_protected_code(&excerpt, Scope::Response)
            .is_empty(),
        "requests only"
    );
    // Nothing of it is masked: the matcher never reports the rule.
    assert_eq!(
        engine.mask(&excerpt, Scope::Request).expect("masks").text,
        excerpt
    );
    let three: String = lines[start..start + 3].join("\n");
    assert!(engine
        .find_protected_code(&three, Scope::Request)
        .is_empty());
}
