//! The walk over a parsed script: each simple command is normalised, its wrappers are looked
//! through, and what it does to data (downloads, decodes, reads a credential, runs its input,
//! sends its input to the network) is summed up as [`Facts`]; pipelines and substitutions
//! connect those facts, and the rules of [`ShellRule`] are read off them.
//!
//! Invariants:
//! - every nested script (`bash -c`, `eval`, `su -c`, `env -S`, `$(…)`, `` `…` ``, `<(…)`, a
//!   heredoc or here-string fed to a shell, text echoed into a shell) is judged like the top
//!   level, at most [`MAX_DEPTH`] levels deep; deeper ones count as unparsed;
//! - the facts of a compound command or a substitution are the union of its parts: an inner
//!   downloader taints the whole stage (over-approximation, never under);
//! - the first rule hit is kept; the walk never stops early on unknown input, it only skips
//!   what it cannot see (a command name that is an expansion).

use super::paths::{is_credential, is_protected_dir};
use super::words::{decode_escapes, normalize, Word};
use super::ShellRule;
use brush_parser::ast::{
    self, Command, CommandPrefixOrSuffixItem, CompoundCommand, CompoundList, IoFileRedirectKind,
    IoFileRedirectTarget, IoRedirect, Pipeline,
};
use brush_parser::{Parser, ParserOptions};

/// How many scripts deep (`bash -c "bash -c '…'"`) the walk follows.
pub const MAX_DEPTH: usize = 8;

/// Deeper bracket nesting is not handed to the parser, whose time grows steeply with it.
pub const MAX_NESTING: usize = 32;

/// Whether `text` has a redirection whose file descriptor number has 10 or more digits
/// (`99999999999>x`): brush-parser 0.4 unwraps the number's parse and panics on overflow
/// (found by the sse_stream fuzz target). Such a command is judged unparsed instead.
fn overflowing_fd(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut digits = 0;
    for &b in bytes {
        if b.is_ascii_digit() {
            digits += 1;
            continue;
        }
        if digits >= 10 && (b == b'<' || b == b'>') {
            return true;
        }
        digits = 0;
    }
    false
}

/// The deepest nesting of `(`/`{` in `text`, quotes ignored (an over-count only sends a command
/// to the regex rules).
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'(' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What a command or a stage does with data.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Writes content from the network to its output.
    downloads: bool,
    /// Writes decoded content (base64, hex, compressed, reversed) to its output.
    decodes: bool,
    /// Writes a credential file's content (or the environment) to its output.
    reads_secret: bool,
    /// Runs its input as code.
    runs_input: bool,
    /// Sends its input over the network.
    sends_input: bool,
    /// Literal text it prints (`echo`, `printf`), which a shell later in the pipe would run.
    prints: Option<String>,
}

impl Facts {
    fn union(&mut self, other: Facts) {
        self.downloads |= other.downloads;
        self.decodes |= other.decodes;
        self.reads_secret |= other.reads_secret;
        self.runs_input |= other.runs_input;
        self.sends_input |= other.sends_input;
        if self.prints.is_none() {
            self.prints = other.prints;
        }
    }

    fn feeds_code(&self) -> bool {
        self.downloads || self.decodes
    }
}

/// The walk's state for one judged command string.
pub struct Walk {
    options: ParserOptions,
    pub hit: Option<ShellRule>,
    pub unparsed: usize,
    /// A command of the script opens a `/dev/tcp` or `/dev/udp` socket.
    net_socket: bool,
    /// A command of the script reads a credential.
    secret_read: bool,
}

impl Walk {
    pub fn new() -> Walk {
        Walk {
            options: ParserOptions::default(),
            hit: None,
            unparsed: 0,
            net_socket: false,
            secret_read: false,
        }
    }

    fn hit(&mut self, rule: ShellRule) {
        if self.hit.is_none() {
            self.hit = Some(rule);
        }
    }

