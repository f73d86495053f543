//! Restore: placeholders in a response given back the secrets they stand for — for the caller
//! the secrets came from, and only where the client acts on them (tool inputs; text when
//! asked for).
//!
//! This module is the response half and holds no store: it is handed a [`RestoreMap`] (the
//! caller's placeholders and secrets, built on the request path from what that request's
//! masking learned and what the restore vault holds for that caller) and rewrites JSON values
//! and streamed text with it.
//!
//! Invariants:
//! - only a placeholder the map knows is replaced, by exactly the text it replaced (a secret
//!   inserted into JSON is JSON-escaped by the serializer); any other placeholder — another
//!   caller's, an expired one, a made-up one — is left as it is and counted with a reason;
//! - a placeholder of a rule whose restore is switched off never enters the map, and is counted
//!   as `rule_opt_out` when it shows up;
//! - the events this module records ([`RestoreEvent`]) name the rule, the placeholder and the
//!   JSON path, never the secret; `Debug` of a map prints counts only;
//! - streamed text is restored across deltas: [`TextRestorer`] holds back at most one
//!   possible placeholder prefix (at most [`MAX_PLACEHOLDER_BYTES`]) and releases everything
//!   at a flush, so nothing is lost and text that is not a placeholder is delayed only while
//!   it could still become one.

use crate::engine::placeholder::PLACEHOLDER_OVERHEAD;
use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The longest rule id a restorable placeholder may carry: longer `[MASKED:…` runs are not
/// held back in streamed text.
pub const MAX_RULE_ID_BYTES: usize = 96;

/// The longest placeholder restore recognises.
pub const MAX_PLACEHOLDER_BYTES: usize = PLACEHOLDER_OVERHEAD + MAX_RULE_ID_BYTES;

const PREFIX: &[u8] = b"[MASKED:";

/// Where restore applies (`[restore] scopes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreScopes {
    /// Tool-call inputs (`tool_use` and every tool-like block), judged whole.
    pub tool_input: bool,
    /// Text blocks (streamed `text_delta`s and `text` of a JSON response).
    pub text: bool,
}

/// Why a placeholder in a response was left masked (the `reason` label of
/// `streammask_placeholders_unrestored_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unrestored {
    /// The caller's vault does not know it: another caller's, expired, evicted or made up.
    Unknown,
    /// Its rule (or the caller's profile) never restores.
    RuleOptOut,
    /// The vault could not be read for this request.
    StoreUnavailable,
    /// The tool is not one restore gives secrets to (`[restore] tools`).
    ToolNotAllowed,
}

impl Unrestored {
    pub fn label(self) -> &'static str {
        match self {
            Unrestored::Unknown => "unknown",
            Unrestored::RuleOptOut => "rule_opt_out",
            Unrestored::StoreUnavailable => "store_unavailable",
            Unrestored::ToolNotAllowed => "tool_not_allowed",
        }
    }
}

/// One placeholder met in a response: restored (for the audit record and the per-rule counter)
/// or not (and why). Never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreEvent {
    pub rule_id: String,
    pub placeholder: String,
    /// The JSON path in the response (`content[1].input.old_string`).
    pub path: String,
    /// `None` when restored.
    pub unrestored: Option<Unrestored>,
}

/// The caller's placeholders and their secrets, for one response.
#[derive(Default, Clone)]
pub struct RestoreMap {
    scopes: RestoreScopes,
    secrets: HashMap<String, String>,
    /// Rule ids that never restore (their placeholders count as `rule_opt_out`).
    opted_out: HashSet<String>,
    /// The vault failed for this request: an unknown placeholder may be a known one.
    store_failed: bool,
    /// Tools whose inputs get secrets back (`None`: every tool).
    tools: Option<Arc<HashSet<String>>>,
    /// Finds the secrets again, JSON-escaped, for [`RestoreMap::conceal`] (built on first use).
    concealer: OnceLock<Option<(AhoCorasick, Vec<String>)>>,
}

