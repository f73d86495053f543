//! Just-in-time approval: a request that matches an `approve` rule is not forwarded until a
//! person in `[approvals] approver_groups` approves it.
//!
//! What is approved is a *grant*: one caller (subject), one Claude Code session (when the request
//! names one), one rule and one matched line (the whole trimmed line that holds the match, see
//! [`lines`]), for `grant_ttl`. Claude Code resends the conversation every turn, so the grant
//! covers later turns that still carry the same line — and nothing else. A denial refuses the
//! same grant for as long. An approval nobody decides expires after `pending_ttl`.
//!
//! - [`lines`]: the approve findings of a request as matched lines with masked previews;
//! - [`store`]: where approvals live ([`ApprovalStore`]: in memory, or one Redis for every
//!   replica) and the memory backend; `redis`: the Redis backend;
//! - [`notify`]: the webhook told of every new pending approval;
//! - [`settings`], the `[approvals]` section.
//!
//! Invariants:
//! - fail closed: a request whose approve findings are not all covered by live approved grants
//!   is not forwarded, and a store that cannot answer refuses it ([`ApprovalError::Store`]);
//! - grant keys are keyed hashes ([`Sealer::id`]) of caller, session, rule and line: the raw
//!   line is hashed and dropped, never stored, logged or shown. What an approval record holds
//!   — and so what the console, the API, the webhook, the store and the audit log see — is the
//!   masked preview, rule id, caller, groups and session id, never a raw secret;
//! - a decision is taken at most once (the store's compare-and-set), never by the requester
//!   itself, and only by a member of an approver group;
//! - every change is reported to the [`ApprovalObserver`] as a typed [`ApprovalEvent`]
//!   (requested, approved, denied, expired, used), which metrics and the audit log read.

pub mod lines;
pub mod notify;
mod redis;
pub mod settings;
pub mod store;

pub use self::lines::{matched_lines, MatchedLine};
pub use self::redis::RedisApprovals;
pub use self::settings::{ApprovalSettings, ApprovalStoreKind, ApprovalsSection, Mode};
pub use self::store::{ApprovalStore, Decided, Decision, MemoryApprovals};

use crate::policy::store::{now_ms, Sealer, StoreError};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The HKDF label of the keys approvals use (grant ids, console sessions).
pub const APPROVALS_LABEL: &str = "streammask approvals v1";

/// How often a held request looks for a decision (a decision on another replica is seen
/// within this, well inside the 1 s the design asks for).
const POLL: Duration = Duration::from_millis(200);

/// An approval as stored: what the approver decides on, and the decision.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub id: String,
    /// Hex of the grant key: caller, session, rule and line, keyed.
    pub grant: String,
    pub rule_id: String,
    pub rule_description: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub session_id: Option<String>,
    /// The matched line and its neighbours, masked (never a raw secret).
    pub preview: String,
    /// The proxy request id of the request that asked first.
    pub request_id: String,
    pub created_at_ms: u64,
    /// Pending past this, the approval has expired undecided.
    pub pending_until_ms: u64,
    pub decision: Option<DecisionRecord>,
}

/// A decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub approved: bool,
    pub by: String,
    pub reason: Option<String>,
    pub at_ms: u64,
    /// The grant (approved or denied) holds until then.
    pub until_ms: u64,
}

/// The state of an approval at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Approved,
    Denied,
    /// Undecided past its pending time, or a decision past its grant time.
    Expired,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Expired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.label() == text)
    }
}

impl Approval {
    pub fn state_at(&self, now: u64) -> State {
        match &self.decision {
            None if now < self.pending_until_ms => State::Pending,
            None => State::Expired,
            Some(d) if now >= d.until_ms => State::Expired,
            Some(d) if d.approved => State::Approved,
            Some(_) => State::Denied,
        }
    }

    /// When the current state ends: the pending time, or the grant's.
    pub fn expires_at_ms(&self) -> u64 {
        self.decision
            .as_ref()
            .map_or(self.pending_until_ms, |d| d.until_ms)
    }

    /// Whether it still counts for its grant (pending, or a decision within its time).
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at_ms()
    }
}

impl fmt::Debug for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The preview is masked, but it is request text: logs get ids and the rule only.
        f.debug_struct("Approval")
            .field("id", &self.id)
            .field("rule_id", &self.rule_id)
            .field("created_at_ms", &self.created_at_ms)
            .field("decision", &self.decision.as_ref().map(|d| d.approved))
            .finish_non_exhaustive()
    }
}

