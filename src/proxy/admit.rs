//! Admission: everything decided about a request before a byte of it goes upstream — its
//! route, its caller and profile, its body (read whole, size-limited, decoded) and what the
//! rules say about it (block, mask or forward as it came).
//!
//! Invariants:
//! - anything but a known route is a 404, never an unscanned pass-through;
//! - the caller is identified before the body is read, and the body limit is the profile's;
//! - the body is scanned in the form the upstream will read it (decoded), and what goes
//!   upstream is either the bytes scanned (no rewritten finding) or the walker's rewrite;
//! - every refusal is an Anthropic-shaped error whose message carries rule ids and sizes, never
//!   request content;
//! - thinking text is masked like any other text, except that a `thinking` block whose
//!   signature the thinking vault knows, and whose text is exactly what the client was shown,
//!   gets its original back (the upstream's own text, so its signature verifies). A vault
//!   that fails or is off (`thinking = "mask"`) leaves every thinking block masked: raw client
//!   thinking is never forwarded.

use super::encoding::{decode_body, EncodingError};
use super::headers::{header_str, is_json_content_type};
use super::metadata::scan_metadata;
use super::{ProxyState, RequestCtx};
use crate::anthropic::api::{request_model, route, ApiError, ErrorKind, Route};
use crate::anthropic::thinking_vault::{thinking_signatures, VaultRestore};
use crate::engine::json_walk::{mask_json_with, ThinkingMode, WalkOptions};
use crate::engine::{Action, Engine, Scope, ThinkingRestore};
use crate::exchange::Outcome;
use crate::policy::auth::AuthFailure;
use crate::policy::identity::Identity;
use crate::policy::profiles::Profile;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// A request the proxy will forward: where, and the body to send (decoded and masked).
pub(super) struct Admitted {
    pub route: Route,
    pub body: Vec<u8>,
}

/// Route, authenticate, read and judge the request. On success the body is ready to forward.
pub(super) async fn admit(
    state: &ProxyState,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Admitted, ApiError> {
    let exchange = &mut ctx.exchange;
    exchange.method = session.req_header().method.as_str().to_string();
    // The session id is kept in the audit record: only when nothing in it is a finding (the
    // header is refused below anyway, but the record of that refusal must not hold it).
    let session_id = header_str(session, "x-claude-code-session-id").filter(|id| {
        state
            .engine
            .scan(id, Scope::Request)
            .is_ok_and(|f| f.is_empty())
    });
    exchange.set_session_id(session_id);
    let path = session.req_header().uri.path();
    let Some(route) = route(
        &exchange.method,
        path,
        &state.config.extra_passthrough_prefixes,
    ) else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "streammask: this endpoint is not served by the proxy",
        ));
    };
    exchange.route = Some(route);
    // Identify the caller before reading a byte of the body.
    let profile = authenticate(state, session, ctx).await?;
    let request = session.req_header();
    match scan_metadata(&profile.engine, &request.uri, &request.headers) {
        Ok(findings) => ctx.exchange.request_findings = findings,
        Err(refused) => {
            ctx.exchange.request_findings = refused.findings;
            if !refused.rule_id.is_empty() {
                ctx.exchange.blocked_rule = Some(refused.rule_id);
            }
            return Err(refused.error);
        }
    }
    let raw = read_body(session, profile.max_body_bytes).await?;
    ctx.exchange.bytes_in = raw.len();
    if let Some(refused) = state.auditor.as_ref().and_then(|a| a.refusal()) {
        return Err(refused);
    }
    let encoding = header_str(session, "content-encoding");
    let body = decode_body(raw, encoding, profile.max_body_bytes).map_err(encoding_error)?;
    // The model list is checked on the body as the client sent it, once the walker has
    // refused what readers could disagree on (invalid JSON, duplicate keys).
    let restore = thinking_restore(state, &profile.engine, &body).await;
    let forwarded = judge_body(
        session,
        ctx,
        &profile.engine,
        route,
        &body,
        restore.as_ref().map(|r| r as &dyn ThinkingRestore),
    )?;
    if !profile.allows_request_models(route, &body) {
        ctx.exchange.auth_failure = Some(AuthFailure::ModelNotAllowed);
        return Err(ApiError::new(
            ErrorKind::Permission,
            format!(
                "streammask: profile `{}` may not use this model, or the request does not \
                 name its model where the proxy can check it",
                profile.name
            ),
        ));
    }
    let body = forwarded.unwrap_or(body);
    Ok(Admitted { route, body })
}

