//! The organisation's Google credentials for Vertex AI, held by the proxy: each request carries
//! an OAuth access token (scope `cloud-platform`) from Application Default Credentials, through
//! the `gcp_auth` crate — a service-account JSON file (`[vertex] credentials_file`, else
//! `GOOGLE_APPLICATION_CREDENTIALS`; the file's own `token_uri` is honoured), gcloud's
//! application-default credentials, or the metadata server (GKE workload identity).
//!
//! Invariants:
//! - the credentials are found on the first Vertex request, not at start-up;
//! - tokens are cached by `gcp_auth` and fetched again shortly before they expire (its margin
//!   is 20 s), so a request never carries an expired token;
//! - no error or log line carries a token or key material: errors name the failure only.

use gcp_auth::TokenProvider;
use http::HeaderValue;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// The OAuth scope Vertex AI requires.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GoogleError {
    #[error("no Google credentials are available to the proxy ({0})")]
    NoCredentials(String),
    #[error("the Google token endpoint did not issue an access token ({0})")]
    Token(String),
}

/// The proxy's Google identity: credentials found on first use, tokens cached by `gcp_auth`.
pub struct GoogleTokens {
    credentials_file: Option<PathBuf>,
    provider: OnceCell<Arc<dyn TokenProvider>>,
}

impl std::fmt::Debug for GoogleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleTokens")
            .field("credentials_file", &self.credentials_file)
            .finish_non_exhaustive()
    }
}

impl GoogleTokens {
    pub fn new(credentials_file: Option<PathBuf>) -> Arc<GoogleTokens> {
        Arc::new(GoogleTokens {
            credentials_file,
            provider: OnceCell::new(),
        })
    }

    /// `Bearer <access token>` for the next request.
    pub async fn authorization(&self) -> Result<HeaderValue, GoogleError> {
        let provider = self
            .provider
            .get_or_try_init(|| async {
                let provider: Arc<dyn TokenProvider> = match &self.credentials_file {
                    Some(path) => Arc::new(
                        gcp_auth::CustomServiceAccount::from_file(path)
                            .map_err(|e| GoogleError::NoCredentials(describe(&e)))?,
                    ),
                    None => gcp_auth::provider()
                        .await
                        .map_err(|e| GoogleError::NoCredentials(describe(&e)))?,
                };
                Ok::<_, GoogleError>(provider)
            })
            .await?;
        let token = provider.token(&[CLOUD_PLATFORM]).await.map_err(|e| {
            tracing::warn!(error = %describe(&e), "no Google access token for Vertex");
            GoogleError::Token(describe(&e))
        })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
            .map_err(|_| GoogleError::Token("the token is not a header value".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// A `gcp_auth` error without what it wraps (a server's reply may echo the assertion).
fn describe(error: &gcp_auth::Error) -> String {
    use gcp_auth::Error as E;
    match error {
        E::Str(what) | E::Http(what, _) | E::Io(what, _) | E::Json(what, _) | E::Other(what, _) => {
            (*what).to_string()
        }
        E::NoAuthMethod(..) => "no Application Default Credentials were found".to_string(),
    }
}
