//! JSON Lines bodies (message batch results) masked as they stream: each complete line is
//! walked like a JSON body (leniently, as a client reads it), and at most one partial line is
//! held.
//!
//! Invariants:
//! - every byte written was scanned, line by line: a line that is not JSON is scanned as text
//!   (and its findings reported) without changing how its neighbours are read;
//! - the tool calls of each result's `message` are judged whole like those of a non-streamed
//!   response (denylisted calls become a text block naming the rule);
//! - a line with a finding where no placeholder fits (`custom_id`, ids, `model`, `signature`)
//!   is replaced by an error line, never forwarded;
//! - a line is never split: bytes after the last newline wait for the next chunk or
//!   [`JsonlMasker::finish`].

use crate::anthropic::scan_value::lenient_value;
use crate::anthropic::tools::{judge_message_tools, ToolBlock};
use crate::engine::json_walk::{mask_json, ThinkingMode, WalkOptions};
use crate::engine::{Engine, Findings, Scope};
use std::borrow::Cow;
use std::sync::Arc;

/// What a line with a finding that cannot be masked becomes.
const REFUSED_LINE: &[u8] = b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"streammask: this result carried a secret where it cannot be masked\"}}";

/// What a batch of lines that could not be scanned at all becomes (the masking engine failed).
const UNSCANNABLE_LINE: &[u8] = b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"streammask: line could not be scanned\"}}\n";

/// What a line too long to hold and scan whole becomes (`JsonlMasker::with_max_line`).
const TOO_LONG_LINE: &[u8] = b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"streammask: this result line exceeded the proxy's line limit and was not forwarded\"}}";

/// The default cap on one held line.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

/// Masks one JSON Lines body.
pub struct JsonlMasker {
    engine: Arc<Engine>,
    options: WalkOptions,
    partial: Vec<u8>,
    /// At most this many bytes of one line are held; a longer line is dropped whole.
    max_line: usize,
    /// Inside a line that went over `max_line`: its bytes are dropped up to its newline.
    skipping: bool,
    findings: Findings,
    blocked_tools: Vec<ToolBlock>,
    /// Lines masked so far (for finding paths).
    lines: usize,
}

impl JsonlMasker {
    /// `thinking` is no longer consulted: thinking in responses is always masked.
    pub fn new(engine: Arc<Engine>, _thinking: ThinkingMode) -> JsonlMasker {
        let thinking = ThinkingMode::Mask;
        JsonlMasker {
            engine,
            options: WalkOptions {
                scope: Scope::Response,
                thinking,
                lenient: true,
            },
            partial: Vec::new(),
            max_line: DEFAULT_MAX_LINE_BYTES,
            skipping: false,
            findings: Findings::new(),
            blocked_tools: Vec::new(),
            lines: 0,
        }
    }

    /// Caps one held line at `bytes`: a longer line cannot be scanned whole, so it is replaced
    /// by an error line and its bytes are dropped as they come (one upstream line must not grow
    /// the proxy without bound).
    pub fn with_max_line(mut self, bytes: usize) -> JsonlMasker {
        self.max_line = bytes;
        self
    }