    /// Parse `text` as a script and walk it; `None` (and counted) when it does not parse.
    pub fn script(&mut self, text: &str, depth: usize) -> Option<Facts> {
        if depth > MAX_DEPTH || nesting(text) > MAX_NESTING || overflowing_fd(text) {
            self.unparsed += 1;
            return None;
        }
        let mut parser = Parser::new(std::io::Cursor::new(text.as_bytes()), &self.options);
        // The parser has panicked on input it should refuse; `catch_unwind` keeps one such
        // command from ending the stream, and known cases are kept away from it beforehand.
        let parsed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parser.parse_program()));
        let Ok(Ok(program)) = parsed else {
            self.unparsed += 1;
            return None;
        };
        let mut facts = Facts::default();
        for list in &program.complete_commands {
            facts.union(self.list(list, depth));
        }
        if depth == 0 && self.net_socket && self.secret_read {
            self.hit(ShellRule::CredentialExfiltration);
        }
        Some(facts)
    }

    fn list(&mut self, list: &CompoundList, depth: usize) -> Facts {
        let mut facts = Facts::default();
        for ast::CompoundListItem(and_or, _) in &list.0 {
            facts.union(self.pipeline(&and_or.first, depth));
            for next in &and_or.additional {
                let (ast::AndOr::And(pipeline) | ast::AndOr::Or(pipeline)) = next;
                facts.union(self.pipeline(pipeline, depth));
            }
        }
        facts
    }

    fn pipeline(&mut self, pipeline: &Pipeline, depth: usize) -> Facts {
        let stages: Vec<Facts> = pipeline
            .seq
            .iter()
            .map(|command| self.command(command, depth))
            .collect();
        for (later, stage) in stages.iter().enumerate().skip(1) {
            let earlier = &stages[..later];
            if stage.runs_input {
                if earlier.iter().any(Facts::feeds_code) {
                    self.hit(ShellRule::DownloadToInterpreter);
                }
                let printed: Vec<String> =
                    earlier.iter().filter_map(|f| f.prints.clone()).collect();
                for text in printed {
                    self.script(&text, depth + 1);
                }
            }
            if stage.sends_input && earlier.iter().any(|f| f.reads_secret) {
                self.hit(ShellRule::CredentialExfiltration);
            }
        }
        let mut facts = Facts::default();
        for stage in stages {
            facts.union(stage);
        }
        facts
    }

    fn command(&mut self, command: &Command, depth: usize) -> Facts {
        match command {
            Command::Simple(simple) => self.simple(simple, depth),
            Command::Compound(compound, redirects) => {
                let mut facts = self.compound(compound, depth);
                let redirects: Vec<&IoRedirect> =
                    redirects.iter().flat_map(|list| list.0.iter()).collect();
                let io = self.redirects(&redirects, depth);
                self.apply_io(&io, &mut facts);
                facts
            }
            Command::Function(function) => self.compound(&function.body.0, depth),
            Command::ExtendedTest(_, _) => Facts::default(),
        }
    }

    fn compound(&mut self, compound: &CompoundCommand, depth: usize) -> Facts {
        match compound {
            CompoundCommand::BraceGroup(group) => self.list(&group.list, depth),
            CompoundCommand::Subshell(shell) => self.list(&shell.list, depth),
            CompoundCommand::ForClause(clause) => {
                let mut facts = self.list(&clause.body.list, depth);
                for word in clause.values.iter().flatten() {
                    if let Some(word) = self.word(&word.value) {
                        facts.union(self.subs(&word, depth));
                    }
                }
                facts
            }
            CompoundCommand::CaseClause(clause) => {
                let mut facts = Facts::default();
                for item in &clause.cases {
                    if let Some(list) = &item.cmd {
                        facts.union(self.list(list, depth));
                    }
                }
                facts
            }
            CompoundCommand::IfClause(clause) => {
                let mut facts = self.list(&clause.condition, depth);
                facts.union(self.list(&clause.then, depth));
                for other in clause.elses.iter().flatten() {
                    if let Some(condition) = &other.condition {
                        facts.union(self.list(condition, depth));
                    }
                    facts.union(self.list(&other.body, depth));
                }
                facts
            }
            CompoundCommand::WhileClause(clause) | CompoundCommand::UntilClause(clause) => {
                let mut facts = self.list(&clause.0, depth);
                facts.union(self.list(&clause.1.list, depth));
                facts
            }
            CompoundCommand::ArithmeticForClause(clause) => self.list(&clause.body.list, depth),
            CompoundCommand::Coprocess(coprocess) => self.command(&coprocess.body, depth),
            CompoundCommand::Arithmetic(_) => Facts::default(),
        }
    }

    fn word(&mut self, raw: &str) -> Option<Word> {
        let word = normalize(raw, &self.options);
        if word.is_none() {
            self.unparsed += 1;
        }
        word
    }

    /// The union of the facts of a word's command substitutions (each walked as a script).
    fn subs(&mut self, word: &Word, depth: usize) -> Facts {
        let mut facts = Facts::default();
        for sub in &word.subs {
            if let Some(inner) = self.script(sub, depth + 1) {
                facts.union(inner);
            }
        }
        facts
    }

    fn redirects(&mut self, redirects: &[&IoRedirect], depth: usize) -> Io {
        let mut io = Io::default();
        for redirect in redirects {
            match redirect {
                IoRedirect::File(fd, kind, target) => {
                    let input = matches!(
                        kind,
                        IoFileRedirectKind::Read
                            | IoFileRedirectKind::DuplicateInput
                            | IoFileRedirectKind::ReadAndWrite
                    ) || (fd == &Some(0));
                    let output = !matches!(kind, IoFileRedirectKind::Read);
                    match target {
                        IoFileRedirectTarget::Filename(word)
                        | IoFileRedirectTarget::Duplicate(word) => {
                            if let Some(word) = self.word(&word.value) {
                                io.note_target(&word, input, output);
                                self.subs(&word, depth);
                            }
                        }
                        IoFileRedirectTarget::ProcessSubstitution(_, shell) => {
                            let facts = self.list(&shell.list, depth + 1);
                            if input {
                                io.stdin.union(facts);
                            }
                        }
                        IoFileRedirectTarget::Fd(_) => {}
                    }
                }
                IoRedirect::OutputAndError(word, _) => {
                    if let Some(word) = self.word(&word.value) {
                        io.note_target(&word, false, true);
                    }
                }
                IoRedirect::HereString(_, word) => {
                    if let Some(word) = self.word(&word.value) {
                        io.stdin.union(self.subs(&word, depth));
                        io.here.push(word.lit);
                    }
                }
                IoRedirect::HereDocument(_, doc) => io.here.push(doc.doc.value.clone()),
            }
        }
        io
    }

    /// Facts that redirects add to any command: a credential read from a file, a socket.
    fn apply_io(&mut self, io: &Io, facts: &mut Facts) {
        if io.secret_in {
            facts.reads_secret = true;
            self.secret_read = true;
        }
        if io.socket_in {
            facts.downloads = true;
        }
        if io.socket_out && facts.reads_secret {
            self.hit(ShellRule::CredentialExfiltration);
        }
        if io.history_out {
            self.hit(ShellRule::HistoryDisabled);
        }
        if io.socket_in || io.socket_out {
            self.net_socket = true;
        }
        facts.downloads |= io.stdin.downloads;
        facts.decodes |= io.stdin.decodes;
        facts.reads_secret |= io.stdin.reads_secret;
    }

    fn simple(&mut self, simple: &ast::SimpleCommand, depth: usize) -> Facts {
        let mut parts = Parts::default();
        for item in simple.prefix.iter().flat_map(|p| p.0.iter()) {
            self.item(item, true, &mut parts, depth);
        }
        if let Some(name) = &simple.word_or_name {
            self.push_word(&name.value, &mut parts, depth);
        }
        for item in simple.suffix.iter().flat_map(|s| s.0.iter()) {
            self.item(item, false, &mut parts, depth);
        }
        let io = self.redirects(&parts.redirects, depth);
        let mut facts = self.effective(&parts.argv, &io, &parts.subs, &parts.proc_subs, depth);
        self.apply_io(&io, &mut facts);
        // What substitutions print becomes part of this command's arguments, and so of its
        // output for the commands that echo them.
        facts.downloads |= parts.subs.downloads;
        facts.decodes |= parts.subs.decodes;
        facts.reads_secret |= parts.subs.reads_secret;
        facts
    }

    fn push_word(&mut self, raw: &str, parts: &mut Parts<'_>, depth: usize) {
        if let Some(word) = self.word(raw) {
            parts.subs.union(self.subs(&word, depth));
            parts.argv.push(word);
        }
    }

    fn item<'a>(
        &mut self,
        item: &'a CommandPrefixOrSuffixItem,
        in_prefix: bool,
        parts: &mut Parts<'a>,
        depth: usize,
    ) {
        match item {
            CommandPrefixOrSuffixItem::IoRedirect(redirect) => parts.redirects.push(redirect),
            CommandPrefixOrSuffixItem::Word(word) => self.push_word(&word.value, parts, depth),
            CommandPrefixOrSuffixItem::AssignmentWord(assignment, word) => {
                if in_prefix {
                    let mut subs = Facts::default();
                    self.assignment(assignment, depth, &mut subs);
                    parts.subs.union(subs);
                } else {
                    self.push_word(&word.value, parts, depth);
                }
            }
            CommandPrefixOrSuffixItem::ProcessSubstitution(_, shell) => {
                let facts = self.list(&shell.list, depth + 1);
                parts.proc_subs.push(facts.clone());
                parts.argv.push(Word::literal("/dev/fd/63"));
                parts.subs.union(facts);
            }
        }
    }

    fn assignment(&mut self, assignment: &ast::Assignment, depth: usize, subs: &mut Facts) {
        let ast::AssignmentName::VariableName(name) = &assignment.name else {
            return;
        };
        let ast::AssignmentValue::Scalar(value) = &assignment.value else {
            return;
        };
        if let Some(value) = self.word(&value.value) {
            subs.union(self.subs(&value, depth));
            if history_off(name, &value.lit) {
                self.hit(ShellRule::HistoryDisabled);
            }
        }
    }

    /// The facts of the command `argv` runs once its wrappers are looked through.
    fn effective(
        &mut self,
        argv: &[Word],
        io: &Io,
        subs: &Facts,
        proc_subs: &[Facts],
        depth: usize,
    ) -> Facts {
        let mut facts = Facts::default();
        let (start, via) = match unwrap(argv) {
            Unwrapped::Command(start, via) => (start, via),
            Unwrapped::Script(text) => {
                return self.script(&text, depth + 1).unwrap_or_default();
            }
            Unwrapped::Shell => {
                facts.runs_input = true;
                self.interpreter_io(io, depth);
                return facts;
            }
            Unwrapped::Nothing => return facts,
        };
        let argv = &argv[start..];
        let Some(first) = argv.first() else {
            return facts;
        };
        let name = command_name(&first.lit);
        let args = &argv[1..];
        let credential_arg = |skip_identity: bool| {
            let mut skip_next = false;
            args.iter().any(|arg| {
                if std::mem::take(&mut skip_next) {
                    return false;
                }
                if skip_identity && matches!(arg.lit.as_str(), "-i" | "-F" | "-o") {
                    skip_next = true;
                    return false;
                }
                is_credential(strip_data_prefix(&arg.path))
            })
        };
        if history_command(&name, args) {
            self.hit(ShellRule::HistoryDisabled);
        }
        match name.as_str() {
            n if is_shell(n) => {
                self.shell(args, io, subs, proc_subs, via, depth, &mut facts);
            }
            n if is_script_interpreter(n) => {
                self.script_interpreter(n, args, subs, via, &mut facts);
                self.interpreter_io(io, depth);
            }
            "eval" => {
                let code: Vec<&str> = args.iter().map(|a| a.lit.as_str()).collect();
                if subs.feeds_code() {
                    self.hit(ShellRule::DownloadToInterpreter);
                }
                self.script(&code.join(" "), depth + 1);
            }
            "source" | "." => {
                if proc_subs.iter().any(Facts::feeds_code) || subs.feeds_code() {
                    self.hit(ShellRule::DownloadToInterpreter);
                }
                if args.first().is_some_and(|a| is_stdin_path(&a.lit)) {
                    facts.runs_input = true;
                }
            }
            "echo" | "printf" => {
                let printf = name == "printf";
                let mut words = args.iter().map(|a| a.lit.as_str()).peekable();
                while words.peek().is_some_and(|w| {
                    !printf
                        && w.len() > 1
                        && w.starts_with('-')
                        && w[1..].chars().all(|c| "neE".contains(c))
                }) {
                    words.next();
                }
                let text: Vec<&str> = words.collect();
                let text = text.join(" ");
                facts.prints = Some(if printf || name == "echo" && text.contains('\\') {
                    decode_escapes(&text, printf)
                } else {
                    text
                });
            }
            "rm" => {
                if is_recursive_rm(args)
                    && args
                        .iter()
                        .any(|a| !a.lit.starts_with('-') && is_protected_dir(&a.path))
                {
                    self.hit(ShellRule::RecursiveDeleteHome);
                }
                if args.iter().any(|a| is_history_file(&a.path)) {
                    self.hit(ShellRule::HistoryDisabled);
                }
            }
            "find" => {
                let deletes = args.iter().any(|a| a.lit == "-delete")
                    || args.windows(2).any(|w| {
                        matches!(w[0].lit.as_str(), "-exec" | "-execdir" | "-ok")
                            && command_name(&w[1].lit) == "rm"
                    });
                let root = args
                    .iter()
                    .take_while(|a| !a.lit.starts_with('-'))
                    .any(|a| is_protected_dir(&a.path));
                if deletes && root {
                    self.hit(ShellRule::RecursiveDeleteHome);
                }
            }
            "export" | "declare" | "typeset" | "local" | "readonly" => {
                for arg in args {
                    if let Some((var, value)) = arg.lit.split_once('=') {
                        if history_off(var, value) {
                            self.hit(ShellRule::HistoryDisabled);
                        }
                    }
                }
            }
            n if is_decoder(n, args) => facts.decodes = true,
            "env" | "printenv" => {
                // `env` with no command (a command was unwrapped above) prints the environment.
                facts.reads_secret = true;
                self.secret_read = true;
            }
            _ => {}
        }
        if let Some(tool) = network_tool(&name, args) {
            match tool {
                Net::Downloader { to_stdout } => {
                    facts.downloads |= to_stdout;
                    facts.sends_input = true;
                }
                Net::Sink => facts.sends_input = true,
                Net::Shell => facts.sends_input = true,
            }
            let skip_identity = matches!(name.as_str(), "ssh" | "scp" | "sftp" | "rsync");
            let args_exfiltrate = !matches!(tool, Net::Shell) && credential_arg(skip_identity);
            if args_exfiltrate || io.secret_in || subs.reads_secret {
                self.hit(ShellRule::CredentialExfiltration);
            }
        } else if credential_arg(false)
            && !matches!(
                name.as_str(),
                "ls" | "chmod" | "chown" | "stat" | "test" | "[" | "mkdir" | "touch"
            )
        {
            facts.reads_secret = true;
            self.secret_read = true;
        }
        facts
    }

    /// `sh`, `bash`, `zsh`…: `-c CODE` is walked as a script; no script operand (or `-s`,
    /// `/dev/stdin`) means it runs its input.
    #[allow(clippy::too_many_arguments)]
    fn shell(
        &mut self,
        args: &[Word],
        io: &Io,
        subs: &Facts,
        proc_subs: &[Facts],
        via_xargs: bool,
        depth: usize,
        facts: &mut Facts,
    ) {
        let mut code = None;
        let mut reads_stdin_flag = false;
        let mut operand = None;
        let mut index = 0;
        while index < args.len() {
            let arg = &args[index].lit;
            if arg == "--" || arg == "-" {
                index += 1;
                if arg == "-" {
                    reads_stdin_flag = true;
                }
                operand = args.get(index);
                break;
            }
            if let Some(flags) = arg.strip_prefix('-').or_else(|| arg.strip_prefix('+')) {
                if matches!(flags, "o" | "O") || arg == "--rcfile" || arg == "--init-file" {
                    index += 2;
                    continue;
                }
                if !arg.starts_with("--") && flags.contains('c') {
                    code = args.get(index + 1);
                    break;
                }
                if !arg.starts_with("--") && flags.contains('s') {
                    reads_stdin_flag = true;
                }
                index += 1;
                continue;
            }
            operand = Some(&args[index]);
            break;
        }
        if let Some(code) = code {
            if subs.feeds_code() {
                self.hit(ShellRule::DownloadToInterpreter);
            }
            self.script(&code.lit, depth + 1);
            return;
        }
        if via_xargs && operand.is_some() {
            // `… | xargs sh script`: the input becomes arguments, not code.
            return;
        }
        match operand {
            None => facts.runs_input = true,
            Some(file) if reads_stdin_flag || is_stdin_path(&file.lit) => facts.runs_input = true,
            Some(_) => {
                if proc_subs.iter().any(Facts::feeds_code) {
                    self.hit(ShellRule::DownloadToInterpreter);
                }
            }
        }
        if reads_stdin_flag {
            facts.runs_input = true;
        }
        if facts.runs_input {
            self.interpreter_io(io, depth);
        }
    }

    /// A shell or interpreter whose input comes from a redirect: a heredoc or here-string is
    /// code, a socket is a remote shell, a process substitution is whatever it prints.
    fn interpreter_io(&mut self, io: &Io, depth: usize) {
        if io.socket_in || io.socket_out || io.stdin.feeds_code() {
            self.hit(ShellRule::DownloadToInterpreter);
        }
        for text in &io.here {
            self.script(text, depth + 1);
        }
    }

    fn script_interpreter(
        &mut self,
        name: &str,
        args: &[Word],
        subs: &Facts,
        via_xargs: bool,
        facts: &mut Facts,
    ) {
        let code_flag = match name {
            n if n.starts_with("python") => "-c",
            "php" => "-r",
            "pwsh" | "powershell" => "-command",
            _ => "-e",
        };
        let mut code = None;
        let mut operand = false;
        let mut index = 0;
        while index < args.len() {
            let arg = args[index].lit.as_str();
            let lower = arg.to_ascii_lowercase();
            if lower == code_flag
                || (code_flag == "-e" && arg == "-E")
                || (code_flag == "-command" && lower == "-c")
                || (name.starts_with("node") && arg == "-p")
            {
                code = args.get(index + 1);
                break;
            }
            if arg == "-m" || arg == "-" {
                operand = arg == "-m";
                break;
            }
            if !arg.starts_with('-') {
                operand = true;
                break;
            }
            index += 1;
        }
        if subs.feeds_code() && code.is_some() {
            self.hit(ShellRule::DownloadToInterpreter);
        }
        match code {
            Some(code) => {
                let code = &code.lit;
                let evaluates = ["exec", "eval", "compile", "system(", "popen"]
                    .iter()
                    .any(|w| code.contains(w));
                let reads_input = [
                    "stdin",
                    "STDIN",
                    "<>",
                    "readFileSync(0",
                    "/dev/stdin",
                    "$<",
                    "ARGF",
                    "input()",
                ]
                .iter()
                .any(|w| code.contains(w));
                if evaluates && (reads_input || via_xargs) {
                    facts.runs_input = true;
                }
            }
            None => {
                if !operand {
                    facts.runs_input = true;
                }
            }
        }
    }
}

