//! Incremental Server-Sent Events framing: bytes cut anywhere in, whole events out.
//!
//! Invariants:
//! - an event's `raw` bytes are exactly the bytes it occupied on the wire (including its
//!   terminating blank line and original line endings), so an unchanged event is forwarded
//!   byte-for-byte;
//! - `\n`, `\r\n` and `\r` line endings are all accepted, also mixed, also with the `\r` and
//!   `\n` of one `\r\n` in different chunks;
//! - a UTF-8 byte-order mark at the very start of the stream is dropped, as SSE readers drop
//!   it (otherwise the first field line would be read one way here and another by a client);
//! - memory is bounded: an event larger than `max_event_bytes` is an error, never buffered on;
//! - an event's name and data are spans of its `raw` bytes (data of several `data:` lines is
//!   joined into its own string), so framing allocates nothing per event;
//! - a caller of [`SseFramer::push_claiming`] may take whole events at their start instead
//!   (the Messages transformer takes compact deltas, read in place): the framer drops those
//!   bytes unread, so the claim answers for every byte of them; the cap applies to them too;
//! - [`Event::write_to`] forwards the raw bytes only when they hold nothing but the event name
//!   and data in canonical form; otherwise (comments, `id:` lines, `\r` line endings) the event
//!   is re-encoded from its name and data, so no byte a scanner never saw reaches the client.

use bytes::{Buf, Bytes, BytesMut};
use std::convert::Infallible;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("upstream SSE event exceeds {0} bytes")]
    EventTooLarge(usize),
    #[error("upstream SSE event is not UTF-8")]
    NotUtf8,
}

/// One complete event.
/// One event: its bytes as they were on the wire, with its name and data parsed out of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    raw: Bytes,
    name: Option<Span>,
    data: Data,
    canonical: bool,
}

type Span = std::ops::Range<usize>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    None,
    /// One `data:` line: its value inside `raw`.
    Line(Span),
    /// Several `data:` lines, joined with `\n` as the SSE spec says.
    Joined(String),
}

impl Event {
    /// An event built by the proxy itself, encoded as [`encode_event`] writes it.
    pub fn new(name: &str, data: &str) -> Event {
        debug_assert!(
            !name.contains(['\n', '\r']),
            "event names are single tokens"
        );
        let raw = Bytes::from(encode_event(name, data));
        let name_span = 7..7 + name.len();
        let one_line = !data.contains(['\n', '\r']);
        let data = if one_line {
            let start = name_span.end + 7;
            Data::Line(start..start + data.len())
        } else {
            Data::Joined(data.to_string())
        };
        Event {
            raw,
            name: Some(name_span),
            data,
            canonical: one_line,
        }
    }

    /// The event's bytes as received (see [`Event::write_to`] for forwarding them).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn name(&self) -> Option<&str> {
        self.name.clone().map(|span| self.text(span))
    }

    /// The event's data; empty when it had no `data:` line.
    pub fn data(&self) -> &str {
        match &self.data {
            Data::None => "",
            Data::Line(span) => self.text(span.clone()),
            Data::Joined(joined) => joined,
        }
    }

    /// Whether the event has neither a name nor data (only comments, other fields, or an
    /// empty `data:` line): nothing a client acts on.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.data().is_empty()
    }

    /// Appends the event for a client: the raw bytes when they are exactly
    /// `event: NAME\ndata: DATA\n\n`, otherwise a re-encoding of name and data.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if self.canonical {
            out.extend_from_slice(&self.raw);
        } else {
            write_event(out, self.name(), self.data());
        }
    }

    fn text(&self, span: Span) -> &str {
        debug_assert!(std::str::from_utf8(&self.raw[span.clone()]).is_ok());
        // SAFETY: `raw` is UTF-8 in both constructors: `parse_event` checks it, and
        // `Event::new` encodes it from `&str`s and ASCII. Every span starts and ends at an
        // ASCII delimiter (`:`, space, `\r`, `\n`), at the end of `raw`, or (in `Event::new`)
        // at the ends of a copied `&str`, so each is a char-boundary slice of valid UTF-8.
        // Checking again would be a second UTF-8 pass over every event.
        unsafe { std::str::from_utf8_unchecked(&self.raw[span]) }
    }
}

