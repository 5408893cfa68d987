//! One writer thread per destination: it takes records from a bounded channel, formats them, and
//! writes them through a buffer, every [`TICK`] while lines come (one write(2) per tick, or per
//! 64 KiB, rather than one per line), and when asked at shutdown.
//!
//! A worker only ever `try_send`s: when the channel is full (the disk or the reader of stdout
//! cannot keep up), the line is dropped and counted, and the request goes on. The thread ends when
//! the last listener using the destination is gone (the channel disconnects), after a flush.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::format;
use super::record::Record;
use crate::config::LogDestination;

/// Records a destination's channel holds before lines are dropped: at 50 000 requests per second,
/// 80 ms of lines (8 ticks), enough to ride out a slow write; about 1 MB.
pub const CHANNEL_LINES: usize = 4096;

/// Bytes buffered before a write, when lines come faster than the channel empties.
const BUFFER_BYTES: usize = 64 * 1024;

/// How long the thread sleeps between drains while lines come: the longest a line waits before
/// it is written. The channel holds [`CHANNEL_LINES`], several ticks of lines at 50 000 a second.
pub const TICK: Duration = Duration::from_millis(10);

/// What a writer thread is sent.
pub enum Msg {
    /// A line to write.
    Line(Record),
    /// Flush now, then say so.
    Flush(SyncSender<()>),
    /// Look at the reopen flag (the flag is what counts; this only wakes the thread).
    Wake,
}

/// The sending side of one destination, shared by the listeners that log there; the thread
/// ends when the last one is dropped (with it, the channel's sender).
pub struct Writer {
    /// The thread's channel.
    pub sender: SyncSender<Msg>,
    flags: Arc<Flags>,
}

/// What the thread and its senders share.
struct Flags {
    /// Where the lines go.
    destination: LogDestination,
    /// Set by SIGUSR1: reopen the file before the next line.
    reopen: AtomicBool,
}

impl Writer {
    /// Opens `destination` (an error names nothing: the caller knows the listener) and starts
    /// its thread.
    pub fn start(destination: &LogDestination) -> io::Result<Arc<Writer>> {
        let output = Output::open(destination)?;
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_LINES);
        let flags = Arc::new(Flags {
            destination: destination.clone(),
            reopen: AtomicBool::new(false),
        });
        let shared = Arc::clone(&flags);
        std::thread::Builder::new()
            .name("fulcrum-log".into())
            .spawn(move || run(receiver, &shared, output))?;
        Ok(Arc::new(Writer { sender, flags }))
    }

    /// Asks the thread to open its file anew before its next line.
    pub fn reopen(&self) {
        if matches!(self.flags.destination, LogDestination::File(_)) {
            self.flags.reopen.store(true, Ordering::Release);
            // A full channel means the thread is busy and will see the flag with its next line.
            let _ = self.sender.try_send(Msg::Wake);
        }
    }
}

/// An open destination.
enum Output {
    Stdout(io::Stdout),
    File(File),
}

impl Output {
    fn open(destination: &LogDestination) -> io::Result<Output> {
        match destination {
            LogDestination::Stdout => Ok(Output::Stdout(io::stdout())),
            LogDestination::File(path) => open_file(path).map(Output::File),
        }
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(s) => s.write(buf),
            Output::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::File(f) => f.flush(),
        }
    }
}

/// The thread: format and write until the channel disconnects.
///
/// While lines come, it drains the channel, flushes, and sleeps a [`TICK`]: workers then never
/// find it blocked in `recv`, so a `try_send` is a few atomics and never a futex wake-up (waking
/// the thread for every line cost 3 µs of CPU per request in `benches/compare.sh`). After a tick
/// with no line it blocks until the next one.
fn run(receiver: Receiver<Msg>, shared: &Flags, output: Output) {
    let mut thread = Thread {
        out: BufWriter::with_capacity(BUFFER_BYTES, output),
        line: Vec::with_capacity(512),
        failing: false,
        shared,
    };
    let mut idle = true;
    loop {
        let mut busy = false;
        if idle {
            match receiver.recv() {
                Ok(msg) => thread.handle(msg),
                Err(_) => break,
            }
            busy = true;
        }
        loop {
            match receiver.try_recv() {
                Ok(msg) => {
                    thread.handle(msg);
                    busy = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    thread.flush();
                    return;
                }
            }
        }
        if busy {
            thread.flush();
            std::thread::sleep(TICK);
        }
        idle = !busy;
    }
    thread.flush();
}

/// The writer thread's state.
struct Thread<'s> {
    out: BufWriter<Output>,
    /// The line being formatted, reused.
    line: Vec<u8>,
    /// Set after a failed write, so that a full disk warns once, not once per line.
    failing: bool,
    shared: &'s Flags,
}

impl Thread<'_> {
    fn handle(&mut self, msg: Msg) {
        if self.shared.reopen.swap(false, Ordering::AcqRel) {
            self.flush();
            if let LogDestination::File(path) = &self.shared.destination {
                match open_file(path) {
                    Ok(file) => *self.out.get_mut() = Output::File(file),
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
                    }
                }
            }
        }
        match msg {
            Msg::Line(record) => {
                self.line.clear();
                format::line(&record, &mut self.line);
                let written = self.out.write_all(&self.line);
                self.check(written);
            }
            Msg::Flush(done) => {
                self.flush();
                let _ = done.send(());
            }
            Msg::Wake => {}
        }
    }

    fn flush(&mut self) {
        let flushed = self.out.flush();
        self.check(flushed);
    }

    fn check(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warn!(destination = ?self.shared.destination, error = %e, "cannot write the access log; lines are lost until it works again");
            }
            Err(_) => {}
        }
    }
}
