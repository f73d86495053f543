//! Where approvals live: the [`ApprovalStore`] contract and its in-process backend.
//!
//! Invariants (both backends):
//! - a grant has at most one live approval: [`ApprovalStore::open`] returns the live one or
//!   stores the candidate, atomically, so retries and parallel requests share one approval;
//! - a decision is a compare-and-set from pending: a second decision, or one after the pending
//!   time, is a [`Decided::Conflict`] and changes nothing;
//! - records are kept for [`HISTORY`] after their state ends (for the console's decided and
//!   expired list), then dropped; the memory backend also keeps at most `max_records`,
//!   dropping those whose state ended first.

use super::{Approval, DecisionRecord};
use crate::policy::store::StoreError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a record is kept once its state (pending or grant) has ended.
pub const HISTORY_MS: u64 = 24 * 3600 * 1000;
/// [`HISTORY_MS`], for readers.
pub const HISTORY: std::time::Duration = std::time::Duration::from_millis(HISTORY_MS);

/// The most approvals a listing returns (newest first).
pub const LIST_LIMIT: usize = 500;

/// A decision to record.
pub type Decision = DecisionRecord;

/// The outcome of [`ApprovalStore::decide`].
#[derive(Debug)]
pub enum Decided {
    /// Recorded; the approval as it now stands.
    Done(Approval),
    NotFound,
    /// Already decided, or expired: nothing changed.
    Conflict(Approval),
}

#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// The live approval of `grant` (`false`), or `candidate` stored as its new pending one
    /// (`true`).
    async fn open(
        &self,
        grant: &str,
        candidate: Approval,
        now: u64,
    ) -> Result<(Approval, bool), StoreError>;

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError>;

    /// Record `decision` if `id` is still pending at `now`.
    async fn decide(&self, id: &str, decision: Decision, now: u64) -> Result<Decided, StoreError>;

    /// The approvals kept (at most [`LIST_LIMIT`], newest first).
    async fn list(&self, now: u64) -> Result<Vec<Approval>, StoreError>;

    /// "memory" or "redis".
    fn backend(&self) -> &'static str;
}

/// Approvals of one replica, in process.
pub struct MemoryApprovals {
    max_records: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<String, Approval>,
    /// grant → id of its latest approval.
    grants: HashMap<String, String>,
}

