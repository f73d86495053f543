//! The *unescaped view* of a decoded JSON string: one more level of escapes undone, for text
//! that was escaped twice before it reached the proxy (a tool result holding JSON written by
//! PHP with `\/`, by .NET with `\u002B`, a Python repr with `\x41` or `\'`, a log line where a
//! token follows a literal `\n`). The model reads through such escapes; the rules must too.
//!
//! Invariants (tests below and in `json_walk`):
//! 1. **One level per view.** A view undoes exactly the escapes `\" \\ \/ \' \b \f \n \r \t`,
//!    `\uXXXX` (a high and a low surrogate escape in a row are one character; a lone surrogate
//!    is U+FFFD) and `\xHH` (the character U+00HH). A backslash before anything else, or at the
//!    end, stays a backslash. Views are stacked a bounded number of levels deep (JSON inside a
//!    JSON string inside a tool result), each built only while the one below has an escape.
//! 2. **Spans map outward.** [`View::to_decoded`] maps a byte span of a view to the decoded
//!    string: bytes outside escapes map one to one, and a span that touches any part of an
//!    escape's output covers the escape's whole sequence. Spans at character boundaries of the
//!    view map to character boundaries of the decoded string.
//! 3. Linear: one pass per level to build, a binary search per level per mapped offset.

use std::ops::Range;

/// One undone escape: its output in the view and its sequence in the decoded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Escape {
    view_start: usize,
    view_end: usize,
    decoded_start: usize,
    decoded_end: usize,
}

/// One level of the view: its text and the escapes undone to make it.
#[derive(Debug, Default)]
struct Level {
    text: String,
    escapes: Vec<Escape>,
}

/// Unescaped views of one string, one level deeper each (the buffers are kept between
/// strings): level 0 undoes one level of escapes of the decoded string, level 1 one more of
/// level 0, and so on.
#[derive(Debug, Default)]
pub struct View {
    levels: Vec<Level>,
    used: usize,
}

fn hex(bytes: &[u8], at: usize, digits: usize) -> Option<u32> {
    let mut value = 0;
    for &d in bytes.get(at..at + digits)? {
        value = value * 16 + char::from(d).to_digit(16)?;
    }
    Some(value)
}

