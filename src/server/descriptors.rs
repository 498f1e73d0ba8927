//! The process's file descriptors, sized once at start for the connections the config allows.
//!
//! Two things a proxy that holds thousands of connections needs from the kernel, both settled before the first
//! connection is accepted:
//!
//! - **The limit.** Every client connection takes a descriptor, and so does its upstream connection while a request
//!   is in flight. A soft `RLIMIT_NOFILE` below that (1024 is a common default) makes accepts fail long before
//!   `limits.max_connections`. The soft limit is raised towards what the config needs, up to the hard limit, as Go's
//!   runtime and most servers do; a hard limit below the need is logged.
//! - **The table.** Linux grows a process's descriptor table by doubling it when a new descriptor does not fit, and
//!   in a multi-threaded process each growth waits for an RCU grace period: the thread that accepts the 256th, 512th,
//!   1024th… connection stalls for 10–20 ms, and so does every request and streamed event on that worker
//!   (BENCHMARKS.md, "Stalls at 256, 512, 1024… descriptors"). Duplicating a descriptor onto the highest number the
//!   config needs, once, grows the table to its final size while no connection waits on it. The table is never
//!   shrunk; it costs the kernel about 8 bytes per descriptor.

use std::os::fd::AsFd;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing::{info, warn};

use crate::config::Config;

/// Descriptors the proxy holds besides its connections: listeners (one per worker and listener), each runtime's
/// epoll and wake descriptors, the audit file, the config watcher, the state store's connections, stdio.
const BESIDE_CONNECTIONS: u64 = 64;
/// Listener and runtime descriptors per worker.
const PER_WORKER: u64 = 8;
/// The table is not grown past this many descriptors whatever the config says (8 MiB of kernel memory).
const MAX_PRESIZED: u64 = 1 << 20;

/// What [`prepare`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// Descriptors the config can need at once.
    pub needed: u64,
    /// The soft limit now.
    pub soft: Option<u64>,
    /// The highest descriptor number the table was grown to hold (None: not grown).
    pub presized_to: Option<u64>,
}

/// Descriptors `config` can need at once: a client and an upstream connection for each allowed client connection,
/// the admin connections, and the proxy's own.
pub fn needed(config: &Config) -> u64 {
    let client = config.limits.max_connections as u64;
    let admin = config.admin.max_connections as u64;
    let listener_copies =
        config.server.workers.max(1) as u64 * config.listeners.len().max(1) as u64;
    client
        .saturating_mul(2)
        .saturating_add(admin)
        .saturating_add(listener_copies.saturating_mul(PER_WORKER))
        .saturating_add(BESIDE_CONNECTIONS)
}

/// Raise the soft descriptor limit towards `needed` (never past the hard limit, never lowered) and grow the
/// descriptor table to hold that many. Call it before the workers start. Failures are logged, never fatal: the proxy
/// then runs as it would have without this step.
pub fn prepare(needed: u64) -> Descriptors {
    let before = getrlimit(Resource::Nofile);
    let mut soft = before.current;
    if soft.is_some_and(|s| s < needed) {
        let raised = before.maximum.map_or(needed, |h| h.min(needed));
        if soft.is_some_and(|s| s < raised) {
            match setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(raised),
                    maximum: before.maximum,
                },
            ) {
                Ok(()) => soft = Some(raised),
                Err(e) => {
                    warn!(error = %e, wanted = raised, "could not raise the soft limit on open files")
                }
            }
        }
    }
    if soft.is_some_and(|s| s < needed) {
        warn!(
            needed,
            limit = soft,
            hard_limit = before.maximum,
            "limits.max_connections needs more open files than the hard limit allows: accepts can fail \
             before the connection cap is reached (raise the hard RLIMIT_NOFILE, e.g. LimitNOFILE= in systemd)"
        );
    }
    // The highest descriptor the process may need, below the limit (F_DUPFD refuses the limit itself).
    let top = soft
        .map_or(needed, |s| s.min(needed))
        .min(MAX_PRESIZED)
        .saturating_sub(1);
    let presized_to = grow_table(top);
    let d = Descriptors {
        needed,
        soft,
        presized_to,
    };
    info!(
        needed,
        soft_limit = soft,
        raised_from = (before.current != soft).then_some(before.current).flatten(),
        table = table_size(std::process::id()),
        "open files sized for the connection limits"
    );
    d
}

/// The size of process `pid`'s descriptor table (`FDSize` in `/proc/<pid>/status`), where /proc has it.
pub fn table_size(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Duplicate a descriptor onto `top` (or the lowest free number above it) and close the copy: the kernel grows the
/// table to hold `top` and keeps it at that size.
fn grow_table(top: u64) -> Option<u64> {
    let top = i32::try_from(top).ok()?;
    // Below the table's first size (64) there is nothing to grow.
    if top < 64 {
        return None;
    }
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "could not open /dev/null to size the descriptor table");
            return None;
        }
    };
    match rustix::io::fcntl_dupfd_cloexec(null.as_fd(), top) {
        Ok(copy) => {
            drop(copy);
            Some(top as u64)
        }
        Err(e) => {
            warn!(error = %e, descriptor = top, "could not size the descriptor table");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_grown_to_hold_what_is_needed_within_the_limit() {
        let limit = getrlimit(Resource::Nofile);
        // Enough to grow any table a test process starts with, within any limit a CI runner sets.
        let want = 3000u64;
        let d = prepare(want);
        assert_eq!(d.needed, want);
        let reachable = limit.maximum.map_or(want, |h| h.min(want));
        // The soft limit is never lowered, and raised to what is needed where the hard limit allows.
        assert!(d.soft.is_none_or(|s| s >= reachable), "{d:?}");
        assert!(
            d.soft.is_none_or(|s| limit.current.is_none_or(|b| s >= b)),
            "{d:?}"
        );
        let top = d.presized_to.expect("grown");
        assert_eq!(top + 1, d.soft.map_or(want, |s| s.min(want)));
        let table = table_size(std::process::id()).expect("FDSize in /proc/self/status");
        assert!(table > top, "FDSize {table} does not hold {top}");
    }

    #[test]
    fn the_need_counts_both_hops_of_every_connection() {
        let cfg = crate::config::parse(
            std::path::Path::new("test.toml"),
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [server]\nworkers = 2\n[limits]\nmax_connections = 1000\n[admin]\nmax_connections = 10\n",
        )
        .expect("config");
        assert_eq!(
            needed(&cfg),
            2000 + 10 + 2 * PER_WORKER + BESIDE_CONNECTIONS
        );
    }
}
