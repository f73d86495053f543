//! Incremental Server-Sent Events framing: bytes cut anywhere in, whole events out.
//!
//! Invariants:
//! - an event's `raw` bytes are exactly the bytes it occupied on the wire (including its
//!   terminating blank line and original line endings), so an unchanged event is forwarded
//!   byte-for-byte;
//! - `\n`, `\r\n` and `\r` line endings are all accepted, also mixed, also with the `\r` and
//!   `\n` of one `\r\n` in different chunks;
//! - memory is bounded: an event larger than `max_event_bytes` is an error, never buffered on.

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("upstream SSE event exceeds {0} bytes")]
    EventTooLarge(usize),
    #[error("upstream SSE event is not UTF-8")]
    NotUtf8,
}

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub name: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug)]
pub struct SseFramer {
    buf: BytesMut,
    /// How far `buf` has been searched for an event end, so each byte is examined once.
    searched: usize,
    max_event_bytes: usize,
}

impl SseFramer {
    pub fn new(max_event_bytes: usize) -> SseFramer {
        SseFramer {
            buf: BytesMut::new(),
            searched: 0,
            max_event_bytes,
        }
    }

    /// Bytes received that do not yet form a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Append `chunk` and return every event it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.find_event_end() {
            if end > self.max_event_bytes {
                return Err(SseError::EventTooLarge(self.max_event_bytes));
            }
            let raw = self.buf.split_to(end).freeze();
            self.searched = 0;
            if let Some(event) = parse_event(raw)? {
                events.push(event);
            }
        }
        if self.buf.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes));
        }
        Ok(events)
    }

    /// The bytes left when the stream ends: a final event without its blank line still counts
    /// (the spec says to drop it; we scan and forward it rather than lose or smuggle it).
    pub fn finish(&mut self) -> Result<Option<Event>, SseError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let raw = self.buf.split().freeze();
        parse_event(raw)
    }

    /// Offset just past the blank line ending the first complete event. `searched` is always
    /// the start of a line, so each byte is examined about once however the input is cut.
    fn find_event_end(&mut self) -> Option<usize> {
        let bytes = &self.buf[..];
        let mut line_start = self.searched;
        loop {
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &bytes[line_start..]) else {
                self.searched = line_start;
                return None;
            };
            let line_break = line_start + offset;
            let break_len = match (bytes[line_break], bytes.get(line_break + 1)) {
                (b'\n', _) => 1,
                (_, Some(b'\n')) => 2,
                (_, Some(_)) => 1,
                // A `\r` at the very end may be the first half of `\r\n`: wait for more.
                (_, None) => {
                    self.searched = line_start;
                    return None;
                }
            };
            let next_line = line_break + break_len;
            if offset == 0 {
                return Some(next_line);
            }
            line_start = next_line;
        }
    }
}

fn parse_event(raw: Bytes) -> Result<Option<Event>, SseError> {
    let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
    let mut name = None;
    let mut data: Option<String> = None;
    // Lines split on bytes with memchr: an event is one to three short lines, and the
    // char-pattern `str::split` was a visible share of the proxy's CPU per SSE event.
    let lines = memchr::memchr2_iter(b'\n', b'\r', text.as_bytes())
        .chain(std::iter::once(text.len()))
        .scan(0, |start, end| {
            let line = &text[*start..end];
            *start = end + 1;
            Some(line)
        });
    for line in lines {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value.to_string()),
            "data" => match &mut data {
                Some(existing) => {
                    existing.push('\n');
                    existing.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    if name.is_none() && data.is_none() {
        // Comment-only or blank: nothing a client acts on, but keep it so bytes are not lost.
        return Ok(Some(Event {
            raw,
            name: None,
            data: String::new(),
        }));
    }
    Ok(Some(Event {
        raw,
        name,
        data: data.unwrap_or_default(),
    }))
}

/// Encode an event the way the Claude API does.
pub fn encode_event(name: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "event: ping\ndata: {\"type\": \"ping\"}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn frame_all(input: &[u8], chunk: usize) -> Vec<Event> {
        let mut framer = SseFramer::new(1 << 20);
        let mut events = Vec::new();
        for piece in input.chunks(chunk) {
            events.extend(framer.push(piece).expect("well-formed test input"));
        }
        events.extend(framer.finish().expect("well-formed test input"));
        events
    }

    #[test]
    fn events_survive_every_chunking_with_raw_bytes_intact() {
        for input in [
            TWO.to_string(),
            TWO.replace('\n', "\r\n"),
            TWO.replace('\n', "\r"),
        ] {
            for chunk in 1..input.len() {
                let events = frame_all(input.as_bytes(), chunk);
                assert_eq!(events.len(), 2, "chunk {chunk} of {input:?}");
                assert_eq!(events[0].name.as_deref(), Some("ping"));
                assert_eq!(events[1].data, "{\"type\":\"message_stop\"}");
                let joined: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
                assert_eq!(joined, input.as_bytes());
            }
        }
    }

    #[test]
    fn multi_line_data_and_comments() {
        let events = frame_all(b": comment\n\ndata: a\ndata: b\n\n", 3);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data, "a\nb");
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut framer = SseFramer::new(16);
        assert_eq!(
            framer.push(b"data: 0123456789abcdefghij").unwrap_err(),
            SseError::EventTooLarge(16)
        );
    }

    #[test]
    fn oversized_complete_event_in_one_chunk_is_an_error() {
        let mut framer = SseFramer::new(32);
        let event = format!("data: {}\n\n", "x".repeat(64));
        assert_eq!(
            framer.push(event.as_bytes()).unwrap_err(),
            SseError::EventTooLarge(32)
        );
    }

    #[test]
    fn unterminated_final_event_is_kept() {
        let events = frame_all(b"event: ping\ndata: {}", 4);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "{}");
    }

    #[test]
    fn fixture_stream_frames() {
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/messages-stream.sse"
        ));
        if let Ok(fixture) = fixture {
            let events = frame_all(&fixture, 7);
            assert!(events
                .iter()
                .any(|e| e.name.as_deref() == Some("message_stop")));
        }
    }
}
