//! The open-file limit, raised at start-up to what `[server] max_connections` needs: each
//! request in flight holds two sockets (the client's and the upstream's), plus a reserve for
//! listeners, the audit file, Redis and the identity provider. Distributions start services
//! with a soft limit of 1,024, which would cap a replica at ~500 streams with errors that name
//! nothing but the upstream.
//!
//! Invariants:
//! - the soft limit is only ever raised, never above the hard limit (raising the hard limit
//!   needs privileges a service should not have);
//! - the outcome is logged once, and a hard limit below the need is a warning naming the fix.

/// Descriptors kept apart from the two per request.
pub const RESERVED_FILES: u64 = 256;

/// With no connection limit the soft limit goes to the hard limit, but not beyond this.
const UNLIMITED_CAP: u64 = 1 << 20;

/// What start-up did with `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
    /// Descriptors `max_connections` needs (`None`: no limit configured).
    pub needed: Option<u64>,
}

pub fn files_needed(max_connections: usize) -> Option<u64> {
    (max_connections > 0).then(|| 2 * max_connections as u64 + RESERVED_FILES)
}

/// The soft limit to ask for, given the current soft and hard limits.
pub fn target_soft_limit(soft: u64, hard: u64, needed: Option<u64>) -> u64 {
    let wanted = needed.unwrap_or(UNLIMITED_CAP);
    wanted.min(hard).max(soft)
}

/// Raise the soft `RLIMIT_NOFILE` for `max_connections` and log what happened.
pub fn raise_open_file_limit(max_connections: usize) -> Option<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!("could not read the open-file limit");
        return None;
    }
    let needed = files_needed(max_connections);
    let before = limit.rlim_cur;
    let target = target_soft_limit(before, limit.rlim_max, needed);
    let mut now = before;
    if target > before {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given; a refusal leaves the limit unchanged.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            now = target;
        }
    }
    let outcome = FileLimit {
        before,
        now,
        hard: limit.rlim_max,
        needed,
    };
    match needed {
        Some(needed) if now < needed => tracing::warn!(
            open_files = now,
            hard_limit = outcome.hard,
            needed,
            max_connections,
            "the open-file limit is below what server.max_connections needs: raise the hard \
             limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -Hn) or lower \
             max_connections; beyond it new streams fail"
        ),
        _ => tracing::info!(
            open_files = now,
            was = before,
            hard_limit = outcome.hard,
            max_connections,
            "open-file limit"
        ),
    }
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_per_request_and_a_reserve() {
        assert_eq!(files_needed(10_000), Some(20_256));
        assert_eq!(files_needed(0), None);
    }

    #[test]
    fn the_soft_limit_rises_to_the_need_within_the_hard_limit_and_never_falls() {
        assert_eq!(target_soft_limit(1024, 1 << 20, Some(20_256)), 20_256);
        assert_eq!(target_soft_limit(1024, 8192, Some(20_256)), 8192);
        assert_eq!(target_soft_limit(65_536, 1 << 20, Some(20_256)), 65_536);
        assert_eq!(target_soft_limit(1024, 4096, None), 4096);
        assert_eq!(target_soft_limit(1024, u64::MAX, None), UNLIMITED_CAP);
    }

    #[test]
    fn raising_reports_what_the_process_now_has() {
        let outcome = raise_open_file_limit(100).expect("getrlimit works");
        assert!(outcome.now >= outcome.before);
        assert!(outcome.now <= outcome.hard);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, outcome.now);
        assert!(outcome.now >= files_needed(100).unwrap().min(outcome.hard));
    }
}
