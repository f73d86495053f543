//! Who is calling: the `[auth]` configuration and the [`Authenticator`] that turns a request's
//! credential into an [`Identity`] (subject and groups) or a refusal.
//!
//! Modes (combinable): `none` (everyone is `anonymous`), `jwt` (OIDC/JWT bearer tokens checked
//! against a JWKS), `static_keys` (service-account keys stored only as SHA-256 hashes).
//!
//! Invariants:
//! - the credential is taken from `Authorization: Bearer …` or, failing that, `x-api-key`
//!   (Claude Code's `apiKeyHelper` and `ANTHROPIC_AUTH_TOKEN` use these), and it never leaves
//!   this module: no log line, error message or [`AuthError`] carries it or any part of it;
//! - a refusal has a bounded reason ([`AuthFailure`]) for audit and metrics, and a
//!   status: 401 for missing or invalid credentials, 403 for valid but not allowed;
//! - only asymmetric signatures are accepted; `alg: none` and HMAC are refused before any key
//!   is looked at, so a public key can never be used as an HMAC secret;
//! - nothing here contacts the upstream API: authentication runs before any upstream connection;
//! - a JWT verified once may be accepted from the [`token_cache`] (keyed by its SHA-256) until
//!   its `exp` or a key rotation, but `required_groups` is checked on every request.

pub mod fetch;
pub mod jwt;
pub mod static_keys;
pub mod token_cache;

use crate::config_error::{invalid, ConfigError};
use crate::policy::identity::Identity;
use serde::Deserialize;
use std::path::PathBuf;

pub use jwt::JwtVerifier;
pub use static_keys::StaticKeys;

/// Why a caller was refused: a bounded label for audit, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    UnknownKid,
    AlgNotAllowed,
    MissingClaim,
    InvalidToken,
    UnknownKey,
    KeysUnavailable,
    GroupNotAllowed,
    /// The caller's profile does not allow the model the request names.
    ModelNotAllowed,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 15] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::BadSignature,
        AuthFailure::WrongIssuer,
        AuthFailure::WrongAudience,
        AuthFailure::UnknownKid,
        AuthFailure::AlgNotAllowed,
        AuthFailure::MissingClaim,
        AuthFailure::InvalidToken,
        AuthFailure::UnknownKey,
        AuthFailure::KeysUnavailable,
        AuthFailure::GroupNotAllowed,
        AuthFailure::ModelNotAllowed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::UnknownKid => "unknown_kid",
            AuthFailure::AlgNotAllowed => "alg_not_allowed",
            AuthFailure::MissingClaim => "missing_claim",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::KeysUnavailable => "keys_unavailable",
            AuthFailure::GroupNotAllowed => "group_not_allowed",
            AuthFailure::ModelNotAllowed => "model_not_allowed",
        }
    }
}

impl PartialEq<&str> for AuthFailure {
    fn eq(&self, label: &&str) -> bool {
        self.label() == *label
    }
}

/// Why a request was refused. The message is static text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub reason: AuthFailure,
    /// 401, 403 or 503.
    pub status: u16,
    pub message: &'static str,
}

impl AuthError {
    pub const fn unauthenticated(reason: AuthFailure, message: &'static str) -> AuthError {
        AuthError {
            reason,
            status: 401,
            message,
        }
    }

    pub const fn forbidden(reason: AuthFailure, message: &'static str) -> AuthError {
        AuthError {
            reason,
            status: 403,
            message,
        }
    }
}

/// One `mode` or several (`mode = ["jwt", "static_keys"]`).
#[derive(Debug, Clone)]
pub enum ModeList {
    One(AuthMode),
    Many(Vec<AuthMode>),
}

impl<'de> Deserialize<'de> for ModeList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn mode<E: serde::de::Error>(value: &toml::Value) -> Result<AuthMode, E> {
            match value.as_str() {
                Some("none") => Ok(AuthMode::None),
                Some("jwt") => Ok(AuthMode::Jwt),
                Some("static_keys") => Ok(AuthMode::StaticKeys),
                // The value is not repeated: config errors quote nothing from the file.
                _ => Err(E::custom(
                    "auth.mode: expected one of `none`, `jwt`, `static_keys`",
                )),
            }
        }
        match toml::Value::deserialize(d)? {
            toml::Value::Array(items) => items
                .iter()
                .map(mode)
                .collect::<Result<_, _>>()
                .map(ModeList::Many),
            value => mode(&value).map(ModeList::One),
        }
    }
}

