//! Strict parsing and whole-value scanning of the small JSON documents a response stream is made
//! of (SSE event data), for the events the streaming path does not take apart by hand.
//!
//! Invariants:
//! - [`parse_strict`] refuses a document with a duplicate object key at any depth: readers
//!   disagree on which member counts (serde and the SDKs take the last), so a document with one
//!   is never scanned one way and read another;
//! - [`scan_value`] scans every object key and every string, decoded, in block mode. A finding
//!   in a value that can carry a placeholder is masked in place; a finding in a key or in an
//!   opaque value ([`OPAQUE_KEYS`], `data` of a `redacted_thinking` object) cannot be masked
//!   without breaking what the client does with it, so it is a [`ScanFault::Refused`] and the
//!   caller must not forward the document;
//! - inside a tool call's `input` (and any `input_schema`) keys mean nothing to the API, so
//!   nothing there is opaque;
//! - [`scan_clean`] reads the same documents without building a tree, and answers only when
//!   [`parse_strict`] would accept the document and [`scan_value`] would find nothing in it (it
//!   scans the same keys and strings, decoded, in the same scope): the caller may then forward
//!   the document as it came. Any finding, duplicate key or parse error is `None`, and the
//!   caller takes the tree path, which decides what to do with it. The documents the API
//!   sends (compact, no escapes, counts as plain integers) are read by hand ([`CompactReader`]),
//!   which answers only when it read the whole document and found it clean, and otherwise
//!   leaves it to the `serde_json` reader; both drive the same [`CleanScan`].

use crate::anthropic::compact::first_special;
use crate::anthropic::usage::{TokenKind, Usage};
use crate::engine::{Engine, Findings, Scope};
use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write as _;

/// Keys whose string values are identifiers or enum tags: a placeholder cannot stand in for
/// them, so a finding there refuses the document.
pub(crate) const OPAQUE_KEYS: [&str; 6] = [
    "id",
    "tool_use_id",
    "model",
    "signature",
    "type",
    "custom_id",
];

/// Why a value could not be passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanFault {
    /// A finding where no placeholder fits: its rule and JSON path (never the secret).
    Refused { rule_id: String, path: String },
    /// The engine failed.
    Failed,
}

/// `data` as JSON, refusing duplicate object keys anywhere.
pub(crate) fn parse_strict(data: &str) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(data);
    let Strict(value) = Strict::deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                // The key is not quoted: it may be a secret.
                Entry::Occupied(_) => return Err(de::Error::custom("duplicate object key")),
                Entry::Vacant(slot) => {
                    let Strict(value) = map.next_value()?;
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// Scan every key and string of `value` (see the module docs). Findings are recorded under
/// `path`; returns whether a string was rewritten.
pub(crate) fn scan_value(
    engine: &Engine,
    value: &mut Value,
    path: &str,
    findings: &mut Findings,
) -> Result<bool, ScanFault> {
    let mut path = path.to_string();
    walk(engine, value, &mut path, false, false, findings)
}

fn walk(
    engine: &Engine,
    value: &mut Value,
    path: &mut String,
    free_form: bool,
    opaque: bool,
    findings: &mut Findings,
) -> Result<bool, ScanFault> {
    match value {
        Value::String(text) => scan_string(engine, text, path, opaque, findings),
        Value::Array(items) => {
            let mut changed = false;
            for (at, item) in items.iter_mut().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{at}]");
                changed |= walk(engine, item, path, free_form, false, findings)?;
                path.truncate(len);
            }
            Ok(changed)
        }
        Value::Object(object) => {
            let redacted = !free_form
                && object.get("type").and_then(Value::as_str) == Some("redacted_thinking");
            let mut changed = false;
            for (key, child) in object.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                // A key cannot carry a placeholder: any finding in it refuses.
                scan_str(engine, key, path, true, findings)?;
                let child_opaque = !free_form
                    && (OPAQUE_KEYS.contains(&key.as_str()) || (redacted && key == "data"));
                let child_free = free_form || key == "input" || key == "input_schema";
                changed |= walk(engine, child, path, child_free, child_opaque, findings)?;
                path.truncate(len);
            }
            Ok(changed)
        }
        _ => Ok(false),
    }
}

