//! Reading the audit log back: `streammask audit show` (one request) and `streammask audit
//! replay` (a Claude Code session turn by turn).
//!
//! Invariant: reading never fails on a bad line (a torn last line, a record of another
//! version): such lines are skipped; only an unreadable file is an error.

use super::record::AuditRecord;
use super::writer::rotated;
use super::AuditError;
use serde_json::Value;
use std::path::Path;

/// Every record in the log at `path` and its rotated files, oldest first. Lines that do not
/// parse (a torn last line) are skipped.
pub fn read_records(path: &Path) -> Result<Vec<AuditRecord<'static>>, AuditError> {
    let mut files = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        files.push(rotated(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    let mut records = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && file != path => continue,
            Err(source) => return Err(AuditError::Read { path: file, source }),
        };
        for line in text.lines() {
            if let Ok(record) = serde_json::from_str::<AuditRecord>(line) {
                records.push(record);
            }
        }
    }
    Ok(records)
}

fn content_text(content: &Value) -> Vec<String> {
    match content {
        Value::String(s) => vec![s.clone()],
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| {
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" => block
                        .get("text")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    "thinking" => block
                        .get("thinking")
                        .and_then(Value::as_str)
                        .map(|t| format!("(thinking) {t}")),
                    "tool_use" => Some(format!(
                        "[tool_use {}] {}",
                        block.get("name").and_then(Value::as_str).unwrap_or("?"),
                        block.get("input").map(Value::to_string).unwrap_or_default()
                    )),
                    "tool_result" => Some(format!(
                        "[tool_result] {}",
                        content_text(block.get("content").unwrap_or(&Value::Null)).join("\n")
                    )),
                    other => Some(format!("[{other}]")),
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn header_line(record: &AuditRecord<'_>) -> String {
    let who = record
        .identity
        .as_ref()
        .map_or("anonymous".to_string(), |i| i.subject.clone());
    format!(
        "{} {} {} {} model={} status={} decision={}{} caller={}",
        record.time,
        record.request_id,
        record.method,
        record.endpoint,
        record.model.as_deref().unwrap_or("-"),
        record.status,
        record.decision,
        record
            .blocked_rule
            .as_deref()
            .map(|r| format!(" rule={r}"))
            .unwrap_or_default(),
        who
    )
}

fn write_findings(out: &mut String, record: &AuditRecord<'_>) {
    for f in &record.findings {
        out.push_str(&format!(
            "  finding {} {} {} at {}: {} {}\n",
            f.direction, f.rule, f.action, f.path, f.placeholder, f.preview
        ));
    }
}

fn write_response(out: &mut String, record: &AuditRecord<'_>) {
    let response = record.transcript.as_ref().and_then(|t| t.get("response"));
    match response {
        Some(message) => {
            if let Some(content) = message.get("content") {
                for text in content_text(content) {
                    out.push_str(&format!("assistant: {text}\n"));
                }
            } else if let Some(error) = message.get("error") {
                out.push_str(&format!("assistant: (error) {error}\n"));
            }
            if let Some(error) = message
                .get("error")
                .filter(|_| message.get("content").is_some())
            {
                out.push_str(&format!("assistant: (stream error) {error}\n"));
            }
        }
        None if record.decision == "blocked" => out.push_str(&format!(
            "(blocked by rule {}: nothing reached the model)\n",
            record.blocked_rule.as_deref().unwrap_or("?")
        )),
        None => out.push_str("(no transcript recorded)\n"),
    }
}

/// `streammask audit show`: one request in full.
pub fn show(records: &[AuditRecord<'static>], request_id: &str) -> Option<String> {
    let record = records.iter().find(|r| r.request_id == request_id)?;
    let mut out = header_line(record);
    out.push('\n');
    if let Some(session) = &record.session_id {
        out.push_str(&format!("session: {session}\n"));
    }
    if let Some(usage) = &record.usage {
        out.push_str(&format!(
            "usage: {}\n",
            serde_json::to_string(usage).unwrap_or_default()
        ));
    }
    write_findings(&mut out, record);
    let request = record.transcript.as_ref().and_then(|t| t.get("request"));
    if let Some(system) = request.and_then(|r| r.get("system")) {
        for text in content_text(system) {
            out.push_str(&format!("system: {text}\n"));
        }
    }
    if let Some(Value::Array(messages)) = request.and_then(|r| r.get("messages")) {
        for message in messages {
            let role = message.get("role").and_then(Value::as_str).unwrap_or("?");
            for text in content_text(message.get("content").unwrap_or(&Value::Null)) {
                out.push_str(&format!("{role}: {text}\n"));
            }
        }
    }
    write_response(&mut out, record);
    Some(out)
}

/// `streammask audit replay`: a session turn by turn. Clients resend the whole conversation
/// each turn, so each turn prints only the user messages added since the previous request
/// and then the response.
pub fn replay(records: &[AuditRecord<'static>], session: &str) -> Option<String> {
    let turns: Vec<&AuditRecord<'static>> = records
        .iter()
        .filter(|r| r.session_id.as_deref() == Some(session))
        .collect();
    if turns.is_empty() {
        return None;
    }
    let mut out = format!("session {session}: {} request(s)\n", turns.len());
    let mut seen = 0usize;
    for (n, record) in turns.iter().enumerate() {
        out.push_str(&format!("\n=== turn {} · {}\n", n + 1, header_line(record)));
        write_findings(&mut out, record);
        let messages = record
            .transcript
            .as_ref()
            .and_then(|t| t.pointer("/request/messages"))
            .and_then(Value::as_array);
        if let Some(messages) = messages {
            let start = if messages.len() > seen { seen } else { 0 };
            for message in &messages[start..] {
                let role = message.get("role").and_then(Value::as_str).unwrap_or("?");
                if role == "assistant" {
                    continue;
                }
                for text in content_text(message.get("content").unwrap_or(&Value::Null)) {
                    out.push_str(&format!("{role}: {text}\n"));
                }
            }
            seen = messages.len() + 1;
        }
        write_response(&mut out, record);
    }
    Some(out)
}