impl MemoryApprovals {
    pub fn new(max_records: usize) -> MemoryApprovals {
        MemoryApprovals {
            max_records: max_records.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl Inner {
    /// Drop records past their history, then the ones whose state ended first while over
    /// `max`.
    fn prune(&mut self, now: u64, max: usize) {
        self.records
            .retain(|_, a| a.expires_at_ms().saturating_add(HISTORY_MS) > now);
        if self.records.len() > max {
            let mut by_end: Vec<(u64, String)> = self
                .records
                .values()
                .map(|a| (a.expires_at_ms(), a.id.clone()))
                .collect();
            by_end.sort_unstable();
            let excess = self.records.len() - max;
            for (_, id) in by_end.into_iter().take(excess) {
                self.records.remove(&id);
            }
        }
        let records = &self.records;
        self.grants.retain(|_, id| records.contains_key(id));
    }
}

#[async_trait]
impl ApprovalStore for MemoryApprovals {
    async fn open(
        &self,
        grant: &str,
        candidate: Approval,
        now: u64,
    ) -> Result<(Approval, bool), StoreError> {
        let mut inner = self.lock()?;
        if let Some(live) = inner
            .grants
            .get(grant)
            .and_then(|id| inner.records.get(id))
            .filter(|a| a.is_live(now))
        {
            return Ok((live.clone(), false));
        }
        inner.prune(now, self.max_records.saturating_sub(1));
        inner.grants.insert(grant.to_string(), candidate.id.clone());
        inner
            .records
            .insert(candidate.id.clone(), candidate.clone());
        Ok((candidate, true))
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        Ok(self.lock()?.records.get(id).cloned())
    }

    async fn decide(&self, id: &str, decision: Decision, now: u64) -> Result<Decided, StoreError> {
        let mut inner = self.lock()?;
        let Some(approval) = inner.records.get_mut(id) else {
            return Ok(Decided::NotFound);
        };
        if approval.decision.is_some() || now >= approval.pending_until_ms {
            return Ok(Decided::Conflict(approval.clone()));
        }
        approval.decision = Some(decision);
        Ok(Decided::Done(approval.clone()))
    }

    async fn list(&self, now: u64) -> Result<Vec<Approval>, StoreError> {
        let mut inner = self.lock()?;
        inner.prune(now, self.max_records);
        let mut all: Vec<Approval> = inner.records.values().cloned().collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.created_at_ms));
        all.truncate(LIST_LIMIT);
        Ok(all)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// What every [`ApprovalStore`] must do, as one executable check that panics on the first
/// broken promise: the memory backend's unit tests and `tests/redis_store.rs` (a real Redis)
/// run it. Not used by the proxy.
#[doc(hidden)]
pub mod contract {
    use super::*;

    /// A pending approval with fixed fields, for tests.
    pub fn approval(id: &str, grant: &str, created: u64, pending_until: u64) -> Approval {
        Approval {
            id: id.into(),
            grant: grant.into(),
            rule_id: "approve-drop-database".into(),
            rule_description: "drop".into(),
            subject: "alice".into(),
            groups: vec!["dev".into()],
            session_id: None,
            preview: concat!("DROP", " DATABASE x;").into(),
            request_id: "smreq_1".into(),
            created_at_ms: created,
            pending_until_ms: pending_until,
            decision: None,
        }
    }

    fn decision(approved: bool, at: u64, until: u64) -> Decision {
        Decision {
            approved,
            by: "carol".into(),
            reason: None,
            at_ms: at,
            until_ms: until,
        }
    }

    /// The contract every backend keeps, run against the memory one here and against a real
    /// Redis in `tests/redis_store.rs`.
    pub async fn check(store: &dyn ApprovalStore, unique: &str) {
        let id = |n: u32| format!("apr_{unique}{n:04}");
        let grant = format!("grant-{unique}");
        let now = crate::policy::store::now_ms();
        let (first, created) = store
            .open(&grant, approval(&id(1), &grant, now, now + 60_000), now)
            .await
            .expect("open");
        assert!(created && first.id == id(1));
        // The live approval is shared.
        let (again, created) = store
            .open(&grant, approval(&id(2), &grant, now, now + 60_000), now)
            .await
            .expect("open");
        assert!(!created && again.id == id(1));
        assert!(store.get(&id(2)).await.expect("get").is_none());
        // One decision only.
        let done = store
            .decide(&id(1), decision(true, now, now + 1_000), now)
            .await
            .expect("decide");
        assert!(
            matches!(done, Decided::Done(ref a) if a.decision.as_ref().is_some_and(|d| d.approved))
        );
        let twice = store
            .decide(&id(1), decision(false, now, now + 1_000), now)
            .await
            .expect("decide");
        assert!(matches!(twice, Decided::Conflict(_)));
        let missing = store
            .decide(&id(9), decision(false, now, now + 1_000), now)
            .await
            .expect("decide");
        assert!(matches!(missing, Decided::NotFound));
        // After the grant's time a new approval is opened for the same grant.
        let later = now + 2_000;
        let (fresh, created) = store
            .open(
                &grant,
                approval(&id(3), &grant, later, later + 60_000),
                later,
            )
            .await
            .expect("open");
        assert!(created && fresh.id == id(3));
        // Pending past its time: deciding it is a conflict.
        let expired = store
            .decide(&id(3), decision(true, later, later + 1), later + 60_000)
            .await
            .expect("decide");
        assert!(matches!(expired, Decided::Conflict(_)));
        let listed = store.list(later).await.expect("list");
        let ids: Vec<&str> = listed.iter().map(|a| a.id.as_str()).collect();
        assert!(
            ids.contains(&id(1).as_str()) && ids.contains(&id(3).as_str()),
            "{ids:?}"
        );
        let kept = store.get(&id(1)).await.expect("get").expect("kept");
        assert_eq!(kept.preview, concat!("DROP", " DATABASE x;"));
        assert_eq!(kept.decision.map(|d| d.by), Some("carol".to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::contract::approval;
    use super::*;

    #[tokio::test]
    async fn memory_keeps_the_contract() {
        super::contract::check(&MemoryApprovals::new(100), "0000000000000000000000000000").await;
    }

    #[tokio::test]
    async fn memory_is_bounded_dropping_what_ended_first() {
        let store = MemoryApprovals::new(3);
        let now = crate::policy::store::now_ms();
        for n in 0..5u64 {
            let id = format!("apr_{n}");
            store
                .open(
                    &format!("g{n}"),
                    approval(&id, "g", now, now + 1000 + n),
                    now,
                )
                .await
                .expect("open");
        }
        let ids: Vec<String> = store
            .list(now)
            .await
            .expect("list")
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(!ids.contains(&"apr_0".to_string()), "{ids:?}");
        assert!(ids.contains(&"apr_4".to_string()), "{ids:?}");
    }
}
