//! A large dictionary whose databases are not compiled yet: the matcher scans its terms with
//! automata meanwhile (`Matcher::compile_with`), masks exactly what the compiled databases
//! mask, in blocks and in streams at every cut, and hands over to the databases once the
//! background compile is done, streams already open finishing as they began.
//!
//! Each test uses terms of its own: matchers of the same expressions share their databases and
//! their background compile within a process. The Hyperscan cache is off in this process, so
//! nothing compiled by an earlier run is found instead of compiling.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use streammask::engine::databases::{self, CacheSetting, Source};
use streammask::engine::dictionary::MatchOptions;
use streammask::engine::masker::Engine;
use streammask::engine::matcher::InterimOptions;
use streammask::engine::{RuleSet, Scope};
use support::*;

const ORG_RULES: &str = r#"
[[rules]]
id = "org-ticket-token"
description = "an internal ticket token"
pattern = '''(?P<secret>tkt_[a-z0-9]{12})'''
action = "mask"
applies_to = ["request", "response"]
examples = ["tkt_a1b2c3d4e5f6"]
"#;

/// The pack, the organisation's rule, a case-insensitive list of `count` names (plus a few
/// multi-word and punctuated terms) and a short case-sensitive list.
fn org_set(seed: u64, count: usize) -> (RuleSet, Vec<String>) {
    let mut names = corpus::made_up_names(count, seed);
    names.extend([
        "Project Falcon".into(),
        "Acme Corp Europe".into(),
        "C++ Tooling".into(),
    ]);
    let mut set = RuleSet::embedded().expect("embedded pack");
    let org = RuleSet::from_toml("org.toml", ORG_RULES).expect("org rules parse");
    for rule in org.all() {
        set.push(rule.clone()).expect("new id");
    }
    set.push(dictionary_rule(
        "names",
        &names.join("\n"),
        MatchOptions::default(),
    ))
    .expect("new id");
    set.push(dictionary_rule(
        "hosts",
        "db-7.corp.internal\nOsprey",
        MatchOptions {
            case_sensitive: true,
            whole_word: true,
        },
    ))
    .expect("new id");
    (set, names)
}

fn text_with(names: &[String]) -> String {
    let picked: Vec<&String> = names.iter().step_by(names.len() / 7).collect();
    format!(
        "Accounts {} and {}, then {} ({}).\nShip project falcon to Acme  Corp Europe? No: \
         Acme Corp Europe Ltd, C++ Tooling on db-7.corp.internal, osprey and Osprey, \
         {}s is not a name. Token tkt_a1b2c3d4e5f6 and \
         ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 end; {}",
        picked[1],
        picked[2].to_uppercase(),
        picked[3],
        picked[4],
        picked[5],
        picked[6],
    )
}

fn interim_engine(set: &RuleSet, options: InterimOptions) -> Arc<Engine> {
    Arc::new(Engine::compile_with(set, key(), 8192, Some(options)).expect("compiles"))
}

#[test]
fn an_interim_matcher_masks_as_the_compiled_databases_do_in_blocks_and_streams() {
    databases::configure_cache(CacheSetting::Off);
    let (set, names) = org_set(101, 3_000);
    let waiting = InterimOptions {
        min_terms: 1_000,
        compile: false,
    };
    let interim = interim_engine(&set, waiting);
    assert!(interim.matcher().is_interim());
    assert_eq!(interim.matcher().extra_database_source(), None);
    let compiled = engine_for(&set, 8192);
    assert!(!compiled.matcher().is_interim());
    assert_eq!(
        compiled.matcher().extra_database_source(),
        Some(Source::Compiled)
    );
    // Now that the databases exist in this process, a new matcher takes them.
    assert!(!interim_engine(&set, waiting).matcher().is_interim());

    let text = text_with(&names);
    let expected = compiled.mask(&text, Scope::Response).expect("masks");
    let masked = interim.mask(&text, Scope::Response).expect("masks");
    assert_eq!(masked.text, expected.text);
    assert_eq!(masked.findings, expected.findings);
    assert_eq!(
        expected.text.matches("[MASKED:dict-names:").count(),
        8,
        "{}",
        expected.text
    );
    assert_eq!(expected.text.matches("[MASKED:dict-hosts:").count(), 2);
    assert!(expected.text.contains("osprey and [MASKED:dict-hosts:"));
    assert!(
        expected.text.contains("Acme  Corp Europe?"),
        "whitespace in a term is exact"
    );
    assert!(
        expected
            .text
            .contains(&format!("{}s is not a name", names[5 * (names.len() / 7)])),
        "whole words only"
    );
    assert_eq!(
        expected.text.matches("[MASKED:org-ticket-token:").count(),
        1
    );
    for cut in 1..text.len() {
        if !text.is_char_boundary(cut) {
            continue;
        }
        assert_eq!(
            stream_with_cuts(&interim, &text, Scope::Response, &[cut], |_, _| {}),
            expected.text,
            "one cut at {cut}"
        );
    }
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(
            stream_in_chunks(&interim, &text, Scope::Response, chunk),
            expected.text,
            "{chunk}-byte deltas"
        );
    }
}

