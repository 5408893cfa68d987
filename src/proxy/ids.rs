//! A request's identity on the way through: its `X-Request-Id` and its W3C trace context.
//!
//! - `X-Request-Id`: the client's first one is kept when it is 1 to [`MOST_REQUEST_ID`] visible
//!   ASCII bytes; otherwise (absent, empty, too long, a space or a control byte) Fulcrum makes one,
//!   32 lowercase hex digits from the worker's `fastrand` generator (seeded once per thread: no
//!   syscall per request). The server gets exactly one line, the client gets it back, the access
//!   log records it.
//! - `traceparent` (W3C Trace Context, version 00: `00-<32 hex trace id>-<16 hex parent id>-<2 hex
//!   flags>`, lowercase, ids not all zero): one valid line is passed on unchanged. With the
//!   listener's `tracing = true`, a request without one, or with an invalid one (or several), gets
//!   a new trace: new trace and span ids, flags `01` (sampled), so that a Jaeger or Zipkin behind
//!   the servers records it. Without `tracing`, what the client sent passes untouched.
//!   `tracestate` always passes untouched.
//!
//! Everything here is fixed-size and on the stack: no allocation per request.

use super::h1::fields::Kind;
use super::h1::request::RequestHead;

/// The longest `X-Request-Id` kept from a client (bytes).
pub const MOST_REQUEST_ID: usize = 200;

/// Bytes of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// The request id a request carries on: the client's or a generated one.
pub struct RequestId {
    bytes: [u8; MOST_REQUEST_ID],
    len: u8,
}

impl RequestId {
    /// The client's `value` when it is a valid id, else a new one.
    pub fn keep_or_make(value: Option<&[u8]>) -> RequestId {
        match value {
            Some(v) if is_valid_request_id(v) => {
                let mut bytes = [0; MOST_REQUEST_ID];
                bytes[..v.len()].copy_from_slice(v);
                RequestId {
                    bytes,
                    len: v.len() as u8,
                }
            }
            _ => RequestId::generate(),
        }
    }

    /// A new id: 32 lowercase hex digits (128 random bits).
    pub fn generate() -> RequestId {
        let mut bytes = [0; MOST_REQUEST_ID];
        hex(fastrand::u128(..), &mut bytes[..32]);
        RequestId { bytes, len: 32 }
    }

    /// The id's bytes (visible ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Whether a client's `X-Request-Id` is kept: 1..=200 bytes, each visible ASCII (`!`..=`~`).
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=MOST_REQUEST_ID).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic())
}

/// What happens to a request's trace context.
pub enum Trace {
    /// None is sent on, or what the client sent passes as it is without being understood.
    None,
    /// The client's one valid `traceparent` passes unchanged; the trace id is logged.
    Kept {
        /// The trace-id part (32 hex digits).
        trace_id: [u8; 32],
    },
    /// Fulcrum started a trace: the client's lines are dropped and this one is sent instead.
    Started {
        /// The whole `traceparent` value.
        header: [u8; TRACEPARENT_LEN],
    },
}

impl Trace {
    /// Decides from the request's `traceparent` values (all of them, in order).
    pub fn of<'v>(mut values: impl Iterator<Item = &'v [u8]>, tracing: bool) -> Trace {
        let first = values.next();
        let only = first.filter(|_| values.next().is_none());
        if let Some(trace_id) = only.and_then(parse_traceparent) {
            return Trace::Kept { trace_id };
        }
        if tracing {
            Trace::start()
        } else {
            Trace::None
        }
    }

    /// A new trace: random trace and span ids (never all zero), sampled.
    fn start() -> Trace {
        let mut header = *b"00-00000000000000000000000000000000-0000000000000000-01";
        hex(fastrand::u128(1..), &mut header[3..35]);
        hex(u128::from(fastrand::u64(1..)), &mut header[36..52]);
        Trace::Started { header }
    }

    /// The trace id for the access log, when there is a trace.
    pub fn trace_id(&self) -> Option<&[u8]> {
        match self {
            Trace::None => None,
            Trace::Kept { trace_id } => Some(trace_id),
            Trace::Started { header } => Some(&header[3..35]),
        }
    }

    /// The `traceparent` Fulcrum writes in place of the client's, when it started the trace.
    pub fn started(&self) -> Option<&[u8]> {
        match self {
            Trace::Started { header } => Some(header),
            _ => None,
        }
    }
}

