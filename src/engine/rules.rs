//! Rule files: the data model of `rules/*.toml`, the embedded default pack, and loading with
//! overrides.
//!
//! Invariants this module keeps:
//! - every rule in a [`RuleSet`] has a unique id made of `[a-z0-9-]`, a non-empty pattern, and at
//!   least one scope;
//! - a rule from an override directory replaces the embedded rule with the same id (in place, so
//!   rule order stays stable); new ids are appended in file-name order;
//! - nothing here compiles patterns: that is the matcher's job, so that `rules check` can report
//!   every broken rule at once instead of the first;
//! - each of a rule's [`Truncation`]s is a claim about its pattern (a token cut to `min_len`
//!   body characters is still matched, one cut to `min_len - 1` is not) that `rules check`
//!   proves on the rule's first example whose secret starts with the truncation's prefix;
//!   here it is only checked for shape (`min_len >= 1`, a non-empty prefix pattern and
//!   reason).

use crate::engine::dictionary::Dictionary;
use crate::engine::protected_code::FingerprintIndex;
use crate::engine::validators::{ValidationContext, Validator};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_rules.rs"));
}

/// A checksum a token format carries. It is verified on every finding of the rule and
/// reported as [`crate::engine::masker::Finding::checksum_valid`]; it never decides whether text is masked
/// (a token with a broken checksum is still masked: fail closed), it tells the audit trail
/// which findings are certainly real tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Checksum {
    /// GitHub (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) and npm (`npm_`) tokens: the last six
    /// characters are the CRC32 of the characters between the `_` and the checksum, in base62
    /// (`0-9A-Za-z`), left-padded with `0`.
    #[serde(rename = "crc32-base62")]
    Crc32Base62,
}

impl Checksum {
    /// Whether `token` (the secret span of a finding) carries a valid checksum.
    pub fn verify(self, token: &[u8]) -> bool {
        match self {
            Checksum::Crc32Base62 => {
                let Some(underscore) = token.iter().position(|&b| b == b'_') else {
                    return false;
                };
                let rest = &token[underscore + 1..];
                if rest.len() <= 6 {
                    return false;
                }
                let (body, sum) = rest.split_at(rest.len() - 6);
                let mut value: u64 = 0;
                for &digit in sum {
                    let d = match digit {
                        b'0'..=b'9' => digit - b'0',
                        b'A'..=b'Z' => digit - b'A' + 10,
                        b'a'..=b'z' => digit - b'a' + 36,
                        _ => return false,
                    };
                    value = value * 62 + u64::from(d);
                }
                value == u64::from(crc32fast::hash(body))
            }
        }
    }
}

/// How short a cut-off token of this rule may be and still be masked.
///
/// Claude Code's Read tool and Bash output cut long lines, so a token may arrive without its
/// tail. A token cut after `min_len` characters of its body (what follows the fixed `prefix`)
/// leaves so few candidates for the missing part that it can be rebuilt offline (fewer than
/// about 2^64, a surviving checksum counted as a filter), so the rule must still match it;
/// below `min_len` the missing part is out of reach and the rule may ignore it. `reason` says
/// how `min_len` was worked out (alphabet, bits per character, random characters, checksum).
///
/// A rule whose pattern is an alternation of formats (`lin_api_…|lin_oauth_…`) has one entry
/// per format. `rules check` takes the rule's first example whose secret starts with `prefix`,
/// cuts that secret after `min_len` body characters (the body starting where `prefix` ends),
/// ends the text there or with a truncation marker, and requires a finding of this rule
/// covering the whole cut; cut one character earlier, it requires no finding.
///
/// ```toml
/// [[rules.truncated]]
/// prefix = 'ghp_'
/// min_len = 20
/// reason = "30 random base62 chars + 6-char CRC32: 10 missing chars = 2^59.5 candidates"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Truncation {
    /// A regex (same dialect as `pattern`) matching the part of the secret before its body,
    /// anchored at the secret's start: `ghp_`, `xoxb-[0-9]{10,13}-[0-9]{10,13}-`.
    pub prefix: String,
    /// The fewest body characters (after `prefix`) a cut-off token may keep and still be
    /// masked.
    pub min_len: usize,
    /// Why `min_len` is where nothing can be rebuilt any more.
    pub reason: String,
}

