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
    pub(crate) delta_type: &'static str,
    pub(crate) text: Cow<'a, str>,
}

impl<'a> CompactDelta<'a> {
    pub(crate) fn parse(data: &'a str) -> Option<CompactDelta<'a>> {
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
        let rest = data.strip_prefix(r#"{"type":"content_block_delta","index":"#)?;
        let (index, rest) = compact_index(rest)?;
        let (delta_type, literal) = KINDS.iter().find_map(|(delta_type, prefix)| {
            Some((*delta_type, rest.strip_prefix(prefix)?.strip_suffix("}}")?))
        })?;
        Some(CompactDelta {
            index,
            delta_type,
            text: json_string_literal(literal)?,
        })
    }
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
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 || (digits > 1 && text.starts_with('0')) {
        return None;
    }
    // At most nine digits: no overflow.
    let index = text.as_bytes()[..digits]
        .iter()
        .fold(0u64, |index, digit| index * 10 + u64::from(digit - b'0'));
    Some((index, &text[digits..]))
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
    let bytes = text.as_bytes();
    let mut clean_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short = ESCAPES[usize::from(byte)];
        if short == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[clean_from..at]);
        clean_from = at + 1;
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        }
    }
    out.extend_from_slice(&bytes[clean_from..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anthropic::sse::encode_event;
    use serde_json::json;

    #[test]
    fn templated_delta_event_equals_the_value_encoding() {
        for text in [
            "",
            "plain words ",
            "quote \" backslash \\ newline \n tab \t",
            "ünïcödé ✓ \u{1}",
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
    fn compact_delta_shape_is_exact() {
        let ok = r#"{"type":"content_block_delta","index":12,"delta":{"type":"text_delta","text":"hi \"x\"\n"}}"#;
        let parsed = CompactDelta::parse(ok).expect("compact delta");
        assert_eq!((parsed.index, parsed.delta_type), (12, "text_delta"));
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
