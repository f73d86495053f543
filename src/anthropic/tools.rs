//! Tool calls judged whole: the complete input of a `tool_use` block is walked with the
//! `tool_input` rules, masked, or — when a `block` rule matches — replaced by a text block that
//! says which rule stopped it.
//!
//! Shell commands are judged a second way: every string under an object key `command` or `cmd`
//! (at any depth; an array of strings there is an argument vector) is parsed as a shell command
//! ([`crate::anthropic::shell`]) and checked against the parsed rules. The tool's *name* is not
//! consulted: the judge is handed the input only, and any tool whose input has a `command` string
//! runs it somewhere (Claude Code's `Bash`, the API's `bash_*` tool, MCP shells); other tools'
//! `command` values (the text editor's `view`, `str_replace`) parse as harmless one-word commands.
//!
//! Invariants:
//! - the regex rules run on every input; a parsed rule blocks only what they let through, so a
//!   command the parser cannot read is still judged by them, and is counted
//!   ([`ToolJudgement::shell_unparsed`], and an `audit` finding of [`SHELL_UNPARSED_RULE_ID`]);
//! - one exception: in a command the parser read whole, the regex rules whose class a parsed
//!   rule expresses ([`SUPERSEDED_IN_PARSED_COMMANDS`]) give way to it, since they cannot see
//!   quoting (a download-and-run line echoed into a file runs nothing). Every
//!   example of those rules is blocked by the parsed rule (tested), and they still block in
//!   commands the parser cannot read and in every other text;
//! - a parsed-rule block is a [`ToolBlock::Rule`] whose finding carries the `shell-…` rule id
//!   ([`crate::anthropic::shell::ShellRule::id`]), action `block`, the JSON path of the command
//!   and no text of it, so it flows to the client, audit and metrics like a regex rule's;
//! - a tool call is judged only complete (clients act on it only then), and input that is not
//!   JSON is refused ([`ToolBlock::Unparseable`]), never passed on unscanned;
//! - a blocked call is attributed to the first blocking finding in its input, so it counts once
//!   however many block rules match;
//! - when every tool call of a message was blocked, `stop_reason: tool_use` becomes `end_turn`,
//!   so the client shows the message instead of waiting for a tool result.

use crate::anthropic::restore::{RestoreEvent, RestoreMap};
use crate::anthropic::shell::{judge_argv, judge_command, ShellRule};
use crate::engine::findings::join_path;
use crate::engine::json_walk::{mask_json, ThinkingMode, WalkOptions};
use crate::engine::{Action, Engine, Finding, Findings, Scope};
use serde_json::{json, Value};

/// The rule id of the `audit` finding recorded for a shell command the parser could not read
/// (it was judged by the regex rules only). Metrics count it as
/// `streammask_findings_total{rule="streammask-shell-unparsed",action="audit"}`.
pub const SHELL_UNPARSED_RULE_ID: &str = "streammask-shell-unparsed";

/// Regex rules the parsed [`ShellRule::DownloadToInterpreter`] expresses whole: in a command
/// the parser read without a gap, their findings are dropped and the parsed rule decides.
pub const SUPERSEDED_IN_PARSED_COMMANDS: [&str; 2] =
    ["deny-curl-pipe-shell", "deny-curl-pipe-interpreter"];

/// The rule index synthetic findings carry: no rule of the engine has it, so metrics label them
/// by id.
const NO_ENGINE_RULE: u32 = u32::MAX;

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
            ToolBlock::Rule(finding) => match ShellRule::from_id(&finding.rule_id) {
                Some(rule) => rule.description(),
                None => engine.rule_description(&finding.rule_id),
            },
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

/// The full decision on one complete tool call.
#[derive(Debug)]
pub struct ToolJudgement {
    pub verdict: ToolVerdict,
    pub findings: Findings,
    /// Shell commands in the input judged by the parsed rules.
    pub shell_commands: usize,
    /// Shell commands (or scripts nested in them) the parser could not read: judged by the
    /// regex rules only. Each also leaves an `audit` finding of [`SHELL_UNPARSED_RULE_ID`],
    /// which is what metrics count.
    pub shell_unparsed: usize,
}