    /// Feed body bytes; the masked complete lines are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        if self.skipping {
            let Some(newline) = chunk.iter().position(|&b| b == b'\n') else {
                return;
            };
            self.skipping = false;
            out.extend_from_slice(TOO_LONG_LINE);
            out.push(b'\n');
            chunk = chunk.get(newline + 1..).unwrap_or_default();
        }
        // Only the new bytes can hold a newline (the partial line has none): looking there
        // keeps a long line fed in small chunks linear, not quadratic.
        let held = self.partial.len();
        self.partial.extend_from_slice(chunk);
        if let Some(last_newline) = memchr::memrchr(b'\n', chunk) {
            let complete: Vec<u8> = self.partial.drain(..=held + last_newline).collect();
            self.mask_lines(&complete, out);
        }
        if self.partial.len() > self.max_line {
            self.partial = Vec::new();
            self.skipping = true;
        }
    }

    /// The body ended: mask what is left of the last line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.skipping) {
            out.extend_from_slice(TOO_LONG_LINE);
        }
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.mask_lines(&rest, out);
        }
    }

    /// Bytes of the current partial line held right now.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// The findings so far, leaving none behind.
    pub fn take_findings(&mut self) -> Findings {
        std::mem::take(&mut self.findings)
    }

    /// The tool calls replaced so far, leaving none behind.
    pub fn take_blocked_tools(&mut self) -> Vec<ToolBlock> {
        std::mem::take(&mut self.blocked_tools)
    }

    fn mask_lines(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        for line in lines.split_inclusive(|&b| b == b'\n') {
            let (body, newline) = match line.strip_suffix(b"\n") {
                Some(body) => (body, &b"\n"[..]),
                None => (line, &b""[..]),
            };
            self.mask_line(body, out);
            out.extend_from_slice(newline);
        }
    }

    fn mask_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            out.extend_from_slice(line);
            return;
        }
        self.lines += 1;
        let at = format!("[line {}]", self.lines);
        let mut source = Cow::Borrowed(line);
        let mut findings = Findings::new();
        if let Some(mut value) = lenient_value(line) {
            if let Some(message) = value.pointer_mut("/result/message") {
                let tools = judge_message_tools(&self.engine, message);
                findings = tools.findings;
                findings.nest_under("result.message");
                self.blocked_tools.extend(tools.blocked);
                if tools.changed {
                    if let Ok(rewritten) = serde_json::to_vec(&value) {
                        source = Cow::Owned(rewritten);
                    }
                }
            }
        }
        match mask_json(&self.engine, &source, &self.options) {
            Ok(walked) => {
                findings.append(walked.findings);
                let refused = !walked.refusals.is_empty();
                findings.append(walked.refusals);
                findings.nest_under(&at);
                self.findings.append(findings);
                if refused {
                    out.extend_from_slice(REFUSED_LINE);
                } else {
                    out.extend_from_slice(walked.body.as_deref().unwrap_or(&source));
                }
            }
            Err(_) => {
                // A line that is not JSON still reaches the client: scanned as text.
                let text = String::from_utf8_lossy(line);
                match self.engine.mask(&text, Scope::Response) {
                    Ok(masked) => {
                        for finding in masked.findings {
                            self.findings.push(at.as_str(), finding);
                        }
                        out.extend_from_slice(masked.text.as_bytes());
                    }
                    Err(_) => out.extend_from_slice(UNSCANNABLE_LINE.trim_ascii_end()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[rules]]
id = "test-token"
description = "a test token"
pattern = 'tok_[a-z0-9]{12}'
action = "mask"
applies_to = ["request", "response"]
"#;

    fn masker() -> JsonlMasker {
        JsonlMasker::new(
            Arc::new(crate::engine::test_engine(RULES)),
            ThinkingMode::Report,
        )
    }

    fn secret() -> String {
        format!("tok_{}", "a1b2c3d4e5f6")
    }

    /// Feed `body` in pieces of `cut` bytes; returns what was written and the findings.
    fn run(body: &str, cut: usize) -> (String, Findings) {
        let mut masker = masker();
        let mut out = Vec::new();
        for piece in body.as_bytes().chunks(cut) {
            masker.push(piece, &mut out);
        }
        masker.finish(&mut out);
        (
            String::from_utf8(out).expect("masked JSON Lines are UTF-8"),
            masker.take_findings(),
        )
    }

    #[test]
    fn lines_are_masked_whole_however_the_body_is_cut() {
        let body = format!(
            "{{\"custom_id\":\"a\",\"result\":{{\"type\":\"succeeded\",\"message\":{{\"content\":[{{\"type\":\"text\",\"text\":\"key {}\"}}]}}}}}}\n\n{{\"custom_id\":\"b\",\"result\":{{\"type\":\"errored\"}}}}",
            secret()
        );
        let (whole, findings) = run(&body, body.len());
        assert!(!whole.contains(&secret()), "{whole}");
        assert!(whole.contains("[MASKED:test-token:"));
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0].path.starts_with("[line 1]"),
            "{}",
            findings[0].path
        );
        assert!(
            whole.ends_with("\"errored\"}}"),
            "the last line has no newline and keeps none"
        );
        for cut in [1, 2, 7, 64] {
            let (out, findings) = run(&body, cut);
            assert_eq!(out, whole, "cut {cut}");
            assert_eq!(findings.len(), 1, "cut {cut}");
        }
    }

    #[test]
    fn lines_that_are_not_json_are_scanned_as_text_and_reported() {
        let body = format!("{{\"ok\":true}}\nnot json: {}\n", secret());
        let (out, findings) = run(&body, 5);
        assert!(!out.contains(&secret()), "{out}");
        assert!(out.contains("[MASKED:test-token:"));
        assert_eq!(
            findings.len(),
            1,
            "the text fallback reports what it masked"
        );
        assert_eq!(findings[0].finding.rule_id, "test-token");
    }

    #[test]
    fn a_line_over_the_cap_is_dropped_whole_and_the_next_lines_go_on() {
        let mut masker = masker().with_max_line(1024);
        let mut out = Vec::new();
        masker.push(b"{\"a\":1}\n{\"long\":\"", &mut out);
        let mut peak = 0;
        for _ in 0..100 {
            masker.push(&[b'x'; 500], &mut out);
            peak = peak.max(masker.held());
        }
        assert!(peak <= 1024 + 500, "held {peak} bytes");
        masker.push(b"\"}\n{\"b\":2}\n", &mut out);
        masker.finish(&mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "{\"a\":1}");
        assert!(
            lines[1].contains("exceeded the proxy's line limit"),
            "{text}"
        );
        assert_eq!(lines[2], "{\"b\":2}");
        assert!(
            !text.contains("xxxx"),
            "part of the long line was forwarded"
        );
    }

    #[test]
    fn at_most_one_partial_line_is_held() {
        let mut masker = masker();
        let mut out = Vec::new();
        masker.push(b"{\"a\":1}\n{\"b\":", &mut out);
        assert_eq!(out, b"{\"a\":1}\n");
        assert_eq!(masker.partial, b"{\"b\":");
        masker.push(b"2}\n", &mut out);
        assert_eq!(out, b"{\"a\":1}\n{\"b\":2}\n");
        assert!(masker.partial.is_empty());
    }
}
