//! A batching log writer: lines are appended to one shared buffer and written to stderr by a
//! background thread, many lines per `write`.
//!
//! Under load this turns one `write` syscall and one thread wake-up per access line into one
//! of each per few milliseconds (nginx's `access_log … buffer=`), which on a single busy core is
//! a measurable share of a proxied request. It is not lossy: when the writer thread cannot keep
//! up (a blocked stderr pipe), writers wait for room instead of dropping lines. Lines reach
//! stderr at most [`LINGER`] after they were logged, and all of them before [`Guard`]'s drop
//! returns.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer thread waits after the first pending line for more to join it.
const LINGER: Duration = Duration::from_millis(5);
/// Pending bytes beyond which writers wait for the thread (backpressure, not loss).
const MAX_PENDING: usize = 1024 * 1024;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer goes from empty to non-empty, and on close.
    wake: Condvar,
    /// Signalled when the thread has taken the buffer.
    room: Condvar,
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
        room: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("outpost-log".into())
        .spawn({
            let shared = shared.clone();
            move || run(&shared, sink)
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
        shared.room.notify_all();
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
    pub fn append(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING && !state.closed {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
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
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
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
    fn a_stalled_sink_makes_writers_wait_instead_of_dropping() {
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
        let line = vec![b'x'; 1023];
        let producer = std::thread::spawn({
            let mut writer = writer.clone();
            move || {
                for _ in 0..3000 {
                    writer.write_all(&line).unwrap();
                    writer.write_all(b"\n").unwrap();
                }
            }
        });
        // With the sink stalled, the producer fills MAX_PENDING (plus the one batch the
        // thread holds) and then waits.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!producer.is_finished(), "writer must wait for room");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        producer.join().unwrap();
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().concat().len(), 3000 * 1024);
    }
}
