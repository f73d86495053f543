//! JWT verification against a JWKS (from a URL, OIDC discovery or a file).
//!
//! Invariants:
//! - the algorithm is decided by configuration and the key, never by the token alone: the
//!   token's `alg` must be an allowed asymmetric algorithm, the key's type (and its declared
//!   `alg`, when present) must fit it, and symmetric (`oct`) keys in a JWKS are ignored. So
//!   `alg: none` and HS256 signed with a public key are refused;
//! - `iss`, `aud`, `exp` and `nbf` are always checked (with `leeway_secs`), and `sub` is required;
//! - keys are cached; an unknown `kid` triggers at most one refetch per `jwks_refresh_min_secs`
//!   (single flight), so a flood of bogus kids cannot hammer the identity provider. A failed
//!   refetch keeps the old keys.

use super::fetch::{Fetcher, Url};
use super::{
    groups_from_claims, AuthError, AuthFailure, AuthStartError, Caller, JwtConfig, KeySource,
};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// `name` as an accepted (asymmetric) algorithm.
pub fn asymmetric_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A usable verification key.
struct Key {
    key: DecodingKey,
    /// The algorithms this key may verify (from its type, narrowed by its declared `alg`).
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    by_kid: HashMap<String, std::sync::Arc<Key>>,
    /// Keys without a `kid`: used only for tokens without a `kid`.
    anonymous: Vec<std::sync::Arc<Key>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => vec![],
        },
        // Symmetric keys are never accepted (they would make HMAC forgeable by anyone who can
        // read a published JWKS).
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    match jwk.common.key_algorithm {
        Some(declared) => {
            let declared = format!("{declared:?}");
            by_type
                .into_iter()
                .filter(|alg| format!("{alg:?}") == declared)
                .collect()
        }
        None => by_type,
    }
}

impl KeyCache {
    fn from_set(set: &JwkSet) -> KeyCache {
        let mut cache = KeyCache::default();
        for jwk in &set.keys {
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                continue;
            }
            let algorithms = key_algorithms(jwk);
            if algorithms.is_empty() {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = std::sync::Arc::new(Key { key, algorithms });
            match &jwk.common.key_id {
                Some(kid) => {
                    cache.by_kid.insert(kid.clone(), key);
                }
                None => cache.anonymous.push(key),
            }
        }
        cache
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }
}

/// The unverified JOSE header fields that decide which key to use.
#[derive(Debug)]
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

fn token_header(token: &str) -> Result<TokenHeader, AuthError> {
    let malformed =
        AuthError::unauthenticated(AuthFailure::Malformed, "streammask: the token is malformed");
    let encoded = token.split('.').next().ok_or(malformed.clone())?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| malformed.clone())?;
    let header: serde_json::Value = serde_json::from_slice(&raw).map_err(|_| malformed.clone())?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(malformed)?
        .to_string();
    let kid = header
        .get("kid")
        .and_then(|k| k.as_str())
        .map(str::to_string);
    Ok(TokenHeader { alg, kid })
}

