//! The approvals console and API, served on the admin listener (never on the proxy listener):
//!
//! - `GET /approvals` (list), `GET /approvals/{id}` (detail): server-rendered HTML ([`html`])
//!   that works without JavaScript (forms) and refreshes its list in place when JavaScript is
//!   on (`/approvals/console.js` swaps in `/approvals/fragment`);
//! - `POST /approvals/sign-in` (form field `token`), `POST /approvals/sign-out`,
//!   `POST /approvals/{id}/approve|deny` (form fields `csrf`, `reason`);
//! - `GET /api/approvals?state=…`, `GET /api/approvals/{id}`,
//!   `POST /api/approvals/{id}/approve|deny` with an optional `{"reason": "…"}`.
//!
//! Invariants:
//! - only approvers see or decide anything: a caller authenticated by `[auth]` (Bearer token,
//!   or the console's session cookie made from one) whose groups meet
//!   `[approvals] approver_groups`; no credentials → 401, others → 403, one's own request → 403;
//! - the session cookie is sealed (AES-256-GCM, key derived from the placeholder key, so every
//!   replica sharing the key reads it), `HttpOnly`, `SameSite=Strict`, `Secure` when the console
//!   URL is https, and expires after [`SESSION_TTL`]; it carries a CSRF token that every form
//!   POST (and every cookie-authenticated API POST, as `x-csrf-token`) must repeat;
//! - a reason typed by an approver is masked by the rule pack before it is kept (it reaches the
//!   client's error message, the API and the audit log); pages and JSON carry only masked
//!   previews; errors are in the Anthropic error shape and name no token.

pub mod html;

use crate::observe::audit::record::rfc3339_ms;
use crate::policy::approvals::{
    is_approval_id, Approval, ApprovalError, Approvals, Requester, State,
};
use crate::policy::store::{now_ms, Sealer};
use crate::proxy::{percent_decode, LiveState};
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long a console sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const COOKIE: &str = "streammask_console";
const SESSION_LABEL: &str = "streammask approvals console v1";
const SESSION_AAD: &[u8] = b"console-session";
/// Characters of a reason kept.
const MAX_REASON_CHARS: usize = 500;

/// A request to the admin listener, read whole.
pub struct AdminRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// An admin response.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    pub fn error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    }

    /// An `[auth]` refusal in the Anthropic error shape (401 `authentication_error`, else
    /// `permission_error`), with its message, which never names the token.
    pub fn auth_refused(refused: &crate::policy::auth::AuthError) -> Reply {
        let kind = if refused.status == 401 {
            "authentication_error"
        } else {
            "permission_error"
        };
        Reply::error(refused.status, kind, refused.message)
    }

    fn html(status: u16, page: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            headers: vec![
                (
                    "content-security-policy",
                    "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; \
                     connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
                        .to_string(),
                ),
                ("x-frame-options", "DENY".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body: page.into_bytes(),
        }
    }

    fn redirect(location: &str) -> Reply {
        let mut reply = Reply::text(303, "");
        reply.headers.push(("location", location.to_string()));
        reply
    }

    fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// A signed-in approver, as the session cookie carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub sub: String,
    pub groups: Vec<String>,
    pub exp: u64,
    pub csrf: String,
}

/// Who is asking, and how they proved it.
enum Credential {
    Bearer(crate::policy::auth::Caller),
    Cookie(ConsoleSession),
}

impl Credential {
    fn subject(&self) -> &str {
        match self {
            Credential::Bearer(c) => &c.subject,
            Credential::Cookie(s) => &s.sub,
        }
    }

    fn groups(&self) -> &[String] {
        match self {
            Credential::Bearer(c) => &c.groups,
            Credential::Cookie(s) => &s.groups,
        }
    }
}

pub struct Console {
    /// The current snapshot is read per request: a reload may change authentication.
    live: Arc<LiveState>,
    approvals: Arc<Approvals>,
    sessions: Sealer,
    secure_cookie: bool,
}

