//! Reading a client's request head: parsed by `httparse`, then held to the rules an edge proxy must
//! enforce before one byte goes to a server (CONTRACT.md "Request framing" and "Headers"; RFC 9112).
//!
//! - Framing: `Transfer-Encoding` must be exactly `chunked`, only in HTTP/1.1, and never with
//!   `Content-Length`; `Content-Length` must be one run of digits, given once.
//! - `Host`: exactly one, and a valid `host[:port]`, in every HTTP/1.1 request.
//! - Target: origin-form (`/path?q`), asterisk-form only with `OPTIONS`, absolute-form (its
//!   authority becomes the `Host`), authority-form only with `CONNECT` (which is refused later).
//! - Lines: CRLF only (a bare LF is refused), no whitespace before a colon, no obs-fold, no
//!   control bytes in values, names made of token characters and, unless allowed, no `_`.
//! - Limits: the head's bytes and lines (431), the target's bytes (414), the body (413).

use std::mem::MaybeUninit;

use http::{Method, Version};

use super::fields::{content_length, Field, Fields, Kind, Span};
use crate::config::{HttpLimits, MOST_REQUEST_HEADERS};

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a request head is refused; each maps to the status Fulcrum answers with, then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// 400: the head breaks a rule; the text says which (it is logged and sent in the body).
    #[error("{0}")]
    Bad(&'static str),
    /// 414: the target is longer than `max_uri_bytes`.
    #[error("request target longer than max_uri_bytes")]
    UriTooLong,
    /// 431: the head is longer than `max_request_head_bytes` or has more lines than
    /// `max_request_headers`.
    #[error("request head larger than the listener's limits")]
    HeadTooLarge,
    /// 413: the declared body is longer than `max_body_bytes`.
    #[error("request body larger than max_body_bytes")]
    BodyTooLarge,
}

/// The request target's form, with what the forwarded request needs from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`, forwarded as is.
    Origin,
    /// `*` (OPTIONS only).
    Asterisk,
    /// `http://authority/path`: `path` is what follows the authority (may be empty, forwarded as
    /// `/`), and `authority` replaces the `Host`.
    Absolute {
        /// The authority, which becomes the one `Host`.
        authority: Span,
        /// The path and query after it.
        path: Span,
    },
    /// `host:port` (CONNECT only).
    Authority,
}

/// A parsed and validated request head; every span points into the buffer it was read from.
pub struct RequestHead {
    /// Bytes of the head, request line to the empty line included.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// The request target as sent.
    pub target: Span,
    /// Its form.
    pub form: Target,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header lines in order.
    pub fields: Fields,
    /// The one `Host` value (absent only in HTTP/1.0 without one).
    pub host: Option<Span>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client wants the connection closed after this exchange (`Connection: close`,
    /// or HTTP/1.0 without `Connection: keep-alive`).
    pub close: bool,
    /// `Connection: upgrade` with `Upgrade: websocket`.
    pub websocket: bool,
}

impl RequestHead {
    /// The path and query as sent: the origin-form target, or the part of an absolute-form
    /// target after its authority.
    pub fn path_and_query<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        match self.form {
            Target::Absolute { path, .. } => path.get(buf),
            _ => self.target.get(buf),
        }
    }
}

/// Where the end of a head is: the index just past its empty line, once `buf` holds a whole head.
/// `from` is where the previous search stopped, so a head that trickles in is scanned once.
pub fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    // A bare LF line end still ends the head ("\n\n"), so that it is parsed and refused rather
    // than waited on until the timeout.
    let mut i = start;
    while let Some(at) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + at;
        if lf >= 1 && buf[lf - 1] == b'\n' {
            return Some(lf + 1);
        }
        if lf >= 2 && buf[lf - 1] == b'\r' && buf[lf - 2] == b'\n' {
            return Some(lf + 1);
        }
        i = lf + 1;
    }
    None
}

/// Checks an incomplete head against the limits that can already be judged: its size (431) and
/// the length of the request target seen so far (414).
pub fn check_partial(buf: &[u8], limits: &HttpLimits) -> Result<(), Reject> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    if let Some(sp) = line.iter().position(|&b| b == b' ') {
        let rest = &line[sp + 1..];
        let target = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if target > limits.max_uri_bytes {
            return Err(Reject::UriTooLong);
        }
    }
    if buf.len() > limits.max_request_head_bytes {
        return Err(Reject::HeadTooLarge);
    }
    Ok(())
}

