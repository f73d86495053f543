//! Approval events to metrics and the audit log: the [`ApprovalObserver`] start-up hands to
//! the approvals service.
//!
//! Invariant: it only reads the typed event (ids, rule, caller, decision and masked reason);
//! it neither blocks (the audit queue is bounded and never waited on) nor fails the change.

use crate::observe::audit::Auditor;
use crate::observe::metrics::Metrics;
use crate::policy::approvals::{ApprovalEvent, ApprovalObserver};
use std::sync::Arc;

/// Counts and records approval events.
pub struct ApprovalObservers {
    pub metrics: Option<Arc<Metrics>>,
    pub auditor: Option<Auditor>,
}

impl ApprovalObserver for ApprovalObservers {
    fn observe(&self, event: &ApprovalEvent) {
        tracing::info!(
            event = event.kind.label(),
            approval = %event.approval.id,
            rule = %event.approval.rule_id,
            "approval"
        );
        if let Some(metrics) = &self.metrics {
            metrics.approval_event(event);
        }
        if let Some(auditor) = &self.auditor {
            auditor.record_approval(event);
        }
    }
}
