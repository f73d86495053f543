//! The JSON walker: masks secrets in a JSON body (a Messages API request, a non-streamed
//! response, a batch results file) by scanning its string values with the [`Engine`] and
//! rewriting only the raw bytes of the secrets it finds.
//!
//! Invariants (these are the tests, here and in `tests/json_walk.rs`):
//! 1. **Strict.** The input is one RFC 8259 JSON value (or, for [`mask_jsonl`], one per
//!    non-blank line): invalid UTF-8, control characters in strings, invalid escapes, bad numbers
//!    and trailing garbage are [`WalkError::Syntax`] with the byte offset of the problem;
//!    containers nested deeper than [`MAX_DEPTH`] are [`WalkError::TooDeep`]; duplicate keys are
//!    [`WalkError::DuplicateKey`]. No input panics. A lone UTF-16 surrogate escape (`\ud800`) is
//!    grammatical JSON (RFC 8259 §8.2) and scanned as U+FFFD. With [`WalkOptions::lenient`]
//!    (response bodies) a leading UTF-8 BOM (kept byte-identical) and the scalars `NaN`,
//!    `Infinity` and `-Infinity` are accepted too; nothing else is.
//! 2. **Every string is scanned, no skip list, fail closed.** Values whatever their key and
//!    object keys themselves, in both directions. Values that cannot carry a placeholder are
//!    scanned like the rest, but a finding there that would be rewritten is *not* rewritten: it
//!    goes to [`Walked::refusals`] and the caller must not forward the document. Those values
//!    are whole subtrees under the keys `signature`, `id`, `tool_use_id`, `custom_id` and `model`
//!    at any depth, `data` of an object whose `type` is `redacted_thinking`, and `data` of a
//!    `source` object whose `type` is `base64`. When such a `source` has a `text/…` `media_type`
//!    (a plain-text document), the base64 is decoded and the text scanned as well (a finding is
//!    a refusal at `….source.data`). `type` is decided with the whole object in view (`type` may
//!    follow `data`); `type` members that disagree or are not strings make no type.
//! 3. **Free-form subtrees are ordinary data.** The `input` of a tool call (`type` `tool_use`,
//!    `server_tool_use` or `mcp_tool_use`), any `input_schema`, and a whole document walked with
//!    [`Scope::ToolInput`]: no key in there is special, so an `id` in a tool input is masked,
//!    never refused.
//! 4. **Escapes that survive decoding are undone for the scan.** A decoded string that still
//!    holds escapes (PHP's `\/`, .NET's `\u002B`, a token after a literal `\n`, Python's `\x41`
//!    and `\'`, JSON inside a JSON string) is also scanned in its unescaped views (up to
//!    [`MAX_VIEW_LEVELS`] levels, see [`crate::engine::unescape`]). A finding in a view covers
//!    whole escape sequences of the decoded string and then of the raw body; the same secret seen
//!    in several views is one finding, and overlapping replacements are merged (the longer one
//!    first, the rest replaces only what is left), so no byte is replaced twice.
//! 5. **The joined view.** The text the model reads — `text` of `text` blocks, string `content`
//!    of messages (objects with a `role`) and tool results, string `system` — is one sequence in
//!    document order, joined without separator (per document; per line in JSON Lines). A
//!    finding the per-string scans did not make (a secret cut across blocks, turns or a tool
//!    result's blocks, or a keyword in one part and its value in the next) is masked in every
//!    part it covers, each part's portion replaced by the same placeholder, and reported once at
//!    the path of its first part (its span starts in that part and may run past its end). Only
//!    windows around the boundaries are scanned (a match is at most the engine's longest rule),
//!    and the decoded texts are reused, not decoded again.
//! 6. **Thinking.** The `thinking` text of an object whose `type` is `thinking` is scanned; its
//!    findings are rewritten only with [`ThinkingMode::Mask`] (rewriting breaks the block's
//!    signature), reported with `rewritten = false` in [`ThinkingMode::Report`]. With a
//!    [`ThinkingRestore`] hook ([`mask_json_with`]), a block whose `signature` the hook knows gets
//!    its original text back (JSON-encoded) and is not scanned: it is the upstream's own text.
//! 7. **Only masked spans change.** Without a replacement the body is `None` and the caller
//!    forwards the original bytes. Otherwise the output is the input with exactly the raw bytes
//!    of each masked span (escapes included) replaced by the placeholder, inserted JSON-escaped.
//!    Whitespace, key order, number spellings and every other escape are byte-identical. For a
//!    string without second-level escapes that is no joined part, decoding the rewritten string
//!    gives exactly what [`Engine::mask`] makes of the decoded input string.
//! 8. **Findings.** Every finding is in exactly one of [`Walked::findings`] and
//!    [`Walked::refusals`], each in document order. Spans are byte spans in the *decoded* string
//!    named by `path` (`messages[3].content[0].text`; a key that is not `[A-Za-z0-9_-]+` is
//!    written `["key"]`); for a refusal in a base64 text document, in the decoded document text.
//!
//! Speed: one pass builds a flat tree of raw spans (strings are scanned eight bytes at a time
//! and the whole input is UTF-8-validated once), a second pass walks it. A string without
//! escapes is handed to the engine as a slice of the input; only strings with escapes are
//! decoded, into one reused buffer; only decoded strings that still hold a backslash get views.
//! Everything is linear in the body: the joined view is one Hyperscan pass over windows around
//! part boundaries, and findings are only sought in them when a candidate reaches a boundary.

use crate::engine::findings::{Findings, Located};
use crate::engine::masker::{Budget, Engine, Finding, MaskError};
use crate::engine::rules::Scope;
use crate::engine::unescape::View;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;

/// Containers may nest this deep; one more is [`WalkError::TooDeep`].
pub const MAX_DEPTH: usize = 256;

/// How many levels of escapes below the JSON decoding are undone for the scan (a string
/// escaped twice more than JSON needs: JSON in a JSON string in a tool result).
pub const MAX_VIEW_LEVELS: usize = 3;

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
    /// Findings in values that cannot carry a placeholder (subtrees under `signature`, `id`,
    /// `tool_use_id`, `custom_id`, `model`; `redacted_thinking.data`; base64 `source.data` and
    /// the decoded text of a base64 `text/…` document), outside free-form tool input: the
    /// findings that would have been rewritten anywhere else (a `mask` rule; `block`/`approve`
    /// outside requests). They are left in place (`rewritten == false`) and not repeated in
    /// `findings`; the caller must not forward the document — a request is refused with a 400
    /// naming path and rule, a response stream is ended with an `error` event. Report-only
    /// findings in such values (`audit`, `block`/`approve` in a request) are in `findings`.
    pub refusals: Findings,
    /// With [`mask_json_learning`]: every distinct placeholder the rewrite put in, with the
    /// text it replaced (the restore vault's input). Empty otherwise.
    pub learned: Vec<Learned>,
    /// With [`mask_json_learning`]: the byte ranges, in the output (the rewritten body, or the
    /// original when unchanged), of the `thinking` strings of signed blocks — the upstream's
    /// own signed text, which nothing after the walk may rewrite. Sorted.
    pub signed_thinking: Vec<Range<usize>>,
}

