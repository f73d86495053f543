//! Tool calls judged whole: the complete input of a `tool_use` block is walked with the
//! `tool_input` rules, masked, or — when a `block` rule matches — replaced by a text block that
//! says which rule stopped it.
//!
//! Invariants:
//! - a tool call is judged only complete (clients act on it only then), and input that is not
//!   JSON is refused ([`ToolBlock::Unparseable`]), never passed on unscanned;
//! - a blocked call is attributed to the first blocking finding in its input, so it counts once
//!   however many block rules match;
//! - when every tool call of a message was blocked, `stop_reason: tool_use` becomes `end_turn`,
//!   so the client shows the message instead of waiting for a tool result.

use crate::engine::json_walk::{mask_json, ThinkingMode, WalkOptions};
use crate::engine::{Action, Engine, Finding, Findings, Scope};
use serde_json::{json, Value};

/// Why a tool call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolBlock {
    /// The first finding of a `block` rule in the call's input.
    Rule(Finding),
    /// The input is not JSON, so it could not be checked.
    Unparseable,
}

impl ToolBlock {
    /// The name a refusal goes by in the client's message and in metrics: the rule id, or a
    /// reserved id for input that could not be parsed.
    pub fn rule_id(&self) -> &str {
        match self {
            ToolBlock::Rule(finding) => &finding.rule_id,
            ToolBlock::Unparseable => "streammask-unparseable-tool-input",
        }
    }

    fn description<'e>(&self, engine: &'e Engine) -> &'e str {
        match self {
            ToolBlock::Rule(finding) => engine.rule_description(&finding.rule_id),
            ToolBlock::Unparseable => {
                "the tool input could not be parsed, so it could not be checked"
            }
        }
    }

    /// What the client sees instead of the blocked call.
    pub fn client_text(&self, engine: &Engine, tool_name: &str) -> String {
        format!(
            "[streammask] The {tool_name} tool call was blocked by the organisation's policy \
             (rule `{}`: {}). It was not run. Ask your security team if you need this action.",
            self.rule_id(),
            self.description(engine)
        )
    }
}

/// The decision on one complete tool call.
#[derive(Debug)]
pub enum ToolVerdict {
    /// Forward this (possibly masked) input JSON.
    Allow(Vec<u8>),
    /// The call must not reach the client.
    Block(ToolBlock),
}

/// Judge a complete tool input (`{}` when empty) with the `tool_input` rules. Findings are
/// located under `at`, the path of the tool block (`content[1]` → `content[1].input.command`).
pub fn judge_tool_input(engine: &Engine, input: &[u8], at: &str) -> (ToolVerdict, Findings) {
    let input: &[u8] = if input.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        input
    };
    let options = WalkOptions {
        scope: Scope::ToolInput,
        thinking: ThinkingMode::Report,
        lenient: false,
    };
    let Ok(walked) = mask_json(engine, input, &options) else {
        return (ToolVerdict::Block(ToolBlock::Unparseable), Findings::new());
    };
    let mut findings = walked.findings;
    findings.nest_under(&format!("{at}.input"));
    let verdict = match findings.first_with(Action::Block) {
        Some(blocking) => ToolVerdict::Block(ToolBlock::Rule(blocking.finding.clone())),
        None => ToolVerdict::Allow(walked.body.unwrap_or_else(|| input.to_vec())),
    };
    (verdict, findings)
}

/// What judging the tool calls of a complete message did.
#[derive(Debug, Default)]
pub struct MessageTools {
    /// Whether the message was changed (an input masked, a call replaced).
    pub changed: bool,
    pub findings: Findings,
    pub blocked: Vec<ToolBlock>,
}

/// Whether a content block is a tool call the client may act on: the known tool-use types, and
/// any block that carries an `input` (`mcp_tool_use`, whatever comes next).
pub fn is_tool_like(block_type: &str, has_input: bool) -> bool {
    has_input || matches!(block_type, "tool_use" | "server_tool_use" | "mcp_tool_use")
}

/// Judge every tool-like block ([`is_tool_like`]) of a complete message in place.
pub fn judge_message_tools(engine: &Engine, message: &mut Value) -> MessageTools {
    let mut judged = MessageTools::default();
    let Some(content) = message.get_mut("content").and_then(Value::as_array_mut) else {
        return judged;
    };
    let mut remaining = 0;
    for (index, block) in content.iter_mut().enumerate() {
        let block_type = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !is_tool_like(block_type, block.get("input").is_some()) {
            continue;
        }
        let input =
            serde_json::to_vec(block.get("input").unwrap_or(&Value::Null)).unwrap_or_default();
        let (verdict, findings) = judge_tool_input(engine, &input, &format!("content[{index}]"));
        judged.findings.append(findings);
        match verdict {
            ToolVerdict::Allow(masked) => {
                remaining += 1;
                if masked != input {
                    if let Ok(value) = serde_json::from_slice(&masked) {
                        block["input"] = value;
                        judged.changed = true;
                    }
                }
            }
            ToolVerdict::Block(refusal) => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("tool");
                *block = json!({"type": "text", "text": refusal.client_text(engine, name)});
                judged.blocked.push(refusal);
                judged.changed = true;
            }
        }
    }
    if !judged.blocked.is_empty()
        && remaining == 0
        && message.get("stop_reason").and_then(Value::as_str) == Some("tool_use")
    {
        message["stop_reason"] = json!("end_turn");
    }
    judged
}
