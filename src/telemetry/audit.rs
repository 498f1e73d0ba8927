//! The audit log: one JSON line per decision that is not a plain allow (and
//! per request when `[audit] all_requests` is on), plus admins' manual
//! decisions. Never raw keys or prompt text: accounts are keyed hashes and
//! prompts appear only as signatures' index keys.
//!
//! Request handling never waits on it: records go through a bounded
//! channel with `try_send`; a full channel drops the record and counts it.
//! A writer thread appends to the file and flushes when idle, and on
//! shutdown drains what is queued and flushes before the process exits.
//! Woken by a record, the writer lets more gather for [`GATHER`] before it
//! writes them all: a sender wakes only a writer that waits, so with a line
//! per request it wakes about a hundred times a second, not per request.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::fingerprint::ClientFingerprint;

/// How long the writer lets records gather once one has woken it.
pub const GATHER: Duration = Duration::from_millis(10);

/// How long the writer waits for a record before it flushes what it wrote.
const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// What happened: "decision" or "manual_decision".
    pub kind: &'static str,
    /// The request's `x-request-id` (decisions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Account id (keyed hash), 16 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Cluster id, 16 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Client fingerprints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<Fingerprints>,
    /// allow, slow, degrade, throttle, block (or the manual action).
    pub decision: String,
    /// Why, with each reason's values.
    pub reasons: Vec<Reason>,
    /// "enforce" or "shadow" (decisions), or who made a manual decision.
    pub mode: String,
}

/// The client fingerprints of an audit line: `ja4`, `http`, `h2`,
/// `ip_prefix`, `asn`, `inconsistent_with` (null when absent) and `sources`.
/// Kept as the request's [`ClientFingerprint`] and written out only when the
/// line is: a detection line is built on the request path, for every request
/// of a flagged account even in shadow mode.
#[derive(Debug, Clone)]
pub struct Fingerprints(pub ClientFingerprint);

impl Serialize for Fingerprints {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fp = &self.0;
        let mut m = s.serialize_struct("Fingerprints", 7)?;
        m.serialize_field("ja4", &fp.ja4.as_ref().map(|j| j.as_str()))?;
        m.serialize_field("http", &fp.http.as_ref().map(|h| h.as_str()))?;
        m.serialize_field("h2", &fp.h2.as_ref().map(|h| h.akamai()))?;
        m.serialize_field("ip_prefix", &fp.ip_prefix.as_ref().map(Shown))?;
        m.serialize_field("asn", &fp.asn)?;
        m.serialize_field("inconsistent_with", &fp.inconsistent_with)?;
        m.serialize_field("sources", &fp.sources)?;
        m.end()
    }
}

/// A value written as its `Display` text.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// One reason of an audit line: a JSON object. Detection lines, written per
/// request of a flagged account, use the typed forms (no map built per line);
/// the rarer throttle, block and manual lines a [`serde_json::Value`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reason {
    /// A detection's summary, the first reason of its line.
    Detection(Box<DetectionReason>),
    /// One signal's share of a detection's score.
    Signal(SignalReason),
    /// Any other reason.
    Other(serde_json::Value),
}

/// A detection's summary (scores as `f64`, as they were always written).
#[derive(Debug, Clone, Serialize)]
pub struct DetectionReason {
    /// The score that set the level.
    pub score: f64,
    /// "account" or "cluster".
    pub scope: &'static str,
    /// The level the score reached.
    pub level: &'static str,
    /// The level acted on (below `level` in shadow mode).
    pub enforced_level: &'static str,
    /// The phrase lists the prompt matched.
    pub phrase_lists: Vec<String>,
    /// Whether a behaviour cohort set the level.
    pub by_cohort: bool,
    /// Whether a network pool set the level.
    pub by_network_pool: bool,
    /// Whether a sustained degrade escalated it.
    pub sustained_degrade: bool,
}

/// One signal's share of a detection's score.
#[derive(Debug, Clone, Serialize)]
pub struct SignalReason {
    /// The signal's name.
    pub signal: &'static str,
    /// Its raw value.
    pub value: f64,
    /// Its weight.
    pub weight: f64,
    /// Its share of the score.
    pub contribution: f64,
}

impl From<serde_json::Value> for Reason {
    fn from(v: serde_json::Value) -> Self {
        Reason::Other(v)
    }
}

/// The audit log.
pub type AuditLog = JsonLines<AuditRecord>;

/// An append-only JSON Lines file written by its own thread: `record`
/// never waits (bounded queue, drops counted). Used by the audit log and the
/// traffic record.
pub struct JsonLines<T> {
    tx: Mutex<Option<SyncSender<T>>>,
    dropped: AtomicU64,
    /// Lines the writer failed to write (disk full, file gone).
    write_errors: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl<T> std::fmt::Debug for JsonLines<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines")
            .field("path", &self.path)
            .finish()
    }
}

impl<T: Serialize + Send + 'static> JsonLines<T> {
    /// Open (append to) `path` and start the writer thread.
    pub fn open(path: &Path, capacity: usize) -> std::io::Result<JsonLines<T>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel(capacity);
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = write_errors.clone();
        let shown = path.display().to_string();
        let writer = std::thread::Builder::new()
            .name("dg-audit".into())
            .spawn(move || {
                write_loop(rx, std::io::BufWriter::new(file), capacity, &errors, &shown)
            })?;
        Ok(JsonLines {
            tx: Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
            write_errors,
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
        })
    }

    /// Queue a record without waiting; counts it as dropped when the queue
    /// is full or the log is closed.
    pub fn record(&self, r: T) {
        let sent = match self.tx.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(tx) => match tx.try_send(r) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
                },
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<T> JsonLines<T> {
    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records (or flushes) that failed to reach the file so far.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Stop accepting records, write what is queued, flush, and wait.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(w) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = w.join();
        }
    }
}

