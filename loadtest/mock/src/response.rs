//! A response and how it goes on the wire: status line and headers, content-length or chunked
//! body, split writes and delays, and the scripted faults (disconnects, RST).
//!
//! The whole response is staged and written in one go unless a delay forces a flush, so split
//! points come only from the RNG. `disconnect_after_events` and `disconnect_after_bytes` are
//! exact (see the crate's guarantees).

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::messages::ErrorEnvelope;
use crate::rng::{random_id, Rng};
use crate::script::Script;
use crate::sse::{gzip_pieces, Events};

const DEFAULT_MAX_WRITE: usize = 64;
pub(crate) const SSE_CONTENT_TYPE: &str = "text/event-stream; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

#[derive(Default, Debug, Clone)]
pub(crate) struct Transport {
    chunked: bool,
    gzip: bool,
    /// `Some(max_write)` when the response is written in random 1..=max_write pieces.
    split: Option<usize>,
    delay: Duration,
    first_byte_delay: Duration,
    head_delay: Duration,
    disconnect_after_events: Option<usize>,
    disconnect_after_bytes: Option<usize>,
    rst: bool,
    informational: Vec<u16>,
}

impl Transport {
    pub(crate) fn from_script(s: &Script, sse: bool, default_split: bool) -> Self {
        let split = s.split_writes.unwrap_or(sse && default_split);
        Transport {
            // The real API streams with chunked encoding and sends JSON with a length.
            chunked: s.chunked.unwrap_or(sse),
            gzip: s.gzip.unwrap_or(false),
            split: split.then(|| s.max_write.unwrap_or(DEFAULT_MAX_WRITE).max(1)),
            delay: Duration::from_millis(s.delay_ms.unwrap_or(0)),
            first_byte_delay: Duration::from_millis(s.first_byte_delay_ms.unwrap_or(0)),
            head_delay: Duration::from_millis(s.head_delay_ms.unwrap_or(0)),
            disconnect_after_events: s.disconnect_after_events,
            disconnect_after_bytes: s.disconnect_after_bytes,
            rst: s.rst.unwrap_or(false),
            informational: s.informational.clone().unwrap_or_default(),
        }
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    /// Extra headers (scripted).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) sse: bool,
    pub(crate) body: Events,
    pub(crate) transport: Transport,
}

impl Response {
    pub(crate) fn with_body(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type: content_type.to_owned(),
            headers: Vec::new(),
            sse: false,
            body: Events::single(body),
            transport: Transport::default(),
        }
    }

    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Self {
        let body = serde_json::to_vec(value).expect("serializing plain structs cannot fail");
        Self::with_body(status, JSON_CONTENT_TYPE, body)
    }

    pub(crate) fn error(status: u16, kind: &str, message: &str) -> Self {
        Self::json(status, &ErrorEnvelope::new(kind, message))
    }

