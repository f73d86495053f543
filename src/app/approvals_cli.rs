//! `streammask approvals list|show ID|approve ID|deny ID`: the approvals API from a terminal,
//! against `--admin URL` with `--token` or `STREAMMASK_TOKEN` (an approver's JWT or static
//! key, sent as `Authorization: Bearer`).
//!
//! Output is the API's data (masked previews, ids, callers); errors print the API's message.
//! The token is never printed.

use crate::policy::auth::fetch::{Fetcher, Url};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};
use std::process::ExitCode;

/// The environment variable holding the approver's token.
pub const TOKEN_ENV: &str = "STREAMMASK_TOKEN";

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// List approvals (newest first), optionally only those in one state.
    List {
        /// pending, approved, denied or expired.
        #[arg(long)]
        state: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one approval, its masked preview included.
    Show { id: String },
    /// Approve a pending approval.
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending approval.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub fn run(admin: &str, token: Option<String>, command: ApprovalsCommand) -> Result<ExitCode> {
    let token = match token.or_else(|| std::env::var(TOKEN_ENV).ok()) {
        Some(token) if !token.trim().is_empty() => token.trim().to_string(),
        _ => bail!("an approver token is needed: --token or {TOKEN_ENV}"),
    };
    let base = admin.trim_end_matches('/').to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let client = Client {
            fetcher: Fetcher::new(None),
            base,
            token,
        };
        match command {
            ApprovalsCommand::List { state, json } => {
                let path = match &state {
                    Some(state) => format!("/api/approvals?state={state}"),
                    None => "/api/approvals".to_string(),
                };
                let listed = client.call("GET", &path, None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&listed)?);
                } else {
                    print_table(listed["data"].as_array().map_or(&[][..], Vec::as_slice));
                }
            }
            ApprovalsCommand::Show { id } => {
                let approval = client
                    .call("GET", &format!("/api/approvals/{id}"), None)
                    .await?;
                print_one(&approval);
            }
            ApprovalsCommand::Approve { id, reason } => {
                let done = client.decide(&id, "approve", reason).await?;
                println!(
                    "{} approved by {}",
                    field(&done, "id"),
                    field(&done, "decided_by")
                );
            }
            ApprovalsCommand::Deny { id, reason } => {
                let done = client.decide(&id, "deny", reason).await?;
                println!(
                    "{} denied by {}",
                    field(&done, "id"),
                    field(&done, "decided_by")
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

struct Client {
    fetcher: Fetcher,
    base: String,
    token: String,
}

impl Client {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| anyhow::anyhow!("--admin: {e}"))?;
        let authorization = format!("Bearer {}", self.token);
        let body = body.map(|b| b.to_string());
        let (status, answer) = self
            .fetcher
            .send(
                method,
                &url,
                &[
                    ("authorization", authorization.as_str()),
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
                body.as_deref().map(str::as_bytes),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{method} {}{path}: {e}", self.base))?;
        let value: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            bail!("HTTP {status}: {message}");
        }
        Ok(value)
    }

    async fn decide(&self, id: &str, verb: &str, reason: Option<String>) -> Result<Value> {
        let body = reason.map(|reason| json!({ "reason": reason }));
        self.call("POST", &format!("/api/approvals/{id}/{verb}"), body)
            .await
    }
}

fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name].as_str().unwrap_or("-")
}

fn print_table(approvals: &[Value]) {
    if approvals.is_empty() {
        println!("no approvals");
        return;
    }
    println!(
        "{:<36}  {:<8}  {:<34}  {:<20}  {:<24}",
        "ID", "STATE", "RULE", "CALLER", "CREATED"
    );
    for approval in approvals {
        println!(
            "{:<36}  {:<8}  {:<34}  {:<20}  {:<24}",
            field(approval, "id"),
            field(approval, "state"),
            field(approval, "rule_id"),
            field(approval, "subject"),
            field(approval, "created_at"),
        );
    }
}

fn print_one(approval: &Value) {
    for name in [
        "id",
        "state",
        "rule_id",
        "subject",
        "session_id",
        "created_at",
        "expires_at",
        "decided_by",
        "reason",
    ] {
        println!("{name:<11} {}", field(approval, name));
    }
    let groups: Vec<&str> = approval["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!("{:<11} {}", "groups", groups.join(", "));
    println!("preview:");
    for line in field(approval, "preview").lines() {
        println!("    {line}");
    }
}