/// The pieces of one simple command, gathered in order.
#[derive(Default)]
struct Parts<'a> {
    argv: Vec<Word>,
    redirects: Vec<&'a IoRedirect>,
    /// Facts of each process substitution among the arguments.
    proc_subs: Vec<Facts>,
    /// Union of the facts of every substitution in the command's words.
    subs: Facts,
}

/// What the redirects of one command do.
#[derive(Debug, Default)]
struct Io {
    secret_in: bool,
    socket_in: bool,
    socket_out: bool,
    history_out: bool,
    /// Facts of what feeds stdin through a process substitution or here-string.
    stdin: Facts,
    /// Heredoc and here-string bodies.
    here: Vec<String>,
}

impl Io {
    fn note_target(&mut self, word: &Word, input: bool, output: bool) {
        let socket = word.path.starts_with("/dev/tcp/") || word.path.starts_with("/dev/udp/");
        if input {
            self.secret_in |= is_credential(&word.path);
            self.socket_in |= socket;
        }
        if output {
            self.socket_out |= socket;
            self.history_out |= is_history_file(&word.path);
        }
    }
}

/// Where the command proper starts after its wrappers.
enum Unwrapped {
    /// `argv[start..]`, and whether `xargs` feeds it.
    Command(usize, bool),
    /// A wrapper that takes a command string (`su -c`, `env -S`).
    Script(String),
    /// A wrapper that starts an interactive shell (`sudo -s`, `sudo -i`, `su`).
    Shell,
    /// No command runs (`command -v x`) or none is left.
    Nothing,
}