/// The escape at the backslash `bytes[at]`: its length and the character it stands for.
fn escape_at(bytes: &[u8], at: usize) -> Option<(usize, char)> {
    let simple = |c| Some((2, c));
    match *bytes.get(at + 1)? {
        b'"' => simple('"'),
        b'\\' => simple('\\'),
        b'/' => simple('/'),
        b'\'' => simple('\''),
        b'b' => simple('\u{8}'),
        b'f' => simple('\u{c}'),
        b'n' => simple('\n'),
        b'r' => simple('\r'),
        b't' => simple('\t'),
        b'x' => Some((4, char::from(u8::try_from(hex(bytes, at + 2, 2)?).ok()?))),
        b'u' => {
            let unit = hex(bytes, at + 2, 4)?;
            if (0xD800..0xDC00).contains(&unit)
                && bytes.get(at + 6) == Some(&b'\\')
                && bytes.get(at + 7) == Some(&b'u')
            {
                if let Some(low @ 0xDC00..=0xDFFF) = hex(bytes, at + 8, 4) {
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

impl Level {
    /// Builds this level from `below`. `false` when `below` holds no escape to undo.
    fn build(&mut self, below: &str) -> bool {
        self.text.clear();
        self.escapes.clear();
        let bytes = below.as_bytes();
        let mut copied = 0;
        let mut pos = 0;
        while let Some(offset) = bytes.get(pos..).and_then(|rest| memchr(rest, b'\\')) {
            let at = pos + offset;
            match escape_at(bytes, at) {
                Some((len, c)) => {
                    self.text
                        .push_str(below.get(copied..at).unwrap_or_default());
                    let view_start = self.text.len();
                    self.text.push(c);
                    self.escapes.push(Escape {
                        view_start,
                        view_end: self.text.len(),
                        decoded_start: at,
                        decoded_end: at + len,
                    });
                    pos = at + len;
                    copied = pos;
                }
                None => pos = at + 1,
            }
        }
        if self.escapes.is_empty() {
            return false;
        }
        self.text.push_str(below.get(copied..).unwrap_or_default());
        true
    }

    /// The last escape whose output starts at or before `offset` (`strict`: before it).
    fn escape_before(&self, offset: usize, strict: bool) -> Option<&Escape> {
        let count = self.escapes.partition_point(|e| {
            if strict {
                e.view_start < offset
            } else {
                e.view_start <= offset
            }
        });
        count.checked_sub(1).and_then(|i| self.escapes.get(i))
    }

    /// Maps a byte span of this level to the level below, widened to whole escapes.
    fn to_below(&self, span: &Range<usize>) -> Range<usize> {
        let start = match self.escape_before(span.start, false) {
            Some(e) if span.start < e.view_end => e.decoded_start,
            Some(e) => e.decoded_end + (span.start - e.view_end),
            None => span.start,
        };
        let end = match self.escape_before(span.end, true) {
            Some(e) if span.end <= e.view_end => e.decoded_end,
            Some(e) => e.decoded_end + (span.end - e.view_end),
            None => span.end,
        };
        start..end.max(start)
    }
}

impl View {
    pub fn new() -> View {
        View::default()
    }

    /// Builds up to `max` levels of views of `decoded`, each while the one below still holds
    /// an escape to undo. Returns how many were built (0: the views would equal the string).
    pub fn build(&mut self, decoded: &str, max: usize) -> usize {
        self.used = 0;
        while self.used < max {
            if self.levels.len() <= self.used {
                self.levels.push(Level::default());
            }
            let (done, rest) = self.levels.split_at_mut(self.used);
            let below = done.last().map_or(decoded, |l| l.text.as_str());
            let Some(level) = rest.first_mut() else {
                break;
            };
            if !below.contains('\\') || !level.build(below) {
                break;
            }
            self.used += 1;
        }
        self.used
    }

    /// The text of view `level` (0-based, below the number [`View::build`] returned).
    pub fn text(&self, level: usize) -> &str {
        match self.levels.get(level) {
            Some(l) if level < self.used => &l.text,
            _ => "",
        }
    }

    /// Maps a byte span of view `level` to the decoded string, widened to whole escapes at
    /// every level.
    pub fn to_decoded(&self, level: usize, span: &Range<usize>) -> Range<usize> {
        let mut span = span.clone();
        for l in self.levels.iter().take(self.used.min(level + 1)).rev() {
            span = l.to_below(&span);
        }
        span
    }
}

fn memchr(bytes: &[u8], needle: u8) -> Option<usize> {
    bytes.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(decoded: &str) -> Option<String> {
        let mut v = View::new();
        (v.build(decoded, 1) == 1).then(|| v.text(0).to_string())
    }

    #[test]
    fn undoes_one_level() {
        assert_eq!(
            view(r#"a\"b\\c\/d\'e\nf\tg\u002Bh\x41i\ud83d\ude00j\b\f\r"#).as_deref(),
            Some("a\"b\\c/d'e\nf\tg+hAi😀j\u{8}\u{c}\r")
        );
        // Only one level: `\\n` is a backslash and an `n`.
        assert_eq!(view(r"\\n").as_deref(), Some(r"\n"));
        // Lone surrogates, unknown escapes, truncated escapes, a trailing backslash.
        assert_eq!(
            view(r"\ud800x\q\u12\x4\").as_deref(),
            Some("\u{fffd}x\\q\\u12\\x4\\")
        );
        assert_eq!(view(r"\xe9").as_deref(), Some("é"));
        assert_eq!(view("plain"), None);
        assert_eq!(view(r"\q \z"), None);
    }

    #[test]
    fn spans_map_outward_to_whole_escapes() {
        let decoded = r"ab\u0041cd\n\ud83d\ude00e";
        let mut v = View::new();
        assert_eq!(v.build(decoded, 3), 1);
        // view: a b A c d \n 😀(4) e
        assert_eq!(v.text(0), "abAcd\n😀e");
        assert_eq!(v.to_decoded(0, &(0..2)), 0..2);
        assert_eq!(v.to_decoded(0, &(1..3)), 1..8);
        assert_eq!(v.to_decoded(0, &(2..3)), 2..8);
        assert_eq!(v.to_decoded(0, &(3..5)), 8..10);
        assert_eq!(v.to_decoded(0, &(5..6)), 10..12);
        assert_eq!(v.to_decoded(0, &(6..10)), 12..24);
        assert_eq!(v.to_decoded(0, &(7..8)), 12..24);
        assert_eq!(v.to_decoded(0, &(10..11)), 24..25);
        assert_eq!(v.to_decoded(0, &(3..3)), 8..8);
    }

    #[test]
    fn levels_compose() {
        // Two levels: `\\u0041` is `\u0041` one level down and `A` two levels down.
        let decoded = r"x\\u0041\\ny";
        let mut v = View::new();
        assert_eq!(v.build(decoded, 4), 2);
        assert_eq!(v.text(0), r"x\u0041\ny");
        assert_eq!(v.text(1), "xA\ny");
        assert_eq!(v.to_decoded(1, &(1..2)), 1..8);
        assert_eq!(v.to_decoded(1, &(0..1)), 0..1);
        assert_eq!(v.to_decoded(1, &(3..4)), 11..12);
        assert_eq!(v.to_decoded(0, &(1..7)), 1..8);
        assert_eq!(v.build(decoded, 1), 1);
        assert_eq!(v.text(1), "");
        assert_eq!(v.build("plain", 4), 0);
    }
}