impl Default for ModeList {
    fn default() -> Self {
        ModeList::One(AuthMode::None)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    None,
    Jwt,
    StaticKeys,
}

/// `[[auth.static_keys]]`: one service-account key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKeySection {
    /// The identity the key stands for (audit subject).
    pub subject: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`). The key itself is never stored.
    pub sha256: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[auth]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub mode: ModeList,
    pub issuer: Option<String>,
    /// The audience tokens must carry (`aud`); one value or a list (any of them).
    pub audience: Option<AudienceList>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    /// OIDC discovery document; defaults to `<issuer>/.well-known/openid-configuration` when
    /// neither `jwks_url` nor `jwks_file` is given.
    pub discovery_url: Option<String>,
    /// Claim holding the caller's groups; dots walk nested objects (`realm_access.roles`).
    pub groups_claim: String,
    pub leeway_secs: u64,
    /// Allowed signature algorithms (asymmetric only).
    pub algorithms: Vec<String>,
    /// Keys are refetched at most this often when a token names an unknown `kid`.
    pub jwks_refresh_min_secs: u64,
    /// Keys are refetched in the background of a request once they are this old.
    pub jwks_max_age_secs: u64,
    /// Verified tokens remembered (by SHA-256) until their `exp` or a key rotation, so that a
    /// token's signature is checked once, not on every request; 0 turns the cache off.
    pub jwt_cache_entries: usize,
    /// CA bundle (PEM) for fetching the JWKS / discovery document over HTTPS.
    pub ca_file: Option<PathBuf>,
    /// When non-empty, a caller must be in at least one of these groups (else 403).
    pub required_groups: Vec<String>,
    pub static_keys: Vec<StaticKeySection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AudienceList {
    One(String),
    Many(Vec<String>),
}

/// Upper bound of `jwt_cache_entries`: each entry holds a caller's subject and groups, so this
/// bounds the memory a misplaced digit could claim.
pub const MAX_JWT_CACHE_ENTRIES: usize = 1_000_000;

pub const DEFAULT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            mode: ModeList::default(),
            issuer: None,
            audience: None,
            jwks_url: None,
            jwks_file: None,
            discovery_url: None,
            groups_claim: "groups".into(),
            leeway_secs: 30,
            algorithms: DEFAULT_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            jwks_refresh_min_secs: 10,
            jwks_max_age_secs: 600,
            jwt_cache_entries: token_cache::DEFAULT_ENTRIES,
            ca_file: None,
            required_groups: Vec::new(),
            static_keys: Vec::new(),
        }
    }
}

/// Where the JWT verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Url(String),
    Discovery(String),
    File(PathBuf),
}

/// Validated `[auth] … jwt` settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: Vec<String>,
    pub source: KeySource,
    pub groups_claim: Vec<String>,
    pub leeway_secs: u64,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub refresh_min_secs: u64,
    pub max_age_secs: u64,
    pub ca_file: Option<PathBuf>,
}

/// Validated `[auth]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub jwt: Option<JwtConfig>,
    /// (sha256, subject, groups)
    pub static_keys: Vec<([u8; 32], String, Vec<String>)>,
    pub static_keys_enabled: bool,
    pub required_groups: Vec<String>,
    /// Capacity of the verified-token cache (0: off). Kept out of [`JwtConfig`], which callers
    /// outside this crate (the fuzz harness) build field by field.
    pub jwt_cache_entries: usize,
}

impl AuthConfig {
    /// True when callers must present a credential.
    pub fn enabled(&self) -> bool {
        self.jwt.is_some() || self.static_keys_enabled
    }

    /// Every group the auth configuration names.
    pub fn groups(&self) -> impl Iterator<Item = &String> {
        self.required_groups
            .iter()
            .chain(self.static_keys.iter().flat_map(|(_, _, groups)| groups))
    }
}

fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    fetch::Url::parse(url)
        .map(|_| ())
        .map_err(|e| invalid(key, format!("not a usable URL: {e}")))
}