/// What [`SseFramer::push_claiming`] read: an event, or what its caller's claim made of one.
#[derive(Debug)]
pub enum Framed<T> {
    Event(Event),
    Claimed(T),
}

#[derive(Debug)]
pub struct SseFramer {
    buf: BytesMut,
    /// How far `buf` has been searched for an event end, so each byte is examined once.
    searched: usize,
    max_event_bytes: usize,
    /// Whether the start of the stream was checked for a byte-order mark.
    started: bool,
    /// Whether the event at the start of `buf` was tried as a canonical one (and was not, or
    /// not yet whole).
    tried_canonical: bool,
}

impl SseFramer {
    pub fn new(max_event_bytes: usize) -> SseFramer {
        SseFramer {
            buf: BytesMut::new(),
            searched: 0,
            max_event_bytes,
            started: false,
            tried_canonical: false,
        }
    }

    /// Bytes received that do not yet form a complete event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Append `chunk` and return every event it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        self.push_into(chunk, &mut events).map(|()| events)
    }

    /// [`SseFramer::push`], appending the events to `events`: on an error, the events completed
    /// before it are there too (they are whole and were read before the bad one).
    pub fn push_into(&mut self, chunk: &[u8], events: &mut Vec<Event>) -> Result<(), SseError> {
        self.frame(
            chunk,
            |_| None::<(usize, Infallible)>,
            |framed| match framed {
                Framed::Event(event) => events.push(event),
                Framed::Claimed(never) => match never {},
            },
        )
    }

    /// [`SseFramer::push_into`], offering each event that starts in the buffer to `claim`
    /// first: it sees the buffer from that event's first byte, and returns how many bytes one
    /// whole event it took spans and what it made of it (copied out: the bytes are dropped).
    /// A claimed event is never read by the framer; anything else is, as before. A claim
    /// longer than the event cap is ignored (the framer then refuses the event).
    pub fn push_claiming<T>(
        &mut self,
        chunk: &[u8],
        claim: impl FnMut(&[u8]) -> Option<(usize, T)>,
        framed: &mut Vec<Framed<T>>,
    ) -> Result<(), SseError> {
        self.frame(chunk, claim, |event| framed.push(event))
    }

    fn frame<T>(
        &mut self,
        chunk: &[u8],
        mut claim: impl FnMut(&[u8]) -> Option<(usize, T)>,
        mut emit: impl FnMut(Framed<T>),
    ) -> Result<(), SseError> {
        self.buf.extend_from_slice(chunk);
        if !self.started {
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let seen = self.buf.len().min(BOM.len());
            if self.buf[..seen] != BOM[..seen] {
                self.started = true;
            } else if seen == BOM.len() {
                let _ = self.buf.split_to(BOM.len());
                self.started = true;
            } else {
                return Ok(());
            }
        }
        loop {
            // An event in the canonical form, whole in the buffer, is framed and read in one
            // pass; tried once per event start, so bytes that trickle in are not searched again
            // and again.
            if self.searched == 0 && !self.tried_canonical {
                if let Some((end, claimed)) = claim(&self.buf) {
                    if end <= self.max_event_bytes.min(self.buf.len()) {
                        self.buf.advance(end);
                        emit(Framed::Claimed(claimed));
                        continue;
                    }
                }
                match canonical_at_start(&self.buf) {
                    Some(Ok((end, name, data))) => {
                        if end > self.max_event_bytes {
                            return Err(SseError::EventTooLarge(self.max_event_bytes));
                        }
                        emit(Framed::Event(Event {
                            raw: self.buf.split_to(end).freeze(),
                            name: Some(name),
                            data: Data::Line(data),
                            canonical: true,
                        }));
                        continue;
                    }
                    Some(Err(error)) => return Err(error),
                    None => self.tried_canonical = !self.buf.is_empty(),
                }
            }
            let Some(end) = self.find_event_end() else {
                break;
            };
            if end > self.max_event_bytes {
                return Err(SseError::EventTooLarge(self.max_event_bytes));
            }
            let raw = self.buf.split_to(end).freeze();
            self.searched = 0;
            self.tried_canonical = false;
            if let Some(event) = parse_event(raw)? {
                emit(Framed::Event(event));
            }
        }
        if self.buf.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge(self.max_event_bytes));
        }
        Ok(())
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
    if let Some(event) = parse_canonical(&raw) {
        let (name, data) = event?;
        return Ok(Some(Event {
            raw,
            name: Some(name),
            data: Data::Line(data),
            canonical: true,
        }));
    }
    parse_general(raw)
}

