//! `[approvals]` as written in the config file, and the validated settings the service runs on.
//!
//! Invariants: `hold_secs` stays below 240 (Claude Code abandons a silent connection at 300 s,
//! and a held request must be answered before that); a Redis URL is only ever handed to the
//! Redis client, never printed; every duration is bounded so that a typo cannot keep a grant
//! for years.

use crate::config_error::{invalid, ConfigError};
use crate::policy::store::{resolve_redis_url, RedisKeys};
use serde::Deserialize;
use std::time::Duration;

/// `[approvals]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsSection {
    /// `"return"` (answer 403 at once) or `"hold"` (keep the request open for a decision).
    pub mode: String,
    /// How long a request is held in `"hold"` mode before it gets the `"return"` answer.
    pub hold_secs: u64,
    /// How long an approval (or a denial) covers later requests carrying the same text.
    pub grant_ttl_secs: u64,
    /// How long an approval may stay pending before it expires undecided.
    pub pending_ttl_secs: u64,
    /// Callers in any of these groups may decide (never on their own requests).
    pub approver_groups: Vec<String>,
    /// The public base URL of the approvals console, for messages and notifications
    /// (default: the admin listener's address).
    pub console_url: Option<String>,
    /// A Slack-style incoming webhook told of every new pending approval.
    pub notify_webhook_url: Option<String>,
    /// `"memory"` (one replica) or `"redis"` (replicas share approvals and grants).
    pub store: String,
    pub redis_url: Option<String>,
    pub redis_url_env: Option<String>,
    pub redis_timeout_ms: u64,
}

impl Default for ApprovalsSection {
    fn default() -> Self {
        ApprovalsSection {
            mode: "return".into(),
            hold_secs: 120,
            grant_ttl_secs: 8 * 3600,
            pending_ttl_secs: 3600,
            approver_groups: Vec::new(),
            console_url: None,
            notify_webhook_url: None,
            store: "memory".into(),
            redis_url: None,
            redis_url_env: None,
            redis_timeout_ms: 500,
        }
    }
}

/// What a request needing approval gets while no decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A 403 naming the approval at once.
    Return,
    /// The request waits, up to `hold`, for a decision.
    Hold,
}

/// Where approvals are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalStoreKind {
    Memory,
    /// The URL is only ever passed to the Redis client, never printed.
    Redis {
        url: String,
    },
}

/// The validated `[approvals]`.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    pub mode: Mode,
    pub hold: Duration,
    pub grant_ttl: Duration,
    pub pending_ttl: Duration,
    pub approver_groups: Vec<String>,
    /// Without a trailing slash; `None` until start-up fills in the admin address.
    pub console_url: Option<String>,
    pub notify_webhook_url: Option<String>,
    pub store: ApprovalStoreKind,
    pub redis_timeout: Duration,
}

/// The longest a request may be held: Claude Code gives up on a silent connection at 300 s.
pub const MAX_HOLD_SECS: u64 = 239;

impl ApprovalsSection {
    pub fn validate(self) -> Result<ApprovalSettings, ConfigError> {
        let mode = match self.mode.as_str() {
            "return" => Mode::Return,
            "hold" => Mode::Hold,
            _ => return Err(invalid("approvals.mode", "must be \"return\" or \"hold\"")),
        };
        if !(1..=MAX_HOLD_SECS).contains(&self.hold_secs) {
            return Err(invalid(
                "approvals.hold_secs",
                "must be between 1 and 239 (Claude Code gives up on a silent connection at 300 s)",
            ));
        }
        if !(1..=30 * 86_400).contains(&self.grant_ttl_secs) {
            return Err(invalid(
                "approvals.grant_ttl_secs",
                "must be between 1 and 2592000 (30 days)",
            ));
        }
        if !(1..=7 * 86_400).contains(&self.pending_ttl_secs) {
            return Err(invalid(
                "approvals.pending_ttl_secs",
                "must be between 1 and 604800 (7 days)",
            ));
        }
        if self.approver_groups.iter().any(|g| g.trim().is_empty()) {
            return Err(invalid("approvals.approver_groups", "holds an empty group"));
        }
        for (key, url) in [
            ("approvals.console_url", &self.console_url),
            ("approvals.notify_webhook_url", &self.notify_webhook_url),
        ] {
            if let Some(url) = url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(key, "must be an http:// or https:// URL"));
                }
            }
        }
        if !(10..=10_000).contains(&self.redis_timeout_ms) {
            return Err(invalid(
                "approvals.redis_timeout_ms",
                "must be between 10 and 10000",
            ));
        }
        let store = match self.store.as_str() {
            "memory" => ApprovalStoreKind::Memory,
            "redis" => ApprovalStoreKind::Redis {
                url: resolve_redis_url(
                    RedisKeys {
                        store: "approvals.store",
                        url: "approvals.redis_url",
                        url_env: "approvals.redis_url_env",
                    },
                    self.redis_url.as_deref(),
                    self.redis_url_env.as_deref(),
                )?,
            },
            _ => {
                return Err(invalid(
                    "approvals.store",
                    "must be \"memory\" or \"redis\"",
                ))
            }
        };
        Ok(ApprovalSettings {
            mode,
            hold: Duration::from_secs(self.hold_secs),
            grant_ttl: Duration::from_secs(self.grant_ttl_secs),
            pending_ttl: Duration::from_secs(self.pending_ttl_secs),
            approver_groups: self.approver_groups,
            console_url: self
                .console_url
                .map(|url| url.trim_end_matches('/').to_string()),
            notify_webhook_url: self.notify_webhook_url,
            store,
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<ApprovalSettings, String> {
        toml::from_str::<ApprovalsSection>(text)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_return_at_once_from_memory() {
        let settings = section("").expect("defaults validate");
        assert_eq!(settings.mode, Mode::Return);
        assert_eq!(settings.store, ApprovalStoreKind::Memory);
        assert_eq!(settings.hold, Duration::from_secs(120));
        assert!(settings.approver_groups.is_empty());
    }

    #[test]
    fn a_hold_past_claude_codes_patience_is_refused() {
        let err = section("mode = \"hold\"\nhold_secs = 240").unwrap_err();
        assert!(err.contains("approvals.hold_secs"), "{err}");
        assert!(section("mode = \"hold\"\nhold_secs = 239").is_ok());
        let err = section("mode = \"wait\"").unwrap_err();
        assert!(err.contains("approvals.mode"), "{err}");
    }

    #[test]
    fn redis_needs_a_redis_url_and_never_echoes_it() {
        let err = section("store = \"redis\"").unwrap_err();
        assert!(err.contains("approvals.store"), "{err}");
        let url = format!("rediss://u:{}@h:6380", "hunter2".repeat(2));
        let err = section(&format!("store = \"redis\"\nredis_url = \"{url}\"")).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        let ok = section("store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"").unwrap();
        assert!(matches!(ok.store, ApprovalStoreKind::Redis { .. }));
        let err = section("console_url = \"ftp://x\"").unwrap_err();
        assert!(err.contains("approvals.console_url"), "{err}");
    }
}
