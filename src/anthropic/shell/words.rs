//! Shell words as the shell would see them before running a command: quotes, escapes, ANSI-C
//! strings and line continuations undone, and every expansion the judge cannot evaluate kept
//! apart from literal text.
//!
//! Invariants:
//! - [`Word::lit`] is the word with quoting removed and expansions kept in their source form
//!   (`$HOME`, `$(cat x)`), so a `bash -c` string can be parsed again as the shell would;
//! - [`Word::path`] is the same word for path judgements: `~`, `$HOME`, `${HOME:?}` become
//!   `~`, `$USER`-like names become [`USER`], any other expansion becomes [`UNKNOWN`], so an
//!   unknown value never reads as a literal path;
//! - the scripts of command substitutions are returned in [`Word::subs`], never dropped.

use brush_parser::word::{
    self, Parameter, ParameterExpr, TildeExpr, WordPiece, WordPieceWithSource,
};
use brush_parser::ParserOptions;

/// Stands for the current user's name in [`Word::path`] (`$USER`, `$LOGNAME`, `$(whoami)`).
pub const USER: char = '\u{1}';
/// Stands for an expansion whose value is unknown in [`Word::path`].
pub const UNKNOWN: char = '\u{2}';

/// One shell word, normalised.
#[derive(Debug, Clone, Default)]
pub struct Word {
    pub lit: String,
    pub path: String,
    /// Scripts of `$(…)` and `` `…` `` substitutions in the word, in order.
    pub subs: Vec<String>,
}

impl Word {
    /// A word that is already literal (an argv element from JSON).
    pub fn literal(text: &str) -> Word {
        Word {
            lit: text.to_string(),
            path: text.to_string(),
            subs: Vec::new(),
        }
    }
}

/// Normalise the source text of one word.
/// `None` when the word does not parse (or the parser panics on it: one word must not end the
/// stream it came in).
pub fn normalize(raw: &str, options: &ParserOptions) -> Option<Word> {
    let pieces =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| word::parse(raw, options)))
            .ok()?
            .ok()?;
    let mut out = Word::default();
    for piece in &pieces {
        push(raw, piece, false, &mut out);
    }
    Some(out)
}

fn source<'r>(raw: &'r str, piece: &WordPieceWithSource) -> &'r str {
    raw.get(piece.start_index..piece.end_index).unwrap_or("")
}

fn push(raw: &str, piece: &WordPieceWithSource, quoted: bool, out: &mut Word) {
    match &piece.piece {
        WordPiece::Text(text) | WordPiece::SingleQuotedText(text) => {
            out.lit.push_str(text);
            out.path.push_str(text);
        }
        WordPiece::AnsiCQuotedText(text) => {
            let decoded = decode_escapes(text, false);
            out.lit.push_str(&decoded);
            out.path.push_str(&decoded);
        }
        WordPiece::DoubleQuotedSequence(inner) | WordPiece::GettextDoubleQuotedSequence(inner) => {
            for piece in inner {
                push(raw, piece, true, out);
            }
        }
        WordPiece::TildeExpansion(TildeExpr::Home | TildeExpr::UserHome(_)) => {
            out.lit.push('~');
            out.path.push('~');
        }
        WordPiece::TildeExpansion(_) | WordPiece::ArithmeticExpression(_) => {
            out.lit.push_str(source(raw, piece));
            out.path.push(UNKNOWN);
        }
        WordPiece::ParameterExpansion(expr) => {
            out.lit.push_str(source(raw, piece));
            out.path.push(parameter_value(expr));
        }
        WordPiece::CommandSubstitution(script)
        | WordPiece::BackquotedCommandSubstitution(script) => {
            out.lit.push_str(source(raw, piece));
            let name = script.trim();
            out.path
                .push(if matches!(name, "whoami" | "id -un" | "id -u -n") {
                    USER
                } else {
                    UNKNOWN
                });
            out.subs.push(script.clone());
        }
        WordPiece::EscapeSequence(escape) => {
            let escaped = escape.strip_prefix('\\').unwrap_or(escape);
            // A line continuation joins the lines; inside double quotes only `$`, `` ` ``,
            // `"`, `\` and newline are escapable, and other backslashes stay.
            let text = if escaped == "\n" {
                String::new()
            } else if quoted && !matches!(escaped, "$" | "`" | "\"" | "\\") {
                escape.clone()
            } else {
                escaped.to_string()
            };
            out.lit.push_str(&text);
            out.path.push_str(&text);
        }
    }
}