/// The event's name and data spans when `raw` is exactly `event: NAME\ndata: DATA\n\n` (no
/// `\r` anywhere, one line each): the form the Claude API sends every event in, read in one
/// pass. `None` for anything else, which [`parse_general`] reads; both read such an event the
/// same way (tested).
fn parse_canonical(raw: &[u8]) -> Option<Result<(Span, Span), SseError>> {
    match canonical_at_start(raw)? {
        Ok((end, name, data)) => (end == raw.len()).then_some(Ok((name, data))),
        Err(error) => Some(Err(error)),
    }
}

/// A canonical event (see [`parse_canonical`]) whole at the start of `buf`: where it ends, its
/// name and its data. `None` when `buf` does not start with one, or not with all of it yet.
fn canonical_at_start(buf: &[u8]) -> Option<Result<(usize, Span, Span), SseError>> {
    const NAME_START: usize = b"event: ".len();
    let rest = buf.strip_prefix(b"event: ")?;
    // Nearly every event is a delta: its name is compared whole rather than searched for the
    // line's end byte by byte.
    const DELTA: &[u8] = b"content_block_delta\n";
    let name_len = match rest.starts_with(DELTA) {
        true => DELTA.len() - 1,
        false => memchr::memchr2(b'\n', b'\r', rest)?,
    };
    let name_end = NAME_START + name_len;
    if !buf[name_end..].starts_with(b"\ndata: ") {
        return None;
    }
    let data_start = name_end + b"\ndata: ".len();
    let data_end = data_start + memchr::memchr2(b'\n', b'\r', &buf[data_start..])?;
    if buf.get(data_end..data_end + 2) != Some(&b"\n\n"[..]) {
        return None;
    }
    // The rest is ASCII, so no character can straddle it: the event is UTF-8 exactly when its
    // name and its data are, and one check of the whole span says so.
    if !is_utf8(&buf[NAME_START..data_end]) {
        return Some(Err(SseError::NotUtf8));
    }
    Some(Ok((
        data_end + 2,
        NAME_START..name_end,
        data_start..data_end,
    )))
}

/// Whether `bytes` are UTF-8. The API's events are mostly ASCII, and a check for that first is
/// a fraction of a full validation's fixed cost on such short texts.
fn is_utf8(bytes: &[u8]) -> bool {
    is_ascii(bytes) || std::str::from_utf8(bytes).is_ok()
}

/// `[u8]::is_ascii` eight bytes at a time without a branch per word: an event is a hundred
/// bytes or so, where the standard check's set-up and per-byte tail dominate.
fn is_ascii(bytes: &[u8]) -> bool {
    let (words, tail) = bytes.as_chunks::<8>();
    let mut high_bits = words
        .iter()
        .fold(0u64, |any, word| any | u64::from_ne_bytes(*word));
    for &byte in tail {
        high_bits |= u64::from(byte);
    }
    high_bits & 0x8080_8080_8080_8080 == 0
}