impl fmt::Debug for RestoreMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreMap")
            .field("scopes", &self.scopes)
            .field("placeholders", &self.secrets.len())
            .field("opted_out", &self.opted_out)
            .field("store_failed", &self.store_failed)
            .finish()
    }
}

impl RestoreMap {
    pub fn new(scopes: RestoreScopes) -> RestoreMap {
        RestoreMap {
            scopes,
            ..RestoreMap::default()
        }
    }

    pub fn scopes(&self) -> RestoreScopes {
        self.scopes
    }

    /// Restore into the inputs of these tools only (`None`: every tool): a secret put back into
    /// a tool that sends it elsewhere (a web fetch, an MCP call) would leave the machine.
    pub fn with_tools(mut self, tools: Option<Arc<HashSet<String>>>) -> RestoreMap {
        self.tools = tools;
        self
    }

    /// Whether placeholders of the rule `placeholder` names may come back.
    pub fn restores_rule_of(&self, placeholder: &str) -> bool {
        !self
            .opted_out
            .contains(placeholder_rule_id(placeholder).unwrap_or_default())
    }

    /// Whether a call of tool `name` gets secrets back.
    pub fn restores_tool(&self, name: &str) -> bool {
        self.tools.as_ref().is_none_or(|tools| tools.contains(name))
    }

    /// Every placeholder in a tool input of a tool restore does not serve, counted as such.
    pub fn count_refused_tool(&self, input: &[u8], path: &str, events: &mut Vec<RestoreEvent>) {
        for range in find_placeholders(input) {
            events.push(event(&input[range], path, Some(Unrestored::ToolNotAllowed)));
        }
    }

    /// Know `placeholder` as standing for `secret` (the first secret given for it stays).
    pub fn insert(&mut self, placeholder: String, secret: String) {
        self.secrets.entry(placeholder).or_insert(secret);
    }

    pub fn opt_out(&mut self, rule_id: &str) {
        self.opted_out.insert(rule_id.to_string());
    }

    pub fn set_store_failed(&mut self) {
        self.store_failed = true;
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `bytes` (JSON, or SSE whose data is JSON) with every secret of the map put back under
    /// its placeholder: for what is kept about a response (transcripts), which must not hold
    /// what restore gave the client. `None` when there is nothing to conceal.
    pub fn conceal(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let (searcher, placeholders) = self
            .concealer
            .get_or_init(|| {
                // A streamed tool input is JSON inside a JSON string: escaped twice.
                let (patterns, placeholders): (Vec<Vec<u8>>, Vec<String>) = self
                    .secrets
                    .iter()
                    .flat_map(|(placeholder, secret)| {
                        let once = json_escaped(secret);
                        let twice = json_escaped(&String::from_utf8_lossy(&once));
                        let mut forms = vec![once];
                        if twice != forms[0] {
                            forms.push(twice);
                        }
                        forms.into_iter().map(move |f| (f, placeholder.clone()))
                    })
                    .filter(|(pattern, _)| !pattern.is_empty())
                    .unzip();
                let searcher = AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()?;
                Some((searcher, placeholders))
            })
            .as_ref()?;
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        for found in searcher.find_iter(bytes) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
            out.extend_from_slice(&bytes[copied..found.start()]);
            out.extend_from_slice(placeholders[found.pattern().as_usize()].as_bytes());
            copied = found.end();
        }
        let mut out = out?;
        out.extend_from_slice(&bytes[copied..]);
        Some(out)
    }

    /// The secret behind `placeholder`, or why it stays.
    fn resolve(&self, placeholder: &str) -> Result<&str, Unrestored> {
        if !self.restores_rule_of(placeholder) {
            return Err(Unrestored::RuleOptOut);
        }
        if let Some(secret) = self.secrets.get(placeholder) {
            return Ok(secret);
        }
        if self.store_failed {
            Err(Unrestored::StoreUnavailable)
        } else {
            Err(Unrestored::Unknown)
        }
    }

