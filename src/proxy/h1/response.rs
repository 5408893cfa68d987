//! Reading a server's response head, and refusing what would let one response be read two ways:
//! `Content-Length` with `Transfer-Encoding`, `Content-Length`s that differ, a `Transfer-Encoding`
//! other than `chunked`, an invalid status line or header, or a head over [`MOST_RESPONSE_HEAD`].
//! Any of those is a broken response: the client gets 502 and the connection is discarded.

use std::mem::MaybeUninit;

use super::fields::{content_length, Field, Fields, Kind, Span};

/// The longest response head accepted (CONTRACT.md: 64 KiB, over it 502).
pub const MOST_RESPONSE_HEAD: usize = 64 * 1024;
/// The most header lines in a response head.
pub const MOST_RESPONSE_HEADERS: usize = 256;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked coding.
    Chunked,
    /// Until the server closes the connection (which then cannot be reused).
    UntilClose,
}

/// Why a response head is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad response head: {0}")]
pub struct BadResponse(pub &'static str);

/// A parsed and validated response head; spans point into the buffer it was read from.
pub struct ResponseHead {
    /// Bytes of the head, status line to the empty line included.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// The reason phrase as sent.
    pub reason: Span,
    /// Whether the server spoke HTTP/1.0.
    pub http10: bool,
    /// The header lines in order.
    pub fields: Fields,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the server will close the connection after this response (`Connection: close`,
    /// HTTP/1.0 without keep-alive, or a body delimited by the close).
    pub close: bool,
}

/// Parses the response head at the start of `buf`: `Ok(None)` while it is incomplete (and under
/// the size limit). `head_request` says the request was HEAD, so the response has no body
/// whatever its headers say.
pub fn parse(buf: &[u8], head_request: bool) -> Result<Option<ResponseHead>, BadResponse> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MOST_RESPONSE_HEADERS] =
        [const { MaybeUninit::uninit() }; MOST_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => BadResponse("too many header lines"),
            httparse::Error::Status | httparse::Error::Version | httparse::Error::Token => {
                BadResponse("invalid status line")
            }
            _ => BadResponse("invalid header"),
        })?;
    let len = match status {
        httparse::Status::Complete(len) if len <= MOST_RESPONSE_HEAD => len,
        httparse::Status::Partial if buf.len() <= MOST_RESPONSE_HEAD => return Ok(None),
        _ => return Err(BadResponse("head longer than 64 KiB")),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(BadResponse("invalid status line"));
    };
    if !(100..=999).contains(&status) {
        return Err(BadResponse("invalid status code"));
    }
    let reason = Span::of(buf, res.reason.unwrap_or("").as_bytes());
    let mut fields = Fields::take();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in res.headers.iter() {
        let kind = Kind::of(header.name.as_bytes());
        match kind {
            Kind::ContentLength => {
                let n =
                    content_length(header.value).ok_or(BadResponse("invalid Content-Length"))?;
                if length.is_some_and(|before| before != n) {
                    return Err(BadResponse("differing Content-Lengths"));
                }
                if length.replace(n).is_some() {
                    // An identical repeat (RFC 9110 §8.6 allows a recipient to take it); only the
                    // first line is passed on.
                    continue;
                }
            }
            Kind::TransferEncoding => {
                if chunked || !header.value.eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            }
            _ => {}
        }
        fields.push(Field {
            name: Span::of(buf, header.name.as_bytes()),
            value: Span::of(buf, header.value),
            kind,
        });
    }
    if chunked && length.is_some() {
        return Err(BadResponse("Transfer-Encoding with Content-Length"));
    }
    let bodiless = head_request || status < 200 || status == 204 || status == 304;
    let framing = match (bodiless, chunked, length) {
        (true, _, _) | (false, false, Some(0)) => BodyFraming::Empty,
        (false, true, _) => BodyFraming::Chunked,
        (false, false, Some(n)) => BodyFraming::Length(n),
        (false, false, None) => BodyFraming::UntilClose,
    };
    let http10 = minor == 0;
    let close = framing == BodyFraming::UntilClose
        || fields.has_token(buf, Kind::Connection, b"close")
        || (http10 && !fields.has_token(buf, Kind::Connection, b"keep-alive"));
    Ok(Some(ResponseHead {
        len,
        status,
        reason,
        http10,
        fields,
        framing,
        close,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> ResponseHead {
        parse(text.as_bytes(), false).unwrap().expect("complete")
    }

    fn broken(text: &str) -> BadResponse {
        match parse(text.as_bytes(), false) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {text:?}"),
        }
    }

    #[test]
    fn framing_of_responses() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").framing,
            BodyFraming::Length(5)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing,
            BodyFraming::Chunked
        );
        let close = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            (close.framing, close.close),
            (BodyFraming::UntilClose, true)
        );
        for bodiless in [
            "204 No Content",
            "304 Not Modified",
            "100 Continue",
            "101 Switching Protocols",
        ] {
            let text = format!("HTTP/1.1 {bodiless}\r\nContent-Length: 9\r\n\r\n");
            assert_eq!(head(&text).framing, BodyFraming::Empty, "{bodiless}");
        }
        let to_head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(to_head.framing, BodyFraming::Empty);
        assert!(!to_head.close);
    }

    #[test]
    fn identical_lengths_are_one_and_differing_ones_broken() {
        let same = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(same.framing, BodyFraming::Length(5));
        assert_eq!(same.fields.len(), 1);
        assert_eq!(
            broken("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            BadResponse("differing Content-Lengths")
        );
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_broken() {
        assert_eq!(
            broken("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            BadResponse("Transfer-Encoding with Content-Length")
        );
        assert_eq!(
            broken("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            BadResponse("Transfer-Encoding other than chunked")
        );
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA b: c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(parse(bad.as_bytes(), false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heads_over_64_kib_are_broken() {
        let partial = format!("HTTP/1.1 200 OK\r\nA: {}", "x".repeat(MOST_RESPONSE_HEAD));
        assert!(parse(partial.as_bytes(), false).is_err());
        let under = format!("HTTP/1.1 200 OK\r\nA: {}", "x".repeat(60 * 1024));
        assert!(parse(under.as_bytes(), false).unwrap().is_none());
        let whole = format!("{under}\r\n\r\n");
        assert_eq!(head(&whole).len, whole.len(), "a 60 KiB head is taken");
        let over = format!(
            "HTTP/1.1 200 OK\r\nA: {}\r\n\r\n",
            "x".repeat(MOST_RESPONSE_HEAD)
        );
        assert_eq!(broken(&over), BadResponse("head longer than 64 KiB"));
    }

    #[test]
    fn each_broken_head_says_why() {
        assert_eq!(
            broken("HTTP/1.1 OK\r\n\r\n"),
            BadResponse("invalid status line")
        );
        assert_eq!(
            broken("HTTX/1.1 200 OK\r\n\r\n"),
            BadResponse("invalid status line")
        );
        assert_eq!(
            broken("HTTP/1.1 200 OK\r\nA b: c\r\n\r\n"),
            BadResponse("invalid header")
        );
        let many: String = (0..=MOST_RESPONSE_HEADERS)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let text = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(broken(&text), BadResponse("too many header lines"));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(!head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").close);
        assert!(head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
        assert!(
            !head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n").close
        );
    }
}