fn parse_general(raw: Bytes) -> Result<Option<Event>, SseError> {
    let text = std::str::from_utf8(&raw).map_err(|_| SseError::NotUtf8)?;
    let mut name = None;
    let mut data = Data::None;
    let mut lines = 0;
    let mut line_start = 0;
    let line_ends =
        memchr::memchr2_iter(b'\n', b'\r', text.as_bytes()).chain(std::iter::once(text.len()));
    for line_end in line_ends {
        let line = &text[line_start..line_end];
        let start = line_start;
        line_start = line_end + 1;
        if line.is_empty() {
            continue;
        }
        lines += 1;
        if line.starts_with(':') {
            continue;
        }
        let (field, value_start) = match line.find(':') {
            Some(colon) => {
                let after = colon + 1;
                let skip = usize::from(line.as_bytes().get(after) == Some(&b' '));
                (&line[..colon], start + after + skip)
            }
            None => (line, line_end),
        };
        let value = value_start..line_end;
        match field {
            "event" => name = Some(value),
            "data" => {
                data = match data {
                    Data::None => Data::Line(value),
                    Data::Line(first) => {
                        Data::Joined(format!("{}\n{}", &text[first], &text[value]))
                    }
                    Data::Joined(mut joined) => {
                        joined.push('\n');
                        joined.push_str(&text[value]);
                        Data::Joined(joined)
                    }
                }
            }
            _ => {}
        }
    }
    let canonical = match (&name, &data) {
        (Some(name), Data::Line(data)) => {
            lines == 2
                && name.start == 7
                && text.starts_with("event: ")
                && text[name.end..].starts_with("\ndata: ")
                && data.start == name.end + 7
                && data.end + 2 == text.len()
                && text.ends_with("\n\n")
        }
        _ => false,
    };
    Ok(Some(Event {
        raw,
        name,
        data,
        canonical,
    }))
}

