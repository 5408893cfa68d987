//! Writing a [`Record`] as one line, on the writer thread.
//!
//! - JSON: one object per line, the fields of README.md's "Access log and request ids" in a fixed
//!   order; every string escaped per RFC 8259 (quote, backslash, control characters as `\u00XX`),
//!   bytes that are not UTF-8 as `\ufffd`; absent values are `null`, times in seconds.
//! - Combined: the NCSA combined format (`client - - [time] "METHOD path PROTO" status bytes
//!   "referer" "user-agent"`) as nginx writes it (quote, backslash, control and non-ASCII bytes as
//!   `\xHH`), with the request id appended as one more quoted field.

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use super::record::{Record, Text};
use crate::config::LogFormat;

/// Appends `record`'s line, newline included, to `out`.
pub fn line(record: &Record, out: &mut Vec<u8>) {
    match record.format {
        LogFormat::Json => json(record, out),
        LogFormat::Combined => combined(record, out),
    }
    out.push(b'\n');
}

fn json(r: &Record, out: &mut Vec<u8>) {
    let time = humantime::format_rfc3339_millis(r.time);
    let _ = write!(out, "{{\"time\":\"{time}\",\"listener\":");
    json_text(out, r.get(Text::Listener));
    let _ = write!(out, ",\"client\":\"{}\",\"method\":", r.client);
    json_text(out, Some(r.get(Text::Method).unwrap_or(b"-")));
    out.extend_from_slice(b",\"path\":");
    json_text(out, Some(r.get(Text::Path).unwrap_or(b"-")));
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes\":{},\"upstream\":",
        r.protocol.as_str(),
        r.status,
        r.bytes
    );
    json_text(out, r.get(Text::Upstream));
    out.extend_from_slice(b",\"server\":");
    json_text(out, r.get(Text::Server));
    out.extend_from_slice(b",\"upstream_time\":");
    match r.upstream_time {
        Some(t) => seconds(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"total_time\":");
    seconds(out, r.total_time);
    out.extend_from_slice(b",\"request_id\":");
    json_text(out, r.get(Text::RequestId));
    out.extend_from_slice(b",\"trace_id\":");
    json_text(out, r.get(Text::TraceId));
    out.push(b'}');
}

/// Seconds with microsecond resolution.
fn seconds(out: &mut Vec<u8>, t: Duration) {
    let _ = write!(out, "{}.{:06}", t.as_secs(), t.subsec_micros());
}

