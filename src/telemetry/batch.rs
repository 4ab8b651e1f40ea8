//! A batching log writer: lines are appended to one shared buffer and written to stderr by a
//! background thread, many lines per `write`.
//!
//! Under load this turns one `write` syscall and one thread wake-up per access line into one
//! of each per few milliseconds (nginx's `access_log … buffer=`), which on a single busy core is
//! a measurable share of a proxied request.
//!
//! Logging never blocks a request: when the writer thread cannot keep up (a stderr pipe that
//! nobody reads, a slow terminal), lines beyond [`MAX_PENDING`] pending bytes are dropped and
//! counted ([`dropped`], exported as `outpost_log_lines_dropped_total`), and
//! [`super::warn_if_dropped`] says so once per interval. A producer only ever takes a mutex for
//! the time of one append. Lines reach stderr at most [`LINGER`] after they were logged, and
//! [`Guard`]'s drop waits up to [`CLOSE_WAIT`] for the pending ones (a sink that never drains
//! must not stop the process from exiting).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread waits after the first pending line for more to join it.
const LINGER: Duration = Duration::from_millis(5);
/// Pending bytes beyond which new lines are dropped (and counted) instead of waiting.
pub const MAX_PENDING: usize = 1024 * 1024;
/// How long [`Guard`]'s drop waits for pending lines to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Lines dropped by every writer of the process since start (log lines are process-wide).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far because the sink was slower than the producers.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
    /// The writer thread has returned.
    done: bool,
    /// Lines dropped by this writer (for its tests; [`DROPPED`] is the process total).
    dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer goes from empty to non-empty, and on close.
    wake: Condvar,
    /// Signalled when the writer thread is done.
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A cloneable handle that appends whole lines to the batch.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Flushes everything pending and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Start the writer thread over `sink`.
pub fn spawn<W: Write + Send + 'static>(sink: W) -> io::Result<(BatchWriter, Guard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        finished: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("outpost-log".into())
        .spawn({
            let shared = shared.clone();
            move || {
                run(&shared, sink);
                shared.lock().done = true;
                shared.finished.notify_all();
            }
        })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run<W: Write>(shared: &Shared, mut sink: W) {
    let mut spare = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && !state.closed {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.pending.is_empty() {
            return; // closed and drained
        }
        if !state.closed {
            // Let the lines logged in the next few milliseconds share this write.
            drop(state);
            std::thread::sleep(LINGER);
            state = shared.lock();
        }
        std::mem::swap(&mut state.pending, &mut spare);
        drop(state);
        // Nowhere to report a failed log write; the lines are dropped, the process goes on.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        if spare.capacity() > MAX_PENDING {
            spare = Vec::new(); // do not keep a burst's buffer forever
        }
    }
}

impl BatchWriter {
    /// Append bytes built by `fill` (one or more whole lines) under the buffer's lock, so a
    /// line is built in place without an allocation of its own.
    /// When [`MAX_PENDING`] bytes are already waiting for the sink, the line is dropped and
    /// counted instead (`fill` is not called): a log line is never worth a stalled request.
    pub fn append(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.shared.lock();
        if state.pending.len() >= MAX_PENDING {
            state.dropped += 1;
            drop(state);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = state.pending.is_empty();
        fill(&mut state.pending);
        let now_empty = state.pending.is_empty();
        drop(state);
        if was_empty && !now_empty {
            self.shared.wake.notify_one();
        }
    }
}

impl Write for BatchWriter {
    /// `tracing`'s formatter writes each event with one `write_all`: the line stays whole.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(|pending| pending.extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for Guard {
    /// Flush what is pending, waiting at most [`CLOSE_WAIT`] for a sink that does not drain.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.wake.notify_one();
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while !state.done {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return; // the thread is stuck in a write: let the process exit without it
            }
            state = self
                .shared
                .finished
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(state);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each `write_all` batch.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_once_and_in_order_before_the_guard_returns() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        writer
                            .write_all(format!("t{t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let batches = sink.0.lock().unwrap();
        let text = String::from_utf8(batches.concat()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000, "no line lost or duplicated");
        for t in 0..4 {
            let own: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                own,
                (0..5000).collect::<Vec<_>>(),
                "thread {t} out of order"
            );
        }
        assert!(
            batches.len() < 20_000,
            "lines were batched ({} writes)",
            batches.len()
        );
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (mut writer, _guard) = spawn(sink.clone()).unwrap();
        writeln!(writer, "hello").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().unwrap().concat(), b"hello\n");
    }

    #[test]
    fn a_stalled_sink_drops_and_counts_lines_instead_of_blocking_writers() {
        /// Blocks every write until released.
        struct Gate(Arc<(Mutex<bool>, Condvar)>, Sink);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (writer, guard) = spawn(Gate(gate.clone(), sink.clone())).unwrap();
        let line = [vec![b'x'; 1023], vec![b'\n']].concat();
        // With the sink stalled, 3000 lines of 1 KiB are more than MAX_PENDING (plus the one
        // batch the thread holds): the producer finishes anyway, and the excess is counted.
        let producer = std::thread::spawn({
            let mut writer = writer.clone();
            move || {
                for _ in 0..3000 {
                    writer.write_all(&line).unwrap();
                }
            }
        });
        producer.join().unwrap();
        let dropped = writer.shared.lock().dropped;
        assert!(dropped >= 3000 - 2 * 1024, "dropped {dropped}");
        assert!(super::dropped() >= dropped, "counted process-wide");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        let written = sink.0.lock().unwrap().concat();
        assert_eq!(
            written.len() as u64,
            (3000 - dropped) * 1024,
            "whole lines only"
        );
        assert!(written
            .split(|b| *b == b'\n')
            .all(|l| l.is_empty() || l.len() == 1023));
    }

    #[test]
    fn closing_does_not_wait_for_ever_on_a_sink_that_never_drains() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                loop {
                    std::thread::park();
                }
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut writer, guard) = spawn(Stuck).unwrap();
        writeln!(writer, "never written").unwrap();
        let started = std::time::Instant::now();
        drop(guard);
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
