//! The Google OAuth 2.0 token endpoint, for service-account credentials: `POST /token` with the
//! form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`.
//!
//! Guarantees:
//!
//! * The assertion is accepted only if its `iss` is a non-empty string, its `scope` contains
//!   `https://www.googleapis.com/auth/cloud-platform`, its `aud` equals the URL the client
//!   posted to (`http://<Host header>/token`), its `exp` is in the future, and, when
//!   `--oauth-public-key` is given, its header says RS256 and its signature verifies with that
//!   key. Anything else is 400 `{"error":"invalid_grant","error_description":…}` (another
//!   grant type: `unsupported_grant_type`; no assertion: `invalid_request`).
//! * Success answers `{"access_token":"ya29.mock-…","expires_in":<--oauth-token-ttl-secs>,
//!   "token_type":"Bearer"}`, remembers the token until it expires (Vertex accepts it until
//!   then), and counts it in `oauth_tokens_issued`.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::clock::unix_now;
use crate::form::{form_value, parse_form};
use crate::http::Request;
use crate::response::Response;
use crate::rng::{random_chars, Rng};
use crate::server::{lock, State};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub(crate) const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn oauth_error(error: &str, description: &str) -> Response {
    Response::json(
        400,
        &serde_json::json!({"error": error, "error_description": description}),
    )
}

fn b64_json(part: &str) -> Result<Value, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
}

/// Checks a JWT-bearer assertion (see the module doc) at time `now`; returns its claims.
pub(crate) fn check_assertion(
    jwt: &str,
    expected_aud: &str,
    now: u64,
    key: Option<&DecodingKey>,
) -> Result<Value, String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("the assertion is not a JWT (three dot-separated parts)".into());
    };
    let header = b64_json(header).map_err(|e| format!("JWT header: {e}"))?;
    let claims = b64_json(claims).map_err(|e| format!("JWT claims: {e}"))?;
    if claims["iss"].as_str().is_none_or(str::is_empty) {
        return Err("Invalid JWT: the iss claim is missing or empty.".into());
    }
    let scopes = claims["scope"].as_str().unwrap_or("");
    if !scopes.split_whitespace().any(|s| s == CLOUD_PLATFORM) {
        return Err(format!(
            "Invalid JWT: scope '{scopes}' lacks {CLOUD_PLATFORM}."
        ));
    }
    if claims["aud"].as_str() != Some(expected_aud) {
        return Err(format!(
            "Invalid JWT: aud {} is not the token URL {expected_aud}.",
            claims["aud"]
        ));
    }
    match claims["exp"].as_u64() {
        Some(exp) if exp > now => {}
        _ => return Err("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into()),
    }
    if let Some(key) = key {
        if header["alg"] != "RS256" {
            return Err(format!("Invalid JWT: alg {} is not RS256.", header["alg"]));
        }
        let message = &jwt[..jwt.len() - signature.len() - 1];
        // Google's token endpoint accepts padded base64url (gcp_auth pads its signatures);
        // the verifier wants it unpadded.
        let signature = signature.trim_end_matches('=');
        match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, Algorithm::RS256) {
            Ok(true) => {}
            _ => return Err("Invalid JWT Signature.".into()),
        }
    }
    Ok(claims)
}