/// An event as the proxy writes it: `event:` line (when named), one `data:` line per line of
/// `data`, blank line.
pub fn write_event(out: &mut Vec<u8>, name: Option<&str>, data: &str) {
    out.reserve(data.len() + name.map_or(0, str::len) + 16);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

pub fn encode_event(name: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + data.len() + 16);
    write_event(&mut out, Some(name), data);
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
                assert_eq!(events[0].name(), Some("ping"));
                assert_eq!(events[1].data(), "{\"type\":\"message_stop\"}");
                let joined: Vec<u8> = events.iter().flat_map(|e| e.raw().to_vec()).collect();
                assert_eq!(joined, input.as_bytes());
            }
        }
    }

    #[test]
    fn multi_line_data_and_comments() {
        let events = frame_all(b": comment\n\ndata: a\ndata: b\n\n", 3);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data(), "a\nb");
    }

    #[test]
    fn only_canonical_events_are_forwarded_as_raw_bytes() {
        let canonical = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
        let events = frame_all(canonical.as_bytes(), 5);
        let mut out = Vec::new();
        events[0].write_to(&mut out);
        assert_eq!(out, canonical.as_bytes());
        assert_eq!(
            Event::new("ping", "{\"type\":\"ping\"}").raw(),
            canonical.as_bytes()
        );
        for data in ["{}", "a\nb", ""] {
            let built = Event::new("x", data);
            let parsed = frame_all(&encode_event("x", data), 4).remove(0);
            assert_eq!((built.name(), built.data()), (parsed.name(), parsed.data()));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            built.write_to(&mut a);
            parsed.write_to(&mut b);
            assert_eq!(a, b, "{data:?}");
        }

        // A comment, an id line, CRLF endings, several data lines: re-encoded from name and
        // data, so the comment (never scanned as part of the event) is not forwarded.
        for (input, expected) in [
            (
                "event: ping\n: sk-secret-comment\ndata: {}\n\n",
                "event: ping\ndata: {}\n\n",
            ),
            (
                "id: 7\nevent: ping\ndata: {}\n\n",
                "event: ping\ndata: {}\n\n",
            ),
            (
                "event: ping\r\ndata: {}\r\n\r\n",
                "event: ping\ndata: {}\n\n",
            ),
            ("event:ping\ndata:{}\n\n", "event: ping\ndata: {}\n\n"),
            ("data: a\ndata: b\n\n", "data: a\ndata: b\n\n"),
            ("event: x\ndata: {}\nretry: 5\n\n", "event: x\ndata: {}\n\n"),
        ] {
            let events = frame_all(input.as_bytes(), 3);
            assert_eq!(events.len(), 1, "{input:?}");
            let mut out = Vec::new();
            events[0].write_to(&mut out);
            assert_eq!(
                String::from_utf8(out).expect("encoded events are UTF-8"),
                expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn the_word_wise_ascii_check_agrees_with_the_standard_one() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(is_ascii(&clean), "{len}");
            for at in 0..len {
                for high in [0x80u8, 0xC3, 0xFF] {
                    let mut bytes = clean.clone();
                    bytes[at] = high;
                    assert_eq!(is_ascii(&bytes), bytes.is_ascii(), "{len} {at} {high}");
                }
            }
        }
    }

    #[test]
    fn the_canonical_reading_agrees_with_the_general_one() {
        let mut canonical_seen = 0;
        for input in [
            &b"event: ping\ndata: {\"type\":\"ping\"}\n\n"[..],
            b"event: x\ndata: \n\n",
            b"event: \ndata: {}\n\n",
            b"event:  spaced\ndata:  {}\n\n",
            b"event: a:b\ndata: c:d\n\n",
            b"event: caf\xc3\xa9\ndata: \"\xe2\x82\xac\"\n\n",
            // Not canonical: read by the general path only.
            b"event: x\ndata: a\ndata: b\n\n",
            b"event: x\r\ndata: a\r\n\r\n",
            b"event: x\ndata: a\rb\n\n",
            b"event: x\ndata: a\n",
            b"event: x\n\n",
            b"data: a\n\n",
            b"event: x\nid: 1\ndata: a\n\n",
            // Not UTF-8, in the name or in the data: an error both ways.
            b"event: \xff\ndata: {}\n\n",
            b"event: x\ndata: \"\xc3\"\n\n",
        ] {
            let fast = parse_event(Bytes::copy_from_slice(input));
            let general = parse_general(Bytes::copy_from_slice(input));
            assert_eq!(fast, general, "{:?}", String::from_utf8_lossy(input));
            canonical_seen += usize::from(parse_canonical(input).is_some_and(|r| r.is_ok()));
        }
        // The fast path was taken (else the comparison shows nothing).
        assert_eq!(canonical_seen, 6);
    }

    #[test]
    fn a_leading_byte_order_mark_is_dropped_however_it_is_cut() {
        let input = b"\xEF\xBB\xBFevent: ping\ndata: {}\n\n";
        for chunk in 1..input.len() {
            let events = frame_all(input, chunk);
            assert_eq!(events.len(), 1, "chunk {chunk}");
            assert_eq!(events[0].name(), Some("ping"), "chunk {chunk}");
        }
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
    fn the_events_before_an_oversized_one_are_kept() {
        let mut framer = SseFramer::new(32);
        let mut events = Vec::new();
        let input = format!("data: a\n\ndata: b\n\ndata: {}\n\n", "x".repeat(64));
        assert_eq!(
            framer.push_into(input.as_bytes(), &mut events),
            Err(SseError::EventTooLarge(32))
        );
        let data: Vec<&str> = events.iter().map(Event::data).collect();
        assert_eq!(data, ["a", "b"]);
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
        assert_eq!(events[0].data(), "{}");
    }

    #[test]
    fn fixture_stream_frames() {
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/messages-stream.sse"
        ));
        if let Ok(fixture) = fixture {
            let events = frame_all(&fixture, 7);
            assert!(events.iter().any(|e| e.name() == Some("message_stop")));
        }
    }
}
