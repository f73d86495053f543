//! The compact wire forms of the events a Messages stream is mostly made of, read and written
//! by hand: parsing a `Value` tree per delta was most of the proxy's cost per event.
//!
//! Invariants:
//! - a form is recognised only when the event is *exactly* that form (key order, no spacing, no
//!   extra field, one string literal); anything else returns `None` and takes the general,
//!   walked path, so nothing beyond the delta text can ride along unscanned;
//! - what is written from a template is byte-for-byte what `encode_event` writes for the same
//!   `Value` (tested), so the two paths are indistinguishable to a client.

use std::borrow::Cow;

/// A `content_block_delta` in the compact form the API sends, exactly:
/// `{"type":"content_block_delta","index":N,"delta":{"type":"T","F":"…"}}` where (T, F) is
/// (`text_delta`, `text`), (`thinking_delta`, `thinking`) or (`input_json_delta`,
/// `partial_json`). Anything else (spacing, another key order, an extra field) does not parse
/// and takes the general path, so nothing beyond the delta text can ride along unscanned.
pub(crate) struct CompactDelta<'a> {
    pub(crate) index: u64,
    pub(crate) kind: DeltaKind,
    pub(crate) text: Cow<'a, str>,
}

/// The delta types of the compact form, each with what follows the index up to its string.
const KINDS: [(&str, &str); 3] = [
    ("text_delta", r#","delta":{"type":"text_delta","text":"#),
    (
        "thinking_delta",
        r#","delta":{"type":"thinking_delta","thinking":"#,
    ),
    (
        "input_json_delta",
        r#","delta":{"type":"input_json_delta","partial_json":"#,
    ),
];

/// What a compact delta's data starts with, before its index (a macro, to be joined to the
/// event's head at compile time).
macro_rules! delta_start {
    () => {
        r#"{"type":"content_block_delta","index":"#
    };
}
const DELTA_START: &str = delta_start!();

impl<'a> CompactDelta<'a> {
    pub(crate) fn parse(data: &'a str) -> Option<CompactDelta<'a>> {
        let rest = data.strip_prefix(DELTA_START)?;
        let (index, rest) = compact_index(rest)?;
        let (kind, literal) = KINDS.iter().enumerate().find_map(|(kind, (_, prefix))| {
            Some((
                DeltaKind(kind),
                rest.strip_prefix(prefix)?.strip_suffix("}}")?,
            ))
        })?;
        Some(CompactDelta {
            index,
            kind,
            text: json_string_literal(literal)?,
        })
    }

    /// A whole compact delta event at the start of `buf`, in the canonical SSE form
    /// (`event: content_block_delta`, one `data:` line, a blank line, no `\r`), whose string
    /// has no escape and no control byte (so its literal is its value; whether it is UTF-8 is
    /// for the caller to check). `None` for anything
    /// else, which the framer and [`CompactDelta::parse`] read; both read such an event the
    /// same way (tested).
    pub(crate) fn at_event_start(buf: &[u8]) -> Option<CompactEvent<'_>> {
        const HEAD: &str = concat!("event: content_block_delta\ndata: ", delta_start!());
        const END: &[u8] = b"\"}}\n\n";
        let rest = buf.strip_prefix(HEAD.as_bytes())?;
        let (index, digits) = index_digits(rest)?;
        let rest = &rest[digits..];
        let (kind, rest) = KINDS.iter().enumerate().find_map(|(kind, (_, prefix))| {
            Some((DeltaKind(kind), rest.strip_prefix(prefix.as_bytes())?))
        })?;
        let literal = rest.strip_prefix(b"\"")?;
        let text_len = first_special(literal)?;
        if !literal[text_len..].starts_with(END) {
            return None;
        }
        Some(CompactEvent {
            len: buf.len() - literal.len() + text_len + END.len(),
            index,
            kind,
            text: &literal[..text_len],
        })
    }
}

/// One of the compact form's delta types ([`KINDS`]), as read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeltaKind(usize);

impl DeltaKind {
    pub(crate) const TEXT: DeltaKind = DeltaKind(0);
    pub(crate) const THINKING: DeltaKind = DeltaKind(1);
    pub(crate) const INPUT_JSON: DeltaKind = DeltaKind(2);

    /// `text_delta`, `thinking_delta` or `input_json_delta`.
    #[cfg(test)]
    pub(crate) fn delta_type(self) -> &'static str {
        KINDS[self.0].0
    }

    /// The data line of a compact delta of this kind whose text needs no escape: what
    /// [`CompactDelta::at_event_start`] read it from.
    pub(crate) fn unescaped_data(self, index: u64, text: &str) -> String {
        format!("{}{index}{}\"{text}\"}}}}", delta_start!(), KINDS[self.0].1)
    }
}

