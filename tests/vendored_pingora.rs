//! The build links the vendored `pingora-core` and `pingora-proxy` (vendor/README.md), not the
//! registry copies: their patches are what keeps an open stream's memory at its measured size,
//! and an upgrade that drops a `[patch.crates-io]` entry or a change would otherwise go
//! unnoticed until the next load test. The patched upstream body reader (a small read while a
//! stream waits, the whole buffer once a read fills it) must parse a chunked body the same
//! whatever sizes the upstream's writes have, also when reads join every chunk already there
//! (taking a chunk whose head is only its size directly, and ending on any other as a single
//! read does; an error met after joined chunks still reaches the caller). The write patches put a message's head, its body
//! and the body's end in one write where Pingora as released makes up to three: counted here as
//! the packets of a `SOCK_SEQPACKET` socket, which keeps every write's boundary. A session (or
//! a server, for every session of its connections) told not to keep the case of header names
//! reads headers without it; by default the case is kept, as released.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::v1::server::HttpSession as ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use tokio::io::AsyncWriteExt;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_lock_files_take_the_pingora_crates_from_vendor() {
    // The fuzz workspace builds the proxy's library too, which calls the write patches.
    for lock_file in ["Cargo.lock", "fuzz/Cargo.lock"] {
        lock_takes_pingora_from_vendor(lock_file);
    }
}

