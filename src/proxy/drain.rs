//! Where the process is in a graceful shutdown, as requests see it.
//!
//! The phases only move forward: [`DrainPhase::Serving`] → `Draining` (SIGTERM: `/readyz`
//! answers 503, the listener still accepts) → `Closing` (the listener stopped) → `Deadline`
//! (`shutdown.grace_secs` passed: every stream still open ends now with an SSE `error` event of
//! type `overloaded_error`, which clients retry, and requests not yet answered get a 503).
//! Who moves them is start-up's business ([`crate::app`]); this module only carries the phase.
//!
//! Invariants: setting an earlier phase than the current one is ignored; waiting for the
//! deadline costs a request nothing until it comes (one watch receiver, woken once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainPhase {
    Serving,
    Draining,
    Closing,
    Deadline,
}

/// The shared phase; clones see the same one.
#[derive(Debug, Clone)]
pub struct Drain {
    phase: Arc<watch::Sender<DrainPhase>>,
    /// The drain is a graceful upgrade's: a new process serves the same addresses.
    handed_over: Arc<AtomicBool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            phase: Arc::new(watch::channel(DrainPhase::Serving).0),
            handed_over: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drain {
    /// Start draining for a graceful upgrade: the new process took the listening sockets.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Release);
        self.advance(DrainPhase::Draining);
    }

    /// Whether this drain is a graceful upgrade's ([`Drain::hand_over`]).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    pub fn phase(&self) -> DrainPhase {
        *self.phase.borrow()
    }

    /// Move to `phase` unless the drain is already there or further on.
    pub fn advance(&self, phase: DrainPhase) {
        self.phase.send_if_modified(|current| {
            let later = phase > *current;
            if later {
                *current = phase;
            }
            later
        });
    }

    /// Resolves once `phase` (or a later one) is reached.
    pub async fn reached(&self, phase: DrainPhase) {
        let mut receiver = self.phase.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail while it is borrowed.
        let _ = receiver.wait_for(|current| *current >= phase).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward_and_waiters_wake_at_their_phase() {
        let drain = Drain::default();
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.reached(DrainPhase::Deadline).await })
        };
        drain.advance(DrainPhase::Closing);
        drain.advance(DrainPhase::Draining);
        assert_eq!(drain.phase(), DrainPhase::Closing);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woke before the deadline");
        drain.advance(DrainPhase::Deadline);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken at the deadline")
            .expect("no panic");
        // A waiter that starts after the phase was reached returns at once.
        drain.reached(DrainPhase::Draining).await;
    }
}
