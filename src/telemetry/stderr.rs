//! The process log's way to stderr. Formatted lines are queued in memory and written by a thread of their own,
//! so a request never waits on stderr: with `level = "info"` every request writes an access line, and a pipe
//! whose reader stalls (a paused pager, a log shipper that is behind) used to block the worker in `write(2)`
//! once 64 KiB were waiting, and with it every connection of that worker (RELIABILITY.md §7). Now a stalled
//! reader costs log lines, dropped whole and counted (`distill_guard_output_records_total{log="stderr"}`),
//! never requests.
//!
//! Lines gather for [`GATHER`] after each write, so a busy proxy writes about a hundred times a second however
//! many lines it logs; an idle one waits on a condition variable and writes the first line at once.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long lines gather after a write before the next one: the audit writer's pause.
pub use super::audit::GATHER;

/// Bytes queued at most; a line that does not fit is dropped whole.
pub const QUEUE_BYTES: usize = 1 << 20;
/// How long [`Stderr::close`] waits for the queue to reach stderr (a reader that stalls must not stop an exit).
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The queue and its writer thread; see the module's documentation.
#[derive(Clone)]
pub struct Stderr {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Mutex<Queue>,
    /// Wakes the writer (lines queued while it waits, or closing) and whoever waits for it to finish.
    wake: Condvar,
    dropped: AtomicU64,
    write_errors: AtomicU64,
}

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// The writer waits for lines (so a line must wake it).
    waiting: bool,
    closed: bool,
    /// The writer has written what was queued at closing and stopped.
    done: bool,
}

/// The process's queue to stderr, once [`Stderr::install`] made it.
static INSTALLED: OnceLock<Stderr> = OnceLock::new();

impl Stderr {
    /// A queue whose writer thread writes to `out`.
    pub fn start<W: Write + Send + 'static>(out: W) -> std::io::Result<Stderr> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        });
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("dg-log".into())
            .spawn(move || write_loop(&writer, out))?;
        Ok(Stderr { inner })
    }

    /// The process's queue to stderr, started on first use. `None` when its thread cannot be started; the
    /// caller then writes to stderr itself.
    pub fn install() -> Option<Stderr> {
        if let Some(s) = INSTALLED.get() {
            return Some(s.clone());
        }
        let s = Stderr::start(std::io::stderr()).ok()?;
        Some(INSTALLED.get_or_init(|| s).clone())
    }

    /// Lines dropped and failed writes of the installed queue (`None` when none is installed).
    pub fn installed_counts() -> Option<(u64, u64)> {
        INSTALLED.get().map(|s| (s.dropped(), s.write_errors()))
    }

    /// Lines dropped because the queue was full (or closed).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Batches that failed to reach stderr (closed, or refusing writes); their lines are lost.
    pub fn write_errors(&self) -> u64 {
        self.inner.write_errors.load(Ordering::Relaxed)
    }

    /// Queues one line (or drops it whole when it does not fit); never waits for stderr.
    pub fn line(&self, line: &[u8]) {
        let mut q = self.inner.lock();
        if q.closed || q.bytes.len() + line.len() > QUEUE_BYTES {
            drop(q);
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.bytes.extend_from_slice(line);
        if q.waiting {
            q.waiting = false;
            drop(q);
            self.inner.wake.notify_all();
        }
    }

    /// Stops taking lines and waits, at most [`CLOSE_WAIT`], for what is queued to be written; true when it was.
    pub fn close(&self) -> bool {
        let mut q = self.inner.lock();
        q.closed = true;
        self.inner.wake.notify_all();
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while !q.done {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            q = match self.inner.wake.wait_timeout(q, left) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves only bytes behind: keep going.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write_loop<W: Write>(inner: &Inner, mut out: W) {
    let mut batch = Vec::new();
    let mut reported = 0;
    loop {
        let closed = {
            let mut q = inner.lock();
            while q.bytes.is_empty() && !q.closed {
                q.waiting = true;
                q = inner.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            q.waiting = false;
            std::mem::swap(&mut q.bytes, &mut batch);
            q.closed
        };
        if !batch.is_empty() && out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            inner.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        batch.clear();
        // A burst's buffer is not kept for the process's life.
        batch.shrink_to(64 * 1024);
        if closed {
            break;
        }
        // Said through the log itself, so it has the configured format; it is queued behind this batch.
        let dropped = inner.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            tracing::warn!(
                dropped = dropped - reported,
                total = dropped,
                "log lines dropped: stderr was not read fast enough"
            );
            reported = dropped;
        }
        std::thread::sleep(GATHER);
    }
    let mut q = inner.lock();
    q.done = true;
    inner.wake.notify_all();
}

/// One event's writer: tracing's formatter writes each event whole, in one `write_all`, so a write is a line.
pub struct Line<'a>(&'a Stderr);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A writer whose writes block until the test opens its gate, as a pipe whose reader has stopped.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        /// A write has begun (and waits for the gate).
        entered: Arc<std::sync::atomic::AtomicBool>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.entered.store(true, Ordering::Relaxed);
            let (open, cv) = &*self.open;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Gated {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }

        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }
    }

    fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_reach_the_writer_in_order_and_close_flushes_them() {
        let out = Gated::default();
        out.open();
        let s = Stderr::start(out.clone()).unwrap();
        let first = b"first line\n";
        s.line(first);
        // The first line after an idle spell is written without waiting for close.
        poll_until("the first line", || out.text() == "first line\n");
        for i in 0..1000 {
            s.line(format!("line {i}\n").as_bytes());
        }
        assert!(s.close());
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1001);
        assert!(lines[1..]
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
        assert_eq!((s.dropped(), s.write_errors()), (0, 0));
        // Closed: further lines are dropped and counted, not queued for no one.
        s.line(b"late\n");
        assert_eq!(s.dropped(), 1);
    }

    #[test]
    fn a_stalled_reader_costs_lines_not_the_caller() {
        let out = Gated::default();
        let s = Stderr::start(out.clone()).unwrap();
        // The writer takes the first line and blocks in it; the rest queue up to the cap.
        s.line(b"blocked\n");
        poll_until("the writer to block", || {
            out.entered.load(Ordering::Relaxed)
        });
        let line = [b'x'; 1023];
        let line = [&line[..], b"\n"].concat();
        let lines = 3 * QUEUE_BYTES / line.len();
        // Every call returns although nothing reaches the reader (a blocking writer would hang here).
        for _ in 0..lines {
            s.line(&line);
        }
        let dropped = s.dropped();
        assert_eq!(dropped as usize, lines - QUEUE_BYTES / line.len());
        // The reader comes back: what was queued is written whole (the report of the drop goes through tracing,
        // which this test does not install; tests/logging.rs reads it from the binary).
        out.open();
        assert!(s.close());
        let text = out.text();
        let kept = text.lines().filter(|l| l.starts_with('x')).count();
        assert_eq!(kept as u64, lines as u64 - dropped);
        assert!(text
            .lines()
            .filter(|l| l.starts_with('x'))
            .all(|l| l.len() == 1023));
    }

    #[test]
    fn close_gives_up_on_a_reader_that_never_returns() {
        let out = Gated::default();
        let s = Stderr::start(out).unwrap();
        s.line(b"never read\n");
        s.line(b"queued\n");
        let t = Instant::now();
        assert!(!s.close());
        assert!(t.elapsed() >= CLOSE_WAIT);
    }
}
