//! The AWS event-stream framing of Bedrock's `invoke-with-response-stream`, built from the SSE
//! events `sse` produces for the same request.
//!
//! Guarantees:
//!
//! * **One frame per SSE event.** Every event of the SSE stream becomes one `chunk` frame
//!   (`:event-type` `chunk`, `:content-type` `application/json`, `:message-type` `event`)
//!   whose payload is `{"bytes":"<standard base64 of the event's data JSON>","p":"<padding>"}`,
//!   the way Bedrock wraps Anthropic events. The padding is 1..=52 letters drawn from the
//!   request's RNG (after the SSE cuts). Decoding the `bytes` of the frames in order gives
//!   exactly the `data:` documents of the SSE stream, so every delta cut is kept.
//! * **Errors.** A scripted SSE `error` event becomes an exception frame
//!   (`:message-type` `exception`, `:exception-type` `modelStreamErrorException`,
//!   `:content-type` `application/json`, payload `{"message":"…"}`) and is the last frame.
//! * **Exact framing.** Prelude = total length (u32 BE), headers length (u32 BE), CRC32 of
//!   those 8 bytes; headers (name length u8, name, type 7 = string, value length u16 BE,
//!   value); payload; CRC32 of everything before it. `corrupt_frame_after: N` sends N good
//!   frames, then one whose message CRC is wrong (a copy of the last frame when the stream has
//!   N or fewer), and nothing after it.
//! * Each frame is one piece of the body (`Events`), so `disconnect_after_events` counts
//!   frames, and the writes split the frames at random byte offsets like any other stream.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::rng::Rng;
use crate::sse::Events;

pub(crate) const EVENTSTREAM_CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";
/// Header value type 7: a UTF-8 string with a u16 length.
const TYPE_STRING: u8 = 7;
const PADDING: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Appends one frame to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, headers: &[(&str, &str)], payload: &[u8]) {
    let headers_len: usize = headers
        .iter()
        .map(|(n, v)| 1 + n.len() + 1 + 2 + v.len())
        .sum();
    let total = 12 + headers_len + payload.len() + 4;
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[start..start + 8]);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    for (name, value) in headers {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(TYPE_STRING);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&message_crc.to_be_bytes());
}