/// What a parameter expansion stands for in a path: the home directory for `HOME` read as is
/// or with a default or an error check (`${HOME:-/x}`, `${HOME:?}`), the user's name for
/// `USER`/`LOGNAME`, unknown otherwise.
fn parameter_value(expr: &ParameterExpr) -> char {
    let parameter = match expr {
        ParameterExpr::Parameter {
            parameter,
            indirect: false,
        }
        | ParameterExpr::UseDefaultValues {
            parameter,
            indirect: false,
            ..
        }
        | ParameterExpr::AssignDefaultValues {
            parameter,
            indirect: false,
            ..
        }
        | ParameterExpr::IndicateErrorIfNullOrUnset {
            parameter,
            indirect: false,
            ..
        } => parameter,
        _ => return UNKNOWN,
    };
    match parameter {
        Parameter::Named(name) if name == "HOME" => '~',
        Parameter::Named(name) if matches!(name.as_str(), "USER" | "LOGNAME" | "USERNAME") => USER,
        _ => UNKNOWN,
    }
}

/// Decode backslash escapes as `$'…'` and `printf` do (`\n`, `\t`, `\xHH`, `\NNN` octal,
/// `\uHHHH`); `printf` octal escapes start with `\0` or any digit, ANSI-C ones with a digit.
pub fn decode_escapes(text: &str, printf: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            out.push('\\');
            break;
        };
        let simple = match next {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'e' | 'E' => Some('\x1b'),
            'f' => Some('\x0c'),
            'v' => Some('\x0b'),
            '\\' => Some('\\'),
            '\'' => Some('\''),
            '"' => Some('"'),
            _ => None,
        };
        if let Some(simple) = simple {
            out.push(simple);
            continue;
        }
        let (radix, max) = match next {
            'x' => (16, 2),
            'u' => (16, 4),
            'U' => (16, 8),
            '0'..='7' => (8, if printf && next == '0' { 3 } else { 2 }),
            _ => {
                out.push('\\');
                out.push(next);
                continue;
            }
        };
        let mut value: u32 = if radix == 8 {
            next.to_digit(8).unwrap_or(0)
        } else {
            0
        };
        let mut digits = 0;
        while digits < max {
            match chars.peek().and_then(|d| d.to_digit(radix)) {
                Some(d) => {
                    value = value.saturating_mul(radix).saturating_add(d);
                    chars.next();
                    digits += 1;
                }
                None => break,
            }
        }
        if radix == 16 && digits == 0 {
            out.push('\\');
            out.push(next);
        } else {
            out.push(char::from_u32(value).unwrap_or('\u{fffd}'));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Word {
        normalize(raw, &ParserOptions::default()).expect("parses")
    }

    #[test]
    fn quotes_and_escapes_are_undone() {
        assert_eq!(norm("'curl'").lit, "curl");
        assert_eq!(norm("c\"u\"rl").lit, "curl");
        assert_eq!(norm("s\\h").lit, "sh");
        assert_eq!(norm("$'\\x63url'").lit, "curl");
        assert_eq!(norm("\"a\\hb\"").lit, "a\\hb");
    }

    #[test]
    fn home_and_user_are_symbolic_in_paths() {
        assert_eq!(norm("~/.ssh").path, "~/.ssh");
        assert_eq!(norm("\"$HOME\"/x").path, "~/x");
        assert_eq!(norm("${HOME:?}").path, "~");
        assert_eq!(norm("/home/$USER").path, format!("/home/{USER}"));
        assert_eq!(norm("$DIR/x").path, format!("{UNKNOWN}/x"));
        let sub = norm("\"$(cat ~/.netrc)\"");
        assert_eq!(sub.subs, vec!["cat ~/.netrc".to_string()]);
        assert_eq!(sub.path, UNKNOWN.to_string());
    }

    #[test]
    fn printf_escapes_decode() {
        assert_eq!(decode_escapes("\\x63\\165rl\\n", false), "curl\n");
        assert_eq!(decode_escapes("\\0143", true), "c");
        assert_eq!(decode_escapes("\\x63\\x75", true), "cu");
    }
}
