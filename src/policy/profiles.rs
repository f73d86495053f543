//! Per-group policy: `[[profiles]]` map caller groups to which rules are on, per-rule action
//! overrides, allowed models and a request size limit.
//!
//! Invariants:
//! - the first profile (in file order) that names one of the caller's groups applies; the
//!   profile named `default` (or an implicit one with no changes) applies otherwise;
//! - each profile has one [`Engine`], compiled at start-up from the rule set with the
//!   profile's changes, so request masking, blocking and response streaming of one request all
//!   follow the same profile. Profiles without rule changes share the base engine, and every
//!   engine uses the same placeholder key (a secret masks the same way for every group);
//! - a profile that names an unknown rule or a tag no rule carries fails start-up (and
//!   `config check`); rule ids win over tags, so `enable_tags = ["pii"]` with one
//!   `disable_rules` entry leaves that one rule off.

use crate::anthropic::api::Route;
use crate::config_error::ConfigError;
use crate::engine::masker::MaskError;
use crate::engine::placeholder::PlaceholderKey;
use crate::engine::rules::{OverrideError, Overrides};
use crate::engine::{Action, Engine, RuleSet};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const DEFAULT_PROFILE: &str = "default";

/// `[[profiles]]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSection {
    pub name: String,
    /// Caller groups this profile applies to (empty only for `default`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Rule ids to turn on (rules shipped with `enabled = false`).
    #[serde(default)]
    pub enable_rules: Vec<String>,
    /// Rule ids to turn off.
    #[serde(default)]
    pub disable_rules: Vec<String>,
    /// Tags whose rules to turn on (`["pii"]`: every personal-data rule). Rule ids win over
    /// tags.
    #[serde(default)]
    pub enable_tags: Vec<String>,
    /// Tags whose rules to turn off.
    #[serde(default)]
    pub disable_tags: Vec<String>,
    /// The region (ISO 3166 alpha-2, `"GB"`) national-format phone numbers are read in; without
    /// it only international numbers (`+44 …`) can be personal-data findings.
    pub phone_region: Option<String>,
    /// Per-rule action overrides, e.g. `{ "github-pat-classic" = "block" }`.
    #[serde(default)]
    pub actions: BTreeMap<String, Action>,
    /// Models this profile may use; empty = any. A trailing `*` matches a prefix.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Request size limit for this profile (defaults to `server.max_body_bytes`).
    pub max_body_bytes: Option<usize>,
    /// `false`: this profile's callers never get placeholders restored (`[restore]`).
    #[serde(default = "restore_by_default")]
    pub restore: bool,
}

fn restore_by_default() -> bool {
    true
}

impl ProfileSection {
    fn changes_rules(&self) -> bool {
        !(self.enable_rules.is_empty()
            && self.disable_rules.is_empty()
            && self.enable_tags.is_empty()
            && self.disable_tags.is_empty()
            && self.actions.is_empty()
            && self.phone_region.is_none())
    }
}

fn invalid(message: String) -> ConfigError {
    crate::config_error::invalid("profiles", message)
}

/// Validate the profiles; returns them with a `default` profile last (implicit if absent).
pub fn validate_profiles(
    mut profiles: Vec<ProfileSection>,
    max_body_bytes: usize,
) -> Result<Vec<ProfileSection>, ConfigError> {
    let mut seen = std::collections::HashSet::new();
    // Entries are named by position, never by their text: an error message quotes no value
    // from the file.
    for (n, profile) in profiles.iter().enumerate() {
        if profile.name.trim().is_empty() {
            return Err(invalid(format!("profile {n}: every profile needs a name")));
        }
        if !seen.insert(profile.name.clone()) {
            return Err(invalid(format!(
                "profile {n}: its name is taken by an earlier profile"
            )));
        }
        if profile.name == DEFAULT_PROFILE {
            if !profile.groups.is_empty() {
                return Err(invalid(
                    "profile \"default\" applies to callers no other profile matches; it takes no groups".into(),
                ));
            }
        } else if profile.groups.is_empty() {
            return Err(invalid(format!(
                "profile {n}: names no groups (only \"default\" may)"
            )));
        }
        if let Some(limit) = profile.max_body_bytes {
            if limit < 1024 {
                return Err(invalid(format!(
                    "profile {n}: max_body_bytes must be at least 1024"
                )));
            }
        }
        if let Some(region) = &profile.phone_region {
            if !crate::engine::validators::is_phone_region(region) {
                return Err(invalid(format!(
                    "profile {n}: phone_region must be an ISO 3166 alpha-2 region the phone \
                     library knows (\"GB\", \"US\")"
                )));
            }
        }
        if profile.allowed_models.iter().any(|m| m.trim().is_empty()) {
            return Err(invalid(format!(
                "profile {n}: allowed_models has an empty entry"
            )));
        }
    }
    // `default` goes last whatever its position, so group profiles are tried first.
    let default_at = profiles.iter().position(|p| p.name == DEFAULT_PROFILE);
    let default = match default_at {
        Some(at) => profiles.remove(at),
        None => ProfileSection {
            name: DEFAULT_PROFILE.into(),
            groups: Vec::new(),
            enable_rules: Vec::new(),
            disable_rules: Vec::new(),
            enable_tags: Vec::new(),
            disable_tags: Vec::new(),
            phone_region: None,
            actions: BTreeMap::new(),
            allowed_models: Vec::new(),
            max_body_bytes: None,
            restore: true,
        },
    };
    profiles.push(default);
    for profile in &mut profiles {
        profile.max_body_bytes.get_or_insert(max_body_bytes);
    }
    Ok(profiles)
}