pub struct JwtVerifier {
    config: JwtConfig,
    cache: RwLock<KeyCache>,
    /// Single flight for refetches.
    refresh: tokio::sync::Mutex<()>,
    fetcher: Option<Fetcher>,
    /// The JWKS URL (configured, or found by discovery).
    jwks_url: RwLock<Option<Url>>,
}

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Result<JwtVerifier, AuthStartError> {
        let (cache, fetcher, jwks_url) = match &config.source {
            KeySource::File(path) => {
                let text = std::fs::read(path)
                    .map_err(|e| AuthStartError::JwksFile(format!("{}: {e}", path.display())))?;
                let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                    AuthStartError::JwksFile(format!("{}: not a JWKS: {e}", path.display()))
                })?;
                let cache = KeyCache::from_set(&set);
                if cache.len() == 0 {
                    return Err(AuthStartError::JwksFile(format!(
                        "{}: no usable signature keys (RSA, EC P-256/P-384 or Ed25519)",
                        path.display()
                    )));
                }
                (cache, None, None)
            }
            KeySource::Url(url) | KeySource::Discovery(url) => {
                if let Some(ca) = &config.ca_file {
                    crate::policy::trust::check_ca_file(ca).map_err(AuthStartError::CaFile)?;
                }
                let parsed =
                    Url::parse(url).map_err(|e| AuthStartError::JwksFile(format!("{url}: {e}")))?;
                let jwks_url = matches!(config.source, KeySource::Url(_)).then_some(parsed);
                (
                    KeyCache::default(),
                    Some(Fetcher::new(config.ca_file.as_deref())),
                    jwks_url,
                )
            }
        };
        Ok(JwtVerifier {
            config,
            cache: RwLock::new(cache),
            refresh: tokio::sync::Mutex::new(()),
            fetcher,
            jwks_url: RwLock::new(jwks_url),
        })
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let Ok(cache) = self.cache.read() else {
            return Lookup::Missing;
        };
        let stale = cache
            .fetched_at
            .is_some_and(|at| at.elapsed() > Duration::from_secs(self.config.max_age_secs));
        let found = match kid {
            Some(kid) => cache.by_kid.get(kid).cloned(),
            None => cache
                .anonymous
                .iter()
                .find(|k| k.algorithms.contains(&alg))
                .cloned()
                .or_else(|| {
                    // A token without a kid is accepted only when the choice is unambiguous.
                    let fitting: Vec<_> = cache
                        .by_kid
                        .values()
                        .filter(|k| k.algorithms.contains(&alg))
                        .collect();
                    (fitting.len() == 1).then(|| fitting[0].clone())
                }),
        };
        match found {
            Some(key) if stale => Lookup::Stale(key),
            Some(key) => Lookup::Found(key),
            None if cache.len() == 0 => Lookup::Empty,
            None => Lookup::Missing,
        }
    }

    /// Refetch the keys unless that happened less than `refresh_min_secs` ago.
    async fn refresh(&self) {
        let Some(fetcher) = &self.fetcher else {
            return;
        };
        let _flight = self.refresh.lock().await;
        let min = Duration::from_secs(self.config.refresh_min_secs);
        if let Ok(cache) = self.cache.read() {
            if cache.last_attempt.is_some_and(|at| at.elapsed() < min) {
                return;
            }
        }
        if let Ok(mut cache) = self.cache.write() {
            cache.last_attempt = Some(Instant::now());
        }
        match self.fetch_keys(fetcher).await {
            Ok(fresh) => {
                tracing::info!(keys = fresh.len(), "auth: JWKS loaded");
                if let Ok(mut cache) = self.cache.write() {
                    let last_attempt = cache.last_attempt;
                    *cache = fresh;
                    cache.fetched_at = Some(Instant::now());
                    cache.last_attempt = last_attempt;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "auth: fetching the JWKS failed; keeping the cached keys")
            }
        }
    }

    async fn fetch_keys(&self, fetcher: &Fetcher) -> Result<KeyCache, String> {
        let known = self.jwks_url.read().ok().and_then(|u| u.clone());
        let jwks_url = match known {
            Some(url) => url,
            None => {
                let KeySource::Discovery(discovery) = &self.config.source else {
                    return Err("no JWKS URL".into());
                };
                let url = Url::parse(discovery).map_err(|e| e.to_string())?;
                let doc = fetcher
                    .get(&url)
                    .await
                    .map_err(|e| format!("discovery: {e}"))?;
                let doc: serde_json::Value = serde_json::from_slice(&doc)
                    .map_err(|_| "discovery: not a JSON document".to_string())?;
                // OIDC Discovery §4.3: the document's issuer must be the configured one.
                let issuer = doc.get("issuer").and_then(|i| i.as_str()).unwrap_or("");
                if issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
                    return Err("discovery: the document names a different issuer".into());
                }
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(|u| u.as_str())
                    .ok_or("discovery: no jwks_uri")?;
                let url = Url::parse(jwks_uri).map_err(|e| format!("discovery: jwks_uri {e}"))?;
                if let Ok(mut slot) = self.jwks_url.write() {
                    *slot = Some(url.clone());
                }
                url
            }
        };
        let body = fetcher
            .get(&jwks_url)
            .await
            .map_err(|e| format!("JWKS: {e}"))?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|_| "JWKS: not a JSON Web Key Set".to_string())?;
        Ok(KeyCache::from_set(&set))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_audience(&self.config.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation
    }

    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let header = token_header(token)?;
        let alg = asymmetric_algorithm(&header.alg)
            .filter(|alg| self.config.algorithms.contains(alg))
            .ok_or(AuthError::unauthenticated(
                AuthFailure::AlgNotAllowed,
                "streammask: the token's signature algorithm is not accepted",
            ))?;
        let key = match self.lookup(header.kid.as_deref(), alg) {
            Lookup::Found(key) => key,
            Lookup::Stale(key) => {
                self.refresh().await;
                match self.lookup(header.kid.as_deref(), alg) {
                    Lookup::Found(fresh) | Lookup::Stale(fresh) => fresh,
                    _ => key,
                }
            }
            Lookup::Missing | Lookup::Empty => {
                self.refresh().await;
                match self.lookup(header.kid.as_deref(), alg) {
                    Lookup::Found(key) | Lookup::Stale(key) => key,
                    Lookup::Empty => {
                        return Err(AuthError {
                            reason: AuthFailure::KeysUnavailable,
                            status: 503,
                            message: "streammask: the identity provider's keys are unavailable",
                        })
                    }
                    Lookup::Missing => {
                        return Err(AuthError::unauthenticated(
                            AuthFailure::UnknownKid,
                            "streammask: the token was signed by an unknown key",
                        ))
                    }
                }
            }
        };
        if !key.algorithms.contains(&alg) {
            return Err(AuthError::unauthenticated(
                AuthFailure::AlgNotAllowed,
                "streammask: the token's algorithm does not match its key",
            ));
        }
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &self.validation(alg))
                .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::unauthenticated(
                AuthFailure::MissingClaim,
                "streammask: the token has no subject",
            ))?
            .to_string();
        Ok(Caller {
            subject,
            groups: groups_from_claims(&claims, &self.config.groups_claim),
        })
    }
}

