//! The approve findings of a request as *matched lines*: what a grant is about (the whole
//! trimmed line that holds the match, so approving a destroy of one `-target` does not approve
//! a destroy of everything) and what the approver is shown (that line and its neighbours,
//! masked).
//!
//! Invariants:
//! - every approve finding the walker reported yields a matched line: one found again in a
//!   string of the body gets its line and preview; one the walker found where this reading
//!   does not (an object key, an encoded value) gets a line made of its rule and path and a
//!   preview that says so — never no line, so nothing is forwarded unapproved;
//! - the preview is the text after every non-approve finding of every scope was replaced by
//!   its placeholder (masking runs over the whole string before lines are cut, so a secret
//!   spanning lines is masked whole), then cut to a few bounded lines: it never holds a raw
//!   secret. The raw line is kept only to be hashed; `Debug` never prints it.

use crate::engine::findings::Findings;
use crate::engine::json_strings::for_each_string;
use crate::engine::{Action, Engine, Finding, Scope};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;

/// Lines of context shown above and below the matched line.
const CONTEXT_LINES: usize = 2;
/// Characters of one preview line kept.
const MAX_LINE_CHARS: usize = 240;

/// One approve finding, as the grant and the console need it.
#[derive(Clone, PartialEq, Eq)]
pub struct MatchedLine {
    pub rule_id: String,
    pub rule_description: String,
    /// The trimmed raw line: hashed into the grant key, never shown.
    line: String,
    /// The line and its neighbours, masked.
    pub preview: String,
    /// Where in the body (a JSON path, masked).
    pub path: String,
}

impl MatchedLine {
    /// The raw line's bytes, for the keyed hash of the grant.
    pub fn line_bytes(&self) -> &[u8] {
        self.line.as_bytes()
    }

    #[cfg(test)]
    pub fn for_test(rule_id: &str, line: &str) -> MatchedLine {
        MatchedLine {
            rule_id: rule_id.into(),
            rule_description: String::new(),
            line: line.trim().into(),
            preview: line.trim().into(),
            path: "messages[0].content".into(),
        }
    }
}

impl fmt::Debug for MatchedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatchedLine")
            .field("rule_id", &self.rule_id)
            .field("path", &self.path)
            .field("line_bytes", &self.line.len())
            .finish_non_exhaustive()
    }
}

/// The matched lines of `body` (the request as the client sent it, decoded), given the
/// findings the walker reported for it. Empty when no finding is an approve one.
pub fn matched_lines(engine: &Engine, body: &[u8], findings: &Findings) -> Vec<MatchedLine> {
    let wanted: Vec<(&str, &str, Option<&str>)> = findings
        .iter()
        .filter(|f| f.finding.action == Action::Approve)
        .map(|f| {
            (
                f.finding.rule_id.as_str(),
                f.path.as_str(),
                f.finding.detail.as_deref(),
            )
        })
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Ok(document) = serde_json::from_slice::<Value>(body) {
        for_each_string(&document, &mut |path, text| {
            lines_of(engine, text, path, &mut out)
        });
    }
    let located: HashSet<(String, String)> = out
        .iter()
        .map(|m| (m.rule_id.clone(), m.path.clone()))
        .collect();
    for (rule_id, path, detail) in wanted {
        if located.contains(&(rule_id.to_string(), path.to_string())) {
            continue;
        }
        let shown = engine.redact_all(path).into_owned();
        let (line, preview) = match detail {
            // A finding that is not a span (protected code): what it matched is its detail,
            // and the grant is for that detail at this place.
            Some(detail) => (
                format!("\u{0}unlocated\u{0}{path}\u{0}{detail}"),
                format!("({detail}, at `{shown}`; the text itself is not shown)"),
            ),
            // Rule and path stand in for the line: the grant is for this place in the request.
            None => (
                format!("\u{0}unlocated\u{0}{path}"),
                format!("(the match is in a value the console cannot show, at `{shown}`)"),
            ),
        };
        out.push(MatchedLine {
            rule_id: rule_id.to_string(),
            rule_description: engine.rule_description(rule_id).to_string(),
            line,
            preview,
            path: shown,
        });
    }
    // Only what the walker reported counts (the walker knows which values are scanned).
    let reported: HashSet<&str> = findings
        .iter()
        .filter(|f| f.finding.action == Action::Approve)
        .map(|f| f.finding.rule_id.as_str())
        .collect();
    out.retain(|m| reported.contains(m.rule_id.as_str()));
    out
}

/// The matched lines of one string.
fn lines_of(engine: &Engine, text: &str, path: &str, out: &mut Vec<MatchedLine>) {
    let Ok(findings) = engine.scan(text, Scope::Request) else {
        return;
    };
    if !findings.iter().any(|f| f.action == Action::Approve) {
        return;
    }
    let (masked, landed) = mask_all_but_approve(text, &findings);
    let path_shown = engine.redact_all(path).into_owned();
    for (finding, at) in landed {
        let line = line_around(text, finding.span.start, finding.span.end)
            .trim()
            .to_string();
        let preview = preview_around(engine, &masked, at.min(masked.len()));
        out.push(MatchedLine {
            rule_id: finding.rule_id.clone(),
            rule_description: engine.rule_description(&finding.rule_id).to_string(),
            line,
            preview,
            path: path_shown.clone(),
        });
    }
}