/// (event name, data JSON) of one SSE piece as `sse` writes it (`\n` or `\r\n` line ends).
fn sse_parts(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = |b: &[u8]| -> Option<(usize, usize)> {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let end = if nl > 0 && b[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        Some((end, nl + 1))
    };
    let (end1, next) = line(piece)?;
    let name = piece[..end1].strip_prefix(b"event: ")?;
    let rest = &piece[next..];
    let (end2, _) = line(rest)?;
    let data = rest[..end2].strip_prefix(b"data: ")?;
    Some((name, data))
}

/// Frames of a whole stream, one per SSE event (see the module doc).
pub(crate) fn from_sse(sse: &Events, corrupt_after: Option<usize>, rng: &mut Rng) -> Events {
    #[derive(Serialize)]
    struct Chunk<'a> {
        bytes: &'a str,
        p: &'a str,
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut frames = Events::with_capacity(sse.buf.len() * 2 + 256, sse.len() + 1);
    let mut payload = Vec::with_capacity(512);
    for i in 0..sse.len() {
        let Some((name, data)) = sse_parts(sse.piece(i)) else {
            continue;
        };
        payload.clear();
        if name == b"error" {
            let v: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
            let message = v["error"]["message"].as_str().unwrap_or("mock error");
            serde_json::to_writer(&mut payload, &serde_json::json!({ "message": message }))
                .expect("serializing into a Vec cannot fail");
            frames.push_with(|out| {
                encode_frame(
                    out,
                    &[
                        (":exception-type", "modelStreamErrorException"),
                        (":content-type", "application/json"),
                        (":message-type", "exception"),
                    ],
                    &payload,
                )
            });
            break;
        }
        let pad_len = rng.between(1, PADDING.len());
        let p = std::str::from_utf8(&PADDING[..pad_len]).expect("ASCII");
        let bytes = b64.encode(data);
        serde_json::to_writer(&mut payload, &Chunk { bytes: &bytes, p })
            .expect("serializing into a Vec cannot fail");
        frames.push_with(|out| {
            encode_frame(
                out,
                &[
                    (":event-type", "chunk"),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                &payload,
            )
        });
    }
    match corrupt_after {
        Some(n) if frames.len() > 0 => corrupt(frames, n),
        _ => frames,
    }
}

/// The first `n` frames, then a copy of frame `n` (or of the last one) with its message CRC
/// flipped.
fn corrupt(frames: Events, n: usize) -> Events {
    let bad = n.min(frames.len() - 1);
    let mut out = Events::with_capacity(frames.buf.len(), n.min(frames.len()) + 1);
    for i in 0..n.min(frames.len()) {
        out.push_with(|o| o.extend_from_slice(frames.piece(i)));
    }
    out.push_with(|o| {
        o.extend_from_slice(frames.piece(bad));
        let last = o.len() - 1;
        o[last] ^= 0xFF;
    });
    out
}

#[cfg(test)]
pub(crate) mod decode {
    //! A strict decoder for the tests: every length and CRC is checked.

    #[derive(Debug)]
    pub(crate) struct Frame {
        pub(crate) headers: Vec<(String, String)>,
        pub(crate) payload: Vec<u8>,
    }

    impl Frame {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn be32(b: &[u8]) -> usize {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    /// Decodes frames until the buffer ends; `Err` names the first problem.
    pub(crate) fn frames(mut b: &[u8]) -> Result<Vec<Frame>, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            if b.len() < 16 {
                return Err(format!("truncated prelude ({} bytes)", b.len()));
            }
            let (total, hlen) = (be32(&b[0..4]), be32(&b[4..8]));
            if crc32fast::hash(&b[..8]) as usize != be32(&b[8..12]) {
                return Err("prelude CRC mismatch".into());
            }
            if total < 16 + hlen || b.len() < total {
                return Err(format!("bad lengths: total {total}, headers {hlen}"));
            }
            if crc32fast::hash(&b[..total - 4]) as usize != be32(&b[total - 4..total]) {
                return Err(format!("message CRC mismatch in frame {}", out.len()));
            }
            let mut h = &b[12..12 + hlen];
            let mut headers = Vec::new();
            while !h.is_empty() {
                let nlen = h[0] as usize;
                let name = String::from_utf8(h[1..1 + nlen].to_vec()).map_err(|e| e.to_string())?;
                if h[1 + nlen] != super::TYPE_STRING {
                    return Err(format!("header {name} is not a string"));
                }
                let vlen = u16::from_be_bytes([h[2 + nlen], h[3 + nlen]]) as usize;
                let value = String::from_utf8(h[4 + nlen..4 + nlen + vlen].to_vec())
                    .map_err(|e| e.to_string())?;
                headers.push((name, value));
                h = &h[4 + nlen + vlen..];
            }
            out.push(Frame {
                headers,
                payload: b[12 + hlen..total - 4].to_vec(),
            });
            b = &b[total..];
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::Value;

    use super::decode::frames;
    use super::*;
    use crate::messages::build_reply;
    use crate::sse::sse_events;
    use crate::testing::{parse_sse, script};

    #[test]
    fn frame_lengths_and_crcs() {
        let mut out = Vec::new();
        encode_frame(&mut out, &[(":a", "bc")], b"{}");
        // 12 prelude + (1+2+1+2+2) headers + 2 payload + 4 CRC.
        assert_eq!(out.len(), 26);
        assert_eq!(&out[0..8], &[0, 0, 0, 26, 0, 0, 0, 8]);
        assert_eq!(&out[8..12], &crc32fast::hash(&out[0..8]).to_be_bytes());
        assert_eq!(&out[22..], &crc32fast::hash(&out[..22]).to_be_bytes());
        // A known CRC32 value, so the checksum is the IEEE one and not merely self-consistent.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        let f = frames(&out).unwrap();
        assert_eq!(f[0].header(":a"), Some("bc"));
        assert_eq!(f[0].payload, b"{}");
    }

    fn stream(s: &crate::script::Script, seed: u64) -> (Vec<(String, Value)>, Events) {
        let req = serde_json::json!({"messages":[{"role":"user","content":"héllo 🎉 wörld AKIAEXAMPLE"}]});
        let mut rng = Rng::new(seed);
        let reply = build_reply(s, &req, 100, &mut rng);
        let sse = sse_events(&reply, "m", "msg_1", s, &mut rng);
        let parsed = parse_sse(&sse.buf);
        (parsed, from_sse(&sse, s.corrupt_frame_after, &mut rng))
    }

    #[test]
    fn frames_carry_every_sse_event_in_order() {
        let s = script(
            serde_json::json!({"kind": "thinking_text", "text": "a b c d e", "max_delta": 3}),
        );
        for seed in 0..20 {
            let (sse, ev) = stream(&s, seed);
            assert_eq!(ev.len(), sse.len());
            let decoded = frames(&ev.buf).unwrap();
            assert_eq!(decoded.len(), sse.len());
            for (f, (_, data)) in decoded.iter().zip(&sse) {
                assert_eq!(f.header(":event-type"), Some("chunk"));
                assert_eq!(f.header(":content-type"), Some("application/json"));
                assert_eq!(f.header(":message-type"), Some("event"));
                let p: Value = serde_json::from_slice(&f.payload).unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(p["bytes"].as_str().unwrap())
                    .unwrap();
                assert_eq!(&serde_json::from_slice::<Value>(&bytes).unwrap(), data);
                let pad = p["p"].as_str().unwrap();
                assert!(!pad.is_empty() && pad.bytes().all(|c| c.is_ascii_alphabetic()));
            }
        }
    }

    #[test]
    fn sse_error_becomes_an_exception_frame() {
        let s = script(
            serde_json::json!({"kind": "text", "text": "abc", "sse_error_after_events": 3, "message": "busy"}),
        );
        let (_, ev) = stream(&s, 1);
        let f = frames(&ev.buf).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!(f[3].header(":message-type"), Some("exception"));
        assert_eq!(
            f[3].header(":exception-type"),
            Some("modelStreamErrorException")
        );
        let v: Value = serde_json::from_slice(&f[3].payload).unwrap();
        assert_eq!(v, serde_json::json!({"message": "busy"}));
    }

    #[test]
    fn corrupt_frame_after_n() {
        let s =
            script(serde_json::json!({"kind": "text", "text": "abcdef", "corrupt_frame_after": 2}));
        let (_, ev) = stream(&s, 1);
        assert_eq!(ev.len(), 3);
        let err = frames(&ev.buf).unwrap_err();
        assert_eq!(err, "message CRC mismatch in frame 2");
        assert_eq!(
            frames(&ev.buf[..ev.piece(0).len() + ev.piece(1).len()])
                .unwrap()
                .len(),
            2
        );
        let s =
            script(serde_json::json!({"kind": "text", "text": "ab", "corrupt_frame_after": 1000}));
        let (sse, ev) = stream(&s, 1);
        assert_eq!(ev.len(), sse.len() + 1);
    }
}
