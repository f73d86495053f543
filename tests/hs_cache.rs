//! The compiled-database cache (`STREAMMASK_HS_CACHE_DIR`): a second compile of the same rules
//! loads the cached databases, which then match exactly like freshly compiled ones, and a
//! changed rule gets its own entry. Own test binary, because the cache is chosen by an
//! environment variable (process-global).

use streammask::engine::matcher::{Matcher, HS_CACHE_ENV};
use streammask::RuleSet;

const RULES: &str = r#"
[[rules]]
id = "cache-demo"
description = "demo"
pattern = '''\b(?P<secret>cdk_[a-z0-9]{12})\b'''
action = "mask"
"#;

fn candidates(matcher: &Matcher, text: &[u8]) -> Vec<(u32, usize)> {
    let mut found = Vec::new();
    matcher
        .scan_block(text, |c| found.push((c.rule, c.end)))
        .unwrap();
    let stream = matcher.open_stream().unwrap();
    for piece in text.chunks(5) {
        matcher
            .scan_stream(&stream, piece, |c| found.push((c.rule, c.end)))
            .unwrap();
    }
    matcher
        .close_stream(stream, |c| found.push((c.rule, c.end)))
        .unwrap();
    found
}

#[test]
fn cached_databases_are_reused_and_keyed_by_rules() {
    let dir = std::env::temp_dir().join(format!("streammask-hs-cache-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::env::set_var(HS_CACHE_ENV, &dir);
    let set = RuleSet::from_toml("cache.toml", RULES).unwrap();
    let text = b"token cdk_abcdef123456 and cdk_zzzzzzzzzzzz.";

    let fresh = Matcher::compile(&set, 1024).unwrap();
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        entries, 2,
        "one block and one streaming database are cached"
    );
    let cached = Matcher::compile(&set, 1024).unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        2,
        "the cache is reused, not rewritten"
    );
    let expected = candidates(&fresh, text);
    assert_eq!(expected.len(), 4, "two matches, block and stream");
    assert_eq!(candidates(&cached, text), expected);

    let changed = RuleSet::from_toml("cache.toml", &RULES.replace("{12}", "{10}")).unwrap();
    Matcher::compile(&changed, 1024).unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        4,
        "a changed rule is a new entry"
    );

    // A corrupt entry is ignored and replaced, never trusted.
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let recovered = Matcher::compile(&set, 1024).unwrap();
    assert_eq!(candidates(&recovered, text), expected);
    std::fs::remove_dir_all(&dir).ok();
}