/// Options of a wrapper that take a value (short letters, long names without `--`).
fn wrapper_value_options(name: &str) -> (&'static str, &'static [&'static str]) {
    match name {
        "sudo" | "doas" => (
            "ugCDhprtUTc",
            &[
                "user",
                "group",
                "chdir",
                "prompt",
                "role",
                "type",
                "other-user",
                "close-from",
                "host",
                "command-timeout",
            ],
        ),
        "env" => ("uCPS", &["unset", "chdir", "split-string"]),
        "exec" => ("a", &[]),
        "nice" => ("n", &["adjustment"]),
        "timeout" => ("sk", &["signal", "kill-after"]),
        "xargs" => (
            "InPdLlsaEe",
            &[
                "replace",
                "max-args",
                "max-procs",
                "delimiter",
                "max-lines",
                "max-chars",
                "arg-file",
                "eof",
            ],
        ),
        "stdbuf" => ("ioe", &["input", "output", "error"]),
        "ionice" => ("cnpPtu", &["class", "classdata", "pid", "pgid", "uid"]),
        "chroot" => ("", &["userspec", "groups"]),
        "runuser" | "su" => (
            "ugGsw",
            &[
                "user",
                "group",
                "supp-group",
                "shell",
                "whitelist-environment",
            ],
        ),
        _ => ("", &[]),
    }
}

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "sudo"
            | "doas"
            | "env"
            | "exec"
            | "command"
            | "builtin"
            | "nice"
            | "nohup"
            | "time"
            | "timeout"
            | "xargs"
            | "stdbuf"
            | "ionice"
            | "setsid"
            | "unbuffer"
            | "chroot"
            | "su"
            | "runuser"
            | "busybox"
            | "taskset"
            | "caffeinate"
            | "strace"
            | "ltrace"
            | "flock"
    )
}

