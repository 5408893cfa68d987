//! What one access-log line says, gathered on the worker while the request is served.
//!
//! A [`Record`] holds the numbers and, in one buffer, the few strings of its line (one
//! allocation per request, and only when the listener logs); it is formatted on the writer thread,
//! so a worker never formats, escapes or writes a line.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::LogFormat;

/// The protocol a request came in with (the `protocol` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `HTTP/1.0`.
    Http10,
    /// `HTTP/1.1`.
    Http11,
    /// `HTTP/2` (h2c).
    Http2,
    /// A head that never parsed (logged as `-`).
    Unknown,
}

impl Protocol {
    /// The name as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Unknown => "-",
        }
    }
}

/// The string fields of a line, as indexes into [`Record::spans`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Text {
    Listener,
    Method,
    Path,
    Upstream,
    Server,
    RequestId,
    TraceId,
    Referer,
    UserAgent,
}

/// How many [`Text`] fields there are.
const TEXTS: usize = 9;

/// A span's start when its field is absent.
const ABSENT: u32 = u32::MAX;

/// One request's line before formatting.
#[derive(Debug)]
pub struct Record {
    /// How the line is written.
    pub(super) format: LogFormat,
    /// When the response ended.
    pub(super) time: SystemTime,
    /// The client's address.
    pub(super) client: SocketAddr,
    /// The request's protocol.
    pub(super) protocol: Protocol,
    /// The status sent to the client.
    pub(super) status: u16,
    /// Response body bytes sent to the client.
    pub(super) bytes: u64,
    /// From handing the request to the server to its response head, when a server answered.
    pub(super) upstream_time: Option<Duration>,
    /// From the request's first byte to the response's last.
    pub(super) total_time: Duration,
    text: Vec<u8>,
    spans: [(u32, u32); TEXTS],
}

impl Record {
    /// An empty record whose strings will take about `capacity` bytes.
    pub(super) fn new(
        format: LogFormat,
        client: SocketAddr,
        protocol: Protocol,
        capacity: usize,
    ) -> Record {
        Record {
            format,
            time: SystemTime::UNIX_EPOCH,
            client,
            protocol,
            status: 0,
            bytes: 0,
            upstream_time: None,
            total_time: Duration::ZERO,
            text: Vec::with_capacity(capacity),
            spans: [(ABSENT, 0); TEXTS],
        }
    }

    /// Sets the string field `which` (a field set twice keeps the later value).
    pub(super) fn set(&mut self, which: Text, value: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(value);
        self.spans[which as usize] = (start as u32, self.text.len() as u32);
    }

    /// The string field `which`, when set.
    pub(super) fn get(&self, which: Text) -> Option<&[u8]> {
        match self.spans[which as usize] {
            (ABSENT, _) => None,
            (start, end) => Some(&self.text[start as usize..end as usize]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_kept_apart_in_one_buffer() {
        let mut r = Record::new(
            LogFormat::Json,
            "127.0.0.1:1".parse().unwrap(),
            Protocol::Http11,
            8,
        );
        r.set(Text::Method, b"GET");
        r.set(Text::Path, b"/a");
        r.set(Text::Server, b"10.0.0.1:80");
        assert_eq!(r.get(Text::Method), Some(&b"GET"[..]));
        assert_eq!(r.get(Text::Path), Some(&b"/a"[..]));
        assert_eq!(r.get(Text::Server), Some(&b"10.0.0.1:80"[..]));
        assert_eq!(r.get(Text::Upstream), None);
        r.set(Text::Path, b"");
        assert_eq!(r.get(Text::Path), Some(&b""[..]));
    }
}
