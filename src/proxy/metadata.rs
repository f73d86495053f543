//! The request's metadata, scanned like its body: the path, the query string and every header
//! that goes upstream. None of them can carry a placeholder (the upstream reads a header or a
//! query parameter as it is, and a rewritten one would change what the request means), so a
//! finding there refuses the request — it is never forwarded.
//!
//! Invariants:
//! - the headers scanned are exactly those the upstream request is built from
//!   ([`forwarded_headers`] is shared with the request builder), less the caller's credential
//!   headers, which carry the credential the upstream is meant to read (or are replaced by the
//!   proxy's key);
//! - the path and query are scanned percent-decoded, the form the upstream's router reads;
//! - a header is scanned as `name: value`, so rules keyed on a header name see it;
//! - refusals name where (the header's name, `query`, `path`) and the rule, never the value;
//!   a header whose *name* holds the finding is named only as "header name".

use super::headers::end_to_end_headers;
use crate::anthropic::api::{ApiError, ErrorKind};
use crate::engine::{text_of, Action, Engine, Findings, Scope};
use http::header::{self, HeaderName};

/// Headers the proxy sets itself on the upstream request: whatever the client sent is dropped.
/// The AWS signing headers are among them: a client's SigV4 signature (the SDKs' Bedrock
/// clients sign their requests to the proxy) covers what the client sent, not the masked
/// body, and means nothing to any other upstream; Bedrock gets the proxy's own.
pub(super) static REWRITTEN: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::ACCEPT_ENCODING,
    header::EXPECT,
    HeaderName::from_static("x-amz-date"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("x-amz-content-sha256"),
];

/// The caller's credential headers: forwarded only as the credential itself.
pub(super) fn is_credential(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name.as_str() == "x-api-key"
}

/// The headers of a client request that the upstream request carries on (credentials aside).
pub(super) fn forwarded_headers(
    headers: &http::HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &http::HeaderValue)> {
    end_to_end_headers(headers, &REWRITTEN)
}

/// Scans path, query and forwarded headers. `Ok` carries the findings that leave the request
/// as it is (report-only rules); a finding of any other rule refuses the request.
pub(super) fn scan_metadata(
    engine: &Engine,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<Findings, Refused> {
    let mut findings = Findings::new();
    let path = percent_decode(uri.path().as_bytes(), false);
    scan_part(engine, &path, 0, Part::Path, &mut findings)?;
    if let Some(query) = uri.query() {
        let query = percent_decode(query.as_bytes(), true);
        scan_part(engine, &query, 0, Part::Query, &mut findings)?;
    }
    // Room for the usual header line (Claude Code's list of betas is a few hundred bytes),
    // so it is not grown from nothing for the first one.
    let mut line = String::with_capacity(512);
    for (name, value) in forwarded_headers(headers) {
        if is_credential(name) {
            continue;
        }
        // The name is scanned with its value (it is the client's text too); a finding in the
        // name is reported without naming the header.
        line.clear();
        line.push_str(name.as_str());
        line.push_str(": ");
        line.push_str(&text_of(value.as_bytes()));
        scan_part(
            engine,
            &line,
            name.as_str().len(),
            Part::Header(name.as_str()),
            &mut findings,
        )?;
    }
    Ok(findings)
}

/// Which part of the request a scanned text is; its words are only written when there is a
/// finding to place.
#[derive(Clone, Copy)]
enum Part<'a> {
    Path,
    Query,
    Header(&'a str),
}

impl Part<'_> {
    /// Where a finding is recorded.
    fn place(self) -> String {
        match self {
            Part::Path => "path".into(),
            Part::Query => "query".into(),
            Part::Header(name) => format!("header {name}"),
        }
    }

    /// How an error message names it.
    fn what(self) -> String {
        match self {
            Part::Path => "path".into(),
            Part::Query => "query string".into(),
            Part::Header(name) => format!("header `{name}`"),
        }
    }
}

/// Why metadata refused a request; `findings` holds every finding up to and including the one
/// that refused it (for the audit record).
#[derive(Debug)]
pub(super) struct Refused {
    pub error: ApiError,
    pub rule_id: String,
    pub findings: Findings,
}

/// Scans `text`, whose first `name_len` bytes are a header's name: a finding starting there is
/// placed as "header name", never under the name itself.
fn scan_part(
    engine: &Engine,
    text: &str,
    name_len: usize,
    part: Part<'_>,
    findings: &mut Findings,
) -> Result<(), Refused> {
    let found = engine.scan(text, Scope::Request).map_err(|_| Refused {
        error: ApiError::new(
            ErrorKind::Api,
            format!("streammask: the {} could not be scanned", part.what()),
        ),
        rule_id: String::new(),
        findings: std::mem::take(findings),
    })?;
    for finding in found {
        let action = finding.action;
        let rule_id = finding.rule_id.clone();
        let (place, what) = if finding.span.start < name_len {
            ("header name".to_string(), "header name".to_string())
        } else {
            (part.place(), part.what())
        };
        findings.push(place, finding);
        if action == Action::Audit {
            continue;
        }
        let description = engine.rule_description(&rule_id);
        let error = if action == Action::Block {
            ApiError::new(
                ErrorKind::Permission,
                format!(
                    "streammask blocked this request: its {what} matched rule `{rule_id}` ({description})"
                ),
            )
        } else {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "streammask refused this request: its {what} holds what rule `{rule_id}` \
                     ({description}) masks, and it cannot carry a placeholder; remove it and send \
                     the request again"
                ),
            )
        };
        return Err(Refused {
            error,
            rule_id,
            findings: std::mem::take(findings),
        });
    }
    Ok(())
}

