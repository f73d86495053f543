//! The upstream response's header, judged before anything is sent to the client.
//!
//! Invariants:
//! - a `101 Switching Protocols` or an `Upgrade` header is an answer whose bytes the proxy
//!   could not scan as a response body: the client gets an Anthropic-shaped 502 instead (other
//!   informational answers, `100` and `103`, are skipped by the upstream reader before the
//!   final one; one that still got here would be refused the same way);
//! - every header that reaches the client (name and value, as text) is scanned with the
//!   response rules, but for the request id the proxy writes itself after the scan (the
//!   upstream's header of that name is dropped); a header cannot carry a placeholder, so a finding that would be rewritten
//!   anywhere else answers the client with a 502 naming the rule (never the header's text).
//!   Findings of report-only rules are recorded and the header goes on.

use crate::anthropic::api::{ApiError, ErrorKind};
use crate::engine::{text_of, Engine, Findings, Scope};
use pingora::http::ResponseHeader;

fn bad_gateway(message: String) -> ApiError {
    ApiError::new(ErrorKind::Api, message).with_status(502)
}

/// Refuse an upgrade or informational answer (see the module docs).
pub(super) fn refuse_upgrade(upstream: &ResponseHeader) -> Result<(), ApiError> {
    let status = upstream.status;
    if status.is_informational() || upstream.headers.contains_key(http::header::UPGRADE) {
        return Err(bad_gateway(format!(
            "streammask: the upstream answered with {} (a protocol switch), which cannot be \
             scanned",
            status.as_u16()
        )));
    }
    Ok(())
}

/// Scan `client` (the headers the client will get). Findings go to `findings`.
pub(super) fn scan(
    engine: &Engine,
    client: &http::HeaderMap,
    findings: &mut Findings,
) -> Result<(), ApiError> {
    for (name, value) in client.iter() {
        let value = text_of(value.as_bytes());
        for text in [name.as_str(), &value] {
            let found = engine
                .scan(text, Scope::Response)
                .map_err(|_| bad_gateway("streammask: scanning failed".into()))?;
            let refused = found
                .iter()
                .find(|finding| finding.rewritten)
                .map(|finding| finding.rule_id.clone());
            for finding in found {
                findings.push("(response header)", finding);
            }
            if let Some(rule_id) = refused {
                return Err(bad_gateway(format!(
                    "streammask: an upstream response header carried a secret (rule \
                     `{rule_id}`), which cannot be masked in a header"
                )));
            }
        }
    }
    Ok(())
}