fn unwrap(argv: &[Word]) -> Unwrapped {
    let mut index = 0;
    let mut via_xargs = false;
    loop {
        let Some(first) = argv.get(index) else {
            return Unwrapped::Nothing;
        };
        let name = command_name(&first.lit);
        if !is_wrapper(&name) {
            return Unwrapped::Command(index, via_xargs);
        }
        via_xargs |= name == "xargs";
        let wrapper_at = index;
        index += 1;
        let (short, long) = wrapper_value_options(&name);
        let mut interactive = false;
        // Options.
        while let Some(arg) = argv.get(index) {
            let arg = arg.lit.as_str();
            if arg == "--" {
                index += 1;
                break;
            }
            if let Some(long_name) = arg.strip_prefix("--") {
                let (key, inline) = match long_name.split_once('=') {
                    Some((key, value)) => (key, Some(value)),
                    None => (long_name, None),
                };
                if name == "env" && key == "split-string" {
                    return split_string(
                        inline
                            .map(str::to_string)
                            .or_else(|| argv.get(index + 1).map(|w| w.lit.clone())),
                        argv,
                        index + if inline.is_some() { 1 } else { 2 },
                    );
                }
                if name == "su" && key == "command" {
                    return code_string(
                        inline
                            .map(str::to_string)
                            .or_else(|| argv.get(index + 1).map(|w| w.lit.clone())),
                    );
                }
                if key == "login" || key == "shell" && name == "sudo" {
                    interactive = true;
                }
                index += if inline.is_none() && long.contains(&key) {
                    2
                } else {
                    1
                };
                continue;
            }
            let Some(flags) = arg.strip_prefix('-') else {
                break;
            };
            if flags.is_empty() {
                // `su -`: a login shell.
                index += 1;
                continue;
            }
            if matches!(name.as_str(), "command") && flags.contains(['v', 'V']) {
                return Unwrapped::Nothing;
            }
            if name == "nice" && flags.chars().all(|c| c.is_ascii_digit()) {
                index += 1;
                continue;
            }
            if (name == "su" || name == "runuser") && flags.starts_with('c') {
                let code = if flags.len() > 1 {
                    Some(flags[1..].to_string())
                } else {
                    argv.get(index + 1).map(|w| w.lit.clone())
                };
                return code_string(code);
            }
            if name == "env" && flags.contains('S') {
                let after = flags.split_once('S').map(|(_, rest)| rest).unwrap_or("");
                let (text, next) = if after.is_empty() {
                    (argv.get(index + 1).map(|w| w.lit.clone()), index + 2)
                } else {
                    (Some(after.to_string()), index + 1)
                };
                return split_string(text, argv, next);
            }
            if name == "sudo" && flags.contains(['s', 'i']) {
                interactive = true;
            }
            // A cluster whose last value-taking letter is not at its end has the value inline.
            let takes_value = flags.char_indices().find(|(_, c)| short.contains(*c));
            index += match takes_value {
                Some((at, _)) if at + 1 == flags.len() => 2,
                _ => 1,
            };
        }
        // Assignments (`env A=1 cmd`, `sudo A=1 cmd`).
        while argv.get(index).is_some_and(|w| is_assignment(&w.lit)) {
            index += 1;
        }
        // Positional operands some wrappers take before the command.
        match name.as_str() {
            "timeout" | "chroot" | "taskset" | "flock" => index += 1,
            "su" => {
                // `su [user] [-c …]` handled above; a user operand, then an optional `-c`.
                if argv.get(index).is_some_and(|w| !w.lit.starts_with('-')) {
                    index += 1;
                }
                if argv.get(index).is_some_and(|w| w.lit == "-c") {
                    return code_string(argv.get(index + 1).map(|w| w.lit.clone()));
                }
                if index >= argv.len() {
                    return Unwrapped::Shell;
                }
            }
            _ => {}
        }
        if index >= argv.len() {
            return if interactive || name == "su" {
                Unwrapped::Shell
            } else if name == "xargs" {
                Unwrapped::Nothing
            } else if name == "env" {
                Unwrapped::Command(wrapper_at, via_xargs)
            } else {
                Unwrapped::Nothing
            };
        }
    }
}

