//! Amazon Bedrock under `[bedrock] prefix`: what Claude Code sends with
//! `CLAUDE_CODE_USE_BEDROCK=1`, `ANTHROPIC_BEDROCK_BASE_URL=http://<proxy>/bedrock` and
//! `CLAUDE_CODE_SKIP_BEDROCK_AUTH=1`, and what the SDKs' Bedrock clients send.
//!
//! Routes (below the prefix): `POST /model/{modelId}/invoke` (a Messages request answered
//! with JSON), `POST /model/{modelId}/invoke-with-response-stream` (answered with AWS
//! event-stream frames, masked by [`crate::anthropic::bedrock`]), `POST
//! /model/{modelId}/count-tokens` (the Messages body travels base64-encoded in
//! `input.invokeModel.body`: it is decoded for masking and encoded again), and `GET
//! /inference-profiles` (the control-plane listing Claude Code asks for at start).
//!
//! Invariants:
//! - the model id is forwarded as the client wrote it (inference-profile ids and ARNs,
//!   percent-encoded or not) and checked against the caller's model policy decoded;
//! - the request is signed with SigV4 (service `bedrock`) over the exact bytes sent — the
//!   masked body — and the exact path and host; or carries the org's Bedrock API key;
//! - the caller's `Authorization`/`x-api-key` (their identity towards the proxy) and any
//!   `x-amz-*` signing header they sent never go upstream.

use super::{
    base_request, credentials_unavailable, decoded_segment, upstream_target, Outbound, Routed,
    Target as AnyTarget,
};
use crate::anthropic::api::{ApiError, ErrorKind, Provider, Route};
use crate::config::clouds::{is_region_name, Bedrock as Settings};
use crate::config::Endpoint;
use crate::policy::aws::{sign, AwsCredentials, BedrockAuth, Signable};
use base64::Engine as _;
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::time::SystemTime;

/// The Bedrock provider of a snapshot: settings and the shared AWS identity.
#[derive(Clone)]
pub(super) struct Bedrock {
    settings: Settings,
    credentials: Arc<AwsCredentials>,
}

/// Where a Bedrock request goes below the endpoint.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Path and query below the prefix, as the client wrote them.
    path_and_query: String,
    /// The control plane (`bedrock.<region>`) rather than the runtime (`bedrock-runtime.`).
    control: bool,
    /// A count-tokens body: the Messages body is base64 inside the request.
    count_tokens: bool,
}

impl Bedrock {
    pub fn new(settings: Settings) -> Bedrock {
        Bedrock {
            credentials: AwsCredentials::new(settings.aws.clone()),
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `rest` is the path below the prefix; its query is taken from the request later.
    pub fn route(&self, method: &str, rest: &str) -> Option<Routed> {
        let routed = |route, model: Option<&str>, stream, control, count_tokens| Routed {
            provider: Provider::Bedrock,
            route,
            path_model: model.map(decoded_segment),
            stream,
            target: AnyTarget::Bedrock(Target {
                path_and_query: rest.to_string(),
                control,
                count_tokens,
            }),
        };
        if method == "GET"
            && (rest == "/inference-profiles" || rest.starts_with("/inference-profiles/"))
        {
            return Some(routed(Route::Models, None, None, true, false));
        }
        let model_path = rest.strip_prefix("/model/")?;
        let (model, action) = model_path.rsplit_once('/')?;
        if model.is_empty() || model.contains('/') || method != "POST" {
            return None;
        }
        match action {
            "invoke" => Some(routed(
                Route::Messages,
                Some(model),
                Some(false),
                false,
                false,
            )),
            "invoke-with-response-stream" => Some(routed(
                Route::Messages,
                Some(model),
                Some(true),
                false,
                false,
            )),
            "count-tokens" => Some(routed(
                Route::CountTokens,
                Some(model),
                Some(false),
                false,
                true,
            )),
            _ => None,
        }
    }

    pub async fn outbound(
        &self,
        target: &Target,
        client: &RequestHeader,
        body: &[u8],
    ) -> Result<Outbound, ApiError> {
        let (auth, region) = self
            .credentials
            .authorise()
            .await
            .map_err(|error| credentials_unavailable(Provider::Bedrock, &error.to_string()))?;
        let configured = if target.control {
            &self.settings.control_endpoint
        } else {
            &self.settings.runtime_endpoint
        };
        let endpoint = match (configured, region.as_deref()) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(region)) if is_region_name(region) => {
                public_endpoint(region, target.control)
            }
            _ => {
                return Err(credentials_unavailable(
                    Provider::Bedrock,
                    "no valid AWS region is configured ([bedrock] region or AWS_REGION)",
                ))
            }
        };
        let path_and_query = upstream_target(&endpoint, &target.path_and_query, client);
        let authority = endpoint.authority();
        let mut request = base_request(client, &path_and_query, &authority, body.len(), false)?;
        match auth {
            BedrockAuth::ApiKey(value) => {
                request
                    .insert_header(http::header::AUTHORIZATION, value)
                    .map_err(super::internal)?;
            }
            BedrockAuth::SigV4(credentials) => {
                let region = region.unwrap_or_default();
                let content_type = client
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                let mut signed: Vec<(&str, &str)> = vec![("host", authority.as_str())];
                if let Some(content_type) = content_type {
                    signed.push(("content-type", content_type));
                }
                let request_to_sign = Signable {
                    method: client.method.as_str(),
                    path_and_query: &path_and_query,
                    headers: &signed,
                    body,
                };
                let headers = sign(
                    &credentials,
                    &region,
                    "bedrock",
                    request_to_sign,
                    SystemTime::now(),
                )
                .map_err(|error| credentials_unavailable(Provider::Bedrock, &error.to_string()))?;
                for (name, value) in headers {
                    request
                        .insert_header(name, value)
                        .map_err(super::internal)?;
                }
            }
        }
        Ok(Outbound { endpoint, request })
    }
}

