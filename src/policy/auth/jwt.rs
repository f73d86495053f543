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
//!   refetch keeps the old keys;
//! - a verified token is remembered in the [`TokenCache`] (by its SHA-256, never the token) so
//!   its signature is checked once, not on every request. An entry is served only before the
//!   token's `exp` (leeway not included) and under the key-set generation it was verified under:
//!   a refetch that returns different keys is a rotation and starts a new generation. While the
//!   keys are older than `jwks_max_age_secs` the cache is bypassed, so tokens go through the key
//!   lookup, which refetches the keys as it would without the cache (a cache hit must not hide a
//!   revoked key). Refusals are never cached.

use super::fetch::{Fetcher, Url};
use super::token_cache::{self, TokenCache, TokenDigest, Validity};
use super::{
    groups_from_claims, AuthError, AuthFailure, AuthStartError, Caller, JwtConfig, KeySource,
};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
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
    /// A digest of the usable keys in JWKS order, so that a refetch returning the same keys is
    /// not taken for a rotation. `None` when a key could not be encoded: always a rotation.
    fingerprint: Option<[u8; 32]>,
    /// Counts rotations; a cached token is served only under the generation that verified it.
    generation: u64,
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
        let mut fingerprint = Some(Sha256::new());
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
            fingerprint = match (fingerprint, serde_json::to_vec(jwk)) {
                (Some(mut hasher), Ok(encoded)) => {
                    // Length-prefixed, so that two different sets never hash the same bytes.
                    hasher.update((encoded.len() as u64).to_be_bytes());
                    hasher.update(&encoded);
                    Some(hasher)
                }
                _ => None,
            };
            let key = std::sync::Arc::new(Key { key, algorithms });
            match &jwk.common.key_id {
                Some(kid) => {
                    cache.by_kid.insert(kid.clone(), key);
                }
                None => cache.anonymous.push(key),
            }
        }
        cache.fingerprint = fingerprint.map(|hasher| hasher.finalize().into());
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
    /// Tokens verified before, so that a signature is checked once per token.
    tokens: TokenCache,
}

/// What a successful signature check concluded.
struct Verified {
    caller: Caller,
    /// `None`: the token's `exp` or `nbf` is not whole seconds, and it is not cached.
    validity: Option<Validity>,
    /// The generation of the key set whose key verified the token.
    generation: u64,
}