/// What happened to an approval, for metrics and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new pending approval (one per grant, not per retry).
    Requested,
    Approved,
    Denied,
    /// Pending past its time, nobody decided.
    Expired,
    /// A request went upstream on an approved grant.
    Used,
    /// The webhook could not be told of a new approval (after its retries).
    WebhookFailed,
}

impl EventKind {
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::Approved => "approved",
            EventKind::Denied => "denied",
            EventKind::Expired => "expired",
            EventKind::Used => "used",
            EventKind::WebhookFailed => "webhook_failed",
        }
    }
}

/// One change, with the approval as it stands after it. `request_id` is the request that used
/// or asked for the grant, when there is one.
#[derive(Debug, Clone)]
pub struct ApprovalEvent {
    pub kind: EventKind,
    pub approval: Approval,
    pub request_id: Option<String>,
}

/// Reads approval events (metrics, the audit log). Called on the task that made the change; it
/// must not block.
pub trait ApprovalObserver: Send + Sync {
    fn observe(&self, event: &ApprovalEvent);
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approvals store: {0}")]
    Store(#[from] StoreError),
    #[error("no such approval")]
    NotFound,
    #[error("the approval is already {0}")]
    Conflict(&'static str),
    #[error("approvers may not decide their own requests")]
    OwnRequest,
    #[error("the caller is not in an approver group")]
    NotApprover,
}

/// The caller a request or a decision comes from.
#[derive(Debug, Clone)]
pub struct Requester<'a> {
    pub subject: &'a str,
    pub groups: &'a [String],
    pub session: Option<&'a str>,
    pub request_id: &'a str,
}

/// Where a request stands with respect to its approve findings.
#[derive(Debug, Default)]
pub struct Standing {
    /// Approvals that cover it (approved, live).
    pub approved: Vec<Approval>,
    /// Still waiting for a decision (new or earlier ones).
    pub pending: Vec<Approval>,
    /// Denied within their grant time: the request is refused.
    pub denied: Vec<Approval>,
}

impl Standing {
    pub fn cleared(&self) -> bool {
        self.pending.is_empty() && self.denied.is_empty()
    }
}

/// The approvals of a running proxy: store, keys, settings and who is told.
pub struct Approvals {
    store: Arc<dyn ApprovalStore>,
    sealer: Sealer,
    settings: ApprovalSettings,
    observer: Option<Arc<dyn ApprovalObserver>>,
    notifier: Option<Arc<notify::Notifier>>,
}

impl fmt::Debug for Approvals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Approvals")
            .field("store", &self.store.backend())
            .field("mode", &self.settings.mode)
            .finish_non_exhaustive()
    }
}

impl Approvals {
    pub fn new(
        store: Arc<dyn ApprovalStore>,
        sealer: Sealer,
        settings: ApprovalSettings,
        observer: Option<Arc<dyn ApprovalObserver>>,
    ) -> Approvals {
        let notifier = settings
            .notify_webhook_url
            .as_deref()
            .and_then(|url| match notify::Notifier::new(url) {
                Ok(notifier) => Some(Arc::new(notifier)),
                Err(error) => {
                    tracing::warn!(%error, "approvals.notify_webhook_url unusable: no notifications");
                    None
                }
            });
        Approvals {
            store,
            sealer,
            settings,
            observer,
            notifier,
        }
    }