    /// Every placeholder in `text` the map knows replaced by its secret; events for each
    /// placeholder met are appended (under `path`). `None` when nothing was replaced.
    pub fn restore_str(
        &self,
        text: &str,
        path: &str,
        events: &mut Vec<RestoreEvent>,
    ) -> Option<String> {
        let restored = self.restore_raw(text.as_bytes(), path, events)?;
        // Valid UTF-8 with placeholders (ASCII) swapped for strings is valid UTF-8.
        String::from_utf8(restored).ok()
    }

    /// [`RestoreMap::restore_str`] over bytes that need not be UTF-8 as a whole (a streamed
    /// piece may end or start inside a character; placeholders are ASCII either way).
    fn restore_raw(
        &self,
        bytes: &[u8],
        path: &str,
        events: &mut Vec<RestoreEvent>,
    ) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        let mut copied = 0;
        for range in find_placeholders(bytes) {
            let found = &bytes[range.clone()];
            let unrestored = match self.resolve(&String::from_utf8_lossy(found)) {
                Ok(secret) => {
                    let out = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
                    out.extend_from_slice(&bytes[copied..range.start]);
                    out.extend_from_slice(secret.as_bytes());
                    copied = range.end;
                    None
                }
                Err(reason) => Some(reason),
            };
            events.push(event(found, path, unrestored));
        }
        let mut out = out?;
        out.extend_from_slice(&bytes[copied..]);
        Some(out)
    }

    /// Restore every string (not keys) of a JSON value in place; `path` is the value's own.
    /// True when anything changed.
    pub fn restore_value(
        &self,
        value: &mut Value,
        path: &str,
        events: &mut Vec<RestoreEvent>,
    ) -> bool {
        match value {
            Value::String(text) => match self.restore_str(text, path, events) {
                Some(restored) => {
                    *text = restored;
                    true
                }
                None => false,
            },
            Value::Array(items) => {
                let mut changed = false;
                for (index, item) in items.iter_mut().enumerate() {
                    changed |= self.restore_value(item, &format!("{path}[{index}]"), events);
                }
                changed
            }
            Value::Object(fields) => {
                let mut changed = false;
                for (key, item) in fields.iter_mut() {
                    changed |= self.restore_value(item, &format!("{path}.{key}"), events);
                }
                changed
            }
            _ => false,
        }
    }

    /// A tool input (JSON text) with its placeholders restored; `None` when nothing was
    /// restored or the input is not JSON (it was judged already; it then goes out as it is).
    pub fn restore_tool_input(
        &self,
        input: &[u8],
        path: &str,
        events: &mut Vec<RestoreEvent>,
    ) -> Option<Vec<u8>> {
        memchr::memmem::find(input, PREFIX)?;
        let mut value: Value = serde_json::from_slice(input).ok()?;
        if !self.restore_value(&mut value, path, events) {
            return None;
        }
        serde_json::to_vec(&value).ok()
    }
}

/// The byte ranges of the well-formed placeholders in `bytes`, in order, not overlapping.
pub fn find_placeholders(bytes: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(found) = memchr::memmem::find(bytes.get(from..)?, PREFIX) {
            let start = from + found;
            match placeholder_len(&bytes[start..]) {
                Some(len) => {
                    from = start + len;
                    return Some(start..start + len);
                }
                None => from = start + 1,
            }
        }
        None
    })
}

/// The length of the placeholder at the start of `bytes` (`[MASKED:<id>:<8 hex>]`, the id of
/// lower-case letters, digits and `-`), or `None`.
pub fn placeholder_len(bytes: &[u8]) -> Option<usize> {
    let rest = bytes.strip_prefix(PREFIX)?;
    let id = rest
        .iter()
        .take(MAX_RULE_ID_BYTES + 1)
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-')
        .count();
    if id == 0 || id > MAX_RULE_ID_BYTES {
        return None;
    }
    let tail = rest.get(id..id + 10)?;
    let hex = tail.get(1..9)?;
    let well_formed = tail.first() == Some(&b':')
        && tail.get(9) == Some(&b']')
        && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then_some(PREFIX.len() + id + 10)
}