/// Scans `text`, recording its findings under `path`: the masked text when a finding rewrote
/// it, a refusal when that cannot be (`opaque`: a key, an id).
fn scan_str(
    engine: &Engine,
    text: &str,
    path: &str,
    opaque: bool,
    findings: &mut Findings,
) -> Result<Option<String>, ScanFault> {
    let masked = engine
        .mask(text, Scope::Response)
        .map_err(|_| ScanFault::Failed)?;
    if masked.findings.is_empty() {
        return Ok(None);
    }
    let rewritten = masked.findings.iter().find(|f| f.rewritten).cloned();
    let new_text = masked.text.into_owned();
    for finding in masked.findings {
        findings.push(path, finding);
    }
    match rewritten {
        None => Ok(None),
        Some(finding) if opaque => Err(ScanFault::Refused {
            rule_id: finding.rule_id,
            path: path.to_string(),
        }),
        Some(_) => Ok(Some(new_text)),
    }
}

fn scan_string(
    engine: &Engine,
    text: &mut String,
    path: &str,
    opaque: bool,
    findings: &mut Findings,
) -> Result<bool, ScanFault> {
    match scan_str(engine, text, path, opaque, findings)? {
        Some(masked) => {
            *text = masked;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// What a document [`scan_clean`] passed says that the stream needs, read in the same pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CleanDocument {
    /// The top-level `type`, when it is a string.
    pub kind: Option<String>,
    /// The token counts of `message.usage` (a `message_start`).
    pub message_usage: Usage,
    /// The token counts of the top-level `usage` (a `message_delta`).
    pub usage: Usage,
    /// The string at `delta.stop_reason`, when there is one.
    pub stop_reason: Option<String>,
}

/// `data` parsed strictly and every key and string scanned in the response scope, without a
/// tree: `Some` only when the document is strict JSON and nothing in it has a finding (see the
/// module docs).
pub(crate) fn scan_clean(engine: &Engine, data: &str) -> Option<CleanDocument> {
    if let Some(document) = CompactReader::scan_clean(engine, data) {
        return Some(document);
    }
    scan_clean_by_serde(engine, data)
}

/// [`scan_clean`] through `serde_json`: any document.
fn scan_clean_by_serde(engine: &Engine, data: &str) -> Option<CleanDocument> {
    let mut clean = CleanScan {
        engine,
        keys: Vec::with_capacity(CleanScan::KEYS_ROOM),
        document: CleanDocument::default(),
    };
    let mut deserializer = serde_json::Deserializer::from_str(data);
    CleanSeed {
        scan: &mut clean,
        place: Place::Root,
    }
    .deserialize(&mut deserializer)
    .ok()?;
    deserializer.end().ok()?;
    Some(clean.document)
}

/// [`scan_clean`] by hand for the documents the API sends: no whitespace, no escape in a
/// string, numbers only as non-negative integers that fit a `u64`. Whatever else it meets
/// (another number, an escape, a control character, a space, bad syntax, nesting past
/// [`CompactReader::MAX_DEPTH`]) and any finding or duplicate key ends the read with `None`,
/// and the caller reads the document with `serde_json` instead, which gives the answer. So
/// when this reader says `Some`, the `serde_json` reader says the same: it read the same keys
/// and strings (without escapes, their decoded text is their bytes), in the same order,
/// through the same [`CleanScan`].
struct CompactReader<'s, 'e, 'de> {
    text: &'de str,
    at: usize,
    scan: &'s mut CleanScan<'e, 'de>,
}

impl<'s, 'e, 'de> CompactReader<'s, 'e, 'de> {
    /// Nesting beyond the API's documents goes to `serde_json`, which has its own limit.
    const MAX_DEPTH: usize = 32;

    fn scan_clean(engine: &'e Engine, text: &'de str) -> Option<CleanDocument> {
        let mut clean = CleanScan {
            engine,
            keys: Vec::with_capacity(CleanScan::KEYS_ROOM),
            document: CleanDocument::default(),
        };
        let mut reader = CompactReader {
            text,
            at: 0,
            scan: &mut clean,
        };
        reader.value(Place::Root, 0)?;
        (reader.at == text.len()).then_some(clean.document)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, place: Place, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' if depth < Self::MAX_DEPTH => self.object(place, depth + 1),
            b'[' if depth < Self::MAX_DEPTH => self.array(depth + 1),
            b'"' => {
                let text = self.string()?;
                self.scan.string(place, text).then_some(())
            }
            b'0'..=b'9' => {
                let count = self.count()?;
                self.scan.count(place, count);
                Some(())
            }
            b'n' => self.literal("null"),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            _ => None,
        }
    }

    fn object(&mut self, place: Place, depth: usize) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let first = self.scan.keys.len();
        loop {
            let key = self.string()?;
            let child = self.scan.key(place, first, Cow::Borrowed(key))?;
            self.eat(b':')?;
            self.value(child, depth)?;
            if self.eat(b',').is_none() {
                break;
            }
        }
        self.eat(b'}')?;
        self.scan.keys.truncate(first);
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.value(Place::Elsewhere, depth)?;
            if self.eat(b',').is_none() {
                break;
            }
        }
        self.eat(b']')
    }

    /// A string without escapes or control characters, its quotes taken.
    fn string(&mut self) -> Option<&'de str> {
        self.eat(b'"')?;
        let start = self.at;
        let length = first_special(&self.text.as_bytes()[start..])?;
        self.at = start + length;
        self.eat(b'"')?;
        // Both ends are at ASCII bytes, so on character boundaries.
        self.text.get(start..start + length)
    }

    /// `0` or a run of digits without a leading zero, within a `u64` (a fraction or an
    /// exponent after it is not a `,`, `}` or `]`, so the read stops there).
    fn count(&mut self) -> Option<u64> {
        let digits = self.text.as_bytes()[self.at..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let run = &self.text[self.at..self.at + digits];
        if run.len() > 1 && run.starts_with('0') {
            return None;
        }
        let count = run.parse().ok()?;
        self.at += digits;
        Some(count)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }
}