impl JwtVerifier {
    /// A verifier whose token cache holds up to [`token_cache::DEFAULT_ENTRIES`] tokens (see
    /// [`JwtVerifier::with_token_cache`]).
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
            tokens: TokenCache::new(token_cache::DEFAULT_ENTRIES),
        })
    }

    /// The same verifier with a token cache of at most `entries` tokens; 0 turns it off.
    pub fn with_token_cache(mut self, entries: usize) -> JwtVerifier {
        self.tokens = TokenCache::new(entries);
        self
    }

    fn is_stale(&self, cache: &KeyCache) -> bool {
        cache
            .fetched_at
            .is_some_and(|at| at.elapsed() > Duration::from_secs(self.config.max_age_secs))
    }

    /// The generation of the key set while it may vouch for cached tokens: not when it is older
    /// than `jwks_max_age_secs`, since a key revoked since the last fetch would then go unnoticed
    /// for as long as its tokens kept hitting the cache.
    fn fresh_generation(&self) -> Option<u64> {
        let cache = self.cache.read().ok()?;
        (!self.is_stale(&cache)).then_some(cache.generation)
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let Ok(cache) = self.cache.read() else {
            return Lookup::Missing;
        };
        let stale = self.is_stale(&cache);
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
            Some(key) if stale => Lookup::Stale(key, cache.generation),
            Some(key) => Lookup::Found(key, cache.generation),
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
                let keys = fresh.len();
                let rotated = self.install(fresh);
                tracing::info!(keys, rotated, "auth: JWKS loaded");
            }
            Err(error) => {
                tracing::warn!(%error, "auth: fetching the JWKS failed; keeping the cached keys")
            }
        }
    }

    /// Replace the keys with a freshly fetched set. A set with different keys is a rotation: it
    /// starts a new generation, so no token verified under the old keys is served from the token
    /// cache any more. Returns whether it was a rotation.
    fn install(&self, mut fresh: KeyCache) -> bool {
        let rotated = {
            let Ok(mut cache) = self.cache.write() else {
                return false;
            };
            let rotated = fresh.fingerprint.is_none() || fresh.fingerprint != cache.fingerprint;
            fresh.generation = if rotated {
                cache.generation.wrapping_add(1)
            } else {
                cache.generation
            };
            fresh.fetched_at = Some(Instant::now());
            fresh.last_attempt = cache.last_attempt;
            *cache = fresh;
            rotated
        };
        // The generation already makes the old entries unservable; this frees their memory.
        if rotated {
            self.tokens.clear();
        }
        rotated
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

    /// The caller `token` stands for. A token verified before is served from the token cache
    /// while its entry may be (see the module's invariants); otherwise its signature and claims
    /// are checked, and only a success is remembered.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if !self.tokens.enabled() {
            return self.verify_signature(token).await.map(|v| v.caller);
        }
        let digest = TokenDigest::of(token);
        if let Some(generation) = self.fresh_generation() {
            if let Some(caller) = self
                .tokens
                .get(&digest, token_cache::unix_now(), generation)
            {
                return Ok(caller);
            }
        }
        let verified = self.verify_signature(token).await?;
        if let Some(validity) = verified.validity {
            // The clock is read again: verification may have waited for a refetch.
            self.tokens.insert(
                digest,
                &verified.caller,
                validity,
                verified.generation,
                token_cache::unix_now(),
            );
        }
        Ok(verified.caller)
    }

    async fn verify_signature(&self, token: &str) -> Result<Verified, AuthError> {
        let header = token_header(token)?;
        let alg = asymmetric_algorithm(&header.alg)
            .filter(|alg| self.config.algorithms.contains(alg))
            .ok_or(AuthError::unauthenticated(
                AuthFailure::AlgNotAllowed,
                "streammask: the token's signature algorithm is not accepted",
            ))?;
        let (key, generation) = match self.lookup(header.kid.as_deref(), alg) {
            Lookup::Found(key, generation) => (key, generation),
            Lookup::Stale(stale_key, stale_generation) => {
                self.refresh().await;
                match self.lookup(header.kid.as_deref(), alg) {
                    Lookup::Found(key, generation) | Lookup::Stale(key, generation) => {
                        (key, generation)
                    }
                    // Keeps the generation of the set the key came from: after a rotation, a
                    // token verified with an old key is never served from the cache.
                    _ => (stale_key, stale_generation),
                }
            }
            Lookup::Missing | Lookup::Empty => {
                self.refresh().await;
                match self.lookup(header.kid.as_deref(), alg) {
                    Lookup::Found(key, generation) | Lookup::Stale(key, generation) => {
                        (key, generation)
                    }
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
        Ok(Verified {
            caller: Caller {
                subject,
                groups: groups_from_claims(&claims, &self.config.groups_claim),
            },
            validity: Validity::from_claims(&claims),
            generation,
        })
    }
}

/// A key, with the generation of the set it belongs to.
enum Lookup {
    Found(std::sync::Arc<Key>, u64),
    /// Found, but the cache is older than `jwks_max_age_secs`.
    Stale(std::sync::Arc<Key>, u64),
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
    use crate::policy::auth::{AuthConfig, Authenticator};
    use serde_json::json;

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

    // --- the verified-token cache ---

    /// RFC 8037 A.1's Ed25519 key: the PKCS#8 document of its private key, and its public `x`.
    const ED25519_PKCS8: &str =
        "302e020100300506032b6570042204209d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    /// RFC 8032 test 2's public key: a different key.
    const OTHER_X: &str = "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw";
    const ISSUER: &str = "https://idp.test";

    fn jwks_json(kid: &str, x: &str) -> serde_json::Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}]})
    }

    fn jwks(kid: &str, x: &str) -> JwkSet {
        serde_json::from_value(jwks_json(kid, x)).unwrap()
    }

    /// A `jwks_file` config whose file holds key `k1` while `use_config` runs.
    fn with_config<T>(name: &str, use_config: impl FnOnce(JwtConfig) -> T) -> T {
        let path = std::env::temp_dir().join(format!(
            "streammask-jwt-cache-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&path, jwks_json("k1", ED25519_X).to_string()).unwrap();
        let config = JwtConfig {
            issuer: ISSUER.into(),
            audience: vec!["streammask".into()],
            source: KeySource::File(path.clone()),
            groups_claim: vec!["groups".into()],
            leeway_secs: 30,
            algorithms: vec![Algorithm::EdDSA],
            refresh_min_secs: 10,
            max_age_secs: 600,
            ca_file: None,
        };
        let out = use_config(config);
        let _ = std::fs::remove_file(&path);
        out
    }

    fn verifier(name: &str, entries: usize) -> JwtVerifier {
        with_config(name, |config| {
            JwtVerifier::new(config).unwrap().with_token_cache(entries)
        })
    }

    /// Claims that pass verification, expiring `exp_in` seconds from now.
    fn claims(exp_in: i64) -> serde_json::Value {
        let now = token_cache::unix_now() as i64;
        json!({
            "iss": ISSUER,
            "aud": "streammask",
            "sub": "dev@example.test",
            "groups": ["engineering"],
            "exp": now + exp_in,
        })
    }

    fn sign(kid: &str, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let key = jsonwebtoken::EncodingKey::from_ed_der(&hex::decode(ED25519_PKCS8).unwrap());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// Leaves the verifier without keys (and without a way to fetch any), so that only the
    /// token cache can still accept a token.
    fn drop_keys(verifier: &JwtVerifier) {
        let mut cache = verifier.cache.write().unwrap();
        cache.by_kid.clear();
        cache.anonymous.clear();
    }

    #[tokio::test]
    async fn a_cached_token_is_accepted_without_checking_its_signature_again() {
        let v = verifier("hit", 16);
        let token = sign("k1", &claims(300));
        let caller = v.verify(&token).await.unwrap();
        assert_eq!(caller.subject, "dev@example.test");
        assert_eq!(caller.groups, ["engineering"]);
        assert_eq!(v.tokens.len(), 1);
        drop_keys(&v);
        assert_eq!(v.verify(&token).await.unwrap(), caller);
        // Any token that is not cached now fails: the hit above checked no signature.
        let other = sign("k1", &claims(301));
        assert_eq!(
            v.verify(&other).await.unwrap_err().reason,
            "keys_unavailable"
        );
    }

    #[tokio::test]
    async fn a_token_past_its_exp_is_not_cached_even_within_the_leeway() {
        let v = verifier("expired", 16);
        let token = sign("k1", &claims(-5));
        assert!(v.verify(&token).await.is_ok(), "inside leeway_secs");
        assert!(v.tokens.is_empty());
        drop_keys(&v);
        assert_eq!(
            v.verify(&token).await.unwrap_err().reason,
            "keys_unavailable"
        );
    }

    #[tokio::test]
    async fn a_token_before_its_nbf_is_not_cached() {
        let v = verifier("nbf", 16);
        let mut early = claims(300);
        early["nbf"] = json!(token_cache::unix_now() + 10);
        let token = sign("k1", &early);
        assert!(v.verify(&token).await.is_ok(), "inside leeway_secs");
        assert!(v.tokens.is_empty());
    }

    #[tokio::test]
    async fn refusals_are_never_cached() {
        let v = verifier("refusals", 16);
        let good = sign("k1", &claims(300));
        let other = sign("k1", &claims(600));
        let (signed, _) = good.rsplit_once('.').unwrap();
        let (_, other_signature) = other.rsplit_once('.').unwrap();
        let mut wrong_audience = claims(300);
        wrong_audience["aud"] = json!("someone-else");
        let cases = [
            (format!("{signed}.{other_signature}"), "bad_signature"),
            (sign("k1", &wrong_audience), "wrong_audience"),
            (sign("k1", &claims(-120)), "expired"),
            (sign("k2", &claims(300)), "unknown_kid"),
        ];
        for (token, reason) in &cases {
            for _ in 0..2 {
                assert_eq!(v.verify(token).await.unwrap_err().reason, *reason);
            }
        }
        assert!(v.tokens.is_empty());
        assert!(v.verify(&good).await.is_ok());
        assert_eq!(v.tokens.len(), 1);
    }

    #[tokio::test]
    async fn a_key_rotation_invalidates_cached_tokens() {
        let v = verifier("rotation", 16);
        let token = sign("k1", &claims(300));
        assert!(v.verify(&token).await.is_ok());
        let generation = v.cache.read().unwrap().generation;
        // The same kid now names another key: the token must be checked against it, and fail.
        assert!(v.install(KeyCache::from_set(&jwks("k1", OTHER_X))));
        assert_eq!(v.cache.read().unwrap().generation, generation + 1);
        assert!(v.tokens.is_empty());
        assert_eq!(v.verify(&token).await.unwrap_err().reason, "bad_signature");
    }

    #[tokio::test]
    async fn refetching_the_same_keys_keeps_cached_tokens() {
        let v = verifier("same-keys", 16);
        let token = sign("k1", &claims(300));
        assert!(v.verify(&token).await.is_ok());
        let generation = v.cache.read().unwrap().generation;
        assert!(!v.install(KeyCache::from_set(&jwks("k1", ED25519_X))));
        assert_eq!(v.cache.read().unwrap().generation, generation);
        drop_keys(&v);
        assert!(v.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn stale_keys_do_not_vouch_for_cached_tokens() {
        let mut v = verifier("stale", 16);
        let token = sign("k1", &claims(300));
        assert!(v.verify(&token).await.is_ok());
        v.config.max_age_secs = 1;
        {
            let mut cache = v.cache.write().unwrap();
            cache.fetched_at = Instant::now().checked_sub(Duration::from_secs(5));
            cache.by_kid.clear();
        }
        assert_eq!(
            v.verify(&token).await.unwrap_err().reason,
            "keys_unavailable"
        );
    }

    #[tokio::test]
    async fn zero_cache_entries_checks_every_token_every_time() {
        let v = verifier("off", 0);
        let token = sign("k1", &claims(300));
        assert!(v.verify(&token).await.is_ok());
        assert!(v.tokens.is_empty());
        drop_keys(&v);
        assert_eq!(
            v.verify(&token).await.unwrap_err().reason,
            "keys_unavailable"
        );
    }

    #[tokio::test]
    async fn required_groups_are_checked_for_cached_tokens_too() {
        let auth = with_config("groups", |jwt| {
            Authenticator::new(&AuthConfig {
                jwt: Some(jwt),
                static_keys: Vec::new(),
                static_keys_enabled: false,
                required_groups: vec!["admins".into()],
                jwt_cache_entries: 16,
            })
            .unwrap()
        });
        let bearer = |token: &str| {
            let mut headers = http::HeaderMap::new();
            let value: http::HeaderValue = format!("Bearer {token}").parse().unwrap();
            headers.insert(http::header::AUTHORIZATION, value);
            headers
        };
        let outsider = sign("k1", &claims(300));
        let mut admin_claims = claims(300);
        admin_claims["groups"] = json!(["admins"]);
        let admin = sign("k1", &admin_claims);
        for _ in 0..3 {
            let refused = auth.authenticate(&bearer(&outsider)).await.unwrap_err();
            assert_eq!(
                (refused.reason, refused.status),
                (AuthFailure::GroupNotAllowed, 403)
            );
            let caller = auth.authenticate(&bearer(&admin)).await.unwrap();
            assert_eq!(caller.groups, ["admins"]);
        }
        assert_eq!(auth.jwt.as_ref().unwrap().tokens.len(), 2);
    }

    #[test]
    fn the_key_fingerprint_follows_the_usable_keys() {
        let one = KeyCache::from_set(&jwks("k1", ED25519_X)).fingerprint;
        assert!(one.is_some());
        assert_eq!(one, KeyCache::from_set(&jwks("k1", ED25519_X)).fingerprint);
        assert_ne!(one, KeyCache::from_set(&jwks("k1", OTHER_X)).fingerprint);
        assert_ne!(one, KeyCache::from_set(&jwks("k2", ED25519_X)).fingerprint);
        // A key that is never loaded is no change.
        let with_hmac: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": ED25519_X},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"}
        ]}))
        .unwrap();
        assert_eq!(one, KeyCache::from_set(&with_hmac).fingerprint);
    }
}
