//! Google Vertex AI under `[vertex] prefix`: what Claude Code sends with
//! `CLAUDE_CODE_USE_VERTEX=1`, `ANTHROPIC_VERTEX_BASE_URL=http://<proxy>/vertex/v1` and
//! `CLAUDE_CODE_SKIP_VERTEX_AUTH=1`, and what the SDKs' Vertex clients send.
//!
//! Routes (below the prefix):
//! `POST /v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict`
//! (JSON), `…:streamRawPredict` (Anthropic SSE) and `…/models/count-tokens:rawPredict`. Bodies
//! carry `anthropic_version` and no `model`; responses are the first-party API's JSON and SSE,
//! masked by the same paths.
//!
//! Invariants:
//! - the upstream host is `{location}-aiplatform.googleapis.com` (`aiplatform.googleapis.com`
//!   for `global`) for a location that is a plain region name, or `[vertex] endpoint`;
//! - every request carries the proxy's OAuth token; the caller's credential never goes
//!   upstream.

use super::{
    base_request, credentials_unavailable, decoded_segment, upstream_target, Outbound, Routed,
    Target as AnyTarget,
};
use crate::anthropic::api::{ApiError, Provider, Route};
use crate::config::clouds::{is_region_name, Vertex as Settings};
use crate::config::Endpoint;
use crate::policy::google::GoogleTokens;
use pingora::http::RequestHeader;
use std::sync::Arc;

#[derive(Clone)]
pub(super) struct Vertex {
    settings: Settings,
    tokens: Arc<GoogleTokens>,
}

#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Path below the prefix, as the client wrote it.
    path: String,
    location: String,
}

impl Vertex {
    pub fn new(settings: Settings) -> Vertex {
        Vertex {
            tokens: GoogleTokens::new(settings.credentials_file.clone()),
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn route(&self, method: &str, rest: &str) -> Option<Routed> {
        if method != "POST" {
            return None;
        }
        let mut segments = rest.strip_prefix('/')?.split('/');
        let version = segments.next()?;
        if !matches!(version, "v1" | "v1beta1") {
            return None;
        }
        let expect = |segment: Option<&str>, want: &str| segment == Some(want);
        if !expect(segments.next(), "projects") {
            return None;
        }
        let project = segments.next()?;
        if project.is_empty() || !expect(segments.next(), "locations") {
            return None;
        }
        let location = segments.next()?;
        if !is_region_name(location)
            || !expect(segments.next(), "publishers")
            || !expect(segments.next(), "anthropic")
            || !expect(segments.next(), "models")
        {
            return None;
        }
        let (model, method_name) = segments.next()?.rsplit_once(':')?;
        if segments.next().is_some() || model.is_empty() {
            return None;
        }
        let (route, stream, model) = match (model, method_name) {
            ("count-tokens", "rawPredict") => (Route::CountTokens, Some(false), None),
            (model, "rawPredict") => (Route::Messages, Some(false), Some(model)),
            (model, "streamRawPredict") => (Route::Messages, Some(true), Some(model)),
            _ => return None,
        };
        Some(Routed {
            provider: Provider::Vertex,
            route,
            path_model: model.map(decoded_segment),
            stream,
            target: AnyTarget::Vertex(Target {
                path: rest.to_string(),
                location: location.to_string(),
            }),
        })
    }

    pub async fn outbound(
        &self,
        target: &Target,
        client: &RequestHeader,
        body: &[u8],
    ) -> Result<Outbound, ApiError> {
        let authorization = self
            .tokens
            .authorization()
            .await
            .map_err(|error| credentials_unavailable(Provider::Vertex, &error.to_string()))?;
        let endpoint = match &self.settings.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => public_endpoint(&target.location),
        };
        let path_and_query = upstream_target(&endpoint, &target.path, client);
        let mut request = base_request(
            client,
            &path_and_query,
            &endpoint.authority(),
            body.len(),
            false,
        )?;
        request
            .insert_header(http::header::AUTHORIZATION, authorization)
            .map_err(super::internal)?;
        Ok(Outbound { endpoint, request })
    }
}

/// Google's own endpoint for `location` (a checked region name, or `global`).
fn public_endpoint(location: &str) -> Endpoint {
    Endpoint {
        tls: true,
        host: if location == "global" {
            "aiplatform.googleapis.com".to_string()
        } else {
            format!("{location}-aiplatform.googleapis.com")
        },
        port: 443,
        base_path: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_endpoints_are_per_location() {
        assert_eq!(
            public_endpoint("us-east5").authority(),
            "us-east5-aiplatform.googleapis.com"
        );
        assert_eq!(
            public_endpoint("global").authority(),
            "aiplatform.googleapis.com"
        );
        assert!(public_endpoint("europe-west1").tls);
    }

    #[test]
    fn routes_name_the_model_and_the_location() {
        let vertex = Vertex::new(Settings {
            prefix: "/vertex".into(),
            endpoint: None,
            credentials_file: None,
        });
        let base = "/v1/projects/p-1/locations/us-east5/publishers/anthropic/models";
        let r = vertex
            .route(
                "POST",
                &format!("{base}/claude-sonnet-4-5@20250929:streamRawPredict"),
            )
            .expect("routed");
        assert_eq!((r.route, r.stream), (Route::Messages, Some(true)));
        assert_eq!(r.path_model.as_deref(), Some("claude-sonnet-4-5@20250929"));
        let r = vertex
            .route("POST", &format!("{base}/count-tokens:rawPredict"))
            .expect("routed");
        assert_eq!(r.route, Route::CountTokens);
        assert!(vertex.route("POST", &format!("{base}/m:predict")).is_none());
        assert!(vertex
            .route("GET", &format!("{base}/m:rawPredict"))
            .is_none());
        let evil = "/v1/projects/p/locations/evil.com:443/publishers/anthropic/models/m:rawPredict";
        assert!(vertex.route("POST", evil).is_none());
    }
}