impl AuthSection {
    pub fn validate(self) -> Result<AuthConfig, ConfigError> {
        let modes = match self.mode.clone() {
            ModeList::One(mode) => vec![mode],
            ModeList::Many(modes) => modes,
        };
        if modes.is_empty() {
            return Err(invalid("auth.mode", "must name at least one mode"));
        }
        if modes.contains(&AuthMode::None) && modes.len() > 1 {
            return Err(invalid(
                "auth.mode",
                "\"none\" cannot be combined with other modes",
            ));
        }
        let jwt_on = modes.contains(&AuthMode::Jwt);
        let static_on = modes.contains(&AuthMode::StaticKeys);
        let jwt = if jwt_on {
            Some(jwt_config(&self)?)
        } else {
            // JWT settings without the mode are a forgotten `mode`, not a wish for no auth.
            if self.jwks_url.is_some()
                || self.jwks_file.is_some()
                || self.discovery_url.is_some()
                || self.issuer.is_some()
                || self.audience.is_some()
            {
                return Err(invalid(
                    "auth.mode",
                    "issuer, audience, jwks_url, jwks_file or discovery_url is set but mode does not include \"jwt\"",
                ));
            }
            None
        };
        if jwt_on && self.jwt_cache_entries > MAX_JWT_CACHE_ENTRIES {
            return Err(invalid(
                "auth.jwt_cache_entries",
                format!("must be at most {MAX_JWT_CACHE_ENTRIES}"),
            ));
        }
        let mut static_keys = Vec::new();
        if static_on {
            if self.static_keys.is_empty() {
                return Err(invalid(
                    "auth.static_keys",
                    "mode \"static_keys\" needs at least one [[auth.static_keys]] entry",
                ));
            }
            for (n, entry) in self.static_keys.iter().enumerate() {
                if entry.subject.trim().is_empty() {
                    return Err(invalid(
                        "auth.static_keys",
                        format!("entry {n}: every key needs a subject"),
                    ));
                }
                let hash = hex::decode(entry.sha256.trim())
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| {
                        invalid(
                            "auth.static_keys",
                            format!(
                                "entry {n}: sha256 must be 64 hex digits (the SHA-256 of the key, never the key)"
                            ),
                        )
                    })?;
                if static_keys.iter().any(|(h, _, _)| *h == hash) {
                    return Err(invalid(
                        "auth.static_keys",
                        format!("entry {n}: its key is listed twice"),
                    ));
                }
                static_keys.push((hash, entry.subject.clone(), entry.groups.clone()));
            }
        } else if !self.static_keys.is_empty() {
            return Err(invalid(
                "auth.static_keys",
                "keys are listed but mode does not include \"static_keys\"",
            ));
        }
        if !(self.required_groups.is_empty() || jwt_on || static_on) {
            return Err(invalid(
                "auth.required_groups",
                "needs an auth mode other than \"none\"",
            ));
        }
        Ok(AuthConfig {
            jwt,
            static_keys,
            static_keys_enabled: static_on,
            required_groups: self.required_groups,
            jwt_cache_entries: if jwt_on { self.jwt_cache_entries } else { 0 },
        })
    }
}

fn jwt_config(section: &AuthSection) -> Result<JwtConfig, ConfigError> {
    let issuer = section
        .issuer
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                "auth.issuer",
                "mode \"jwt\" needs the issuer tokens must carry",
            )
        })?;
    let audience = match &section.audience {
        Some(AudienceList::One(a)) => vec![a.clone()],
        Some(AudienceList::Many(list)) => list.clone(),
        None => Vec::new(),
    };
    if audience.is_empty() || audience.iter().any(|a| a.trim().is_empty()) {
        return Err(invalid(
            "auth.audience",
            "mode \"jwt\" needs the audience tokens must carry (tokens for other services are refused)",
        ));
    }
    let sources = [
        section.jwks_url.is_some(),
        section.jwks_file.is_some(),
        section.discovery_url.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if sources > 1 {
        return Err(invalid(
            "auth.jwks_url",
            "set only one of jwks_url, jwks_file and discovery_url",
        ));
    }
    let source = if let Some(url) = &section.jwks_url {
        check_url("auth.jwks_url", url)?;
        KeySource::Url(url.clone())
    } else if let Some(path) = &section.jwks_file {
        KeySource::File(path.clone())
    } else {
        let url = section.discovery_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            )
        });
        check_url("auth.discovery_url", &url)?;
        KeySource::Discovery(url)
    };
    let groups_claim: Vec<String> = section
        .groups_claim
        .split('.')
        .map(str::to_string)
        .collect();
    if groups_claim.iter().any(|part| part.is_empty()) {
        return Err(invalid(
            "auth.groups_claim",
            "is not a claim path (names joined by '.', none empty)",
        ));
    }
    if section.leeway_secs > 300 {
        return Err(invalid("auth.leeway_secs", "must be at most 300"));
    }
    if section.algorithms.is_empty() {
        return Err(invalid(
            "auth.algorithms",
            "must name at least one algorithm",
        ));
    }
    let mut algorithms = Vec::new();
    for (n, name) in section.algorithms.iter().enumerate() {
        let alg = jwt::asymmetric_algorithm(name).ok_or_else(|| {
            invalid(
                "auth.algorithms",
                format!(
                    "entry {n} is not allowed (one of {})",
                    DEFAULT_ALGORITHMS.join(", ")
                ),
            )
        })?;
        algorithms.push(alg);
    }
    if section.jwks_refresh_min_secs == 0 {
        return Err(invalid("auth.jwks_refresh_min_secs", "must be at least 1"));
    }
    if section.jwks_max_age_secs < section.jwks_refresh_min_secs {
        return Err(invalid(
            "auth.jwks_max_age_secs",
            "must be at least auth.jwks_refresh_min_secs",
        ));
    }
    Ok(JwtConfig {
        issuer,
        audience,
        source,
        groups_claim,
        leeway_secs: section.leeway_secs,
        algorithms,
        refresh_min_secs: section.jwks_refresh_min_secs,
        max_age_secs: section.jwks_max_age_secs,
        ca_file: section.ca_file.clone(),
    })
}

