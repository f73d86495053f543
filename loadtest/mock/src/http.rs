//! Reading HTTP/1.1 requests: the head through httparse, then a body framed by
//! `content-length` or chunked encoding, with `Expect: 100-continue`, keep-alive and
//! pipelining.
//!
//! Bytes read past one request stay in the connection's buffer for the next. Anything over the
//! limits below, or with broken framing, is refused with a status (`ReadError::Bad`) and the
//! connection is closed after the answer.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEADERS: usize = 128;
const MAX_HEAD_BYTES: usize = 64 * 1024;
// Large enough for any realistic Claude Code request (long conversations with images), small
// enough that a runaway client cannot make the mock eat the host's memory.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) keep_alive: bool,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub(crate) enum ReadError {
    /// Connection-level failure or EOF mid-request: nothing sensible can be answered.
    Io,
    /// Protocol error: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

enum BodyKind {
    Empty,
    Length(usize),
    Chunked,
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    buf.reserve(16 * 1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(ReadError::Io);
    }
    Ok(())
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Reads one request from `stream`. `buf` carries bytes over between requests, which covers
/// pipelining and keep-alive. Returns `Ok(None)` on a clean EOF between requests.
pub(crate) async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let (mut req, body_kind, expect_continue) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let r = head_to_request(&parsed)?;
                    buf.drain(..head_len);
                    break r;
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ReadError::Bad(431, "too many request headers"))
                }
                Err(_) => return Err(ReadError::Bad(400, "malformed HTTP request head")),
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(ReadError::Bad(431, "request head too large"));
            }
        }
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Io)
            };
        }
    };

    let needs_body = !matches!(body_kind, BodyKind::Empty | BodyKind::Length(0));
    if expect_continue && needs_body && buf.is_empty() {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    req.body = match body_kind {
        BodyKind::Empty => Vec::new(),
        BodyKind::Length(n) => {
            while buf.len() < n {
                fill(stream, buf).await?;
            }
            if buf.len() == n {
                std::mem::take(buf)
            } else {
                let body = buf[..n].to_vec();
                buf.drain(..n);
                body
            }
        }
        BodyKind::Chunked => read_chunked(stream, buf).await?,
    };
    Ok(Some(req))
}

fn head_to_request(p: &httparse::Request<'_, '_>) -> Result<(Request, BodyKind, bool), ReadError> {
    let method = p.method.unwrap_or("GET").to_owned();
    let target = p.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((path, q)) => (path.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let http11 = p.version == Some(1);
    let mut headers = Vec::with_capacity(p.headers.len());
    let (mut close, mut keep) = (false, false);
    let (mut chunked, mut length, mut expect) = (false, None, false);
    for h in p.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("connection") {
            close |= has_token(&value, "close");
            keep |= has_token(&value, "keep-alive");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| ReadError::Bad(400, "invalid content-length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(ReadError::Bad(400, "conflicting content-length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect = value.trim().eq_ignore_ascii_case("100-continue");
        }
        headers.push((h.name.to_owned(), value));
    }
    // As RFC 9112 says, chunked wins over a content-length.
    let body_kind = match (chunked, length) {
        (true, _) => BodyKind::Chunked,
        (false, Some(n)) if n > MAX_BODY_BYTES => {
            return Err(ReadError::Bad(413, "request body too large"))
        }
        (false, Some(n)) => BodyKind::Length(n),
        (false, None) => BodyKind::Empty,
    };
    let keep_alive = if http11 { !close } else { keep && !close };
    let req = Request {
        method,
        path,
        query,
        headers,
        body: Vec::new(),
        keep_alive,
    };
    Ok((req, body_kind, expect))
}

pub(crate) fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find_crlf(buf) {
                break i;
            }
            if buf.len() > 4096 {
                return Err(ReadError::Bad(400, "chunk size line too long"));
            }
            fill(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end])
            .ok()
            .map(|l| l.split(';').next().unwrap_or("").trim())
            .ok_or(ReadError::Bad(400, "invalid chunk size"))?;
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Bad(400, "invalid chunk size"))?;
        if size == 0 {
            // Skip the trailer section, which ends with an empty line.
            let mut pos = line_end + 2;
            loop {
                match find_crlf(&buf[pos..]) {
                    Some(0) => {
                        buf.drain(..pos + 2);
                        return Ok(body);
                    }
                    Some(i) => pos += i + 2,
                    None => {
                        if buf.len() > MAX_HEAD_BYTES {
                            return Err(ReadError::Bad(400, "chunked trailer too large"));
                        }
                        fill(stream, buf).await?;
                    }
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(ReadError::Bad(413, "request body too large"));
        }
        let need = line_end + 2 + size + 2;
        while buf.len() < need {
            fill(stream, buf).await?;
        }
        if &buf[need - 2..need] != b"\r\n" {
            return Err(ReadError::Bad(400, "chunk not terminated by CRLF"));
        }
        body.extend_from_slice(&buf[line_end + 2..need - 2]);
        buf.drain(..need);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::Value;

    use crate::server::lock;
    use crate::testing::{concat, dechunk, exchange, parse_sse, post, split_head, start};

    #[tokio::test]
    async fn keep_alive_chunked_request_and_split_stream() {
        let (addr, state) = start().await;
        let body = r#"{"model":"claude-sonnet-4-5","stream":true,"messages":[{"role":"user","content":"ping pong"}]}"#;
        let (a, b) = body.split_at(17);
        let mut raw = format!(
            "POST /v1/messages?beta=true HTTP/1.1\r\nHost: mock\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .into_bytes();
        raw.extend(post(
            "/v1/messages",
            &body.replace("true", "false"),
            "Connection: close\r\n",
        ));
        let resp = exchange(addr, &raw).await;
        let second = resp
            .windows(12)
            .rposition(|w| w == b"HTTP/1.1 200")
            .unwrap();
        let (head, rest) = split_head(&resp[..second]);
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let events = parse_sse(&dechunk(rest));
        assert_eq!(concat(&events, 0, "text_delta", "text"), "ping pong");
        let (head2, json) = split_head(&resp[second..]);
        assert!(head2.contains("connection: close"));
        let msg: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(msg["content"][0]["text"], "ping pong");
        assert_eq!(msg["stop_reason"], "end_turn");

        assert_eq!(state.connections.load(Ordering::Relaxed), 1);
        assert_eq!(state.requests.load(Ordering::Relaxed), 2);
        let rec = lock(&state.received);
        assert_eq!(rec[0].query.as_deref(), Some("beta=true"));
        assert_eq!(rec[0].body, body);
    }
}
