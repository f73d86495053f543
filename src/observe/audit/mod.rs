//! The audit log: one JSON line per request (and one per approval event, `"kind":
//! "approval"`), to a size-rotated file or to stdout; and the
//! reader behind `streammask audit show|replay`. The line is built from the request's
//! [`Exchange`] when it has been answered (Pingora's logging phase, so it adds no latency to
//! the response) and written by a writer thread, so a slow disk never holds a request.
//!
//! - [`record`]: the record's shape and how it is built from an exchange;
//! - `writer`: the writer thread, the file sink and its rotation;
//! - [`read`]: reading records back (`audit show`, `audit replay`).
//!
//! Invariants:
//! - a record never carries a raw secret. Findings carry the rule id, direction, JSON path
//!   (itself scanned, since object keys are client text), placeholder and a preview built from
//!   the rule's pattern (its literal prefix, at most 4 characters, taken from the engine that
//!   made the finding) and the secret's length only. Transcripts are the masked request as
//!   forwarded and the masked response as sent, and the writer scans every string of them
//!   again before storing (report-only rules leave raw text in what was forwarded, and a
//!   transcript must not depend on the request path having masked everything): every finding
//!   in a transcript is replaced. Model names are scanned; a session id is kept only when it
//!   has id characters and no finding;
//! - the request path never blocks on the sink: records go through a bounded queue; a full
//!   queue or a failing sink is counted (`streammask_audit_failures_total`) and logged, and
//!   with `on_failure = "refuse"` new requests get a 503 until a write succeeds again;
//! - rotation keeps `max_files` old files (`audit.jsonl.1` is the newest); readers read the
//!   rotated files oldest first, then the live one.

pub mod read;
pub mod record;
mod writer;

pub use read::{read_records, replay, show};
pub use record::AuditRecord;

use crate::anthropic::api::{ApiError, ErrorKind};
use crate::config_error::{invalid, ConfigError};
use crate::engine::Engine;
use crate::exchange::Exchange;
use crate::observe::metrics::AuditCounters;
use crate::policy::approvals::ApprovalEvent;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use writer::{FailureLog, Output};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit.path {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Off,
    Stdout,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Keep serving; lost records are counted and logged.
    Continue,
    /// Refuse new requests (503) while the sink fails.
    Refuse,
}

/// `[audit]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    pub sink: SinkKind,
    pub path: PathBuf,
    pub max_bytes: u64,
    pub max_files: usize,
    pub transcripts: bool,
    pub transcript_max_bytes: usize,
    pub queue: usize,
    pub on_failure: OnFailure,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            sink: SinkKind::Off,
            path: PathBuf::from("/var/log/streammask/audit.jsonl"),
            max_bytes: 100 << 20,
            max_files: 10,
            transcripts: false,
            transcript_max_bytes: 1 << 20,
            queue: 4096,
            on_failure: OnFailure::Continue,
        }
    }
}

