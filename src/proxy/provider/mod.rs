//! Providers: the ways a client reaches Claude through the proxy — the first-party API
//! ([`anthropic`]), Amazon Bedrock ([`bedrock`]) and Google Vertex AI ([`vertex`]).
//!
//! A provider owns four things and nothing else: which paths are its routes (and what each
//! means: the Messages route, streamed or not, the model its path names), how a request body
//! is unwrapped for masking and wrapped again (Bedrock's count-tokens carries the Messages
//! body base64-encoded), where the request goes and how it is authorised upstream (the org's
//! API key, SigV4, a Google OAuth token), and how the response body is framed (SSE, AWS
//! event-stream). Masking, policy, approvals, restore, audit and metrics are shared and
//! labelled with the provider. Adding a provider is one module here and a variant of
//! [`Provider`].
//!
//! Invariants:
//! - a path no provider claims is a 404 (see [`crate::anthropic::api::route`]);
//! - the caller's credential headers never go upstream to a cloud provider: the proxy's own
//!   signature or token replaces them;
//! - a cloud host is built only from a validated region or location name (never from text
//!   that could add a host or a port), or comes from the configured endpoint override.

mod anthropic;
mod bedrock;
mod vertex;

use super::headers::copied_headers;
use super::metadata::{forwarded_headers, is_credential};
use crate::anthropic::api::{ApiError, ErrorKind, Provider, Route};
use crate::config::{Config, Endpoint};
use http::header::{self, HeaderValue};
use pingora::http::RequestHeader;

/// A request a provider claimed.
#[derive(Debug, Clone)]
pub(super) struct Routed {
    pub provider: Provider,
    pub route: Route,
    /// The model the path names (Bedrock, Vertex), percent-decoded, for policy and records.
    pub path_model: Option<String>,
    /// Whether the path asks for a streamed response (`None`: the body says, `stream: true`).
    pub stream: Option<bool>,
    target: Target,
}

/// What a provider needs to send a routed request on.
#[derive(Debug, Clone)]
enum Target {
    Anthropic,
    Bedrock(bedrock::Target),
    Vertex(vertex::Target),
}

/// Where a request goes and the header it goes with (the body is sent as is).
pub(super) struct Outbound {
    pub endpoint: Endpoint,
    pub request: RequestHeader,
}

/// The providers of one configuration snapshot: the first-party API always, the clouds when
/// enabled. The cloud identities live here and are shared by the snapshots of later reloads
/// unless their section changed.
pub(super) struct Providers {
    bedrock: Option<bedrock::Bedrock>,
    vertex: Option<vertex::Vertex>,
}

impl Providers {
    pub fn new(config: &Config) -> Providers {
        Providers {
            bedrock: config.bedrock.clone().map(bedrock::Bedrock::new),
            vertex: config.vertex.clone().map(vertex::Vertex::new),
        }
    }

    /// The providers for `config` after a reload: cloud identities (and their cached
    /// credentials) are kept when their section is unchanged.
    pub fn reloaded(&self, config: &Config) -> Providers {
        let bedrock = match (&self.bedrock, &config.bedrock) {
            (Some(old), Some(new)) if old.settings() == new => Some(old.clone()),
            (_, new) => new.clone().map(bedrock::Bedrock::new),
        };
        let vertex = match (&self.vertex, &config.vertex) {
            (Some(old), Some(new)) if old.settings() == new => Some(old.clone()),
            (_, new) => new.clone().map(vertex::Vertex::new),
        };
        Providers { bedrock, vertex }
    }

    /// The provider and route of `method path` (path without query), if any claims it.
    pub fn route(&self, method: &str, path: &str, config: &Config) -> Option<Routed> {
        if let Some(bedrock) = &self.bedrock {
            if let Some(rest) = under_prefix(path, &bedrock.settings().prefix) {
                return bedrock.route(method, rest);
            }
        }
        if let Some(vertex) = &self.vertex {
            if let Some(rest) = under_prefix(path, &vertex.settings().prefix) {
                return vertex.route(method, rest);
            }
        }
        anthropic::route(method, path, &config.extra_passthrough_prefixes)
    }

    /// The body the walker masks: what the provider's envelope carries (the body itself for
    /// every route but Bedrock's count-tokens).
    pub fn unwrap_body(&self, routed: &Routed, body: Vec<u8>) -> Result<Vec<u8>, ApiError> {
        match &routed.target {
            Target::Bedrock(target) => bedrock::unwrap_body(target, body),
            _ => Ok(body),
        }
    }

