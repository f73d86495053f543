//! AWS STS, `AssumeRoleWithWebIdentity` only: `POST /` with a form body (`Action`, `RoleArn`,
//! `RoleSessionName`, `WebIdentityToken`, `Version`), unsigned, as the AWS SDKs' web-identity
//! credential provider sends it.
//!
//! Guarantees:
//!
//! * Every call counts in `sts_calls`, answered or refused.
//! * The token must equal `--sts-web-identity-token` when that is given, and be non-empty
//!   otherwise; else 403 `InvalidIdentityToken` in STS's XML error shape. Another `Action` is
//!   400 `InvalidAction`; no `RoleArn` is 400 `ValidationError`.
//! * Success issues fresh credentials (access key id `ASIA` + 16, a 40-character secret, a
//!   long session token) valid for `--sts-ttl-secs` (`DurationSeconds` is ignored), remembers
//!   them for the Bedrock verifier, and answers `text/xml` in the shape of the real
//!   `AssumeRoleWithWebIdentityResponse`, which the AWS SDKs parse. When the token is a JWT,
//!   its `sub`, `aud` and `iss` (unverified) fill `SubjectFromWebIdentityToken`, `Audience` and
//!   `Provider`.

use std::sync::atomic::Ordering;

use base64::Engine as _;
use serde_json::Value;

use crate::clock::{rfc3339, unix_now};
use crate::cloud::IssuedKey;
use crate::form::{form_value, parse_form};
use crate::http::Request;
use crate::response::Response;
use crate::rng::{random_chars, Rng};
use crate::server::{lock, State};

const XML_CONTENT_TYPE: &str = "text/xml";
const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const HEX: &[u8] = b"0123456789abcdef";

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn request_id(rng: &mut Rng) -> String {
    [8, 4, 4, 4, 12]
        .iter()
        .map(|&n| random_chars(HEX, n, rng))
        .collect::<Vec<_>>()
        .join("-")
}

fn xml_error(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n</ErrorResponse>\n",
        xml_escape(code),
        xml_escape(message),
        xml_escape(request_id)
    );
    Response::with_body(status, XML_CONTENT_TYPE, body.into_bytes())
}

pub(crate) struct Issued<'a> {
    pub(crate) access_key_id: &'a str,
    pub(crate) secret: &'a str,
    pub(crate) session_token: &'a str,
    pub(crate) expiration: &'a str,
}

/// The claims the response echoes from a JWT web-identity token: (sub, aud, iss).
fn token_claims(token: &str) -> (String, String, String) {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let s = |v: &Value, default: &str| match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned(),
        _ => default.to_owned(),
    };
    (
        s(&claims["sub"], "mock-subject"),
        s(&claims["aud"], "sts.amazonaws.com"),
        s(&claims["iss"], "mock-oidc-provider"),
    )
}

/// The `AssumeRoleWithWebIdentityResponse` document.
pub(crate) fn response_xml(
    role_arn: &str,
    session_name: &str,
    token: &str,
    role_id: &str,
    creds: &Issued<'_>,
    request_id: &str,
) -> String {
    // arn:aws:iam::ACCOUNT:role/path/NAME → arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION
    let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
    let account = parts
        .get(4)
        .copied()
        .filter(|a| !a.is_empty())
        .unwrap_or("123456789012");
    let role = parts
        .get(5)
        .and_then(|r| r.rsplit('/').next())
        .filter(|r| !r.is_empty())
        .unwrap_or("mock-role");
    let (sub, aud, iss) = token_claims(token);
    let e = xml_escape;
    format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"{XMLNS}\">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{}</SubjectFromWebIdentityToken>
    <Audience>{}</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::{}:assumed-role/{}/{}</Arn>
      <AssumedRoleId>{}:{}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{}</SessionToken>
      <SecretAccessKey>{}</SecretAccessKey>
      <Expiration>{}</Expiration>
      <AccessKeyId>{}</AccessKeyId>
    </Credentials>
    <Provider>{}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
",
        e(&sub),
        e(&aud),
        e(account),
        e(role),
        e(session_name),
        e(role_id),
        e(session_name),
        e(creds.session_token),
        e(creds.secret),
        e(creds.expiration),
        e(creds.access_key_id),
        e(&iss),
        e(request_id),
    )
}