enum Lookup {
    Found(std::sync::Arc<Key>),
    /// Found, but the cache is older than `jwks_max_age_secs`.
    Stale(std::sync::Arc<Key>),
    Missing,
    Empty,
}

fn map_error(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => {
            AuthError::unauthenticated(AuthFailure::Expired, "streammask: the token has expired")
        }
        K::ImmatureSignature => AuthError::unauthenticated(
            AuthFailure::NotYetValid,
            "streammask: the token is not yet valid",
        ),
        K::InvalidAudience => AuthError::unauthenticated(
            AuthFailure::WrongAudience,
            "streammask: the token is not meant for this proxy (audience)",
        ),
        K::InvalidIssuer => AuthError::unauthenticated(
            AuthFailure::WrongIssuer,
            "streammask: the token comes from an untrusted issuer",
        ),
        K::InvalidSignature => AuthError::unauthenticated(
            AuthFailure::BadSignature,
            "streammask: the token's signature is invalid",
        ),
        K::MissingRequiredClaim(_) => AuthError::unauthenticated(
            AuthFailure::MissingClaim,
            "streammask: the token lacks a required claim (exp, iss, aud, sub)",
        ),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::unauthenticated(
            AuthFailure::AlgNotAllowed,
            "streammask: the token's signature algorithm is not accepted",
        ),
        _ => AuthError::unauthenticated(
            AuthFailure::InvalidToken,
            "streammask: the token is invalid",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_never_loaded() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}))
        .unwrap();
        let cache = KeyCache::from_set(&set);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.by_kid["ed"].algorithms, vec![Algorithm::EdDSA]);
    }

    #[test]
    fn declared_alg_narrows_the_key() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "alg": "PS256", "n": "AQAB", "e": "AQAB"}
        ]}))
        .unwrap();
        let cache = KeyCache::from_set(&set);
        assert_eq!(cache.by_kid["r"].algorithms, vec![Algorithm::PS256]);
    }

    #[test]
    fn header_alg_none_and_hmac_are_refused_before_key_lookup() {
        assert_eq!(asymmetric_algorithm("none"), None);
        assert_eq!(asymmetric_algorithm("HS256"), None);
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let parsed = token_header(&format!("{header}.e30.")).unwrap();
        assert_eq!(parsed.alg, "none");
        assert_eq!(token_header("x.y.z").unwrap_err().reason, "malformed");
    }
}