    /// The body as the upstream expects it, from the masked body [`Providers::unwrap_body`]
    /// gave out.
    pub fn wrap_body(&self, routed: &Routed, body: Vec<u8>) -> Vec<u8> {
        match &routed.target {
            Target::Bedrock(target) => bedrock::wrap_body(target, body),
            _ => body,
        }
    }

    /// The upstream request for `client`'s, with `body` (final, masked): where it goes and its
    /// header, authorised with the proxy's credential for the provider.
    pub async fn outbound(
        &self,
        routed: &Routed,
        config: &Config,
        key: Option<&crate::policy::credentials::UpstreamKey>,
        client: &RequestHeader,
        body: &[u8],
    ) -> Result<Outbound, ApiError> {
        // The cloud providers' futures (credential chains, token fetches) are boxed: inline
        // they made every request's future 12 KiB, first-party ones included, and a burst of
        // new streams holds that many at once.
        match &routed.target {
            Target::Anthropic => anthropic::outbound(config, key, client, body.len()),
            Target::Bedrock(target) => match &self.bedrock {
                Some(bedrock) => Box::pin(bedrock.outbound(target, client, body)).await,
                None => Err(not_served()),
            },
            Target::Vertex(target) => match &self.vertex {
                Some(vertex) => Box::pin(vertex.outbound(target, client, body)).await,
                None => Err(not_served()),
            },
        }
    }
}

fn not_served() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "streammask: this endpoint is not served by the proxy",
    )
}

/// `path` below `prefix` (`"/model/x/invoke"` of `"/bedrock/model/x/invoke"`), if it is.
fn under_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The upstream request header every provider starts from: the client's method, the target
/// path, its end-to-end headers (its credential headers only when `keep_credentials`), the
/// upstream's `Host`, `Accept-Encoding: identity` (so every byte can be scanned) and the
/// body's length.
fn base_request(
    client: &RequestHeader,
    target: &str,
    authority: &str,
    body_len: usize,
    keep_credentials: bool,
) -> Result<RequestHeader, ApiError> {
    // Made a `RequestHeader` (no case-preserving name map) once its map is whole; the
    // upstream session keeps it for the life of a stream.
    let forwarded = forwarded_headers(&client.headers)
        .filter(|(name, _)| keep_credentials || !is_credential(name));
    let mut headers = copied_headers(forwarded, client.headers.len() + 6).map_err(internal)?;
    let authority = HeaderValue::from_str(authority).map_err(internal)?;
    headers
        .try_insert(header::HOST, authority)
        .map_err(internal)?;
    headers
        .try_insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )
        .map_err(internal)?;
    if body_len > 0 || client.method == http::Method::POST {
        headers
            .try_insert(header::CONTENT_LENGTH, HeaderValue::from(body_len))
            .map_err(internal)?;
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = client.method.clone();
    parts.headers = headers;
    let mut request = RequestHeader::from(parts);
    // The target as bytes, as `RequestHeader::build` takes it.
    request.set_raw_path(target.as_bytes()).map_err(internal)?;
    Ok(request)
}

fn internal<E>(_: E) -> ApiError {
    ApiError::new(
        ErrorKind::Api,
        "streammask: could not build the upstream request",
    )
}

/// The 502 for a cloud credential the proxy could not get; `why` names the failure, never a
/// secret.
fn credentials_unavailable(provider: Provider, why: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Api,
        format!(
            "streammask: the proxy could not authorise this request to {}: {why}",
            match provider {
                Provider::Anthropic => "the Claude API",
                Provider::Bedrock => "Amazon Bedrock",
                Provider::Vertex => "Vertex AI",
            }
        ),
    )
    .with_status(502)
}

/// `endpoint`'s base path, then `path` (below a provider's prefix, as the client wrote it),
/// then the client's query string.
fn upstream_target(endpoint: &Endpoint, path: &str, client: &RequestHeader) -> String {
    match client.uri.query() {
        Some(query) => format!("{}{path}?{query}", endpoint.base_path),
        None => format!("{}{path}", endpoint.base_path),
    }
}

/// A path segment the client wrote, decoded for policy and records (the raw one is forwarded).
fn decoded_segment(segment: &str) -> String {
    super::metadata::percent_decode(segment.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert_eq!(
            under_prefix("/bedrock/model/x", "/bedrock"),
            Some("/model/x")
        );
        assert_eq!(under_prefix("/bedrock", "/bedrock"), Some(""));
        assert_eq!(under_prefix("/bedrockx/model", "/bedrock"), None);
        assert_eq!(under_prefix("/v1/messages", "/bedrock"), None);
    }
}
