//! Helpers shared by the unit tests: scripts from JSON, SSE parsing, and a mock serving on a
//! real socket.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cloud::{Cloud, CloudConfig};
use crate::http::find_crlf;
use crate::script::Script;
use crate::server::{serve, State};

pub(crate) fn script(v: Value) -> Script {
    serde_json::from_value(v).expect("valid script")
}

/// Splits an SSE body into (event name, parsed data) pairs, and checks the framing on the
/// way.
pub(crate) fn parse_sse(body: &[u8]) -> Vec<(String, Value)> {
    let text = std::str::from_utf8(body).expect("SSE is UTF-8");
    let text = text.replace("\r\n", "\n");
    assert!(text.ends_with("\n\n"), "stream ends with a blank line");
    text.trim_end_matches('\n')
        .split("\n\n")
        .map(|ev| {
            let mut lines = ev.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            assert!(lines.next().is_none(), "exactly two lines per event");
            let v: Value = serde_json::from_str(data).expect("data is one JSON document");
            assert_eq!(v["type"], name, "event name matches data.type");
            (name.to_owned(), v)
        })
        .collect()
}

/// Concatenation of the given delta field over all deltas of block `index`.
pub(crate) fn concat(events: &[(String, Value)], index: u64, kind: &str, field: &str) -> String {
    events
        .iter()
        .filter(|(n, v)| n == "content_block_delta" && v["index"] == index)
        .filter(|(_, v)| v["delta"]["type"] == kind)
        .map(|(_, v)| v["delta"][field].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) async fn start() -> (SocketAddr, Arc<State>) {
    start_with(CloudConfig::default()).await
}

/// A mock whose cloud endpoints have this configuration.
pub(crate) async fn start_with(config: CloudConfig) -> (SocketAddr, Arc<State>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State::new(addr, 42, true, true).with_cloud(Cloud::new(config)));
    tokio::spawn(serve(listener, state.clone()));
    (addr, state)
}

pub(crate) async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

pub(crate) fn split_head(resp: &[u8]) -> (String, &[u8]) {
    let i = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&resp[..i]).into_owned(),
        &resp[i + 4..],
    )
}

pub(crate) fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let i = find_crlf(b).unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        assert_eq!(&b[i + 2 + n..i + 4 + n], b"\r\n");
        b = &b[i + 4 + n..];
    }
}

pub(crate) fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}
