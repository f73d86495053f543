//! The JSON walker: masks secrets in a JSON body (a Messages API request, a non-streamed
//! response, a batch results file) by scanning its string values with the [`Engine`] and
//! rewriting only the raw bytes of the secrets it finds.
//!
//! Invariants (these are the tests, here and in `tests/json_walk.rs`):
//! 1. **Strict.** The input is one RFC 8259 JSON value (or, for [`mask_jsonl`], one per
//!    non-blank line): invalid UTF-8, control characters in strings, invalid escapes, bad numbers
//!    and trailing garbage are [`WalkError::Syntax`] with the byte offset of the problem;
//!    containers nested deeper than [`MAX_DEPTH`] are [`WalkError::TooDeep`]. No input panics.
//!    The one leniency: a lone UTF-16 surrogate escape (`\ud800`) is grammatical JSON (RFC 8259
//!    §8.2) and JavaScript clients send it, so it is accepted and scanned as U+FFFD.
//! 2. **Every string is scanned**, values whatever their key (so fields the API adds later are
//!    covered) and object keys themselves (a secret can be a key). The exceptions are
//!    opaque values that must reach the API unchanged: any value under the keys `signature`,
//!    `id`, `tool_use_id`, `custom_id` and `model`; `data` of an object whose `type` is
//!    `redacted_thinking`; `data` of a `source` object whose `type` is `base64`. Skips are decided
//!    with the whole object in view (`type` may follow `data`); an object whose `type` members
//!    disagree, or are not strings, has no type and so skips nothing.
//! 3. **Free-form subtrees have no skip list.** The `input` of a tool call (an object whose `type`
//!    is `tool_use`, `server_tool_use` or `mcp_tool_use`) and any `input_schema` are arbitrary
//!    data whose keys mean nothing to the API, so an `id` or `model` key in there is scanned and
//!    masked like any other string. For the same reason a document walked with
//!    [`Scope::ToolInput`] (a complete tool input judged on its own) has no skip list at all.
//! 4. **Thinking is report-only by default.** The `thinking` text of an object whose `type` is
//!    `thinking` is scanned; its findings are rewritten only with [`ThinkingMode::Mask`] (rewriting
//!    breaks the block's signature). In [`ThinkingMode::Report`] they are returned with
//!    `rewritten = false`.
//! 5. **Only masked spans change.** Without a rewritten finding the body is `None` and the caller
//!    forwards the original bytes. Otherwise the output is the input with, for each rewritten
//!    span, exactly the raw bytes that encode the secret (escapes included: `\n`, `\"`,
//!    `\u00e9`, surrogate pairs) replaced by the placeholder. Whitespace, key order, number
//!    spellings and every other escape are byte-identical, and decoding a rewritten string gives
//!    exactly what [`Engine::mask`] makes of the decoded input string (report-only thinking
//!    aside). Placeholders are inserted JSON-escaped, so no rule id can break the document.
//! 6. Finding spans are byte spans in the *decoded* string; `path` names the string
//!    (`messages[3].content[0].text`; a key that is not `[A-Za-z0-9_-]+` is written `["key"]`).
//!
//! Speed: one pass builds a flat tree of raw spans (strings are scanned eight bytes at a time
//! and the whole input is UTF-8-validated once), a second pass walks it. A string without
//! escapes is handed to the engine as a slice of the input; only strings with escapes are
//! decoded, into one reused buffer.

use crate::engine::findings::{Findings, Located};
use crate::engine::masker::{Engine, MaskError};
use crate::engine::rules::Scope;
use std::borrow::Cow;
use std::ops::Range;

/// Containers may nest this deep; one more is [`WalkError::TooDeep`].
pub const MAX_DEPTH: usize = 256;

/// What happens to findings in `thinking` text (`[masking] thinking` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThinkingMode {
    /// Report findings, leave the text (and so the block's signature) intact.
    #[default]
    Report,
    /// Rewrite findings like anywhere else; the API will reject the signed block.
    Mask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkOptions {
    pub scope: Scope,
    pub thinking: ThinkingMode,
    /// Accept what lenient JSON readers (Python's `json`, the SDKs) accept beyond RFC 8259:
    /// a UTF-8 byte-order mark and the `NaN`/`Infinity`/`-Infinity` literals. For response
    /// bodies, which a client parses leniently; requests stay strict.
    pub lenient: bool,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            scope: Scope::Request,
            thinking: ThinkingMode::Report,
            lenient: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Walked {
    /// The rewritten body, or `None` when nothing was rewritten (forward the original bytes).
    pub body: Option<Vec<u8>>,
    /// Every finding, in document order; paths are JSON paths such as
    /// `messages[3].content[0].text` (`[line N].…` in JSON Lines).
    pub findings: Findings,
    /// Findings in values that cannot carry a placeholder (ids, `model`, `signature`,
    /// `custom_id`, `redacted_thinking.data`): they are not rewritten, and the caller must not
    /// forward the document — a request is refused with a 400 naming path and rule, a response
    /// stream is ended with an `error` event.
    pub refusals: Findings,
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("invalid JSON at byte {offset}: {reason}")]
    Syntax { offset: usize, reason: &'static str },
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    /// Readers disagree on which of two members with one key counts (serde refuses, the API
    /// takes the last), so a document with one is refused rather than scanned one way and read
    /// another. The key itself is not quoted: it may be a secret.
    #[error("duplicate object key at byte {offset}")]
    DuplicateKey { offset: usize },
    #[error(transparent)]
    Mask(#[from] MaskError),
}

fn syntax(offset: usize, reason: &'static str) -> WalkError {
    WalkError::Syntax { offset, reason }
}

/// Masks the string values of one JSON document. See the module docs for what is scanned and
/// what may change.
pub fn mask_json(engine: &Engine, raw: &[u8], opts: &WalkOptions) -> Result<Walked, WalkError> {
    let text = validate_utf8(raw)?;
    let mut walker = Walker::new(engine, text, opts);
    walker.document(0, raw.len(), None)?;
    Ok(walker.finish())
}

/// Masks a JSON Lines body (batch results): one JSON value per line, blank lines allowed and
/// kept. Line numbers in paths start at 1; error offsets are offsets in the whole body.
pub fn mask_jsonl(engine: &Engine, raw: &[u8], opts: &WalkOptions) -> Result<Walked, WalkError> {
    let text = validate_utf8(raw)?;
    let mut walker = Walker::new(engine, text, opts);
    let mut start = 0;
    let mut line = 1;
    while start < raw.len() {
        let end = find_byte(raw, start, b'\n');
        let blank = raw
            .get(start..end)
            .is_none_or(|l| l.iter().all(|&b| is_ws(b)));
        if !blank {
            walker.document(start, end, Some(line))?;
        }
        start = end + 1;
        line += 1;
    }
    Ok(walker.finish())
}

fn validate_utf8(raw: &[u8]) -> Result<&str, WalkError> {
    std::str::from_utf8(raw).map_err(|e| syntax(e.valid_up_to(), "invalid UTF-8"))
}

// ---------------------------------------------------------------------------------------------
// Pass 1: a flat tree of raw spans.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    /// `escaped`: the raw string contains at least one backslash escape.
    Str {
        escaped: bool,
    },
    Scalar,
}

/// One value (or object key) in pre-order. An object's children are key, value, key, value…;
/// `next` is the index just past the node's subtree, so siblings are reached without recursion.
#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// Raw byte span, quotes included for strings.
    start: usize,
    end: usize,
    next: usize,
}

