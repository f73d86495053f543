//! Approvals in one Redis shared by every replica: any replica can hold the request, show the
//! console and take the decision; a held request sees a decision made elsewhere on its next
//! poll.
//!
//! Layout, under the namespace:
//! - `{ns}:a:{id}`: a hash — `rec` (the approval as opened, JSON), `grant`, `pending_until`,
//!   and once decided `decision` (JSON) and `until`. The key expires (`PEXPIREAT`) a day after
//!   its state ends ([`HISTORY_MS`]), so Redis itself drops old approvals;
//! - `{ns}:g:{grant}`: the id of the grant's live approval, expiring when it stops being live
//!   (the pending time, then the decision's). Grants expire by TTL in Redis itself;
//! - `{ns}:index`: a sorted set of ids by creation time, for listing; ids whose record is gone
//!   are removed when a listing meets them.
//!
//! Invariants: opening and deciding are single Lua scripts (atomic in Redis), so two replicas
//! never open two approvals for one grant nor take two decisions; every call is bounded by the
//! link's timeout; errors name the operation and Redis's error kind, never a key or value.
//! The scripts build record keys from their arguments, so the namespace must live on one
//! Redis node (not a cluster spread across slots).

use super::store::{ApprovalStore, Decided, Decision, HISTORY_MS, LIST_LIMIT};
use super::Approval;
use crate::policy::store::{RedisLink, StoreError};
use ::redis::aio::ConnectionManager;
use ::redis::RedisError;
use async_trait::async_trait;
use std::time::Duration;

/// Returns `{1, id}` when it stored the candidate, `{0, id}` with the live approval's id.
const OPEN_SCRIPT: &str = r"
local id = redis.call('GET', KEYS[1])
if id then
  local key = ARGV[6] .. id
  local live_until = redis.call('HGET', key, 'until') or redis.call('HGET', key, 'pending_until')
  if live_until and tonumber(live_until) > tonumber(ARGV[1]) then return {0, id} end
end
redis.call('HSET', KEYS[3], 'rec', ARGV[3], 'grant', ARGV[7], 'pending_until', ARGV[4])
redis.call('PEXPIREAT', KEYS[3], ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return {1, ARGV[2]}
";

/// Returns `ok`, `missing` or `conflict`.
const DECIDE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HEXISTS', KEYS[1], 'decision') == 1 then return 'conflict' end
local pending_until = tonumber(redis.call('HGET', KEYS[1], 'pending_until') or '0')
if tonumber(ARGV[1]) >= pending_until then return 'conflict' end
redis.call('HSET', KEYS[1], 'decision', ARGV[2], 'until', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
local grant = ARGV[6] .. (redis.call('HGET', KEYS[1], 'grant') or '')
if redis.call('GET', grant) == ARGV[5] then
  redis.call('SET', grant, ARGV[5], 'PXAT', ARGV[3])
end
return 'ok'
";

/// Approvals kept in Redis.
pub struct RedisApprovals {
    link: RedisLink,
    namespace: String,
}

impl std::fmt::Debug for RedisApprovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisApprovals")
            .field("namespace", &self.namespace)
            .field("link", &self.link)
            .finish()
    }
}

impl RedisApprovals {
    pub fn new(
        url: &str,
        namespace: &str,
        timeout: Duration,
    ) -> Result<RedisApprovals, StoreError> {
        Ok(RedisApprovals {
            link: RedisLink::open(url, timeout)?,
            namespace: namespace.to_string(),
        })
    }

    fn record_prefix(&self) -> String {
        format!("{}:a:", self.namespace)
    }

    fn grant_prefix(&self) -> String {
        format!("{}:g:", self.namespace)
    }

    fn index(&self) -> String {
        format!("{}:index", self.namespace)
    }

    async fn conn(&self) -> Result<ConnectionManager, RedisError> {
        self.link.connection().await
    }