/// Judge a complete tool input (`{}` when empty) with the `tool_input` rules. Findings are
/// located under `at`, the path of the tool block (`content[1]` → `content[1].input.command`).
pub fn judge_tool_input(engine: &Engine, input: &[u8], at: &str) -> (ToolVerdict, Findings) {
    let judged = judge_tool_call(engine, input, at);
    (judged.verdict, judged.findings)
}

/// [`judge_tool_input`], with the shell parser's counts.
pub fn judge_tool_call(engine: &Engine, input: &[u8], at: &str) -> ToolJudgement {
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
        return ToolJudgement {
            verdict: ToolVerdict::Block(ToolBlock::Unparseable),
            findings: Findings::new(),
            shell_commands: 0,
            shell_unparsed: 0,
        };
    };
    let mut findings = walked.findings;
    findings.nest_under(&format!("{at}.input"));
    let mut shell = ShellCommands::default();
    if let Ok(value) = serde_json::from_slice::<Value>(input) {
        shell.walk(&value, &format!("{at}.input"), false);
    }
    findings.retain(|located| {
        !(SUPERSEDED_IN_PARSED_COMMANDS.contains(&located.finding.rule_id.as_str())
            && shell.read_whole.contains(&located.path))
    });
    for (path, chars) in &shell.unparsed_at {
        findings.push(
            path.clone(),
            synthetic(SHELL_UNPARSED_RULE_ID, Action::Audit, *chars),
        );
    }
    let verdict = if let Some(blocking) = findings.first_with(Action::Block) {
        ToolVerdict::Block(ToolBlock::Rule(blocking.finding.clone()))
    } else if let Some((path, rule, chars)) = shell.hit {
        let finding = synthetic(rule.id(), Action::Block, chars);
        findings.push(path, finding.clone());
        ToolVerdict::Block(ToolBlock::Rule(finding))
    } else {
        ToolVerdict::Allow(walked.body.unwrap_or_else(|| input.to_vec()))
    };
    ToolJudgement {
        verdict,
        findings,
        shell_commands: shell.parsed,
        shell_unparsed: shell.unparsed,
    }
}

/// Give an allowed call of tool `tool_name` its caller's secrets back ([`RestoreMap`], when
/// its scopes include tool input and its tools this one), then judge the restored input again with the `block` rules: a
/// restored secret inside a denylisted command is still refused, and the refusal names only
/// the rule. Returns the verdict on what the client would get, and the findings to add (the
/// blocking one only: the restored secrets themselves are not news). `at` is the tool block's
/// path; restore events go to `events` (none for a call that ends up blocked).
pub fn restore_allowed_input(
    engine: &Engine,
    restore: Option<&RestoreMap>,
    tool_name: &str,
    input: Vec<u8>,
    at: &str,
    events: &mut Vec<RestoreEvent>,
) -> (ToolVerdict, Findings) {
    let Some(map) = restore.filter(|m| m.scopes().tool_input) else {
        return (ToolVerdict::Allow(input), Findings::new());
    };
    if !map.restores_tool(tool_name) {
        map.count_refused_tool(&input, &format!("{at}.input"), events);
        return (ToolVerdict::Allow(input), Findings::new());
    }
    let before = events.len();
    let Some(restored) = map.restore_tool_input(&input, &format!("{at}.input"), events) else {
        return (ToolVerdict::Allow(input), Findings::new());
    };
    let judged = judge_tool_call(engine, &restored, at);
    match judged.verdict {
        ToolVerdict::Block(refusal) => {
            events.truncate(before);
            let mut findings = judged.findings;
            findings.retain(|located| located.finding.action == Action::Block);
            (ToolVerdict::Block(refusal), findings)
        }
        ToolVerdict::Allow(_) => (ToolVerdict::Allow(restored), Findings::new()),
    }
}

/// A finding made by the judge itself, not by an engine rule: no span text, no placeholder
/// text beyond the rule id, so nothing of the command reaches the audit log.
fn synthetic(rule_id: &str, action: Action, chars: usize) -> Finding {
    Finding {
        rule: NO_ENGINE_RULE,
        rule_id: rule_id.to_string(),
        action,
        span: 0..0,
        placeholder: format!("[{}]", rule_id),
        rewritten: false,
        secret_chars: chars,
        checksum_valid: None,
        detail: None,
    }
}