struct Parser<'a> {
    /// The input up to the end of the current document (a line in JSONL).
    bytes: &'a [u8],
    pos: usize,
    nodes: &'a mut Vec<Node>,
    /// Raw spans (quotes included) of the keys of every object still open, innermost last:
    /// an object checks its own keys for duplicates when it closes and pops them.
    keys: &'a mut Vec<(usize, usize)>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// One value followed by nothing but whitespace.
    fn document(&mut self) -> Result<(), WalkError> {
        self.value(0)?;
        self.skip_ws();
        if self.pos < self.bytes.len() {
            return Err(syntax(self.pos, "trailing characters after the JSON value"));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<(), WalkError> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => {
                let (start, end, escaped) = self.string()?;
                self.push(Kind::Str { escaped }, start, end);
                Ok(())
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                self.number()?;
                self.push(Kind::Scalar, start, self.pos);
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => Err(syntax(self.pos, "expected a JSON value")),
            None => Err(syntax(
                self.pos,
                "unexpected end of input, expected a value",
            )),
        }
    }

    fn push(&mut self, kind: Kind, start: usize, end: usize) {
        let next = self.nodes.len() + 1;
        self.nodes.push(Node {
            kind,
            start,
            end,
            next,
        });
    }

    /// Opens a container node; [`Parser::close`] fills in its end once the subtree is parsed.
    fn open(&mut self, kind: Kind, depth: usize) -> Result<usize, WalkError> {
        if depth > MAX_DEPTH {
            return Err(WalkError::TooDeep(MAX_DEPTH));
        }
        let index = self.nodes.len();
        self.push(kind, self.pos, self.pos);
        self.pos += 1;
        Ok(index)
    }

    fn close(&mut self, index: usize) {
        self.pos += 1;
        let next = self.nodes.len();
        if let Some(node) = self.nodes.get_mut(index) {
            node.end = self.pos;
            node.next = next;
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), WalkError> {
        let index = self.open(Kind::Object, depth)?;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.close(index);
            return Ok(());
        }
        let first_key = self.keys.len();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'"') => {
                    let (start, end, escaped) = self.string()?;
                    self.push(Kind::Str { escaped }, start, end);
                    self.keys.push((start, end));
                }
                Some(_) => return Err(syntax(self.pos, "expected a string key")),
                None => return Err(syntax(self.pos, "unexpected end of input in an object")),
            }
            self.skip_ws();
            match self.peek() {
                Some(b':') => self.pos += 1,
                Some(_) => return Err(syntax(self.pos, "expected ':' after an object key")),
                None => return Err(syntax(self.pos, "unexpected end of input in an object")),
            }
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.close(index);
                    return self.check_keys(first_key);
                }
                Some(_) => return Err(syntax(self.pos, "expected ',' or '}' in an object")),
                None => return Err(syntax(self.pos, "unexpected end of input in an object")),
            }
        }
    }

    /// Refuses a duplicate among the keys pushed since `first`, then pops them. Keys are
    /// compared decoded (`"a"` and `"\u0061"` are one key to every reader).
    fn check_keys(&mut self, first: usize) -> Result<(), WalkError> {
        let spans = self.keys.get(first..).unwrap_or_default();
        let duplicate = if spans.len() < 2 {
            None
        } else {
            let bytes = self.bytes;
            let decoded = |&(start, end): &(usize, usize)| -> Option<Cow<'_, str>> {
                let raw = std::str::from_utf8(bytes.get(start + 1..end.saturating_sub(1))?).ok()?;
                if raw.contains('\\') {
                    let mut out = String::new();
                    decode_into(raw, &mut out)?;
                    Some(Cow::Owned(out))
                } else {
                    Some(Cow::Borrowed(raw))
                }
            };
            let mut keys: Vec<(Cow<'_, str>, usize)> = spans
                .iter()
                .map(|span| (decoded(span).unwrap_or_default(), span.0))
                .collect();
            keys.sort_unstable();
            keys.windows(2)
                .find(|pair| pair.first().map(|k| &k.0) == pair.get(1).map(|k| &k.0))
                .and_then(|pair| pair.iter().map(|k| k.1).max())
        };
        self.keys.truncate(first);
        match duplicate {
            Some(offset) => Err(WalkError::DuplicateKey { offset }),
            None => Ok(()),
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), WalkError> {
        let index = self.open(Kind::Array, depth)?;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.close(index);
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.close(index);
                    return Ok(());
                }
                Some(_) => return Err(syntax(self.pos, "expected ',' or ']' in an array")),
                None => return Err(syntax(self.pos, "unexpected end of input in an array")),
            }
        }
    }

    /// A string starting at the current `"`: returns its raw span and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), WalkError> {
        let start = self.pos;
        let mut pos = start + 1;
        let mut escaped = false;
        loop {
            pos = find_special(self.bytes, pos);
            match self.bytes.get(pos) {
                Some(b'"') => {
                    self.pos = pos + 1;
                    return Ok((start, self.pos, escaped));
                }
                Some(b'\\') => match escape_at(self.bytes, pos) {
                    Some((len, _)) => {
                        escaped = true;
                        pos += len;
                    }
                    None => return Err(syntax(pos, "invalid escape in a string")),
                },
                Some(_) => return Err(syntax(pos, "unescaped control character in a string")),
                None => return Err(syntax(start, "unterminated string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), WalkError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(syntax(self.pos, "leading zero in a number"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(syntax(self.pos, "expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(syntax(self.pos, "expected a digit after '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(syntax(self.pos, "expected a digit in the exponent"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), WalkError> {
        let start = self.pos;
        for &expected in word {
            if self.peek() != Some(expected) {
                return Err(syntax(self.pos, "invalid literal"));
            }
            self.pos += 1;
        }
        self.push(Kind::Scalar, start, self.pos);
        Ok(())
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in every byte of `word` that is below `n` (n <= 128). A borrow can only set
/// bits *above* a byte that really is below `n`, so the lowest set bit is always exact.
#[inline(always)]
fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

#[inline(always)]
fn load(chunk: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    u64::from_le_bytes(word)
}

/// Position of the first `"`, `\` or control byte at or after `from`, or `bytes.len()` (at least
/// `from`). Eight bytes at a time (SWAR).
#[inline]
fn find_special(bytes: &[u8], from: usize) -> usize {
    let mut pos = from;
    for chunk in bytes.get(pos..).unwrap_or_default().chunks_exact(8) {
        let word = load(chunk);
        let hits = bytes_below(word ^ (ONES * u64::from(b'"')), 1)
            | bytes_below(word ^ (ONES * u64::from(b'\\')), 1)
            | bytes_below(word, 0x20);
        if hits != 0 {
            return pos + (hits.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(&b) = bytes.get(pos) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return pos;
        }
        pos += 1;
    }
    bytes.len().max(from)
}

/// Position of the first `needle` at or after `from`, or `bytes.len()` (at least `from`).
#[inline]
fn find_byte(bytes: &[u8], from: usize, needle: u8) -> usize {
    let pattern = ONES * u64::from(needle);
    let mut pos = from;
    for chunk in bytes.get(pos..).unwrap_or_default().chunks_exact(8) {
        let hits = bytes_below(load(chunk) ^ pattern, 1);
        if hits != 0 {
            return pos + (hits.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(&b) = bytes.get(pos) {
        if b == needle {
            return pos;
        }
        pos += 1;
    }
    bytes.len().max(from)
}

#[inline]
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let mut value = 0;
    for &d in digits {
        value = value * 16 + char::from(d).to_digit(16)?;
    }
    Some(value)
}

/// The escape starting at the backslash `bytes[at]`: its raw length and the character it stands
/// for. A surrogate pair is one 12-byte escape; a lone surrogate decodes as U+FFFD. `None` for
/// an invalid escape.
#[inline]
fn escape_at(bytes: &[u8], at: usize) -> Option<(usize, char)> {
    let simple = |c| Some((2, c));
    match *bytes.get(at + 1)? {
        b'"' => simple('"'),
        b'\\' => simple('\\'),
        b'/' => simple('/'),
        b'b' => simple('\u{8}'),
        b'f' => simple('\u{c}'),
        b'n' => simple('\n'),
        b'r' => simple('\r'),
        b't' => simple('\t'),
        b'u' => {
            let unit = hex4(bytes, at + 2)?;
            if (0xD800..0xDC00).contains(&unit)
                && bytes.get(at + 6) == Some(&b'\\')
                && bytes.get(at + 7) == Some(&b'u')
            {
                if let Some(low @ 0xDC00..=0xDFFF) = hex4(bytes, at + 8) {
                    let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    return Some((12, char::from_u32(code)?));
                }
            }
            Some((
                6,
                char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER),
            ))
        }
        _ => None,
    }
}

/// Decodes the raw content of a string (between the quotes) into `out`.
fn decode_into(content: &str, out: &mut String) -> Option<()> {
    out.clear();
    let bytes = content.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        let backslash = find_byte(bytes, pos, b'\\');
        out.push_str(content.get(pos..backslash)?);
        if backslash >= bytes.len() {
            break;
        }
        let (len, c) = escape_at(bytes, backslash)?;
        out.push(c);
        pos = backslash + len;
    }
    Some(())
}

/// Maps decoded byte offsets (ascending) to raw offsets in `content`. An offset that falls inside
/// the decoding of one escape is rounded to the escape's start, or its end when `round_up`.
fn map_offsets(content: &[u8], targets: &[(usize, bool)]) -> Option<Vec<usize>> {
    let mut mapped = Vec::with_capacity(targets.len());
    let (mut raw, mut decoded) = (0, 0);
    for &(target, round_up) in targets {
        loop {
            if target <= decoded || raw >= content.len() {
                mapped.push(raw);
                break;
            }
            if content.get(raw) != Some(&b'\\') {
                let run_end = find_byte(content, raw, b'\\');
                let run = run_end - raw;
                if target < decoded + run {
                    mapped.push(raw + (target - decoded));
                    break;
                }
                raw = run_end;
                decoded += run;
            } else {
                let (len, c) = escape_at(content, raw)?;
                if target < decoded + c.len_utf8() {
                    mapped.push(if round_up { raw + len } else { raw });
                    break;
                }
                raw += len;
                decoded += c.len_utf8();
            }
        }
    }
    Some(mapped)
}

// ---------------------------------------------------------------------------------------------
// Pass 2: the walk.

/// What an object's `type` member says, as far as the skip list cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectType {
    /// No `type`, a non-string `type`, or `type` members that disagree.
    Unknown,
    Thinking,
    RedactedThinking,
    Base64,
    ToolUse,
    Other,
}

impl ObjectType {
    fn of(name: &str) -> ObjectType {
        match name {
            "thinking" => ObjectType::Thinking,
            "redacted_thinking" => ObjectType::RedactedThinking,
            "base64" => ObjectType::Base64,
            "tool_use" | "server_tool_use" | "mcp_tool_use" => ObjectType::ToolUse,
            _ => ObjectType::Other,
        }
    }
}

/// Inherited by a subtree.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx {
    /// Inside `thinking` text: findings are rewritten only in [`ThinkingMode::Mask`].
    thinking: bool,
    /// Inside tool input or a JSON schema: no skip list.
    free_form: bool,
}

#[derive(Debug, Clone, Copy)]
enum Segment {
    Line(usize),
    Key(usize),
    Index(usize),
}

/// Iterates an object's members as `(key, value)` nodes.
struct Members<'w, 'a> {
    walker: &'w Walker<'a>,
    key: usize,
    end: usize,
}

impl Iterator for Members<'_, '_> {
    type Item = Result<(Node, Node), WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.key >= self.end {
            return None;
        }
        let member = self
            .walker
            .node(self.key)
            .and_then(|key| Ok((key, self.walker.node(self.key + 1)?)));
        match member {
            Ok((key, value)) => {
                self.key = value.next;
                Some(Ok((key, value)))
            }
            Err(e) => {
                self.key = self.end;
                Some(Err(e))
            }
        }
    }
}

struct Walker<'a> {
    engine: &'a Engine,
    text: &'a str,
    opts: WalkOptions,
    nodes: Vec<Node>,
    /// The parser's stack of open objects' keys (kept to reuse its allocation).
    keys: Vec<(usize, usize)>,
    path: Vec<Segment>,
    /// Reused buffer for strings with escapes.
    scratch: String,
    /// Raw spans to replace, in document order, with their placeholders.
    replacements: Vec<(Range<usize>, String)>,
    findings: Findings,
    refusals: Findings,
}

impl<'a> Walker<'a> {
    fn new(engine: &'a Engine, text: &'a str, opts: &WalkOptions) -> Walker<'a> {
        Walker {
            engine,
            text,
            opts: *opts,
            nodes: Vec::new(),
            keys: Vec::new(),
            path: Vec::new(),
            scratch: String::new(),
            replacements: Vec::new(),
            findings: Findings::new(),
            refusals: Findings::new(),
        }
    }

    /// Parses and walks the document in `text[start..end]`.
    fn document(&mut self, start: usize, end: usize, line: Option<usize>) -> Result<(), WalkError> {
        let bytes = self.text.as_bytes();
        let bytes = bytes.get(..end).unwrap_or(bytes);
        self.nodes.clear();
        self.keys.clear();
        Parser {
            bytes,
            pos: start,
            nodes: &mut self.nodes,
            keys: &mut self.keys,
        }
        .document()?;
        self.path.clear();
        if let Some(line) = line {
            self.path.push(Segment::Line(line));
        }
        // A tool input judged on its own is the free-form data itself.
        let ctx = Ctx {
            thinking: false,
            free_form: self.opts.scope == Scope::ToolInput,
        };
        self.value(0, ctx, false)
    }

    fn node(&self, index: usize) -> Result<Node, WalkError> {
        self.nodes
            .get(index)
            .copied()
            .ok_or_else(|| syntax(self.text.len(), "internal: node out of range"))
    }

    /// The raw content of a string node, between its quotes.
    fn content(&self, node: Node) -> &'a str {
        let text: &'a str = self.text;
        text.get(node.start + 1..node.end.saturating_sub(1))
            .unwrap_or_default()
    }

    /// The decoded text of a (short) string node: keys and `type` values.
    fn small_string(&self, node: Node) -> Option<Cow<'a, str>> {
        match node.kind {
            Kind::Str { escaped: false } => Some(Cow::Borrowed(self.content(node))),
            Kind::Str { escaped: true } => {
                let mut decoded = String::new();
                decode_into(self.content(node), &mut decoded)?;
                Some(Cow::Owned(decoded))
            }
            _ => None,
        }
    }

    fn value(&mut self, index: usize, ctx: Ctx, under_source: bool) -> Result<(), WalkError> {
        let node = self.node(index)?;
        match node.kind {
            Kind::Str { escaped } => self.string(node, escaped, ctx),
            Kind::Scalar => Ok(()),
            Kind::Array => {
                let mut child = index + 1;
                let mut position = 0;
                while child < node.next {
                    self.path.push(Segment::Index(position));
                    self.value(child, ctx, false)?;
                    self.path.pop();
                    child = self.node(child)?.next;
                    position += 1;
                }
                Ok(())
            }
            Kind::Object => self.object(index, node, ctx, under_source),
        }
    }

    /// The `(key, value)` node indexes of the object at `index`, in order.
    fn members(&self, index: usize, node: Node) -> Members<'_, 'a> {
        Members {
            walker: self,
            key: index + 1,
            end: node.next,
        }
    }

    fn object_type(&self, index: usize, node: Node) -> Result<ObjectType, WalkError> {
        let mut found: Option<ObjectType> = None;
        for member in self.members(index, node) {
            let (key, value) = member?;
            if self.small_string(key).as_deref() != Some("type") {
                continue;
            }
            let this = match self.small_string(value) {
                Some(name) => ObjectType::of(&name),
                None => return Ok(ObjectType::Unknown),
            };
            if found.is_some_and(|seen| seen != this) {
                return Ok(ObjectType::Unknown);
            }
            found = Some(this);
        }
        Ok(found.unwrap_or(ObjectType::Unknown))
    }

    fn object(
        &mut self,
        index: usize,
        node: Node,
        ctx: Ctx,
        under_source: bool,
    ) -> Result<(), WalkError> {
        let ty = if ctx.free_form {
            ObjectType::Unknown
        } else {
            self.object_type(index, node)?
        };
        let mut key = index + 1;
        while key < node.next {
            let value = key + 1;
            let next = self.node(value)?.next;
            let name = self.small_string(self.node(key)?).unwrap_or_default();
            let mut child = ctx;
            let mut skip = false;
            if !ctx.free_form {
                match (&*name, ty) {
                    ("signature" | "id" | "tool_use_id" | "custom_id" | "model", _)
                    | ("data", ObjectType::RedactedThinking) => skip = true,
                    ("data", ObjectType::Base64) => skip = under_source,
                    ("thinking", ObjectType::Thinking) => child.thinking = true,
                    ("input", ObjectType::ToolUse) | ("input_schema", _) => child.free_form = true,
                    _ => {}
                }
            }
            // Keys are strings too: a secret used as a key (an env map in a tool input, say)
            // must not cross the proxy. They are scanned like values, never as thinking text.
            self.path.push(Segment::Key(key));
            self.value(
                key,
                Ctx {
                    thinking: false,
                    ..ctx
                },
                false,
            )?;
            self.path.pop();
            if !skip {
                let is_source = !ctx.free_form && name == "source";
                self.path.push(Segment::Key(key));
                self.value(value, child, is_source)?;
                self.path.pop();
            }
            key = next;
        }
        Ok(())
    }

    fn string(&mut self, node: Node, escaped: bool, ctx: Ctx) -> Result<(), WalkError> {
        let content = self.content(node);
        let mut scratch = std::mem::take(&mut self.scratch);
        let decoded: &str = if escaped {
            decode_into(content, &mut scratch)
                .ok_or_else(|| syntax(node.start, "invalid escape"))?;
            &scratch
        } else {
            content
        };
        let findings = self.engine.scan(decoded, self.opts.scope)?;
        self.scratch = scratch;
        if findings.is_empty() {
            return Ok(());
        }
        let report_only = ctx.thinking && self.opts.thinking == ThinkingMode::Report;
        let path = self.render_path();
        // Replicates the engine's emission: a rewritten span starting before the end of the
        // previous one replaces only what is left of it.
        let mut cursor = 0;
        let mut regions: Vec<(Range<usize>, &str)> = Vec::new();
        let mut walk_findings = Vec::with_capacity(findings.len());
        for mut finding in findings {
            if report_only {
                finding.rewritten = false;
            }
            walk_findings.push(Located {
                path: path.clone(),
                finding,
            });
        }
        for walk_finding in &walk_findings {
            let finding = &walk_finding.finding;
            if finding.rewritten && finding.span.end > cursor {
                let from = finding.span.start.max(cursor);
                regions.push((from..finding.span.end, &finding.placeholder));
                cursor = finding.span.end;
            }
        }
        let base = node.start + 1;
        if !regions.is_empty() {
            if escaped {
                let targets: Vec<(usize, bool)> = regions
                    .iter()
                    .flat_map(|(r, _)| [(r.start, false), (r.end, true)])
                    .collect();
                let raw = map_offsets(content.as_bytes(), &targets)
                    .ok_or_else(|| syntax(node.start, "invalid escape"))?;
                for (i, (_, placeholder)) in regions.iter().enumerate() {
                    let start = raw.get(2 * i).copied().unwrap_or(0);
                    let end = raw.get(2 * i + 1).copied().unwrap_or(start);
                    self.replacements
                        .push((base + start..base + end, placeholder.to_string()));
                }
            } else {
                for (range, placeholder) in &regions {
                    self.replacements.push((
                        base + range.start..base + range.end,
                        placeholder.to_string(),
                    ));
                }
            }
        }
        self.findings.extend(walk_findings);
        Ok(())
    }

    fn render_path(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            match *segment {
                Segment::Line(line) => out.push_str(&format!("[line {line}]")),
                Segment::Index(index) => out.push_str(&format!("[{index}]")),
                Segment::Key(key) => {
                    let name = self
                        .node(key)
                        .ok()
                        .and_then(|node| self.small_string(node))
                        .unwrap_or_default();
                    let simple = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if simple {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.push_str(&name);
                    } else {
                        out.push('[');
                        push_json_string(&mut out, &name);
                        out.push(']');
                    }
                }
            }
        }
        out
    }

    fn finish(self) -> Walked {
        if self.replacements.is_empty() {
            return Walked {
                body: None,
                findings: self.findings,
                refusals: self.refusals,
            };
        }
        let raw = self.text.as_bytes();
        let extra: usize = self.replacements.iter().map(|(_, p)| p.len()).sum();
        let mut out = Vec::with_capacity(raw.len() + extra);
        let mut copied = 0;
        for (range, placeholder) in &self.replacements {
            let start = range.start.clamp(copied, raw.len());
            let end = range.end.clamp(start, raw.len());
            out.extend_from_slice(raw.get(copied..start).unwrap_or_default());
            push_json_content(&mut out, placeholder);
            copied = end;
        }
        out.extend_from_slice(raw.get(copied..).unwrap_or_default());
        Walked {
            body: Some(out),
            findings: self.findings,
            refusals: self.refusals,
        }
    }
}