/// What the policy does with a finding of this rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace the secret with a placeholder and let the request through.
    Mask,
    /// Refuse the request (403) or replace the tool call.
    Block,
    /// Hold the request for a human approver.
    Approve,
    /// Record the finding and change nothing.
    Audit,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Mask, Action::Block, Action::Approve, Action::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Mask => "mask",
            Action::Block => "block",
            Action::Approve => "approve",
            Action::Audit => "audit",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a rule applies: the request body, response text, or a tool call's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Request,
    Response,
    ToolInput,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Request, Scope::Response, Scope::ToolInput];

    pub fn bit(self) -> u8 {
        match self {
            Scope::Request => 1,
            Scope::Response => 2,
            Scope::ToolInput => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Request => "request",
            Scope::Response => "response",
            Scope::ToolInput => "tool_input",
        }
    }
}

fn all_scopes() -> Vec<Scope> {
    Scope::ALL.to_vec()
}

fn enabled_by_default() -> bool {
    true
}

/// The most whitespace runs a rule's secret may declare (`spaces`).
pub const MAX_SPACES: usize = 16;

/// A protected source tree as a rule holds it: fingerprints only, never code.
#[derive(Debug)]
pub struct ProtectedTree {
    pub index: FingerprintIndex,
    /// The fewest lines' worth of one file a text must hold to be a finding.
    pub min_match_lines: usize,
}

