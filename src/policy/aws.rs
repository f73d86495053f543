//! The organisation's AWS credentials for Amazon Bedrock, held by the proxy: requests are signed
//! with SigV4 (service `bedrock`) over the body the proxy forwards, or carry a Bedrock API key.
//!
//! Credentials come from the standard AWS provider chain (`aws-config`): environment, shared
//! config and credentials files and profiles (`[bedrock] profile`), web identity (EKS IRSA:
//! `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, through STS), SSO, container and instance
//! metadata. A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`, or the variable
//! `[bedrock] api_key_env` names) replaces signing when it is set, as the AWS SDKs do.
//!
//! Invariants:
//! - the chain is loaded on the first Bedrock request, not at start-up (a proxy that never
//!   serves Bedrock never reaches for AWS credentials or metadata endpoints);
//! - credentials are cached and refreshed [`REFRESH_BEFORE`] ahead of their expiry by one
//!   background task while requests keep being signed with the still-valid ones; only a
//!   request that finds no valid credentials waits, and concurrent waiters share one fetch;
//! - no error or log line carries a secret key, a session token or an API key: errors name
//!   the chain's failure kind only.

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use http::HeaderValue;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::OnceCell;

/// How long before expiry cached credentials are refreshed (the AWS SDKs' default window).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Credentials closer than this to expiry are not used at all: the request waits for new ones.
const USABLE_FOR_AT_LEAST: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AwsError {
    #[error("no AWS credentials are available to the proxy ({0})")]
    NoCredentials(String),
    #[error("no AWS region is configured for Bedrock (set [bedrock] region or AWS_REGION)")]
    NoRegion,
    #[error("the Bedrock request could not be signed ({0})")]
    Signing(String),
}

/// Where the credentials come from, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// `[bedrock] region`; else the chain's region (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// `[bedrock] profile`: a named profile of the shared config files.
    pub profile: Option<String>,
    /// `[bedrock] api_key_env`: the variable holding a Bedrock API key.
    pub api_key_env: String,
}

/// How one request is authorised upstream.
pub enum BedrockAuth {
    /// `Authorization: Bearer <Bedrock API key>`.
    ApiKey(HeaderValue),
    /// SigV4 with these credentials.
    SigV4(Credentials),
}

struct Chain {
    provider: aws_credential_types::provider::SharedCredentialsProvider,
    region: Option<String>,
}

/// The proxy's AWS identity: lazily loaded chain plus cached credentials.
pub struct AwsCredentials {
    settings: AwsSettings,
    chain: OnceCell<Chain>,
    cached: Mutex<Option<Credentials>>,
    /// One fetch at a time, shared by the background refresh and waiting requests.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    pub fn new(settings: AwsSettings) -> Arc<AwsCredentials> {
        Arc::new(AwsCredentials {
            settings,
            chain: OnceCell::new(),
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// How to authorise the next request, and the region it goes to (`None` only with an API
    /// key and no region configured anywhere: the caller then needs an endpoint override).
    pub async fn authorise(self: &Arc<Self>) -> Result<(BedrockAuth, Option<String>), AwsError> {
        let env_region = || {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|r| !r.is_empty()))
        };
        if let Some(key) = std::env::var(&self.settings.api_key_env)
            .ok()
            .filter(|key| !key.is_empty())
        {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                AwsError::NoCredentials(format!(
                    "{} is not a valid header value",
                    self.settings.api_key_env
                ))
            })?;
            value.set_sensitive(true);
            let region = self.settings.region.clone().or_else(env_region);
            return Ok((BedrockAuth::ApiKey(value), region));
        }
        let chain = self.chain().await;
        let region = self
            .settings
            .region
            .clone()
            .or_else(|| chain.region.clone())
            .ok_or(AwsError::NoRegion)?;
        let credentials = self.credentials().await?;
        Ok((BedrockAuth::SigV4(credentials), Some(region)))
    }

    async fn chain(&self) -> &Chain {
        self.chain
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(profile) = &self.settings.profile {
                    loader = loader.profile_name(profile);
                }
                if let Some(region) = &self.settings.region {
                    loader = loader.region(aws_config::Region::new(region.clone()));
                }
                let config = loader.load().await;
                let provider = match config.credentials_provider() {
                    Some(provider) => provider,
                    None => aws_credential_types::provider::SharedCredentialsProvider::new(
                        aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                            .build()
                            .await,
                    ),
                };
                Chain {
                    provider,
                    region: config.region().map(|r| r.to_string()),
                }
            })
            .await
    }

    /// Valid credentials: the cached ones (starting a refresh when they are near expiry), or
    /// fresh ones when none are valid.
    async fn credentials(self: &Arc<Self>) -> Result<Credentials, AwsError> {
        let now = SystemTime::now();
        if let Some(cached) = self.cached() {
            match remaining(&cached, now) {
                None => return Ok(cached),
                Some(left) if left > REFRESH_BEFORE => return Ok(cached),
                Some(left) if left > USABLE_FOR_AT_LEAST => {
                    self.refresh_in_background();
                    return Ok(cached);
                }
                Some(_) => {}
            }
        }
        self.fetch_if_stale().await
    }

    fn cached(&self) -> Option<Credentials> {
        self.cached.lock().ok().and_then(|cached| cached.clone())
    }

    fn refresh_in_background(self: &Arc<Self>) {
        // Someone is fetching already: they will store the result.
        if self.fetching.try_lock().is_err() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = this.fetch_if_stale().await {
                tracing::warn!(%error, "refreshing the AWS credentials failed; the current ones are used until they expire");
            }
        });
    }

    /// Fetch new credentials unless another fetch, finished while this one waited, already
    /// stored ones that are not due for refresh.
    async fn fetch_if_stale(&self) -> Result<Credentials, AwsError> {
        let _fetching = self.fetching.lock().await;
        if let Some(cached) = self.cached() {
            if remaining(&cached, SystemTime::now()).is_none_or(|left| left > REFRESH_BEFORE) {
                return Ok(cached);
            }
        }
        let chain = self.chain().await;
        let fresh = chain
            .provider
            .provide_credentials()
            .await
            .map_err(|error| {
                // The chain's own words (which provider, which step) are what an SRE needs;
                // they name files, endpoints and roles, never key material.
                tracing::warn!(error = %error_chain(&error), "the AWS credentials chain failed");
                AwsError::NoCredentials(credentials_error_kind(&error))
            })?;
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some(fresh.clone());
        }
        tracing::info!(
            expires_in_secs = fresh
                .expiry()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .map(|left| left.as_secs()),
            "AWS credentials loaded for Bedrock"
        );
        Ok(fresh)
    }
}

