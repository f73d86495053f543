//! JSON Lines bodies (message batch results) masked as they stream: each complete line is
//! walked like a JSON body, and at most one partial line is held.
//!
//! Invariants:
//! - every byte written was scanned: lines that are not JSON are scanned as text, and their
//!   findings are reported like any other;
//! - a line is never split: bytes after the last newline wait for the next chunk or
//!   [`JsonlMasker::finish`].

use crate::engine::json_walk::{mask_jsonl, ThinkingMode, WalkOptions};
use crate::engine::{Engine, Findings, Scope};
use std::sync::Arc;

/// What a batch of lines that could not be scanned at all becomes (the masking engine failed).
const UNSCANNABLE_LINE: &[u8] = b"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"streammask: line could not be scanned\"}}\n";

/// Masks one JSON Lines body.
pub struct JsonlMasker {
    engine: Arc<Engine>,
    options: WalkOptions,
    partial: Vec<u8>,
    findings: Findings,
}

impl JsonlMasker {
    pub fn new(engine: Arc<Engine>, thinking: ThinkingMode) -> JsonlMasker {
        JsonlMasker {
            engine,
            options: WalkOptions {
                scope: Scope::Response,
                thinking,
                lenient: false,
            },
            partial: Vec::new(),
            findings: Findings::new(),
        }
    }

    /// Feed body bytes; the masked complete lines are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.partial.extend_from_slice(chunk);
        if let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
            self.mask_lines(&complete, out);
        }
    }

    /// The body ended: mask what is left of the last line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            self.mask_lines(&rest, out);
        }
    }

    /// The findings so far, leaving none behind.
    pub fn take_findings(&mut self) -> Findings {
        std::mem::take(&mut self.findings)
    }

    fn mask_lines(&mut self, lines: &[u8], out: &mut Vec<u8>) {
        if let Ok(walked) = mask_jsonl(&self.engine, lines, &self.options) {
            self.findings.append(walked.findings);
            out.extend_from_slice(walked.body.as_deref().unwrap_or(lines));
            return;
        }
        // Lines that are not JSON still reach the client, so they are scanned as text.
        let text = String::from_utf8_lossy(lines);
        match self.engine.mask(&text, Scope::Response) {
            Ok(masked) => {
                for finding in masked.findings {
                    self.findings.push("", finding);
                }
                out.extend_from_slice(masked.text.as_bytes());
            }
            Err(_) => out.extend_from_slice(UNSCANNABLE_LINE),
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