/// A compact delta event read in place by [`CompactDelta::at_event_start`].
pub(crate) struct CompactEvent<'a> {
    /// The event's bytes on the wire, its blank line included.
    pub(crate) len: usize,
    pub(crate) index: u64,
    pub(crate) kind: DeltaKind,
    /// The delta's text (its literal, which has no escape), not yet checked as UTF-8: the
    /// caller checks many at once.
    pub(crate) text: &'a [u8],
}

/// Where the first `"`, `\\` or control byte of `bytes` is, eight bytes at a time: a delta's
/// text (or a string of [`super::scan_value`]'s compact reader) is read to its closing quote,
/// and one with an escape is left to the general reader.
pub(super) fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `word` that is zero gets its high bit set (bytes after a zero may too; only
    // the first flag is read).
    let zeros = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let (words, tail) = bytes.as_chunks::<8>();
    for (at, word) in words.iter().enumerate() {
        let word = u64::from_le_bytes(*word);
        let flags = zeros(word ^ (ONES * u64::from(b'"')))
            | zeros(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if flags != 0 {
            return Some(at * 8 + flags.trailing_zeros() as usize / 8);
        }
    }
    let at = words.len() * 8;
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|offset| at + offset)
}

/// `{"type":"content_block_stop","index":N}` exactly: its index.
pub(crate) fn compact_block_stop(data: &str) -> Option<u64> {
    let rest = data.strip_prefix(r#"{"type":"content_block_stop","index":"#)?;
    match compact_index(rest)? {
        (index, "}") => Some(index),
        _ => None,
    }
}

/// The start of an empty text or thinking block, exactly
/// `{"type":"content_block_start","index":N,"content_block":{"type":"text","text":""}}` or
/// `…{"type":"thinking","thinking":"","signature":""}}`: its index and block type. It carries
/// nothing but the API's own words and the index.
pub(crate) fn compact_block_start(data: &str) -> Option<(u64, &'static str)> {
    let rest = data.strip_prefix(r#"{"type":"content_block_start","index":"#)?;
    let (index, rest) = compact_index(rest)?;
    match rest {
        r#","content_block":{"type":"text","text":""}}"# => Some((index, "text")),
        r#","content_block":{"type":"thinking","thinking":"","signature":""}}"# => {
            Some((index, "thinking"))
        }
        _ => None,
    }
}

/// A JSON index (no sign, no leading zero) at the start of `text`, and what follows it.
fn compact_index(text: &str) -> Option<(u64, &str)> {
    let (index, digits) = index_digits(text.as_bytes())?;
    Some((index, &text[digits..]))
}

/// [`compact_index`] of bytes: the index and how many digits it took.
fn index_digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (digits > 1 && bytes[0] == b'0') {
        return None;
    }
    // At most nine digits: no overflow.
    let index = bytes[..digits]
        .iter()
        .fold(0u64, |index, digit| index * 10 + u64::from(digit - b'0'));
    Some((index, digits))
}

