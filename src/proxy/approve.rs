//! The approval phase of admission: a request with `approve` findings goes upstream only on
//! approved grants (see [`crate::policy::approvals`]).
//!
//! Invariants:
//! - fail closed: no approvals service, a store that does not answer, a denial, a pending
//!   approval, or a held request whose wait ends without a decision — each is a refusal, and
//!   nothing has gone upstream (this runs before any upstream connection);
//! - `return` mode answers at once (403 `permission_error`, headers
//!   `x-streammask-approval-id` and `x-streammask-approval-state: pending`); `hold` mode keeps
//!   the request open, silent, up to `hold_secs`, then answers the same way. A client that
//!   leaves while held ends only its own wait: the approval stays pending;
//! - messages carry rule ids, approval ids, the approver's masked reason and the console link,
//!   never request text.

use super::RequestCtx;
use crate::anthropic::api::{ApiError, ErrorKind};
use crate::engine::{Action, Engine};
use crate::exchange::Outcome;
use crate::policy::approvals::{matched_lines, Approval, Approvals, Mode, Requester};
use pingora::proxy::Session;

/// Require approved grants for every approve finding of the request (`body` as the client sent
/// it, decoded). `Ok` means it may go upstream.
pub(super) async fn require_approval(
    approvals: Option<&Approvals>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    engine: &Engine,
    body: &[u8],
) -> Result<(), ApiError> {
    let exchange = &mut ctx.exchange;
    if exchange
        .request_findings
        .first_with(Action::Approve)
        .is_none()
    {
        return Ok(());
    }
    let decided_before = exchange.outcome;
    exchange.outcome = Outcome::Approval;
    let Some(approvals) = approvals else {
        return Err(ApiError::new(
            ErrorKind::Permission,
            "streammask: this request matched a rule that needs human approval, and approvals are \
             not available on this proxy; nothing was forwarded",
        ));
    };
    let matched = matched_lines(engine, body, &exchange.request_findings);
    if matched.is_empty() {
        // Every approve finding yields a line (see `lines`); none means a bug there, and a bug
        // must not let the request through.
        tracing::error!("approve findings without a matched line: request refused");
        return Err(ApiError::new(
            ErrorKind::Permission,
            "streammask: this request matched a rule that needs human approval, and the approval \
             could not be prepared; nothing was forwarded",
        ));
    }
    let (subject, groups) = exchange
        .caller
        .as_ref()
        .map(|c| (c.subject.clone(), c.groups.clone()))
        .unwrap_or_default();
    let session_id = exchange.session_id.clone();
    let request_id = exchange.request_id.clone();
    let who = Requester {
        subject: &subject,
        groups: &groups,
        session: session_id.as_deref(),
        request_id: &request_id,
    };
    let checked = approvals.check(&who, &matched).await;
    let standing = match checked {
        Ok(standing) => standing,
        Err(error) => {
            ctx.exchange.approval_store_failed = true;
            return Err(store_down(&error));
        }
    };
    let standing = if !standing.cleared()
        && standing.denied.is_empty()
        && approvals.settings().mode == Mode::Hold
    {
        let deadline = tokio::time::Instant::now() + approvals.settings().hold;
        tokio::select! {
            waited = approvals.wait(standing, deadline) => match waited {
                Ok(standing) => standing,
                Err(error) => {
                    ctx.exchange.approval_store_failed = true;
                    return Err(store_down(&error));
                }
            },
            // The client left: its wait ends here; the approval stays pending for a retry.
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                return Err(ApiError::new(
                    ErrorKind::Permission,
                    "streammask: the client closed the connection while the request waited for approval",
                ).with_status(499));
            }
        }
    } else {
        standing
    };
    if let Some(denied) = standing.denied.first() {
        return Err(denied_error(denied));
    }
    if let Some(pending) = standing.pending.first() {
        return Err(pending_error(approvals, pending, standing.pending.len()));
    }
    approvals.used(&standing, &request_id);
    ctx.exchange.outcome = decided_before;
    ctx.exchange.approvals_used = standing.approved.iter().map(|a| a.id.clone()).collect();
    Ok(())
}

fn store_down(error: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "approvals store unavailable: a request needing approval is refused");
    ApiError::new(
        ErrorKind::Api,
        "streammask: this request needs human approval and the approvals store is unavailable; \
         nothing was forwarded. Retry later",
    )
    .with_status(503)
}

fn pending_error(approvals: &Approvals, pending: &Approval, count: usize) -> ApiError {
    let more = if count > 1 {
        format!(
            " ({} more approvals are pending for this request)",
            count - 1
        )
    } else {
        String::new()
    };
    let message = format!(
        "streammask: this request needs human approval before it is sent to the model: it \
         matched rule `{}` ({}). Approval id {}{more}: an approver can approve it at {}. Send \
         the request again once it is approved.",
        pending.rule_id,
        pending.rule_description,
        pending.id,
        approvals.link(&pending.id)
    );
    ApiError::new(ErrorKind::Permission, message)
        .with_header("x-streammask-approval-id", pending.id.clone())
        .with_header("x-streammask-approval-state", "pending")
}

fn denied_error(denied: &Approval) -> ApiError {
    let (by, reason) = denied
        .decision
        .as_ref()
        .map(|d| (d.by.as_str(), d.reason.as_deref()))
        .unwrap_or(("an approver", None));
    let reason = reason.map_or(String::new(), |r| format!(": {r}"));
    ApiError::new(
        ErrorKind::Permission,
        format!(
            "streammask: {by} denied this request (rule `{}`, approval {}){reason}",
            denied.rule_id, denied.id
        ),
    )
    .with_header("x-streammask-approval-id", denied.id.clone())
    .with_header("x-streammask-approval-state", "denied")
}
