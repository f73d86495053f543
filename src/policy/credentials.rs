//! The upstream credential: the organisation's Claude API key, held by the proxy.
//!
//! `[upstream] credentials = "inject"` (the default when `api_key_env` or `api_key_file` is
//! set): after authentication the caller's `Authorization` and `x-api-key` are removed and
//! `x-api-key: <upstream key>` is sent instead. `"passthrough"` forwards the caller's own key
//! (only with `auth.mode = "none"`: with authentication on, the caller's credential is an
//! identity token that must not leave the proxy).
//!
//! Invariants: the key is read at start-up and at every reload of the configuration (a failed
//! reload keeps the snapshot with the old key); it is held as a sensitive header value, so
//! `Debug` never prints it; no error or log line carries it, only the variable or file it came
//! from.

use crate::config_error::{invalid, ConfigError};
use http::HeaderValue;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsMode {
    Inject,
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("upstream.api_key_env: the environment variable {0} is not set or empty")]
    EnvMissing(String),
    #[error("upstream.api_key_file: cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}: the upstream key is not a valid header value (visible ASCII only)")]
    NotHeaderSafe(&'static str),
}

/// `[upstream]`'s credential settings as written in the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct CredentialsSettings<'a> {
    pub credentials: Option<CredentialsMode>,
    pub api_key_env: Option<&'a str>,
    pub api_key_file: Option<&'a Path>,
}

/// Decide the credentials mode from `[upstream]` (and whether `[auth]` is on, which rules out
/// passthrough).
pub fn validate(
    section: CredentialsSettings<'_>,
    auth_enabled: bool,
) -> Result<(CredentialsMode, Option<KeySource>), ConfigError> {
    let source = match (section.api_key_env, section.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "upstream.api_key_env",
                "set only one of api_key_env and api_key_file",
            ))
        }
        (Some(name), None) if name.trim().is_empty() => {
            return Err(invalid("upstream.api_key_env", "must not be empty"))
        }
        (Some(name), None) => Some(KeySource::Env(name.to_string())),
        (None, Some(path)) => Some(KeySource::File(path.to_path_buf())),
        (None, None) => None,
    };
    let mode = section.credentials.unwrap_or(if source.is_some() {
        CredentialsMode::Inject
    } else {
        CredentialsMode::Passthrough
    });
    match mode {
        CredentialsMode::Inject if source.is_none() => Err(invalid(
            "upstream.credentials",
            "\"inject\" needs upstream.api_key_env or upstream.api_key_file",
        )),
        CredentialsMode::Passthrough if source.is_some() => Err(invalid(
            "upstream.credentials",
            "\"passthrough\" forwards the caller's key; remove api_key_env/api_key_file or use \"inject\"",
        )),
        CredentialsMode::Passthrough if auth_enabled => Err(invalid(
            "upstream.credentials",
            "with authentication on, callers present identity tokens that must not go upstream: configure api_key_env or api_key_file (\"inject\")",
        )),
        _ => Ok((mode, source)),
    }
}

/// The upstream key and where it was loaded from. A reload of the configuration loads it
/// again into a new snapshot; this value never changes.
pub struct UpstreamKey {
    source: KeySource,
    value: HeaderValue,
}

impl std::fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn read(source: &KeySource) -> Result<HeaderValue, CredentialsError> {
    let (raw, key) = match source {
        KeySource::Env(name) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => (value, "upstream.api_key_env"),
            _ => return Err(CredentialsError::EnvMissing(name.clone())),
        },
        KeySource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::File {
                path: path.clone(),
                message: e.kind().to_string(),
            })?;
            if text.trim().is_empty() {
                return Err(CredentialsError::File {
                    path: path.clone(),
                    message: "the file is empty".into(),
                });
            }
            (text, "upstream.api_key_file")
        }
    };
    let mut value =
        HeaderValue::from_str(raw.trim()).map_err(|_| CredentialsError::NotHeaderSafe(key))?;
    value.set_sensitive(true);
    Ok(value)
}

impl UpstreamKey {
    pub fn load(source: KeySource) -> Result<UpstreamKey, CredentialsError> {
        let value = read(&source)?;
        Ok(UpstreamKey { source, value })
    }

    pub fn header(&self) -> HeaderValue {
        self.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_key_loads_trimmed_refuses_an_empty_file_and_debug_hides_it() {
        let dir = std::env::temp_dir().join(format!("sm-cred-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-ant-test-one\n").unwrap();
        let key = UpstreamKey::load(KeySource::File(path.clone())).unwrap();
        assert_eq!(key.header(), "sk-ant-test-one");
        assert!(!format!("{key:?}").contains("sk-ant"));
        assert!(!format!("{:?}", key.header()).contains("sk-ant"));
        std::fs::write(&path, "").unwrap();
        let err = UpstreamKey::load(KeySource::File(path.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream.api_key_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = UpstreamKey::load(KeySource::Env("SM_TEST_UNSET_VARIABLE_X".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SM_TEST_UNSET_VARIABLE_X"), "{err}");
    }
}