/// The authenticated caller before a profile is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    #[error("auth.jwks_file: {0}")]
    JwksFile(String),
    #[error("auth.ca_file: {0}")]
    CaFile(String),
}

/// Checks credentials. Built once at start-up; shared by all requests.
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    static_keys: Option<StaticKeys>,
    required_groups: Vec<String>,
}

impl Authenticator {
    /// Reads a `jwks_file` now (a bad file fails start-up); URLs are fetched on first use, so
    /// the proxy starts while the identity provider is briefly unreachable.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthStartError> {
        let jwt = match &config.jwt {
            Some(jwt) => {
                Some(JwtVerifier::new(jwt.clone())?.with_token_cache(config.jwt_cache_entries))
            }
            None => None,
        };
        let static_keys = config
            .static_keys_enabled
            .then(|| StaticKeys::new(&config.static_keys));
        Ok(Authenticator {
            jwt,
            static_keys,
            required_groups: config.required_groups.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.jwt.is_some() || self.static_keys.is_some()
    }

    /// Authenticate the request whose headers are `headers`. With auth off, everyone is
    /// `anonymous`.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, AuthError> {
        if !self.enabled() {
            let anonymous = Identity::anonymous();
            return Ok(Caller {
                subject: anonymous.subject,
                groups: anonymous.groups,
            });
        }
        let token = credential(headers)?;
        let caller = if let Some(caller) = self.static_keys.as_ref().and_then(|k| k.find(token)) {
            caller
        } else if let Some(jwt) = self.jwt.as_ref().filter(|_| looks_like_jwt(token)) {
            jwt.verify(token).await?
        } else if self.jwt.is_some() && self.static_keys.is_none() {
            return Err(AuthError::unauthenticated(
                AuthFailure::Malformed,
                "streammask: the credential is not a JWT",
            ));
        } else {
            return Err(AuthError::unauthenticated(
                AuthFailure::UnknownKey,
                "streammask: the API key is not known to the proxy",
            ));
        };
        if !self.required_groups.is_empty()
            && !caller
                .groups
                .iter()
                .any(|g| self.required_groups.contains(g))
        {
            return Err(AuthError::forbidden(
                AuthFailure::GroupNotAllowed,
                "streammask: the caller is not in a group allowed to use this proxy",
            ));
        }
        Ok(caller)
    }
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The caller's credential: `Authorization: Bearer …`, else `x-api-key`.
fn credential(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let missing = AuthError::unauthenticated(
        AuthFailure::Missing,
        "streammask: authentication required (Authorization: Bearer <token> or x-api-key)",
    );
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| {
            AuthError::unauthenticated(
                AuthFailure::Malformed,
                "streammask: unreadable Authorization header",
            )
        })?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| {
            AuthError::unauthenticated(
                AuthFailure::Malformed,
                "streammask: the Authorization header must be `Bearer <token>`",
            )
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::unauthenticated(
                AuthFailure::Malformed,
                "streammask: the Authorization header must be `Bearer <token>`",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(missing);
        }
        return Ok(token);
    }
    match headers.get("x-api-key").map(|v| v.to_str()) {
        Some(Ok(token)) if !token.trim().is_empty() => Ok(token.trim()),
        Some(Err(_)) => Err(AuthError::unauthenticated(
            AuthFailure::Malformed,
            "streammask: unreadable x-api-key header",
        )),
        _ => Err(missing),
    }
}

