//! The AWS event-stream framing (`application/vnd.amazon.eventstream`) that Amazon Bedrock
//! streams Claude's events in: bytes cut anywhere in, whole frames out, and frames encoded
//! back with correct lengths and checksums.
//!
//! A frame is a 12-byte prelude (total length, headers length, both big-endian `u32`, then the
//! CRC32 of those 8 bytes), typed headers, the payload, and the CRC32 of everything before it.
//!
//! Invariants:
//! - a frame is handed out only once all of it has arrived and both checksums match; a bad
//!   checksum, an impossible length (shorter than an empty frame, headers longer than the
//!   frame, over the size limit) or a malformed header is an error, and after an error the
//!   decoder hands out nothing more (the stream is not resynchronised: a reader cannot know
//!   where the next frame starts);
//! - memory is bounded: a frame larger than `max_frame_bytes` is refused from its prelude,
//!   before its bytes are buffered;
//! - [`encode`] of a decoded frame gives back the bytes it was decoded from (every header
//!   type is kept as it was), so decode ∘ encode is the identity;
//! - nothing here knows what the payload means (that is [`super::bedrock`]'s job).

use bytes::{Buf, Bytes, BytesMut};

/// Prelude (12) plus message CRC (4): the size of a frame with no headers and no payload.
const MIN_FRAME: usize = 16;
const PRELUDE: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event-stream frame length {0} is impossible")]
    ImpossibleLength(u64),
    #[error("event-stream frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("event-stream prelude checksum mismatch")]
    PreludeChecksum,
    #[error("event-stream message checksum mismatch")]
    MessageChecksum,
    #[error("event-stream frame has a malformed header")]
    BadHeader,
    #[error("event-stream ended inside a frame")]
    Truncated,
}

/// A header's value, in each of the types the format defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Bytes,
}

impl Frame {
    /// The value of string header `name` (`:event-type`, `:message-type`, …).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// A frame with string headers only.
    pub fn with_strings(headers: &[(&str, &str)], payload: impl Into<Bytes>) -> Frame {
        Frame {
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), HeaderValue::String(v.to_string())))
                .collect(),
            payload: payload.into(),
        }
    }
}

/// Incremental decoder: push bytes as they arrive, take the frames they complete.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max_frame_bytes: usize,
    failed: bool,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder {
            buffer: BytesMut::new(),
            max_frame_bytes: max_frame_bytes.max(MIN_FRAME),
            failed: false,
        }
    }

    /// Bytes received and not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// Add `chunk` and return the frames it completes. After an error nothing more comes out.
    pub fn push(&mut self, chunk: &[u8], frames: &mut Vec<Frame>) -> Result<(), FrameError> {
        if self.failed {
            return Err(FrameError::Truncated);
        }
        self.buffer.extend_from_slice(chunk);
        loop {
            match self.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return Ok(()),
                Err(error) => {
                    self.failed = true;
                    self.buffer.clear();
                    return Err(error);
                }
            }
        }
    }

    /// The stream has ended: an error if it ended inside a frame.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if self.failed || !self.buffer.is_empty() {
            self.failed = true;
            self.buffer.clear();
            return Err(FrameError::Truncated);
        }
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < PRELUDE {
            return Ok(None);
        }
        let total = be_u32(&self.buffer[0..4]) as usize;
        let headers_len = be_u32(&self.buffer[4..8]) as usize;
        if crc32fast::hash(&self.buffer[0..8]) != be_u32(&self.buffer[8..12]) {
            return Err(FrameError::PreludeChecksum);
        }
        if total < MIN_FRAME || headers_len > total - MIN_FRAME {
            return Err(FrameError::ImpossibleLength(total as u64));
        }
        if total > self.max_frame_bytes {
            return Err(FrameError::TooLarge(total, self.max_frame_bytes));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let frame = self.buffer.split_to(total).freeze();
        if crc32fast::hash(&frame[..total - 4]) != be_u32(&frame[total - 4..]) {
            return Err(FrameError::MessageChecksum);
        }
        let headers = parse_headers(&frame[PRELUDE..PRELUDE + headers_len])?;
        let payload = frame.slice(PRELUDE + headers_len..total - 4);
        Ok(Some(Frame { headers, payload }))
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, HeaderValue)>, FrameError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if bytes.len() < n {
            return Err(FrameError::BadHeader);
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = take(&mut bytes, 1)?[0] as usize;
        if name_len == 0 {
            return Err(FrameError::BadHeader);
        }
        let name = std::str::from_utf8(take(&mut bytes, name_len)?)
            .map_err(|_| FrameError::BadHeader)?
            .to_string();
        let kind = take(&mut bytes, 1)?[0];
        let value = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(take(&mut bytes, 1)?.get_i8()),
            3 => HeaderValue::Short(take(&mut bytes, 2)?.get_i16()),
            4 => HeaderValue::Int(take(&mut bytes, 4)?.get_i32()),
            5 => HeaderValue::Long(take(&mut bytes, 8)?.get_i64()),
            6 | 7 => {
                let len = take(&mut bytes, 2)?.get_u16() as usize;
                let value = take(&mut bytes, len)?.to_vec();
                if kind == 6 {
                    HeaderValue::Bytes(value)
                } else {
                    HeaderValue::String(
                        String::from_utf8(value).map_err(|_| FrameError::BadHeader)?,
                    )
                }
            }
            8 => HeaderValue::Timestamp(take(&mut bytes, 8)?.get_i64()),
            9 => {
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(take(&mut bytes, 16)?);
                HeaderValue::Uuid(uuid)
            }
            _ => return Err(FrameError::BadHeader),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// Append the wire form of `frame` to `out`. Header names longer than 255 bytes and string or
/// byte values longer than 65,535 bytes cannot be encoded: they are the caller's bug, and are
/// truncated rather than producing a frame a reader would misparse.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    encode_with(out, &frame.payload, |out| {
        for (name, value) in &frame.headers {
            write_header(out, name, value);
        }
    });
}

