//! The build links the vendored `pingora-core` (vendor/README.md), not the registry copy: the
//! 16 KiB HTTP/1 body buffer is what keeps an open stream's memory at its measured size, and an
//! upgrade that drops the `[patch.crates-io]` entry or the change would otherwise go unnoticed
//! until the next load test.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_lock_file_takes_pingora_core_from_vendor() {
    let lock = read("Cargo.lock");
    let entry = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"pingora-core\""))
        .expect("pingora-core in Cargo.lock");
    assert!(
        !entry.contains("source = "),
        "pingora-core comes from a registry, not vendor/: {entry}"
    );
    let version = read("vendor/pingora-core/Cargo.toml");
    let wanted = entry
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .expect("a version line");
    assert!(
        version.contains(&format!("\nversion = {wanted}")),
        "Cargo.lock names pingora-core {wanted}, vendor/ holds another"
    );
}

#[test]
fn the_vendored_body_buffer_is_16_kib() {
    let body = read("vendor/pingora-core/src/protocols/http/v1/body.rs");
    assert!(
        body.lines()
            .any(|l| l == "const BODY_BUFFER_SIZE: usize = 1024 * 16;"),
        "the body buffer patch is gone from vendor/pingora-core"
    );
}