/// One rule exactly as written in a rule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub description: String,
    /// Hyperscan- and `regex`-compatible; the secret is the group named `secret`, or the whole
    /// match when there is none.
    pub pattern: String,
    pub action: Action,
    #[serde(default = "all_scopes")]
    pub applies_to: Vec<Scope>,
    #[serde(default)]
    pub examples: Vec<String>,
    #[serde(default)]
    pub negative_examples: Vec<String>,
    #[serde(default)]
    pub references: Vec<String>,
    /// Regexes over the extracted secret: a candidate whose secret matches one is not a finding.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Regexes over the key name the value was assigned to (the pattern's group named `key`,
    /// when it has one): a candidate whose key matches one is not a finding
    /// (`next_page_token`, `csrf_token`, `secret_name`: names of things that are not secrets).
    #[serde(default)]
    pub ignore_key: Vec<String>,
    /// The least Shannon entropy, in bits per byte, the secret must have to be a finding:
    /// the value test of context rules, which accept any value shape after a key name (a key
    /// is random-looking; a name, a word or a repeated filler is not).
    #[serde(default)]
    pub min_entropy: Option<f64>,
    /// A context rule that takes any value after a key name. Where one of its secrets overlaps
    /// a secret of a rule that knows the token's own format, the format rule wins: it names the
    /// finding and its span is the one replaced (a GitHub token in a clone URL's userinfo is
    /// masked as the GitHub token, and the host and repository after it stay).
    #[serde(default)]
    pub generic: bool,
    /// The secret may span lines (private key bodies). Every other secret is one
    /// whitespace-free run, which is what lets the streaming masker hold so little.
    #[serde(default)]
    pub multiline: bool,
    /// How many runs of whitespace one secret may hold (`4556 0182 3497 2018` holds three):
    /// a streamed text is then held back by as many words, so such a secret is still whole
    /// when it is found. 0 for every token format. The pattern's context around the secret
    /// may hold one more run before it and one after it (a delimiter character each), no more.
    #[serde(default)]
    pub spaces: usize,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// A checksum the token format carries (see [`Checksum`]).
    #[serde(default)]
    pub checksum: Option<Checksum>,
    /// The rule also masks tokens cut short, down to a number of body characters per format
    /// (see [`Truncation`]); empty for rules that only match whole tokens.
    #[serde(default)]
    pub truncated: Vec<Truncation>,
    /// Whether a placeholder of this rule may be given back to the caller who sent the secret
    /// (`[restore]`). `false` for secrets that should never come back (private keys, say).
    #[serde(default = "enabled_by_default")]
    pub restore: bool,
    /// What Hyperscan runs instead of `pattern`, when the pattern is costly to run over every
    /// byte (an e-mail address's local part before its `@`): a pattern that matches, ending
    /// at the same offset, wherever `pattern` matches (typically the part of `pattern` from
    /// its first rare literal on). Its reports are only candidates: `pattern` decides where
    /// a match starts and what it is. `rules check` verifies the ends on every example.
    #[serde(default)]
    pub prefilter: Option<String>,
    /// What Hyperscan runs instead of `pattern` for a rule whose matches all hold a key word
    /// (`token`, `secret`): the key word alone. From each place it ends, a forward automaton
    /// of [`Rule::after_keyword`] finds where a match may end; those ends are the rule's
    /// candidates, as a prefilter's are (see [`crate::engine::keyword`]). Both or neither.
    #[serde(default)]
    pub keyword: Option<String>,
    /// What may follow [`Rule::keyword`] up to the end of a match: every match of `pattern`
    /// must hold a key word whose end is followed by a match of this, ending where the
    /// pattern's match ends. `rules check` verifies it on every example.
    #[serde(default)]
    pub after_keyword: Option<String>,
    /// Labels a profile turns rules on or off by (`enable_tags = ["pii"]`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// A check the candidate must pass besides its shape (a card number's Luhn digit and
    /// issuer, an IBAN's mod-97): a candidate it refuses is not a finding.
    #[serde(default)]
    pub validate: Option<Validator>,
    /// The terms of a `[[dictionaries]]` entry, when the rule is one: the rule then matches
    /// those literals and `pattern` is only a label.
    #[serde(skip)]
    pub dictionary: Option<Arc<Dictionary>>,
    /// The fingerprints of a `[[protected_code]]` entry, when the rule is one: the matcher
    /// never reports such a rule, [`crate::engine::Engine::find_protected_code`] does.
    #[serde(skip)]
    pub protected_code: Option<Arc<ProtectedTree>>,
    /// Where the rule came from, for error messages.
    #[serde(skip)]
    pub source: String,
}

impl Rule {
    /// A rule that no rule file holds (a dictionary, a protected tree): every optional field at
    /// its default, enabled, restorable.
    pub fn synthetic(
        id: String,
        description: String,
        action: Action,
        applies_to: Vec<Scope>,
    ) -> Rule {
        Rule {
            id,
            description,
            pattern: String::new(),
            action,
            applies_to,
            examples: Vec::new(),
            negative_examples: Vec::new(),
            references: Vec::new(),
            ignore: Vec::new(),
            ignore_key: Vec::new(),
            min_entropy: None,
            generic: false,
            multiline: false,
            spaces: 0,
            prefilter: None,
            keyword: None,
            after_keyword: None,
            enabled: true,
            checksum: None,
            truncated: Vec::new(),
            restore: true,
            tags: Vec::new(),
            validate: None,
            dictionary: None,
            protected_code: None,
            source: String::new(),
        }
    }

    pub fn scope_bits(&self) -> u8 {
        self.applies_to
            .iter()
            .fold(0, |bits, scope| bits | scope.bit())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read rule file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rule file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("rule file {file}: rule id {id:?} is defined twice")]
    DuplicateId { file: String, id: String },
    #[error("rule {id:?} ({file}): {message}")]
    Invalid {
        file: String,
        id: String,
        message: String,
    },
}