/// The event for `placeholder` (ASCII by construction) met at `path`.
fn event(placeholder: &[u8], path: &str, unrestored: Option<Unrestored>) -> RestoreEvent {
    let placeholder = String::from_utf8_lossy(placeholder).into_owned();
    RestoreEvent {
        rule_id: placeholder_rule_id(&placeholder)
            .unwrap_or_default()
            .to_string(),
        placeholder,
        path: path.to_string(),
        unrestored,
    }
}

/// The text of `secret` as a JSON serializer writes it between quotes.
pub fn json_escaped(secret: &str) -> Vec<u8> {
    let quoted = serde_json::to_vec(secret).unwrap_or_default();
    quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default()
        .to_vec()
}

/// The forms `secret` takes inside a JSON string as common writers escape it: as serde and
/// `JSON.stringify` do; with `/` as `\/` (PHP); with every character but ASCII letters and
/// digits as `\uXXXX` in upper- or lower-case hex (.NET escapes `+`, Go `&<>`, Python non-ASCII).
/// Distinct forms only.
pub fn escaped_forms(secret: &str) -> Vec<Vec<u8>> {
    let plain = json_escaped(secret);
    let mut forms = vec![plain.clone()];
    let slashed: Vec<u8> = String::from_utf8_lossy(&plain)
        .replace('/', "\\/")
        .into_bytes();
    for upper in [true, false] {
        let mut unicode = String::with_capacity(secret.len() * 6);
        for c in secret.chars() {
            if c.is_ascii_alphanumeric() {
                unicode.push(c);
                continue;
            }
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let hex = if upper {
                    format!("\\u{unit:04X}")
                } else {
                    format!("\\u{unit:04x}")
                };
                unicode.push_str(&hex);
            }
        }
        forms.push(unicode.into_bytes());
    }
    forms.push(slashed);
    let mut distinct: Vec<Vec<u8>> = Vec::with_capacity(forms.len());
    for form in forms {
        if !distinct.contains(&form) {
            distinct.push(form);
        }
    }
    distinct
}

/// The rule id inside a placeholder.
pub fn placeholder_rule_id(placeholder: &str) -> Option<&str> {
    let inner = placeholder.strip_prefix("[MASKED:")?.strip_suffix(']')?;
    Some(inner.rsplit_once(':')?.0)
}

/// Whether `tail` (which starts with `[`) could still grow into a placeholder.
fn could_become_placeholder(tail: &[u8]) -> bool {
    if tail.len() >= MAX_PLACEHOLDER_BYTES {
        return false;
    }
    let lead = tail.len().min(PREFIX.len());
    if tail[..lead] != PREFIX[..lead] {
        return false;
    }
    let Some(rest) = tail.get(PREFIX.len()..) else {
        return true;
    };
    // `<id>` then optionally `:` and up to 8 hex digits (the closing `]` would complete it).
    let id = rest
        .iter()
        .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'-')
        .count();
    match rest.get(id..) {
        None | Some([]) => id <= MAX_RULE_ID_BYTES,
        Some([b':', hex @ ..]) => {
            // The id itself may contain no `:`, but the hex may look like more id: take the
            // last `:` as the separator.
            id > 0 && hex.len() <= 8 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some(_) => false,
    }
}

/// Restores placeholders in a text that arrives in pieces (streamed `text_delta`s), whatever
/// the piece boundaries. Holds back only a suffix that could still become a placeholder.
#[derive(Default)]
pub struct TextRestorer {
    held: Vec<u8>,
}

