//! `[server] max_connections`: how many requests the proxy serves at once (a streamed reply
//! counts until its last byte). Beyond it a request is refused at once with a 503
//! `overloaded_error` that clients retry, instead of the process running out of file
//! descriptors or memory and failing every stream it holds.
//!
//! Invariants:
//! - a slot is taken before anything else is done for a request and given back when the
//!   request's handling ends, however it ends (the slot is a guard, dropped on every path,
//!   panics included);
//! - the count never exceeds the limit: taking a slot is one compare-and-swap loop;
//! - a limit of 0 means no limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct OpenRequests {
    open: AtomicUsize,
    limit: usize,
}

/// One request being served; gives its slot back when dropped. It owns its counter, so a
/// request keeps it until its last phase (logging) whatever snapshot of the state it runs on.
#[derive(Debug)]
pub struct Slot {
    requests: Arc<OpenRequests>,
}

impl OpenRequests {
    pub fn new(limit: usize) -> OpenRequests {
        OpenRequests {
            open: AtomicUsize::new(0),
            limit,
        }
    }

    /// A slot, or `None` when `limit` requests are being served already.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let limit = if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot {
                requests: Arc::clone(self),
            })
    }

    /// Requests being served now (the drain waits for this to reach 0).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.requests.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let requests = Arc::new(OpenRequests::new(2));
        let first = requests.try_acquire().expect("first");
        let second = requests.try_acquire().expect("second");
        assert!(requests.try_acquire().is_none(), "over the limit");
        assert_eq!(requests.open(), 2);
        drop(first);
        let third = requests.try_acquire().expect("a slot was given back");
        drop((second, third));
        assert_eq!(requests.open(), 0);
    }

    #[test]
    fn zero_means_no_limit() {
        let requests = Arc::new(OpenRequests::new(0));
        let slots: Vec<_> = (0..10_000)
            .map(|_| requests.try_acquire().expect("no limit"))
            .collect();
        assert_eq!(requests.open(), 10_000);
        drop(slots);
        assert_eq!(requests.open(), 0);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let requests = Arc::new(OpenRequests::new(8));
        let peak = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(_slot) = requests.try_acquire() {
                            peak.fetch_max(requests.open(), Ordering::AcqRel);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Acquire) <= 8);
        assert_eq!(requests.open(), 0);
    }
}