/// The rules in force, in a stable order (their index is their identity inside the matcher),
/// with what their validators may depend on.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    validation: ValidationContext,
    /// Disabled rules that are compiled all the same, because a policy profile turns them on
    /// and every profile's matcher shares one pair of databases. A disabled rule outside this
    /// list costs nothing at scan time: it is not in the databases (personal-data rules have
    /// no literal and would otherwise slow every scan, enabled or not).
    armed: BTreeSet<String>,
    /// How many rules at the start of `rules` are the embedded pack's (0 for a set not built
    /// on it): the matcher keeps them in databases of their own, which the binary embeds, so
    /// an organisation's rules and dictionaries compile alone.
    embedded_rules: usize,
}

/// What a policy profile changes in a rule set.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    pub enable_rules: &'a [String],
    pub disable_rules: &'a [String],
    pub enable_tags: &'a [String],
    pub disable_tags: &'a [String],
    pub actions: Option<&'a BTreeMap<String, Action>>,
    /// The region national-format phone numbers are read in (`phone-national` validator).
    pub phone_region: Option<&'a str>,
}

/// A name in [`Overrides`] that no rule of the set answers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("names unknown rule {0:?}")]
    UnknownRule(String),
    #[error("names tag {0:?}, which no rule carries")]
    UnknownTag(String),
}

impl RuleSet {
    /// The default pack compiled into the binary.
    pub fn embedded() -> Result<RuleSet, RulesError> {
        let mut set = RuleSet::empty();
        for (name, text) in embedded::EMBEDDED_RULE_FILES {
            set.add_file(name, text, false)?;
        }
        set.embedded_rules = set.rules.len();
        Ok(set)
    }

    /// How many rules at the start of [`RuleSet::all`] are the embedded pack's.
    pub fn embedded_rules(&self) -> usize {
        self.embedded_rules
    }

