//! The last decisions in memory, for the console's live view and its
//! drill-downs (`GET /admin/decisions`): the same records the audit log
//! gets (every decision that is not a plain allow, and admins' manual
//! decisions), numbered, in a ring of [`RECENT_DECISIONS`]. Held only while
//! the admin API is served; it works without an audit file.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::audit::{AuditLog, AuditRecord};

/// Decisions held (the oldest go first).
pub const RECENT_DECISIONS: usize = 2048;

/// One held decision.
#[derive(Debug, Clone)]
pub struct Numbered {
    /// 1, 2, … in the order they were recorded.
    pub seq: u64,
    /// The audit record.
    pub record: AuditRecord,
}

/// What a query selects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only records numbered above this.
    pub after: u64,
    /// Only records of this account (16 hex digits).
    pub account: Option<&'a str>,
    /// Only records of this cluster (16 hex digits).
    pub cluster: Option<&'a str>,
}

/// The ring.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    items: VecDeque<Numbered>,
    last: u64,
}

/// Send `record` to the ring and the audit log, whichever exist (cloned
/// only when both take it).
pub fn tee(recent: Option<&RecentDecisions>, audit: Option<&AuditLog>, record: AuditRecord) {
    match (recent.filter(|_| RecentDecisions::keeps(&record)), audit) {
        (Some(r), Some(a)) => {
            r.push(record.clone());
            a.record(record);
        }
        (Some(r), None) => r.push(record),
        (None, Some(a)) => a.record(record),
        (None, None) => {}
    }
}

impl RecentDecisions {
    /// Allow lines (`[audit] all_requests`) are not kept: they would push
    /// out what an analyst looks for.
    fn keeps(record: &AuditRecord) -> bool {
        record.decision != "allow"
    }

    /// Keep `record` (the oldest goes when the ring is full).
    pub fn push(&self, record: AuditRecord) {
        if !Self::keeps(&record) {
            return;
        }
        let Ok(mut ring) = self.inner.lock() else {
            return;
        };
        ring.last += 1;
        let seq = ring.last;
        if ring.items.len() >= RECENT_DECISIONS {
            ring.items.pop_front();
        }
        ring.items.push_back(Numbered { seq, record });
    }

    /// The newest `limit` records that `filter` selects, oldest first, and
    /// the number of the newest record held (for the next `after`).
    pub fn query(&self, filter: Filter<'_>, limit: usize) -> (Vec<Numbered>, u64) {
        let Ok(ring) = self.inner.lock() else {
            return (Vec::new(), 0);
        };
        let mut out: Vec<Numbered> = ring
            .items
            .iter()
            .rev()
            .take_while(|n| n.seq > filter.after)
            .filter(|n| {
                filter
                    .account
                    .is_none_or(|a| n.record.account.as_deref() == Some(a))
                    && filter
                        .cluster
                        .is_none_or(|c| n.record.cluster.as_deref() == Some(c))
            })
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        (out, ring.last)
    }

    /// The accounts of the newest records, most recent first, at most `n`.
    pub fn recent_accounts(&self, n: usize) -> Vec<String> {
        let Ok(ring) = self.inner.lock() else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::with_capacity(n);
        for item in ring.items.iter().rev() {
            if out.len() >= n {
                break;
            }
            if let Some(a) = &item.record.account {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(account: &str, cluster: Option<&str>, decision: &str) -> AuditRecord {
        AuditRecord {
            time_unix_ms: 1,
            kind: "decision",
            request_id: None,
            account: Some(account.into()),
            cluster: cluster.map(String::from),
            fingerprints: None,
            decision: decision.into(),
            reasons: Vec::new(),
            mode: "enforce".into(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_filters() {
        let r = RecentDecisions::default();
        r.push(rec("a", None, "allow"));
        assert_eq!(r.query(Filter::default(), 10).1, 0, "allows are not kept");
        for i in 0..(RECENT_DECISIONS + 10) {
            let account = if i % 2 == 0 { "a" } else { "b" };
            r.push(rec(account, Some("c1"), "throttle"));
        }
        let (all, last) = r.query(Filter::default(), usize::MAX);
        assert_eq!(all.len(), RECENT_DECISIONS);
        assert_eq!(last, (RECENT_DECISIONS + 10) as u64);
        assert_eq!(all.first().unwrap().seq, 11);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        let (after, _) = r.query(
            Filter {
                after: last - 3,
                ..Default::default()
            },
            10,
        );
        assert_eq!(
            after.iter().map(|n| n.seq).collect::<Vec<_>>(),
            [last - 2, last - 1, last]
        );
        let (only_b, _) = r.query(
            Filter {
                account: Some("b"),
                ..Default::default()
            },
            5,
        );
        assert_eq!(only_b.len(), 5);
        assert!(only_b
            .iter()
            .all(|n| n.record.account.as_deref() == Some("b")));
        assert_eq!(only_b.last().unwrap().seq, last);
        let (none, _) = r.query(
            Filter {
                cluster: Some("c2"),
                ..Default::default()
            },
            5,
        );
        assert!(none.is_empty());
        assert_eq!(r.recent_accounts(5), ["b", "a"]);
    }
}
