//! One writer thread per destination: it takes records from a bounded channel, formats them, and
//! writes through a buffer that is flushed whenever the channel is empty (so a quiet log is on disk
//! within a moment of its last request) and when asked at shutdown.
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

use tracing::warn;

use super::format;
use super::record::Record;
use crate::config::LogDestination;

/// Records a destination's channel holds before lines are dropped: at 50 000 requests per second,
/// 20 ms of lines, enough to ride out a slow write without holding much memory.
pub const CHANNEL_LINES: usize = 1024;

/// Bytes buffered before a write, when lines come faster than the channel empties.
const BUFFER_BYTES: usize = 64 * 1024;

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
fn run(receiver: Receiver<Msg>, shared: &Flags, output: Output) {
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, output);
    let mut line = Vec::with_capacity(512);
    // Set after a failed write, so that a full disk warns once, not once per line.
    let mut failing = false;
    let check = |result: io::Result<()>, failing: &mut bool| match result {
        Ok(()) => *failing = false,
        Err(e) if !*failing => {
            *failing = true;
            warn!(destination = ?shared.destination, error = %e, "cannot write the access log; lines are lost until it works again");
        }
        Err(_) => {}
    };
    loop {
        let msg = match receiver.try_recv() {
            Ok(msg) => msg,
            Err(TryRecvError::Empty) => {
                check(out.flush(), &mut failing);
                match receiver.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        if shared.reopen.swap(false, Ordering::AcqRel) {
            check(out.flush(), &mut failing);
            if let LogDestination::File(path) = &shared.destination {
                match open_file(path) {
                    Ok(file) => *out.get_mut() = Output::File(file),
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
                    }
                }
            }
        }
        match msg {
            Msg::Line(record) => {
                line.clear();
                format::line(&record, &mut line);
                check(out.write_all(&line), &mut failing);
            }
            Msg::Flush(done) => {
                check(out.flush(), &mut failing);
                let _ = done.send(());
            }
            Msg::Wake => {}
        }
    }
    check(out.flush(), &mut failing);
}
