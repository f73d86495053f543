//! The organisation's own data, from the config file: `[[dictionaries]]` (lists of its terms),
//! `[[protected_code]]` (source trees whose code must not reach the model) and `[pii]` (what
//! the personal-data validators read). Each dictionary and each protected tree becomes one rule
//! appended to the rule set (`dict-<id>`, `protected-code-<id>`), so profiles, actions,
//! placeholders, metrics and the audit trail treat them like any rule.
//!
//! Invariants:
//! - the sections are checked when the config is validated (ids, actions, limits), the files
//!   are read when the rules are built (start-up and `config check`), and any error names the
//!   entry and the file, never a term or a line of code;
//! - a protected tree is held as fingerprints only ([`crate::engine::protected_code`]);
//! - a dictionary's terms and a tree's fingerprints are built once and shared by every profile.

use crate::config_error::{invalid, ConfigError};
use crate::engine::dictionary::{Dictionary, DictionaryError, MatchOptions};
use crate::engine::protected_code::{FingerprintIndex, ProtectedCodeError};
use crate::engine::rules::{ProtectedTree, Rule};
use crate::engine::validators::{ValidationContext, DEFAULT_EMAIL_ALLOW_DOMAINS};
use crate::engine::{Action, Scope};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Prefix of the rule id of a dictionary.
pub const DICTIONARY_RULE_PREFIX: &str = "dict-";
/// Prefix of the rule id of a protected tree.
pub const PROTECTED_CODE_RULE_PREFIX: &str = "protected-code-";

fn mask() -> Action {
    Action::Mask
}

fn approve() -> Action {
    Action::Approve
}

fn yes() -> bool {
    true
}

fn request_and_response() -> Vec<Scope> {
    vec![Scope::Request, Scope::Response]
}

fn ten_lines() -> usize {
    10
}

/// `[[dictionaries]]`: one text file of terms, one per line, `#` comments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DictionarySection {
    pub id: String,
    pub path: PathBuf,
    #[serde(default = "mask")]
    pub action: Action,
    #[serde(default)]
    pub case_sensitive: bool,
    #[serde(default = "yes")]
    pub whole_word: bool,
    #[serde(default = "request_and_response")]
    pub applies_to: Vec<Scope>,
}

impl DictionarySection {
    pub fn options(&self) -> MatchOptions {
        MatchOptions {
            case_sensitive: self.case_sensitive,
            whole_word: self.whole_word,
        }
    }
}

/// `[[protected_code]]`: directories or files whose code is fingerprinted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedCodeSection {
    pub id: String,
    pub paths: Vec<PathBuf>,
    #[serde(default = "approve")]
    pub action: Action,
    #[serde(default = "ten_lines")]
    pub min_match_lines: usize,
}

/// `[pii]`: what the personal-data rules' validators read (the rules themselves are turned on
/// per profile, `enable_tags = ["pii"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiSection {
    /// E-mail domains that are never personal data (the domain and its subdomains), on top of
    /// the reserved ones (`example.com`, `*.test`, …).
    #[serde(default = "default_email_allow_domains")]
    pub email_allow_domains: Vec<String>,
}

fn default_email_allow_domains() -> Vec<String> {
    DEFAULT_EMAIL_ALLOW_DOMAINS
        .iter()
        .map(|domain| domain.to_string())
        .collect()
}

impl Default for PiiSection {
    fn default() -> Self {
        PiiSection {
            email_allow_domains: default_email_allow_domains(),
        }
    }
}

/// The three sections, validated.
#[derive(Debug, Clone, Default)]
pub struct OrgData {
    pub dictionaries: Vec<DictionarySection>,
    pub protected_code: Vec<ProtectedCodeSection>,
    pub pii: PiiSection,
}

#[derive(Debug, thiserror::Error)]
pub enum OrgDataError {
    #[error("dictionaries: {0}")]
    Dictionary(#[from] DictionaryError),
    #[error("protected_code {id:?}: {source}")]
    ProtectedCode {
        id: String,
        source: ProtectedCodeError,
    },
}

/// Every entry of `section` has a well-formed id of its own.
fn check_ids<'a>(
    section: &'static str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (n, id) in ids.enumerate() {
        if !id_ok(id) {
            return Err(invalid(
                section,
                format!("entry {n}: id must be 1-40 characters of [a-z0-9-]"),
            ));
        }
        if !seen.insert(id) {
            return Err(invalid(
                section,
                format!("entry {n}: id {id:?} is used twice"),
            ));
        }
    }
    Ok(())
}

fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 40
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl OrgData {
    /// Check the sections' shape (files are read later, by [`OrgData::rules`]).
    pub fn validate(
        dictionaries: Vec<DictionarySection>,
        protected_code: Vec<ProtectedCodeSection>,
        pii: PiiSection,
    ) -> Result<OrgData, ConfigError> {
        check_ids("dictionaries", dictionaries.iter().map(|d| d.id.as_str()))?;
        for (n, dictionary) in dictionaries.iter().enumerate() {
            if dictionary.applies_to.is_empty() {
                return Err(invalid(
                    "dictionaries",
                    format!("entry {n} ({}): applies_to is empty", dictionary.id),
                ));
            }
        }
        check_ids(
            "protected_code",
            protected_code.iter().map(|t| t.id.as_str()),
        )?;
        for (n, tree) in protected_code.iter().enumerate() {
            if tree.paths.is_empty() {
                return Err(invalid(
                    "protected_code",
                    format!("entry {n} ({}): paths is empty", tree.id),
                ));
            }
            if tree.action == Action::Mask {
                return Err(invalid(
                    "protected_code",
                    format!(
                        "entry {n} ({}): action must be approve, block or audit (code cannot be \
                         replaced by a placeholder)",
                        tree.id
                    ),
                ));
            }
            if tree.min_match_lines < 3 {
                return Err(invalid(
                    "protected_code",
                    format!(
                        "entry {n} ({}): min_match_lines must be at least 3 (fewer lines are \
                         common idioms)",
                        tree.id
                    ),
                ));
            }
        }
        if pii
            .email_allow_domains
            .iter()
            .any(|domain| domain.trim().is_empty() || domain.contains('@'))
        {
            return Err(invalid(
                "pii.email_allow_domains",
                "entries are domain names (`users.noreply.github.com`), not empty and without `@`",
            ));
        }
        Ok(OrgData {
            dictionaries,
            protected_code,
            pii,
        })
    }

    /// What the validators read.
    pub fn validation(&self) -> ValidationContext {
        ValidationContext {
            phone_region: None,
            email_allow_domains: self.pii.email_allow_domains.clone(),
        }
    }

    /// The rules of every dictionary and protected tree, reading their files.
    pub fn rules(&self) -> Result<Vec<Rule>, OrgDataError> {
        let mut rules = Vec::new();
        for section in &self.dictionaries {
            let dictionary = Dictionary::load(&section.id, &section.path, section.options())?;
            let description = format!(
                "a term of the `{}` dictionary ({} terms)",
                section.id,
                dictionary.len()
            );
            let mut rule = Rule::synthetic(
                format!("{DICTIONARY_RULE_PREFIX}{}", section.id),
                description,
                section.action,
                section.applies_to.clone(),
            );
            rule.dictionary = Some(Arc::new(dictionary));
            rule.source = section.path.display().to_string();
            rules.push(rule);
        }
        for section in &self.protected_code {
            let mut index = FingerprintIndex::new();
            index
                .add_paths(&section.paths)
                .map_err(|source| OrgDataError::ProtectedCode {
                    id: section.id.clone(),
                    source,
                })?;
            // Every path holds a file (`add_paths` refuses one that holds none), and the
            // section has at least one path (validated).
            let stats = index.stats();
            tracing::info!(
                id = %section.id,
                files = stats.files,
                bytes = stats.bytes,
                fingerprints = stats.fingerprints,
                memory_bytes = stats.memory_bytes,
                "protected code fingerprinted"
            );
            let description = format!(
                "code of the protected tree `{}` ({} files)",
                section.id, stats.files
            );
            let mut rule = Rule::synthetic(
                format!("{PROTECTED_CODE_RULE_PREFIX}{}", section.id),
                description,
                section.action,
                vec![Scope::Request],
            );
            rule.protected_code = Some(Arc::new(ProtectedTree {
                index,
                min_match_lines: section.min_match_lines,
            }));
            rule.source = format!("protected_code {}", section.id);
            rules.push(rule);
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        dictionaries: Vec<DictionarySection>,
        #[serde(default)]
        protected_code: Vec<ProtectedCodeSection>,
        #[serde(default)]
        pii: PiiSection,
    }

    fn validate(text: &str) -> Result<OrgData, ConfigError> {
        let file: File = toml::from_str(text).expect("toml parses");
        OrgData::validate(file.dictionaries, file.protected_code, file.pii)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let data = validate(
            "[[dictionaries]]\nid = \"names\"\npath = \"/x\"\n[[protected_code]]\nid = \"core\"\npaths = [\"/y\"]\n",
        )
        .expect("valid");
        let dictionary = &data.dictionaries[0];
        assert_eq!(dictionary.action, Action::Mask);
        assert!(!dictionary.case_sensitive);
        assert!(dictionary.whole_word);
        assert_eq!(dictionary.applies_to, vec![Scope::Request, Scope::Response]);
        let tree = &data.protected_code[0];
        assert_eq!(tree.action, Action::Approve);
        assert_eq!(tree.min_match_lines, 10);
        assert_eq!(
            data.pii.email_allow_domains,
            vec!["users.noreply.github.com".to_string()]
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, expected) in [
            ("[[dictionaries]]\nid = \"Bad Id\"\npath = \"/x\"\n", "[a-z0-9-]"),
            (
                "[[dictionaries]]\nid = \"a\"\npath = \"/x\"\n[[dictionaries]]\nid = \"a\"\npath = \"/y\"\n",
                "used twice",
            ),
            (
                "[[protected_code]]\nid = \"core\"\npaths = [\"/y\"]\naction = \"mask\"\n",
                "approve, block or audit",
            ),
            (
                "[[protected_code]]\nid = \"core\"\npaths = [\"/y\"]\nmin_match_lines = 2\n",
                "at least 3",
            ),
            ("[[protected_code]]\nid = \"core\"\npaths = []\n", "paths is empty"),
            ("[pii]\nemail_allow_domains = [\"a@b.c\"]\n", "without `@`"),
        ] {
            let err = validate(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn dictionary_files_become_rules_and_a_missing_file_is_named() {
        let dir = std::env::temp_dir().join(format!("streammask-org-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("names.txt");
        std::fs::write(&path, "# code names\nFalcon\nOsprey\n").expect("write");
        let data = validate(&format!(
            "[[dictionaries]]\nid = \"names\"\npath = {:?}\naction = \"block\"\n",
            path.display().to_string()
        ))
        .expect("valid");
        let rules = data.rules().expect("rules");
        assert_eq!(rules[0].id, "dict-names");
        assert_eq!(rules[0].action, Action::Block);
        assert!(rules[0].description.contains("2 terms"));
        std::fs::remove_dir_all(&dir).ok();
        let err = data.rules().expect_err("file gone").to_string();
        assert!(err.contains("names.txt"), "{err}");
    }
}