impl Console {
    /// The console of `state`'s approvals (`None` without them). Sessions are sealed under a
    /// key derived from `key_material` (random without one: sign-ins then last one process).
    pub fn new(live: Arc<LiveState>, key_material: Option<&[u8]>) -> Option<Console> {
        let approvals = Arc::clone(live.load().approvals.as_ref()?);
        let sessions = key_material.map_or_else(
            || Sealer::random(SESSION_LABEL),
            |m| Sealer::derive(m, SESSION_LABEL),
        );
        let secure_cookie = approvals.console_url().starts_with("https://");
        Some(Console {
            live,
            approvals,
            sessions,
            secure_cookie,
        })
    }

    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }

    /// The reply for `request`, or `None` when the path is not the console's.
    pub async fn handle(&self, request: &AdminRequest) -> Option<Reply> {
        let path = request.path.as_str();
        let reply = if let Some(rest) = path.strip_prefix("/api/approvals") {
            self.api(request, rest).await
        } else if path == "/approvals" || path.starts_with("/approvals/") {
            self.pages(request, &path["/approvals".len()..]).await
        } else {
            return None;
        };
        Some(reply)
    }

    // ---- JSON API -------------------------------------------------------------------------

    async fn api(&self, request: &AdminRequest, rest: &str) -> Reply {
        let credential = match self.credential(request).await {
            Ok(credential) => credential,
            Err(reply) => return reply,
        };
        if !self.approvals.is_approver(credential.groups()) {
            return Reply::error(
                403,
                "permission_error",
                "streammask: only members of approvals.approver_groups may use the approvals API",
            );
        }
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", [""]) => {
                let wanted =
                    match query_value(&request.query, "state") {
                        None => None,
                        Some(s) => match State::parse(&s) {
                            Some(state) => Some(state),
                            None => return Reply::error(
                                400,
                                "invalid_request_error",
                                "streammask: state must be pending, approved, denied or expired",
                            ),
                        },
                    };
                match self.approvals.list().await {
                    Ok(all) => {
                        let now = now_ms();
                        let data: Vec<Value> = all
                            .iter()
                            .filter(|a| wanted.is_none_or(|w| a.state_at(now) == w))
                            .map(|a| api_object(a, now))
                            .collect();
                        Reply::json(200, &json!({ "data": data }))
                    }
                    Err(error) => store_error(&error),
                }
            }
            ("GET", [id]) => match self.find(id).await {
                Ok(approval) => Reply::json(200, &api_object(&approval, now_ms())),
                Err(reply) => reply,
            },
            ("POST", [id, verb @ ("approve" | "deny")]) => {
                if let Credential::Cookie(session) = &credential {
                    let sent = request
                        .headers
                        .get("x-csrf-token")
                        .and_then(|v| v.to_str().ok());
                    if sent != Some(session.csrf.as_str()) {
                        return csrf_refused();
                    }
                }
                let reason = if request.body.iter().all(u8::is_ascii_whitespace) {
                    None
                } else {
                    match serde_json::from_slice::<Value>(&request.body) {
                        Ok(Value::Object(map)) => {
                            map.get("reason").and_then(Value::as_str).map(str::to_string)
                        }
                        _ => {
                            return Reply::error(
                                400,
                                "invalid_request_error",
                                "streammask: the body must be a JSON object such as {\"reason\": \"…\"}",
                            )
                        }
                    }
                };
                match self
                    .decide(&credential, id, *verb == "approve", reason)
                    .await
                {
                    Ok(approval) => Reply::json(200, &api_object(&approval, now_ms())),
                    Err(error) => decision_error(&error),
                }
            }
            _ => Reply::error(
                404,
                "not_found_error",
                "streammask: no such approvals endpoint",
            ),
        }
    }

    async fn find(&self, id: &str) -> Result<Approval, Reply> {
        let unknown = || Reply::error(404, "not_found_error", "streammask: no such approval");
        if !is_approval_id(id) {
            return Err(unknown());
        }
        match self.approvals.get(id).await {
            Ok(Some(approval)) => Ok(approval),
            Ok(None) => Err(unknown()),
            Err(error) => Err(store_error(&error)),
        }
    }

    async fn decide(
        &self,
        credential: &Credential,
        id: &str,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        if !is_approval_id(id) {
            return Err(ApprovalError::NotFound);
        }
        let reason = reason.map(|r| self.mask_reason(&r));
        let who = Requester {
            subject: credential.subject(),
            groups: credential.groups(),
            session: None,
            request_id: "",
        };
        self.approvals.decide(id, &who, approve, reason).await
    }

    /// A reason as kept: cut, and masked by the base rule pack in every scope.
    fn mask_reason(&self, reason: &str) -> String {
        let cut: String = reason.trim().chars().take(MAX_REASON_CHARS).collect();
        self.live.load().engine.redact_all(&cut).into_owned()
    }

    /// The caller of an API request: a Bearer token (checked by `[auth]`), else the console's
    /// session cookie.
    async fn credential(&self, request: &AdminRequest) -> Result<Credential, Reply> {
        if request.headers.contains_key(http::header::AUTHORIZATION) {
            let state = self.live.load_full();
            return match state.security.auth.authenticate(&request.headers).await {
                Ok(caller) if state.security.auth.enabled() => Ok(Credential::Bearer(caller)),
                Ok(_) => Err(Reply::error(
                    403,
                    "permission_error",
                    "streammask: authentication is off ([auth]), so no one can be an approver",
                )),
                Err(refused) => Err(Reply::auth_refused(&refused)),
            };
        }
        match self.session(request) {
            Some(session) => Ok(Credential::Cookie(session)),
            None => Err(Reply::error(
                401,
                "authentication_error",
                "streammask: authentication required (Authorization: Bearer <token>)",
            )),
        }
    }

    // ---- sessions -------------------------------------------------------------------------

    fn session(&self, request: &AdminRequest) -> Option<ConsoleSession> {
        let value = request
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == COOKIE).then(|| value.to_string())
            })?;
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        let opened = self.sessions.open(SESSION_AAD, &sealed)?;
        let session: ConsoleSession = serde_json::from_slice(&opened).ok()?;
        (session.exp > now_ms() && self.approvals.is_approver(&session.groups)).then_some(session)
    }

    fn session_cookie(&self, session: &ConsoleSession) -> Option<String> {
        let json = serde_json::to_vec(session).ok()?;
        let sealed = self.sessions.seal(SESSION_AAD, &json).ok()?;
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed);
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        Some(format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        ))
    }

    fn cleared_cookie(&self) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }

    async fn sign_in(&self, request: &AdminRequest) -> Reply {
        let form = parse_form(&request.body);
        let token = form_value(&form, "token").unwrap_or_default();
        let refuse = |status: u16, message: &str| Reply::html(status, html::sign_in(Some(message)));
        if token.trim().is_empty() {
            return refuse(401, "Enter your token.");
        }
        let state = self.live.load_full();
        if !state.security.auth.enabled() {
            return refuse(
                403,
                "Authentication is off on this proxy ([auth]): no one can approve.",
            );
        }
        let mut headers = http::HeaderMap::new();
        let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {}", token.trim())) else {
            return refuse(401, "That token is not valid.");
        };
        headers.insert(http::header::AUTHORIZATION, value);
        let caller = match state.security.auth.authenticate(&headers).await {
            Ok(caller) => caller,
            Err(_) => return refuse(401, "That token is not valid."),
        };
        if !self.approvals.is_approver(&caller.groups) {
            return refuse(403, "You are signed in, but not in an approver group.");
        }
        let mut csrf = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut csrf);
        let session = ConsoleSession {
            sub: caller.subject,
            groups: caller.groups,
            exp: now_ms() + SESSION_TTL.as_millis() as u64,
            csrf: hex::encode(csrf),
        };
        match self.session_cookie(&session) {
            Some(cookie) => Reply::redirect("/approvals").with_header("set-cookie", cookie),
            None => refuse(500, "The session could not be made."),
        }
    }

    // ---- HTML pages -----------------------------------------------------------------------

    async fn pages(&self, request: &AdminRequest, rest: &str) -> Reply {
        let method = request.method.as_str();
        match (method, rest) {
            ("GET", "/console.js") => {
                return Reply {
                    status: 200,
                    content_type: "text/javascript; charset=utf-8",
                    headers: vec![("cache-control", "no-store".to_string())],
                    body: html::SCRIPT.as_bytes().to_vec(),
                }
            }
            ("POST", "/sign-in") => return self.sign_in(request).await,
            ("POST", "/sign-out") => {
                return Reply::redirect("/approvals")
                    .with_header("set-cookie", self.cleared_cookie())
            }
            _ => {}
        }
        let Some(session) = self.session(request) else {
            return match method {
                "GET" => Reply::html(200, html::sign_in(None)),
                _ => Reply::error(401, "authentication_error", "streammask: sign in first"),
            };
        };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", [""]) | ("GET", ["fragment"]) => match self.approvals.list().await {
                Ok(all) => {
                    let lists = html::lists(&all, now_ms(), &session);
                    if segments == ["fragment"] {
                        Reply::html(200, lists)
                    } else {
                        Reply::html(200, html::page(&session, &lists))
                    }
                }
                Err(error) => Reply::html(
                    503,
                    html::page(&session, &html::store_down(&error.to_string())),
                ),
            },
            ("GET", [id]) => match self.find(id).await {
                Ok(approval) => Reply::html(200, html::detail(&approval, now_ms(), &session)),
                Err(reply) => reply,
            },
            ("POST", [id, verb @ ("approve" | "deny")]) => {
                let form = parse_form(&request.body);
                if form_value(&form, "csrf").as_deref() != Some(session.csrf.as_str()) {
                    return csrf_refused();
                }
                let credential = Credential::Cookie(session);
                let reason = form_value(&form, "reason");
                match self
                    .decide(&credential, id, *verb == "approve", reason)
                    .await
                {
                    Ok(_) => Reply::redirect(&format!("/approvals/{id}")),
                    Err(error) => decision_error(&error),
                }
            }
            _ => Reply::error(404, "not_found_error", "streammask: no such page"),
        }
    }
}

