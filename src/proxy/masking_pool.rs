//! The threads that mask large request bodies off the event loop (`[masking] offload_bytes`,
//! `offload_threads`).
//!
//! Invariants:
//! - as many workers as permits, started once: a caller holding a permit finds a worker free,
//!   so the only wait is the wait for a permit, and the caller bounds it ([`PoolRefusal::Busy`]);
//! - workers run at a lower CPU priority than the event loop (nice +[`WORKER_NICENESS`] on
//!   Linux): a worst-case body competes for the same cores as small requests, and the scheduler
//!   lets the small ones run first, so they keep their latency;
//! - a job that panics is reported to its caller as [`PoolRefusal::Unavailable`]; its worker
//!   lives on, and its permit is given back.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How much lower than the event loop the workers run (a nice value: 10 gives a busy worker
/// about a tenth of the CPU share of a busy event-loop thread on the same core).
pub const WORKER_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run on the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRefusal {
    /// No permit within the wait: every worker is busy with other jobs.
    Busy { waited_ms: u64 },
    /// The job panicked, or the pool is gone.
    Unavailable,
}

pub struct MaskingPool {
    permits: Arc<Semaphore>,
    /// `Sender` is `Sync`: callers on any thread send without a lock of ours.
    jobs: mpsc::Sender<Job>,
}

impl MaskingPool {
    /// Start `threads` workers (at least one).
    pub fn start(threads: usize) -> MaskingPool {
        let threads = threads.max(1);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..threads {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new()
                .name(format!("streammask-mask-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match receiver.lock() {
                            Ok(jobs) => jobs.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "a masking worker could not be started");
            }
        }
        MaskingPool {
            permits: Arc::new(Semaphore::new(threads)),
            jobs: sender,
        }
    }

    /// Run `job` on a worker once a permit is free, waiting at most `wait` for one.
    pub async fn run<T: Send + 'static>(
        &self,
        wait: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolRefusal> {
        let permit =
            match tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(PoolRefusal::Unavailable),
                Err(_) => {
                    return Err(PoolRefusal::Busy {
                        waited_ms: wait.as_millis() as u64,
                    })
                }
            };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job));
            drop(permit);
            let _ = done.send(outcome);
        });
        if self.jobs.send(job).is_err() {
            return Err(PoolRefusal::Unavailable);
        }
        match result.await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(PoolRefusal::Unavailable),
        }
    }

    /// Permits free right now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Lower the calling thread's CPU priority. On Linux `setpriority(PRIO_PROCESS, 0, …)` applies
/// to the calling thread only (its own scheduling entity), not to the whole process.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WORKER_NICENESS) } != 0;
    if failed {
        tracing::warn!("masking worker runs at normal priority (setpriority failed)");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from procfs (field 19 of `/proc/thread-self/stat`).
    fn own_niceness() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs");
        let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
        after_name
            .split(' ')
            .nth(16)
            .expect("nice field")
            .parse()
            .expect("a number")
    }

    #[tokio::test]
    async fn jobs_run_on_lower_priority_workers_and_panics_are_contained() {
        let pool = MaskingPool::start(2);
        let ours = own_niceness();
        let theirs = pool
            .run(Duration::from_secs(10), own_niceness)
            .await
            .expect("ran");
        assert_eq!(theirs, (ours + WORKER_NICENESS).min(19));
        let refused = pool
            .run(Duration::from_secs(10), || -> u32 {
                panic!("a job that fails")
            })
            .await;
        assert_eq!(refused, Err(PoolRefusal::Unavailable));
        // The worker lives on and the permit came back.
        assert_eq!(pool.run(Duration::from_secs(10), || 7).await, Ok(7));
        assert_eq!(pool.available(), 2);
    }

    #[tokio::test]
    async fn the_wait_for_a_permit_is_bounded() {
        let pool = Arc::new(MaskingPool::start(1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(Duration::from_secs(10), move || hold.recv().is_ok())
                    .await
            })
        };
        while pool.available() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let refused = pool.run(Duration::from_millis(30), || ()).await;
        assert_eq!(refused, Err(PoolRefusal::Busy { waited_ms: 30 }));
        release.send(()).expect("the busy job waits");
        assert_eq!(busy.await.expect("task"), Ok(true));
        assert_eq!(pool.run(Duration::from_millis(30), || 1).await, Ok(1));
    }
}