fn code_string(code: Option<String>) -> Unwrapped {
    code.map_or(Unwrapped::Nothing, Unwrapped::Script)
}

/// `env -S 'a b' c`: the string is split into words, then the remaining arguments follow.
fn split_string(text: Option<String>, argv: &[Word], next: usize) -> Unwrapped {
    let Some(mut text) = text else {
        return Unwrapped::Nothing;
    };
    for word in argv.iter().skip(next) {
        text.push(' ');
        text.push_str(&shell_quote(&word.lit));
    }
    Unwrapped::Script(text)
}

/// A literal quoted for the shell, so that it parses back to itself.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// The name a command runs as: the last path component, lower-cased (macOS file systems are
/// case-insensitive), without `.exe`.
pub fn command_name(word: &str) -> String {
    let base = word.rsplit('/').next().unwrap_or(word);
    let lower = base.to_ascii_lowercase();
    lower
        .strip_suffix(".exe")
        .map(str::to_string)
        .unwrap_or(lower)
}

fn is_shell(name: &str) -> bool {
    matches!(
        name,
        "sh" | "bash"
            | "zsh"
            | "dash"
            | "ksh"
            | "mksh"
            | "ash"
            | "fish"
            | "csh"
            | "tcsh"
            | "yash"
            | "rbash"
            | "pdksh"
            | "oksh"
            | "loksh"
            | "posh"
    )
}

