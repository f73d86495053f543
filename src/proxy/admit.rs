//! Admission: everything decided about a request before a byte of it goes upstream — its
//! route, its caller and profile, its body (read whole, size-limited, decoded) and what the
//! rules say about it (block, mask or forward as it came).
//!
//! Invariants:
//! - anything but a known route is a 404, never an unscanned pass-through;
//! - the caller is identified before the body is read, and the body limit is the profile's;
//! - the body is scanned in the form the upstream will read it (decoded), and what goes
//!   upstream is either the bytes scanned (no rewritten finding) or the walker's rewrite;
//! - a request with `approve` findings goes on only on approved grants ([`super::approve`]),
//!   decided after blocks and model policy, before anything is remembered for restore;
//! - every refusal is an Anthropic-shaped error whose message carries rule ids and sizes, never
//!   request content;
//! - thinking text is masked like any other text, except that a `thinking` block whose
//!   signature the thinking vault knows, and whose text is exactly what the client was shown,
//!   gets its original back (the upstream's own text, so its signature verifies). A vault
//!   that fails or is off (`thinking = "mask"`) leaves every thinking block masked: raw client
//!   thinking is never forwarded;
//! - masking is linear in the body and bounded in time: a body of at least
//!   `[masking] offload_bytes` is masked on the masking pool's `[masking] offload_threads`
//!   lower-priority workers (the event loop only awaits it, so small requests on the same
//!   worker are not held up; the wait for a worker is bounded by the budget, then a 529),
//!   smaller bodies inline; either way the walk is charged to a budget of
//!   `[masking] max_scan_ms` and a body that exhausts it is refused with a 422, never
//!   forwarded unscanned and never left to stall a thread. Both paths run the same
//!   [`walk_body`], so they produce the same bytes.