impl TextRestorer {
    pub fn new() -> TextRestorer {
        TextRestorer::default()
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Take the next piece; returns the text that can go out now, restored.
    pub fn push(
        &mut self,
        map: &RestoreMap,
        piece: &[u8],
        path: &str,
        events: &mut Vec<RestoreEvent>,
    ) -> Vec<u8> {
        self.held.extend_from_slice(piece);
        // Hold from the last `[` when what follows it could still be a placeholder; a
        // placeholder contains no `[`, so no earlier one can be incomplete.
        let keep_from = memchr::memrchr(b'[', &self.held)
            .filter(|&at| {
                could_become_placeholder(&self.held[at..]) && !is_complete(&self.held[at..])
            })
            .unwrap_or(self.held.len());
        let ready: Vec<u8> = self.held.drain(..keep_from).collect();
        restore_bytes(map, ready, path, events)
    }

    /// Everything held, restored (at a block's stop or the stream's end).
    pub fn flush(
        &mut self,
        map: &RestoreMap,
        path: &str,
        events: &mut Vec<RestoreEvent>,
    ) -> Vec<u8> {
        let ready = std::mem::take(&mut self.held);
        restore_bytes(map, ready, path, events)
    }
}

fn is_complete(tail: &[u8]) -> bool {
    placeholder_len(tail) == Some(tail.len())
}

fn restore_bytes(
    map: &RestoreMap,
    ready: Vec<u8>,
    path: &str,
    events: &mut Vec<RestoreEvent>,
) -> Vec<u8> {
    if memchr::memmem::find(&ready, PREFIX).is_none() {
        return ready;
    }
    map.restore_raw(&ready, path, events).unwrap_or(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PH: &str = "[MASKED:aws-secret-access-key:1a2b3c4d]";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY\"quoted\"\\";

    fn map(scopes: RestoreScopes) -> RestoreMap {
        let mut map = RestoreMap::new(scopes);
        map.insert(PH.to_string(), SECRET.to_string());
        map.opt_out("private-key");
        map
    }

    fn all() -> RestoreScopes {
        RestoreScopes {
            tool_input: true,
            text: true,
        }
    }

    #[test]
    fn placeholders_are_recognised_exactly() {
        assert_eq!(placeholder_len(PH.as_bytes()), Some(PH.len()));
        assert_eq!(placeholder_len(b"[MASKED:x:0123456f] tail"), Some(19));
        for bad in [
            "[MASKED::1a2b3c4d]",
            "[MASKED:X:1a2b3c4d]",
            "[MASKED:x:1a2b3c4]",
            "[MASKED:x:1a2b3c4g]",
            "[MASKED:x:1a2b3c4d",
            "[MASKED:x 1a2b3c4d]",
        ] {
            assert_eq!(placeholder_len(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(placeholder_rule_id(PH), Some("aws-secret-access-key"));
    }

    #[test]
    fn known_placeholders_are_restored_and_others_counted() {
        let map = map(all());
        let other = "[MASKED:aws-secret-access-key:ffffffff]";
        let opted = "[MASKED:private-key:00000000]";
        let text = format!("a {PH} b {other} c {opted} d {PH}");
        let mut events = Vec::new();
        let restored = map.restore_str(&text, "p", &mut events).expect("restored");
        assert_eq!(
            restored,
            format!("a {SECRET} b {other} c {opted} d {SECRET}")
        );
        let reasons: Vec<_> = events.iter().map(|e| e.unrestored).collect();
        assert_eq!(
            reasons,
            [
                None,
                Some(Unrestored::Unknown),
                Some(Unrestored::RuleOptOut),
                None
            ]
        );
        assert!(events.iter().all(|e| !format!("{e:?}").contains("wJalr")));
        assert!(!format!("{map:?}").contains("wJalr"));
    }

    #[test]
    fn conceal_puts_restored_secrets_back_under_their_placeholders() {
        let map = map(all());
        let restored = map
            .restore_tool_input(
                format!(r#"{{"c":"grep '{PH}' .env"}}"#).as_bytes(),
                "i",
                &mut Vec::new(),
            )
            .expect("restored");
        assert!(!String::from_utf8_lossy(&restored).contains(PH));
        let concealed = map.conceal(&restored).expect("concealed");
        assert_eq!(
            String::from_utf8_lossy(&concealed),
            format!(r#"{{"c":"grep '{PH}' .env"}}"#)
        );
        assert_eq!(map.conceal(b"nothing here"), None);
    }

    #[test]
    fn escaped_forms_cover_the_common_json_writers() {
        let forms: Vec<String> = escaped_forms("ab+c/d\"é")
            .into_iter()
            .map(|f| String::from_utf8(f).expect("utf-8"))
            .collect();
        assert_eq!(
            forms,
            [
                r#"ab+c/d\"é"#,
                r"ab\u002Bc\u002Fd\u0022\u00E9",
                r"ab\u002bc\u002fd\u0022\u00e9",
                r#"ab+c\/d\"é"#,
            ]
        );
        assert_eq!(escaped_forms("abcDEF123"), vec![b"abcDEF123".to_vec()]);
    }

    #[test]
    fn unknown_placeholders_leave_the_text_alone() {
        let map = map(all());
        let mut events = Vec::new();
        assert_eq!(
            map.restore_str("no placeholder [MASKED:", "p", &mut events),
            None
        );
        let mut failed = RestoreMap::new(all());
        failed.set_store_failed();
        assert_eq!(failed.restore_str(PH, "p", &mut events), None);
        assert_eq!(
            events.last().and_then(|e| e.unrestored),
            Some(Unrestored::StoreUnavailable)
        );
    }

    #[test]
    fn tool_input_is_restored_json_escaped_with_paths() {
        let map = map(all());
        let input = format!(
            r#"{{"file_path":"/p/.env","old_string":"KEY={PH}\nX=1","edits":[{{"s":"{PH}"}}]}}"#
        );
        let mut events = Vec::new();
        let restored = map
            .restore_tool_input(input.as_bytes(), "content[1].input", &mut events)
            .expect("restored");
        let value: Value = serde_json::from_slice(&restored).expect("still JSON");
        assert_eq!(value["old_string"], format!("KEY={SECRET}\nX=1"));
        assert_eq!(value["edits"][0]["s"], SECRET);
        let paths: Vec<_> = events.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["content[1].input.old_string", "content[1].input.edits[0].s"]
        );
        assert_eq!(
            map.restore_tool_input(br#"{"a":"b"}"#, "x", &mut events),
            None
        );
    }

    fn stream(map: &RestoreMap, pieces: &[&[u8]]) -> (Vec<u8>, usize) {
        let mut restorer = TextRestorer::new();
        let mut out = Vec::new();
        let mut events = Vec::new();
        for piece in pieces {
            out.extend(restorer.push(map, piece, "content[0]", &mut events));
            assert!(restorer.held() < MAX_PLACEHOLDER_BYTES);
        }
        out.extend(restorer.flush(map, "content[0]", &mut events));
        (
            out,
            events.iter().filter(|e| e.unrestored.is_none()).count(),
        )
    }

    #[test]
    fn text_split_at_every_byte_is_restored() {
        let map = map(all());
        let text = format!("see [x] and {PH}, then [MASKED:other:12345678] [MASKED: end [");
        let expected = map
            .restore_str(&text, "content[0]", &mut Vec::new())
            .expect("restores");
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let (out, restored) = stream(&map, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(String::from_utf8_lossy(&out), expected, "cut at {cut}");
            assert_eq!(restored, 1);
        }
    }

    #[test]
    fn text_that_is_no_placeholder_is_not_held() {
        let map = map(all());
        let mut restorer = TextRestorer::new();
        let mut events = Vec::new();
        assert_eq!(restorer.push(&map, b"a [b", "p", &mut events), b"a [b");
        assert_eq!(restorer.push(&map, b"x [MA", "p", &mut events), b"x ");
        assert_eq!(restorer.push(&map, b"Sk", "p", &mut events), b"[MASk");
        assert_eq!(restorer.held(), 0);
    }

    proptest! {
        #[test]
        fn any_chunking_restores_exactly(
            prefix in "[a-z \\[\\]:]{0,20}",
            suffix in "[a-z \\[\\]:]{0,20}",
            cuts in proptest::collection::vec(0usize..120, 0..8),
        ) {
            let map = map(all());
            let text = format!("{prefix}{PH}{suffix}é{PH}");
            let expected = map.restore_str(&text, "p", &mut Vec::new()).expect("restores");
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for cut in cuts {
                pieces.push(&bytes[last..cut]);
                last = cut;
            }
            pieces.push(&bytes[last..]);
            let (out, _) = stream(&map, &pieces);
            prop_assert_eq!(String::from_utf8_lossy(&out).into_owned(), expected);
        }
    }
}