fn is_script_interpreter(name: &str) -> bool {
    let python = name
        .strip_prefix("python")
        .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'));
    python
        || matches!(
            name,
            "perl"
                | "ruby"
                | "node"
                | "nodejs"
                | "php"
                | "pwsh"
                | "powershell"
                | "lua"
                | "tclsh"
                | "osascript"
                | "deno"
                | "bun"
                | "irb"
                | "jshell"
                | "rscript"
        )
}

/// Commands that turn encoded bytes back into text: `base64 -d`, `xxd -r`, `openssl enc -d`,
/// decompressors, `rev`.
fn is_decoder(name: &str, args: &[Word]) -> bool {
    let flag = |letters: &[char], long: &str| {
        args.iter().any(|a| {
            let lit = a.lit.as_str();
            lit == long || (lit.starts_with('-') && !lit.starts_with("--") && lit.contains(letters))
        })
    };
    match name {
        "base64" | "base32" | "basenc" | "gbase64" => flag(&['d', 'D'], "--decode"),
        "xxd" => flag(&['r'], "--revert"),
        "openssl" => {
            args.first()
                .is_some_and(|a| matches!(a.lit.as_str(), "enc" | "base64"))
                && flag(&['d'], "-d")
        }
        "gzip" | "bzip2" | "xz" | "zstd" | "lz4" | "brotli" => flag(&['d'], "--decompress"),
        "uudecode" | "gunzip" | "zcat" | "bzcat" | "xzcat" | "unxz" | "bunzip2" | "zstdcat"
        | "unzstd" | "rev" => true,
        _ => false,
    }
}

