//! The one error every configuration section's validation returns, kept in a leaf module so
//! that each layer can validate its own section (`[auth]` in `policy`, `[audit]` in `observe`)
//! without importing the config aggregator that sits above them.
//!
//! Invariant: every error names the key it is about (`upstream.url: …`), never a secret value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// A value of `key` that is not acceptable, and why.
pub fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}