/// `text` with every finding but the approve ones replaced by its placeholder (of overlapping
/// findings the first wins), and where each approve finding starts in the result.
fn mask_all_but_approve<'f>(
    text: &str,
    findings: &'f [Finding],
) -> (String, Vec<(&'f Finding, usize)>) {
    let mut masked = String::with_capacity(text.len());
    let mut last = 0;
    let mut landed = Vec::new();
    for finding in findings {
        if finding.action == Action::Approve {
            let start = finding.span.start.max(last);
            landed.push((finding, masked.len() + (start - last)));
            continue;
        }
        if finding.span.start < last {
            continue;
        }
        masked.push_str(&text[last..finding.span.start]);
        masked.push_str(&finding.placeholder);
        last = finding.span.end;
    }
    masked.push_str(&text[last..]);
    (masked, landed)
}

/// The whole line(s) holding `start..end`.
fn line_around(text: &str, start: usize, end: usize) -> &str {
    let from = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let to = text[end..].find('\n').map_or(text.len(), |i| end + i);
    &text[from..to]
}

/// The line of `masked` holding byte `at` with [`CONTEXT_LINES`] around it, each line cut to
/// [`MAX_LINE_CHARS`], masked once more in every scope (approve matches kept).
fn preview_around(engine: &Engine, masked: &str, at: usize) -> String {
    let mut at = at;
    while !masked.is_char_boundary(at) {
        at -= 1;
    }
    let lines: Vec<&str> = masked.split('\n').collect();
    let mut offset = 0;
    let mut index = 0;
    for (i, line) in lines.iter().enumerate() {
        if at <= offset + line.len() {
            index = i;
            break;
        }
        offset += line.len() + 1;
    }
    let from = index.saturating_sub(CONTEXT_LINES);
    let to = (index + CONTEXT_LINES + 1).min(lines.len());
    let cut: Vec<String> = lines[from..to]
        .iter()
        .map(|line| {
            let line = line.trim_end();
            match line.char_indices().nth(MAX_LINE_CHARS) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line.to_string(),
            }
        })
        .collect();
    keep_approve_mask_rest(engine, &cut.join("\n"))
}

/// `text` with every finding of every scope replaced by its placeholder, except approve ones.
fn keep_approve_mask_rest(engine: &Engine, text: &str) -> String {
    let mut current = text.to_string();
    for scope in Scope::ALL {
        let Ok(findings) = engine.scan(&current, scope) else {
            return "[unscannable]".to_string();
        };
        let (out, _) = mask_all_but_approve(&current, &findings);
        current = out;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::json_walk::{mask_json_within, ThinkingMode, WalkOptions};
    use crate::engine::masker::DEFAULT_MAX_HOLD_BYTES;
    use crate::engine::placeholder::PlaceholderKey;
    use crate::engine::RuleSet;

    fn engine() -> Engine {
        let set = RuleSet::embedded().expect("pack");
        let key = PlaceholderKey::new(b"lines-test-key-0123456789").expect("key");
        Engine::compile(&set, key, DEFAULT_MAX_HOLD_BYTES).expect("compiles")
    }

    fn walk(engine: &Engine, body: &[u8]) -> Findings {
        let options = WalkOptions {
            scope: Scope::Request,
            thinking: ThinkingMode::Mask,
            lenient: false,
        };
        mask_json_within(engine, body, &options, None, None)
            .expect("walk")
            .findings
    }

    /// An approve-rule line, written in pieces so the source itself has no finding.
    const DESTROY: &str = concat!("terraform", " destroy -target=module.cache");

    /// A GitHub token built from pieces (no credential-shaped literal in the source).
    fn token() -> String {
        format!("{}{}", "ghp_", "Zq7".repeat(12))
    }

    #[test]
    fn the_grant_line_is_the_whole_line_and_the_preview_is_masked() {
        let engine = engine();
        let secret = token();
        let text = format!("cd infra\nexport GITHUB_TOKEN={secret}\n{DESTROY}\necho done\n");
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "m", "max_tokens": 1,
            "messages": [{"role": "user", "content": text}],
        }))
        .unwrap();
        let lines = matched_lines(&engine, &body, &walk(&engine, &body));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line.rule_id, "approve-terraform-destroy");
        assert_eq!(line.line_bytes(), DESTROY.as_bytes());
        assert_eq!(line.path, "messages[0].content");
        assert!(line.preview.contains(DESTROY));
        assert!(line.preview.contains("cd infra"), "{}", line.preview);
        assert!(!line.preview.contains(&secret), "{}", line.preview);
        assert!(!format!("{line:?}").contains("module.cache"));
    }

    #[test]
    fn a_finding_this_reading_cannot_place_still_needs_approval() {
        // The walker reports an approve finding where no string of the body holds one (an
        // object key, an encoded value): it still yields a line, keyed by rule and path.
        let engine = engine();
        let body = br#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;
        let finding = engine
            .scan(concat!("DROP", " DATABASE prod"), Scope::Request)
            .expect("scan")
            .into_iter()
            .find(|f| f.action == Action::Approve)
            .expect("the pack has an approve rule for it");
        let mut findings = Findings::new();
        findings.push(concat!("metadata[\"DROP", " DATABASE prod\"]"), finding);
        let lines = matched_lines(&engine, body, &findings);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].rule_id, "approve-drop-database");
        assert!(
            lines[0].preview.contains("cannot show"),
            "{}",
            lines[0].preview
        );
        // Different places are different grants.
        let mut elsewhere = Findings::new();
        elsewhere.push("metadata.other", lines_finding(&engine));
        let other = matched_lines(&engine, body, &elsewhere);
        assert_ne!(other[0].line_bytes(), lines[0].line_bytes());
    }

    fn lines_finding(engine: &Engine) -> crate::engine::Finding {
        engine
            .scan(concat!("drop", " schema x"), Scope::Request)
            .expect("scan")
            .into_iter()
            .find(|f| f.action == Action::Approve)
            .expect("approve finding")
    }

    #[test]
    fn no_approve_finding_no_line() {
        let engine = engine();
        let body = br#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"terraform plan"}]}"#;
        assert!(matched_lines(&engine, body, &walk(&engine, body)).is_empty());
    }
}
