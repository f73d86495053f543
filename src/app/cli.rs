//! The command line: `run`, `scan`, `config check`, `rules check|list|bench|examples`,
//! `dictionaries check`, `audit show|replay` and `approvals list|show|approve|deny`. Other tools depend on these exact forms, so flags are only ever added.
//!
//! The CLI never prints a secret: `scan` reports findings by rule id and placeholder only.

use super::reload::ConfigSource;
use crate::config::{FileConfig, Overrides};
use crate::engine::check::{check_rules, default_max_hold};
use crate::engine::dictionary::MatchOptions;
use crate::engine::masker::max_match_len;
use crate::engine::matcher::{InterimOptions, Matcher};
use crate::engine::placeholder::PlaceholderKey;
use crate::engine::{Engine, RuleSet, Scope};
use crate::observe::audit::AuditRecord;
use crate::observe::log::LogFormat;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Environment variable holding the placeholder HMAC key for CLI commands.
pub const PLACEHOLDER_KEY_ENV: &str = "STREAMMASK_PLACEHOLDER_KEY";

#[derive(Parser, Debug)]
#[command(
    name = "streammask",
    version,
    about = "Secret-masking egress proxy for the Claude API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mask stdin to stdout; findings (rule id and placeholder, never the secret) to stderr.
    Scan {
        /// Directory of extra or overriding rule files.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Feed the text through the streaming masker this many bytes at a time.
        #[arg(long, value_name = "N")]
        stream_chunk: Option<usize>,
        /// Which rules apply: those for requests, response text, or tool input.
        #[arg(long, value_enum, default_value_t = ScopeArg::Request)]
        scope: ScopeArg,
        /// Mask as this config's `default` profile does: its dictionaries, protected code,
        /// enabled tags and rules directory (--rules still overrides the directory).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the proxy (embedded default config unless --config is given; flags override).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
        /// Take over the listening sockets of a running streammask (graceful upgrade): start
        /// this, then send the old process SIGQUIT; it hands them over on `server.upgrade_sock`
        /// and drains.
        #[arg(long)]
        upgrade: bool,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rule pack commands.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Check the organisation's term lists (`[[dictionaries]]`).
    Dictionaries {
        #[command(subcommand)]
        command: DictionariesCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Decide approvals through a proxy's admin API (an approver's token: --token or
    /// STREAMMASK_TOKEN).
    Approvals {
        /// The admin listener's base URL.
        #[arg(
            long,
            global = true,
            value_name = "URL",
            default_value = "http://127.0.0.1:9090"
        )]
        admin: String,
        /// The approver's JWT or static key (default: STREAMMASK_TOKEN).
        #[arg(long, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: super::approvals_cli::ApprovalsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Print one request: its findings, the masked request and the masked response.
    Show {
        request_id: String,
        /// The audit log (rotated files next to it are read too). Default: audit.path of
        /// --config, or of the embedded default config.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a Claude Code session (x-claude-code-session-id) turn by turn.
    Replay {
        #[arg(long)]
        session: String,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Compile every rule under both engines and run every example and negative example.
    Check {
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Print id, action, applies_to and description of every rule.
    List {
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Measure Hyperscan block throughput of the pack over FILE (default: stdin), and with
    /// --per-rule the throughput of each rule alone (slowest first), to find costly patterns.
    Bench {
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Measure only the rules of --rules, without the embedded pack (to compare packs).
        #[arg(long, requires = "rules")]
        only: bool,
        #[arg(long)]
        per_rule: bool,
        /// Leave these rules out (ids, repeated or comma-separated) and measure what is left:
        /// Hyperscan shares its work among rules, so what a group of rules costs is the pack
        /// without them, not the sum of each alone (--per-rule).
        #[arg(long, value_delimiter = ',', value_name = "ID")]
        without: Vec<String>,
        file: Option<PathBuf>,
    },
    /// Print every example as a JSON line with the secrets its rule extracts (for tests that
    /// check a secret never crosses the proxy).
    Examples {
        #[arg(long)]
        rules: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DictionariesCommand {
    /// Report blank lines, duplicate terms and terms equal to (or, for substring dictionaries,
    /// inside) common words, for every `[[dictionaries]]` entry of --config, or for the FILEs
    /// given; exit 1 when any is found. Terms are named by line number (only the common
    /// word a term hits is shown).
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Check FILEs as dictionaries matched case-sensitively.
        #[arg(long)]
        case_sensitive: bool,
        /// Check FILEs as dictionaries matched inside words too (`whole_word = false`).
        #[arg(long)]
        substring: bool,
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config file (and the rules it names) without starting.
    Check { file: PathBuf },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScopeArg {
    Request,
    Response,
    ToolInput,
}

impl From<ScopeArg> for Scope {
    fn from(value: ScopeArg) -> Scope {
        match value {
            ScopeArg::Request => Scope::Request,
            ScopeArg::Response => Scope::Response,
            ScopeArg::ToolInput => Scope::ToolInput,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("streammask: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Scan {
            rules,
            stream_chunk,
            scope,
            config,
        } => scan(rules, config, stream_chunk, scope.into()),
        Command::Run {
            config,
            listen,
            admin,
            upstream,
            rules,
            log_json,
            upgrade,
        } => {
            let source = ConfigSource {
                path: config,
                overrides: Overrides {
                    listen,
                    admin,
                    upstream,
                    rules,
                },
                log_format: log_json.then_some(LogFormat::Json),
            };
            let config = source.load()?;
            crate::observe::log::init(config.log.format);
            super::server::run(config, source, upgrade)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = FileConfig::load(Some(&file))?.validate()?;
            // Everything compiled now, and so cached for the proxy that loads these files.
            super::server::build_policy(&config, None)?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules {
            command: RulesCommand::Check { rules },
        } => rules_check(rules),
        Command::Audit {
            command:
                AuditCommand::Show {
                    request_id,
                    file,
                    config,
                },
        } => audit_print(file, config, |records| {
            crate::observe::audit::show(records, &request_id)
                .with_context(|| format!("no audit record for request {request_id}"))
        }),
        Command::Audit {
            command:
                AuditCommand::Replay {
                    session,
                    file,
                    config,
                },
        } => audit_print(file, config, |records| {
            crate::observe::audit::replay(records, &session)
                .with_context(|| format!("no audit records for session {session}"))
        }),
        Command::Rules {
            command: RulesCommand::List { rules },
        } => rules_list(rules),
        Command::Dictionaries {
            command:
                DictionariesCommand::Check {
                    config,
                    case_sensitive,
                    substring,
                    files,
                },
        } => {
            let options = MatchOptions {
                case_sensitive,
                whole_word: !substring,
            };
            dictionaries_check(config, options, files)
        }
        Command::Approvals {
            admin,
            token,
            command,
        } => super::approvals_cli::run(&admin, token, command),
        Command::Rules {
            command: RulesCommand::Examples { rules },
        } => rules_examples(rules),
        Command::Rules {
            command:
                RulesCommand::Bench {
                    rules,
                    only,
                    per_rule,
                    without,
                    file,
                },
        } => rules_bench(rules, only, per_rule, &without, file),
    }
}

/// `dictionaries check`: every file's report, problems by line number.
fn dictionaries_check(
    config: Option<PathBuf>,
    options: MatchOptions,
    files: Vec<PathBuf>,
) -> Result<ExitCode> {
    let mut lists: Vec<(String, PathBuf, MatchOptions)> = files
        .into_iter()
        .map(|file| (file.display().to_string(), file, options))
        .collect();
    if let Some(config) = config {
        let config = FileConfig::load(Some(&config))?.validate()?;
        for section in &config.org_data.dictionaries {
            lists.push((section.id.clone(), section.path.clone(), section.options()));
        }
    }
    if lists.is_empty() {
        bail!("nothing to check: name dictionary files or a --config with [[dictionaries]]");
    }
    let mut passed = true;
    for (name, path, options) in lists {
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let report = crate::engine::dictionary::check(&text, options);
        println!("{name}: {} terms", report.terms);
        for line in &report.empty_lines {
            println!("  line {line}: blank");
        }
        for (line, first) in &report.duplicates {
            println!("  line {line}: duplicate of line {first}");
        }
        for (line, word) in &report.common {
            let how = if options.whole_word {
                "is"
            } else {
                "is inside"
            };
            println!("  line {line}: {how} the common word {word:?}: it would mask ordinary text");
        }
        for (line, why) in &report.invalid {
            println!("  line {line}: {why}");
        }
        if report.terms == 0 {
            println!("  no terms");
        }
        passed &= report.passed();
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The placeholder key from the environment, or a random one with a warning.
fn placeholder_key_from_env() -> Result<PlaceholderKey> {
    let key = super::server::placeholder_key(None, PLACEHOLDER_KEY_ENV)?;
    if key.is_random() {
        eprintln!(
            "streammask: warning: {PLACEHOLDER_KEY_ENV} is not set; using a random placeholder key, \
             so placeholders will differ across restarts and replicas"
        );
    }
    Ok(key)
}

fn audit_print(
    file: Option<PathBuf>,
    config: Option<PathBuf>,
    render: impl FnOnce(&[AuditRecord<'static>]) -> Result<String>,
) -> Result<ExitCode> {
    let path = match file {
        Some(file) => file,
        None => FileConfig::load(config.as_deref())?.audit.path,
    };
    let records = crate::observe::audit::read_records(&path)?;
    let text = render(&records)?;
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn scan(
    rules: Option<PathBuf>,
    config: Option<PathBuf>,
    stream_chunk: Option<usize>,
    scope: Scope,
) -> Result<ExitCode> {
    let engine = match config {
        Some(path) => {
            let overrides = Overrides {
                rules,
                ..Overrides::default()
            };
            let config = FileConfig::load(Some(&path))?
                .apply(&overrides)
                .validate()?;
            // One text: a large dictionary's automata cost a fraction of its compile.
            let (_, policy) = super::server::build_policy(&config, Some(InterimOptions::ONE_SHOT))?;
            Arc::clone(&policy.profile_for(&[]).engine)
        }
        None => {
            let set = RuleSet::load(rules.as_deref())?;
            Arc::new(Engine::compile(
                &set,
                placeholder_key_from_env()?,
                default_max_hold(),
            )?)
        }
    };
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("reading stdin")?;
    let text = String::from_utf8_lossy(&input);
    // As the proxy does for a request: a secret found once is masked everywhere in the text,
    // also where it stands bare (and a stream masks the secrets of the whole text).
    let engine = Arc::new(engine.knowing_secrets_of(&text, scope)?);
    let (output, findings) = match stream_chunk {
        None => {
            let masked = engine.mask(&text, scope)?;
            (masked.text.into_owned().into_bytes(), masked.findings)
        }
        Some(0) => bail!("--stream-chunk must be at least 1"),
        Some(chunk) => {
            let mut masker = engine.stream(scope)?;
            let mut out = Vec::with_capacity(text.len());
            for piece in text.as_bytes().chunks(chunk) {
                masker.push(piece, &mut out)?;
            }
            masker.finish(&mut out)?;
            (out, masker.take_findings())
        }
    };
    std::io::stdout()
        .write_all(&output)
        .context("writing stdout")?;
    let mut findings = findings;
    findings.extend(engine.find_protected_code(&text, scope));
    let mut stderr = std::io::stderr().lock();
    for finding in &findings {
        writeln!(
            stderr,
            "finding rule={} action={} offset={} chars={} placeholder={}{}{}",
            finding.rule_id,
            finding.action,
            finding.span.start,
            finding.secret_chars,
            finding.placeholder,
            match finding.checksum_valid {
                Some(true) => " checksum=valid",
                Some(false) => " checksum=invalid",
                None => "",
            },
            finding
                .detail
                .as_ref()
                .map_or(String::new(), |detail| format!(" detail={detail:?}"))
        )?;
    }
    writeln!(stderr, "{} finding(s)", findings.len())?;
    Ok(ExitCode::SUCCESS)
}

fn rules_check(rules: Option<PathBuf>) -> Result<ExitCode> {
    let set = RuleSet::load(rules.as_deref())?;
    let report = check_rules(&set, default_max_hold());
    for problem in &report.problems {
        println!("FAIL {}: {}", problem.id, problem.message);
    }
    println!(
        "{} rules, {} examples checked, {} problem(s)",
        report.rules_checked,
        report.examples_checked,
        report.problems.len()
    );
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn rules_list(rules: Option<PathBuf>) -> Result<ExitCode> {
    let set = RuleSet::load(rules.as_deref())?;
    let mut stdout = std::io::stdout().lock();
    for rule in set.all() {
        let scopes: Vec<&str> = rule.applies_to.iter().map(|s| s.as_str()).collect();
        writeln!(
            stdout,
            "{}\t{}\t{}\t{}{}",
            rule.id,
            rule.action,
            scopes.join(","),
            rule.description,
            if rule.enabled { "" } else { " (disabled)" }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rules_examples(rules: Option<PathBuf>) -> Result<ExitCode> {
    let set = RuleSet::load(rules.as_deref())?;
    let key = PlaceholderKey::random();
    let mut stdout = std::io::stdout().lock();
    for rule in set.enabled() {
        let engine = Engine::compile(&RuleSet::single(rule), key.clone(), default_max_hold())?;
        for example in &rule.examples {
            let scope = rule.applies_to[0];
            let masked = engine.mask(example, scope)?;
            let secrets: Vec<&str> = masked
                .findings
                .iter()
                .map(|f| &example[f.span.clone()])
                .collect();
            let scopes: Vec<&str> = rule.applies_to.iter().map(|s| s.as_str()).collect();
            let line = serde_json::json!({
                "id": rule.id,
                "action": rule.action.as_str(),
                "applies_to": scopes,
                "example": example,
                "secrets": secrets,
            });
            writeln!(stdout, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Throughput in MB/s, the best of five rounds each scanning at least 64 MB (the best round is
/// the figure least moved by other work on a shared machine), and the candidates one pass reports.
fn throughput_mb_s(matcher: &Matcher, text: &[u8]) -> Result<(f64, usize)> {
    let repeats = (64 << 20) / text.len().max(1) + 1;
    let mut candidates = 0usize;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        for _ in 0..repeats {
            matcher.scan_block(text, |_| candidates += 1)?;
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    let per_pass = candidates / (5 * repeats);
    Ok(((text.len() * repeats) as f64 / best / 1e6, per_pass))
}

fn rules_bench(
    rules: Option<PathBuf>,
    only: bool,
    per_rule: bool,
    without: &[String],
    file: Option<PathBuf>,
) -> Result<ExitCode> {
    let set = match (&rules, only) {
        (Some(dir), true) => RuleSet::from_dir_only(dir)?,
        _ => RuleSet::load(rules.as_deref())?,
    };
    let set = match without {
        [] => set,
        ids => set.without(ids).context("--without")?,
    };
    let text = match file {
        Some(path) => std::fs::read(&path).with_context(|| path.display().to_string())?,
        None => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input)?;
            input
        }
    };
    let started = std::time::Instant::now();
    let matcher = Matcher::compile(&set, max_match_len(default_max_hold()))?;
    let compiled_in = started.elapsed().as_secs_f64();
    let (speed, candidates) = throughput_mb_s(&matcher, &text)?;
    println!(
        "pack: {} rules compiled in {compiled_in:.1} s, {speed:.0} MB/s over {} bytes, {candidates} candidates",
        matcher.rules().count(),
        text.len()
    );
    if per_rule {
        let mut speeds = Vec::new();
        for rule in set.enabled() {
            let alone =
                Matcher::compile(&RuleSet::single(rule), max_match_len(default_max_hold()))?;
            let (speed, candidates) = throughput_mb_s(&alone, &text)?;
            speeds.push((speed, candidates, rule.id.clone()));
        }
        speeds.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (speed, candidates, id) in speeds {
            println!("{speed:>8.0} MB/s {candidates:>8} candidates  {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
