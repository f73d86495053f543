//! A secret found once is masked everywhere, and a format rule wins over a context rule that
//! overlaps it (issue: detection coverage, classes 3 and 4).

mod support;

use std::sync::Arc;
use streammask::Scope;
use support::*;

/// Random-looking, no provider format: only a key name marks it as a secret.
const VALUE: &str = "q7Vd2mXr9LkTz4Hw8NcBf3Ys";

fn placeholders(text: &str) -> Vec<&str> {
    text.match_indices("[MASKED:")
        .map(|(at, _)| &text[at..at + text[at..].find(']').expect("closed") + 1])
        .collect()
}

#[test]
fn a_secret_found_by_its_key_name_is_masked_where_it_stands_bare_too() {
    let engine = default_engine();
    let text = format!("x token = '{VALUE}' | '{VALUE}' and later {VALUE}.");
    // Without knowing it, only the occurrence after the key name is masked.
    let plain = engine.mask(&text, Scope::Request).expect("mask");
    assert_eq!(plain.text.matches(VALUE).count(), 2, "{}", plain.text);
    let knowing = engine
        .knowing_secrets_of(&text, Scope::Request)
        .expect("learn");
    let masked = knowing.mask(&text, Scope::Request).expect("mask");
    assert!(!masked.text.contains(VALUE), "{}", masked.text);
    let found = placeholders(&masked.text);
    assert_eq!(found.len(), 3, "{}", masked.text);
    assert!(found.iter().all(|p| *p == found[0]), "{found:?}");
    assert!(found[0].starts_with("[MASKED:generic-token-"), "{found:?}");
}

#[test]
fn an_engine_that_knows_nothing_new_is_the_engine() {
    let engine = default_engine();
    let text = "nothing secret here, just prose about tokens";
    let knowing = engine
        .knowing_secrets_of(text, Scope::Request)
        .expect("learn");
    assert!(knowing.known().is_none());
}

#[test]
fn known_secrets_stream_exactly_as_they_mask_in_block_mode_at_every_cut() {
    let engine = default_engine();
    let context = format!("DEPLOY_TOKEN={VALUE}\n");
    let known = Arc::new(
        engine
            .knowing_secrets_of(&context, Scope::Request)
            .expect("learn"),
    );
    assert!(known.known().is_some());
    // Bare repeats at the start, glued to words, twice in a row, at the very end.
    let text = format!("{VALUE} is it; x{VALUE}y and {VALUE}{VALUE} then `{VALUE}`\n{VALUE}");
    let block = known.mask(&text, Scope::Response).expect("mask");
    assert!(!block.text.contains(VALUE), "{}", block.text);
    for cut in 0..=text.len() {
        if !text.is_char_boundary(cut) {
            continue;
        }
        let streamed = stream_with_cuts(&known, &text, Scope::Response, &[cut], |_, _| {});
        assert_eq!(streamed, block.text, "cut at {cut}");
    }
    for chunk in [1, 2, 3, 7, 64] {
        assert_eq!(
            stream_in_chunks(&known, &text, Scope::Response, chunk),
            block.text,
            "chunks of {chunk}"
        );
    }
}

#[test]
fn a_format_rule_wins_over_a_context_rule_that_overlaps_it() {
    let engine = default_engine();
    let token = format!("ghp_{}", "k3Jd9QmZ2xW7bN4vR8tY1pL6sH0cF5gA2eU9");
    let text =
        format!("git remote set-url origin https://x-access-token:{token}@github.com/acme/app.git");
    for scope in [Scope::Request, Scope::Response, Scope::ToolInput] {
        let masked = engine.mask(&text, scope).expect("mask");
        assert!(!masked.text.contains(&token), "{}", masked.text);
        assert!(
            masked.text.ends_with("@github.com/acme/app.git"),
            "{scope:?}: {}",
            masked.text
        );
        let rules: Vec<&str> = masked.findings.iter().map(|f| f.rule_id.as_str()).collect();
        assert_eq!(rules, ["github-pat-classic"], "{scope:?}");
        assert_eq!(
            stream_in_chunks(&engine, &text, scope, 1),
            masked.text,
            "{scope:?}"
        );
    }
}

#[test]
fn a_text_remembered_clean_by_the_rules_is_still_masked_by_an_exchange_that_knows_it() {
    let engine = default_engine();
    // The bare value holds nothing the rules find: scanned, then answered from memory.
    for _ in 0..3 {
        let bare = engine.mask(VALUE, Scope::Response).expect("mask");
        assert!(bare.findings.is_empty() && bare.text == VALUE);
    }
    let knowing = engine
        .knowing_secrets_of(&format!("DEPLOY_TOKEN={VALUE}\n"), Scope::Request)
        .expect("learn");
    for _ in 0..3 {
        let masked = knowing.mask(VALUE, Scope::Response).expect("mask");
        assert!(!masked.text.contains(VALUE), "{}", masked.text);
        assert_eq!(masked.findings.len(), 1);
    }
    // A remembered text does not vouch for one that merely starts like it.
    let with_secret = format!("{VALUE} token = '{VALUE}'");
    assert!(!engine
        .mask(&with_secret, Scope::Response)
        .expect("mask")
        .findings
        .is_empty());
}
