//! `[bedrock]` and `[vertex]`: Claude through Amazon Bedrock and Google Vertex AI, served under
//! their own path prefixes with the proxy's cloud credentials.
//!
//! Invariants: a prefix starts with `/`, has no trailing `/`, and cannot shadow another
//! provider's routes (`/v1…` is the first-party API's); a region is a plain region name (it
//! becomes part of a host name, so nothing else is accepted).

use super::{parse_endpoint, Endpoint};
use crate::config_error::{invalid, ConfigError};
use crate::policy::aws::AwsSettings;
use serde::Deserialize;
use std::path::PathBuf;

/// `[bedrock]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BedrockSection {
    pub enabled: bool,
    /// Clients use `http://<proxy><prefix>` as `ANTHROPIC_BEDROCK_BASE_URL`.
    pub prefix: String,
    /// The AWS region requests are signed for and sent to; unset: `AWS_REGION` / the profile.
    pub region: Option<String>,
    /// Replaces `https://bedrock-runtime.<region>.amazonaws.com` (VPC endpoints, tests).
    pub endpoint: Option<String>,
    /// Replaces `https://bedrock.<region>.amazonaws.com` for the control-plane route
    /// (`GET …/inference-profiles`); unset: `endpoint` when that is set.
    pub control_endpoint: Option<String>,
    /// A named profile of the shared AWS config files.
    pub profile: Option<String>,
    /// The variable that holds a Bedrock API key (used instead of SigV4 when it is set).
    pub api_key_env: String,
}

impl Default for BedrockSection {
    fn default() -> Self {
        BedrockSection {
            enabled: true,
            prefix: "/bedrock".into(),
            region: None,
            endpoint: None,
            control_endpoint: None,
            profile: None,
            api_key_env: "AWS_BEARER_TOKEN_BEDROCK".into(),
        }
    }
}

/// `[vertex]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VertexSection {
    pub enabled: bool,
    /// Clients use `http://<proxy><prefix>/v1` as `ANTHROPIC_VERTEX_BASE_URL`.
    pub prefix: String,
    /// Replaces `https://<location>-aiplatform.googleapis.com` (and
    /// `https://aiplatform.googleapis.com` for `global`): private endpoints, tests.
    pub endpoint: Option<String>,
    /// A service-account JSON key; unset: Application Default Credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud, the metadata server).
    pub credentials_file: Option<PathBuf>,
}

impl Default for VertexSection {
    fn default() -> Self {
        VertexSection {
            enabled: true,
            prefix: "/vertex".into(),
            endpoint: None,
            credentials_file: None,
        }
    }
}

/// `[bedrock]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bedrock {
    pub prefix: String,
    pub runtime_endpoint: Option<Endpoint>,
    pub control_endpoint: Option<Endpoint>,
    pub aws: AwsSettings,
}

/// `[vertex]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex {
    pub prefix: String,
    pub endpoint: Option<Endpoint>,
    pub credentials_file: Option<PathBuf>,
}

/// Whether `name` may be part of a host name as a region or location.
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn validate_prefix(key: &'static str, prefix: &str) -> Result<String, ConfigError> {
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        return Err(invalid(key, "must start with '/' and not end with '/'"));
    }
    if prefix == "/v1" || prefix.starts_with("/v1/") || prefix.starts_with("/_") {
        return Err(invalid(
            key,
            "must not overlap the first-party API's /v1 routes",
        ));
    }
    Ok(prefix.to_string())
}

impl BedrockSection {
    pub fn validate(self) -> Result<Option<Bedrock>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let prefix = validate_prefix("bedrock.prefix", &self.prefix)?;
        if let Some(region) = &self.region {
            if !is_region_name(region) {
                return Err(invalid("bedrock.region", "is not an AWS region name"));
            }
        }
        if self.api_key_env.is_empty() {
            return Err(invalid("bedrock.api_key_env", "must not be empty"));
        }
        let runtime_endpoint = self
            .endpoint
            .as_deref()
            .map(|url| parse_endpoint("bedrock.endpoint", url))
            .transpose()?;
        let control_endpoint = match self.control_endpoint.as_deref() {
            Some(url) => Some(parse_endpoint("bedrock.control_endpoint", url)?),
            None => runtime_endpoint.clone(),
        };
        Ok(Some(Bedrock {
            prefix,
            runtime_endpoint,
            control_endpoint,
            aws: AwsSettings {
                region: self.region,
                profile: self.profile.filter(|p| !p.is_empty()),
                api_key_env: self.api_key_env,
            },
        }))
    }
}

impl VertexSection {
    pub fn validate(self) -> Result<Option<Vertex>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let prefix = validate_prefix("vertex.prefix", &self.prefix)?;
        let endpoint = self
            .endpoint
            .as_deref()
            .map(|url| parse_endpoint("vertex.endpoint", url))
            .transpose()?;
        if let Some(file) = &self.credentials_file {
            if !file.is_file() {
                return Err(invalid("vertex.credentials_file", "is not a readable file"));
            }
        }
        Ok(Some(Vertex {
            prefix,
            endpoint,
            credentials_file: self.credentials_file,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_regions_are_checked() {
        for bad in [
            "",
            "/",
            "bedrock",
            "/bedrock/",
            "/v1",
            "/v1/bedrock",
            "/_mock",
        ] {
            let section = BedrockSection {
                prefix: bad.into(),
                ..Default::default()
            };
            assert!(section.validate().is_err(), "{bad:?}");
        }
        let section = BedrockSection {
            region: Some("us-east-1.evil.com".into()),
            ..Default::default()
        };
        assert!(section.validate().is_err());
        let section = BedrockSection {
            endpoint: Some("http://127.0.0.1:9000".into()),
            ..Default::default()
        };
        let bedrock = section.validate().expect("valid").expect("enabled");
        assert_eq!(bedrock.control_endpoint, bedrock.runtime_endpoint);
        assert_eq!(
            bedrock.runtime_endpoint.map(|e| (e.host, e.port, e.tls)),
            Some(("127.0.0.1".to_string(), 9000, false))
        );
        let off = VertexSection {
            enabled: false,
            ..Default::default()
        };
        assert_eq!(off.validate().expect("valid"), None);
    }
}