/// The trace id of a valid version-00 `traceparent`.
fn parse_traceparent(value: &[u8]) -> Option<[u8; 32]> {
    let value = super::h1::fields::trim(value);
    if value.len() != TRACEPARENT_LEN
        || &value[..3] != b"00-"
        || value[35] != b'-'
        || value[52] != b'-'
    {
        return None;
    }
    let lower_hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |part: &[u8]| part.iter().any(|&b| b != b'0');
    let (trace, parent, flags) = (&value[3..35], &value[36..52], &value[53..55]);
    if !(lower_hex(trace)
        && lower_hex(parent)
        && lower_hex(flags)
        && nonzero(trace)
        && nonzero(parent))
    {
        return None;
    }
    let mut id = [0; 32];
    id.copy_from_slice(trace);
    Some(id)
}

/// Writes the low `out.len() * 4` bits of `n` as lowercase hex.
fn hex(mut n: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A request's ids, decided once when its head has been read.
pub struct Ids {
    /// Its `X-Request-Id`.
    pub request_id: RequestId,
    /// Its trace context.
    pub trace: Trace,
}

impl Ids {
    /// The ids of an HTTP/1 request whose head was parsed from `buf`.
    pub fn of_h1(head: &RequestHead, buf: &[u8], tracing: bool) -> Ids {
        let values = |kind: Kind| {
            head.fields
                .iter()
                .filter(move |f| f.kind == kind)
                .map(|f| f.value.get(buf))
        };
        Ids {
            request_id: RequestId::keep_or_make(values(Kind::RequestId).next()),
            trace: Trace::of(values(Kind::TraceParent), tracing),
        }
    }

    /// The ids of an h2 request.
    pub fn of_h2(headers: &http::HeaderMap, tracing: bool) -> Ids {
        Ids {
            request_id: RequestId::keep_or_make(
                headers.get(X_REQUEST_ID).map(http::HeaderValue::as_bytes),
            ),
            trace: Trace::of(
                headers
                    .get_all(TRACEPARENT)
                    .iter()
                    .map(http::HeaderValue::as_bytes),
                tracing,
            ),
        }
    }
}

/// The request-id header's name (lowercase, as h2 has it).
pub const X_REQUEST_ID: &str = "x-request-id";

/// The W3C trace-context header's name.
pub const TRACEPARENT: &str = "traceparent";

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_request_id_is_kept_and_a_bad_one_replaced() {
        assert_eq!(
            RequestId::keep_or_make(Some(b"abc-123")).as_bytes(),
            b"abc-123"
        );
        let long = [b'a'; MOST_REQUEST_ID];
        assert_eq!(RequestId::keep_or_make(Some(&long)).as_bytes(), long);
        for bad in [
            &b""[..],
            b"a b",
            b"a\x01",
            b"caf\xc3\xa9",
            &[b'a'; MOST_REQUEST_ID + 1],
        ] {
            let id = RequestId::keep_or_make(Some(bad));
            assert_eq!(id.as_bytes().len(), 32, "{bad:?}");
            assert!(id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn generated_request_ids_differ() {
        let ids: std::collections::HashSet<Vec<u8>> = (0..1000)
            .map(|_| RequestId::generate().as_bytes().to_vec())
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn a_valid_traceparent_is_kept_with_or_without_tracing() {
        for tracing in [false, true] {
            let trace = Trace::of([VALID].into_iter(), tracing);
            assert_eq!(
                trace.trace_id(),
                Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
            );
            assert!(trace.started().is_none());
        }
    }

    #[test]
    fn invalid_traceparents_are_replaced_only_with_tracing() {
        let upper = b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let zero_trace = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let version = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let short = b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01";
        let dash = b"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01";
        for bad in [
            &upper[..],
            zero_trace,
            zero_parent,
            version,
            short,
            dash,
            b"x",
        ] {
            assert!(
                Trace::of([bad].into_iter(), false).trace_id().is_none(),
                "{bad:?}"
            );
            let started = Trace::of([bad].into_iter(), true);
            let header = started.started().expect("a trace is started");
            assert!(parse_traceparent(header).is_some());
            assert!(header.ends_with(b"-01"));
        }
        let twice = Trace::of([VALID, VALID].into_iter(), true);
        assert!(
            twice.started().is_some(),
            "two traceparent lines are invalid"
        );
    }

    #[test]
    fn no_traceparent_starts_one_only_with_tracing() {
        assert!(Trace::of(std::iter::empty(), false).trace_id().is_none());
        let started = Trace::of(std::iter::empty(), true);
        let header = started.started().unwrap();
        assert_eq!(&header[3..35], started.trace_id().unwrap());
        let other = Trace::of(std::iter::empty(), true);
        assert_ne!(started.trace_id(), other.trace_id());
    }
}