/// Appends `text` as the content of a JSON string (escaping only what JSON requires), so even a
/// placeholder from an odd rule id cannot break the document.
fn push_json_content(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if u32::from(c) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn push_json_string(out: &mut String, text: &str) {
    let mut bytes = Vec::with_capacity(text.len() + 2);
    bytes.push(b'"');
    push_json_content(&mut bytes, text);
    bytes.push(b'"');
    out.push_str(&String::from_utf8_lossy(&bytes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::matcher::Matcher;
    use crate::engine::placeholder::PlaceholderKey;
    use crate::engine::rules::RuleSet;
    use proptest::prelude::*;

    const RULES: &str = include_str!("../../tests/fixtures/engine-rules.toml");
    const TOKEN: &str = "tok_abcdefghijklmnopqrstuv";

    fn engine() -> &'static Engine {
        static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
        ENGINE.get_or_init(|| {
            let set = RuleSet::from_toml("engine-rules.toml", RULES).unwrap();
            let matcher = Matcher::compile(&set, 8190).unwrap();
            let key = PlaceholderKey::new(b"0123456789abcdef0123").unwrap();
            Engine::new(matcher, key, 8192).unwrap()
        })
    }

    fn placeholder(engine: &Engine, secret: &str) -> String {
        engine
            .placeholder_key()
            .placeholder("test-token", secret.as_bytes())
    }

    fn walk(raw: &str) -> Walked {
        mask_json(engine(), raw.as_bytes(), &WalkOptions::default()).unwrap()
    }

    fn body(walked: &Walked) -> &str {
        std::str::from_utf8(walked.body.as_deref().unwrap()).unwrap()
    }

    fn syntax_offset(raw: &[u8]) -> usize {
        match mask_json(engine(), raw, &WalkOptions::default()) {
            Err(WalkError::Syntax { offset, .. }) => offset,
            other => panic!("{:?}: expected a syntax error, got {other:?}", raw),
        }
    }

    #[test]
    fn no_findings_is_none() {
        let raw = r#" { "model" : "x", "messages": [ {"role":"user","content":"hi\n\u00e9"} ] , "n": -1.5e3 } "#;
        let walked = walk(raw);
        assert!(walked.body.is_none());
        assert!(walked.findings.is_empty());
    }

    #[test]
    fn masks_plain_string_and_reports_path() {
        let raw = format!(
            r#"{{"messages":[{{"content":[{{"type":"text","text":"use {TOKEN} now"}}]}}]}}"#
        );
        let walked = walk(&raw);
        let expected = raw.replace(TOKEN, &placeholder(engine(), TOKEN));
        assert_eq!(body(&walked), expected);
        assert_eq!(walked.findings.len(), 1);
        let f = &walked.findings[0];
        assert_eq!(f.path, "messages[0].content[0].text");
        assert_eq!(f.finding.span, 4..4 + TOKEN.len());
        assert!(f.finding.rewritten);
    }

    #[test]
    fn escapes_around_and_inside_secret() {
        // `\u0063` is `c`, inside the secret; `\n`, `\"`, `\u00e9` and a surrogate pair around.
        let raw = r#"{"text":"\ud83d\ude00\u00e9\n\"tok_ab\u0063defghijklmnopqrstuv\"\t x"}"#;
        let walked = walk(raw);
        let ph = placeholder(engine(), TOKEN);
        let expected = format!(r#"{{"text":"\ud83d\ude00\u00e9\n\"{ph}\"\t x"}}"#);
        assert_eq!(body(&walked), expected);
        // "😀" (4) + "é" (2) + "\n" (1) + "\"" (1) = 8 decoded bytes before the secret.
        assert_eq!(walked.findings[0].finding.span, 8..8 + TOKEN.len());
    }

    #[test]
    fn secret_made_entirely_of_escapes() {
        let escaped: String = TOKEN
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let raw = format!(r#"["{escaped}"]"#);
        let walked = walk(&raw);
        assert_eq!(
            body(&walked),
            format!(r#"["{}"]"#, placeholder(engine(), TOKEN))
        );
        assert_eq!(walked.findings[0].path, "[0]");
    }

    #[test]
    fn skip_list() {
        let t = TOKEN;
        let raw = format!(
            r#"{{"model":"{t}","id":"{t}","custom_id":"{t}","content":[
              {{"data":"{t}","type":"redacted_thinking"}},
              {{"type":"thinking","thinking":"x","signature":"{t}"}},
              {{"type":"image","source":{{"data":"{t}","media_type":"image/png","type":"base64"}}}},
              {{"type":"tool_result","tool_use_id":"{t}","content":"x"}}]}}"#
        );
        let walked = walk(&raw);
        assert!(walked.body.is_none(), "{:?}", walked.findings);
        assert!(walked.findings.is_empty());
    }

    #[test]
    fn data_is_scanned_unless_the_type_says_opaque() {
        let t = TOKEN;
        // A base64 object not under `source`, a `source` of another type, a plain `data`.
        let raw = format!(
            r#"{{"a":{{"type":"base64","data":"{t}"}},"source":{{"type":"text","data":"{t}"}},"data":"{t}"}}"#
        );
        let walked = walk(&raw);
        let paths: Vec<_> = walked.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.data", "source.data", "data"]);
        assert!(!body(&walked).contains(t));
    }

    #[test]
    fn conflicting_types_skip_nothing() {
        let raw = format!(r#"{{"type":"redacted_thinking","data":"{TOKEN}","type":"text"}}"#);
        assert!(duplicate_at(&raw).is_some());
        let raw = format!(r#"{{"type":["redacted_thinking"],"data":"{TOKEN}"}}"#);
        assert_eq!(walk(&raw).findings.len(), 1);
    }

    #[test]
    fn escaped_keys_and_types_are_decoded() {
        let raw = format!(
            r#"{{"sig\u006eature":"{TOKEN}","x":{{"type":"redacted_\u0074hinking","data":"{TOKEN}"}}}}"#
        );
        assert!(walk(&raw).findings.is_empty());
    }

    #[test]
    fn tool_input_and_schema_have_no_skip_list() {
        let t = TOKEN;
        let raw = format!(
            r#"{{"content":[{{"type":"tool_use","id":"toolu_1","name":"x","input":{{"id":"{t}","model":"{t}"}}}}],
               "tools":[{{"name":"x","input_schema":{{"properties":{{"id":{{"description":"{t}"}}}}}}}}]}}"#
        );
        let walked = walk(&raw);
        let paths: Vec<_> = walked.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "content[0].input.id",
                "content[0].input.model",
                "tools[0].input_schema.properties.id.description"
            ]
        );
    }

    #[test]
    fn tool_input_scope_has_no_skip_list() {
        let raw = format!(r#"{{"id":"{TOKEN}","signature":"{TOKEN}"}}"#);
        let opts = WalkOptions {
            scope: Scope::ToolInput,
            ..WalkOptions::default()
        };
        let walked = mask_json(engine(), raw.as_bytes(), &opts).unwrap();
        let paths: Vec<_> = walked.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["id", "signature"]);
    }

    #[test]
    fn thinking_report_and_mask() {
        let raw = format!(
            r#"{{"content":[{{"type":"thinking","thinking":"the key is {TOKEN}","signature":"sig"}}]}}"#
        );
        let engine = engine();
        let report = mask_json(engine, raw.as_bytes(), &WalkOptions::default()).unwrap();
        assert!(report.body.is_none());
        assert_eq!(report.findings.len(), 1);
        assert!(!report.findings[0].finding.rewritten);
        assert_eq!(report.findings[0].path, "content[0].thinking");

        let opts = WalkOptions {
            thinking: ThinkingMode::Mask,
            ..WalkOptions::default()
        };
        let masked = mask_json(engine, raw.as_bytes(), &opts).unwrap();
        assert!(masked.findings[0].finding.rewritten);
        assert_eq!(
            body(&masked),
            raw.replace(TOKEN, &placeholder(engine, TOKEN))
        );
    }

    #[test]
    fn audit_findings_are_reported_not_rewritten() {
        let walked = walk(r#"{"text":"audit_123456"}"#);
        assert!(walked.body.is_none());
        assert_eq!(walked.findings[0].finding.rule_id, "test-audit");
    }

    #[test]
    fn odd_keys_are_quoted_in_paths() {
        let raw = format!(r#"{{"a b":{{"k\"":["{TOKEN}"]}}}}"#);
        assert_eq!(walk(&raw).findings[0].path, r#"["a b"]["k\""][0]"#);
        assert_eq!(walk(&format!(r#""{TOKEN}""#)).findings[0].path, "");
    }

    #[test]
    fn jsonl_keeps_lines() {
        let raw = format!(
            "{{\"custom_id\":\"{TOKEN}\",\"x\":\"{TOKEN}\"}}\n\n  \r\n[\"{TOKEN}\"]\r\n{{}}"
        );
        let engine = engine();
        let walked = mask_jsonl(engine, raw.as_bytes(), &WalkOptions::default()).unwrap();
        let paths: Vec<_> = walked.findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["[line 1].x", "[line 4][0]"]);
        let ph = placeholder(engine, TOKEN);
        let expected =
            format!("{{\"custom_id\":\"{TOKEN}\",\"x\":\"{ph}\"}}\n\n  \r\n[\"{ph}\"]\r\n{{}}");
        assert_eq!(body(&walked), expected);
        assert!(mask_jsonl(engine, b"", &WalkOptions::default())
            .unwrap()
            .body
            .is_none());
        match mask_jsonl(engine, b"{}\n{]\n", &WalkOptions::default()) {
            Err(WalkError::Syntax { offset: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_have_offsets() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"   ", 3),
            (b"{} x", 3),
            (b"{}{}", 2),
            (b"[1,]", 3),
            (b"[1 2]", 3),
            (b"{\"a\" 1}", 5),
            (b"{\"a\":1,}", 7),
            (b"{1:2}", 1),
            (b"[\"a\\x\"]", 3),
            (b"[\"a\\u12g4\"]", 3),
            (b"[\"a\x01\"]", 3),
            (b"[\"a\nb\"]", 3),
            (b"[\"abc", 1),
            (b"[\"ab\xffc\"]", 4),
            (b"[\xc3]", 1),
            (b"[01]", 2),
            (b"[1.]", 3),
            (b"[1e]", 3),
            (b"[-]", 2),
            (b"[+1]", 1),
            (b"[.5]", 1),
            (b"[tru]", 4),
            (b"[nul", 4),
            (b"[", 1),
            (b"{", 1),
            (b"{\"a\":", 5),
            (b"[1,2", 4),
            (b"\xef\xbb\xbf{}", 0),
        ];
        for &(raw, offset) in cases {
            assert_eq!(
                syntax_offset(raw),
                offset,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    fn duplicate_at(raw: &str) -> Option<usize> {
        match mask_json(engine(), raw.as_bytes(), &WalkOptions::default()) {
            Err(WalkError::DuplicateKey { offset }) => Some(offset),
            _ => None,
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_and_in_any_spelling() {
        assert_eq!(duplicate_at(r#"{"model":"a","model":"b"}"#), Some(13));
        assert_eq!(duplicate_at(r#"{"a":{"b":1,"c":2,"b":3}}"#), Some(18));
        // One key to every reader, whatever the escapes.
        assert!(duplicate_at(r#"{"text":"x","t\u0065xt":"y"}"#).is_some());
        assert!(duplicate_at(r#"[{"k":1},{"k":2,"j":{"k":3}}]"#).is_none());
        // Keys of a nested object do not collide with the enclosing object's.
        assert!(duplicate_at(r#"{"k":{"k":{"k":1}},"j":2}"#).is_none());
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!("{{{}}}", many.join(","));
        assert!(duplicate_at(&body).is_none());
        let body = format!("{{{},\"k17\":0}}", many.join(","));
        assert!(duplicate_at(&body).is_some());
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(walk(&ok).body.is_none());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(matches!(
            mask_json(engine(), deep.as_bytes(), &WalkOptions::default()),
            Err(WalkError::TooDeep(MAX_DEPTH))
        ));
        let deep_objects = "{\"a\":".repeat(MAX_DEPTH + 1);
        assert!(matches!(
            mask_json(engine(), deep_objects.as_bytes(), &WalkOptions::default()),
            Err(WalkError::TooDeep(MAX_DEPTH))
        ));
    }

    #[test]
    fn lone_surrogates_are_accepted_and_kept() {
        let raw = format!(r#"["\ud800 {TOKEN} \udc00x\ud83d"]"#);
        let walked = walk(&raw);
        let ph = placeholder(engine(), TOKEN);
        assert_eq!(body(&walked), format!(r#"["\ud800 {ph} \udc00x\ud83d"]"#));
        // U+FFFD is 3 bytes.
        assert_eq!(walked.findings[0].finding.span, 4..4 + TOKEN.len());
    }

    #[test]
    fn escape_decoding() {
        let mut out = String::new();
        decode_into(r#"a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\ud800z"#, &mut out).unwrap();
        assert_eq!(out, "a\"\\/\u{8}\u{c}\n\r\té😀\u{fffd}z");
    }

    #[test]
    fn offset_mapping_rounds_outward_inside_escapes() {
        let content = br#"ab\u00e9\ud83d\ude00cd"#;
        // decoded: a b é(2) 😀(4) c d
        let targets = [
            (0, false),
            (2, false),
            (3, false),
            (3, true),
            (4, false),
            (8, true),
            (9, false),
            (10, true),
        ];
        let mapped = map_offsets(content, &targets).unwrap();
        assert_eq!(mapped, [0, 2, 2, 8, 8, 20, 21, 22]);
    }

    #[test]
    fn special_byte_scanner() {
        let mut text = vec![b'a'; 40];
        assert_eq!(find_special(&text, 0), 40);
        for (i, b) in [(0usize, b'"'), (7, b'\\'), (8, 0x1f), (15, 0), (33, b'"')] {
            let mut t = text.clone();
            t[i] = b;
            assert_eq!(find_special(&t, 0), i);
            assert_eq!(find_byte(&t, 0, b), i);
        }
        text[39] = 0x80;
        assert_eq!(find_special(&text, 0), 40);
        assert_eq!(find_special(&text, 50), 50);
        assert_eq!(find_byte(&text, 50, b'a'), 50);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let engine = engine();
            let _ = mask_json(engine, &raw, &WalkOptions::default());
            let _ = mask_jsonl(engine, &raw, &WalkOptions::default());
        }

        #[test]
        fn json_alphabet_never_panics(raw in "[\\[\\]{}\":,\\\\ u0-9a-fetrn.+-]{0,64}") {
            let engine = engine();
            let _ = mask_json(engine, raw.as_bytes(), &WalkOptions::default());
            let _ = mask_jsonl(engine, raw.as_bytes(), &WalkOptions::default());
        }

        #[test]
        fn scanner_matches_naive(raw in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'\\'), Just(b'"'), Just(0u8), Just(0x80u8)], 0..64), from in 0usize..70) {
            let naive = raw.iter().enumerate().skip(from)
                .find(|(_, &b)| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(raw.len().max(from), |(i, _)| i);
            prop_assert_eq!(find_special(&raw, from), naive);
            for needle in [b'\\', b'\n', 0, 0x80, 0xff] {
                let naive = raw.iter().enumerate().skip(from)
                    .find(|(_, &b)| b == needle)
                    .map_or(raw.len().max(from), |(i, _)| i);
                prop_assert_eq!(find_byte(&raw, from, needle), naive);
            }
        }
    }
}