/// A JSON string, or `null`. Runs of bytes that need no escaping are copied whole (the writer
/// thread spent most of its time escaping character by character).
fn json_text(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(mut rest) = value else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    loop {
        let plain = rest
            .iter()
            .position(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
            .unwrap_or(rest.len());
        out.extend_from_slice(&rest[..plain]);
        rest = &rest[plain..];
        let Some(&b) = rest.first() else { break };
        let taken = match b {
            b'"' => escape(out, b"\\\""),
            b'\\' => escape(out, b"\\\\"),
            b'\n' => escape(out, b"\\n"),
            b'\r' => escape(out, b"\\r"),
            b'\t' => escape(out, b"\\t"),
            ..=0x7f => {
                let _ = write!(out, "\\u{b:04x}");
                1
            }
            _ => {
                // One UTF-8 character, or the bytes that are not one.
                let chunk = rest.utf8_chunks().next().expect("rest is not empty");
                match chunk.valid().chars().next() {
                    Some(c) => {
                        out.extend_from_slice(&rest[..c.len_utf8()]);
                        c.len_utf8()
                    }
                    None => {
                        out.extend_from_slice(b"\\ufffd");
                        chunk.invalid().len()
                    }
                }
            }
        };
        rest = &rest[taken..];
    }
    out.push(b'"');
}

/// Appends `escaped` in place of one byte; 1.
fn escape(out: &mut Vec<u8>, escaped: &[u8]) -> usize {
    out.extend_from_slice(escaped);
    1
}

fn combined(r: &Record, out: &mut Vec<u8>) {
    let _ = write!(out, "{} - - [", r.client.ip().to_canonical());
    clf_time(out, r.time);
    out.extend_from_slice(b"] \"");
    clf_text(out, r.get(Text::Method).unwrap_or(b"-"));
    out.push(b' ');
    clf_text(out, r.get(Text::Path).unwrap_or(b"-"));
    let _ = write!(
        out,
        " {}\" {} {} \"",
        r.protocol.as_str(),
        r.status,
        r.bytes
    );
    clf_text(out, r.get(Text::Referer).unwrap_or(b"-"));
    out.extend_from_slice(b"\" \"");
    clf_text(out, r.get(Text::UserAgent).unwrap_or(b"-"));
    out.extend_from_slice(b"\" \"");
    clf_text(out, r.get(Text::RequestId).unwrap_or(b"-"));
    out.push(b'"');
}

/// A quoted field's content, escaped as nginx does: `"`, `\`, control and non-ASCII bytes as `\xHH`.
fn clf_text(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if b == b'"' || b == b'\\' || !(b' '..=b'~').contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000` (UTC).
fn clf_time(out: &mut Vec<u8>, time: SystemTime) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `YYYY-MM-DDTHH:MM:SSZ`, taken apart.
    let iso = humantime::format_rfc3339_seconds(time).to_string();
    let month = iso[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12);
    let _ = write!(
        out,
        "{}/{}/{}:{} +0000",
        &iso[8..10],
        MONTHS[month - 1],
        &iso[0..4],
        &iso[11..19]
    );
}

#[cfg(test)]
mod tests {
    use super::super::record::Protocol;
    use super::*;

    fn record(format: LogFormat) -> Record {
        let mut r = Record::new(
            format,
            "127.0.0.1:4000".parse().unwrap(),
            Protocol::Http11,
            64,
        );
        r.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000_000_123);
        r.status = 200;
        r.bytes = 12;
        r.total_time = Duration::from_micros(2_500);
        r.upstream_time = Some(Duration::from_micros(1_250));
        r.set(Text::Listener, b"web");
        r.set(Text::Method, b"GET");
        r.set(Text::Path, b"/a\"b\\c\x01\xff?q=\xc3\xa9");
        r.set(Text::Upstream, b"app");
        r.set(Text::Server, b"10.0.0.1:80");
        r.set(Text::RequestId, b"rid");
        r.set(Text::UserAgent, b"curl/8");
        r
    }

    fn text(r: &Record) -> String {
        let mut out = Vec::new();
        line(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_parse_with_every_field() {
        let got = text(&record(LogFormat::Json));
        assert!(got.ends_with("}\n"), "{got}");
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["time"], "2001-09-09T01:46:40.123Z");
        assert_eq!(v["listener"], "web");
        assert_eq!(v["client"], "127.0.0.1:4000");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a\"b\\c\u{1}\u{fffd}?q=\u{e9}");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["upstream"], "app");
        assert_eq!(v["server"], "10.0.0.1:80");
        assert_eq!(v["upstream_time"], 0.00125);
        assert_eq!(v["total_time"], 0.0025);
        assert_eq!(v["request_id"], "rid");
        assert!(v["trace_id"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 14);
        assert!(got.contains(r#""/a\"b\\c\u0001\ufffd?q=é""#), "{got}");
    }

    #[test]
    fn any_bytes_come_back_from_the_json_as_their_lossy_text() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.u8(0..4) {
                    0 => rng.u8(..0x20),
                    1 => rng.u8(0x80..),
                    _ => rng.u8(0x20..0x80),
                })
                .collect();
            let mut out = Vec::new();
            json_text(&mut out, Some(&bytes));
            let text = std::str::from_utf8(&out).expect("the JSON is UTF-8");
            let back: String = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(back, String::from_utf8_lossy(&bytes), "{bytes:?}");
        }
    }

    #[test]
    fn an_unparsed_request_logs_dashes_and_nulls() {
        let mut r = Record::new(
            LogFormat::Json,
            "[::1]:9".parse().unwrap(),
            Protocol::Unknown,
            8,
        );
        r.status = 400;
        let v: serde_json::Value = serde_json::from_str(&text(&r)).unwrap();
        assert_eq!(v["method"], "-");
        assert_eq!(v["path"], "-");
        assert_eq!(v["protocol"], "-");
        assert_eq!(v["client"], "[::1]:9");
        for null in [
            "listener",
            "upstream",
            "server",
            "upstream_time",
            "request_id",
            "trace_id",
        ] {
            assert!(v[null].is_null(), "{null}: {v}");
        }
    }

    #[test]
    fn combined_lines_are_ncsa_with_the_request_id() {
        assert_eq!(
            text(&record(LogFormat::Combined)),
            "127.0.0.1 - - [09/Sep/2001:01:46:40 +0000] \"GET /a\\x22b\\x5Cc\\x01\\xFF?q=\\xC3\\xA9 HTTP/1.1\" 200 12 \"-\" \"curl/8\" \"rid\"\n"
        );
    }
}