/// Where in the document a value is, as far as [`CleanDocument`] cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    RootType,
    Message,
    MessageUsage,
    Usage,
    Delta,
    StopReason,
    /// A token count: the number at this place is recorded.
    Count(TokenKind, bool),
    Elsewhere,
}

impl Place {
    fn child(self, key: &str) -> Place {
        match (self, key) {
            (Place::Root, "type") => Place::RootType,
            (Place::Root, "message") => Place::Message,
            (Place::Root, "usage") => Place::Usage,
            (Place::Root, "delta") => Place::Delta,
            (Place::Message, "usage") => Place::MessageUsage,
            (Place::Delta, "stop_reason") => Place::StopReason,
            (Place::MessageUsage | Place::Usage, field) => match TokenKind::from_field(field) {
                Some(kind) => Place::Count(kind, self == Place::MessageUsage),
                None => Place::Elsewhere,
            },
            _ => Place::Elsewhere,
        }
    }
}

/// The most keys an object read by [`scan_clean`] may have.
const MAX_CLEAN_KEYS: usize = 64;

struct CleanScan<'e, 'de> {
    engine: &'e Engine,
    /// The keys of the objects being read, innermost last (duplicates are looked for among
    /// the innermost object's own).
    keys: Vec<Cow<'de, str>>,
    document: CleanDocument,
}

impl<'de> CleanScan<'_, 'de> {
    /// The keys of a `message_start` and the objects it is in, without growing.
    const KEYS_ROOM: usize = 16;

    fn is_clean(&self, text: &str) -> bool {
        matches!(self.engine.scan(text, Scope::Response), Ok(found) if found.is_empty())
    }

    /// A string at `place`: `false` when it is not clean.
    fn string(&mut self, place: Place, text: &str) -> bool {
        if !self.is_clean(text) {
            return false;
        }
        match place {
            Place::RootType => self.document.kind = Some(text.to_owned()),
            Place::StopReason => self.document.stop_reason = Some(text.to_owned()),
            _ => {}
        }
        true
    }

    /// A non-negative integer at `place`.
    fn count(&mut self, place: Place, count: u64) {
        if let Place::Count(kind, in_message) = place {
            match in_message {
                true => self.document.message_usage.set(kind, count),
                false => self.document.usage.set(kind, count),
            }
        }
    }

    /// The next key of the object at `place` whose keys start at `first` in [`Self::keys`]:
    /// the place of its value, or `None` when the key is not clean, repeats one of the
    /// object's or is one too many.
    fn key(&mut self, place: Place, first: usize, key: Cow<'de, str>) -> Option<Place> {
        // The API's objects have a handful of keys; a long one goes to the tree path, whose
        // duplicate check does not grow with the square of the keys.
        let own_keys = &self.keys[first..];
        if own_keys.len() >= MAX_CLEAN_KEYS || own_keys.contains(&key) || !self.is_clean(&key) {
            return None;
        }
        let child = place.child(&key);
        self.keys.push(key);
        Some(child)
    }
}