#[test]
fn below_the_threshold_or_without_options_the_databases_are_compiled_at_once() {
    databases::configure_cache(CacheSetting::Off);
    let (set, _) = org_set(202, 500);
    let few = InterimOptions {
        min_terms: 1_000,
        compile: false,
    };
    assert!(!interim_engine(&set, few).matcher().is_interim());
    let (other, _) = org_set(203, 1_200);
    assert!(!engine_for(&other, 8192).matcher().is_interim());
}

#[test]
fn the_background_compile_takes_over_and_an_open_stream_finishes_as_it_began() {
    databases::configure_cache(CacheSetting::Off);
    let (set, names) = org_set(303, 20_000);
    let engine = interim_engine(
        &set,
        InterimOptions {
            min_terms: 1_000,
            compile: true,
        },
    );
    let text = text_with(&names);
    let (head, tail) = text.split_at(text.len() / 2);
    let mut early = engine.stream(Scope::Response).expect("stream");
    let mut early_out = Vec::new();
    early.push(head.as_bytes(), &mut early_out).expect("push");
    let interim_block = engine.mask(&text, Scope::Response).expect("masks").text;

    let started = Instant::now();
    while engine.matcher().is_interim() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the background compile never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        engine.matcher().extra_database_source(),
        Some(Source::Compiled)
    );
    let compiled_block = engine.mask(&text, Scope::Response).expect("masks").text;
    assert_eq!(compiled_block, interim_block);

    early.push(tail.as_bytes(), &mut early_out).expect("push");
    early.finish(&mut early_out).expect("finish");
    assert_eq!(String::from_utf8(early_out).expect("utf-8"), compiled_block);
    assert_eq!(
        stream_in_chunks(&engine, &text, Scope::Response, 5),
        compiled_block
    );
    // A matcher built now (a reload, a profile) finds the compiled databases.
    let again = interim_engine(
        &set,
        InterimOptions {
            min_terms: 1_000,
            compile: true,
        },
    );
    assert!(!again.matcher().is_interim());
}

/// The automata and the compiled databases agree on random texts built from awkward terms:
/// non-ASCII letters (folded by neither: ASCII only), punctuation-only terms, terms inside and
/// around other terms, and one term in two dictionaries of different case modes. Matchers of
/// the same expressions also share one background compile and one set of automata.
#[test]
fn awkward_terms_mask_alike_with_automata_and_databases_on_random_texts() {
    databases::configure_cache(CacheSetting::Off);
    let caseless = "Äpfel\n--\nC++\nbird\nbluebird\nProject X\nzz-awkward-terms\nx";
    let sensitive = "bird\nird\ndb-7\nÜber Go";
    let mut set = RuleSet::embedded().expect("embedded pack");
    set.push(dictionary_rule(
        "caseless",
        caseless,
        MatchOptions::default(),
    ))
    .expect("new id");
    set.push(dictionary_rule(
        "sensitive",
        sensitive,
        MatchOptions {
            case_sensitive: true,
            whole_word: false,
        },
    ))
    .expect("new id");
    let waiting = InterimOptions {
        min_terms: 1,
        compile: false,
    };
    let interim = interim_engine(&set, waiting);
    let profile = interim_engine(&set, waiting);
    assert!(interim.matcher().is_interim() && profile.matcher().is_interim());
    assert!(interim.matcher().shares_databases_with(profile.matcher()));
    let compiled = engine_for(&set, 8192);

    let pieces: Vec<&str> = "Äpfel|äpfel|ÄPFEL|--|---|C++|c++|bird|BIRD|bluebird|Bluebirds|ird|\
         db-7|DB-7|Über Go|über go|project x|Project  X|x|X| | |\n|,|-|+|é|tkt|zz-awkward-terms"
        .split('|')
        .collect();
    let mut rng = corpus::Rng::new(404);
    for round in 0..400 {
        let mut text = String::new();
        for _ in 0..(1 + rng.below(24)) {
            text.push_str(pieces[rng.below(pieces.len())]);
            if rng.below(3) == 0 {
                text.push(' ');
            }
        }
        let expected = compiled.mask(&text, Scope::Request).expect("masks");
        let masked = interim.mask(&text, Scope::Request).expect("masks");
        assert_eq!(masked.text, expected.text, "round {round}: {text:?}");
        assert_eq!(
            masked.findings, expected.findings,
            "round {round}: {text:?}"
        );
        let cut = rng.below(text.len() + 1);
        if text.is_char_boundary(cut) {
            assert_eq!(
                stream_with_cuts(&interim, &text, Scope::Request, &[cut], |_, _| {}),
                expected.text,
                "round {round}, cut at {cut}: {text:?}"
            );
        }
    }
}