    pub fn settings(&self) -> &ApprovalSettings {
        &self.settings
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    /// The console's base URL (configured, or the admin listener's).
    pub fn console_url(&self) -> &str {
        self.settings.console_url.as_deref().unwrap_or("")
    }

    /// The link to one approval in the console.
    pub fn link(&self, id: &str) -> String {
        format!("{}/approvals/{id}", self.console_url())
    }

    /// Whether a caller in `groups` may decide approvals.
    pub fn is_approver(&self, groups: &[String]) -> bool {
        groups
            .iter()
            .any(|g| self.settings.approver_groups.contains(g))
    }

    fn emit(&self, kind: EventKind, approval: &Approval, request_id: Option<&str>) {
        if let Some(observer) = &self.observer {
            observer.observe(&ApprovalEvent {
                kind,
                approval: approval.clone(),
                request_id: request_id.map(str::to_string),
            });
        }
    }

    fn grant_key(&self, who: &Requester<'_>, matched: &MatchedLine) -> String {
        // A session part with its own tag, so "no session" and an empty session id differ.
        let session = match who.session {
            Some(session) => [b"s:", session.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        hex::encode(self.sealer.id(&[
            b"grant",
            who.subject.as_bytes(),
            &session,
            matched.rule_id.as_bytes(),
            matched.line_bytes(),
        ]))
    }

    /// Where a request with these matched lines stands: each line's grant is looked up, and a
    /// pending approval is opened for every grant that has none live (one per grant however
    /// often the request is retried). New approvals are notified and observed.
    pub async fn check(
        &self,
        who: &Requester<'_>,
        matched: &[MatchedLine],
    ) -> Result<Standing, ApprovalError> {
        let mut standing = Standing::default();
        let mut seen = std::collections::HashSet::new();
        for line in matched {
            let grant = self.grant_key(who, line);
            if !seen.insert(grant.clone()) {
                continue;
            }
            let now = now_ms();
            let candidate = Approval {
                id: new_id(),
                grant: grant.clone(),
                rule_id: line.rule_id.clone(),
                rule_description: line.rule_description.clone(),
                subject: who.subject.to_string(),
                groups: who.groups.to_vec(),
                session_id: who.session.map(str::to_string),
                preview: line.preview.clone(),
                request_id: who.request_id.to_string(),
                created_at_ms: now,
                pending_until_ms: now.saturating_add(millis(self.settings.pending_ttl)),
                decision: None,
            };
            let (approval, created) = self.store.open(&grant, candidate, now).await?;
            if created {
                self.emit(EventKind::Requested, &approval, Some(who.request_id));
                self.announce(&approval);
            }
            match approval.state_at(now) {
                State::Approved => standing.approved.push(approval),
                State::Denied => standing.denied.push(approval),
                // A live record is never expired; treat the race as still waiting.
                State::Pending | State::Expired => standing.pending.push(approval),
            }
        }
        Ok(standing)
    }

    /// Report that a request went upstream on these grants.
    pub fn used(&self, standing: &Standing, request_id: &str) {
        for approval in &standing.approved {
            self.emit(EventKind::Used, approval, Some(request_id));
        }
    }

    /// Tell the webhook, and arrange for the expiry to be observed if nobody decides.
    fn announce(&self, approval: &Approval) {
        if let Some(notifier) = &self.notifier {
            let notifier = Arc::clone(notifier);
            let observer = self.observer.clone();
            let approval = approval.clone();
            let link = self.link(&approval.id);
            tokio::spawn(async move {
                if notifier.send(&approval, &link).await.is_err() {
                    if let Some(observer) = observer {
                        observer.observe(&ApprovalEvent {
                            kind: EventKind::WebhookFailed,
                            approval,
                            request_id: None,
                        });
                    }
                }
            });
        }
        let store = Arc::clone(&self.store);
        let observer = self.observer.clone();
        let id = approval.id.clone();
        let wait = Duration::from_millis(approval.pending_until_ms.saturating_sub(now_ms()));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // The replica that opened the approval reports its expiry (once: the others did
            // not open it). A replica that restarts meanwhile does not report it.
            if let Ok(Some(approval)) = store.get(&id).await {
                if approval.decision.is_none() {
                    if let Some(observer) = observer {
                        observer.observe(&ApprovalEvent {
                            kind: EventKind::Expired,
                            approval,
                            request_id: None,
                        });
                    }
                }
            }
        });
    }

    /// Wait until every one of `pending` is decided, or `deadline` passes; gives the standing
    /// then (still pending ones stay pending).
    pub async fn wait(
        &self,
        mut standing: Standing,
        deadline: tokio::time::Instant,
    ) -> Result<Standing, ApprovalError> {
        loop {
            let now = now_ms();
            let mut still = Vec::new();
            for approval in std::mem::take(&mut standing.pending) {
                match self.store.get(&approval.id).await? {
                    Some(current) => match current.state_at(now) {
                        State::Approved => standing.approved.push(current),
                        State::Denied => standing.denied.push(current),
                        State::Pending | State::Expired => still.push(current),
                    },
                    None => still.push(approval),
                }
            }
            standing.pending = still;
            if standing.pending.is_empty() || !standing.denied.is_empty() {
                return Ok(standing);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(standing);
            }
            tokio::time::sleep(left.min(POLL)).await;
        }
    }

    /// Decide approval `id` as `approver` (whose groups must include an approver group and
    /// who must not be its requester). `reason` is kept as given: callers mask it first.
    pub async fn decide(
        &self,
        id: &str,
        approver: &Requester<'_>,
        approved: bool,
        reason: Option<String>,
    ) -> Result<Approval, ApprovalError> {
        if !self.is_approver(approver.groups) {
            return Err(ApprovalError::NotApprover);
        }
        let now = now_ms();
        let current = self.store.get(id).await?.ok_or(ApprovalError::NotFound)?;
        if current.subject == approver.subject {
            return Err(ApprovalError::OwnRequest);
        }
        let decision = DecisionRecord {
            approved,
            by: approver.subject.to_string(),
            reason: reason.filter(|r| !r.trim().is_empty()),
            at_ms: now,
            until_ms: now.saturating_add(millis(self.settings.grant_ttl)),
        };
        match self.store.decide(id, decision, now).await? {
            Decided::Done(approval) => {
                let kind = if approved {
                    EventKind::Approved
                } else {
                    EventKind::Denied
                };
                self.emit(kind, &approval, None);
                Ok(approval)
            }
            Decided::NotFound => Err(ApprovalError::NotFound),
            Decided::Conflict(approval) => {
                Err(ApprovalError::Conflict(approval.state_at(now).label()))
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Approval>, ApprovalError> {
        Ok(self.store.get(id).await?)
    }

    /// Every approval the store still keeps, newest first (as the store lists them).
    pub async fn list(&self) -> Result<Vec<Approval>, ApprovalError> {
        Ok(self.store.list(now_ms()).await?)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A new approval id: `apr_` and 128 random bits in hex.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("apr_{}", hex::encode(bytes))
}

/// Whether `id` has the shape of an approval id (checked before it reaches a store key).
pub fn is_approval_id(id: &str) -> bool {
    id.len() == 36
        && id.starts_with("apr_")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(EventKind, String)>>);

    impl ApprovalObserver for Seen {
        fn observe(&self, event: &ApprovalEvent) {
            if let Ok(mut seen) = self.0.lock() {
                seen.push((event.kind, event.approval.id.clone()));
            }
        }
    }

    fn settings(grant_ttl: Duration) -> ApprovalSettings {
        let mut settings = ApprovalsSection::default().validate().expect("defaults");
        settings.approver_groups = vec!["sec".into()];
        settings.grant_ttl = grant_ttl;
        settings
    }

    fn service(grant_ttl: Duration) -> (Approvals, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let approvals = Approvals::new(
            Arc::new(MemoryApprovals::new(1000)),
            Sealer::derive(b"approvals-test-key", APPROVALS_LABEL),
            settings(grant_ttl),
            Some(seen.clone() as Arc<dyn ApprovalObserver>),
        );
        (approvals, seen)
    }

    fn line(text: &str) -> MatchedLine {
        MatchedLine::for_test("approve-terraform-destroy", text)
    }

    fn who<'a>(subject: &'a str, session: Option<&'a str>, groups: &'a [String]) -> Requester<'a> {
        Requester {
            subject,
            groups,
            session,
            request_id: "smreq_test",
        }
    }

    #[tokio::test]
    async fn one_approval_covers_the_same_line_for_the_same_caller_and_session_only() {
        let (approvals, seen) = service(Duration::from_secs(60));
        let dev = vec!["dev".to_string()];
        let sec = vec!["sec".to_string()];
        let asked = line(concat!("terraform", " destroy -target=module.cache"));
        let first = approvals
            .check(
                &who("alice", Some("s1"), &dev),
                std::slice::from_ref(&asked),
            )
            .await
            .expect("checked");
        assert_eq!(first.pending.len(), 1);
        // Asking again opens no second approval.
        let again = approvals
            .check(
                &who("alice", Some("s1"), &dev),
                std::slice::from_ref(&asked),
            )
            .await
            .expect("checked");
        assert_eq!(again.pending[0].id, first.pending[0].id);
        let id = first.pending[0].id.clone();
        // Nobody decides their own request; non-approvers cannot decide at all.
        let own = approvals
            .decide(&id, &who("alice", None, &sec), true, None)
            .await;
        assert!(matches!(own, Err(ApprovalError::OwnRequest)), "{own:?}");
        let outsider = approvals
            .decide(&id, &who("bob", None, &dev), true, None)
            .await;
        assert!(matches!(outsider, Err(ApprovalError::NotApprover)));
        let decided = approvals
            .decide(&id, &who("carol", None, &sec), true, None)
            .await
            .expect("approved");
        assert_eq!(decided.state_at(now_ms()), State::Approved);
        let twice = approvals
            .decide(&id, &who("carol", None, &sec), false, None)
            .await;
        assert!(matches!(twice, Err(ApprovalError::Conflict("approved"))));
        // Covered: same caller, session and line.
        let covered = approvals
            .check(
                &who("alice", Some("s1"), &dev),
                std::slice::from_ref(&asked),
            )
            .await
            .expect("checked");
        assert!(covered.cleared() && covered.approved.len() == 1);
        // Not covered: another session, another caller, another line.
        for (subject, session, text) in [
            (
                "alice",
                Some("s2"),
                concat!("terraform", " destroy -target=module.cache"),
            ),
            (
                "dave",
                Some("s1"),
                concat!("terraform", " destroy -target=module.cache"),
            ),
            ("alice", Some("s1"), concat!("terraform", " destroy")),
            (
                "alice",
                None,
                concat!("terraform", " destroy -target=module.cache"),
            ),
        ] {
            let other = approvals
                .check(&who(subject, session, &dev), &[line(text)])
                .await
                .expect("checked");
            assert_eq!(other.pending.len(), 1, "{subject} {session:?} {text}");
        }
        let kinds: Vec<EventKind> = seen.0.lock().unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == EventKind::Requested).count(),
            5
        );
        assert!(kinds.contains(&EventKind::Approved));
    }