    /// The embedded pack, extended and overridden by every `*.toml` in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet::embedded()?;
        if let Some(dir) = dir {
            set.add_dir(dir)?;
        }
        Ok(set)
    }

    /// Only the rules in `dir`, without the embedded pack (for testing a pack in isolation).
    pub fn from_dir_only(dir: &Path) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet::empty();
        set.add_dir(dir)?;
        Ok(set)
    }

    pub fn from_toml(name: &str, text: &str) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet::empty();
        set.add_file(name, text, false)?;
        Ok(set)
    }

    fn add_dir(&mut self, dir: &Path) -> Result<(), RulesError> {
        let entries = std::fs::read_dir(dir).map_err(|source| RulesError::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| RulesError::ReadFile {
                path: path.clone(),
                source,
            })?;
            self.add_file(&path.display().to_string(), &text, true)?;
        }
        Ok(())
    }

    fn add_file(&mut self, file: &str, text: &str, may_override: bool) -> Result<(), RulesError> {
        let parsed: RuleFile = toml::from_str(text).map_err(|err| RulesError::Parse {
            file: file.to_string(),
            message: err.to_string(),
        })?;
        let mut seen_in_file = std::collections::HashSet::new();
        for mut rule in parsed.rules {
            rule.source = file.to_string();
            validate_shape(&rule)?;
            if !seen_in_file.insert(rule.id.clone()) {
                return Err(RulesError::DuplicateId {
                    file: file.to_string(),
                    id: rule.id,
                });
            }
            match self
                .rules
                .iter()
                .position(|existing| existing.id == rule.id)
            {
                Some(index) if may_override => self.rules[index] = rule,
                Some(_) => {
                    return Err(RulesError::DuplicateId {
                        file: file.to_string(),
                        id: rule.id,
                    })
                }
                None => self.rules.push(rule),
            }
        }
        Ok(())
    }

    /// All rules, including disabled ones (so `rules check` still checks them).
    pub fn all(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules the matcher compiles.
    pub fn enabled(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|rule| rule.enabled)
    }

    pub fn enabled_set(&self) -> RuleSet {
        RuleSet {
            rules: self.enabled().cloned().collect(),
            validation: self.validation.clone(),
            armed: BTreeSet::new(),
            embedded_rules: 0,
        }
    }

    /// The enabled rules but those named in `ids`, all in one pair of databases: what a pack
    /// costs without them (`rules bench --without`). A name no rule answers to is an error, so
    /// a typo does not measure the whole pack under another name.
    pub fn without(&self, ids: &[String]) -> Result<RuleSet, OverrideError> {
        if let Some(unknown) = ids
            .iter()
            .find(|id| !self.rules.iter().any(|rule| &rule.id == *id))
        {
            return Err(OverrideError::UnknownRule(unknown.clone()));
        }
        let mut set = self.enabled_set();
        set.rules.retain(|rule| !ids.contains(&rule.id));
        Ok(set)
    }

    /// A set holding just one rule, for checking it alone (compiled even when disabled).
    pub fn single(rule: &Rule) -> RuleSet {
        RuleSet {
            rules: vec![rule.clone()],
            validation: ValidationContext::default(),
            armed: BTreeSet::from([rule.id.clone()]),
            embedded_rules: 0,
        }
    }

    fn empty() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            validation: ValidationContext::default(),
            armed: BTreeSet::new(),
            embedded_rules: 0,
        }
    }

    /// What the set's validators read besides the value.
    pub fn validation(&self) -> &ValidationContext {
        &self.validation
    }

    pub fn with_validation(mut self, validation: ValidationContext) -> RuleSet {
        self.validation = validation;
        self
    }

    /// The set with the disabled rules among `ids` compiled into the databases (inactive), so
    /// every policy profile that turns one of them on shares this set's databases.
    pub fn with_armed(mut self, ids: impl IntoIterator<Item = String>) -> RuleSet {
        self.armed.extend(ids);
        self
    }

    /// Whether the matcher compiles `rule` into its databases: when it is enabled, or armed.
    pub fn is_compiled(&self, rule: &Rule) -> bool {
        rule.enabled || self.armed.contains(&rule.id)
    }

    /// Append rules built elsewhere (dictionaries); an id already in the set is an error.
    pub fn push(&mut self, rule: Rule) -> Result<(), RulesError> {
        validate_shape(&rule)?;
        if self.rules.iter().any(|existing| existing.id == rule.id) {
            return Err(RulesError::DuplicateId {
                file: rule.source.clone(),
                id: rule.id,
            });
        }
        self.rules.push(rule);
        Ok(())
    }

    /// This set with rules turned on or off and actions replaced (a policy profile). Tags
    /// apply first, so a rule id named in the profile wins over a tag (`enable_tags = ["pii"]`
    /// with `disable_rules = ["pii-email"]` keeps e-mail addresses). A name that matches
    /// nothing is an error: a typo must not silently leave data unmasked.
    pub fn with_overrides(&self, overrides: &Overrides<'_>) -> Result<RuleSet, OverrideError> {
        let mut set = self.clone();
        // Whatever this set compiles stays compiled, so a profile that only turns rules off
        // or changes actions scans with this set's databases.
        let compiled: Vec<String> = self
            .rules
            .iter()
            .filter(|rule| self.is_compiled(rule))
            .map(|rule| rule.id.clone())
            .collect();
        set.armed.extend(compiled);
        let ids = overrides
            .enable_rules
            .iter()
            .chain(overrides.disable_rules)
            .chain(overrides.actions.into_iter().flat_map(BTreeMap::keys));
        for id in ids {
            if !set.rules.iter().any(|rule| &rule.id == id) {
                return Err(OverrideError::UnknownRule(id.clone()));
            }
        }
        let known_tags: HashSet<&str> = set
            .rules
            .iter()
            .flat_map(|rule| rule.tags.iter().map(String::as_str))
            .collect();
        for tag in overrides.enable_tags.iter().chain(overrides.disable_tags) {
            if !known_tags.contains(tag.as_str()) {
                return Err(OverrideError::UnknownTag(tag.clone()));
            }
        }
        let tagged = |rule: &Rule, tags: &[String]| rule.tags.iter().any(|t| tags.contains(t));
        for rule in &mut set.rules {
            if tagged(rule, overrides.enable_tags) {
                rule.enabled = true;
            }
            if tagged(rule, overrides.disable_tags) {
                rule.enabled = false;
            }
            if overrides.enable_rules.contains(&rule.id) {
                rule.enabled = true;
            }
            if overrides.disable_rules.contains(&rule.id) {
                rule.enabled = false;
            }
            if let Some(action) = overrides.actions.and_then(|actions| actions.get(&rule.id)) {
                rule.action = *action;
            }
        }
        if let Some(region) = overrides.phone_region {
            set.validation.phone_region = Some(region.to_string());
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn validate_shape(rule: &Rule) -> Result<(), RulesError> {
    let invalid = |message: &str| RulesError::Invalid {
        file: rule.source.clone(),
        id: rule.id.clone(),
        message: message.to_string(),
    };
    let id_ok = !rule.id.is_empty()
        && rule.id.len() <= 64
        && rule
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !id_ok {
        return Err(invalid("id must be 1-64 characters of [a-z0-9-]"));
    }
    let synthetic = rule.dictionary.is_some() || rule.protected_code.is_some();
    if rule.pattern.is_empty() && !synthetic {
        return Err(invalid("pattern is empty"));
    }
    if rule.applies_to.is_empty() {
        return Err(invalid("applies_to is empty"));
    }
    if rule.description.trim().is_empty() {
        return Err(invalid("description is empty"));
    }
    let tag_ok = |tag: &String| {
        !tag.is_empty()
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !rule.tags.iter().all(tag_ok) {
        return Err(invalid("tags must be non-empty strings of [a-z0-9-]"));
    }
    if rule.prefilter.as_ref().is_some_and(|p| p.is_empty()) {
        return Err(invalid("prefilter is empty"));
    }
    match (&rule.keyword, &rule.after_keyword) {
        (Some(keyword), Some(after)) => {
            if keyword.is_empty() || after.is_empty() {
                return Err(invalid("keyword and after_keyword must not be empty"));
            }
            if rule.prefilter.is_some() {
                return Err(invalid("a rule has a prefilter or a keyword, not both"));
            }
        }
        (None, None) => {}
        _ => return Err(invalid("keyword and after_keyword go together")),
    }
    if rule.spaces > MAX_SPACES {
        return Err(invalid(&format!(
            "spaces must be at most {MAX_SPACES} (each one holds a streamed word back)"
        )));
    }
    for truncated in &rule.truncated {
        if truncated.min_len == 0 {
            return Err(invalid("truncated.min_len must be at least 1"));
        }
        if truncated.prefix.is_empty() {
            return Err(invalid("truncated.prefix is empty"));
        }
        if truncated.reason.trim().is_empty() {
            return Err(invalid(
                "truncated.reason is empty (say how min_len was worked out)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[rules]]
id = "demo-token"
description = "demo"
pattern = 'demo_[a-z]{8}'
action = "mask"
"#;

    #[test]
    fn crc32_base62_checksum_accepts_the_format_and_rejects_any_changed_character() {
        // Built here from the definition: base62(crc32(body)), six characters, `0`-padded.
        let body = "QENbkqiGtLIUjENVR5mBwEXAMPLES6";
        let mut crc = u64::from(crc32fast::hash(body.as_bytes()));
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut sum = [b'0'; 6];
        for slot in sum.iter_mut().rev() {
            *slot = alphabet[(crc % 62) as usize];
            crc /= 62;
        }
        let token = format!("ghp_{body}{}", std::str::from_utf8(&sum).unwrap());
        assert!(Checksum::Crc32Base62.verify(token.as_bytes()));
        assert!(Checksum::Crc32Base62
            .verify(format!("npm_{body}{}", std::str::from_utf8(&sum).unwrap()).as_bytes()));
        for at in 4..token.len() {
            let mut changed = token.clone().into_bytes();
            changed[at] = if changed[at] == b'x' { b'y' } else { b'x' };
            assert!(!Checksum::Crc32Base62.verify(&changed), "changed at {at}");
        }
        assert!(!Checksum::Crc32Base62.verify(b"ghp_short"));
        assert!(!Checksum::Crc32Base62.verify(b"no-underscore-at-all-here-0123456789"));
    }

    #[test]
    fn defaults_fill_scopes_and_enabled() {
        let set = RuleSet::from_toml("one.toml", ONE).expect("parses");
        let rule = &set.all()[0];
        assert_eq!(rule.applies_to, Scope::ALL.to_vec());
        assert!(rule.enabled);
        assert_eq!(rule.scope_bits(), 7);
    }

    #[test]
    fn unknown_key_is_rejected_with_file_name() {
        let text = ONE.replace("action = \"mask\"", "action = \"mask\"\nseverity = 3");
        let err = RuleSet::from_toml("bad.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("severity"),
            "{err}"
        );
    }

    #[test]
    fn truncated_table_parses_and_is_optional() {
        let set = RuleSet::from_toml("one.toml", ONE).expect("parses");
        assert!(set.all()[0].truncated.is_empty());
        let text = format!(
            "{ONE}\n[[rules.truncated]]\nprefix = 'demo_'\nmin_len = 5\nreason = \"8 random a-z\"\n"
        );
        let set = RuleSet::from_toml("one.toml", &text).expect("parses");
        assert_eq!(
            set.all()[0].truncated,
            vec![Truncation {
                prefix: "demo_".into(),
                min_len: 5,
                reason: "8 random a-z".into(),
            }]
        );
    }

    #[test]
    fn truncated_table_shape_is_validated() {
        for (table, expected) in [
            ("prefix = 'demo_'\nmin_len = 0\nreason = 'r'", "min_len"),
            ("prefix = ''\nmin_len = 3\nreason = 'r'", "prefix"),
            ("prefix = 'demo_'\nmin_len = 3\nreason = ' '", "reason"),
            ("prefix = 'demo_'\nmin_len = 3", "reason"),
            (
                "prefix = 'demo_'\nmin_len = 3\nreason = 'r'\nmax_len = 9",
                "max_len",
            ),
        ] {
            let text = format!("{ONE}\n[[rules.truncated]]\n{table}\n");
            let err = RuleSet::from_toml("t.toml", &text).unwrap_err().to_string();
            assert!(err.contains(expected), "{table:?}: {err}");
        }
    }

    #[test]
    fn bad_id_is_rejected() {
        let text = ONE.replace("demo-token", "Demo Token");
        let err = RuleSet::from_toml("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("[a-z0-9-]"), "{err}");
    }

    #[test]
    fn duplicate_id_in_one_file_is_rejected() {
        let text = format!("{ONE}\n{ONE}");
        assert!(matches!(
            RuleSet::from_toml("x.toml", &text),
            Err(RulesError::DuplicateId { .. })
        ));
    }

    #[test]
    fn override_directory_replaces_by_id_and_appends_new() {
        let dir = std::env::temp_dir().join(format!("streammask-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = RuleSet::embedded().expect("embedded pack parses");
        let Some(first) = base.all().first() else {
            return;
        };
        let override_text = format!(
            "[[rules]]\nid = {:?}\ndescription = \"overridden\"\npattern = 'zzz_[0-9]{{4}}'\naction = \"audit\"\n\n[[rules]]\nid = \"brand-new-rule\"\ndescription = \"new\"\npattern = 'qqq_[0-9]{{4}}'\naction = \"mask\"\n",
            first.id
        );
        std::fs::write(dir.join("local.toml"), override_text).unwrap();
        let set = RuleSet::load(Some(&dir)).expect("loads");
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(set.len(), base.len() + 1);
        assert_eq!(set.all()[0].description, "overridden");
        assert_eq!(set.all()[0].action, Action::Audit);
        assert_eq!(set.all().last().unwrap().id, "brand-new-rule");
    }
}
