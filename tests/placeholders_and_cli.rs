//! Placeholders across engines and keys, the pack's own `rules check`, and the CLI forms other
//! tools depend on (`scan`, `scan --stream-chunk`, `rules check`, `rules list`).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use streammask::engine::placeholder::{is_placeholder, PlaceholderKey};
use streammask::{engine::masker::DEFAULT_MAX_HOLD_BYTES, RuleSet, Scope};
use support::*;

#[test]
fn embedded_pack_passes_rules_check_and_is_large_enough() {
    let set = RuleSet::embedded().unwrap();
    let report = streammask::engine::check::check_rules(&set, DEFAULT_MAX_HOLD_BYTES);
    assert!(report.passed(), "{:#?}", report.problems);
    assert!(set.len() >= 120, "only {} rules", set.len());
    for rule in set.all() {
        assert!(
            !rule.examples.is_empty() && !rule.negative_examples.is_empty(),
            "{}",
            rule.id
        );
    }
}

#[test]
fn placeholders_are_identical_across_engines_with_one_key_and_differ_across_keys() {
    let set = RuleSet::embedded().unwrap();
    let a = engine_for(&set, DEFAULT_MAX_HOLD_BYTES);
    let b = engine_for(&set, DEFAULT_MAX_HOLD_BYTES);
    let other = streammask::Engine::compile(
        &set,
        PlaceholderKey::new(b"another-key-0123456789").unwrap(),
        DEFAULT_MAX_HOLD_BYTES,
    )
    .unwrap();
    let mut compared = 0;
    for rule in set
        .enabled()
        .filter(|r| r.action == streammask::Action::Mask)
    {
        for example in &rule.examples {
            let scope = rule.applies_to[0];
            let fa = a.mask(example, scope).unwrap();
            let fb = b.mask(example, scope).unwrap();
            let fo = other.mask(example, scope).unwrap();
            assert_eq!(fa.text, fb.text, "{}", rule.id);
            assert_ne!(fa.text, fo.text, "{}", rule.id);
            for finding in &fa.findings {
                assert!(
                    is_placeholder(&finding.placeholder),
                    "{}",
                    finding.placeholder
                );
                let json = serde_json::to_string(&finding.placeholder).unwrap();
                assert_eq!(json.len(), finding.placeholder.len() + 2, "not JSON-safe");
                // Masking the masked text again finds nothing: no rule matches a placeholder.
                let again = a.mask(&fa.text, scope).unwrap();
                assert!(
                    again.findings.iter().all(|f| !f.rewritten),
                    "{} re-masks {}",
                    rule.id,
                    fa.text
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 100);
}

fn streammask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streammask"));
    cmd.env("STREAMMASK_PLACEHOLDER_KEY", "cli-test-key-0123456789");
    cmd
}

fn scan(args: &[&str], input: &str) -> (String, String, bool) {
    let mut child = streammask()
        .arg("scan")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

#[test]
fn scan_masks_stdin_and_reports_without_the_secret() {
    let secret = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let input = format!("export GITHUB_TOKEN={secret}\nsome text\n");
    let (stdout, stderr, ok) = scan(&[], &input);
    assert!(ok);
    assert!(!stdout.contains(secret), "{stdout}");
    assert!(stdout.contains("[MASKED:"), "{stdout}");
    assert!(!stderr.contains(secret));
    assert!(stderr.contains("finding rule="), "{stderr}");
    for chunk in ["1", "5", "64"] {
        let (streamed, _, ok) = scan(&["--stream-chunk", chunk], &input);
        assert!(ok);
        assert_eq!(streamed, stdout, "--stream-chunk {chunk}");
    }
}

#[test]
fn rules_check_and_list_work_and_fail_on_a_broken_rule() {
    let out = streammask().args(["rules", "check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = streammask().args(["rules", "list"]).output().unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert_eq!(listed.lines().count(), RuleSet::embedded().unwrap().len());
    assert!(listed.lines().all(|l| l.split('\t').count() == 4));

    let dir = std::env::temp_dir().join(format!("streammask-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        "[[rules]]\nid = \"broken-unbounded\"\ndescription = \"x\"\npattern = 'abc[0-9]+'\naction = \"mask\"\nexamples = [\"abc123\"]\nnegative_examples = [\"abc\"]\n",
    )
    .unwrap();
    let out = streammask()
        .args(["rules", "check", "--rules"])
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("broken-unbounded"), "{stdout}");
}

const DEMO_RULE: &str = "[[rules]]\nid = \"demo-key\"\ndescription = \"x\"\npattern = '(?P<secret>demo_[0-9]{8})'\naction = \"mask\"\nexamples = [\"demo_12345678\"]\n";

/// A rule directory holding `rules` in one file, and a text file for `rules bench`.
fn bench_pack(name: &str, rules: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("streammask-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pack.toml"), rules).unwrap();
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, text).unwrap();
    (dir, text_path)
}

/// The standard output of a command that must succeed.
fn succeeded(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `rules bench --rules DIR --only` measures DIR's rules alone and counts what one pass reports,
/// so two packs can be compared on the same text.
#[test]
fn rules_bench_measures_a_pack_alone_and_counts_its_candidates() {
    let (dir, text) = bench_pack(
        "bench-pack",
        DEMO_RULE,
        &"demo_12345678 and demo_87654321, not demo_1\n".repeat(3),
    );
    let bench = |only: bool| {
        let mut cmd = streammask();
        cmd.args(["rules", "bench", "--rules"]).arg(&dir);
        if only {
            cmd.arg("--only");
        }
        succeeded(cmd.arg(&text).output().unwrap())
    };
    let alone = bench(true);
    let with_pack = bench(false);
    std::fs::remove_dir_all(&dir).ok();
    assert!(alone.starts_with("pack: 1 rules compiled"), "{alone}");
    assert!(alone.trim_end().ends_with(", 6 candidates"), "{alone}");
    let pack_rules = RuleSet::embedded().unwrap().enabled().count() + 1;
    assert!(
        with_pack.starts_with(&format!("pack: {pack_rules} rules compiled")),
        "{with_pack}"
    );
}

/// `rules bench --without` measures the pack with the named rules left out (repeated or
/// comma-separated); a name no rule answers to is refused, not silently measured as the pack.
#[test]
fn rules_bench_without_leaves_the_named_rules_out_and_refuses_an_unknown_one() {
    let rules = format!(
        "{DEMO_RULE}\n[[rules]]\nid = \"other-key\"\ndescription = \"y\"\npattern = '(?P<secret>other_[0-9]{{8}})'\naction = \"mask\"\nexamples = [\"other_12345678\"]\n"
    );
    let (dir, text) = bench_pack(
        "bench-without",
        &rules,
        &"demo_12345678 other_12345678 other_87654321\n".repeat(2),
    );
    let bench = |without: &[&str]| {
        let mut cmd = streammask();
        cmd.args(["rules", "bench", "--only", "--rules"]).arg(&dir);
        for ids in without {
            cmd.args(["--without", ids]);
        }
        cmd.arg(&text).output().unwrap()
    };
    let whole = succeeded(bench(&[]));
    let without_other = succeeded(bench(&["other-key"]));
    let without_both = succeeded(bench(&["demo-key,other-key"]));
    let unknown = bench(&["demo-key", "no-such-rule"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(whole.starts_with("pack: 2 rules compiled"), "{whole}");
    assert!(whole.trim_end().ends_with(", 6 candidates"), "{whole}");
    assert!(
        without_other.starts_with("pack: 1 rules compiled"),
        "{without_other}"
    );
    assert!(
        without_other.trim_end().ends_with(", 2 candidates"),
        "{without_other}"
    );
    assert!(
        without_both.starts_with("pack: 0 rules compiled"),
        "{without_both}"
    );
    assert!(
        without_both.trim_end().ends_with(", 0 candidates"),
        "{without_both}"
    );
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no-such-rule"), "{stderr}");
}

/// `config check` compiles everything before it answers, a large dictionary included, so the
/// proxy that loads the same files later finds its databases in the cache; `scan --config`
/// masks the dictionary's terms without waiting for that compile.
#[test]
fn config_check_caches_a_large_dictionary_and_scan_masks_its_terms() {
    let dir = std::env::temp_dir().join(format!("streammask-check-dict-{}", std::process::id()));
    let cache = dir.join("hs-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let names = support::corpus::made_up_names(3_000, 77);
    std::fs::write(dir.join("customers.txt"), names.join("\n")).unwrap();
    let config = dir.join("streammask.toml");
    std::fs::write(
        &config,
        format!(
            "[[dictionaries]]\nid = \"customers\"\npath = \"{}\"\n",
            dir.join("customers.txt").display()
        ),
    )
    .unwrap();
    let check = streammask()
        .env("STREAMMASK_HS_CACHE_DIR", &cache)
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let cached = std::fs::read_dir(&cache).unwrap().count();

    let mut child = streammask()
        .env("STREAMMASK_HS_CACHE_DIR", dir.join("no-cache-yet"))
        .args(["scan", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = format!("call {} today\n", names[1234]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        cached, 2,
        "a block and a streaming database of the dictionary"
    );
    let masked = String::from_utf8(out.stdout).unwrap();
    assert!(!masked.contains(&names[1234]), "{masked}");
    assert!(masked.contains("[MASKED:dict-customers:"), "{masked}");
}

#[test]
fn scan_without_key_warns_about_random_placeholders() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streammask"))
        .env_remove("STREAMMASK_PLACEHOLDER_KEY")
        .arg("scan")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("random placeholder key"));
    assert_eq!(out.stdout, b"hello");
}

#[test]
fn fixture_rules_scope_filtering() {
    let engine = fixture_engine(8192);
    assert!(!engine
        .scan("tok_abcdefghijklmnopqrstuv", Scope::ToolInput)
        .unwrap()
        .is_empty());
}

#[test]
fn checksum_rules_report_verified_tokens_and_still_mask_broken_ones() {
    let set = RuleSet::embedded().unwrap();
    let engine = engine_for(&set, DEFAULT_MAX_HOLD_BYTES);
    let checksum_rules: Vec<_> = set.all().iter().filter(|r| r.checksum.is_some()).collect();
    let ids: Vec<&str> = checksum_rules.iter().map(|r| r.id.as_str()).collect();
    for expected in [
        "github-pat-classic",
        "github-oauth-token",
        "npm-access-token",
    ] {
        assert!(ids.contains(&expected), "{expected} carries no checksum");
    }
    for rule in checksum_rules {
        let example = &rule.examples[0];
        let masked = engine.mask(example, Scope::Request).unwrap();
        let finding = masked
            .findings
            .iter()
            .find(|f| f.rule_id == rule.id)
            .expect("example matches its rule");
        assert_eq!(finding.checksum_valid, Some(true), "{}", rule.id);

        // Break the checksum: the token is still masked (fail closed), reported unverified.
        let mut broken = example.clone().into_bytes();
        let last = finding.span.end - 1;
        broken[last] = if broken[last] == b'7' { b'8' } else { b'7' };
        let broken = String::from_utf8(broken).unwrap();
        let masked = engine.mask(&broken, Scope::Request).unwrap();
        let finding = masked
            .findings
            .iter()
            .find(|f| f.rule_id == rule.id)
            .expect("a broken checksum still matches");
        assert_eq!(finding.checksum_valid, Some(false), "{}", rule.id);
        assert!(finding.rewritten);
        assert!(!masked.text.contains(&broken[finding.span.clone()]));
    }
    // Rules without a checksum report none.
    let masked = engine
        .mask("AWS_ACCESS_KEY_ID=AKIAQ7ZRLMNB2XKTW5VD", Scope::Request)
        .unwrap();
    assert!(!masked.findings.is_empty());
    assert!(masked.findings.iter().all(|f| f.checksum_valid.is_none()));
}
