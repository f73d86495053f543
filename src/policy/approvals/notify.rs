//! The approvals webhook: a JSON POST in the Slack incoming-webhook shape (`text` plus
//! `blocks`) for every new pending approval.
//!
//! Invariants: it runs on its own task, so a slow or dead webhook never holds or fails a
//! request; it retries a bounded number of times with growing back-off, then gives up (the
//! caller counts the failure); the message carries the rule, the caller, the session and the
//! console link — never the preview, which stays behind the console's sign-in, and never the
//! webhook URL in an error (it is a credential).

use super::Approval;
use crate::policy::auth::fetch::{Fetcher, Url};
use serde_json::json;
use std::time::Duration;

/// Attempts per notification, and the pause before each retry.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(0),
    Duration::from_millis(500),
    Duration::from_millis(2000),
];

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("approvals.notify_webhook_url: {0}")]
    Url(String),
    #[error("webhook failed after {attempts} attempts: {last}")]
    Failed { attempts: usize, last: String },
}

pub struct Notifier {
    url: Url,
    fetcher: Fetcher,
}

impl Notifier {
    pub fn new(url: &str) -> Result<Notifier, NotifyError> {
        let url = Url::parse(url).map_err(|e| NotifyError::Url(e.to_string()))?;
        Ok(Notifier {
            url,
            fetcher: Fetcher::new(None),
        })
    }

    /// Post the message for `approval` (whose console page is `link`), retrying.
    pub async fn send(&self, approval: &Approval, link: &str) -> Result<(), NotifyError> {
        let body = message(approval, link).to_string();
        let mut last = String::new();
        for (attempt, pause) in BACKOFF.iter().enumerate() {
            tokio::time::sleep(*pause).await;
            match self
                .fetcher
                .send(
                    "POST",
                    &self.url,
                    &[("content-type", "application/json")],
                    Some(body.as_bytes()),
                )
                .await
            {
                Ok((status, _)) if (200..300).contains(&status) => return Ok(()),
                Ok((status, _)) => last = format!("HTTP status {status}"),
                Err(error) => last = error.to_string(),
            }
            tracing::warn!(attempt = attempt + 1, error = %last, approval = %approval.id, "approvals webhook failed");
        }
        Err(NotifyError::Failed {
            attempts: BACKOFF.len(),
            last,
        })
    }
}

/// The Slack-shaped message for a new pending approval.
pub fn message(approval: &Approval, link: &str) -> serde_json::Value {
    let session = approval.session_id.as_deref().unwrap_or("none");
    let text = format!(
        "streammask: approval needed for rule `{}` requested by {} — {}",
        approval.rule_id, approval.subject, link
    );
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!(
                "*Approval needed* · rule `{}`\n{}", approval.rule_id, approval.rule_description)}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": format!("*Caller*\n{}", approval.subject)},
                {"type": "mrkdwn", "text": format!("*Groups*\n{}", approval.groups.join(", "))},
                {"type": "mrkdwn", "text": format!("*Session*\n{session}")},
                {"type": "mrkdwn", "text": format!("*Approval*\n{}", approval.id)},
            ]},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open in console"}, "url": link},
            ]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::approvals::store::contract::approval;

    #[test]
    fn the_message_is_slack_shaped_and_carries_no_preview() {
        let mut approval = approval("apr_1", "g", 1, 2);
        approval.preview = format!(
            "{} -- password={}",
            concat!("DROP", " DATABASE prod"),
            "hunter2".repeat(2)
        );
        let message = message(&approval, "https://console.example/approvals/apr_1");
        assert!(message["text"]
            .as_str()
            .unwrap()
            .contains("approve-drop-database"));
        assert!(message["blocks"].as_array().unwrap().len() >= 2);
        assert!(!message.to_string().contains("hunter2"));
        assert!(message
            .to_string()
            .contains("https://console.example/approvals/apr_1"));
    }
}