/// A placeholder and the exact text it replaced. `Debug` prints neither the text nor anything
/// derived from it beyond its length: a `Learned` holds a raw secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Learned {
    /// The engine's index of the rule that found it.
    pub rule: u32,
    pub placeholder: String,
    pub secret: String,
}

impl std::fmt::Debug for Learned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learned")
            .field("rule", &self.rule)
            .field("placeholder", &self.placeholder)
            .field("secret_bytes", &self.secret.len())
            .finish()
    }
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

/// Puts back the original of a thinking text the proxy masked earlier (a later component keeps
/// originals by signature). Given a `thinking` block's `signature` and the text it now shows,
/// returns the original text when it knows the pair, `None` otherwise.
pub trait ThinkingRestore {
    fn restore(&self, signature: &str, shown: &str) -> Option<String>;
}

/// The UTF-8 byte-order mark a lenient reader skips.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Masks the string values of one JSON document. See the module docs for what is scanned and
/// what may change.
pub fn mask_json(engine: &Engine, raw: &[u8], opts: &WalkOptions) -> Result<Walked, WalkError> {
    mask_json_with(engine, raw, opts, None)
}

/// [`mask_json`] with a hook that puts back the original text of `thinking` blocks it knows.
pub fn mask_json_with(
    engine: &Engine,
    raw: &[u8],
    opts: &WalkOptions,
    restore: Option<&dyn ThinkingRestore>,
) -> Result<Walked, WalkError> {
    mask_json_within(engine, raw, opts, restore, None)
}

/// [`mask_json_with`] charged to a masking time budget: every scan of the walk counts against
/// it, and the walk ends with [`MaskError::OverBudget`] (inside [`WalkError::Mask`]) once it
/// is spent.
pub fn mask_json_within(
    engine: &Engine,
    raw: &[u8],
    opts: &WalkOptions,
    restore: Option<&dyn ThinkingRestore>,
    budget: Option<&Budget>,
) -> Result<Walked, WalkError> {
    walk_document(engine, raw, opts, restore, budget, false)
}

/// [`mask_json_within`] that also reports, in [`Walked::learned`], each distinct placeholder it
/// wrote with the text it replaced (what the proxy may later give back to the same caller),
/// and in [`Walked::signed_thinking`] where the signed thinking is.
pub fn mask_json_learning(
    engine: &Engine,
    raw: &[u8],
    opts: &WalkOptions,
    restore: Option<&dyn ThinkingRestore>,
    budget: Option<&Budget>,
) -> Result<Walked, WalkError> {
    walk_document(engine, raw, opts, restore, budget, true)
}

fn walk_document(
    engine: &Engine,
    raw: &[u8],
    opts: &WalkOptions,
    restore: Option<&dyn ThinkingRestore>,
    budget: Option<&Budget>,
    learn: bool,
) -> Result<Walked, WalkError> {
    let text = validate_utf8(raw)?;
    let start = if opts.lenient && raw.starts_with(BOM) {
        BOM.len()
    } else {
        0
    };
    let mut walker = Walker::new(engine, text, opts, restore, budget);
    if learn {
        walker.learning = Some(HashMap::new());
    }
    walker.document(start, raw.len(), None)?;
    Ok(walker.finish())
}

/// Masks a JSON Lines body (batch results): one JSON value per line, blank lines allowed and
/// kept. Line numbers in paths start at 1; error offsets are offsets in the whole body. The
/// joined view is per line.
pub fn mask_jsonl(engine: &Engine, raw: &[u8], opts: &WalkOptions) -> Result<Walked, WalkError> {
    let text = validate_utf8(raw)?;
    let mut walker = Walker::new(engine, text, opts, None, None);
    let mut start = if opts.lenient && raw.starts_with(BOM) {
        BOM.len()
    } else {
        0
    };
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
    /// Accept `NaN`, `Infinity` and `-Infinity` as scalars ([`WalkOptions::lenient`]).
    lenient: bool,
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
            Some(b'N') if self.lenient => self.literal(b"NaN"),
            Some(b'I') if self.lenient => self.literal(b"Infinity"),
            Some(b'-') if self.lenient && self.bytes.get(self.pos + 1) == Some(&b'I') => {
                self.literal(b"-Infinity")
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

/// What an object's `type` member says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjectType {
    /// No `type`, a non-string `type`, or `type` members that disagree.
    Unknown,
    Text,
    Thinking,
    RedactedThinking,
    Base64,
    ToolUse,
    ToolResult,
    Other,
}

impl ObjectType {
    fn of(name: &str) -> ObjectType {
        match name {
            "text" => ObjectType::Text,
            "thinking" => ObjectType::Thinking,
            "redacted_thinking" => ObjectType::RedactedThinking,
            "base64" => ObjectType::Base64,
            "tool_use" | "server_tool_use" | "mcp_tool_use" => ObjectType::ToolUse,
            "tool_result" => ObjectType::ToolResult,
            _ => ObjectType::Other,
        }
    }
}

/// What the walk needs to know about an object before walking its members.
#[derive(Debug, Clone, Copy)]
struct ObjectInfo {
    ty: ObjectType,
    /// Has a `role` member: a message, whose string `content` the model reads as text.
    message: bool,
    /// `media_type` is a `text/…` string: the base64 `data` of such a `source` is text.
    text_media: bool,
    /// The node of the string value of `signature`, if any.
    signature: Option<usize>,
}

/// Inherited by a subtree.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx {
    /// Inside `thinking` text: findings are rewritten only in [`ThinkingMode::Mask`].
    thinking: bool,
    /// Inside tool input or a JSON schema: no field is special.
    free_form: bool,
    /// Inside a value that cannot carry a placeholder: findings are refusals.
    refuse: bool,
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

/// One string of the joined view (the text the model reads, in document order).
#[derive(Debug)]
struct Part {
    /// Offset of the string's decoded text in [`Walker::joined`].
    at: usize,
    len: usize,
    /// Raw span of the string's content (between the quotes) in the body.
    content: Range<usize>,
    escaped: bool,
    /// Where the string is (rendered only for a finding of the joined view: most parts have
    /// none, and rendering costs more than copying these).
    path: Vec<Segment>,
    /// The per-string findings (rule, decoded span), so the joined scan reports only new ones.
    found: Vec<(u32, Range<usize>)>,
}

/// A finding with its place in document order: (raw start of its string, decoded start).
type Ordered = ((usize, usize), Located);

struct Walker<'a> {
    engine: &'a Engine,
    text: &'a str,
    opts: WalkOptions,
    restore: Option<&'a dyn ThinkingRestore>,
    /// The request's masking time budget, charged by every scan.
    budget: Option<&'a Budget>,
    nodes: Vec<Node>,
    /// The parser's stack of open objects' keys (kept to reuse its allocation).
    keys: Vec<(usize, usize)>,
    path: Vec<Segment>,
    /// Reused buffer for strings with escapes.
    scratch: String,
    /// Reused buffer for unescaped views.
    view: View,
    /// Raw spans to replace and the JSON string content that replaces them.
    replacements: Vec<(Range<usize>, String)>,
    findings: Vec<Ordered>,
    refusals: Vec<Ordered>,
    /// The decoded texts of the current document's parts, concatenated.
    joined: String,
    parts: Vec<Part>,
    /// Placeholder → (rule, replaced text), kept only by [`mask_json_learning`].
    learning: Option<HashMap<String, (u32, String)>>,
    /// Raw ranges of the `thinking` strings of signed blocks (learning only).
    signed_thinking: Vec<Range<usize>>,
}