/// The value of `literal` when it is exactly one JSON string literal (quotes included).
/// Without escapes the value is borrowed; with them, serde_json decodes and validates it.
fn json_string_literal(literal: &str) -> Option<Cow<'_, str>> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    if inner.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        // Escapes (or a stray quote or control byte, which the decoder then refuses).
        return serde_json::from_str::<String>(literal).ok().map(Cow::Owned);
    }
    Some(Cow::Borrowed(inner))
}

#[cfg(test)]
fn delta_event(index: u64, delta_type: &str, field: &str, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 96);
    write_delta_event(&mut out, index, delta_type, field, text);
    out
}

/// Appends a `content_block_delta` event, written from a template: the same bytes
/// `encode_event` produces for the equivalent `Value` (key order type, index, delta), without
/// building one per event.
pub(crate) fn write_delta_event(
    out: &mut Vec<u8>,
    index: u64,
    delta_type: &str,
    field: &str,
    text: &str,
) {
    out.reserve(text.len() + 120);
    out.extend_from_slice(
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
    );
    write_decimal(out, index);
    out.extend_from_slice(b",\"delta\":{\"type\":\"");
    out.extend_from_slice(delta_type.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b"\":");
    write_json_string(out, text);
    out.extend_from_slice(b"}}\n\n");
}

