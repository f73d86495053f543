//! Shell commands judged by parsing them (with `brush-parser`), not by regex: words are read as
//! the shell reads them (quotes, escapes, `$'…'`, line continuations), wrappers are looked
//! through (`sudo`, `env`, `exec`, `command`, `nice`, `nohup`, `timeout`, `xargs`, `stdbuf`,
//! `su -c`, `env -S`, `busybox`), and nested scripts (`bash -c`, `eval`, `$(…)`, `` `…` ``,
//! `<(…)`, heredocs and text echoed into a shell) are parsed again. The dangerous-command rules
//! ([`ShellRule`]) are stated over that parsed form.
//!
//! Invariants:
//! - [`judge_command`] never panics and never fails: input the parser cannot read (or that is
//!   larger than [`MAX_COMMAND_BYTES`], or nested deeper than [`analyze::MAX_DEPTH`]) is
//!   reported in [`ShellJudgement::unparsed`], and the caller keeps its regex rules for it;
//! - a rule hit is a fact about the command's own text: nothing is evaluated, no variable is
//!   given a value except `HOME` (a home) and `USER`/`LOGNAME` (some user), so what needs
//!   evaluation to be seen is out of reach (README, "Tool-call denylist");
//! - rule ids are stable and distinct from the regex pack's (`shell-` prefix); they appear in
//!   the client's message, the audit log and metrics like any rule id.

mod analyze;
mod paths;
mod words;

pub use analyze::shell_quote;

/// Larger commands are not parsed (counted as unparsed; the regex rules still run).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// A dangerous-command rule over the parsed form of a shell command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShellRule {
    /// A pipeline whose later stage is an interpreter fed by a downloader or a decoder, an
    /// interpreter whose code is a downloaded substitution, or a shell wired to a socket.
    DownloadToInterpreter,
    /// A recursive delete whose target resolves to a home, the root or a system directory.
    RecursiveDeleteHome,
    /// A reader of a credential path whose output reaches a network sink.
    CredentialExfiltration,
    /// Turning shell history off or wiping it.
    HistoryDisabled,
}

impl ShellRule {
    pub const ALL: [ShellRule; 4] = [
        ShellRule::DownloadToInterpreter,
        ShellRule::RecursiveDeleteHome,
        ShellRule::CredentialExfiltration,
        ShellRule::HistoryDisabled,
    ];

    /// The stable rule id.
    pub fn id(self) -> &'static str {
        match self {
            ShellRule::DownloadToInterpreter => "shell-download-to-interpreter",
            ShellRule::RecursiveDeleteHome => "shell-recursive-delete-home",
            ShellRule::CredentialExfiltration => "shell-credential-exfiltration",
            ShellRule::HistoryDisabled => "shell-history-disabled",
        }
    }

    /// What the rule stops, for the client's message.
    pub fn description(self) -> &'static str {
        match self {
            ShellRule::DownloadToInterpreter => {
                "Running code fetched from the network or decoded on the fly (a downloader or \
                 decoder piped into a shell or interpreter, a shell fed by a download or a socket)"
            }
            ShellRule::RecursiveDeleteHome => {
                "Recursive delete of a home directory, the filesystem root or a system directory"
            }
            ShellRule::CredentialExfiltration => {
                "Sending a credential file (SSH keys, cloud credentials, .netrc, the environment) \
                 to the network"
            }
            ShellRule::HistoryDisabled => "Disabling or wiping shell history",
        }
    }

    pub fn from_id(id: &str) -> Option<ShellRule> {
        ShellRule::ALL.into_iter().find(|rule| rule.id() == id)
    }
}

/// The judgement on one shell command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellJudgement {
    /// The first rule the command breaks.
    pub rule: Option<ShellRule>,
    /// How many scripts (the command itself or a nested one) the parser could not read.
    pub unparsed: usize,
}

/// Judge a shell command line (the `command` of a Bash tool call).
pub fn judge_command(command: &str) -> ShellJudgement {
    if command.len() > MAX_COMMAND_BYTES {
        return ShellJudgement {
            rule: None,
            unparsed: 1,
        };
    }
    let mut walk = analyze::Walk::new();
    walk.script(command, 0);
    ShellJudgement {
        rule: walk.hit,
        unparsed: walk.unparsed,
    }
}

/// Judge a command given as an argument vector (`["bash", "-c", "…"]`), as `execve` runs it.
pub fn judge_argv(argv: &[&str]) -> ShellJudgement {
    let line: Vec<String> = argv.iter().map(|arg| shell_quote(arg)).collect();
    judge_command(&line.join(" "))
}
