//! AWS Signature Version 4 verification, written from the AWS specification ("Create a signed
//! AWS API request") and checked against a botocore-signed request (see the tests). The mock
//! is the judge of whether the proxy signs Bedrock requests correctly, so nothing here comes
//! from an AWS SDK.
//!
//! What is checked, in order (the first failure is the answer):
//!
//! * The `Authorization` header is `AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/REGION/SERVICE/
//!   aws4_request, SignedHeaders=a;b;c, Signature=<64 hex>` (else
//!   `IncompleteSignatureException`).
//! * SERVICE is the expected one (`bedrock`), `host` and `x-amz-date` are signed, `x-amz-date`
//!   is a valid basic ISO-8601 time whose date is the credential's date and is no more than
//!   15 minutes away from "now" (a parameter, so tests can freeze the clock) (else
//!   `InvalidSignatureException`).
//! * The access key is known (else `UnrecognizedClientException`) and not expired (else
//!   `ExpiredTokenException`). A key issued with a session token (STS) requires
//!   `x-amz-security-token`: present (else `UnrecognizedClientException`), signed (else
//!   `InvalidSignatureException`) and equal to the token (else `UnrecognizedClientException`).
//! * `x-amz-content-sha256`, when present, equals the SHA-256 of the body.
//! * The signature equals HMAC-SHA256 over the string to sign, with the key derived from the
//!   secret, date, region and service. The canonical request uses the method; the path as it
//!   arrived on the wire URI-encoded once more (AWS's double encoding for services other than
//!   S3: `:` is `%3A`, an escaped `%3A` is `%253A`); the query parameters decoded, URI-encoded
//!   and sorted; the signed headers, lowercase, each with its values trimmed, runs of spaces
//!   collapsed and repeats joined by `,`; the signed-header list; and the payload hash. On a
//!   mismatch the error message carries the canonical request and the string to sign the mock
//!   expected, for debugging a signer.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::clock::parse_amz_date;
use crate::form::{percent_decode, uri_encode};

pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far `x-amz-date` may be from the mock's clock, either way.
const MAX_SKEW_SECS: u64 = 15 * 60;

/// What the mock knows about an access key.
pub(crate) enum KeyLookup {
    Unknown,
    Expired,
    /// The secret, and the session token the key was issued with (STS keys only).
    Found {
        secret: String,
        session_token: Option<String>,
    },
}

/// The parts of a request a signature covers.
pub(crate) struct SignedRequest<'a> {
    pub(crate) method: &'a str,
    /// The path exactly as it arrived (still percent-encoded).
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) body: &'a [u8],
}

impl SignedRequest<'_> {
    fn values<'n>(&'n self, name: &'n str) -> impl Iterator<Item = &'n str> + 'n {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) access_key_id: String,
    pub(crate) date: String,
    pub(crate) region: String,
    pub(crate) service: String,
}

/// A refusal: the AWS error type (`x-amzn-ErrorType`), a message, and whatever of the
/// credential scope could be parsed (recorded even when the request is refused).
#[derive(Debug)]
pub(crate) struct Rejection {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) scope: Option<Box<Scope>>,
}

fn reject(kind: &'static str, message: impl Into<String>, scope: Option<&Scope>) -> Rejection {
    Rejection {
        kind,
        message: message.into(),
        scope: scope.map(|s| {
            Box::new(Scope {
                access_key_id: s.access_key_id.clone(),
                date: s.date.clone(),
                region: s.region.clone(),
                service: s.service.clone(),
            })
        }),
    }
}

const INCOMPLETE: &str = "IncompleteSignatureException";
const INVALID: &str = "InvalidSignatureException";
const UNRECOGNIZED: &str = "UnrecognizedClientException";

struct AuthHeader<'a> {
    scope: Scope,
    terminator: &'a str,
    signed_headers: Vec<String>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, Rejection> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            reject(
                INCOMPLETE,
                format!("Authorization header must start with '{ALGORITHM} '"),
                None,
            )
        })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let missing = |what: &str| {
        reject(
            INCOMPLETE,
            format!("Authorization header requires '{what}' parameter. Authorization={value}"),
            None,
        )
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = parts[..] else {
        return Err(reject(
            INCOMPLETE,
            format!("Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"),
            None,
        ));
    };
    Ok(AuthHeader {
        scope: Scope {
            access_key_id: akid.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
        },
        terminator,
        signed_headers: signed
            .split(';')
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .collect(),
        signature,
    })
}