/// Time left before `credentials` expire (`None`: they do not).
fn remaining(credentials: &Credentials, now: SystemTime) -> Option<Duration> {
    credentials
        .expiry()
        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error and its sources, joined.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The chain's failure, by kind: its messages may quote profile contents.
fn credentials_error_kind(
    error: &aws_credential_types::provider::error::CredentialsError,
) -> String {
    use aws_credential_types::provider::error::CredentialsError as E;
    match error {
        E::CredentialsNotLoaded(_) => "no provider in the chain found credentials".into(),
        E::ProviderTimedOut(_) => "the credentials provider timed out".into(),
        E::InvalidConfiguration(_) => "the AWS configuration is invalid".into(),
        E::ProviderError(_) => "the credentials provider failed".into(),
        E::Unhandled(_) => "the credentials provider failed unexpectedly".into(),
        _ => "the credentials provider failed".into(),
    }
}

/// A request to sign: `headers` must include `host`, and every header given is signed.
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers SigV4 adds (`authorization`, `x-amz-date`, `x-amz-security-token`) to `request`
/// for `service` in `region`, signed at `at`.
pub fn sign(
    credentials: &Credentials,
    region: &str,
    service: &str,
    request: Signable<'_>,
    at: SystemTime,
) -> Result<Vec<(String, HeaderValue)>, AwsError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| AwsError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.path_and_query,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| AwsError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| AwsError::Signing(e.to_string()))?
        .into_parts();
    instructions
        .headers()
        .map(|(name, value)| {
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                AwsError::Signing("a signature header is not a header value".into())
            })?;
            if name != "x-amz-date" {
                value.set_sensitive(true);
            }
            Ok((name.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_adds_the_sigv4_headers_and_depends_on_the_body() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "secret-example",
            Some("tok".into()),
            None,
            "test",
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = [("host", "bedrock-runtime.us-east-1.amazonaws.com")];
        let path = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke";
        let signed = |body: &[u8]| {
            sign(
                &credentials,
                "us-east-1",
                "bedrock",
                Signable {
                    method: "POST",
                    path_and_query: path,
                    headers: &headers,
                    body,
                },
                at,
            )
            .expect("signs")
        };
        let one = signed(b"{}");
        let names: Vec<&str> = one.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"authorization"), "{names:?}");
        assert!(names.contains(&"x-amz-date"), "{names:?}");
        assert!(names.contains(&"x-amz-security-token"), "{names:?}");
        let authorization = |headers: &[(String, HeaderValue)]| {
            headers
                .iter()
                .find(|(n, _)| n == "authorization")
                .map(|(_, v)| v.to_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        let auth = authorization(&one);
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request"
            ),
            "{auth}"
        );
        assert_ne!(auth, authorization(&signed(b"{\"a\":1}")));
        assert_eq!(auth, authorization(&signed(b"{}")));
    }

    #[test]
    fn remaining_time_counts_down_to_zero() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let expiring = Credentials::new("a", "b", None, Some(now + Duration::from_secs(60)), "t");
        assert_eq!(remaining(&expiring, now), Some(Duration::from_secs(60)));
        assert_eq!(
            remaining(&expiring, now + Duration::from_secs(90)),
            Some(Duration::ZERO)
        );
        let forever = Credentials::new("a", "b", None, None, "t");
        assert_eq!(remaining(&forever, now), None);
    }
}