/// Authenticate the caller, record its identity and choose its profile.
async fn authenticate(
    state: &ProxyState,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<Arc<Profile>, ApiError> {
    let security = &state.security;
    let caller = match security
        .auth
        .authenticate(&session.req_header().headers)
        .await
    {
        Ok(caller) => caller,
        Err(refused) => {
            ctx.exchange.auth_failure = Some(refused.reason);
            let kind = match refused.status {
                401 => ErrorKind::Authentication,
                403 => ErrorKind::Permission,
                _ => ErrorKind::Api,
            };
            return Err(ApiError::new(kind, refused.message).with_status(refused.status));
        }
    };
    let profile = Arc::clone(security.policy.profile_for(&caller.groups));
    ctx.exchange.caller = Some(Arc::new(Identity {
        subject: caller.subject,
        groups: caller.groups,
        profile: profile.name.clone(),
    }));
    ctx.profile = Some(Arc::clone(&profile));
    Ok(profile)
}

/// Read the whole request body, refusing more than `limit` bytes.
async fn read_body(session: &mut Session, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::RequestTooLarge,
            format!("streammask: request body exceeds the limit of {limit} bytes"),
        )
    };
    if let Some(length) = header_str(session, "content-length") {
        match length.trim().parse::<usize>() {
            Ok(length) if length > limit => return Err(too_large()),
            Ok(_) => {}
            Err(_) => {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    "streammask: invalid Content-Length",
                ))
            }
        }
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "streammask: the request body could not be read (truncated or malformed framing)",
            )),
        }
    }
}

/// The originals the thinking vault holds for the signatures in `body`, as the walker's
/// restore hook; `None` when there is no vault, no signature, or the vault failed (every
/// thinking block is then masked).
async fn thinking_restore<'e>(
    state: &ProxyState,
    engine: &'e Engine,
    body: &[u8],
) -> Option<VaultRestore<'e>> {
    let vault = state.thinking_vault.as_ref()?;
    // Cheap check first: most requests carry no signed block.
    memchr::memmem::find(body, b"\"signature\"")?;
    let signatures = thinking_signatures(body);
    if signatures.is_empty() {
        return None;
    }
    match vault.fetch(&signatures).await {
        Ok(fetched) => {
            let restore = VaultRestore::new(engine, signatures, fetched);
            tracing::debug!(known = restore.known(), "thinking originals fetched");
            Some(restore)
        }
        Err(error) => {
            tracing::warn!(%error, "thinking vault unavailable: thinking in this request stays masked");
            None
        }
    }
}

fn encoding_error(error: EncodingError) -> ApiError {
    match error {
        EncodingError::Unsupported(coding) => ApiError::new(
            ErrorKind::InvalidRequest,
            format!("streammask: unsupported Content-Encoding {coding:?}"),
        )
        .with_status(415),
        EncodingError::Invalid(coding) => ApiError::new(
            ErrorKind::InvalidRequest,
            format!("streammask: the request body is not valid {coding}"),
        ),
        EncodingError::TooLarge(limit) => ApiError::new(
            ErrorKind::RequestTooLarge,
            format!("streammask: decompressed request body exceeds the limit of {limit} bytes"),
        ),
    }
}

/// Scan the body and decide: refuse it (a `block` finding, or a finding where no placeholder
/// fits), forward the walker's rewrite (`Some`, masked findings) or forward it as it is
/// (`None`). Thinking is masked unless `restore` gives its original back.
fn judge_body(
    session: &Session,
    ctx: &mut RequestCtx,
    engine: &Engine,
    route: Route,
    body: &[u8],
    restore: Option<&dyn ThinkingRestore>,
) -> Result<Option<Vec<u8>>, ApiError> {
    let exchange = &mut ctx.exchange;
    if body.is_empty() {
        if exchange.method == "POST" && matches!(route, Route::Messages | Route::CountTokens) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "streammask: the request body is empty",
            ));
        }
        return Ok(None);
    }
    if !is_json_content_type(header_str(session, "content-type")) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "streammask: the request body must be JSON (Content-Type: application/json)",
        )
        .with_status(415));
    }
    let masking = Instant::now();
    let options = WalkOptions {
        scope: Scope::Request,
        thinking: ThinkingMode::Mask,
        lenient: false,
    };
    let walked = mask_json_with(engine, body, &options, restore);
    exchange.masking += masking.elapsed();
    exchange.model = request_model(body);
    let walked = walked.map_err(|err| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("streammask: the request body is not valid JSON: {err}"),
        )
    })?;
    exchange.request_findings.append(walked.findings);
    if let Some(refusal) = walked.refusals.first() {
        let rule_id = refusal.finding.rule_id.clone();
        let description = engine.rule_description(&rule_id);
        // A path is made of the client's keys, and a key can itself be a secret.
        let path = engine.redact(&refusal.path, Scope::Request);
        let message = format!(
            "streammask refused this request: `{path}` holds what rule `{rule_id}` ({description}) \
             masks, and that field cannot carry a placeholder; remove it and send the request again"
        );
        exchange.blocked_rule = Some(rule_id);
        exchange.request_findings.append(walked.refusals);
        return Err(ApiError::new(ErrorKind::InvalidRequest, message));
    }
    if let Some(blocking) = exchange.request_findings.first_with(Action::Block) {
        let rule_id = blocking.finding.rule_id.clone();
        let description = engine.rule_description(&rule_id);
        let message =
            format!("streammask blocked this request: it matched rule `{rule_id}` ({description})");
        exchange.blocked_rule = Some(rule_id);
        return Err(ApiError::new(ErrorKind::Permission, message));
    }
    if walked.body.is_some() {
        exchange.outcome = Outcome::Masked;
    }
    Ok(walked.body)
}
