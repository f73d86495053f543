//! Token usage as the Messages API reports it: `usage` of a message, of `message_start` and of
//! `message_delta`. Numbers are cumulative, so the last report of each kind wins.

use serde::{Deserialize, Serialize};

/// The kinds of token the API counts, in a fixed order (metric label arrays follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Input,
    Output,
    CacheRead,
    CacheWrite,
}

impl TokenKind {
    pub const ALL: [TokenKind; 4] = [
        TokenKind::Input,
        TokenKind::Output,
        TokenKind::CacheRead,
        TokenKind::CacheWrite,
    ];

    /// The kind counted by a `usage` field, if it is one.
    pub fn from_field(field: &str) -> Option<TokenKind> {
        Some(match field {
            "input_tokens" => TokenKind::Input,
            "output_tokens" => TokenKind::Output,
            "cache_read_input_tokens" => TokenKind::CacheRead,
            "cache_creation_input_tokens" => TokenKind::CacheWrite,
            _ => return None,
        })
    }

    /// Bounded label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            TokenKind::Input => "input",
            TokenKind::Output => "output",
            TokenKind::CacheRead => "cache_read",
            TokenKind::CacheWrite => "cache_write",
        }
    }
}

/// Token usage of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
}

impl Usage {
    pub fn set(&mut self, kind: TokenKind, value: u64) {
        *self.slot(kind) = Some(value);
    }

    pub fn get(&self, kind: TokenKind) -> Option<u64> {
        match kind {
            TokenKind::Input => self.input_tokens,
            TokenKind::Output => self.output_tokens,
            TokenKind::CacheRead => self.cache_read_input_tokens,
            TokenKind::CacheWrite => self.cache_creation_input_tokens,
        }
    }

    fn slot(&mut self, kind: TokenKind) -> &mut Option<u64> {
        match kind {
            TokenKind::Input => &mut self.input_tokens,
            TokenKind::Output => &mut self.output_tokens,
            TokenKind::CacheRead => &mut self.cache_read_input_tokens,
            TokenKind::CacheWrite => &mut self.cache_creation_input_tokens,
        }
    }

    /// Take in a later report: every kind it counts.
    pub fn update(&mut self, later: Usage) {
        for kind in TokenKind::ALL {
            if let Some(count) = later.get(kind) {
                self.set(kind, count);
            }
        }
    }

    /// Take in a `usage` object: every field that counts a kind of token; others are ignored.
    pub fn record(&mut self, usage: &serde_json::Map<String, serde_json::Value>) {
        for (field, value) in usage {
            if let (Some(kind), Some(n)) = (TokenKind::from_field(field), value.as_u64()) {
                self.set(kind, n);
            }
        }
    }

    /// The `usage` object of a complete JSON response body.
    pub fn from_json_body(body: &[u8]) -> Usage {
        #[derive(Deserialize)]
        struct Body {
            usage: Option<serde_json::Map<String, serde_json::Value>>,
        }
        let mut usage = Usage::default();
        if let Ok(Body { usage: Some(map) }) = serde_json::from_slice::<Body>(body) {
            usage.record(&map);
        }
        usage
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_reports_win_and_unknown_fields_are_ignored() {
        let mut usage = Usage::from_json_body(
            br#"{"usage":{"input_tokens":12,"output_tokens":1,"server_tool_use":{"x":1}}}"#,
        );
        assert_eq!(usage.get(TokenKind::Input), Some(12));
        let delta = serde_json::json!({"output_tokens": 40, "cache_read_input_tokens": 7});
        usage.record(delta.as_object().expect("an object literal"));
        assert_eq!(usage.get(TokenKind::Output), Some(40));
        assert_eq!(usage.get(TokenKind::CacheRead), Some(7));
        assert_eq!(usage.get(TokenKind::CacheWrite), None);
        assert!(Usage::from_json_body(b"[1]").is_empty());
    }
}
