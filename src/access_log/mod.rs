//! Access logs: one line per request, per listener (`access_log`, `access_log_format`).
//!
//! A worker gathers what a line says in an [`Entry`] (one allocation, only on listeners that log)
//! and hands it, when the request is over, to the writer thread of its destination through a
//! bounded channel, without waiting: a full channel drops the line and counts it in
//! `fulcrum_access_log_dropped_total{listener}`. The writer thread formats and writes
//! (`writer.rs`); a worker never formats a line nor touches a file. On a listener without a log the
//! request path pays one `Option` check.
//!
//! [`AccessLogs`] is the registry of open destinations, keyed by destination: listeners that name
//! the same file share its writer, a reload that keeps a destination reuses the open writer, and
//! SIGUSR1 reopens every file (logrotate's convention, as nginx does: the old file was renamed, the
//! path is opened anew).

mod format;
mod record;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use metrics::Counter;
use tokio::time::Instant;

pub use record::Protocol;
use record::{Record, Text};
use writer::{Msg, Writer};

use crate::config::{AccessLogConfig, LogDestination, LogFormat};

/// `fulcrum_access_log_dropped_total{listener}`: lines dropped because the writer fell behind.
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "fulcrum_access_log_dropped_total";

/// The status logged for a request whose client went away before any answer (nginx's 499).
pub const CLIENT_GONE: u16 = 499;

/// A destination that could not be opened, at start or reload.
#[derive(Debug, thiserror::Error)]
#[error("listener `{listener}`: cannot open access_log {}: {source}", path.display())]
pub struct OpenError {
    /// The listener whose `access_log` names it.
    pub listener: String,
    /// The path (`stdout` for standard output).
    pub path: PathBuf,
    /// What the operating system said.
    pub source: std::io::Error,
}

/// The open access-log destinations, each with its writer thread.
#[derive(Default)]
pub struct AccessLogs {
    writers: Mutex<HashMap<LogDestination, Weak<Writer>>>,
}

impl AccessLogs {
    /// The log of `listener` as `config` says: the destination's running writer when one is open,
    /// else a new one (the file is opened, or created, here).
    pub fn open(&self, config: &AccessLogConfig, listener: &str) -> Result<AccessLog, OpenError> {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        writers.retain(|_, w| w.strong_count() > 0);
        let writer = match writers.get(&config.destination).and_then(Weak::upgrade) {
            Some(writer) => writer,
            None => {
                let writer = Writer::start(&config.destination).map_err(|source| OpenError {
                    listener: listener.to_string(),
                    path: match &config.destination {
                        LogDestination::Stdout => PathBuf::from("stdout"),
                        LogDestination::File(path) => path.clone(),
                    },
                    source,
                })?;
                writers.insert(config.destination.clone(), Arc::downgrade(&writer));
                writer
            }
        };
        Ok(AccessLog(Arc::new(Handle {
            writer,
            listener: listener.into(),
            format: config.format,
            dropped: metrics::counter!(ACCESS_LOG_DROPPED_TOTAL, "listener" => listener.to_string()),
        })))
    }

    /// Reopens every file destination (SIGUSR1), each before its next line.
    pub fn reopen(&self) {
        for writer in self.live() {
            writer.reopen();
        }
    }

    /// Waits, up to `timeout` in all, until every writer has written and flushed what it was sent
    /// (at shutdown, after the drain).
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for writer in self.live() {
            let (done, wait) = mpsc::sync_channel(1);
            let mut msg = Msg::Flush(done);
            // A full channel is a writer that is behind: give it until the deadline to make room.
            loop {
                match writer.sender.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                        msg = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => return,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if wait.recv_timeout(left).is_err() {
                return;
            }
        }
    }

    fn live(&self) -> Vec<Arc<Writer>> {
        let writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        writers.values().filter_map(Weak::upgrade).collect()
    }
}

/// One listener's access log: cheap to clone (an h2 response body keeps one until it ends).
#[derive(Clone)]
pub struct AccessLog(Arc<Handle>);

struct Handle {
    writer: Arc<Writer>,
    listener: Arc<str>,
    format: LogFormat,
    dropped: Counter,
}

/// What the log needs to know of a request when it starts (every string is copied).
pub struct Request<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The request's protocol.
    pub protocol: Protocol,
    /// When its first byte arrived.
    pub started: Instant,
    /// The method (`None`: the head never parsed).
    pub method: Option<&'a [u8]>,
    /// The target as sent, query included.
    pub path: Option<&'a [u8]>,
    /// The listener's upstream (`None` for a `respond` listener).
    pub upstream: Option<&'a str>,
    /// The request id (`None`: the head never parsed).
    pub request_id: Option<&'a [u8]>,
    /// The trace id, when the request has a trace.
    pub trace_id: Option<&'a [u8]>,
    /// `Referer` (combined format).
    pub referer: Option<&'a [u8]>,
    /// `User-Agent` (combined format).
    pub user_agent: Option<&'a [u8]>,
}

impl AccessLog {
    /// Starts the line of `request`; it is sent when the [`Entry`] is dropped.
    pub fn entry(&self, request: &Request<'_>) -> Entry {
        let handle = &*self.0;
        let strings = [
            Some(handle.listener.as_bytes()),
            request.method,
            request.path,
            request.upstream.map(str::as_bytes),
            request.request_id,
            request.trace_id,
            request.referer,
            request.user_agent,
        ];
        // Room for the server's address too, so that one allocation holds every string.
        let capacity = strings.iter().flatten().map(|s| s.len()).sum::<usize>() + 48;
        let mut record = Record::new(handle.format, request.client, request.protocol, capacity);
        let texts = [
            Text::Listener,
            Text::Method,
            Text::Path,
            Text::Upstream,
            Text::RequestId,
            Text::TraceId,
            Text::Referer,
            Text::UserAgent,
        ];
        for (which, value) in texts.into_iter().zip(strings) {
            if let Some(value) = value {
                record.set(which, value);
            }
        }
        record.status = CLIENT_GONE;
        Entry {
            log: self.clone(),
            started: request.started,
            record: Some(record),
        }
    }

    fn send(&self, record: Record) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.0.writer.sender.try_send(Msg::Line(record))
        {
            self.0.dropped.increment(1);
        }
    }
}

/// A request's line in the making; sent to the writer when dropped, whatever path the request
/// took (answered, cut short, or its task dropped at shutdown).
pub struct Entry {
    log: AccessLog,
    started: Instant,
    record: Option<Record>,
}

impl Entry {
    fn record(&mut self) -> &mut Record {
        self.record.as_mut().expect("taken only on drop")
    }

    /// A server answered: its address and the time from handing it the request to its head.
    pub fn served(&mut self, server: &str, upstream_time: Duration) {
        let record = self.record();
        record.set(Text::Server, server.as_bytes());
        record.upstream_time = Some(upstream_time);
    }

    /// The status sent to the client (499 until set: the client went away first).
    pub fn status(&mut self, status: u16) {
        self.record().status = status;
    }

    /// `bytes` more of the response body reached the client.
    pub fn sent(&mut self, bytes: usize) {
        self.record().bytes += bytes as u64;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.total_time = self.started.elapsed();
            record.time = SystemTime::now();
            self.log.send(record);
        }
    }
}

#[cfg(test)]
mod tests;