/// The API's view of an approval.
pub fn api_object(approval: &Approval, now: u64) -> Value {
    let decision = approval.decision.as_ref();
    json!({
        "id": approval.id,
        "state": approval.state_at(now).label(),
        "rule_id": approval.rule_id,
        "subject": approval.subject,
        "groups": approval.groups,
        "session_id": approval.session_id,
        "preview": approval.preview,
        "created_at": rfc3339_ms(approval.created_at_ms),
        "expires_at": rfc3339_ms(approval.expires_at_ms()),
        "decided_by": decision.map(|d| d.by.as_str()),
        "reason": decision.and_then(|d| d.reason.as_deref()),
    })
}

fn csrf_refused() -> Reply {
    Reply::error(
        403,
        "permission_error",
        "streammask: missing or wrong CSRF token; reload the console and try again",
    )
}

fn store_error(error: &dyn std::fmt::Display) -> Reply {
    tracing::warn!(%error, "approvals console: store unavailable");
    Reply::error(
        503,
        "api_error",
        "streammask: the approvals store is unavailable",
    )
}

fn decision_error(error: &ApprovalError) -> Reply {
    match error {
        ApprovalError::NotFound => {
            Reply::error(404, "not_found_error", "streammask: no such approval")
        }
        ApprovalError::Conflict(state) => Reply::error(
            409,
            "invalid_request_error",
            &format!("streammask: the approval is already {state}"),
        ),
        ApprovalError::OwnRequest => Reply::error(
            403,
            "permission_error",
            "streammask: approvers may not decide their own requests",
        ),
        ApprovalError::NotApprover => Reply::error(
            403,
            "permission_error",
            "streammask: only members of approvals.approver_groups may decide",
        ),
        ApprovalError::Store(error) => store_error(error),
    }
}

/// `application/x-www-form-urlencoded` pairs.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(name.as_bytes(), true),
                percent_decode(value.as_bytes(), true),
            )
        })
        .collect()
}

fn form_value(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

fn query_value(query: &str, name: &str) -> Option<String> {
    form_value(&parse_form(query.as_bytes()), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let form = parse_form("csrf=ab12&reason=not+now%2C+sorry&x=%zz&y=%4&z=%é".as_bytes());
        assert_eq!(form_value(&form, "csrf").as_deref(), Some("ab12"));
        assert_eq!(
            form_value(&form, "reason").as_deref(),
            Some("not now, sorry")
        );
        assert_eq!(form_value(&form, "x").as_deref(), Some("%zz"));
        assert_eq!(form_value(&form, "y").as_deref(), Some("%4"));
        assert_eq!(form_value(&form, "z").as_deref(), Some("%é"));
        assert_eq!(
            query_value("state=pending", "state").as_deref(),
            Some("pending")
        );
    }
}
