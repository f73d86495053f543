//! What the cloud mocks (Bedrock + STS, Vertex + the Google OAuth token endpoint) share: their
//! configuration from the command line, the credentials and tokens the mock has issued, the
//! counters behind `GET /_mock/clouds`, and the note on how a request authenticated, which
//! `server` adds to the request record.
//!
//! Issued STS keys and OAuth tokens survive `POST /_mock/reset` (only the counters are reset):
//! a proxy caches them across tests, and a test's reset must not invalidate what the proxy
//! holds. Each stays valid until its own expiry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::server::lock;
use crate::sigv4::KeyLookup;

pub(crate) struct CloudConfig {
    /// Static AWS keys: access key id → secret.
    pub(crate) aws_credentials: HashMap<String, String>,
    pub(crate) bedrock_api_keys: Vec<String>,
    /// The only web-identity token STS accepts; `None` accepts any non-empty token.
    pub(crate) sts_web_identity_token: Option<String>,
    pub(crate) sts_ttl_secs: u64,
    /// When set, the token endpoint verifies the assertion's RS256 signature with it.
    pub(crate) oauth_public_key: Option<jsonwebtoken::DecodingKey>,
    pub(crate) oauth_token_ttl_secs: u64,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            aws_credentials: HashMap::new(),
            bedrock_api_keys: Vec::new(),
            sts_web_identity_token: None,
            sts_ttl_secs: 3600,
            oauth_public_key: None,
            oauth_token_ttl_secs: 3600,
        }
    }
}

pub(crate) struct IssuedKey {
    pub(crate) secret: String,
    pub(crate) session_token: String,
    pub(crate) expires_at: u64,
}

#[derive(Default)]
pub(crate) struct Cloud {
    pub(crate) config: CloudConfig,
    /// STS-issued keys by access key id.
    pub(crate) sts_keys: Mutex<HashMap<String, IssuedKey>>,
    /// OAuth access tokens → expiry (Unix seconds).
    pub(crate) oauth_tokens: Mutex<HashMap<String, u64>>,
    pub(crate) sts_calls: AtomicU64,
    pub(crate) oauth_tokens_issued: AtomicU64,
    pub(crate) bedrock_auth_failures: AtomicU64,
    pub(crate) vertex_auth_failures: AtomicU64,
}

impl Cloud {
    pub(crate) fn new(config: CloudConfig) -> Self {
        Cloud {
            config,
            ..Cloud::default()
        }
    }

    /// The SigV4 verifier's view of an access key: static keys first, then STS-issued ones.
    pub(crate) fn aws_key(&self, akid: &str, now: u64) -> KeyLookup {
        if let Some(secret) = self.config.aws_credentials.get(akid) {
            return KeyLookup::Found {
                secret: secret.clone(),
                session_token: None,
            };
        }
        match lock(&self.sts_keys).get(akid) {
            None => KeyLookup::Unknown,
            Some(k) if k.expires_at <= now => KeyLookup::Expired,
            Some(k) => KeyLookup::Found {
                secret: k.secret.clone(),
                session_token: Some(k.session_token.clone()),
            },
        }
    }

    /// Whether `token` was issued by the token endpoint and has not expired at `now`.
    pub(crate) fn oauth_token_valid(&self, token: &str, now: u64) -> bool {
        lock(&self.oauth_tokens)
            .get(token)
            .is_some_and(|&exp| now < exp)
    }

    pub(crate) fn counters(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "sts_calls": n(&self.sts_calls),
            "oauth_tokens_issued": n(&self.oauth_tokens_issued),
            "bedrock_auth_failures": n(&self.bedrock_auth_failures),
            "vertex_auth_failures": n(&self.vertex_auth_failures),
        })
    }

    pub(crate) fn reset_counters(&self) {
        for c in [
            &self.sts_calls,
            &self.oauth_tokens_issued,
            &self.bedrock_auth_failures,
            &self.vertex_auth_failures,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// How an API request authenticated, added to its record (`/_mock/received`). Only the cloud
/// endpoints fill it in; absent fields are left out of the record.
#[derive(Serialize, Default, Debug)]
pub(crate) struct AuthNote {
    /// `sigv4`, `bedrock_api_key`, `google_oauth`, or `none` (no credentials presented).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_kind: Option<&'static str>,
    /// The region of the SigV4 credential scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aws_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aws_access_key_id: Option<String>,
    /// Why the request was refused (`InvalidSignatureException: …`); absent when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_error: Option<String>,
}