/// [`encode`] of a frame with string headers only, without building a [`Frame`] (the proxy
/// writes one per streamed event).
pub fn encode_strings(headers: &[(&str, &str)], payload: &[u8], out: &mut Vec<u8>) {
    encode_with(out, payload, |out| {
        for (name, value) in headers {
            write_name(out, name);
            write_string(out, value);
        }
    });
}

/// Prelude, the headers `write_headers` appends, `payload`, and both checksums.
fn encode_with(out: &mut Vec<u8>, payload: &[u8], write_headers: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; PRELUDE]);
    write_headers(out);
    let headers_len = out.len() - start - PRELUDE;
    out.extend_from_slice(payload);
    let total = out.len() - start + 4;
    out[start..start + 4].copy_from_slice(&(total as u32).to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&(headers_len as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&prelude_crc.to_be_bytes());
    let message_crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&message_crc.to_be_bytes());
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    let name = &name.as_bytes()[..name.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

fn write_string(out: &mut Vec<u8>, value: &str) {
    out.push(7);
    let mut end = value.len().min(u16::MAX as usize);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&value.as_bytes()[..end]);
}

fn write_header(out: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    write_name(out, name);
    match value {
        HeaderValue::Bool(true) => out.push(0),
        HeaderValue::Bool(false) => out.push(1),
        HeaderValue::Byte(v) => {
            out.push(2);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Short(v) => {
            out.push(3);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Int(v) => {
            out.push(4);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Long(v) => {
            out.push(5);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Bytes(v) => {
            out.push(6);
            let v = &v[..v.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v);
        }
        HeaderValue::String(v) => write_string(out, v),
        HeaderValue::Timestamp(v) => {
            out.push(8);
            out.extend_from_slice(&v.to_be_bytes());
        }
        HeaderValue::Uuid(v) => {
            out.push(9);
            out.extend_from_slice(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame {
            headers: vec![
                (":event-type".into(), HeaderValue::String("chunk".into())),
                (
                    ":content-type".into(),
                    HeaderValue::String("application/json".into()),
                ),
                (":message-type".into(), HeaderValue::String("event".into())),
                ("flag".into(), HeaderValue::Bool(false)),
                ("n".into(), HeaderValue::Long(-7)),
                ("id".into(), HeaderValue::Uuid([3; 16])),
            ],
            payload: Bytes::from_static(br#"{"bytes":"eyJ0eXBlIjoicGluZyJ9"}"#),
        }
    }

    #[test]
    fn a_frame_decodes_to_what_was_encoded_whatever_the_cut() {
        let mut wire = Vec::new();
        encode(&sample(), &mut wire);
        encode(&Frame::default(), &mut wire);
        for cut in 0..=wire.len() {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut frames = Vec::new();
            decoder.push(&wire[..cut], &mut frames).expect("first part");
            decoder
                .push(&wire[cut..], &mut frames)
                .expect("second part");
            decoder.finish().expect("whole frames");
            assert_eq!(frames, vec![sample(), Frame::default()], "cut at {cut}");
        }
    }

    #[test]
    fn string_headers_encode_as_a_frame_of_them_does() {
        let headers = [(":event-type", "chunk"), (":message-type", "event")];
        let (mut direct, mut framed) = (Vec::new(), Vec::new());
        encode_strings(&headers, b"{}", &mut direct);
        encode(&Frame::with_strings(&headers, "{}"), &mut framed);
        assert_eq!(direct, framed);
    }

    #[test]
    fn corrupt_and_impossible_frames_are_errors_and_stop_the_decoder() {
        let mut wire = Vec::new();
        encode(&sample(), &mut wire);
        let last = wire.len() - 1;
        let mut bad_message = wire.clone();
        bad_message[last] ^= 1;
        let mut bad_prelude = wire.clone();
        bad_prelude[9] ^= 1;
        let mut short = wire.clone();
        short[0..4].copy_from_slice(&8u32.to_be_bytes());
        let crc = crc32fast::hash(&short[0..8]);
        short[8..12].copy_from_slice(&crc.to_be_bytes());
        let cases = [
            (bad_message, FrameError::MessageChecksum),
            (bad_prelude, FrameError::PreludeChecksum),
            (short, FrameError::ImpossibleLength(8)),
        ];
        for (bytes, want) in cases {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut frames = Vec::new();
            assert_eq!(decoder.push(&bytes, &mut frames), Err(want));
            assert!(frames.is_empty());
            let mut good = Vec::new();
            encode(&Frame::default(), &mut good);
            assert!(decoder.push(&good, &mut frames).is_err());
            assert!(frames.is_empty());
        }
        let mut decoder = FrameDecoder::new(32);
        assert!(matches!(
            decoder.push(&wire, &mut Vec::new()),
            Err(FrameError::TooLarge(_, 32))
        ));
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.push(&wire[..20], &mut Vec::new()).expect("partial");
        assert_eq!(decoder.finish(), Err(FrameError::Truncated));
    }
}