/// The shell commands of one tool input and what the parsed rules made of them.
#[derive(Default)]
struct ShellCommands {
    parsed: usize,
    unparsed: usize,
    unparsed_at: Vec<(String, usize)>,
    /// The paths of the command strings the parser read without a gap.
    read_whole: Vec<String>,
    /// The first command a parsed rule stopped: its path, the rule, its length in chars.
    hit: Option<(String, ShellRule, usize)>,
}

impl ShellCommands {
    /// Judge every `command`/`cmd` string (or string array) under `value`.
    fn walk(&mut self, value: &Value, path: &str, is_command: bool) {
        match value {
            Value::String(command) if is_command => {
                let judged = judge_command(command);
                if judged.unparsed == 0 {
                    self.read_whole.push(path.to_string());
                }
                self.record(path, judged, command.chars().count());
            }
            Value::Array(items) if is_command && items.iter().all(Value::is_string) => {
                let argv: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                let judged = judge_argv(&argv);
                self.record(path, judged, argv.iter().map(|a| a.chars().count()).sum());
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.walk(item, &format!("{path}[{index}]"), false);
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    let command = matches!(key.as_str(), "command" | "cmd");
                    self.walk(item, &join_path(path, key), command);
                }
            }
            _ => {}
        }
    }

    fn record(
        &mut self,
        path: &str,
        judged: crate::anthropic::shell::ShellJudgement,
        chars: usize,
    ) {
        self.parsed += 1;
        if judged.unparsed > 0 {
            self.unparsed += judged.unparsed;
            self.unparsed_at.push((path.to_string(), chars));
        }
        if let (None, Some(rule)) = (&self.hit, judged.rule) {
            self.hit = Some((path.to_string(), rule, chars));
        }
    }
}

/// What judging the tool calls of a complete message did.
#[derive(Debug, Default)]
pub struct MessageTools {
    /// Whether the message was changed (an input masked, a call replaced).
    pub changed: bool,
    pub findings: Findings,
    pub blocked: Vec<ToolBlock>,
    /// Placeholders met in allowed calls' inputs, restored or not.
    pub restored: Vec<RestoreEvent>,
}

/// Give the tool calls (and, when the map's scopes say so, the text blocks) of a complete,
/// already masked and judged message their caller's secrets back, in place. Run last: what
/// it puts in must not be masked again. A call whose restored input a `block` rule refuses
/// is replaced by a text block, as [`judge_message_tools`] does.
pub fn restore_message(engine: &Engine, message: &mut Value, map: &RestoreMap) -> MessageTools {
    let mut done = MessageTools::default();
    let Some(content) = message.get_mut("content").and_then(Value::as_array_mut) else {
        return done;
    };
    for (index, block) in content.iter_mut().enumerate() {
        let at = format!("content[{index}]");
        let block_type = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if block_type == "text" && map.scopes().text {
            if let Some(Value::String(text)) = block.get_mut("text") {
                if let Some(restored) =
                    map.restore_str(text, &format!("{at}.text"), &mut done.restored)
                {
                    *text = restored;
                    done.changed = true;
                }
            }
            continue;
        }
        if !is_tool_like(block_type, block.get("input").is_some()) {
            continue;
        }
        let input =
            serde_json::to_vec(block.get("input").unwrap_or(&Value::Null)).unwrap_or_default();
        let name = block
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let (verdict, findings) = restore_allowed_input(
            engine,
            Some(map),
            &name,
            input.clone(),
            &at,
            &mut done.restored,
        );
        done.findings.append(findings);
        match verdict {
            ToolVerdict::Allow(restored) if restored != input => {
                if let Ok(value) = serde_json::from_slice(&restored) {
                    block["input"] = value;
                    done.changed = true;
                }
            }
            ToolVerdict::Allow(_) => {}
            ToolVerdict::Block(refusal) => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("tool");
                *block = json!({"type": "text", "text": refusal.client_text(engine, name)});
                done.blocked.push(refusal);
                done.changed = true;
            }
        }
    }
    done
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