/// Groups from `claims` at `path`: an array of strings or one space-separated string.
pub fn groups_from_claims(claims: &serde_json::Value, path: &[String]) -> Vec<String> {
    let mut value = claims;
    for part in path {
        match value.get(part) {
            Some(next) => value = next,
            None => return Vec::new(),
        }
    }
    match value {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .map(str::to_string)
            .collect(),
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn groups_from_array_string_and_nested_path() {
        let claims =
            json!({"groups": ["a", "b", 3], "scope": "x y  z", "realm_access": {"roles": ["r1"]}});
        assert_eq!(groups_from_claims(&claims, &["groups".into()]), ["a", "b"]);
        assert_eq!(
            groups_from_claims(&claims, &["scope".into()]),
            ["x", "y", "z"]
        );
        assert_eq!(
            groups_from_claims(&claims, &["realm_access".into(), "roles".into()]),
            ["r1"]
        );
        assert!(groups_from_claims(&claims, &["nope".into()]).is_empty());
    }

    #[test]
    fn credential_sources() {
        let mut h = http::HeaderMap::new();
        assert_eq!(credential(&h).unwrap_err().reason, "missing");
        h.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(credential(&h).unwrap(), "k1");
        h.insert("authorization", "Bearer t1".parse().unwrap());
        assert_eq!(credential(&h).unwrap(), "t1");
        h.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(credential(&h).unwrap_err().reason, "malformed");
    }

    #[test]
    fn jwt_mode_needs_issuer_audience_and_one_key_source() {
        let parse = |text: &str| {
            let section: AuthSection = toml::from_str(text).unwrap();
            section.validate()
        };
        let err = parse("mode = \"jwt\"\naudience = \"a\"\n").unwrap_err();
        assert!(err.to_string().starts_with("auth.issuer"), "{err}");
        let err = parse("mode = \"jwt\"\nissuer = \"https://i\"\n").unwrap_err();
        assert!(err.to_string().starts_with("auth.audience"), "{err}");
        let err = parse(
            "mode = \"jwt\"\nissuer = \"https://i\"\naudience = \"a\"\njwks_url = \"https://i/k\"\njwks_file = \"/k\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("auth.jwks_url"), "{err}");
        let err = parse(
            "mode = \"jwt\"\nissuer = \"https://i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("auth.algorithms"), "{err}");
        let ok =
            parse("mode = \"jwt\"\nissuer = \"https://idp.example/realms/x\"\naudience = \"a\"\n")
                .unwrap();
        assert_eq!(
            ok.jwt.unwrap().source,
            KeySource::Discovery(
                "https://idp.example/realms/x/.well-known/openid-configuration".into()
            )
        );
        let err = parse("issuer = \"https://i\"\naudience = \"a\"\n").unwrap_err();
        assert!(err.to_string().starts_with("auth.mode"), "{err}");
        let err = parse("mode = [\"none\", \"jwt\"]\n").unwrap_err();
        assert!(err.to_string().starts_with("auth.mode"), "{err}");
        let err =
            parse("mode = \"static_keys\"\n[[static_keys]]\nsubject = \"ci\"\nsha256 = \"abc\"\n")
                .unwrap_err();
        assert!(err.to_string().starts_with("auth.static_keys"), "{err}");
    }

    #[test]
    fn jwt_cache_entries_defaults_on_is_bounded_and_zero_turns_it_off() {
        let parse = |text: &str| toml::from_str::<AuthSection>(text).map(AuthSection::validate);
        let jwt = "mode = \"jwt\"\nissuer = \"https://idp.example/realms/x\"\naudience = \"a\"\n";
        let entries = |text: &str| parse(text).unwrap().unwrap().jwt_cache_entries;
        assert_eq!(entries(jwt), token_cache::DEFAULT_ENTRIES);
        assert_eq!(entries(&format!("{jwt}jwt_cache_entries = 0\n")), 0);
        assert_eq!(
            entries(&format!(
                "{jwt}jwt_cache_entries = {MAX_JWT_CACHE_ENTRIES}\n"
            )),
            MAX_JWT_CACHE_ENTRIES
        );
        let err = parse(&format!(
            "{jwt}jwt_cache_entries = {}\n",
            MAX_JWT_CACHE_ENTRIES + 1
        ))
        .unwrap()
        .unwrap_err();
        assert!(
            err.to_string().starts_with("auth.jwt_cache_entries"),
            "{err}"
        );
        assert!(parse(&format!("{jwt}jwt_cache_entries = -1\n")).is_err());
        // Without JWTs there is nothing to cache.
        assert_eq!(entries("mode = \"none\"\n"), 0);
    }
}