    #[tokio::test]
    async fn a_denial_refuses_and_an_expired_grant_asks_again() {
        let (approvals, _) = service(Duration::from_millis(300));
        let dev = vec!["dev".to_string()];
        let sec = vec!["sec".to_string()];
        let asked = line(concat!("DROP", " DATABASE billing;"));
        let first = approvals
            .check(&who("alice", None, &dev), std::slice::from_ref(&asked))
            .await
            .expect("checked");
        let id = first.pending[0].id.clone();
        approvals
            .decide(
                &id,
                &who("carol", None, &sec),
                false,
                Some("not today".into()),
            )
            .await
            .expect("denied");
        let refused = approvals
            .check(&who("alice", None, &dev), std::slice::from_ref(&asked))
            .await
            .expect("checked");
        assert_eq!(refused.denied.len(), 1);
        assert_eq!(
            refused.denied[0]
                .decision
                .as_ref()
                .and_then(|d| d.reason.as_deref()),
            Some("not today")
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let fresh = approvals
            .check(&who("alice", None, &dev), &[asked])
            .await
            .expect("checked");
        assert_eq!(fresh.pending.len(), 1);
        assert_ne!(fresh.pending[0].id, id);
        let listed = approvals.list().await.expect("listed");
        let old = listed.iter().find(|a| a.id == id).expect("kept");
        assert_eq!(old.state_at(now_ms()), State::Expired);
    }

    #[tokio::test]
    async fn a_held_request_sees_the_decision() {
        let (approvals, _) = service(Duration::from_secs(60));
        let approvals = Arc::new(approvals);
        let dev = vec!["dev".to_string()];
        let standing = approvals
            .check(
                &who("alice", None, &dev),
                &[line(concat!("kubectl delete", " ns x"))],
            )
            .await
            .expect("checked");
        let id = standing.pending[0].id.clone();
        let deciding = {
            let approvals = Arc::clone(&approvals);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let sec = vec!["sec".to_string()];
                approvals
                    .decide(&id, &who("carol", None, &sec), true, None)
                    .await
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let waited = approvals.wait(standing, deadline).await.expect("waited");
        assert!(waited.cleared() && waited.approved.len() == 1);
        deciding.await.expect("task").expect("decided");
    }

    #[tokio::test]
    async fn an_undecided_approval_is_reported_expired_once() {
        let (mut approvals, seen) = service(Duration::from_secs(60));
        approvals.settings.pending_ttl = Duration::from_millis(200);
        let dev = vec!["dev".to_string()];
        let standing = approvals
            .check(
                &who("alice", None, &dev),
                &[line(concat!("drop", " schema x"))],
            )
            .await
            .expect("checked");
        let id = standing.pending[0].id.clone();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = seen.0.lock().unwrap().clone();
        assert_eq!(
            events,
            vec![
                (EventKind::Requested, id.clone()),
                (EventKind::Expired, id.clone())
            ]
        );
        // Deciding it now is a conflict, and a new request opens a new approval.
        let sec = vec!["sec".to_string()];
        let late = approvals
            .decide(&id, &who("carol", None, &sec), true, None)
            .await;
        assert!(
            matches!(late, Err(ApprovalError::Conflict("expired"))),
            "{late:?}"
        );
        let again = approvals
            .check(
                &who("alice", None, &dev),
                &[line(concat!("drop", " schema x"))],
            )
            .await
            .expect("checked");
        assert_ne!(again.pending[0].id, id);
    }

    #[test]
    fn approval_ids_are_checked_before_use() {
        assert!(is_approval_id(&new_id()));
        assert!(!is_approval_id("apr_../../etc"));
        assert!(!is_approval_id("apr_0123"));
    }
}
