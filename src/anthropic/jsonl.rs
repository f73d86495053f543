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
