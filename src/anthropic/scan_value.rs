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
//!   nothing there is opaque.

use crate::engine::{Engine, Findings, Scope};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};
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
