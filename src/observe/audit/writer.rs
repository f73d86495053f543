//! The audit writer: a thread that takes finished record lines from a bounded queue and writes
//! them to stdout or to a size-rotated file.
//!
//! Invariants: a record counts as written only once it reached the sink (after the flush); a
//! failing sink marks the log unhealthy until a write succeeds again; failures are logged at
//! most once a second, so a broken disk cannot flood the logs.

use super::AuditSection;
use crate::observe::metrics::AuditCounters;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
/// Where records go.
pub(super) enum Output {
    Stdout,
    File {
        path: PathBuf,
        file: Option<std::io::BufWriter<std::fs::File>>,
        size: u64,
        max_bytes: u64,
        max_files: usize,
    },
}

fn open_append(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((file, size))
}

/// The `n`th rotated file next to `path` (`audit.jsonl.1` is the newest).
pub(super) fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Output {
    /// The file sink of `section`, appending to what is there.
    pub(super) fn open(section: &AuditSection) -> std::io::Result<Output> {
        let (file, size) = open_append(&section.path)?;
        Ok(Output::File {
            path: section.path.clone(),
            file: Some(std::io::BufWriter::with_capacity(64 * 1024, file)),
            size,
            max_bytes: section.max_bytes,
            max_files: section.max_files,
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line)?;
                out.flush()
            }
            Output::File {
                path,
                file,
                size,
                max_bytes,
                max_files,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max_bytes {
                    if let Some(mut f) = file.take() {
                        f.flush()?;
                    }
                    for n in (1..*max_files).rev() {
                        let from = rotated(path, n);
                        if from.exists() {
                            std::fs::rename(&from, rotated(path, n + 1))?;
                        }
                    }
                    std::fs::rename(&*path, rotated(path, 1))?;
                    *size = 0;
                }
                let writer = match file {
                    Some(writer) => writer,
                    None => {
                        let (f, len) = open_append(path)?;
                        *size = len;
                        file.insert(std::io::BufWriter::with_capacity(64 * 1024, f))
                    }
                };
                if let Err(err) = writer.write_all(line) {
                    // Drop the handle: the next record reopens the file.
                    *file = None;
                    return Err(err);
                }
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout => Ok(()),
            Output::File { file, .. } => match file.as_mut().map(|f| f.flush()) {
                Some(Err(err)) => {
                    *file = None;
                    Err(err)
                }
                _ => Ok(()),
            },
        }
    }
}

/// Logs sink problems at most once a second.
pub(super) struct FailureLog {
    started: Instant,
    /// The second (since `started`, plus one) of the last line logged.
    last: AtomicU64,
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl FailureLog {
    pub(super) fn log(&self, what: &str, error: &dyn std::fmt::Display) {
        let now = self.started.elapsed().as_secs() + 1;
        if self.last.swap(now, Ordering::Relaxed) != now {
            tracing::error!(error = %error, "audit log: {what}");
        }
    }
}

/// The writer wakes up this often and takes every record waiting. It does not block on the
/// channel: a receiver blocked in `recv` makes every `try_send` wake a thread (a futex call and
/// a context switch per request), which cost more than the whole record. Records cross to it
/// as finished lines (one buffer each): handing over the many small allocations of a record
/// made glibc's allocator fragment and slow down over time (frees on a foreign arena).
const WRITER_TICK: Duration = Duration::from_millis(10);

/// Start the writer thread; it stops once every sender is dropped and the queue is drained.
pub(super) fn spawn(
    receiver: Receiver<Vec<u8>>,
    mut output: Output,
    healthy: Arc<AtomicBool>,
    counters: Option<AuditCounters>,
    failures: Arc<FailureLog>,
    queued: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let sink = Sink {
        healthy,
        counters,
        failures,
        queued,
    };
    std::thread::Builder::new()
        .name("streammask-audit".into())
        .spawn(move || sink.run(receiver, &mut output))
        .map(|_| ())
}

/// What the writer reports to: health, metrics and the failure log.
struct Sink {
    healthy: Arc<AtomicBool>,
    counters: Option<AuditCounters>,
    failures: Arc<FailureLog>,
    /// The auditor's count of records not yet handled; taken down once a batch is flushed.
    queued: Arc<AtomicUsize>,
}

impl Sink {
    fn run(&self, receiver: Receiver<Vec<u8>>, output: &mut Output) {
        loop {
            let mut written = 0u64;
            let mut taken = 0usize;
            let mut open = true;
            loop {
                let line = match receiver.try_recv() {
                    Ok(line) => line,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                };
                taken += 1;
                match output.write_line(&line) {
                    Ok(()) => written += 1,
                    Err(err) => self.failed(1, &err),
                }
            }
            if written > 0 {
                // Records count as written once they reached the file.
                match output.flush() {
                    Ok(()) => {
                        if let Some(counters) = &self.counters {
                            counters.written(written);
                        }
                        self.healthy.store(true, Ordering::Relaxed);
                    }
                    Err(err) => self.failed(written, &err),
                }
            }
            if taken > 0 {
                self.queued.fetch_sub(taken, Ordering::AcqRel);
            }
            if !open {
                return;
            }
            std::thread::sleep(WRITER_TICK);
        }
    }

    fn failed(&self, records: u64, error: &std::io::Error) {
        self.healthy.store(false, Ordering::Relaxed);
        if let Some(counters) = &self.counters {
            counters.lost(true, records);
        }
        self.failures.log("write failed", error);
    }
}