/// Every group the profiles name.
pub fn profile_groups(profiles: &[ProfileSection]) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for group in profiles.iter().flat_map(|p| p.groups.iter()) {
        if !groups.contains(group) {
            groups.push(group.clone());
        }
    }
    groups
}

/// One profile, ready to serve.
pub struct Profile {
    pub name: String,
    groups: Vec<String>,
    allowed_models: Vec<String>,
    pub max_body_bytes: usize,
    pub engine: Arc<Engine>,
    /// Whether this profile's callers may get placeholders restored.
    pub restore: bool,
}

impl Profile {
    /// Whether this profile may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty()
            || self
                .allowed_models
                .iter()
                .any(|allowed| match allowed.strip_suffix('*') {
                    Some(prefix) => model.starts_with(prefix),
                    None => model == allowed,
                })
    }

    pub fn restricts_models(&self) -> bool {
        !self.allowed_models.is_empty()
    }

    /// Whether every model `body` names is allowed: `model` of a message request,
    /// `requests[].params.model` of a batch. Other routes name no model. Fails closed: for a
    /// profile with a model list, a body whose model cannot be read where the API reads it (not
    /// a JSON object, a `model` that is not a string, a batch whose `requests` or `params` are
    /// not of the expected shape) is not allowed. Duplicate keys, on which readers disagree,
    /// are refused by the walker before this runs.
    pub fn allows_request_models(&self, route: Route, body: &[u8]) -> bool {
        if !self.restricts_models()
            || !matches!(route, Route::Messages | Route::CountTokens | Route::Batches)
        {
            return true;
        }
        let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        let allowed = |model: Option<&Value>| match model {
            None => true,
            Some(Value::String(model)) => self.allows_model(model),
            Some(_) => false,
        };
        if !allowed(top.get("model")) {
            return false;
        }
        match top.get("requests") {
            None => true,
            Some(Value::Array(requests)) => requests.iter().all(|request| {
                let Value::Object(request) = request else {
                    return false;
                };
                match request.get("params") {
                    None => true,
                    Some(Value::Object(params)) => allowed(params.get("model")),
                    Some(_) => false,
                }
            }),
            Some(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("profiles: profile {profile:?} {source}")]
    Overrides {
        profile: String,
        source: OverrideError,
    },
    #[error("profiles: profile {profile:?}: {source}")]
    Engine { profile: String, source: MaskError },
}

/// All profiles; the last one is `default`.
pub struct Policy {
    profiles: Vec<Arc<Profile>>,
}

/// The rules a profile changes `rules` into.
fn profile_rules(section: &ProfileSection, rules: &RuleSet) -> Result<RuleSet, PolicyError> {
    rules
        .with_overrides(&Overrides {
            enable_rules: &section.enable_rules,
            disable_rules: &section.disable_rules,
            enable_tags: &section.enable_tags,
            disable_tags: &section.disable_tags,
            actions: Some(&section.actions),
            phone_region: section.phone_region.as_deref(),
        })
        .map_err(|source| PolicyError::Overrides {
            profile: section.name.clone(),
            source,
        })
}

/// `rules` with every rule some profile turns on armed (see [`RuleSet::with_armed`]): compile
/// the base engine from this set, so every profile's engine shares its databases.
pub fn arm_profile_rules(
    sections: &[ProfileSection],
    rules: RuleSet,
) -> Result<RuleSet, PolicyError> {
    let mut armed = Vec::new();
    for section in sections.iter().filter(|s| s.changes_rules()) {
        let set = profile_rules(section, &rules)?;
        armed.extend(set.enabled().map(|rule| rule.id.clone()));
    }
    Ok(rules.with_armed(armed))
}

impl Policy {
    /// Compile each profile's engine. `base` is the engine of `rules` unchanged; `rules`
    /// should come from [`arm_profile_rules`], or a profile that turns on a disabled rule
    /// compiles databases of its own.
    pub fn build(
        sections: &[ProfileSection],
        rules: &RuleSet,
        base: &Arc<Engine>,
        key: &PlaceholderKey,
        max_hold_bytes: usize,
    ) -> Result<Policy, PolicyError> {
        let mut profiles = Vec::new();
        for section in sections {
            let engine = if section.changes_rules() {
                let set = profile_rules(section, rules)?;
                let interim = base.matcher().interim_options();
                Arc::new(
                    Engine::compile_with(&set, key.clone(), max_hold_bytes, interim).map_err(
                        |source| PolicyError::Engine {
                            profile: section.name.clone(),
                            source,
                        },
                    )?,
                )
            } else {
                Arc::clone(base)
            };
            profiles.push(Arc::new(Profile {
                name: section.name.clone(),
                groups: section.groups.clone(),
                allowed_models: section.allowed_models.clone(),
                max_body_bytes: section.max_body_bytes.unwrap_or(usize::MAX),
                engine,
                restore: section.restore,
            }));
        }
        Ok(Policy { profiles })
    }

    /// The profile for a caller in `groups`: the first that names one of them, else `default`.
    pub fn profile_for(&self, groups: &[String]) -> &Arc<Profile> {
        self.profiles
            .iter()
            .find(|p| p.groups.iter().any(|g| groups.contains(g)))
            .unwrap_or_else(|| {
                // validate_profiles always appends `default`, so the list is never empty.
                self.profiles.last().expect("policy has a default profile")
            })
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Every profile, the `default` one last.
    pub fn profiles(&self) -> impl Iterator<Item = &Arc<Profile>> + '_ {
        self.profiles.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::databases::Source;

    fn sections(text: &str) -> Vec<ProfileSection> {
        #[derive(Deserialize)]
        struct File {
            profiles: Vec<ProfileSection>,
        }
        let file: File = toml::from_str(text).unwrap();
        validate_profiles(file.profiles, 4096).unwrap()
    }

    #[test]
    fn default_goes_last_and_limits_inherit() {
        let s = sections(
            "[[profiles]]\nname = \"default\"\n[[profiles]]\nname = \"c\"\ngroups = [\"contractors\"]\nmax_body_bytes = 2048\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "c");
        assert_eq!(s[0].max_body_bytes, Some(2048));
        assert_eq!(s[1].name, "default");
        assert_eq!(s[1].max_body_bytes, Some(4096));
        assert_eq!(profile_groups(&s), ["contractors"]);
    }

    #[test]
    fn bad_profiles_are_named() {
        #[derive(Deserialize)]
        struct File {
            profiles: Vec<ProfileSection>,
        }
        for (text, needle) in [
            ("[[profiles]]\nname = \"x\"\n", "names no groups"),
            ("[[profiles]]\nname = \"default\"\ngroups = [\"a\"]\n", "takes no groups"),
            (
                "[[profiles]]\nname = \"x\"\ngroups = [\"a\"]\n[[profiles]]\nname = \"x\"\ngroups = [\"b\"]\n",
                "profile 1: its name is taken",
            ),
        ] {
            let file: File = toml::from_str(text).unwrap();
            let err = validate_profiles(file.profiles, 4096).unwrap_err().to_string();
            assert!(err.starts_with("profiles") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn rules_only_a_profile_turns_on_are_in_the_shared_databases_and_nowhere_else() {
        let pack = RuleSet::embedded().unwrap();
        let disabled = pack.all().iter().filter(|r| !r.enabled).count();
        assert!(disabled >= 6, "the personal-data rules ship disabled");
        let key = PlaceholderKey::random();
        let build = |text: &str| {
            let sections = sections(text);
            let rules = arm_profile_rules(&sections, pack.clone()).unwrap();
            let base = Arc::new(Engine::compile(&rules, key.clone(), 8192).unwrap());
            let policy = Policy::build(&sections, &rules, &base, &key, 8192).unwrap();
            (base, policy)
        };
        // No profile turns a disabled rule on: the databases hold the enabled rules only (a
        // disabled rule without a literal would slow every scan) and are the embedded ones.
        let (base, _) = build("[[profiles]]\nname = \"default\"\n");
        let matcher = base.matcher();
        assert_eq!(matcher.rules_in_databases(), pack.all().len() - disabled);
        assert_eq!(matcher.database_source(), Source::Embedded);
        // One profile turns the personal-data rules on: they join the databases (inactive for
        // the others), and every profile scans with the same databases.
        let (base, policy) =
            build("[[profiles]]\nname = \"hr\"\ngroups = [\"hr\"]\nenable_tags = [\"pii\"]\n");
        let armed = pack
            .all()
            .iter()
            .filter(|r| r.tags.iter().any(|t| t == "pii"))
            .count();
        assert_eq!(
            base.matcher().rules_in_databases(),
            pack.all().len() - disabled + armed
        );
        for profile in policy.profiles() {
            assert!(
                profile
                    .engine
                    .matcher()
                    .shares_databases_with(base.matcher()),
                "{}",
                profile.name
            );
        }
        let hr = policy.profile_for(&["hr".into()]);
        let card = "card 4451 8685 7100 7653 on file";
        let found = |engine: &Engine| {
            engine
                .scan(card, crate::engine::Scope::Request)
                .unwrap()
                .iter()
                .map(|f| f.rule_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(found(&hr.engine), ["pii-payment-card"]);
        assert!(found(&base).is_empty());
    }

    #[test]
    fn model_globs() {
        assert!(profile(&[]).allows_model("anything"));
        let p = profile(&["claude-haiku-*", "claude-sonnet-4-5"]);
        assert!(p.allows_model("claude-haiku-4-5"));
        assert!(p.allows_model("claude-sonnet-4-5"));
        assert!(!p.allows_model("claude-sonnet-4-5-20250929"));
        assert!(!p.allows_model("claude-opus-4-1"));
    }

    /// A profile allowing `models` (any model when empty).
    fn profile(models: &[&str]) -> Profile {
        Profile {
            name: "p".into(),
            groups: vec![],
            allowed_models: models.iter().map(|m| m.to_string()).collect(),
            max_body_bytes: 1,
            engine: test_engine(),
            restore: true,
        }
    }

    fn test_engine() -> Arc<Engine> {
        let set = RuleSet::from_toml(
            "t.toml",
            "[[rules]]\nid = \"t\"\ndescription = \"t\"\npattern = 'tok_[a-z]{8}'\naction = \"mask\"\n",
        )
        .unwrap();
        Arc::new(Engine::compile(&set, PlaceholderKey::random(), 1024).unwrap())
    }

    #[test]
    fn request_models_are_read_from_messages_and_batches_only() {
        let haiku_only = profile(&["claude-haiku-*"]);
        let message = |model: &str| format!(r#"{{"model":"{model}","messages":[]}}"#);
        let ok = message("claude-haiku-4-5");
        let opus = message("claude-opus-4-1");
        for route in [Route::Messages, Route::CountTokens] {
            assert!(haiku_only.allows_request_models(route, ok.as_bytes()));
            assert!(!haiku_only.allows_request_models(route, opus.as_bytes()));
        }
        // A batch is refused when any of its requests names a model the profile lacks.
        let batch = r#"{"requests":[
            {"custom_id":"a","params":{"model":"claude-haiku-4-5","messages":[]}},
            {"custom_id":"b","params":{"model":"claude-opus-4-1","messages":[]}}]}"#;
        assert!(!haiku_only.allows_request_models(Route::Batches, batch.as_bytes()));
        let clean_batch =
            r#"{"requests":[{"custom_id":"a","params":{"model":"claude-haiku-4-5"}}]}"#;
        assert!(haiku_only.allows_request_models(Route::Batches, clean_batch.as_bytes()));
        // Routes that name no model and profiles without a list.
        assert!(haiku_only.allows_request_models(Route::Models, opus.as_bytes()));
        assert!(profile(&[]).allows_request_models(Route::Messages, opus.as_bytes()));
        assert!(profile(&[]).allows_request_models(Route::Messages, b"not json"));
        // Fail closed: a model the proxy cannot read where the API reads it is not allowed.
        for body in [
            &b"not json"[..],
            br#"{"model":5}"#,
            br#"{"model":["claude-opus-4-1"]}"#,
            br#"["claude-haiku-4-5"]"#,
            br#"{"requests":{"model":"claude-opus-4-1"}}"#,
            br#"{"requests":[5]}"#,
            br#"{"requests":[{"params":"claude-opus-4-1"}]}"#,
            br#"{"requests":[{"params":{"model":null}}]}"#,
        ] {
            let route = if body.starts_with(br#"{"requests""#) {
                Route::Batches
            } else {
                Route::Messages
            };
            assert!(
                !haiku_only.allows_request_models(route, body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The model nested in metadata is not the request's model.
        let nested = r#"{"model":"claude-haiku-4-5","metadata":{"model":"claude-opus-4-1"}}"#;
        assert!(haiku_only.allows_request_models(Route::Messages, nested.as_bytes()));
    }
}