impl AuditSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sink == SinkKind::File && self.path.as_os_str().is_empty() {
            return Err(invalid(
                "audit.path",
                "must be set when audit.sink = \"file\"",
            ));
        }
        if self.max_bytes < 4096 {
            return Err(invalid("audit.max_bytes", "must be at least 4096"));
        }
        if !(1..=1000).contains(&self.max_files) {
            return Err(invalid("audit.max_files", "must be between 1 and 1000"));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(invalid("audit.queue", "must be between 1 and 1000000"));
        }
        if self.transcript_max_bytes < 1024 {
            return Err(invalid(
                "audit.transcript_max_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

/// The audit log of a running proxy: the queue to its writer thread and what the request path
/// needs to know about it. Built at start-up ([`Auditor::start`]); dropping it (and so the
/// queue's sender) lets the writer flush what is queued and stop. Clones share the queue (the
/// approvals observer keeps one); the writer stops when the last is dropped.
#[derive(Clone)]
pub struct Auditor {
    sender: SyncSender<Vec<u8>>,
    refuse: bool,
    transcripts: bool,
    transcript_max_bytes: usize,
    healthy: Arc<AtomicBool>,
    counters: Option<AuditCounters>,
    failures: Arc<FailureLog>,
    /// Records queued and not yet written or given up by the writer.
    queued: Arc<AtomicUsize>,
}

impl Auditor {
    /// Open the sink and start the writer thread; `None` when `sink = "off"`. A file that
    /// cannot be opened is an error naming `audit.path`. `counters` are the metrics the writer
    /// updates (`None` when metrics are off).
    pub fn start(
        section: &AuditSection,
        counters: Option<AuditCounters>,
    ) -> Result<Option<Auditor>, AuditError> {
        let output = match section.sink {
            SinkKind::Off => return Ok(None),
            SinkKind::Stdout => Output::Stdout,
            SinkKind::File => Output::open(section).map_err(|source| AuditError::Open {
                path: section.path.clone(),
                source,
            })?,
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(section.queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let failures = Arc::new(FailureLog::default());
        let queued = Arc::new(AtomicUsize::new(0));
        writer::spawn(
            receiver,
            output,
            Arc::clone(&healthy),
            counters.clone(),
            Arc::clone(&failures),
            Arc::clone(&queued),
        )
        .map_err(|source| AuditError::Open {
            path: section.path.clone(),
            source,
        })?;
        Ok(Some(Auditor {
            sender,
            refuse: section.on_failure == OnFailure::Refuse,
            transcripts: section.transcripts,
            transcript_max_bytes: section.transcript_max_bytes,
            healthy,
            counters,
            failures,
            queued,
        }))
    }

    /// Wait (at most `within`) until every record queued so far has reached the sink or been
    /// given up; whether the queue emptied. The process calls this before it exits.
    pub fn settle(&self, within: Duration) -> bool {
        let until = std::time::Instant::now() + within;
        while self.queued.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Whether requests should keep their transcripts for this log.
    pub fn keeps_transcripts(&self) -> bool {
        self.transcripts
    }

    /// The size limit of one transcript.
    pub fn transcript_limit(&self) -> usize {
        self.transcript_max_bytes
    }

    /// With `on_failure = "refuse"` and a failing sink, the error new requests get.
    pub fn refusal(&self) -> Option<ApiError> {
        (self.refuse && !self.healthy.load(Ordering::Relaxed)).then(|| {
            ApiError::new(
                ErrorKind::Overloaded,
                "streammask: the audit log is unavailable, so requests are refused until it recovers",
            )
            .with_status(503)
        })
    }

    /// Build the exchange's record and queue it. Called once per request, at its end; the
    /// transcripts are taken out of the exchange. `engine` is the one that made the findings
    /// (the caller's profile's).
    pub fn record(&self, exchange: &mut Exchange, engine: &Engine) {
        let Some(line) = record::line(exchange, engine, self.transcript_max_bytes) else {
            return;
        };
        self.queue(line);
    }

    /// Queue the line of an approval event (requested, approved, denied, expired, used).
    pub fn record_approval(&self, event: &ApprovalEvent) {
        if let Some(line) = record::approval_line(event) {
            self.queue(line);
        }
    }

    fn queue(&self, line: Vec<u8>) {
        // Counted before the send, so the writer never takes away what was not added yet.
        self.queued.fetch_add(1, Ordering::AcqRel);
        let (write_failed, what, why) = match self.sender.try_send(line) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => {
                (false, "queue full, record dropped", "the writer is behind")
            }
            Err(TrySendError::Disconnected(_)) => {
                (true, "writer stopped, record dropped", "no writer")
            }
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.healthy.store(false, Ordering::Relaxed);
        if let Some(counters) = &self.counters {
            counters.lost(write_failed, 1);
        }
        self.failures.log(what, &why);
    }
}