impl<'a> Walker<'a> {
    fn new(
        engine: &'a Engine,
        text: &'a str,
        opts: &WalkOptions,
        restore: Option<&'a dyn ThinkingRestore>,
        budget: Option<&'a Budget>,
    ) -> Walker<'a> {
        Walker {
            engine,
            text,
            opts: *opts,
            restore,
            budget,
            // A node per value and per key, the smallest taking a few bytes: room for a short
            // document's, grown from there for a long one (a request's body: not grown from
            // nothing four times).
            nodes: Vec::with_capacity((text.len() / 8).clamp(16, 512)),
            keys: Vec::with_capacity(16),
            path: Vec::new(),
            scratch: String::new(),
            view: View::new(),
            replacements: Vec::new(),
            findings: Vec::new(),
            refusals: Vec::new(),
            joined: String::new(),
            parts: Vec::new(),
            learning: None,
            signed_thinking: Vec::new(),
        }
    }

    /// Remember what `placeholder` replaced, when learning: the first text seen for it wins
    /// (a placeholder names its text by a keyed hash, so a second one is the same text).
    fn learn(&mut self, rule: u32, placeholder: &str, secret: &str) {
        if let Some(learning) = self.learning.as_mut() {
            if !secret.is_empty() && !learning.contains_key(placeholder) {
                learning.insert(placeholder.to_string(), (rule, secret.to_string()));
            }
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
            lenient: self.opts.lenient,
        }
        .document()?;
        self.path.clear();
        if let Some(line) = line {
            self.path.push(Segment::Line(line));
        }
        // A tool input judged on its own is the free-form data itself.
        let ctx = Ctx {
            free_form: self.opts.scope == Scope::ToolInput,
            ..Ctx::default()
        };
        self.joined.clear();
        self.parts.clear();
        self.value(0, ctx, false)?;
        self.joined_scan()
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

    /// The decoded text of a string node (keys, `type` values, signatures).
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
            Kind::Str { escaped } => self.string(node, escaped, ctx, false),
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

    fn object_info(&self, index: usize, node: Node) -> Result<ObjectInfo, WalkError> {
        let mut found: Option<ObjectType> = None;
        let mut info = ObjectInfo {
            ty: ObjectType::Unknown,
            message: false,
            text_media: false,
            signature: None,
        };
        let mut conflict = false;
        for member in self.members(index, node) {
            let (key, value) = member?;
            let Some(name) = self.small_string(key) else {
                continue;
            };
            match &*name {
                "type" => {
                    let this = match self.small_string(value) {
                        Some(name) => ObjectType::of(&name),
                        None => {
                            conflict = true;
                            continue;
                        }
                    };
                    conflict |= found.is_some_and(|seen| seen != this);
                    found = Some(this);
                }
                "role" => info.message = true,
                "media_type" => {
                    info.text_media = self
                        .small_string(value)
                        .is_some_and(|m| m.trim_start().to_ascii_lowercase().starts_with("text/"))
                }
                "signature" if matches!(value.kind, Kind::Str { .. }) => {
                    info.signature = Some(key.next)
                }
                _ => {}
            }
        }
        if !conflict {
            info.ty = found.unwrap_or(ObjectType::Unknown);
        }
        Ok(info)
    }

    fn object(
        &mut self,
        index: usize,
        node: Node,
        ctx: Ctx,
        under_source: bool,
    ) -> Result<(), WalkError> {
        let info = if ctx.free_form {
            ObjectInfo {
                ty: ObjectType::Unknown,
                message: false,
                text_media: false,
                signature: None,
            }
        } else {
            self.object_info(index, node)?
        };
        let mut key = index + 1;
        while key < node.next {
            let value = key + 1;
            let value_node = self.node(value)?;
            let next = value_node.next;
            let name = self.small_string(self.node(key)?).unwrap_or_default();
            let mut child = ctx;
            let mut part = false;
            let mut base64_text = false;
            let mut thinking = false;
            if !ctx.free_form {
                match (&*name, info.ty) {
                    ("signature" | "id" | "tool_use_id" | "custom_id" | "model", _)
                    | ("data", ObjectType::RedactedThinking) => child.refuse = true,
                    ("data", ObjectType::Base64) if under_source => {
                        child.refuse = true;
                        base64_text = info.text_media;
                    }
                    ("thinking", ObjectType::Thinking) => {
                        child.thinking = true;
                        thinking = true;
                    }
                    ("input", ObjectType::ToolUse) | ("input_schema", _) => child.free_form = true,
                    ("text", ObjectType::Text) | ("system", _) => part = true,
                    ("content", ObjectType::ToolResult) => part = true,
                    ("content", _) => part = info.message,
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
            let replaced_before = self.replacements.len();
            let restored = thinking && self.restore_thinking(info.signature, value_node)?;
            if !restored {
                match value_node.kind {
                    Kind::Str { escaped } => {
                        self.string(value_node, escaped, child, part && !child.refuse)?;
                        if base64_text {
                            self.base64_text(value_node, child)?;
                        }
                    }
                    _ => {
                        let is_source = !ctx.free_form && name == "source";
                        self.value(value, child, is_source)?;
                    }
                }
            }
            // Signed thinking the walk left as it was (or put back whole) is the upstream's own
            // text under its signature: nothing after the walk may rewrite it. A block the walk
            // rewrote has lost its signature anyway.
            if thinking
                && info.signature.is_some()
                && self.learning.is_some()
                && (restored || self.replacements.len() == replaced_before)
            {
                self.signed_thinking.push(value_node.start..value_node.end);
            }
            self.path.pop();
            key = next;
        }
        Ok(())
    }

    /// Puts back the original of a thinking text the hook knows (by the block's signature):
    /// the string is replaced whole and not scanned. `false` when there is nothing to restore.
    fn restore_thinking(
        &mut self,
        signature: Option<usize>,
        value: Node,
    ) -> Result<bool, WalkError> {
        let (Some(restore), Some(signature)) = (self.restore, signature) else {
            return Ok(false);
        };
        let signature = self.node(signature)?;
        let (Some(signature), Some(shown)) =
            (self.small_string(signature), self.small_string(value))
        else {
            return Ok(false);
        };
        let Some(original) = restore.restore(&signature, &shown) else {
            return Ok(false);
        };
        if original != *shown {
            let mut encoded = Vec::with_capacity(original.len());
            push_json_content(&mut encoded, &original);
            self.replacements.push((
                value.start + 1..value.end.saturating_sub(1),
                String::from_utf8_lossy(&encoded).into_owned(),
            ));
        }
        Ok(true)
    }

    /// Scans one string: its decoded text and, when that holds escapes of its own, its
    /// unescaped view; records findings, refusals and replacements. A `part` also joins the
    /// joined view.
    fn string(&mut self, node: Node, escaped: bool, ctx: Ctx, part: bool) -> Result<(), WalkError> {
        let content = self.content(node);
        let mut scratch = std::mem::take(&mut self.scratch);
        let decoded: &str = if escaped {
            decode_into(content, &mut scratch)
                .ok_or_else(|| syntax(node.start, "invalid escape"))?;
            &scratch
        } else {
            content
        };
        let mut findings = self
            .engine
            .scan_within(decoded, self.opts.scope, self.budget)?;
        // Only a string with an escape can decode to a backslash.
        let levels = if escaped && decoded.contains('\\') {
            self.view.build(decoded, MAX_VIEW_LEVELS)
        } else {
            0
        };
        let seen = findings.len();
        if levels > 0 {
            // The same secret seen in several views is one finding.
            let mut known: HashSet<(u32, usize, usize)> = findings
                .iter()
                .map(|f| (f.rule, f.span.start, f.span.end))
                .collect();
            for level in 0..levels {
                for mut finding in
                    self.engine
                        .scan_within(self.view.text(level), self.opts.scope, self.budget)?
                {
                    finding.span = self.view.to_decoded(level, &finding.span);
                    if known.insert((finding.rule, finding.span.start, finding.span.end)) {
                        findings.push(finding);
                    }
                }
            }
        }
        if findings.len() > seen {
            findings.sort_by_key(|f| f.span.start);
        }
        if part && !decoded.is_empty() {
            let at = self.joined.len();
            self.joined.push_str(decoded);
            self.parts.push(Part {
                at,
                len: decoded.len(),
                content: node.start + 1..node.end.saturating_sub(1),
                escaped,
                path: self.path.clone(),
                found: findings.iter().map(|f| (f.rule, f.span.clone())).collect(),
            });
        }
        if self.learning.is_some() {
            for finding in findings.iter().filter(|f| f.rewritten) {
                let secret = decoded.get(finding.span.clone()).unwrap_or_default();
                if !(ctx.refuse || ctx.thinking && self.opts.thinking == ThinkingMode::Report) {
                    self.learn(finding.rule, &finding.placeholder, secret);
                }
            }
        }
        self.scratch = scratch;
        if findings.is_empty() {
            return Ok(());
        }
        let path = self.render_path();
        let mut regions: Vec<(Range<usize>, String)> = Vec::new();
        for mut finding in findings {
            let order = (node.start, finding.span.start);
            if ctx.refuse && finding.rewritten {
                self.record(order, &path, finding, true);
                continue;
            }
            if ctx.thinking && self.opts.thinking == ThinkingMode::Report {
                finding.rewritten = false;
            }
            if finding.rewritten {
                regions.push((finding.span.clone(), finding.placeholder.clone()));
            }
            self.record(order, &path, finding, false);
        }
        self.replace(node.start + 1, content, escaped, regions)
    }

    /// Records replacements for decoded spans of the string whose raw content (between the
    /// quotes) is `content`, starting at byte `base` of the body.
    fn replace(
        &mut self,
        base: usize,
        content: &str,
        escaped: bool,
        regions: Vec<(Range<usize>, String)>,
    ) -> Result<(), WalkError> {
        if regions.is_empty() {
            return Ok(());
        }
        let mut raw: Vec<Range<usize>> = regions.iter().map(|(r, _)| r.clone()).collect();
        if escaped {
            // Offsets are mapped in one pass, so in ascending order.
            let mut targets: Vec<(usize, bool, usize)> = raw
                .iter()
                .enumerate()
                .flat_map(|(i, r)| [(r.start, false, 2 * i), (r.end, true, 2 * i + 1)])
                .collect();
            targets.sort_unstable();
            let offsets: Vec<(usize, bool)> = targets.iter().map(|t| (t.0, t.1)).collect();
            let mapped = map_offsets(content.as_bytes(), &offsets)
                .ok_or_else(|| syntax(base, "invalid escape"))?;
            for (target, offset) in targets.iter().zip(mapped) {
                if let Some(range) = raw.get_mut(target.2 / 2) {
                    if target.2 % 2 == 0 {
                        range.start = offset;
                    } else {
                        range.end = offset;
                    }
                }
            }
        }
        for (range, (_, placeholder)) in raw.into_iter().zip(regions) {
            let mut encoded = Vec::with_capacity(placeholder.len());
            push_json_content(&mut encoded, &placeholder);
            self.replacements.push((
                base + range.start..base + range.end,
                String::from_utf8_lossy(&encoded).into_owned(),
            ));
        }
        Ok(())
    }

    /// The text of a base64 `text/…` document: decoded and scanned; a finding is a refusal
    /// (the base64 cannot carry a placeholder).
    fn base64_text(&mut self, node: Node, ctx: Ctx) -> Result<(), WalkError> {
        use base64::Engine as _;
        let Some(data) = self.small_string(node) else {
            return Ok(());
        };
        let compact: Vec<u8> = data.bytes().filter(|b| !is_ws(*b)).collect();
        let Ok(bytes) = BASE64.decode(&compact) else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&bytes);
        let findings = self
            .engine
            .scan_within(&text, self.opts.scope, self.budget)?;
        let path = self.render_path();
        for mut finding in findings {
            let refused = ctx.refuse && finding.rewritten;
            // Base64 text cannot carry a placeholder either way.
            finding.rewritten = false;
            self.record((node.start, usize::MAX), &path, finding, refused);
        }
        Ok(())
    }

    /// Keeps a finding made at `path`: among the refusals (a value that cannot carry a
    /// placeholder: never rewritten) or among the findings.
    fn record(&mut self, order: (usize, usize), path: &str, mut finding: Finding, refused: bool) {
        if refused {
            finding.rewritten = false;
        }
        let located = Located {
            path: path.to_string(),
            finding,
        };
        if refused {
            self.refusals.push((order, located));
        } else {
            self.findings.push((order, located));
        }
    }

    /// Scans the joined view around each boundary between parts and masks each part's portion
    /// of a finding the per-string scans did not make.
    fn joined_scan(&mut self) -> Result<(), WalkError> {
        if self.parts.len() < 2 {
            return Ok(());
        }
        let matcher = self.engine.matcher();
        let longest = matcher.max_match_len();
        let boundaries: Vec<usize> = self.parts.iter().skip(1).map(|p| p.at).collect();
        let joined = self.joined.as_str();
        // Step 1: is there a candidate whose match may touch a boundary? A match is at most
        // `longest` bytes, so one that touches boundary b lies in b ± longest; windows one
        // byte wider see its look-arounds. A match that only exists because a window cut the
        // text starts at the window's start (or ends at its end), which is too far from every
        // boundary to touch one.
        let mut touching = false;
        for window in windows(&boundaries, longest + 1, joined) {
            let hay = joined.as_bytes().get(window.clone()).unwrap_or_default();
            if let Some(budget) = self.budget {
                budget.charge(hay.len())?;
            }
            let rules = matcher.all_rules();
            matcher
                .scan_block(hay, |c| {
                    let end = window.start + c.end;
                    let len = rules.get(c.rule as usize).map_or(usize::MAX, |r| r.max_len);
                    let last = boundaries.partition_point(|&b| b <= end);
                    if let Some(&b) = last.checked_sub(1).and_then(|i| boundaries.get(i)) {
                        touching |= end.saturating_sub(len) <= b;
                    }
                })
                .map_err(MaskError::from)?;
            if touching {
                break;
            }
        }
        if !touching {
            return Ok(());
        }
        // Step 2 (rare): findings in wider windows, kept when they lie within `longest` of a
        // boundary (an artefact of a window's cut lies further away) and are not a per-string
        // finding of one part.
        let reach = longest + 1;
        let mut found = Vec::new();
        for window in windows(&boundaries, 2 * reach + 2, joined) {
            let text = joined.get(window.clone()).unwrap_or_default();
            for mut finding in self
                .engine
                .scan_within(text, self.opts.scope, self.budget)?
            {
                finding.span = window.start + finding.span.start..window.start + finding.span.end;
                let next = boundaries.partition_point(|&b| b < finding.span.start);
                let near = |i: usize| {
                    boundaries.get(i).is_some_and(|&b| {
                        finding.span.start <= b + reach && finding.span.end + reach >= b
                    })
                };
                if near(next) || next.checked_sub(1).is_some_and(near) {
                    found.push(finding);
                }
            }
        }
        found.sort_by_key(|f| f.span.start);
        found.dedup_by(|a, b| a.rule == b.rule && a.span == b.span);
        for finding in found {
            self.joined_finding(finding)?;
        }
        Ok(())
    }

    fn joined_finding(&mut self, finding: Finding) -> Result<(), WalkError> {
        let span = finding.span.clone();
        let first = self.parts.partition_point(|p| p.at + p.len <= span.start);
        let mut portions = Vec::new();
        for (i, part) in self.parts.iter().enumerate().skip(first) {
            if part.at >= span.end {
                break;
            }
            let local =
                span.start.max(part.at) - part.at..span.end.min(part.at + part.len) - part.at;
            portions.push((i, local));
        }
        let Some((first_index, first_local)) = portions.first().cloned() else {
            return Ok(());
        };
        if let [(i, local)] = portions.as_slice() {
            // `found` is sorted by start.
            let known = self.parts.get(*i).is_some_and(|p| {
                let from = p.found.partition_point(|(_, s)| s.start < local.start);
                p.found
                    .get(from..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|(_, s)| s.start == local.start)
                    .any(|(rule, s)| *rule == finding.rule && s == local)
            });
            if known {
                return Ok(());
            }
        }
        let Some(first_part) = self.parts.get(first_index) else {
            return Ok(());
        };
        let order = (
            first_part.content.start.saturating_sub(1),
            first_local.start,
        );
        let path = self.render(&first_part.path);
        let rewritten = finding.rewritten;
        let placeholder = finding.placeholder.clone();
        let reported_rule = finding.rule;
        let mut reported = finding;
        reported.span = first_local.start..first_local.start + span.len();
        self.findings.push((
            order,
            Located {
                path,
                finding: reported,
            },
        ));
        if !rewritten {
            return Ok(());
        }
        if self.learning.is_some() {
            let secret = self
                .joined
                .get(span.clone())
                .unwrap_or_default()
                .to_string();
            self.learn(reported_rule, &placeholder, &secret);
        }
        let text = self.text;
        for (i, local) in portions {
            let Some(part) = self.parts.get(i) else {
                continue;
            };
            let content = text.get(part.content.clone()).unwrap_or_default();
            let (base, escaped) = (part.content.start, part.escaped);
            self.replace(base, content, escaped, vec![(local, placeholder.clone())])?;
        }
        Ok(())
    }

    fn render_path(&self) -> String {
        self.render(&self.path)
    }

    fn render(&self, path: &[Segment]) -> String {
        let mut out = String::new();
        for segment in path {
            match *segment {
                Segment::Line(line) => {
                    let _ = write!(out, "[line {line}]");
                }
                Segment::Index(index) => {
                    let _ = write!(out, "[{index}]");
                }
                Segment::Key(key) => {
                    let name = self
                        .node(key)
                        .ok()
                        .and_then(|node| self.small_string(node))
                        .unwrap_or_default();
                    push_path_key(&mut out, &name);
                }
            }
        }
        out
    }

    fn finish(mut self) -> Walked {
        let findings = ordered(std::mem::take(&mut self.findings));
        let refusals = ordered(std::mem::take(&mut self.refusals));
        let mut learned: Vec<Learned> = self
            .learning
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(placeholder, (rule, secret))| Learned {
                rule,
                placeholder,
                secret,
            })
            .collect();
        learned.sort_by(|a, b| a.placeholder.cmp(&b.placeholder));
        let mut signed_thinking = std::mem::take(&mut self.signed_thinking);
        signed_thinking.sort_by_key(|r| r.start);
        if self.replacements.is_empty() {
            return Walked {
                body: None,
                findings,
                refusals,
                learned,
                signed_thinking,
            };
        }
        // Replacements come per string, then from the joined view: put them in body order, the
        // longest first among those starting together. One that starts inside an earlier one
        // replaces only what is left of it (as the engine does with overlapping findings); one
        // wholly inside an earlier one is dropped.
        self.replacements
            .sort_by_key(|(range, _)| (range.start, std::cmp::Reverse(range.end)));
        let raw = self.text.as_bytes();
        let extra: usize = self.replacements.iter().map(|(_, p)| p.len()).sum();
        let mut out = Vec::with_capacity(raw.len() + extra);
        let mut copied = 0;
        // (raw end of an applied replacement, output minus raw length so far), for mapping the
        // signed thinking ranges, whose ends lie outside every replacement (they include the
        // quotes, replacements never do).
        let mut shifts: Vec<(usize, isize)> = Vec::new();
        for (range, replacement) in &self.replacements {
            if range.end <= copied && range.start < copied {
                continue;
            }
            let start = range.start.clamp(copied, raw.len());
            let end = range.end.clamp(start, raw.len());
            out.extend_from_slice(raw.get(copied..start).unwrap_or_default());
            out.extend_from_slice(replacement.as_bytes());
            copied = end;
            shifts.push((end, out.len() as isize - end as isize));
        }
        out.extend_from_slice(raw.get(copied..).unwrap_or_default());
        let map = |offset: usize| -> usize {
            let applied = shifts.partition_point(|(end, _)| *end <= offset);
            let shift = applied
                .checked_sub(1)
                .and_then(|i| shifts.get(i))
                .map_or(0, |(_, shift)| *shift);
            offset.saturating_add_signed(shift)
        };
        for range in &mut signed_thinking {
            *range = map(range.start)..map(range.end);
        }
        Walked {
            body: Some(out),
            findings,
            refusals,
            learned,
            signed_thinking,
        }
    }
}