fn is_stdin_path(path: &str) -> bool {
    matches!(path, "/dev/stdin" | "/dev/fd/0" | "/proc/self/fd/0" | "-")
}

fn is_recursive_rm(args: &[Word]) -> bool {
    args.iter().take_while(|a| a.lit != "--").any(|arg| {
        let arg = arg.lit.as_str();
        arg == "--recursive"
            || (arg.starts_with('-') && !arg.starts_with("--") && arg.contains(['r', 'R']))
    })
}

fn strip_data_prefix(arg: &str) -> &str {
    // `@file`, `name=@file`, `name=<file`, `--opt=file`
    let arg = arg.split_once('=').map_or(arg, |(key, value)| {
        if key.starts_with('-') || !key.contains('/') {
            value
        } else {
            arg
        }
    });
    arg.trim_start_matches(['@', '<'])
}

/// Commands that turn history off or wipe it: unsetting the history variables, the `set`
/// option `history` turned off, clearing the list, linking or truncating a history file.
fn history_command(name: &str, args: &[Word]) -> bool {
    match name {
        "unset" => args.iter().any(|a| is_history_var(&a.lit)),
        "set" => args
            .windows(2)
            .any(|w| w[0].lit == "+o" && w[1].lit == "history"),
        "history" => args
            .iter()
            .any(|a| (a.lit.starts_with('-') && a.lit.contains('c')) || a.lit == "/dev/null"),
        "ln" | "truncate" | "shred" | "cp" | "mv" => args.iter().any(|a| is_history_file(&a.path)),
        _ => false,
    }
}

fn is_history_var(name: &str) -> bool {
    matches!(name, "HISTFILE" | "HISTSIZE" | "HISTFILESIZE" | "SAVEHIST")
}

/// The history file set empty or to the null device, or the history size set to zero.
fn history_off(name: &str, value: &str) -> bool {
    match name {
        "HISTFILE" => value.is_empty() || value == "/dev/null",
        "HISTSIZE" | "HISTFILESIZE" | "SAVEHIST" => value.is_empty() || value == "0",
        _ => false,
    }
}

fn is_history_file(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    matches!(
        base,
        ".bash_history" | ".zsh_history" | ".sh_history" | ".history" | ".zhistory"
    )
}

enum Net {
    Downloader {
        to_stdout: bool,
    },
    Sink,
    /// `ssh`: a remote command's arguments are read there, not here.
    Shell,
}

fn network_tool(name: &str, args: &[Word]) -> Option<Net> {
    let has = |flags: &[&str]| args.iter().any(|a| flags.contains(&a.lit.as_str()));
    let short = |letter: char| {
        args.iter().any(|a| {
            let lit = a.lit.as_str();
            lit.starts_with('-') && !lit.starts_with("--") && lit.contains(letter)
        })
    };
    Some(match name {
        "curl" => Net::Downloader {
            to_stdout: !(short('o')
                || short('O')
                || has(&[
                    "--output",
                    "--remote-name",
                    "--remote-name-all",
                    "--output-dir",
                ])
                || args.iter().any(|a| a.lit.starts_with("--output=")))
                || has(&["-o-", "-"]) && short('o'),
        },
        "wget" => Net::Downloader {
            to_stdout: args
                .windows(2)
                .any(|w| w[0].lit.ends_with('O') && w[0].lit.starts_with('-') && w[1].lit == "-")
                || has(&["-O-", "-qO-", "-qO", "--output-document=-", "-O/dev/stdout"])
                || args
                    .iter()
                    .any(|a| a.lit.starts_with('-') && a.lit.ends_with("O-")),
        },
        "fetch" | "aria2c" | "http" | "https" | "xh" | "xhs" | "lwp-request" | "lwp-download"
        | "nc" | "ncat" | "netcat" | "socat" | "telnet" | "openssl" | "ftp" | "tftp" => {
            if name == "openssl" && !has(&["s_client"]) {
                return None;
            }
            Net::Downloader { to_stdout: true }
        }
        "scp" | "sftp" | "rsync" | "dig" | "nslookup" | "host" | "ping" | "mail" | "sendmail"
        | "mutt" => Net::Sink,
        "ssh" => Net::Shell,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_lose_paths_and_case() {
        assert_eq!(command_name("/usr/local/bin/bash"), "bash");
        assert_eq!(command_name("CURL.exe"), "curl");
    }

    #[test]
    fn quoting_round_trips() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