/// Appends `n` in decimal, without a `String` for it.
fn write_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Appends `text` as a JSON string literal, escaped exactly as serde_json escapes it (`"`, `\`,
/// the short forms `\b \f \n \r \t`, other control characters as `\u00XX`).
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The escape letter of each byte that needs one (0: none), so a clean byte costs one load.
    const ESCAPES: [u8; 256] = {
        let mut table = [0u8; 256];
        let mut byte = 0;
        while byte < 0x20 {
            table[byte] = b'u';
            byte += 1;
        }
        table[0x08] = b'b';
        table[0x0c] = b'f';
        table[b'\n' as usize] = b'n';
        table[b'\r' as usize] = b'r';
        table[b'\t' as usize] = b't';
        table[b'"' as usize] = b'"';
        table[b'\\' as usize] = b'\\';
        table
    };
    out.push(b'"');
    // The bytes to escape are those `first_special` stops at: the runs between them are
    // copied whole, found eight bytes at a time.
    let mut rest = text.as_bytes();
    while let Some(at) = first_special(rest) {
        let byte = rest[at];
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at + 1..];
        let short = ESCAPES[usize::from(byte)];
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        }
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anthropic::sse::encode_event;
    use serde_json::json;

    #[test]
    fn templated_delta_event_equals_the_value_encoding() {
        // Every byte an escape is for, at every offset within a word of eight.
        let every_ascii: String = (0..128u8).map(char::from).collect::<String>().repeat(2);
        for text in [
            "",
            "plain words ",
            "quote \" backslash \\ newline \n tab \t",
            "ünïcödé ✓ \u{1}",
            "eight by\"eight by\\tes and \u{1f}\u{7f} more than eight \"",
            &every_ascii,
            &every_ascii[3..],
        ] {
            for index in [0, 3, 9, 10, 12_345, u64::MAX] {
                let value = json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": text},
                });
                let expected = encode_event("content_block_delta", &value.to_string());
                assert_eq!(
                    delta_event(index, "text_delta", "text", text),
                    expected,
                    "{text:?} {index}"
                );
            }
        }
    }

    #[test]
    fn a_delta_read_in_place_is_the_delta_the_framer_and_the_parser_read() {
        let datas = [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"plain words "}}"#,
            r#"{"type":"content_block_delta","index":12,"delta":{"type":"thinking_delta","thinking":"ünïcödé ✓ hmm"}}"#,
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            r#"{"type":"content_block_delta","index":7,"delta":{"type":"text_delta","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"0123456789abcdefghij \/"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"an \"escape\""}}"#,
        ];
        for data in datas {
            let event = format!("event: content_block_delta\ndata: {data}\n\n");
            let mut framer = crate::anthropic::sse::SseFramer::new(1 << 20);
            let framed = framer.push(event.as_bytes()).expect("one event");
            let parsed = CompactDelta::parse(framed[0].data()).expect("a compact delta");
            match CompactDelta::at_event_start(format!("{event}event: ping\n").as_bytes()) {
                Some(read) => {
                    assert_eq!(read.len, event.len(), "{data}");
                    assert_eq!(
                        (read.index, read.kind.delta_type()),
                        (parsed.index, parsed.kind.delta_type())
                    );
                    assert_eq!(read.text, parsed.text.as_bytes(), "{data}");
                    assert!(matches!(parsed.text, Cow::Borrowed(_)), "{data}");
                    assert_eq!(read.kind.unescaped_data(read.index, &parsed.text), data);
                }
                // Only a text with an escape is left to the framer and the parser.
                None => assert!(data.contains('\\'), "{data}"),
            }
            // Cut anywhere, or not in the canonical form, it is not read in place.
            for cut in 0..event.len() {
                assert!(CompactDelta::at_event_start(&event.as_bytes()[..cut]).is_none());
            }
            let crlf = event.replace('\n', "\r\n");
            assert!(CompactDelta::at_event_start(crlf.as_bytes()).is_none());
        }
    }

    #[test]
    fn the_first_special_byte_is_found_at_every_place() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert_eq!(first_special(&clean), None, "{len}");
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = clean.clone();
                    bytes[at] = special;
                    // A second special byte after the first does not move the answer.
                    if at + 1 < len {
                        bytes[at + 1] = 0x00;
                    }
                    assert_eq!(first_special(&bytes), Some(at), "{len} {at} {special}");
                }
            }
        }
        assert_eq!(first_special("é ✓ \u{7f}\u{80}".as_bytes()), None);
    }

    #[test]
    fn compact_delta_shape_is_exact() {
        let ok = r#"{"type":"content_block_delta","index":12,"delta":{"type":"text_delta","text":"hi \"x\"\n"}}"#;
        let parsed = CompactDelta::parse(ok).expect("compact delta");
        assert_eq!((parsed.index, parsed.kind), (12, DeltaKind::TEXT));
        assert_eq!(parsed.text, "hi \"x\"\n");
        let borrowed = r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"plain"}}"#;
        let parsed = CompactDelta::parse(borrowed).expect("compact delta");
        assert!(matches!(parsed.text, Cow::Borrowed("plain")));
        let tool = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#;
        assert_eq!(
            CompactDelta::parse(tool).expect("tool piece").text,
            "{\"a\":"
        );
        // Everything else goes to the general (walked) path: extra fields anywhere, a second
        // string smuggled after the first, other spacing or order, odd indexes, bad escapes.
        for other in [
            r#"{"type":"content_block_delta","index":0,"extra":"ghp_x","delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi","extra":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi","x":"y"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\"","x":"b"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"},"x":1}"#,
            r#"{"type": "content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"index":0,"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"hi"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"bad \q"}}"#,
            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"raw \n newline\"}}",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}"#,
        ] {
            assert!(CompactDelta::parse(other).is_none(), "{other}");
            let event = format!("event: content_block_delta\ndata: {other}\n\n");
            assert!(CompactDelta::at_event_start(event.as_bytes()).is_none(), "{other}");
        }
        assert_eq!(
            compact_block_stop(r#"{"type":"content_block_stop","index":4}"#),
            Some(4)
        );
        assert_eq!(
            compact_block_stop(r#"{"type":"content_block_stop","index":4,"x":1}"#),
            None
        );
        assert_eq!(
            compact_block_start(
                r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}"#
            ),
            Some((2, "text"))
        );
        assert_eq!(
            compact_block_start(
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#
            ),
            Some((0, "thinking"))
        );
        for other in [
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"hi"}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"","citations":[]}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":"c2ln"}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"x","input":{}}}"#,
            r#"{"type":"content_block_start","index":01,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""},"x":1}"#,
        ] {
            assert_eq!(compact_block_start(other), None, "{other}");
        }
    }
}