/// `%HH` sequences decoded (and `+` as a space in a query), invalid UTF-8 replaced: the text a
/// server's router reads.
pub fn percent_decode(raw: &[u8], plus_is_space: bool) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while let Some(&b) = raw.get(at) {
        let escaped = match (b, raw.get(at + 1), raw.get(at + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(if plus_is_space && b == b'+' { b' ' } else { b });
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_engine;

    const RULES: &str = r#"
[[rules]]
id = "test-token"
description = "test token"
pattern = '''tok_[A-Za-z0-9]{20,40}'''
action = "mask"
applies_to = ["request", "response", "tool_input"]
examples = ["tok_abcdefghijklmnopqrstuvwx"]

[[rules]]
id = "test-block"
description = "blocked word"
pattern = '''forbidden-word-[0-9]{4}'''
action = "block"
applies_to = ["request"]
examples = ["forbidden-word-1234"]

[[rules]]
id = "test-audit"
description = "audited word"
pattern = '''audited-word-[0-9]{4}'''
action = "audit"
applies_to = ["request"]
examples = ["audited-word-1234"]
"#;

    fn token() -> String {
        format!("{}_{}", "tok", "abcdefghijklmnopqrstuvwx")
    }

    fn scan(uri: &str, headers: &[(&str, &str)]) -> Result<Findings, Refused> {
        let engine = test_engine(RULES);
        let uri: http::Uri = uri.parse().expect("test uri");
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                http::HeaderValue::from_str(value).expect("test header value"),
            );
        }
        scan_metadata(&engine, &uri, &map)
    }

    fn refused(result: Result<Findings, Refused>) -> Refused {
        match result {
            Err(refused) => refused,
            Ok(findings) => panic!("expected a refusal, got {findings:?}"),
        }
    }

    #[test]
    fn clean_requests_pass_with_no_findings() {
        let found = scan(
            "/v1/messages?beta=true",
            &[
                ("anthropic-beta", "claude-code-20250219,oauth-2025-04-20"),
                ("user-agent", "claude-cli/2.0.0 (external, cli)"),
                (
                    "x-claude-code-session-id",
                    "3f2a9c1b-0000-4000-8000-000000000000",
                ),
            ],
        );
        assert!(found.is_ok_and(|f| f.is_empty()));
    }

    #[test]
    fn a_secret_in_any_forwarded_header_refuses_the_request_naming_header_and_rule() {
        let t = token();
        for (name, value) in [
            ("x-custom", t.clone()),
            ("user-agent", format!("my-tool/1.0 {t}")),
            ("anthropic-beta", format!("a,{t}")),
            ("x-claude-code-session-id", t.clone()),
        ] {
            let refused = refused(scan("/v1/messages", &[(name, value.as_str())]));
            assert_eq!(refused.error.status, 400, "{name}");
            let body = String::from_utf8_lossy(&refused.error.body()).into_owned();
            assert!(body.contains(&format!("header `{name}`")), "{body}");
            assert!(body.contains("test-token"), "{body}");
            assert!(!body.contains(&t), "the error quotes the secret: {body}");
            assert_eq!(refused.findings.len(), 1);
            assert_eq!(refused.findings[0].path, format!("header {name}"));
        }
    }

    #[test]
    fn a_secret_as_a_header_name_is_refused_without_naming_it() {
        let t = token();
        let refused = refused(scan("/v1/messages", &[(t.as_str(), "1")]));
        assert_eq!(refused.error.status, 400);
        let body = String::from_utf8_lossy(&refused.error.body()).into_owned();
        assert!(body.contains("its header name holds"), "{body}");
        assert!(!body.contains(&t), "{body}");
        assert_eq!(refused.findings[0].path, "header name");
    }

    #[test]
    fn the_query_and_path_are_scanned_percent_decoded() {
        let t = token();
        let split = format!("{}%5F{}", &t[..3], &t[4..]);
        for uri in [
            format!("/v1/messages?beta=true&key={t}"),
            format!("/v1/messages?key={split}"),
            format!("/v1/messages/batches/{split}"),
        ] {
            let refused = refused(scan(&uri, &[]));
            assert_eq!(refused.error.status, 400, "{uri}");
            let body = String::from_utf8_lossy(&refused.error.body()).into_owned();
            assert!(
                body.contains("query string") || body.contains("path"),
                "{body}"
            );
            assert!(!body.contains(&t[4..]), "{body}");
        }
    }

    #[test]
    fn credential_headers_are_not_scanned_but_everything_else_is() {
        let t = token();
        assert!(scan("/v1/messages", &[("x-api-key", &t), ("authorization", &t)]).is_ok());
        // Hop-by-hop headers never go upstream, so they cannot leak there.
        assert!(scan("/v1/messages", &[("connection", "close"), ("te", &t)]).is_ok());
    }

    #[test]
    fn block_rules_answer_403_and_audit_rules_only_report() {
        let blocked = refused(scan("/v1/messages", &[("x-note", "forbidden-word-1234")]));
        assert_eq!(blocked.error.status, 403);
        assert_eq!(blocked.rule_id, "test-block");
        let audited = scan("/v1/messages", &[("x-note", "audited-word-1234")])
            .map(|f| f.iter().map(|l| l.path.clone()).collect::<Vec<_>>());
        assert_eq!(audited.ok(), Some(vec!["header x-note".to_string()]));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b+c%zz%4", true), "a b c%zz%4");
        assert_eq!(percent_decode(b"a+b%2Fc", false), "a+b/c");
    }
}
