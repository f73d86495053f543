//! The first-party Claude API: `/v1/messages…` and the other routes of
//! [`crate::anthropic::api::route`], sent to `[upstream] url` with the org's key
//! (`x-api-key`) instead of the caller's when the proxy holds one; SSE responses.

use super::{base_request, Outbound, Routed, Target};
use crate::anthropic::api::{ApiError, Provider};
use crate::config::Config;
use crate::policy::credentials::UpstreamKey;
use pingora::http::RequestHeader;

pub(super) fn route(method: &str, path: &str, extra_prefixes: &[String]) -> Option<Routed> {
    let route = crate::anthropic::api::route(method, path, extra_prefixes)?;
    Some(Routed {
        provider: Provider::Anthropic,
        route,
        path_model: None,
        stream: None,
        target: Target::Anthropic,
    })
}

/// Same method, path and query under the upstream base path; the caller's credential is
/// forwarded only when the proxy holds no key (`credentials = "passthrough"`).
pub(super) fn outbound(
    config: &Config,
    key: Option<&UpstreamKey>,
    client: &RequestHeader,
    body_len: usize,
) -> Result<Outbound, ApiError> {
    let endpoint = config.upstream.endpoint();
    let path_and_query = client
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let target = format!("{}{}", endpoint.base_path, path_and_query);
    let mut request = base_request(
        client,
        &target,
        &endpoint.authority(),
        body_len,
        key.is_none(),
    )?;
    if let Some(value) = key.map(UpstreamKey::header) {
        request
            .insert_header("x-api-key", value)
            .map_err(super::internal)?;
    }
    Ok(Outbound { endpoint, request })
}