use super::encoding::{decode_body, EncodingError};
use super::headers::{header_str, is_json_content_type};
use super::masking_pool::{MaskingPool, PoolRefusal};
use super::metadata::scan_metadata;
use super::provider::Routed;
use super::{ProxyState, RequestCtx};
use crate::anthropic::api::{request_model, ApiError, ErrorKind, Route};
use crate::anthropic::thinking_vault::{thinking_signatures, VaultRestore};
use crate::engine::json_strings::for_each_string;
use crate::engine::json_walk::{mask_json_learning, ThinkingMode, WalkError, WalkOptions, Walked};
use crate::engine::masker::Budget;
use crate::engine::{Action, Engine, MaskError, Scope, ThinkingRestore};
use crate::exchange::Outcome;
use crate::policy::auth::AuthFailure;
use crate::policy::identity::Identity;
use crate::policy::profiles::Profile;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request the proxy will forward: where, and the body to send (decoded and masked).
pub(super) struct Admitted {
    pub routed: Routed,
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
    let Some(routed) = state.providers.route(&exchange.method, path, &state.config) else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "streammask: this endpoint is not served by the proxy",
        ));
    };
    let route = routed.route;
    exchange.route = Some(route);
    exchange.provider = routed.provider;
    exchange.model = routed.path_model.clone();
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
    let body = state.providers.unwrap_body(&routed, body)?;
    // The model list is checked on the body as the client sent it, once the walker has
    // refused what readers could disagree on (invalid JSON, duplicate keys).
    let originals = thinking_originals(state, &body).await;
    let (body, forwarded, learned) = if needs_walk(session, &ctx.exchange.method, route, &body)? {
        let limits = MaskingLimits {
            offload_bytes: state.config.offload_bytes,
            budget_ms: state.config.max_scan_ms,
        };
        let engine = Arc::clone(&profile.engine);
        let learn = state.restore.is_some() && profile.restore;
        let (body, walked, took, exchange_engine) =
            mask_body(&state.masking_pool, limits, engine, body, originals, learn)
                .await
                .map_err(|refusal| {
                    ctx.exchange.masking_pool_busy = matches!(refusal, PoolRefusal::Busy { .. });
                    pool_refusal_error(refusal)
                })?;
        ctx.exchange.masking += took;
        ctx.exchange_engine = exchange_engine;
        if let Some(model) = request_model(&body) {
            ctx.exchange.model = Some(model);
        }
        let mut walked = walked;
        let learned = walked
            .as_mut()
            .map(|w| super::restore::Learning {
                learned: std::mem::take(&mut w.learned),
                signed_thinking: std::mem::take(&mut w.signed_thinking),
            })
            .unwrap_or_default();
        let forwarded = judge_body(ctx, &profile.engine, walked)?;
        (body, forwarded, learned)
    } else {
        (body, None, Default::default())
    };
    let path_model_allowed = routed
        .path_model
        .as_deref()
        .is_none_or(|model| profile.allows_model(model));
    if !path_model_allowed || !profile.allows_request_models(route, &body) {
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
    super::approve::require_approval(
        state.approvals.as_deref(),
        session,
        ctx,
        &profile.engine,
        &body,
    )
    .await?;
    let body = forwarded.unwrap_or(body);
    let body = super::restore::prepare(state, &profile, ctx, learned, body).await?;
    let body = state.providers.wrap_body(&routed, body);
    Ok(Admitted { routed, body })
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

/// The originals the thinking vault holds for the signatures in `body` (signatures, and the
/// vault's answer in the same order), for the walker's restore hook; `None` when there is no
/// vault, no signature, or the vault failed (every thinking block is then masked).
async fn thinking_originals(state: &ProxyState, body: &[u8]) -> Option<Originals> {
    let vault = state.thinking_vault.as_ref()?;
    // Cheap check first: most requests carry no signed block.
    memchr::memmem::find(body, b"\"signature\"")?;
    let signatures = thinking_signatures(body);
    if signatures.is_empty() {
        return None;
    }
    match vault.fetch(&signatures).await {
        Ok(fetched) => Some((signatures, fetched)),
        Err(error) => {
            tracing::warn!(%error, "thinking vault unavailable: thinking in this request stays masked");
            None
        }
    }
}

/// Signatures and the originals a vault returned for them.
type Originals = (Vec<String>, Vec<Option<String>>);

/// How request masking is bounded (`[masking] offload_bytes` and `max_scan_ms`).
#[derive(Debug, Clone, Copy)]
pub(super) struct MaskingLimits {
    pub offload_bytes: usize,
    pub budget_ms: u64,
}

/// What masking a request body gives back: the body, the walk's result, the time the walk
/// itself took (not the wait for a worker), and the engine for the rest of the exchange when
/// the walk found secrets to propagate (see [`walk_body`]).
type MaskedBody = (
    Vec<u8>,
    Result<Walked, WalkError>,
    Duration,
    Option<Arc<Engine>>,
);

/// Walk (scan and rewrite) `body`, on the calling task when it is small and on the masking
/// pool when it is at least `limits.offload_bytes`.
async fn mask_body(
    pool: &MaskingPool,
    limits: MaskingLimits,
    engine: Arc<Engine>,
    body: Vec<u8>,
    originals: Option<Originals>,
    learn: bool,
) -> Result<MaskedBody, PoolRefusal> {
    if body.len() < limits.offload_bytes {
        let (walked, took, exchange_engine) =
            walk_body(&engine, &body, originals, limits.budget_ms, learn);
        return Ok((body, walked, took, exchange_engine));
    }
    // Waiting for a worker is an await, not a blocked event loop. The wait has the body's own
    // budget: a queue of large bodies behind busy workers must not hold a request longer than
    // masking it would, so past that the client is told to come back (529, which SDKs retry).
    let wait = Duration::from_millis(limits.budget_ms);
    pool.run(wait, move || {
        let (walked, took, exchange_engine) =
            walk_body(&engine, &body, originals, limits.budget_ms, learn);
        (body, walked, took, exchange_engine)
    })
    .await
}

/// The request walk both paths run: the JSON walker with the thinking restore hook, charged to
/// a fresh budget of `budget_ms`, and — with `learn` — reporting what each placeholder replaced
/// (for restore). Returns the result and the time it took.
///
/// A secret found once is masked everywhere: when the walk masks secrets, the body is walked
/// again by an engine that also knows them ([`Engine::with_known`]), so their bare repeats in
/// other strings (a tool result, an earlier turn) get the same placeholder; that engine is
/// returned to mask the response too (the model may quote them). Both walks share the budget.
fn walk_body(
    engine: &Engine,
    body: &[u8],
    originals: Option<Originals>,
    budget_ms: u64,
    learn: bool,
) -> (Result<Walked, WalkError>, Duration, Option<Arc<Engine>>) {
    let started = Instant::now();
    let restore = originals.map(|(signatures, fetched)| {
        let restore = VaultRestore::new(engine, signatures, fetched);
        tracing::debug!(known = restore.known(), "thinking originals fetched");
        restore
    });
    let options = WalkOptions {
        scope: Scope::Request,
        thinking: ThinkingMode::Mask,
        lenient: false,
    };
    let budget = Budget::new(budget_ms);
    let hook = restore.as_ref().map(|r| r as &dyn ThinkingRestore);
    let first = mask_json_learning(engine, body, &options, hook, Some(&budget));
    let known = match &first {
        Ok(walked) => engine.known_secrets(
            walked
                .learned
                .iter()
                .map(|learned| (learned.rule, learned.secret.as_bytes())),
        ),
        Err(_) => Ok(None),
    };
    let (walked, exchange_engine) = match known {
        Ok(None) => (first, None),
        Ok(Some(known)) => {
            let exchange_engine = Arc::new(engine.with_known(Some(known)));
            let second = mask_json_learning(&exchange_engine, body, &options, hook, Some(&budget));
            (second, Some(exchange_engine))
        }
        Err(error) => (Err(WalkError::Mask(error)), None),
    };
    let walked = walked.map(|mut walked| {
        find_protected_code(engine, body, &mut walked);
        if !learn {
            walked.learned.clear();
            walked.signed_thinking.clear();
        }
        walked
    });
    (walked, started.elapsed(), exchange_engine)
}

/// Add a finding for every protected file whose code a string of the body holds (the walk has
/// accepted the body as JSON, so it parses). Only bodies of profiles with protected code are
/// read again.
fn find_protected_code(engine: &Engine, body: &[u8], walked: &mut Walked) {
    if !engine.has_protected_code() {
        return;
    }
    let Ok(document) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    for_each_string(&document, &mut |path, text| {
        for finding in engine.find_protected_code(text, Scope::Request) {
            walked.findings.push(path, finding);
        }
    });
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

/// Whether the body is walked: an empty body needs no walk (but is refused where the API needs
/// one), a non-JSON body is refused.
fn needs_walk(
    session: &Session,
    method: &str,
    route: Route,
    body: &[u8],
) -> Result<bool, ApiError> {
    if body.is_empty() {
        if method == "POST" && matches!(route, Route::Messages | Route::CountTokens) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "streammask: the request body is empty",
            ));
        }
        return Ok(false);
    }
    if !is_json_content_type(header_str(session, "content-type")) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "streammask: the request body must be JSON (Content-Type: application/json)",
        )
        .with_status(415));
    }
    Ok(true)
}