/// Trim, and collapse each run of spaces to one.
fn normalize_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for word in v.trim().split(' ').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn canonical_query(query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| uri_encode(percent_decode(s, false).as_bytes(), false);
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The SigV4 signing key: HMAC chain over date, region, service and `aws4_request`.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Verifies a request's SigV4 `Authorization` header (see the module doc). `now` is Unix
/// seconds. On success, returns the credential scope.
pub(crate) fn verify(
    req: &SignedRequest<'_>,
    authorization: &str,
    service: &str,
    now: u64,
    lookup: impl FnOnce(&str) -> KeyLookup,
) -> Result<Scope, Rejection> {
    let auth = parse_authorization(authorization)?;
    let scope = &auth.scope;
    let s = Some(scope);
    if auth.terminator != "aws4_request" {
        return Err(reject(
            INVALID,
            format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
                auth.terminator
            ),
            s,
        ));
    }
    if scope.service != service {
        return Err(reject(
            INVALID,
            format!("Credential should be scoped to correct service: '{service}'."),
            s,
        ));
    }
    let signed = |h: &str| auth.signed_headers.iter().any(|x| x == h);
    if !signed("host") {
        return Err(reject(
            INVALID,
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            s,
        ));
    }
    let Some(amz_date) = req.values("x-amz-date").next() else {
        return Err(reject(
            INCOMPLETE,
            "Authorization header requires existence of a 'X-Amz-Date' header.",
            s,
        ));
    };
    if !signed("x-amz-date") {
        return Err(reject(
            INVALID,
            "'X-Amz-Date' must be a 'SignedHeader' in the AWS Authorization.",
            s,
        ));
    }
    let Some(when) = parse_amz_date(amz_date.trim()) else {
        return Err(reject(
            INCOMPLETE,
            format!(
                "X-Amz-Date '{amz_date}' must be in the ISO8601 basic format YYYYMMDD'T'HHMMSS'Z'."
            ),
            s,
        ));
    };
    if !amz_date.trim().starts_with(&scope.date) || scope.date.len() != 8 {
        return Err(reject(INVALID, format!("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'", scope.date, &amz_date.trim()[..8]), s));
    }
    if when + MAX_SKEW_SECS < now {
        return Err(reject(INVALID, format!("Signature expired: {amz_date} is now earlier than 15 minutes before the mock's clock."), s));
    }
    if when > now + MAX_SKEW_SECS {
        return Err(reject(INVALID, format!("Signature not yet current: {amz_date} is more than 15 minutes after the mock's clock."), s));
    }
    let secret = match lookup(&scope.access_key_id) {
        KeyLookup::Unknown => {
            return Err(reject(
                UNRECOGNIZED,
                "The security token included in the request is invalid.",
                s,
            ))
        }
        KeyLookup::Expired => {
            return Err(reject(
                "ExpiredTokenException",
                "The security token included in the request is expired",
                s,
            ))
        }
        KeyLookup::Found {
            secret,
            session_token,
        } => {
            if let Some(expected) = session_token {
                let presented = req.values("x-amz-security-token").next().map(str::trim);
                if presented.is_none() {
                    return Err(reject(
                        UNRECOGNIZED,
                        "The security token included in the request is invalid.",
                        s,
                    ));
                }
                if !signed("x-amz-security-token") {
                    return Err(reject(
                        INVALID,
                        "A session key requires 'X-Amz-Security-Token' to be a 'SignedHeader'.",
                        s,
                    ));
                }
                if presented != Some(expected.as_str()) {
                    return Err(reject(
                        UNRECOGNIZED,
                        "The security token included in the request is invalid.",
                        s,
                    ));
                }
            }
            secret
        }
    };
    let body_hash = hex::encode(Sha256::digest(req.body));
    let payload_hash = match req.values("x-amz-content-sha256").next() {
        Some(claimed) if claimed.trim() != body_hash => {
            return Err(reject(INVALID, format!("The provided 'x-amz-content-sha256' header '{claimed}' does not match the SHA-256 of the request body ({body_hash})."), s));
        }
        _ => body_hash,
    };

    let mut canonical = String::with_capacity(512);
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&if req.path.is_empty() {
        "/".to_owned()
    } else {
        uri_encode(req.path.as_bytes(), true)
    });
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.query));
    canonical.push('\n');
    for name in &auth.signed_headers {
        let values: Vec<String> = req.values(name).map(normalize_value).collect();
        if values.is_empty() {
            return Err(reject(
                INVALID,
                format!("The request does not carry the signed header '{name}'."),
                s,
            ));
        }
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&auth.signed_headers.join(";"));
    canonical.push('\n');
    canonical.push_str(&payload_hash);

    let credential_scope = format!(
        "{}/{}/{}/aws4_request",
        scope.date, scope.region, scope.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{credential_scope}\n{}",
        amz_date.trim(),
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(&secret, &scope.date, &scope.region, &scope.service);
    let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(reject(
            INVALID,
            format!(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
            ),
            s,
        ));
    }
    Ok(auth.scope)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Signed by botocore 1.44 (`SigV4Auth(Credentials(AK, SK, TOKEN), "bedrock", "us-east-1")
    // .add_auth(AWSRequest("POST", "http://127.0.0.1:8080/model/…:0/invoke", headers, BODY))`
    // with the clock frozen at 2026-12-04T12:00:00Z).
    const AK: &str = "AKIDEXAMPLE";
    const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "SESSIONTOKEN/abc+def==";
    const PATH: &str = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke";
    const BODY: &[u8] = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261204/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token;x-custom, Signature=525d4d5516788b660eac407a39ac455e2efcc423c24bbced8e0b08d95bf8760f";
    const NOW: u64 = 1_796_385_600; // 2026-12-04T12:00:00Z

    fn headers() -> Vec<(String, String)> {
        [
            ("Host", "127.0.0.1:8080"),
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("X-Custom", "  a   b  "),
            ("X-Amz-Date", "20261204T120000Z"),
            ("X-Amz-Security-Token", TOKEN),
            ("Content-Length", "103"),
            ("User-Agent", "not signed"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn check(
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: u64,
        session: Option<&str>,
    ) -> Result<Scope, Rejection> {
        let req = SignedRequest {
            method: "POST",
            path,
            query: None,
            headers,
            body,
        };
        verify(&req, AUTH, "bedrock", now, |ak| {
            if ak == AK {
                KeyLookup::Found {
                    secret: SK.to_owned(),
                    session_token: session.map(str::to_owned),
                }
            } else {
                KeyLookup::Unknown
            }
        })
    }

    #[test]
    fn accepts_the_botocore_vector() {
        assert_eq!(crate::clock::parse_amz_date("20261204T120000Z"), Some(NOW));
        let scope = check(PATH, &headers(), BODY, NOW, None).unwrap();
        assert_eq!(scope.access_key_id, AK);
        assert_eq!(scope.region, "us-east-1");
        // As an STS key too, since the token is signed and equal.
        check(PATH, &headers(), BODY, NOW + 600, Some(TOKEN)).unwrap();
    }

    #[test]
    fn rejects_any_change() {
        let kind = |r: Result<Scope, Rejection>| r.unwrap_err().kind;
        let mut body = BODY.to_vec();
        body[40] ^= 1;
        assert_eq!(kind(check(PATH, &headers(), &body, NOW, None)), INVALID);
        let mut h = headers();
        h[3].1 = "a b c".into();
        assert_eq!(kind(check(PATH, &h, BODY, NOW, None)), INVALID);
        let mut h = headers();
        h[0].1 = "127.0.0.1:8081".into();
        assert_eq!(kind(check(PATH, &h, BODY, NOW, None)), INVALID);
        // The path as sent on the wire: an escaped `:` is a different canonical URI.
        let escaped = PATH.replace(':', "%3A");
        assert_eq!(kind(check(&escaped, &headers(), BODY, NOW, None)), INVALID);
        // Unsigned headers may change.
        let mut h = headers();
        h[7].1 = "changed".into();
        check(PATH, &h, BODY, NOW, None).unwrap();
        // A signed header that is missing.
        let h: Vec<_> = headers()
            .into_iter()
            .filter(|(k, _)| k != "accept")
            .collect();
        assert_eq!(kind(check(PATH, &h, BODY, NOW, None)), INVALID);
        // Clock skew beyond 15 minutes, either way.
        assert_eq!(
            kind(check(PATH, &headers(), BODY, NOW + 901, None)),
            INVALID
        );
        assert_eq!(
            kind(check(PATH, &headers(), BODY, NOW - 901, None)),
            INVALID
        );
        // An STS key whose token differs.
        assert_eq!(
            kind(check(PATH, &headers(), BODY, NOW, Some("other"))),
            UNRECOGNIZED
        );
        // An STS key presented without its token.
        let h: Vec<_> = headers()
            .into_iter()
            .filter(|(k, _)| k != "X-Amz-Security-Token")
            .collect();
        assert_eq!(kind(check(PATH, &h, BODY, NOW, Some(TOKEN))), UNRECOGNIZED);
        // A content hash that does not match the body.
        let mut h = headers();
        h.push(("x-amz-content-sha256".into(), "00".repeat(32)));
        assert_eq!(kind(check(PATH, &h, BODY, NOW, None)), INVALID);
    }

    #[test]
    fn parse_errors_and_scope_checks() {
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: None,
            headers: &[],
            body: b"",
        };
        let v = |auth: &str, service: &str| {
            verify(&req, auth, service, NOW, |_| KeyLookup::Unknown)
                .unwrap_err()
                .kind
        };
        assert_eq!(v("AWS4-HMAC-SHA256 Signature=x", "bedrock"), INCOMPLETE);
        assert_eq!(
            v(
                "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=x",
                "bedrock"
            ),
            INCOMPLETE
        );
        assert_eq!(v(AUTH, "s3"), INVALID);
        assert_eq!(v(&AUTH.replace("host;", ""), "bedrock"), INVALID);
    }

    #[test]
    fn canonical_query_is_sorted_and_encoded() {
        assert_eq!(canonical_query(None), "");
        assert_eq!(
            canonical_query(Some("b=2&a=x%2Fy&a=1&c")),
            "a=1&a=x%2Fy&b=2&c="
        );
        assert_eq!(canonical_query(Some("k=a b")), "k=a%20b");
        assert_eq!(normalize_value("  a   b  "), "a b");
    }
}