pub(crate) fn sts(state: &State, req: &Request, rng: &mut Rng) -> Response {
    let cloud = &state.cloud;
    cloud.sts_calls.fetch_add(1, Ordering::Relaxed);
    let form = parse_form(&req.body);
    let action = form_value(&form, "Action").unwrap_or("");
    if action != "AssumeRoleWithWebIdentity" {
        let msg = format!("Could not find operation {action} for version 2011-06-15 (the mock STS implements AssumeRoleWithWebIdentity only)");
        return xml_error(400, "InvalidAction", &msg, &request_id(rng));
    }
    let token = form_value(&form, "WebIdentityToken").unwrap_or("");
    let accepted = match &cloud.config.sts_web_identity_token {
        Some(expected) => token == expected,
        None => !token.is_empty(),
    };
    if !accepted {
        let msg = "Couldn't verify the web identity token (the mock STS does not accept it).";
        return xml_error(403, "InvalidIdentityToken", msg, &request_id(rng));
    }
    let Some(role_arn) = form_value(&form, "RoleArn").filter(|r| !r.is_empty()) else {
        let msg = "1 validation error detected: Value null at 'roleArn' failed to satisfy constraint: Member must not be null";
        return xml_error(400, "ValidationError", msg, &request_id(rng));
    };
    let session_name = form_value(&form, "RoleSessionName")
        .filter(|s| !s.is_empty())
        .unwrap_or("mock-session");

    let access_key_id = format!("ASIA{}", random_chars(UPPER, 16, rng));
    let secret = random_chars(B64, 40, rng);
    let session_token = format!("IQoJb3JpZ2luX2VjE{}", random_chars(B64, 360, rng));
    let role_id = format!("AROA{}", random_chars(UPPER, 17, rng));
    let expires_at = unix_now() + cloud.config.sts_ttl_secs;
    let expiration = rfc3339(expires_at);
    let xml = response_xml(
        role_arn,
        session_name,
        token,
        &role_id,
        &Issued {
            access_key_id: &access_key_id,
            secret: &secret,
            session_token: &session_token,
            expiration: &expiration,
        },
        &request_id(rng),
    );
    lock(&cloud.sts_keys).insert(
        access_key_id,
        IssuedKey {
            secret,
            session_token,
            expires_at,
        },
    );
    Response::with_body(200, XML_CONTENT_TYPE, xml.into_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::sigv4::KeyLookup;
    use crate::testing::{exchange, post, split_head, start_with};

    /// The text of the first `<tag>…</tag>`, and that it sits inside `<parent>`.
    fn inner<'a>(xml: &'a str, parent: &str, tag: &str) -> &'a str {
        let p0 = xml
            .find(&format!("<{parent}>"))
            .or_else(|| xml.find(&format!("<{parent} ")))
            .unwrap();
        let p1 = xml.find(&format!("</{parent}>")).unwrap();
        let open = format!("<{tag}>");
        let a = xml.find(&open).unwrap() + open.len();
        let b = xml.find(&format!("</{tag}>")).unwrap();
        assert!(p0 < a && b < p1, "<{tag}> is inside <{parent}>");
        &xml[a..b]
    }

    #[test]
    fn response_has_the_sts_shape() {
        let jwt = format!(
            "e30.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"sub":"system:serviceaccount:ns:sa","aud":["sts.amazonaws.com"],"iss":"https://oidc.example"}"#)
        );
        let creds = Issued {
            access_key_id: "ASIAMOCK",
            secret: "s/e+c",
            session_token: "tok&en",
            expiration: "2026-12-04T13:00:00Z",
        };
        let xml = response_xml(
            "arn:aws:iam::111122223333:role/ci/Deploy",
            "sess",
            &jwt,
            "AROAX",
            &creds,
            "rid",
        );
        assert!(xml.starts_with("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"));
        let r = "AssumeRoleWithWebIdentityResult";
        assert_eq!(inner(&xml, "Credentials", "AccessKeyId"), "ASIAMOCK");
        assert_eq!(inner(&xml, "Credentials", "SecretAccessKey"), "s/e+c");
        assert_eq!(inner(&xml, "Credentials", "SessionToken"), "tok&amp;en");
        assert_eq!(
            inner(&xml, "Credentials", "Expiration"),
            "2026-12-04T13:00:00Z"
        );
        assert_eq!(inner(&xml, r, "Credentials").matches('<').count(), 8);
        assert_eq!(
            inner(&xml, "AssumedRoleUser", "Arn"),
            "arn:aws:sts::111122223333:assumed-role/Deploy/sess"
        );
        assert_eq!(
            inner(&xml, "AssumedRoleUser", "AssumedRoleId"),
            "AROAX:sess"
        );
        assert_eq!(
            inner(&xml, r, "SubjectFromWebIdentityToken"),
            "system:serviceaccount:ns:sa"
        );
        assert_eq!(inner(&xml, r, "Audience"), "sts.amazonaws.com");
        assert_eq!(inner(&xml, r, "Provider"), "https://oidc.example");
        assert_eq!(inner(&xml, "ResponseMetadata", "RequestId"), "rid");
        assert!(xml.find("</AssumeRoleWithWebIdentityResult>") < xml.find("<ResponseMetadata>"));
    }

    #[tokio::test]
    async fn issues_credentials_the_verifier_accepts() {
        let cfg = crate::cloud::CloudConfig {
            sts_web_identity_token: Some("good".into()),
            ..Default::default()
        };
        let (addr, state) = start_with(cfg).await;
        let close = "Connection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n";
        let form = "Action=AssumeRoleWithWebIdentity&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&RoleSessionName=s&Version=2011-06-15&WebIdentityToken=";
        let resp = exchange(addr, &post("/", &format!("{form}bad"), close)).await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        assert!(head.contains("content-type: text/xml"));
        let body = std::str::from_utf8(body).unwrap();
        assert_eq!(inner(body, "Error", "Code"), "InvalidIdentityToken");
        assert_eq!(inner(body, "Error", "Type"), "Sender");

        let resp = exchange(addr, &post("/", &format!("{form}good"), close)).await;
        let (head, body) = split_head(&resp);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let body = std::str::from_utf8(body).unwrap();
        let akid = inner(body, "Credentials", "AccessKeyId");
        let secret = inner(body, "Credentials", "SecretAccessKey");
        let token = inner(body, "Credentials", "SessionToken");
        assert!(akid.starts_with("ASIA") && akid.len() == 20);
        assert_eq!(secret.len(), 40);
        assert!(token.len() > 300);
        assert_eq!(state.cloud.sts_calls.load(Ordering::Relaxed), 2);
        match state.cloud.aws_key(akid, unix_now()) {
            KeyLookup::Found {
                secret: s,
                session_token,
            } => {
                assert_eq!(s, secret);
                assert_eq!(session_token.as_deref(), Some(token));
            }
            _ => panic!("issued key not found"),
        }
        assert!(matches!(
            state.cloud.aws_key(akid, unix_now() + 3601),
            KeyLookup::Expired
        ));
    }
}