/// Why a clean scan stopped: the caller only learns that it did.
fn not_clean<E: de::Error>() -> E {
    E::custom("not a clean document")
}

struct CleanSeed<'s, 'e, 'de> {
    scan: &'s mut CleanScan<'e, 'de>,
    place: Place,
}

impl<'de> DeserializeSeed<'de> for CleanSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CleanSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, count: u64) -> Result<(), E> {
        self.scan.count(self.place, count);
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match self.scan.string(self.place, text) {
            true => Ok(()),
            false => Err(not_clean()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(CleanSeed {
                scan: &mut *self.scan,
                place: Place::Elsewhere,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let first = self.scan.keys.len();
        while let Some(KeyText(key)) = map.next_key()? {
            let Some(place) = self.scan.key(self.place, first, key) else {
                return Err(not_clean());
            };
            map.next_value_seed(CleanSeed {
                scan: &mut *self.scan,
                place,
            })?;
        }
        self.scan.keys.truncate(first);
        Ok(())
    }
}

/// An object key, borrowed from the document when it has no escape.
struct KeyText<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for KeyText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyText<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<KeyText<'de>, E> {
                Ok(KeyText(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<KeyText<'de>, E> {
                Ok(KeyText(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON body as a lenient reader (Python's `json`, the SDKs) reads it, for the decisions
/// that need a tree (tool calls): a UTF-8 byte-order mark is skipped and the `NaN`,
/// `Infinity` and `-Infinity` literals read as `null`. `None` when it is not JSON even so.
pub(crate) fn lenient_value(body: &[u8]) -> Option<Value> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if let Ok(value) = serde_json::from_slice(body) {
        return Some(value);
    }
    serde_json::from_slice(&nonfinite_as_null(body)).ok()
}

/// `body` with the non-finite number literals outside strings replaced by `null`.
fn nonfinite_as_null(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut in_string = false;
    let mut at = 0;
    while at < body.len() {
        let byte = body[at];
        if in_string {
            out.push(byte);
            if byte == b'\\' {
                if let Some(&next) = body.get(at + 1) {
                    out.push(next);
                    at += 1;
                }
            } else if byte == b'"' {
                in_string = false;
            }
            at += 1;
            continue;
        }
        let rest = &body[at..];
        let literal = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|literal| rest.starts_with(literal));
        match literal {
            Some(literal) => {
                out.extend_from_slice(b"null");
                at += literal.len();
            }
            None => {
                in_string = byte == b'"';
                out.push(byte);
                at += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[rules]]
id = "test-token"
description = "a test token"
pattern = 'tok_[A-Za-z0-9]{8,40}'
action = "mask"
applies_to = ["request", "response"]
"#;

    fn secret() -> String {
        format!("tok_{}", "Q1w2E3r4T5y6")
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_strict(r#"{"a":1,"b":{"c":2}}"#).is_ok());
        for doc in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"text":"a","text":"b"}}"#,
            r#"[{"k":1,"k":1}]"#,
        ] {
            assert!(parse_strict(doc).is_err(), "{doc}");
        }
        assert!(parse_strict(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn opaque_values_and_keys_refuse_other_strings_are_masked() {
        let engine = crate::engine::test_engine(RULES);
        let s = secret();
        let mut findings = Findings::new();
        let mut value: Value =
            serde_json::from_str(&format!(r#"{{"note":"a {s} b","n":[1,"{s}"]}}"#))
                .expect("test JSON");
        assert_eq!(
            scan_value(&engine, &mut value, "e", &mut findings),
            Ok(true)
        );
        assert!(!value.to_string().contains(&s), "{value}");
        assert_eq!(findings.len(), 2);
        for doc in [
            format!(r#"{{"message":{{"id":"{s}"}}}}"#),
            format!(r#"{{"model":"{s}"}}"#),
            format!(r#"{{"delta":{{"signature":"{s}"}}}}"#),
            format!(r#"{{"{s}":1}}"#),
            format!(r#"{{"data":"{s}","type":"redacted_thinking"}}"#),
        ] {
            let mut value: Value = serde_json::from_str(&doc).expect("test JSON");
            let result = scan_value(&engine, &mut value, "e", &mut Findings::new());
            assert!(
                matches!(result, Err(ScanFault::Refused { ref rule_id, .. }) if rule_id == "test-token"),
                "{doc}: {result:?}"
            );
        }
        // Inside a tool input, `id` is just a key.
        let mut value: Value =
            serde_json::from_str(&format!(r#"{{"input":{{"id":"{s}"}}}}"#)).expect("test JSON");
        assert_eq!(
            scan_value(&engine, &mut value, "e", &mut Findings::new()),
            Ok(true)
        );
    }

    /// The tree path's answer for `doc`: `None` unless it parses strictly and scans clean.
    fn clean_by_tree(engine: &Engine, doc: &str) -> Option<CleanDocument> {
        let mut value = parse_strict(doc).ok()?;
        let mut findings = Findings::new();
        let changed = scan_value(engine, &mut value, "e", &mut findings).ok()?;
        if changed || !findings.is_empty() {
            return None;
        }
        let usage_at = |usage: Option<&Value>| {
            let mut counted = Usage::default();
            if let Some(Value::Object(usage)) = usage {
                counted.record(usage);
            }
            counted
        };
        Some(CleanDocument {
            kind: value.get("type").and_then(Value::as_str).map(str::to_owned),
            message_usage: usage_at(value.get("message").and_then(|m| m.get("usage"))),
            usage: usage_at(value.get("usage")),
            stop_reason: value
                .get("delta")
                .and_then(|d| d.get("stop_reason"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    #[test]
    fn the_clean_scan_agrees_with_the_tree_path() {
        let engine = crate::engine::test_engine(RULES);
        let s = secret();
        let many_keys: String = (0..70).map(|k| format!(r#""k{k}":{k},"#)).collect();
        let docs = [
            r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#.to_string(),
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15,"input_tokens":-1,"cache_read_input_tokens":2.5}}"#.to_string(),
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15},"message":{"usage":7}}"#.to_string(),
            r#"{"usage":{"output_tokens":3},"type":"message_delta"}"#.to_string(),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_string(),
            r#"{"ty\u0070e":"message_stop","n":[1,[2,{"a":null}],true]}"#.to_string(),
            r#"{"type":"message_delta","delta":{"stop_reason":"tool\u005fuse"}}"#.to_string(),
            r#"[1,"two",{"three":3}]"#.to_string(),
            r#""just a string""#.to_string(),
            format!(r#"{{"type":"message_delta","delta":{{"text":"a {s} b"}}}}"#),
            format!(r#"{{"type":"message_start","message":{{"id":"{s}"}}}}"#),
            format!(r#"{{"{s}":1}}"#),
            format!(r#"{{"a":["x","{s}"]}}"#),
            r#"{"a":1,"a":2}"#.to_string(),
            r#"{"x":{"text":"a","te\u0078t":"b"}}"#.to_string(),
            r#"{"x":{"a":1},"y":{"a":1},"a":{"x":1}}"#.to_string(),
            r#"{"type":"message_stop"} trailing"#.to_string(),
            r#"{"type":"#.to_string(),
            "not json".to_string(),
            format!("{{{many_keys}\"type\":\"ping\"}}"),
        ];
        let mut clean = 0;
        for doc in &docs {
            let by_tree = clean_by_tree(&engine, doc);
            let by_scan = scan_clean(&engine, doc);
            if doc.contains("k69") {
                // Past the key bound the clean scan leaves the document to the tree path.
                assert!(by_tree.is_some() && by_scan.is_none(), "{doc}");
                continue;
            }
            assert_eq!(by_scan, by_tree, "{doc}");
            clean += usize::from(by_scan.is_some());
        }
        assert_eq!(clean, 10, "the clean documents of the list");
        let start = scan_clean(&engine, &docs[0]).expect("a clean message_start");
        assert_eq!(start.message_usage.get(TokenKind::Input), Some(25));
        assert_eq!(start.message_usage.get(TokenKind::CacheRead), Some(3));
        let delta = scan_clean(&engine, &docs[1]).expect("a clean message_delta");
        assert_eq!(delta.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(delta.usage.get(TokenKind::Output), Some(15));
        assert_eq!(delta.usage.get(TokenKind::Input), None);
    }

    #[test]
    fn the_compact_reader_reads_the_api_documents_and_leaves_anything_else_to_serde() {
        let engine = crate::engine::test_engine(RULES);
        let by_hand = |doc: &str| CompactReader::scan_clean(&engine, doc);
        let api = [
            r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":0},"output_tokens":1,"service_tier":"standard"}}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":4}}"#,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            r#"{"a":[true,false,null,[],{},0,18446744073709551615,"é ✓"]}"#,
        ];
        for doc in api {
            let read = by_hand(doc);
            assert!(read.is_some(), "{doc}");
            assert_eq!(read, scan_clean_by_serde(&engine, doc), "{doc}");
        }
        let start = by_hand(api[0]).expect("read by hand");
        assert_eq!(start.kind.as_deref(), Some("message_start"));
        assert_eq!(start.message_usage.get(TokenKind::CacheRead), Some(3));
        let delta = by_hand(api[1]).expect("read by hand");
        assert_eq!(delta.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!(delta.usage.get(TokenKind::Output), Some(4));
        // Each is left to serde_json: some are clean there, some are not JSON at all.
        let nested = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let s = secret();
        let left = [
            r#"{"usage":{"output_tokens":01}}"#.to_string(),
            r#"{"usage":{"output_tokens":1.5}}"#.to_string(),
            r#"{"usage":{"output_tokens":1e3}}"#.to_string(),
            r#"{"usage":{"output_tokens":-1}}"#.to_string(),
            r#"{"usage":{"output_tokens":18446744073709551616}}"#.to_string(),
            r#"{"type":"ping"} "#.to_string(),
            r#"{"type": "ping"}"#.to_string(),
            r#"{"type":"p\u0069ng"}"#.to_string(),
            "{\"type\":\"a\tb\"}".to_string(),
            r#"{"a":1,}"#.to_string(),
            r#"[1,]"#.to_string(),
            r#"{"a":1"#.to_string(),
            r#"{"a" :1}"#.to_string(),
            r#"{"a":1,"a":1}"#.to_string(),
            r#"{"a":nul}"#.to_string(),
            format!(r#"{{"type":"{s}"}}"#),
            format!(r#"{{"{s}":1}}"#),
            nested,
        ];
        for doc in &left {
            assert_eq!(by_hand(doc), None, "{doc}");
        }
        // Those serde_json reads as clean still come out clean.
        for doc in [r#"{"type":"ping"} "#, r#"{"type":"p\u0069ng"}"#] {
            assert!(scan_clean(&engine, doc).is_some(), "{doc}");
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop_oneof![
                Just("tool_use".to_string()),
                Just("message_delta".to_string()),
                Just(secret()),
                Just(format!("x {} y", secret())),
                "[ -~\\n\"\\\\é✓]{0,12}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 5, |inner| {
            let key = prop_oneof![
                Just("type".to_string()),
                Just("usage".to_string()),
                Just("message".to_string()),
                Just("delta".to_string()),
                Just("stop_reason".to_string()),
                Just("output_tokens".to_string()),
                Just("input_tokens".to_string()),
                Just(secret()),
                "[a-z_\"\\\\]{1,6}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::vec((key, inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_clean_scan_agrees_with_the_tree_path_on_any_document(
            value in json_value(),
            pretty in proptest::bool::ANY,
        ) {
            let engine = crate::engine::test_engine(RULES);
            let doc = match pretty {
                true => serde_json::to_string_pretty(&value).expect("serializes"),
                false => value.to_string(),
            };
            proptest::prop_assert_eq!(scan_clean(&engine, &doc), clean_by_tree(&engine, &doc), "{}", doc);
            let by_hand = CompactReader::scan_clean(&engine, &doc);
            proptest::prop_assert!(by_hand.is_none() || by_hand == scan_clean_by_serde(&engine, &doc), "{}", doc);
        }
    }

    #[test]
    fn lenient_values() {
        assert_eq!(
            lenient_value(b"\xEF\xBB\xBF{\"a\":1}"),
            Some(serde_json::json!({"a":1}))
        );
        assert_eq!(
            lenient_value(br#"{"a":NaN,"b":"NaN \"Infinity","c":[-Infinity,Infinity]}"#),
            Some(serde_json::json!({"a":null,"b":"NaN \"Infinity","c":[null,null]}))
        );
        assert_eq!(lenient_value(b"not json"), None);
    }
}