    pub(crate) fn sse(events: Events) -> Self {
        Response {
            status: 200,
            content_type: SSE_CONTENT_TYPE.to_owned(),
            headers: Vec::new(),
            sse: true,
            body: events,
            transport: Transport::default(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// Writes one response. Returns `Ok(true)` if the connection can carry another request.
pub(crate) async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
    rng: &mut Rng,
) -> io::Result<bool> {
    let t = resp.transport.clone();
    if !t.first_byte_delay.is_zero() {
        tokio::time::sleep(t.first_byte_delay).await;
    }
    let body = if t.gzip {
        gzip_pieces(&resp.body)?
    } else {
        resp.body
    };
    let n = body.len();

    let mut head = String::with_capacity(256);
    for status in &t.informational {
        let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(*status));
        head.push_str(if *status == 103 {
            "link: </style.css>; rel=preload; as=style\r\n\r\n"
        } else {
            "x-informational: 1\r\n\r\n"
        });
    }
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if !resp.content_type.is_empty() {
        let _ = write!(head, "content-type: {}\r\n", resp.content_type);
    }
    let _ = write!(head, "request-id: {}\r\n", random_id("req_011C", 20, rng));
    for (name, value) in &resp.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if resp.sse {
        head.push_str("cache-control: no-cache\r\n");
    }
    if t.gzip {
        head.push_str("content-encoding: gzip\r\n");
    }
    if t.chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    } else {
        let _ = write!(head, "content-length: {}\r\n", body.buf.len());
    }
    if !keep_alive {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");

    // Everything is staged in `out` and sent by `send`. Without delays the whole response
    // therefore goes out as one write, or as one run of random splits that cross event and
    // chunk boundaries.
    let mut out = Vec::with_capacity(head.len() + body.buf.len() + n * 8 + 8);
    out.extend_from_slice(head.as_bytes());
    if !t.head_delay.is_zero() {
        send(stream, &mut out, t.split, rng).await?;
        tokio::time::sleep(t.head_delay).await;
    }
    let mut sent = 0usize;
    for i in 0..n {
        if t.disconnect_after_events == Some(i) {
            return abort(stream, &mut out, &t, rng).await;
        }
        let piece = body.piece(i);
        if piece.is_empty() {
            // A zero-length chunk would terminate the chunked body early.
            continue;
        }
        let (take, cut) = match t.disconnect_after_bytes {
            Some(limit) if sent + piece.len() >= limit => (limit - sent, true),
            _ => (piece.len(), false),
        };
        if take > 0 {
            if t.chunked {
                // The chunk header announces the full piece even when it is cut, so the client
                // sees a real mid-chunk truncation and not a well-formed shorter chunk.
                let _ = write!(ByteWriter(&mut out), "{:x}\r\n", piece.len());
            }
            out.extend_from_slice(&piece[..take]);
        }
        sent += take;
        if cut {
            return abort(stream, &mut out, &t, rng).await;
        }
        if t.chunked {
            out.extend_from_slice(b"\r\n");
        }
        if !t.delay.is_zero() && i + 1 < n {
            // Flush before sleeping so each event is complete on the wire before the pause. A
            // test that checks the proxy forwards events promptly depends on this.
            send(stream, &mut out, t.split, rng).await?;
            tokio::time::sleep(t.delay).await;
        }
    }
    if t.disconnect_after_events.is_some_and(|k| k >= n) {
        // Every event is delivered but the body is never terminated: a stream that dies just
        // before its end.
        return abort(stream, &mut out, &t, rng).await;
    }
    if t.chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    send(stream, &mut out, t.split, rng).await?;
    Ok(keep_alive && t.disconnect_after_bytes.is_none())
}

/// Adapts `Vec<u8>` to `fmt::Write` so that hex chunk sizes are formatted without a temporary
/// String.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

async fn abort(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    t: &Transport,
    rng: &mut Rng,
) -> io::Result<bool> {
    send(stream, out, t.split, rng).await?;
    if t.rst {
        // SO_LINGER=0 makes close() send RST instead of FIN. The deprecation warns that a
        // non-zero linger blocks the thread on drop; a zero linger never blocks.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
    }
    // The caller drops the stream, which closes it; nothing after this point is written.
    Ok(false)
}

async fn send(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    split: Option<usize>,
    rng: &mut Rng,
) -> io::Result<()> {
    match split {
        None => stream.write_all(out).await?,
        Some(max) => {
            let mut rest = &out[..];
            while !rest.is_empty() {
                let k = rng.between(1, max).min(rest.len());
                stream.write_all(&rest[..k]).await?;
                rest = &rest[k..];
                // Yield so the reader can drain this piece before the next one lands. Without
                // that, the reader tends to see the pieces coalesced and the splits are lost.
                tokio::task::yield_now().await;
            }
        }
    }
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::testing::{exchange, post, split_head, start};

    #[tokio::test]
    async fn disconnect_after_bytes_is_exact() {
        let (addr, _) = start().await;
        let req = post(
            "/v1/messages",
            r#"{"messages":[{"role":"user","content":"a fairly long echo to cut"}]}"#,
            "x-mock-script: {\"disconnect_after_bytes\": 10}\r\n",
        );
        let resp = exchange(addr, &req).await;
        let (head, body) = split_head(&resp);
        assert!(head.contains("content-length: "));
        assert_eq!(body.len(), 10);
    }
}