fn lock_takes_pingora_from_vendor(lock_file: &str) {
    let lock = read(lock_file);
    for krate in ["pingora-core", "pingora-proxy"] {
        let entry = lock
            .split("[[package]]")
            .find(|p| p.contains(&format!("name = \"{krate}\"")))
            .unwrap_or_else(|| panic!("{krate} in Cargo.lock"));
        assert!(
            !entry.contains("source = "),
            "{lock_file}: {krate} comes from a registry, not vendor/: {entry}"
        );
        let version = read(&format!("vendor/{krate}/Cargo.toml"));
        let wanted = entry
            .lines()
            .find_map(|l| l.strip_prefix("version = "))
            .expect("a version line");
        assert!(
            version.contains(&format!("\nversion = {wanted}")),
            "{lock_file} names {krate} {wanted}, vendor/ holds another"
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
    read_split_as(wire, split, None).await.0
}

/// [`read_split`], reading with `read_body_bytes_joined(max)` when `joined` is `Some(max)`;
/// also returns how many reads it took.
async fn read_split_as(wire: &[u8], split: usize, joined: Option<usize>) -> (Vec<u8>, usize) {
    let (client, mut server) = tokio::io::duplex(128 * 1024);
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
    let mut reads = 0;
    loop {
        reads += 1;
        let data = match joined {
            Some(max) => session.read_body_bytes_joined(max).await,
            None => session.read_body_bytes().await,
        };
        match data.expect("body read") {
            Some(data) => body.extend_from_slice(&data),
            None => break,
        }
    }
    assert!(session.is_body_done());
    drop(writer.await.expect("writer task"));
    (body, reads)
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

#[tokio::test]
async fn joined_body_reads_take_every_chunk_that_is_there_and_parse_the_same() {
    let (wire, payload) = chunked_body();
    for split in [1, 3, 64, 1023, 1025, 16_385, 70_000] {
        for max in [1, 4096, 64 * 1024] {
            let (body, _) = read_split_as(&wire, split, Some(max)).await;
            assert!(body == payload, "split {split}, max {max}");
        }
    }
    // Written at once: the 62 chunks are a few joined reads (each body buffer's worth), not
    // one read per chunk.
    let (_, plain) = read_split_as(&wire, wire.len(), None).await;
    let (_, joined) = read_split_as(&wire, wire.len(), Some(64 * 1024)).await;
    assert!(plain > 60, "{plain} plain reads");
    assert!(joined <= 6, "{joined} joined reads");
}

#[tokio::test]
async fn an_error_after_joined_chunks_comes_with_the_next_read_not_as_the_end() {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let mut session = HttpSession::new(Box::new(client));
    server
        .write_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\nzz\r\nnot a chunk\r\n0\r\n\r\n",
        )
        .await
        .expect("written");
    session.read_response().await.expect("response header");
    let first = session.read_body_bytes_joined(64 * 1024).await;
    assert_eq!(
        first.expect("the chunks before the bad one").as_deref(),
        Some(&b"hello world"[..])
    );
    assert!(
        session.read_body_bytes_joined(64 * 1024).await.is_err(),
        "the malformed chunk is an error, not the body's end"
    );
}

/// The body a session reads from `wire` (one write), joined or not, up to its end or its
/// first error: the bytes, whether it ended in an error, and the body bytes the session counted.
async fn read_until_error(wire: &[u8], joined: bool) -> (Vec<u8>, bool, usize) {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let mut session = HttpSession::new(Box::new(client));
    let mut all = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    all.extend_from_slice(wire);
    server.write_all(&all).await.expect("written");
    // Closed: a read that wants more than was sent ends instead of waiting.
    drop(server);
    session.read_response().await.expect("response header");
    let mut body = Vec::new();
    let failed = loop {
        let read = if joined {
            session.read_body_bytes_joined(64 * 1024).await
        } else {
            session.read_body_bytes().await
        };
        match read {
            Ok(Some(data)) => body.extend_from_slice(&data),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    let counted = session.body_bytes_received();
    (body, failed, counted)
}

#[tokio::test]
async fn joined_reads_take_well_formed_chunks_and_fail_on_bad_ones_as_single_reads_do() {
    // Joined reads take a buffered chunk whose head is only its size without Pingora's own
    // parser: every other head, and every malformed one, must still end as Pingora's does.
    let wires: [&[u8]; 10] = [
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
        b"5\r\nhelloXY6\r\n world\r\n0\r\n\r\n",
        b"5\r\nhello\r\n6\r\n worldXY0\r\n\r\n",
        b"5\r\nhello\r\n5\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0000000000000000005\r\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\nfffffffffffffff\r\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n5;ext=1\r\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n5 \r\nworld\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n5\r\nafter\r\n",
    ];
    for wire in wires {
        let single = read_until_error(wire, false).await;
        let joined = read_until_error(wire, true).await;
        assert_eq!(joined, single, "{:?}", String::from_utf8_lossy(wire));
    }
    // And they do parse the well-formed ones.
    let (body, failed, counted) = read_until_error(wires[1], true).await;
    assert_eq!((body.len(), failed, counted), (20, false, 20));
}

/// A connected `SOCK_SEQPACKET` pair: Pingora's stream on one end, and the end that counts the
/// writes (one packet per write, read back whole).
fn packet_pair() -> (L4Stream, StdUnixStream) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let made = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(made, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (ours, theirs) = unsafe {
        (
            StdUnixStream::from_raw_fd(fds[0]),
            StdUnixStream::from_raw_fd(fds[1]),
        )
    };
    ours.set_nonblocking(true).expect("non-blocking");
    theirs.set_nonblocking(true).expect("non-blocking");
    let ours = tokio::net::UnixStream::from_std(ours).expect("a tokio stream");
    (L4Stream::from(ours), theirs)
}

/// Every packet (write) waiting at `peer`, in order.
fn packets(peer: &mut StdUnixStream) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut buf = vec![0; 256 * 1024];
    loop {
        match peer.read(&mut buf) {
            Ok(n) => found.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return found,
            Err(e) => panic!("reading the peer: {e}"),
        }
    }
}

fn text(packet: &[u8]) -> String {
    String::from_utf8_lossy(packet).into_owned()
}

/// A server session that has read a request for a streamed response.
async fn server_session() -> (ServerSession, StdUnixStream) {
    let (stream, mut peer) = packet_pair();
    std::io::Write::write_all(
        &mut peer,
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .expect("request written");
    let mut session = ServerSession::new(Box::new(stream));
    session.read_request().await.expect("request read");
    (session, peer)
}

fn chunked_response() -> Box<ResponseHeader> {
    let mut header = ResponseHeader::build(200, None).expect("header");
    header
        .insert_header("content-type", "text/event-stream")
        .expect("header");
    header
        .insert_header("transfer-encoding", "chunked")
        .expect("header");
    Box::new(header)
}

#[tokio::test]
async fn a_whole_streamed_response_is_one_write() {
    let (mut session, mut peer) = server_session().await;
    session
        .write_response_header_with_body(chunked_response(), b"data: 1\n\n", true)
        .await
        .expect("written");
    let sent = packets(&mut peer);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let wire = text(&sent[0]);
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    assert!(
        wire.ends_with("\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n"),
        "{wire}"
    );
    assert!(session.response_written().is_some());
}

#[tokio::test]
async fn the_head_goes_with_the_first_chunk_and_the_end_with_the_last() {
    let (mut session, mut peer) = server_session().await;
    session
        .write_response_header_with_body(chunked_response(), b"first", false)
        .await
        .expect("written");
    session.write_body(b"middle").await.expect("written");
    session.write_last_body(b"last").await.expect("written");
    let sent: Vec<String> = packets(&mut peer).iter().map(|p| text(p)).collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent[0].ends_with("\r\n\r\n5\r\nfirst\r\n"), "{sent:?}");
    assert_eq!(sent[1], "6\r\nmiddle\r\n");
    assert_eq!(sent[2], "4\r\nlast\r\n0\r\n\r\n");
}

#[tokio::test]
async fn chunk_size_lines_are_upper_case_hex_at_every_width() {
    // The write patches write a chunk's size line without `format!`; it must be the line
    // `format!("{:X}\r\n")` wrote, at every number of digits, on both write paths.
    let sizes = [
        1usize, 9, 10, 15, 16, 17, 255, 256, 4095, 4096, 65_535, 65_536, 70_000,
    ];
    let (mut session, mut peer) = server_session().await;
    session
        .write_response_header_with_body(chunked_response(), &vec![b'h'; 300], false)
        .await
        .expect("written");
    // Read as it goes: the socket's buffer would not hold every chunk.
    let mut wire: Vec<u8> = packets(&mut peer).concat();
    for size in sizes {
        session
            .write_body(&vec![b'x'; size])
            .await
            .expect("written");
        wire.extend(packets(&mut peer).concat());
    }
    session.write_last_body(b"").await.expect("written");
    wire.extend(packets(&mut peer).concat());
    let mut expected = format!("{:X}\r\n", 300).into_bytes();
    expected.extend(vec![b'h'; 300]);
    expected.extend_from_slice(b"\r\n");
    for size in sizes {
        expected.extend(format!("{size:X}\r\n").into_bytes());
        expected.extend(vec![b'x'; size]);
        expected.extend_from_slice(b"\r\n");
    }
    expected.extend_from_slice(b"0\r\n\r\n");
    let head_end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(
        wire[head_end..] == expected[..],
        "{:?}",
        text(&wire[head_end..])
    );
}

#[tokio::test]
async fn pingora_as_released_writes_head_chunk_and_end_apart() {
    // What the patches save, and proof that the packet count sees separate writes.
    let (mut session, mut peer) = server_session().await;
    session
        .write_response_header(chunked_response())
        .await
        .expect("written");
    session.write_body(b"only").await.expect("written");
    session.finish_body().await.expect("finished");
    assert_eq!(packets(&mut peer).len(), 3);
}

#[tokio::test]
async fn a_response_with_a_length_is_one_write_too() {
    let (mut session, mut peer) = server_session().await;
    let mut header = ResponseHeader::build(200, None).expect("header");
    header
        .insert_header("content-length", "17")
        .expect("header");
    let body = vec![b'x'; 17];
    session
        .write_response_header_with_body(Box::new(header), &body, true)
        .await
        .expect("written");
    let sent = packets(&mut peer);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(text(&sent[0]).ends_with("\r\n\r\nxxxxxxxxxxxxxxxxx"));
}

#[tokio::test]
async fn a_request_head_and_body_are_one_write() {
    let (stream, mut peer) = packet_pair();
    let mut session = HttpSession::new(Box::new(stream));
    let mut request = RequestHeader::build("POST", b"/v1/messages", None).expect("request");
    request.insert_header("host", "x").expect("header");
    request
        .insert_header("content-length", "11")
        .expect("header");
    session
        .write_request_header_with_body(Box::new(request), b"{\"a\":\"bcd\"}")
        .await
        .expect("written");
    session.finish_body().await.expect("finished");
    let sent = packets(&mut peer);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let wire = text(&sent[0]);
    assert!(wire.starts_with("POST /v1/messages HTTP/1.1\r\n"), "{wire}");
    assert!(wire.ends_with("\r\n\r\n{\"a\":\"bcd\"}"), "{wire}");
}

const MIXED_CASE_HEADER: &[u8] = b"X-Mixed-Case: a\r\nContent-Length: 0\r\n\r\n";

/// Whether a header's names keep their case, as its map and its wire form (`wire` writes it)
/// show.
fn keeps_case(has_case: bool, wire: impl FnOnce(&mut Vec<u8>), headers: &http::HeaderMap) -> bool {
    assert_eq!(
        headers.get("x-mixed-case").map(|v| v.as_bytes()),
        Some(&b"a"[..])
    );
    let mut written = Vec::new();
    wire(&mut written);
    let written = text(&written);
    assert_eq!(
        written.contains("X-Mixed-Case: a\r\n"),
        has_case,
        "{written}"
    );
    has_case
}

/// The near end of a pipe whose far end has sent `start_line` and the mixed-case header.
async fn mixed_case_message(
    start_line: &str,
) -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    let (near, mut far) = tokio::io::duplex(4096);
    let mut message = format!("{start_line}\r\n").into_bytes();
    message.extend_from_slice(MIXED_CASE_HEADER);
    far.write_all(&message).await.expect("written");
    (near, far)
}

#[tokio::test]
async fn header_names_keep_their_case_unless_a_session_is_told_not_to() {
    for keep in [None, Some(true), Some(false)] {
        let (near, _far) = mixed_case_message("HTTP/1.1 200 OK").await;
        let mut session = HttpSession::new(Box::new(near));
        if let Some(keep) = keep {
            session.set_response_header_case(keep);
        }
        session.read_response().await.expect("response read");
        let header = session.resp_header().expect("a response header");
        let wire = |w: &mut Vec<u8>| header.header_to_h1_wire(w);
        let kept = keeps_case(header.has_case(), wire, &header.headers);
        assert_eq!(kept, keep != Some(false), "response, {keep:?}");

        let (near, _far) = mixed_case_message("GET / HTTP/1.1").await;
        let mut session = ServerSession::new(Box::new(near));
        if let Some(keep) = keep {
            session.set_request_header_case(keep);
        }
        session.read_request().await.expect("request read");
        let header = session.req_header();
        let wire = |w: &mut Vec<u8>| header.header_to_h1_wire(w);
        let kept = keeps_case(header.has_case(), wire, &header.headers);
        assert_eq!(kept, keep != Some(false), "request, {keep:?}");
    }
}

/// A proxy that answers every request itself, saying whether its request header kept the
/// case of its names.
struct CaseEcho;

#[async_trait::async_trait]
impl pingora::proxy::ProxyHttp for CaseEcho {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _: &mut pingora::proxy::Session,
        _: &mut (),
    ) -> pingora::Result<Box<pingora::upstreams::peer::HttpPeer>> {
        unreachable!("every request is answered by request_filter")
    }

    async fn request_filter(
        &self,
        session: &mut pingora::proxy::Session,
        _: &mut (),
    ) -> pingora::Result<bool> {
        let kept = session.req_header().has_case();
        let mut header = ResponseHeader::build(200, None)?;
        header.insert_header("content-length", "0")?;
        header.insert_header("x-kept-case", if kept { "yes" } else { "no" })?;
        session
            .write_response_header(Box::new(header), true)
            .await?;
        Ok(true)
    }
}

/// `HttpServerOptions::drop_request_header_case` reaches every request of a connection, the
/// first and those that reuse it.
#[tokio::test]
async fn the_server_option_drops_the_case_of_every_request_on_a_connection() {
    use pingora::apps::ServerApp;
    for drop_case in [false, true] {
        let conf = std::sync::Arc::new(pingora::server::configuration::ServerConf::default());
        let mut proxy = pingora::proxy::http_proxy(&conf, CaseEcho);
        let mut options = pingora::apps::HttpServerOptions::default();
        options.drop_request_header_case = drop_case;
        proxy.server_options = Some(options);
        let proxy = std::sync::Arc::new(proxy);
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let (_shutdown, watch) = tokio::sync::watch::channel(false);
        let serving =
            tokio::spawn(async move { drop(proxy.process_new(Box::new(server), &watch).await) });
        let mut answers = String::new();
        for _ in 0..2 {
            let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
            request.extend_from_slice(MIXED_CASE_HEADER);
            client.write_all(&request).await.expect("written");
            let mut answer = vec![0; 4096];
            let n = tokio::io::AsyncReadExt::read(&mut client, &mut answer)
                .await
                .expect("answer read");
            answers.push_str(&text(&answer[..n]));
        }
        drop(client);
        serving.await.expect("served");
        let expected = if drop_case { "no" } else { "yes" };
        let said: Vec<&str> = answers
            .lines()
            .filter(|line| line.to_ascii_lowercase().starts_with("x-kept-case:"))
            .collect();
        assert_eq!(said.len(), 2, "{answers}");
        for line in said {
            assert!(line.ends_with(expected), "{line} ({answers})");
        }
    }
}
