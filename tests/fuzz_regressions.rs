//! Every fuzz target's seeds and every input that once made it fail, replayed through the same
//! oracles libFuzzer runs (`fuzz/src/lib.rs`), on the stable toolchain: a crash found by
//! fuzzing becomes a file under `fuzz/regressions/<target>/` and stays fixed.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod streammask_fuzz;

use std::cell::Cell;
use std::path::Path;
use std::sync::Once;

thread_local! {
    /// Panics raised on this thread, caught or not.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Count every panic, as libFuzzer does: its hook aborts on a panic even when the code under
/// test catches it, so a caught panic is a failure here too.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|count| count.set(count.get() + 1));
            previous(info);
        }));
    });
}

fn replay(target: &str, run: fn(&[u8])) {
    count_panics();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read a corpus file");
            let before = PANICS.with(Cell::get);
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its oracle",
                file.display()
            );
            assert_eq!(
                PANICS.with(Cell::get),
                before,
                "{target}: {} raised a panic (even if it was caught)",
                file.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed > 0, "{target}: no seeds found");
}

#[test]
fn sse_stream() {
    replay("sse_stream", streammask_fuzz::sse_stream::run);
}

#[test]
fn event_stream() {
    replay("event_stream", streammask_fuzz::event_stream::run);
}

#[test]
fn json_walk() {
    replay("json_walk", streammask_fuzz::json_walk::run);
}

#[test]
fn decode_body() {
    replay("decode_body", streammask_fuzz::decode_body::run);
}

#[test]
fn jsonl() {
    replay("jsonl", streammask_fuzz::jsonl::run);
}

#[test]
fn config_toml() {
    replay("config_toml", streammask_fuzz::config_toml::run);
}

#[test]
fn rules_toml() {
    replay("rules_toml", streammask_fuzz::rules_toml::run);
}

#[test]
fn jwt() {
    replay("jwt", streammask_fuzz::jwt::run);
}
