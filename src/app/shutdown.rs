//! The graceful drain and the graceful upgrade, driven from the signals Pingora would
//! otherwise handle itself.
//!
//! SIGTERM: `/readyz` answers 503 at once; the listener keeps accepting for
//! `shutdown.readiness_delay_secs` (load balancers take a few probes to notice), then stops
//! (Pingora's graceful shutdown); requests in flight run on. As soon as none is open the
//! process writes out its audit queue and exits 0. At `shutdown.grace_secs` after the signal,
//! whatever is still open is ended — streams with an SSE `overloaded_error` event, requests
//! without a response yet with a 503 — and the process exits 0 once they are written (or a few
//! seconds later at most).
//!
//! SIGQUIT: Pingora's graceful upgrade. The listening sockets go to a new process started
//! with `--upgrade` (over `server.upgrade_sock`); this one then drains exactly as after
//! SIGTERM, without the readiness delay (the new process already accepts). SIGINT: immediate
//! exit, as before.
//!
//! Invariants: the process never exits while a request it accepted is open, until the
//! deadline has passed and those requests were told to end; the exit status of a drain is 0.

use crate::proxy::drain::{Drain, DrainPhase};
use crate::proxy::LiveState;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After the deadline, how long ended requests get to write their last bytes.
const END_WAIT: Duration = Duration::from_secs(5);
/// How long the audit queue gets to reach its sink before the process exits.
const AUDIT_WAIT: Duration = Duration::from_secs(5);
/// How often the drain looks at the open-request count.
const DRAIN_TICK: Duration = Duration::from_millis(50);
/// Pingora waits this long after SIGQUIT before it stops its listeners (its `CLOSE_TIMEOUT`).
const UPGRADE_CLOSE: Duration = Duration::from_secs(5);

/// How long Pingora itself may keep the process after the drain began; the drain exits
/// earlier, this is a backstop should it not.
pub fn pingora_grace(grace: Duration) -> u64 {
    (grace + END_WAIT + AUDIT_WAIT + UPGRADE_CLOSE).as_secs() + 5
}

/// The signal watch handed to Pingora ([`pingora::server::RunArgs`]).
pub struct DrainOnSignal {
    pub live: Arc<LiveState>,
    pub readiness_delay: Duration,
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut terminate), Ok(mut quit), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGQUIT/SIGINT: stopping now");
            return ShutdownSignal::FastShutdown;
        };
        let drain = self.live.load().drain.clone();
        tokio::select! {
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => {
                drain.hand_over();
                tracing::info!("SIGQUIT: handing the listeners to the new process, then draining");
                self.watch_open_requests(Instant::now() + UPGRADE_CLOSE);
                ShutdownSignal::GracefulUpgrade
            }
            _ = terminate.recv() => {
                drain.advance(DrainPhase::Draining);
                tracing::info!(
                    readiness_delay_secs = self.readiness_delay.as_secs(),
                    grace_secs = self.grace.as_secs(),
                    "SIGTERM: /readyz answers 503; still accepting during the readiness delay"
                );
                self.watch_open_requests(Instant::now() + self.readiness_delay);
                tokio::select! {
                    _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
                    () = tokio::time::sleep(self.readiness_delay) => {}
                }
                drain.advance(DrainPhase::Closing);
                tracing::info!("drain: the listener stops accepting; requests in flight finish");
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

impl DrainOnSignal {
    /// Start the thread that exits the process once nothing is open after `closing_at` (when
    /// the listener stops), or once the grace deadline has passed and what was open ended.
    fn watch_open_requests(&self, closing_at: Instant) {
        let live = Arc::clone(&self.live);
        let deadline = Instant::now() + self.grace;
        let spawned = std::thread::Builder::new()
            .name("streammask-drain".into())
            .spawn(move || drain_then_exit(&live, closing_at, deadline));
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the drain thread: Pingora's grace period applies");
        }
    }
}

fn drain_then_exit(live: &LiveState, closing_at: Instant, deadline: Instant) -> ! {
    let state = live.load_full();
    let drain: &Drain = &state.drain;
    loop {
        let now = Instant::now();
        if now >= closing_at && state.open_requests() == 0 {
            tracing::info!("drain complete: no request open");
            break;
        }
        if now >= deadline {
            let open = state.open_requests();
            tracing::warn!(
                open,
                "shutdown.grace_secs reached: ending the requests still open (overloaded_error)"
            );
            drain.advance(DrainPhase::Deadline);
            let ends_by = Instant::now() + END_WAIT;
            while state.open_requests() > 0 && Instant::now() < ends_by {
                std::thread::sleep(DRAIN_TICK);
            }
            break;
        }
        std::thread::sleep(DRAIN_TICK);
    }
    if let Some(auditor) = &state.auditor {
        if !auditor.settle(AUDIT_WAIT) {
            tracing::error!("audit records still queued at exit were lost");
        }
    }
    tracing::info!("exiting");
    exit_now(0)
}

/// End the process without running destructors: Pingora's runtimes are still up on other
/// threads, and every record worth keeping has been written.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}