pub(crate) fn token(state: &State, req: &Request, rng: &mut Rng) -> Response {
    let form = parse_form(&req.body);
    let grant = form_value(&form, "grant_type").unwrap_or("");
    if grant != JWT_BEARER {
        return oauth_error(
            "unsupported_grant_type",
            &format!("Invalid grant_type: {grant} (the mock supports {JWT_BEARER} only)"),
        );
    }
    let Some(assertion) = form_value(&form, "assertion").filter(|a| !a.is_empty()) else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let host = req
        .header("host")
        .map_or_else(|| state.local_addr.to_string(), str::to_owned);
    let aud = format!("http://{host}/token");
    let cloud = &state.cloud;
    let now = unix_now();
    if let Err(e) = check_assertion(assertion, &aud, now, cloud.config.oauth_public_key.as_ref()) {
        return oauth_error("invalid_grant", &e);
    }
    let token = format!("ya29.mock-{}", random_chars(TOKEN_CHARS, 48, rng));
    let ttl = cloud.config.oauth_token_ttl_secs;
    lock(&cloud.oauth_tokens).insert(token.clone(), now + ttl);
    cloud.oauth_tokens_issued.fetch_add(1, Ordering::Relaxed);
    Response::json(
        200,
        &serde_json::json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"}),
    )
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use jsonwebtoken::DecodingKey;

    use super::check_assertion;

    // Signed by PyJWT with the private half of `oauth-signer.pub.pem` (not kept): iss, scope
    // cloud-platform, aud http://mock/token, iat 2026-12-04T12:00:00Z, exp 2100-01-01.
    const JWT: &str = include_str!("../testdata/oauth-assertion.jwt");
    const NOW: u64 = 1_796_385_600;

    fn key(pem: &str) -> DecodingKey {
        DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    }

    fn with_claims(claims: &str) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        format!("eyJhbGciOiJub25lIn0.{b}.")
    }

    #[test]
    fn claims_and_signature() {
        let jwt = JWT.trim();
        let signer = key(include_str!("../testdata/oauth-signer.pub.pem"));
        let other = key(include_str!("../testdata/oauth-other.pub.pem"));
        let claims = check_assertion(jwt, "http://mock/token", NOW, Some(&signer)).unwrap();
        assert_eq!(claims["iss"], "sa@p.iam.gserviceaccount.com");
        check_assertion(jwt, "http://mock/token", NOW, None).unwrap();
        let err = check_assertion(jwt, "http://mock/token", NOW, Some(&other)).unwrap_err();
        assert!(err.contains("Signature"), "{err}");
        let err = check_assertion(jwt, "http://127.0.0.1:1/token", NOW, Some(&signer)).unwrap_err();
        assert!(err.contains("aud"), "{err}");
        let err = check_assertion(jwt, "http://mock/token", 4_102_444_800, None).unwrap_err();
        assert!(err.contains("exp"), "{err}");
        // The claims part swapped for another one: the signature no longer holds.
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged = with_claims(
            r#"{"iss":"evil","scope":"https://www.googleapis.com/auth/cloud-platform","aud":"http://mock/token","exp":4102444800}"#,
        );
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            forged.split('.').nth(1).unwrap(),
            parts[2]
        );
        check_assertion(&forged, "http://mock/token", NOW, None).unwrap();
        assert!(check_assertion(&forged, "http://mock/token", NOW, Some(&signer)).is_err());
    }

    #[test]
    fn claim_checks_without_a_key() {
        let ok = r#""scope":"openid https://www.googleapis.com/auth/cloud-platform","aud":"http://h/token","exp":2000000000"#;
        let check = |c: &str| check_assertion(&with_claims(c), "http://h/token", NOW, None);
        check(&format!(r#"{{"iss":"a",{ok}}}"#)).unwrap();
        assert!(check(&format!(r#"{{"iss":"",{ok}}}"#)).is_err());
        assert!(check(&format!(r#"{{{ok}}}"#)).is_err());
        assert!(check(r#"{"iss":"a","scope":"https://www.googleapis.com/auth/cloud-platform.read-only","aud":"http://h/token","exp":2000000000}"#).is_err());
        assert!(check(r#"{"iss":"a","scope":"https://www.googleapis.com/auth/cloud-platform","aud":"http://h/token"}"#).is_err());
        assert!(check_assertion("a.b", "x", NOW, None).is_err());
        // With a key, `alg: none` is refused.
        let signer = key(include_str!("../testdata/oauth-signer.pub.pem"));
        let e = check_assertion(
            &with_claims(&format!(r#"{{"iss":"a",{ok}}}"#)),
            "http://h/token",
            NOW,
            Some(&signer),
        )
        .unwrap_err();
        assert!(e.contains("RS256"), "{e}");
    }
}
