//! The build links the vendored `pingora-core` and `pingora-proxy` (vendor/README.md), not the
//! registry copies: their patches are what keeps an open stream's memory at its measured size,
//! and an upgrade that drops a `[patch.crates-io]` entry or a change would otherwise go
//! unnoticed until the next load test. The patched upstream body reader (a small read while a
//! stream waits, the whole buffer once a read fills it) must parse a chunked body the same
//! whatever sizes the upstream's writes have.

use pingora::protocols::http::v1::client::HttpSession;
use std::path::Path;
use tokio::io::AsyncWriteExt;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_lock_file_takes_the_pingora_crates_from_vendor() {
    let lock = read("Cargo.lock");
    for krate in ["pingora-core", "pingora-proxy"] {
        let entry = lock
            .split("[[package]]")
            .find(|p| p.contains(&format!("name = \"{krate}\"")))
            .unwrap_or_else(|| panic!("{krate} in Cargo.lock"));
        assert!(
            !entry.contains("source = "),
            "{krate} comes from a registry, not vendor/: {entry}"
        );
        let version = read(&format!("vendor/{krate}/Cargo.toml"));
        let wanted = entry
            .lines()
            .find_map(|l| l.strip_prefix("version = "))
            .expect("a version line");
        assert!(
            version.contains(&format!("\nversion = {wanted}")),
            "Cargo.lock names {krate} {wanted}, vendor/ holds another"
        );
    }
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

#[test]
fn the_memory_patches_are_in_vendor() {
    let body = read("vendor/pingora-core/src/protocols/http/v1/body.rs");
    assert!(body.contains("const IDLE_READ_SIZE: usize = 1024;"));
    assert!(body.contains("pub fn release_buf_when_done(&mut self)"));
    let server = read("vendor/pingora-core/src/protocols/http/v1/server.rs");
    assert!(server.contains("self.body_reader.release_buf_when_done();"));
    let proxy = read("vendor/pingora-proxy/src/lib.rs");
    assert!(proxy.contains("Box::pin(self.proxy_to_upstream(&mut session, &mut ctx)).await"));
}

/// A chunked response: small SSE-sized chunks, one larger than a whole body buffer, then small
/// ones again, and chunk heads with extensions (the partial-chunk-head path).
fn chunked_body() -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    let mut payload = Vec::new();
    let mut chunk = |data: &[u8], extension: &str| {
        wire.extend_from_slice(format!("{:x}{extension}\r\n", data.len()).as_bytes());
        wire.extend_from_slice(data);
        wire.extend_from_slice(b"\r\n");
        payload.extend_from_slice(data);
    };
    for i in 0..40u32 {
        let event = format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word {i} \"}}}}\n\n"
        );
        chunk(
            event.as_bytes(),
            if i % 7 == 3 { ";ext=abcdefgh" } else { "" },
        );
    }
    let bulk: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    chunk(&bulk, "");
    chunk(&bulk[..1500], ";name=\"value\"");
    for i in 0..20u32 {
        chunk(format!("data: {i}\n\n").as_bytes(), "");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    (wire, payload)
}

/// Read the response through Pingora's HTTP/1 client while the peer writes it in pieces of
/// `split` bytes (each flushed on its own), and return the body.
async fn read_split(wire: &[u8], split: usize) -> Vec<u8> {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let mut session = HttpSession::new(Box::new(client));
    let head =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let wire = wire.to_vec();
    let writer = tokio::spawn(async move {
        server.write_all(head).await.expect("head written");
        for piece in wire.chunks(split) {
            server.write_all(piece).await.expect("piece written");
            server.flush().await.expect("flushed");
            tokio::task::yield_now().await;
        }
        server
    });
    session.read_response().await.expect("response header");
    let mut body = Vec::new();
    while let Some(data) = session.read_body_ref().await.expect("body read") {
        body.extend_from_slice(data);
    }
    assert!(session.is_body_done());
    drop(writer.await.expect("writer task"));
    body
}

#[tokio::test]
async fn the_patched_upstream_body_reader_parses_chunked_bodies_at_every_split() {
    let (wire, payload) = chunked_body();
    // Around the small read (1 KiB), the whole buffer (16 KiB) and chunk heads cut anywhere.
    let splits = [
        1, 2, 3, 5, 7, 13, 64, 127, 1023, 1024, 1025, 2047, 4093, 16_383, 16_384, 16_385, 70_000,
    ];
    for split in splits {
        let body = read_split(&wire, split).await;
        assert!(
            body == payload,
            "body differs when the upstream writes {split}-byte pieces"
        );
    }
}