/// AWS's own endpoint in `region` (a checked region name): the runtime, or the control plane.
fn public_endpoint(region: &str, control: bool) -> Endpoint {
    let service = if control {
        "bedrock"
    } else {
        "bedrock-runtime"
    };
    Endpoint {
        tls: true,
        host: format!("{service}.{region}.amazonaws.com"),
        port: 443,
        base_path: String::new(),
    }
}

/// The masked-for body of a count-tokens request: the Messages body inside
/// `input.invokeModel.body` (base64), or the request as it is when it has no such envelope
/// (the Converse form is JSON the walker reads directly).
pub(super) fn unwrap_body(target: &Target, body: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    if !target.count_tokens {
        return Ok(body);
    }
    let Ok(serde_json::Value::Object(top)) = serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return Ok(body);
    };
    let Some(inner) = top
        .get("input")
        .and_then(|input| input.get("invokeModel"))
        .and_then(|invoke| invoke.get("body"))
    else {
        return Ok(body);
    };
    let decoded = inner
        .as_str()
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                "streammask: input.invokeModel.body of a count-tokens request must be base64 \
                 of a JSON Messages body",
            )
        })?;
    Ok(decoded)
}

/// The count-tokens envelope around the masked Messages body.
pub(super) fn wrap_body(target: &Target, body: Vec<u8>) -> Vec<u8> {
    if !target.count_tokens || body.first() != Some(&b'{') || is_envelope(&body) {
        return body;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&body);
    serde_json::json!({"input": {"invokeModel": {"body": encoded}}})
        .to_string()
        .into_bytes()
}

/// Whether `body` is a count-tokens envelope itself (the Converse form, forwarded as walked).
fn is_envelope(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|value| value.get("input").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::aws::AwsSettings;

    fn bedrock() -> Bedrock {
        Bedrock::new(Settings {
            prefix: "/bedrock".into(),
            runtime_endpoint: None,
            control_endpoint: None,
            aws: AwsSettings::default(),
        })
    }

    #[test]
    fn routes_keep_the_model_as_written_and_decode_it_for_policy() {
        let b = bedrock();
        let r = b
            .route(
                "POST",
                "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
            )
            .expect("routed");
        assert_eq!(r.route, Route::Messages);
        assert_eq!(r.stream, Some(true));
        assert_eq!(
            r.path_model.as_deref(),
            Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
        );
        let AnyTarget::Bedrock(target) = &r.target else {
            panic!("bedrock target")
        };
        assert!(target.path_and_query.contains("v1%3A0"));
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Aapplication-inference-profile%2Fabc/invoke";
        let r = b.route("POST", arn).expect("an ARN is one segment");
        assert_eq!(r.stream, Some(false));
        assert!(r
            .path_model
            .as_deref()
            .is_some_and(|m| m.starts_with("arn:aws:bedrock")));
        assert!(b.route("POST", "/model/x/converse").is_none());
        assert!(b.route("GET", "/model/x/invoke").is_none());
        assert!(b.route("POST", "/model//invoke").is_none());
        assert_eq!(
            b.route("GET", "/inference-profiles").map(|r| r.route),
            Some(Route::Models)
        );
        assert_eq!(
            b.route("POST", "/model/m/count-tokens").map(|r| r.route),
            Some(Route::CountTokens)
        );
    }

    #[test]
    fn public_endpoints_are_per_region() {
        let runtime = public_endpoint("eu-west-3", false);
        assert_eq!(
            (runtime.host.as_str(), runtime.port, runtime.tls),
            ("bedrock-runtime.eu-west-3.amazonaws.com", 443, true)
        );
        assert_eq!(
            public_endpoint("us-east-1", true).authority(),
            "bedrock.us-east-1.amazonaws.com"
        );
    }

    #[test]
    fn a_count_tokens_body_is_unwrapped_for_masking_and_wrapped_again() {
        let target = Target {
            path_and_query: "/model/m/count-tokens".into(),
            control: false,
            count_tokens: true,
        };
        let inner = br#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#.to_vec();
        let wrapped = wrap_body(&target, inner.clone());
        assert_eq!(
            unwrap_body(&target, wrapped.clone()).expect("unwraps"),
            inner
        );
        assert_eq!(
            wrap_body(
                &target,
                unwrap_body(&target, wrapped.clone()).expect("unwraps")
            ),
            wrapped
        );
        let bad = br#"{"input":{"invokeModel":{"body":"%%%"}}}"#.to_vec();
        assert!(unwrap_body(&target, bad).is_err());
        let converse = br#"{"input":{"converse":{"messages":[]}}}"#.to_vec();
        assert_eq!(
            unwrap_body(&target, converse.clone()).expect("passes through"),
            converse
        );
        assert_eq!(wrap_body(&target, converse.clone()), converse);
    }
}