impl<T> Drop for JsonLines<T> {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop<T: Serialize>(
    rx: Receiver<T>,
    mut out: std::io::BufWriter<std::fs::File>,
    capacity: usize,
    errors: &AtomicU64,
    path: &str,
) {
    // Counted always; logged on the first failure and then once per 1000,
    // so a full disk cannot flood the log.
    let failed = |e: std::io::Error| {
        let n = errors.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(path, error = %e, failures = n + 1, "cannot write a JSON Lines record");
        }
    };
    // One line's JSON, reused (a line is written whole or not at all).
    let mut line = Vec::with_capacity(1024);
    let mut write = |out: &mut std::io::BufWriter<std::fs::File>, r: T| {
        line.clear();
        if serde_json::to_writer(&mut line, &r).is_ok() {
            line.push(b'\n');
            if let Err(e) = out.write_all(&line) {
                failed(e);
            }
        }
    };
    // Whether the last batch filled half the queue: then the writer keeps
    // draining instead of letting more gather (a full queue drops).
    let mut pressed = false;
    loop {
        match rx.recv_timeout(IDLE_FLUSH) {
            Ok(r) => {
                write(&mut out, r);
                // Senders queue without waking anyone meanwhile.
                if !pressed {
                    std::thread::sleep(GATHER);
                }
                let mut batch = 1;
                for r in rx.try_iter() {
                    write(&mut out, r);
                    batch += 1;
                }
                pressed = batch * 2 >= capacity;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = out.flush() {
                    failed(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Err(e) = out.flush() {
        failed(e);
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed reasons and fingerprints write what the `json!` objects
    /// built before them wrote, key for key and digit for digit (scores are
    /// `f32` widened to `f64`, as `serde_json::Value` widened them).
    #[test]
    fn typed_reasons_and_fingerprints_keep_the_wire_format() {
        let score: f32 = 0.1;
        let reasons = vec![
            Reason::Detection(Box::new(DetectionReason {
                score: f64::from(score),
                scope: "cluster",
                level: "degrade",
                enforced_level: "allow",
                phrase_lists: vec!["reasoning".into()],
                by_cohort: true,
                by_network_pool: false,
                sustained_degrade: false,
            })),
            Reason::Signal(SignalReason {
                signal: "stack_churn",
                value: f64::from(2.5f32),
                weight: f64::from(0.3f32),
                contribution: f64::from(f32::NAN),
            }),
            serde_json::json!({"limit": "requests"}).into(),
        ];
        let before = serde_json::json!([
            {"score": score, "scope": "cluster", "level": "degrade", "enforced_level": "allow",
             "phrase_lists": ["reasoning"], "by_cohort": true, "by_network_pool": false,
             "sustained_degrade": false},
            {"signal": "stack_churn", "value": 2.5f32, "weight": 0.3f32, "contribution": f32::NAN},
            {"limit": "requests"},
        ]);
        assert_eq!(
            serde_json::to_string(&reasons).unwrap(),
            serde_json::to_string(&before).unwrap()
        );

        let fp = ClientFingerprint {
            ip_prefix: Some("203.0.113.0/24".parse().unwrap()),
            asn: Some(64500),
            inconsistent_with: Some("curl".into()),
            ..ClientFingerprint::default()
        };
        let before = serde_json::json!({
            "ja4": null, "http": null, "h2": null, "ip_prefix": "203.0.113.0/24",
            "asn": 64500, "inconsistent_with": "curl", "sources": fp.sources,
        });
        assert_eq!(
            serde_json::to_string(&Fingerprints(fp)).unwrap(),
            serde_json::to_string(&before).unwrap()
        );
    }

    fn rec(i: u32) -> AuditRecord {
        AuditRecord {
            time_unix_ms: 1,
            kind: "decision",
            request_id: Some(format!("r{i}")),
            account: Some("00000000000000aa".into()),
            cluster: None,
            fingerprints: None,
            decision: "throttle".into(),
            reasons: vec![serde_json::json!({"limit": "requests"}).into()],
            mode: "enforce".into(),
        }
    }

    #[test]
    fn records_are_written_and_flushed_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, 1024).unwrap();
        for i in 0..100 {
            log.record(rec(i));
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(v["request_id"], "r99");
        assert_eq!(log.dropped(), 0);
        // Closed: further records are counted as dropped, never block.
        log.record(rec(100));
        assert_eq!(log.dropped(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("a.jsonl"), 1).unwrap();
        let start = std::time::Instant::now();
        for i in 0..10_000 {
            log.record(rec(i));
        }
        // 10k sends against a queue of one never waited on the writer.
        assert!(start.elapsed() < Duration::from_secs(5));
        log.close();
        let written = std::fs::read_to_string(dir.path().join("a.jsonl"))
            .unwrap()
            .lines()
            .count() as u64;
        assert_eq!(written + log.dropped(), 10_000);
    }

    #[test]
    fn a_disk_that_refuses_writes_is_counted_not_fatal() {
        // Linux's /dev/full fails every write with ENOSPC; the proxy runs
        // on Linux, so the device is required, not skipped.
        let full = std::path::Path::new("/dev/full");
        assert!(full.exists(), "/dev/full is missing");
        let log = AuditLog::open(full, 1024).unwrap();
        for i in 0..100 {
            log.record(rec(i));
        }
        log.close();
        assert!(log.write_errors() >= 1, "no write error counted");
        assert_eq!(log.dropped(), 0);
    }
}