    async fn open_now(
        &self,
        grant: &str,
        candidate: &Approval,
        now: u64,
    ) -> Result<(bool, String), RedisError> {
        let mut conn = self.conn().await?;
        let record = serde_json::to_string(&Approval {
            decision: None,
            ..candidate.clone()
        })
        .unwrap_or_default();
        let retain = candidate.pending_until_ms.saturating_add(HISTORY_MS);
        let (created, id): (i64, String) = ::redis::cmd("EVAL")
            .arg(OPEN_SCRIPT)
            .arg(3)
            .arg(format!("{}{grant}", self.grant_prefix()))
            .arg(self.index())
            .arg(format!("{}{}", self.record_prefix(), candidate.id))
            .arg(now)
            .arg(&candidate.id)
            .arg(record)
            .arg(candidate.pending_until_ms)
            .arg(retain)
            .arg(self.record_prefix())
            .arg(grant)
            .query_async(&mut conn)
            .await?;
        Ok((created == 1, id))
    }

    async fn get_now(&self, id: &str) -> Result<Option<Approval>, RedisError> {
        let mut conn = self.conn().await?;
        let (record, decision): (Option<String>, Option<String>) = ::redis::cmd("HMGET")
            .arg(format!("{}{id}", self.record_prefix()))
            .arg("rec")
            .arg("decision")
            .query_async(&mut conn)
            .await?;
        Ok(assemble(record, decision))
    }

    async fn decide_now(
        &self,
        id: &str,
        decision: &Decision,
        now: u64,
    ) -> Result<String, RedisError> {
        let mut conn = self.conn().await?;
        let json = serde_json::to_string(decision).unwrap_or_default();
        ::redis::cmd("EVAL")
            .arg(DECIDE_SCRIPT)
            .arg(1)
            .arg(format!("{}{id}", self.record_prefix()))
            .arg(now)
            .arg(json)
            .arg(decision.until_ms)
            .arg(decision.until_ms.saturating_add(HISTORY_MS))
            .arg(id)
            .arg(self.grant_prefix())
            .query_async(&mut conn)
            .await
    }

    async fn list_now(&self) -> Result<Vec<Approval>, RedisError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = ::redis::cmd("ZREVRANGE")
            .arg(self.index())
            .arg(0)
            .arg(LIST_LIMIT.saturating_mul(2))
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(format!("{}{id}", self.record_prefix()))
                .arg("rec")
                .arg("decision");
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut conn).await?;
        let mut gone = Vec::new();
        let mut all = Vec::new();
        for (id, (record, decision)) in ids.into_iter().zip(rows) {
            match assemble(record, decision) {
                Some(approval) => all.push(approval),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            ::redis::cmd("ZREM")
                .arg(self.index())
                .arg(gone)
                .query_async::<()>(&mut conn)
                .await?;
        }
        all.truncate(LIST_LIMIT);
        Ok(all)
    }
}

/// An approval from its stored parts; `None` when the record is gone or unreadable.
fn assemble(record: Option<String>, decision: Option<String>) -> Option<Approval> {
    let mut approval: Approval = serde_json::from_str(&record?).ok()?;
    approval.decision = match decision {
        Some(json) => Some(serde_json::from_str(&json).ok()?),
        None => None,
    };
    Some(approval)
}

#[async_trait]
impl ApprovalStore for RedisApprovals {
    async fn open(
        &self,
        grant: &str,
        candidate: Approval,
        now: u64,
    ) -> Result<(Approval, bool), StoreError> {
        let (created, id) = self
            .link
            .bounded("open approval", self.open_now(grant, &candidate, now))
            .await?;
        if created {
            return Ok((candidate, true));
        }
        match self.get(&id).await? {
            Some(live) => Ok((live, false)),
            // Dropped between the script and the read: a pending approval the next request
            // opens again; until then this one waits on the candidate, which no one decides.
            None => Err(StoreError::Unavailable(
                "redis open approval: the live approval vanished".into(),
            )),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        self.link.bounded("get approval", self.get_now(id)).await
    }

    async fn decide(&self, id: &str, decision: Decision, now: u64) -> Result<Decided, StoreError> {
        let outcome = self
            .link
            .bounded("decide approval", self.decide_now(id, &decision, now))
            .await?;
        let current = self.get(id).await?;
        Ok(match (outcome.as_str(), current) {
            ("ok", Some(approval)) => Decided::Done(approval),
            ("conflict", Some(approval)) => Decided::Conflict(approval),
            _ => Decided::NotFound,
        })
    }

    async fn list(&self, _now: u64) -> Result<Vec<Approval>, StoreError> {
        self.link.bounded("list approvals", self.list_now()).await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