/// Parses and validates the head at the start of `buf`, which must hold it whole (`find_end`).
pub fn parse(buf: &[u8], limits: &HttpLimits) -> Result<RequestHead, Reject> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MOST_REQUEST_HEADERS] =
        [const { MaybeUninit::uninit() }; MOST_REQUEST_HEADERS];
    let slots = &mut slots[..limits.max_request_headers.min(MOST_REQUEST_HEADERS)];
    let mut req = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, slots)
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => Reject::HeadTooLarge,
            httparse::Error::HeaderName => Reject::Bad("invalid header name"),
            httparse::Error::HeaderValue => Reject::Bad("invalid header value"),
            httparse::Error::NewLine => Reject::Bad("invalid line ending"),
            httparse::Error::Version => Reject::Bad("invalid HTTP version"),
            httparse::Error::Token | httparse::Error::Status => Reject::Bad("invalid request line"),
        })?;
    let httparse::Status::Complete(len) = status else {
        return Err(Reject::Bad("incomplete request head"));
    };
    if len > limits.max_request_head_bytes {
        return Err(Reject::HeadTooLarge);
    }
    if has_bare_lf(&buf[..len]) {
        return Err(Reject::Bad("bare LF line ending"));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Reject::Bad("invalid request line"));
    };
    if target.len() > limits.max_uri_bytes {
        return Err(Reject::UriTooLong);
    }
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| Reject::Bad("invalid method"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let target_span = Span::of(buf, target.as_bytes());
    let form = target_form(buf, target.as_bytes(), &method)?;

    let mut fields = Fields::take();
    let mut host = None;
    let mut length = None;
    let mut chunked = false;
    for header in req.headers.iter() {
        let name = header.name.as_bytes();
        if !limits.allow_underscore_headers && name.contains(&b'_') {
            return Err(Reject::Bad("underscore in a header name"));
        }
        let kind = Kind::of(name);
        let value = Span::of(buf, header.value);
        match kind {
            Kind::Host => {
                if host.replace(value).is_some() {
                    return Err(Reject::Bad("more than one Host"));
                }
                if !is_valid_host(header.value) {
                    return Err(Reject::Bad("invalid Host"));
                }
            }
            Kind::ContentLength => {
                let n =
                    content_length(header.value).ok_or(Reject::Bad("invalid Content-Length"))?;
                if length.replace(n).is_some() {
                    return Err(Reject::Bad("more than one Content-Length"));
                }
            }
            Kind::TransferEncoding => {
                if chunked {
                    return Err(Reject::Bad("more than one Transfer-Encoding"));
                }
                if !header.value.eq_ignore_ascii_case(b"chunked") {
                    return Err(Reject::Bad("Transfer-Encoding other than chunked"));
                }
                chunked = true;
            }
            _ => {}
        }
        fields.push(Field {
            name: Span::of(buf, name),
            value,
            kind,
        });
    }
    if version == Version::HTTP_11 && host.is_none() {
        return Err(Reject::Bad("missing Host"));
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(Reject::Bad("Transfer-Encoding with Content-Length")),
        (true, None) if version == Version::HTTP_10 => {
            return Err(Reject::Bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (true, None) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    if let Framing::Length(n) = framing {
        if limits.max_body_bytes != 0 && n > limits.max_body_bytes {
            return Err(Reject::BodyTooLarge);
        }
    }
    let close = fields.has_token(buf, Kind::Connection, b"close")
        || (version == Version::HTTP_10 && !fields.has_token(buf, Kind::Connection, b"keep-alive"));
    let websocket = version == Version::HTTP_11
        && fields.has_token(buf, Kind::Connection, b"upgrade")
        && fields.has_token(buf, Kind::Upgrade, b"websocket");
    Ok(RequestHead {
        len,
        method,
        target: target_span,
        form,
        version,
        fields,
        host,
        framing,
        close,
        websocket,
    })
}

/// Whether a line of `head` ends in LF without the CR before it.
fn has_bare_lf(head: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = head[from..].iter().position(|&b| b == b'\n') {
        let lf = from + at;
        if lf == 0 || head[lf - 1] != b'\r' {
            return true;
        }
        from = lf + 1;
    }
    false
}

fn target_form(buf: &[u8], target: &[u8], method: &Method) -> Result<Target, Reject> {
    if *method == Method::CONNECT {
        // Refused later with 405 whatever its target; only the form is checked here.
        return Ok(Target::Authority);
    }
    match target.first() {
        Some(b'/') => return Ok(Target::Origin),
        Some(b'*') if target.len() == 1 => {
            return if *method == Method::OPTIONS {
                Ok(Target::Asterisk)
            } else {
                Err(Reject::Bad("asterisk-form target without OPTIONS"))
            };
        }
        _ => {}
    }
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))
        .ok_or(Reject::Bad("invalid request target"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains(&b'@') || !is_valid_host(authority) {
        return Err(Reject::Bad("invalid authority in the request target"));
    }
    Ok(Target::Absolute {
        authority: Span::of(buf, authority),
        path: Span::of(buf, path),
    })
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &bytes[prefix.len()..])
}

/// Whether `value` is a valid `Host`: `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2),
/// where uri-host is an IP literal in brackets or a reg-name/IPv4 of unreserved, sub-delim and
/// percent characters. Empty is valid (RFC 9112 §3.2: a target without authority).
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        match &value[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&value[..0], port),
            _ => return false,
        }
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &value[value.len()..]),
        }
    };
    let reg_name = host.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    reg_name && port.iter().all(u8::is_ascii_digit) && port.len() <= 5
}

#[cfg(test)]
mod tests;