/// Findings in document order (stable: findings of one string keep the engine's order).
fn ordered(mut findings: Vec<Ordered>) -> Findings {
    findings.sort_by_key(|(order, _)| *order);
    let mut out = Findings::new();
    out.extend(findings.into_iter().map(|(_, located)| located));
    out
}

/// Windows of `joined` around the boundaries, `radius` bytes each side, merged where they
/// overlap, widened to character boundaries.
fn windows(boundaries: &[usize], radius: usize, joined: &str) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for &b in boundaries {
        let mut start = b.saturating_sub(radius);
        while !joined.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = b.saturating_add(radius).min(joined.len());
        while !joined.is_char_boundary(end) {
            end += 1;
        }
        match out.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => out.push(start..end),
        }
    }
    out
}

/// Base64 as documents carry it: the standard alphabet, padding optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

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

/// Append object key `name` to a rendered path: `.name` for a plain word, `["…"]` otherwise.
/// Every reader that names places in a request ([`crate::engine::json_strings`] too) renders
/// keys with this, so its paths and the walker's agree.
pub(crate) fn push_path_key(out: &mut String, name: &str) {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(name);
    } else {
        out.push('[');
        push_json_string(out, name);
        out.push(']');
    }
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

    fn refusal_paths(walked: &Walked) -> Vec<&str> {
        walked.refusals.iter().map(|f| f.path.as_str()).collect()
    }

    fn paths(walked: &Walked) -> Vec<&str> {
        walked.findings.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn opaque_values_are_scanned_and_refused_not_rewritten() {
        let t = TOKEN;
        let raw = format!(
            r#"{{"model":"{t}","id":"{t}","custom_id":"{t}","content":[
              {{"data":"{t}","type":"redacted_thinking"}},
              {{"type":"thinking","thinking":"x","signature":"{t}"}},
              {{"type":"image","source":{{"data":"{t}","media_type":"image/png","type":"base64"}}}},
              {{"type":"tool_result","tool_use_id":"{t}","content":"x"}}],
              "metadata":{{"deep":{{"id":{{"k":["{t}"],"{t}":1}}}}}}}}"#
        );
        let walked = walk(&raw);
        assert!(walked.body.is_none(), "{:?}", walked.findings);
        assert!(walked.findings.is_empty());
        assert_eq!(
            refusal_paths(&walked),
            [
                "model",
                "id",
                "custom_id",
                "content[0].data",
                "content[1].signature",
                "content[2].source.data",
                "content[3].tool_use_id",
                "metadata.deep.id.k[0]",
                "metadata.deep.id.tok_abcdefghijklmnopqrstuv",
            ]
        );
        assert!(walked.refusals.iter().all(|f| !f.finding.rewritten));
        assert!(walked
            .refusals
            .iter()
            .all(|f| f.finding.rule_id == "test-token"));
        // An audit finding in an opaque value is reported like anywhere else, not refused.
        let walked = walk(r#"{"id":"audit_123456"}"#);
        assert!(walked.refusals.is_empty());
        assert_eq!(paths(&walked), ["id"]);
    }

    #[test]
    fn ids_in_tool_input_are_masked_not_refused() {
        let t = TOKEN;
        let raw = format!(
            r#"{{"content":[{{"type":"tool_use","id":"toolu_1","name":"x","input":{{"id":"{t}","metadata":{{"custom_id":"{t}"}},"signature":"{t}"}}}}]}}"#
        );
        let walked = walk(&raw);
        assert!(walked.refusals.is_empty(), "{:?}", walked.refusals);
        assert_eq!(
            paths(&walked),
            [
                "content[0].input.id",
                "content[0].input.metadata.custom_id",
                "content[0].input.signature"
            ]
        );
        assert!(!body(&walked).contains(t));
    }

    #[test]
    fn escaped_opaque_values_are_refused_too() {
        // `\/` inside an id: the unescaped view sees the token.
        let raw = r#"{"id":"x\\ntok_abcdefghijklmnop\\u0071rstuv"}"#;
        let walked = walk(raw);
        assert_eq!(refusal_paths(&walked), ["id"]);
        assert!(walked.body.is_none());
    }

    #[test]
    fn base64_text_documents_are_decoded_and_scanned() {
        use base64::Engine as _;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let secret_doc = encode(&format!("config:\n  key: {TOKEN}\n"));
        let clean_doc = encode("nothing to see here, just a long enough plain text");
        for (media, data, refused) in [
            ("text/plain", &secret_doc, true),
            ("text/plain; charset=utf-8", &secret_doc, true),
            ("text/plain", &clean_doc, false),
            ("application/pdf", &secret_doc, false),
        ] {
            let raw = format!(
                r#"{{"content":[{{"type":"document","source":{{"type":"base64","media_type":"{media}","data":"{data}"}}}}]}}"#
            );
            let walked = walk(&raw);
            assert!(walked.body.is_none());
            let expected: &[&str] = if refused {
                &["content[0].source.data"]
            } else {
                &[]
            };
            assert_eq!(refusal_paths(&walked), expected, "{media}");
        }
        // Unpadded base64 decodes too.
        let unpadded = secret_doc.trim_end_matches('=');
        let raw = format!(
            r#"{{"source":{{"type":"base64","media_type":"text/plain","data":"{unpadded}"}}}}"#
        );
        assert_eq!(refusal_paths(&walk(&raw)), ["source.data"]);
    }

    /// The raw JSON string content that decodes to `text`.
    fn json_content(text: &str) -> String {
        let mut out = Vec::new();
        push_json_content(&mut out, text);
        String::from_utf8(out).unwrap()
    }

    /// `decoded` written as a JSON string value, masked; returns what the masked value decodes
    /// to and the number of findings.
    fn mask_decoded(decoded: &str) -> (String, usize) {
        let raw = format!(r#"{{"content":"{}"}}"#, json_content(decoded));
        let walked = walk(&raw);
        let out = walked
            .body
            .clone()
            .unwrap_or_else(|| raw.clone().into_bytes());
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let text = value["content"].as_str().unwrap().to_string();
        (text, walked.findings.len())
    }

    #[test]
    fn second_level_escapes_are_undone_for_the_scan() {
        let ph = placeholder(engine(), TOKEN);
        // (decoded string as the model reads it, what it must become)
        let cases = [
            // PHP's json_encode escapes slashes; a token split by `\/` is not a token, but the
            // slash after one must not hide it.
            (
                format!(r#"{{"url":"https:\/\/x\/{TOKEN}\/y"}}"#),
                format!(r#"{{"url":"https:\/\/x\/{ph}\/y"}}"#),
            ),
            // .NET writes `\u002B`-style escapes; here one sits inside the token.
            (
                r#"{"k":"tok_abc\u0064efghijklmnopqrstuv"}"#.to_string(),
                format!(r#"{{"k":"{ph}"}}"#),
            ),
            // A token after a literal `\n` and `\t` (a log line, a notebook cell).
            (
                format!(r"line one\n{TOKEN}\tx"),
                format!(r"line one\n{ph}\tx"),
            ),
            (format!(r"\t{TOKEN}"), format!(r"\t{ph}")),
            // Python's repr: `\x41`-style and `\'` escapes.
            (
                r"b'tok_\x61bcdefghijklmnopqrstuv\''".to_string(),
                format!(r"b'{ph}\''"),
            ),
            // A token escaped entirely at the second level.
            (
                TOKEN
                    .chars()
                    .map(|c| format!("\\u{:04x}", c as u32))
                    .collect(),
                ph.clone(),
            ),
        ];
        for (decoded, expected) in cases {
            let (masked, findings) = mask_decoded(&decoded);
            assert_eq!(masked, expected, "{decoded}");
            assert_eq!(findings, 1, "{decoded}");
        }
    }

    #[test]
    fn double_encoded_json_in_a_tool_result() {
        // A tool result holding a JSON string that itself holds JSON (double-encoded), with the
        // token's `c` written `\u0063` at the innermost level.
        let inner = r#"{"env":{"TOKEN":"tok_ab\u0063defghijklmnopqrstuv"}}"#;
        let once = serde_json::to_string(inner).unwrap();
        let raw = serde_json::to_string(&serde_json::json!({
            "messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content": once}]}]
        }))
        .unwrap();
        let walked = walk(&raw);
        assert_eq!(paths(&walked), ["messages[0].content[0].content"]);
        let out: serde_json::Value =
            serde_json::from_slice(walked.body.as_deref().unwrap()).unwrap();
        let shown = out["messages"][0]["content"][0]["content"]
            .as_str()
            .unwrap();
        let ph = placeholder(engine(), TOKEN);
        assert_eq!(
            shown,
            serde_json::to_string(inner)
                .unwrap()
                .replace(r"tok_ab\\u0063defghijklmnopqrstuv", &ph)
        );
    }

    #[test]
    fn both_views_mask_once() {
        // The same token found in the decoded string and in its view is one finding, and an
        // overlap between the views is one replacement.
        let (masked, findings) = mask_decoded(&format!(r"a\n {TOKEN} b"));
        assert_eq!(findings, 1);
        assert_eq!(masked, format!(r"a\n {} b", placeholder(engine(), TOKEN)));
        // The decoded string holds the token followed by `\u0058YZ`; its view holds a longer
        // token. Two findings, one replacement (the longer) of the whole run, nothing left over.
        let (masked, findings) = mask_decoded(&format!(r"{TOKEN}\u0058YZ"));
        assert_eq!(findings, 2);
        assert_eq!(
            masked,
            placeholder(engine(), "tok_abcdefghijklmnopqrstuvXYZ")
        );
    }

    fn text_block(text: &str) -> String {
        format!(r#"{{"type":"text","text":"{}"}}"#, json_content(text))
    }

    /// Every string of the masked body, decoded, in document order.
    fn strings(walked: &Walked, raw: &str) -> Vec<String> {
        fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s) => out.push(s.clone()),
                serde_json::Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
                serde_json::Value::Object(m) => m.values().for_each(|i| collect(i, out)),
                _ => {}
            }
        }
        let bytes = walked
            .body
            .clone()
            .unwrap_or_else(|| raw.as_bytes().to_vec());
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut out = Vec::new();
        collect(&value, &mut out);
        out
    }

    #[test]
    fn secrets_split_across_text_blocks_are_masked_in_each_part() {
        let ph = placeholder(engine(), TOKEN);
        // Two parts, three parts (one of them escaped), a keyword split from its value.
        for cuts in [vec![10], vec![4], vec![7, 15], vec![1, 2, 3]] {
            let mut pieces = Vec::new();
            let mut from = 0;
            for &cut in &cuts {
                pieces.push(&TOKEN[from..cut]);
                from = cut;
            }
            pieces.push(&TOKEN[from..]);
            let mut blocks: Vec<String> = pieces.iter().map(|p| text_block(p)).collect();
            blocks[0] = text_block(&format!("here: \"{}", pieces[0]));
            let last = blocks.len() - 1;
            blocks[last] = text_block(&format!("{}\" ok", pieces[last]));
            let raw = format!(
                r#"{{"messages":[{{"role":"user","content":[{}]}}]}}"#,
                blocks.join(",")
            );
            let walked = walk(&raw);
            assert_eq!(paths(&walked), ["messages[0].content[0].text"], "{cuts:?}");
            let texts = strings(&walked, &raw);
            let joined: String = texts
                .iter()
                .filter(|s| *s != "user" && *s != "text")
                .cloned()
                .collect();
            assert!(!joined.contains("tok_"), "{cuts:?}: {joined}");
            assert!(joined.starts_with(&format!("here: \"{ph}")), "{joined}");
            assert!(joined.ends_with(&format!("{ph}\" ok")), "{joined}");
        }
    }

    #[test]
    fn secrets_split_across_turns_and_tool_results() {
        let (a, b) = TOKEN.split_at(12);
        let cases = [
            // Consecutive user turns with string content.
            format!(
                r#"{{"messages":[{{"role":"user","content":"key {a}"}},{{"role":"user","content":"{b} end"}}]}}"#
            ),
            // Consecutive user turns with block content.
            format!(
                r#"{{"messages":[{{"role":"user","content":[{}]}},{{"role":"user","content":[{}]}}]}}"#,
                text_block(&format!("key {a}")),
                text_block(&format!("{b} end"))
            ),
            // Two text blocks of one tool result.
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"x","content":[{},{}]}}]}}]}}"#,
                text_block(&format!("key {a}")),
                text_block(&format!("{b} end"))
            ),
            // System text then the first turn.
            format!(r#"{{"system":"key {a}","messages":[{{"role":"user","content":"{b} end"}}]}}"#),
            // A tool result's string content and the text block after it.
            format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"x","content":"key {a}"}},{}]}}]}}"#,
                text_block(&format!("{b} end"))
            ),
        ];
        for raw in cases {
            let walked = walk(&raw);
            assert_eq!(walked.findings.len(), 1, "{raw}");
            let out = String::from_utf8(walked.body.clone().unwrap()).unwrap();
            assert!(!out.contains(a) && !out.contains(b), "{out}");
            assert_eq!(
                out.matches(&placeholder(engine(), TOKEN)).count(),
                2,
                "{out}"
            );
        }
        // Not joined: an id and a text, a text inside a tool input.
        let raw = format!(
            r#"{{"messages":[{{"role":"user","content":[{},{{"type":"tool_use","id":"x","name":"n","input":{{"text":"{b}"}}}}]}}]}}"#,
            text_block(&format!("key {a}"))
        );
        assert!(walk(&raw).body.is_none());
    }

    #[test]
    fn joined_view_does_not_repeat_per_string_findings() {
        let raw = format!(
            r#"{{"messages":[{{"role":"user","content":"{TOKEN}"}},{{"role":"user","content":" {TOKEN}"}}]}}"#
        );
        let walked = walk(&raw);
        assert_eq!(walked.findings.len(), 2);
        let raw = r#"{"messages":[{"role":"user","content":"x"},{"role":"user","content":"y"}]}"#;
        assert!(walk(raw).body.is_none());
    }

    struct Originals(Vec<(&'static str, String)>);

    impl ThinkingRestore for Originals {
        fn restore(&self, signature: &str, _shown: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(sig, _)| *sig == signature)
                .map(|(_, original)| original.clone())
        }
    }

    #[test]
    fn thinking_restore_hook() {
        let ph = placeholder(engine(), TOKEN);
        let original = format!("the key is {TOKEN}\n\"quoted\"");
        let hook = Originals(vec![("sig-known", original.clone())]);
        let opts = WalkOptions {
            thinking: ThinkingMode::Mask,
            ..WalkOptions::default()
        };
        let shown = format!("the key is {ph}\\n\\\"quoted\\\"");
        let raw = format!(
            r#"{{"content":[{{"type":"thinking","thinking":"{shown}","signature":"sig-known"}},{{"signature":"sig-unknown","thinking":"mine {TOKEN}","type":"thinking"}}]}}"#
        );
        let walked = mask_json_with(engine(), raw.as_bytes(), &opts, Some(&hook)).unwrap();
        let out: serde_json::Value =
            serde_json::from_slice(walked.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            out["content"][0]["thinking"],
            serde_json::Value::String(original)
        );
        assert_eq!(
            out["content"][1]["thinking"],
            serde_json::Value::String(format!("mine {ph}"))
        );
        // The restored text is the upstream's own: no finding reported for it.
        assert_eq!(paths(&walked), ["content[1].thinking"]);
        assert!(walked.refusals.is_empty());
        // Without the hook, both are masked.
        let walked = mask_json(engine(), raw.as_bytes(), &opts).unwrap();
        assert_eq!(walked.findings.len(), 1);
        assert!(!body(&walked).contains(TOKEN));
        // A hook that gives back the shown text changes nothing.
        let same = Originals(vec![("sig-known", format!("the key is {ph}\n\"quoted\""))]);
        let raw =
            format!(r#"[{{"type":"thinking","thinking":"{shown}","signature":"sig-known"}}]"#);
        let walked = mask_json_with(engine(), raw.as_bytes(), &opts, Some(&same)).unwrap();
        assert!(walked.body.is_none());
    }

    #[test]
    fn lenient_mode_accepts_bom_and_non_finite_numbers() {
        let lenient = WalkOptions {
            lenient: true,
            ..WalkOptions::default()
        };
        let raw = format!("\u{feff}{{\"a\":NaN,\"b\":[Infinity,-Infinity,-1],\"t\":\"{TOKEN}\"}}");
        let walked = mask_json(engine(), raw.as_bytes(), &lenient).unwrap();
        let expected = raw.replace(TOKEN, &placeholder(engine(), TOKEN));
        assert_eq!(body(&walked), expected);
        assert!(body(&walked).as_bytes().starts_with(BOM));
        let clean = "\u{feff}[NaN]";
        assert!(mask_json(engine(), clean.as_bytes(), &lenient)
            .unwrap()
            .body
            .is_none());
        let jsonl = "\u{feff}{\"x\":Infinity}\n[-Infinity]\n";
        assert!(mask_jsonl(engine(), jsonl.as_bytes(), &lenient)
            .unwrap()
            .body
            .is_none());
        // Strict mode refuses them, and lenient mode nothing else.
        for bad in ["\u{feff}{}", "[NaN]", "[Infinity]", "[-Infinity]"] {
            assert!(
                matches!(
                    mask_json(engine(), bad.as_bytes(), &WalkOptions::default()),
                    Err(WalkError::Syntax { .. })
                ),
                "{bad}"
            );
        }
        for bad in [
            "[nan]",
            "[-Inf]",
            "[+Infinity]",
            "{}\u{feff}",
            "\u{feff}\u{feff}{}",
            "[NaNa]",
        ] {
            assert!(
                matches!(
                    mask_json(engine(), bad.as_bytes(), &lenient),
                    Err(WalkError::Syntax { .. })
                ),
                "{bad}"
            );
        }
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

    #[test]
    fn learning_reports_what_placeholders_replaced_and_where_signed_thinking_is() {
        let raw = format!(
            r#"{{"messages":[{{"role":"user","content":"key {TOKEN} and again {TOKEN}"}},{{"role":"assistant","content":[{{"type":"thinking","thinking":"plain thought","signature":"sig"}},{{"type":"thinking","thinking":"saw {TOKEN}","signature":"sig2"}}]}}]}}"#
        );
        let opts = WalkOptions {
            scope: Scope::Request,
            thinking: ThinkingMode::Mask,
            lenient: false,
        };
        let walked =
            mask_json_learning(engine(), raw.as_bytes(), &opts, None, None).expect("walks");
        let ph = placeholder(engine(), TOKEN);
        assert_eq!(walked.learned.len(), 1);
        assert_eq!(walked.learned[0].placeholder, ph);
        assert_eq!(walked.learned[0].secret, TOKEN);
        assert!(!format!("{:?}", walked.learned).contains(TOKEN));
        let body = walked.body.expect("rewritten");
        // The block the walk rewrote (its signature is lost anyway) is not protected.
        assert_eq!(walked.signed_thinking.len(), 1);
        let range = walked.signed_thinking[0].clone();
        assert_eq!(&body[range], b"\"plain thought\"");
        // Without learning nothing is reported.
        let plain = mask_json(engine(), raw.as_bytes(), &opts).expect("walks");
        assert!(plain.learned.is_empty() && plain.signed_thinking.is_empty());
    }
}
