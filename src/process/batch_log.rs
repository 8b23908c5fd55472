//! The log writer: lines are appended to a shared buffer, and a background
//! thread writes the buffer out at most every [`FLUSH_EVERY`].
//!
//! Every admission writes one log line. `tracing_appender::non_blocking`
//! hands each line to its worker thread through a channel, which wakes the
//! worker once per line: at 2,000 requests/s that is a futex wake, two
//! context switches and a `write(2)` per request, on the same CPU as the
//! request path (more CPU than the formatting of the line itself, under
//! `make load` at b3781e5).
//! Here a request only copies its line into a buffer under an uncontended
//! lock; the thread wakes at most once per [`FLUSH_EVERY`] and writes every
//! line gathered since in one `write(2)`. Lines reach stderr up to
//! [`FLUSH_EVERY`] late, and in order; a buffer full of unwritten lines
//! ([`MAX_BUFFERED`], a stalled log collector) drops new lines rather than
//! block a request, and the drop is logged once the buffer drains.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest a line waits in the buffer: a log collector sees it this late
/// at worst, and the writer thread wakes at most this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Unwritten bytes past which the writer thread is woken at once rather than
/// at the end of its [`FLUSH_EVERY`] wait: a burst is written in pieces of
/// about this size.
const FLUSH_AT: usize = 256 * 1024;

/// Unwritten bytes past which new lines are dropped: stderr is not being
/// read (a stalled collector), and memory must stay bounded
/// ([`crate::budget::LOG_BUFFER`]).
pub const MAX_BUFFERED: usize = crate::budget::LOG_BUFFER;

struct Buffer {
    bytes: Vec<u8>,
    /// Lines dropped since the last write, because the buffer was full.
    dropped: u64,
    /// Set by [`FlushGuard`]: write what is left and stop.
    closing: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when the buffer goes from empty to not, past [`FLUSH_AT`],
    /// and on close.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A panic while holding this lock leaves at worst a partial line.
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `tracing_subscriber` writer (`MakeWriter`) that batches lines; see the
/// module docs. Clones share one buffer.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes out what is buffered and stops the writer thread when dropped:
/// hold it for as long as lines must reach the sink (until `main` returns).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchWriter {
    /// A writer whose lines go to `sink`, from a thread of its own.
    pub fn new<W: Write + Send + 'static>(sink: W) -> io::Result<(BatchWriter, FlushGuard)> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                // Allocated whole once, so it never grows past the cap by
                // doubling; pages count only once written.
                bytes: Vec::with_capacity(MAX_BUFFERED),
                dropped: 0,
                closing: false,
            }),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("calmplane-log".into())
            .spawn({
                let shared = shared.clone();
                move || write_loop(&shared, sink)
            })?;
        Ok((
            BatchWriter {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

fn write_loop<W: Write>(shared: &Shared, mut sink: W) {
    // Two buffers swapped in turn: a write to the sink never holds the lock,
    // and their capacity is reused.
    let mut out = Vec::with_capacity(MAX_BUFFERED);
    loop {
        let mut buffer = shared.lock();
        while buffer.bytes.is_empty() && buffer.dropped == 0 && !buffer.closing {
            buffer = shared.wake.wait(buffer).unwrap_or_else(|p| p.into_inner());
        }
        if !buffer.closing && buffer.bytes.len() < FLUSH_AT {
            // Let the lines of the next few milliseconds join this write.
            buffer = shared
                .wake
                .wait_timeout_while(buffer, FLUSH_EVERY, |b| {
                    !b.closing && b.bytes.len() < FLUSH_AT
                })
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::swap(&mut out, &mut buffer.bytes);
        let dropped = std::mem::take(&mut buffer.dropped);
        let closing = buffer.closing;
        drop(buffer);
        // Nowhere to report a failing stderr: the next write tries again.
        let _ = sink.write_all(&out).and_then(|()| sink.flush());
        out.clear();
        if dropped > 0 {
            // Formatted like every other line, into the buffer just emptied.
            tracing::warn!(
                dropped,
                "log lines dropped: stderr was not read fast enough"
            );
        }
        if closing && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl io::Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut buffer = self.shared.lock();
        let was_empty = buffer.bytes.is_empty();
        if buffer.bytes.len() + line.len() > MAX_BUFFERED {
            buffer.dropped += 1;
        } else {
            buffer.bytes.extend_from_slice(line);
        }
        let wake = was_empty || buffer.bytes.len() >= FLUSH_AT;
        drop(buffer);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A sink the test can read while the writer thread owns it.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(buf);
            *self.writes.lock().unwrap() += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn write_line(writer: &BatchWriter, line: &str) {
        let mut w: &BatchWriter = writer;
        w.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_whole_in_order_and_batched() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone()).unwrap();
        let lines: Vec<String> = (0..1000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            write_line(&writer, line);
        }
        // Written out without the guard's help, within a few flush intervals.
        let start = Instant::now();
        while sink.bytes.lock().unwrap().len() < lines.concat().len() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "lines not written"
            );
            // A plain test thread polling: no tokio worker to block.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*sink.bytes.lock().unwrap(), lines.concat().into_bytes());
        // 1000 lines written back to back: far fewer writes than lines.
        let writes = *sink.writes.lock().unwrap();
        assert!(writes < 100, "{writes} writes for 1000 lines");
        drop(guard);
    }

    #[test]
    fn the_guard_writes_what_is_left() {
        let sink = Sink::default();
        let (writer, guard) = BatchWriter::new(sink.clone()).unwrap();
        write_line(&writer, "last words\n");
        drop(guard);
        assert_eq!(*sink.bytes.lock().unwrap(), b"last words\n");
    }

    #[test]
    fn a_full_buffer_drops_lines_instead_of_growing() {
        /// A sink that says when a write reaches it, then blocks until told
        /// to go on: a stalled log collector.
        struct Stalled(Arc<(Mutex<bool>, Condvar)>, mpsc::Sender<()>, Sink);
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let _ = self.1.send(());
                let (go, cv) = &*self.0;
                drop(cv.wait_while(go.lock().unwrap(), |go| !*go).unwrap());
                self.2.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (entered, stalled) = mpsc::channel();
        let sink = Sink::default();
        let (writer, guard) =
            BatchWriter::new(Stalled(gate.clone(), entered, sink.clone())).unwrap();
        let line = "x".repeat(1023) + "\n";
        // First the writer thread takes one line and blocks in the sink. Only
        // then does the burst come: had the thread taken a full buffer
        // later, it would also have taken (and reset) the count of lines
        // dropped so far, which this test could not see.
        write_line(&writer, &line);
        stalled.recv().unwrap();
        // The buffer fills up to the cap: three caps' worth overflows.
        let lines = 1 + 3 * MAX_BUFFERED / line.len();
        for _ in 1..lines {
            write_line(&writer, &line);
        }
        let buffered = writer.shared.lock().bytes.len();
        let dropped = writer.shared.lock().dropped as usize;
        // Open the gate before asserting: a failed assertion must not leave
        // the guard's drop waiting for a writer that never returns.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        assert!(buffered <= MAX_BUFFERED, "{buffered} bytes buffered");
        assert!(dropped > 0, "nothing dropped");
        // Every line not dropped was written, whole.
        let written = sink.bytes.lock().unwrap().len();
        assert_eq!(written + dropped * line.len(), lines * line.len());
    }
}