/// The answer for a large body the masking pool did not mask.
fn pool_refusal_error(refusal: PoolRefusal) -> ApiError {
    match refusal {
        PoolRefusal::Busy { waited_ms } => ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "streammask: every masking worker is busy with other large request bodies \
                 (none free within {waited_ms} ms, `[masking] max_scan_ms`); nothing was \
                 forwarded. Retry shortly"
            ),
        ),
        PoolRefusal::Unavailable => ApiError::new(
            ErrorKind::Api,
            "streammask: the request body could not be masked (masking pool unavailable)",
        ),
    }
}

/// The refusal for a body whose masking ran out of its time budget.
fn over_budget(budget_ms: u64) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!(
            "streammask: masking this request body took longer than its budget of {budget_ms} ms \
             (`[masking] max_scan_ms`); it was not forwarded. Send a smaller body or ask the \
             operator to raise the budget"
        ),
    )
    .with_status(422)
}

/// Decide from the walk: refuse the body (over budget, invalid JSON, a `block` finding, or a
/// finding where no placeholder fits), forward the walker's rewrite (`Some`, masked findings)
/// or forward it as it is (`None`).
fn judge_body(
    ctx: &mut RequestCtx,
    engine: &Engine,
    walked: Result<Walked, WalkError>,
) -> Result<Option<Vec<u8>>, ApiError> {
    let exchange = &mut ctx.exchange;
    let walked = walked.map_err(|err| match err {
        WalkError::Mask(MaskError::OverBudget { budget_ms }) => {
            exchange.over_budget = true;
            over_budget(budget_ms)
        }
        err => ApiError::new(
            ErrorKind::InvalidRequest,
            format!("streammask: the request body is not valid JSON: {err}"),
        ),
    })?;
    exchange.request_findings.append(walked.findings);
    if let Some(refusal) = walked.refusals.first() {
        let rule_id = refusal.finding.rule_id.clone();
        let description = engine.rule_description(&rule_id);
        // A path is made of the client's keys, and a key can itself be a secret.
        let path = engine.redact_all(&refusal.path);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::masker::DEFAULT_MAX_HOLD_BYTES;
    use crate::engine::placeholder::PlaceholderKey;
    use crate::engine::RuleSet;

    fn engine() -> Arc<Engine> {
        let set = RuleSet::embedded().expect("embedded pack");
        let key = PlaceholderKey::new(b"admit-test-key-0123456789").expect("key");
        Arc::new(Engine::compile(&set, key, DEFAULT_MAX_HOLD_BYTES).expect("pack compiles"))
    }

    /// A request whose text is a log of `Authorization: Bearer` lines (tokens built from
    /// pieces, so no secret-shaped literal is in the source).
    fn request(lines: usize) -> Vec<u8> {
        let log: String = (0..lines)
            .map(|i| {
                let token = format!("{}{i:06}{}", ["ab", "Cd9_xY"].concat(), "Qz".repeat(12));
                format!("10.0.0.1 GET /items/{i} Authorization: Bearer {token}\n")
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": log}],
        }))
        .expect("json")
    }

    fn limits(offload_bytes: usize, budget_ms: u64) -> MaskingLimits {
        MaskingLimits {
            offload_bytes,
            budget_ms,
        }
    }

    #[tokio::test]
    async fn off_loop_masking_gives_the_same_bytes_as_inline() {
        let engine = engine();
        let body = request(2000);
        let pool = MaskingPool::start(1);
        let (inline_body, inline, _, _) = mask_body(
            &pool,
            limits(usize::MAX, 600_000),
            Arc::clone(&engine),
            body.clone(),
            None,
            false,
        )
        .await
        .expect("inline");
        let (off_body, off_loop, _, _) = mask_body(
            &pool,
            limits(0, 600_000),
            Arc::clone(&engine),
            body.clone(),
            None,
            false,
        )
        .await
        .expect("off loop");
        // The body comes back unchanged either way, and the walks agree byte for byte.
        assert_eq!(inline_body, body);
        assert_eq!(off_body, body);
        let (inline, off_loop) = (inline.expect("walk"), off_loop.expect("walk"));
        assert_eq!(inline.findings.len(), 2000);
        let masked = inline.body.clone().expect("rewritten");
        assert_eq!(Some(masked), off_loop.body);
        assert_eq!(inline.findings, off_loop.findings);
        // The permit is given back.
        assert_eq!(pool.available(), 1);
    }

    #[tokio::test]
    async fn a_spent_budget_is_a_422_naming_the_budget_on_both_paths() {
        let engine = engine();
        let body = request(200);
        let pool = MaskingPool::start(1);
        for offload_bytes in [usize::MAX, 0] {
            // A zero budget is spent before the first candidate: no assumption about speed.
            let (_, walked, _, _) = mask_body(
                &pool,
                limits(offload_bytes, 0),
                Arc::clone(&engine),
                body.clone(),
                None,
                false,
            )
            .await
            .expect("masked");
            let err = walked.unwrap_err();
            assert!(
                matches!(err, WalkError::Mask(MaskError::OverBudget { budget_ms: 0 })),
                "{err}"
            );
            let refusal = over_budget(0);
            assert_eq!(refusal.status, 422);
            assert_eq!(refusal.kind, ErrorKind::InvalidRequest);
            assert!(
                refusal.message.contains("max_scan_ms"),
                "{}",
                refusal.message
            );
        }
    }

    #[tokio::test]
    async fn a_large_body_waits_for_a_worker_no_longer_than_its_budget() {
        let engine = engine();
        let body = request(10);
        let pool = Arc::new(MaskingPool::start(1));
        // The one worker held by another job: the wait ends at the budget with a 529.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(Duration::from_secs(60), move || hold.recv().is_ok())
                    .await
            })
        };
        while pool.available() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let refusal = mask_body(
            &pool,
            limits(0, 50),
            Arc::clone(&engine),
            body.clone(),
            None,
            false,
        )
        .await
        .expect_err("no worker free");
        assert_eq!(refusal, PoolRefusal::Busy { waited_ms: 50 });
        let error = pool_refusal_error(refusal);
        assert_eq!((error.status, error.kind), (529, ErrorKind::Overloaded));
        assert!(error.message.contains("max_scan_ms"), "{}", error.message);
        // Small bodies never wait for the pool.
        let (_, walked, _, _) = mask_body(
            &pool,
            limits(usize::MAX, 50),
            engine.clone(),
            body.clone(),
            None,
            false,
        )
        .await
        .expect("inline");
        assert!(walked.is_ok());
        // A worker that comes free within the budget takes the body.
        let waiting = {
            let pool = Arc::clone(&pool);
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                mask_body(&pool, limits(0, 60_000), engine, body, None, false)
                    .await
                    .map(|(_, walked, _, _)| walked.is_ok())
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.send(()).expect("the busy job waits");
        assert_eq!(busy.await.expect("task"), Ok(true));
        assert_eq!(waiting.await.expect("task"), Ok(true));
    }
}
