//! Observability: what SREs and security teams read about requests — the log line
//! ([`log`]), Prometheus metrics ([`metrics`]) and the audit trail ([`audit`]). Each reads a
//! finished [`crate::exchange::Exchange`]; none of them sees a Pingora type, and none of them
//! sees or records secret text. Approval events ([`approvals`]) are read the same way: typed
//! values, counted and written to the audit log.
//!
//! Layer: above `exchange` (what it reads) and the layers below it; below `config`, which holds
//! its sections, and the proxy, which calls it: log, then metrics, then audit (metrics never
//! call audit). It owns no process-wide state: a [`metrics::Metrics`] and an
//! [`audit::Auditor`] are values that start-up builds and hands to the proxy.

pub mod approvals;
pub mod audit;
pub mod batch_histogram;
pub mod log;
pub mod metrics;
