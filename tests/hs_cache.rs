//! The compiled-database cache: a second compile of the same rules in this process shares the
//! databases, a compile in a new process (simulated by dropping every matcher) loads them from
//! the cache directory, and they match exactly like freshly compiled ones; a changed rule gets
//! its own entry; a corrupt entry is replaced; a directory others could write is never used.
//! Own test binary, because the cache setting is process-global.

use std::os::unix::fs::PermissionsExt;
use streammask::engine::databases::{configure_cache, CacheSetting, Source};
use streammask::engine::matcher::{Matcher, HS_CACHE_ENV};
use streammask::RuleSet;

const RULES: &str = r#"
[[rules]]
id = "cache-demo"
description = "demo"
pattern = '''\b(?P<secret>cdk_[a-z0-9]{12})\b'''
action = "mask"

[[rules]]
id = "cache-demo-pin"
description = "demo"
pattern = '''\bcdkpin=[0-9]{6}\b'''
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

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn cached_databases_are_reused_and_keyed_by_rules() {
    let root = std::env::temp_dir().join(format!("streammask-hs-cache-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    let dir = root.join("created/on/demand");
    std::env::set_var(HS_CACHE_ENV, &dir);
    let set = RuleSet::from_toml("cache.toml", RULES).unwrap();
    let text = b"token cdk_abcdef123456 and cdk_zzzzzzzzzzzz.";

    let fresh = Matcher::compile(&set, 1024).unwrap();
    assert_eq!(fresh.database_source(), Source::Compiled);
    assert_eq!(
        entries(&dir),
        2,
        "one block and one streaming database are cached"
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
    let expected = candidates(&fresh, text);
    assert_eq!(expected.len(), 4, "two matches, block and stream");
    let again = Matcher::compile(&set, 1024).unwrap();
    assert!(again.shares_databases_with(&fresh), "shared in-process");
    drop((fresh, again));

    // Pruning drops the least recently used entries: a load marks its entries used.
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::File::options()
            .write(true)
            .open(entry.unwrap().path())
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH)
            .unwrap();
    }
    let cached = Matcher::compile(&set, 1024).unwrap();
    assert_eq!(cached.database_source(), Source::Cache);
    assert_eq!(entries(&dir), 2, "the cache is reused, not rewritten");
    assert_eq!(candidates(&cached, text), expected);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let modified = entry.unwrap().metadata().unwrap().modified().unwrap();
        assert!(
            modified > std::time::UNIX_EPOCH,
            "a loaded entry is touched"
        );
    }
    drop(cached);

    // A single expression compiles in milliseconds (`rules check` compiles hundreds): it is
    // never cached, so it cannot crowd out packs.
    let one_rule = &RULES[..RULES.find("\n[[rules]]\nid = \"cache-demo-pin\"").unwrap()];
    let single = RuleSet::from_toml("one.toml", one_rule).unwrap();
    assert_eq!(single.len(), 1);
    let matcher = Matcher::compile(&single, 1024).unwrap();
    assert_eq!(matcher.database_source(), Source::Compiled);
    drop(matcher);
    assert_eq!(entries(&dir), 2);

    let changed = RuleSet::from_toml("cache.toml", &RULES.replace("{12}", "{10}")).unwrap();
    drop(Matcher::compile(&changed, 1024).unwrap());
    assert_eq!(entries(&dir), 4, "a changed rule is a new entry");

    // A corrupt entry is ignored and replaced, never trusted.
    for entry in std::fs::read_dir(&dir).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let recovered = Matcher::compile(&set, 1024).unwrap();
    assert_eq!(recovered.database_source(), Source::Compiled);
    assert_eq!(candidates(&recovered, text), expected);
    drop(recovered);
    assert_eq!(
        Matcher::compile(&set, 1024).unwrap().database_source(),
        Source::Cache,
        "the corrupt entry was replaced"
    );

    // A directory that group or others may write could hold a database that matches nothing:
    // it is not used (a warning, then a compile), and nothing is written to it.
    let open = root.join("group-writable");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).unwrap();
    configure_cache(CacheSetting::Dir(open.clone()));
    for _ in 0..2 {
        let matcher = Matcher::compile(&set, 1024).unwrap();
        assert_eq!(matcher.database_source(), Source::Compiled);
        assert_eq!(candidates(&matcher, text), expected);
    }
    assert_eq!(entries(&open), 0);

    // A directory that cannot be created (read-only file system, here: under a file) is a
    // warning too, never an error.
    let file = root.join("a-file");
    std::fs::write(&file, b"").unwrap();
    configure_cache(CacheSetting::Dir(file.join("cache")));
    assert_eq!(
        Matcher::compile(&set, 1024).unwrap().database_source(),
        Source::Compiled
    );

    // `cache_dir = ""` turns the cache off.
    configure_cache(CacheSetting::Off);
    let matcher = Matcher::compile(&set, 1024).unwrap();
    assert_eq!(matcher.database_source(), Source::Compiled);
    std::fs::remove_dir_all(&root).ok();
}
