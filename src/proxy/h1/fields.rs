//! Header fields as offsets into the buffer a head was read into, classified once while parsing so
//! that the rewrite and the framing rules never compare names again.
//!
//! The field lists come from a per-worker free list, so a request allocates nothing for them.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// A byte range of the head buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// The range that `part` (a subslice of `buf`) occupies in `buf`; an empty span when `part`
    /// is empty and lies elsewhere (httparse hands out a static `""` for a missing reason phrase).
    pub fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        if start > buf.len() || buf.len() - start < part.len() {
            debug_assert!(part.is_empty(), "a non-empty part outside the buffer");
            return Span::default();
        }
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes of this span in `buf`.
    pub fn get<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    /// How many bytes it covers.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether it covers none.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// What a header means to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// End to end: passed on as received.
    Other,
    /// `Host`.
    Host,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding` (hop by hop: Fulcrum frames each leg itself).
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Upgrade`.
    Upgrade,
    /// `X-Forwarded-For` (appended to).
    ForwardedFor,
    /// `X-Forwarded-Proto` (replaced).
    ForwardedProto,
    /// Another X-Forwarded-* header: end to end, but `Connection` cannot remove it.
    ForwardedOther,
    /// `X-Request-Id` (kept or replaced: exactly one goes on, `proxy::ids`).
    RequestId,
    /// `traceparent` (W3C Trace Context: passed on, or replaced by a started trace).
    TraceParent,
    /// The rest of the hop-by-hop set: RFC 9110 §7.6.1 (`Keep-Alive`, `Proxy-Connection`, `TE`)
    /// and the RFC 2616 ones Go's ReverseProxy also drops (`Trailer`, `Proxy-Authenticate`,
    /// `Proxy-Authorization`).
    HopByHop,
}

impl Kind {
    /// Classifies a header name (any case).
    pub fn of(name: &[u8]) -> Kind {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            2 if is("te") => Kind::HopByHop,
            4 if is("host") => Kind::Host,
            7 if is("upgrade") => Kind::Upgrade,
            7 if is("trailer") => Kind::HopByHop,
            10 if is("connection") => Kind::Connection,
            10 if is("keep-alive") => Kind::HopByHop,
            11 if is("traceparent") => Kind::TraceParent,
            12 if is("x-request-id") => Kind::RequestId,
            14 if is("content-length") => Kind::ContentLength,
            15 if is("x-forwarded-for") => Kind::ForwardedFor,
            16 if is("proxy-connection") => Kind::HopByHop,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            17 if is("x-forwarded-proto") => Kind::ForwardedProto,
            18 if is("proxy-authenticate") => Kind::HopByHop,
            19 if is("proxy-authorization") => Kind::HopByHop,
            _ if name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-") => {
                Kind::ForwardedOther
            }
            _ => Kind::Other,
        }
    }

    /// Whether `Connection` may nominate a header of this kind for removal: not `Content-Length`,
    /// which frames the body (removing it would leave the body to be read as the next message:
    /// request smuggling, found by fuzzing), nor `Host` and `X-Forwarded-*`, which the server
    /// needs to know who asked for what.
    pub fn may_be_nominated(self) -> bool {
        !matches!(
            self,
            Kind::ContentLength
                | Kind::Host
                | Kind::ForwardedFor
                | Kind::ForwardedProto
                | Kind::ForwardedOther
        )
    }
}

/// One header line.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The name as received.
    pub name: Span,
    /// The value, without the whitespace around it.
    pub value: Span,
    /// What it means to the proxy.
    pub kind: Kind,
}

thread_local! {
    static FREE: RefCell<Vec<Vec<Field>>> = const { RefCell::new(Vec::new()) };
}

/// Free lists a worker keeps (one per exchange in flight is plenty).
const MOST_FREE: usize = 64;

/// The header lines of one head, in order; the storage goes back to the worker's free list.
pub struct Fields(Vec<Field>);

impl Fields {
    /// An empty list, reusing a freed one when the worker has one.
    pub fn take() -> Fields {
        Fields(FREE.with_borrow_mut(Vec::pop).unwrap_or_default())
    }

    /// Whether `name` (any case) is nominated by one of the `Connection` fields.
    pub fn nominated(&self, buf: &[u8], name: &[u8]) -> bool {
        self.0
            .iter()
            .filter(|f| f.kind == Kind::Connection)
            .flat_map(|f| tokens(f.value.get(buf)))
            .any(|t| t.eq_ignore_ascii_case(name))
    }

    /// The value of the first field called `name` (any case).
    pub fn first<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        self.0
            .iter()
            .find(|f| f.name.get(buf).eq_ignore_ascii_case(name))
            .map(|f| f.value.get(buf))
    }

    /// Whether a field of `kind` has `token` in its comma-separated value (any case).
    pub fn has_token(&self, buf: &[u8], kind: Kind, token: &[u8]) -> bool {
        self.0
            .iter()
            .filter(|f| f.kind == kind)
            .flat_map(|f| tokens(f.value.get(buf)))
            .any(|t| t.eq_ignore_ascii_case(token))
    }
}

impl Deref for Fields {
    type Target = Vec<Field>;

    fn deref(&self) -> &Vec<Field> {
        &self.0
    }
}

impl DerefMut for Fields {
    fn deref_mut(&mut self) -> &mut Vec<Field> {
        &mut self.0
    }
}

impl Drop for Fields {
    fn drop(&mut self) {
        let mut list = std::mem::take(&mut self.0);
        list.clear();
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < MOST_FREE {
                free.push(list);
            }
        });
    }
}

/// The comma-separated tokens of a list-valued header, trimmed, empty ones skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

/// Without the spaces and tabs around it.
pub fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Parses a `Content-Length` value: one run of ASCII digits (RFC 9110 §8.6), no sign, no
/// whitespace inside, no list, and no overflow.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified_in_any_case() {
        assert_eq!(Kind::of(b"HOST"), Kind::Host);
        assert_eq!(Kind::of(b"Content-Length"), Kind::ContentLength);
        assert_eq!(Kind::of(b"transfer-ENCODING"), Kind::TransferEncoding);
        assert_eq!(Kind::of(b"Connection"), Kind::Connection);
        assert_eq!(Kind::of(b"upgrade"), Kind::Upgrade);
        assert_eq!(Kind::of(b"X-Forwarded-For"), Kind::ForwardedFor);
        assert_eq!(Kind::of(b"X-Forwarded-Proto"), Kind::ForwardedProto);
        assert_eq!(Kind::of(b"X-Forwarded-Host"), Kind::ForwardedOther);
        for hop in [
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "Proxy-Authorization",
        ] {
            assert_eq!(Kind::of(hop.as_bytes()), Kind::HopByHop, "{hop}");
        }
        for other in ["x-forwarded-", "hosts", "content-type", "tes", "accept"] {
            assert_eq!(Kind::of(other.as_bytes()), Kind::Other, "{other}");
        }
    }

    #[test]
    fn content_length_is_one_run_of_digits() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0042"), Some(42));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "+1",
            "-1",
            "1 2",
            "1,1",
            "0x10",
            "18446744073709551616",
            "1.0",
        ] {
            assert_eq!(content_length(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_span_of_an_empty_slice_from_elsewhere_is_empty() {
        let buf = b"HTTP/1.1 204\r\n\r\n";
        assert_eq!(Span::of(buf, b""), Span::default());
        assert_eq!(Span::of(buf, &buf[9..12]), Span { start: 9, end: 12 });
        assert_eq!(Span::of(buf, &buf[buf.len()..]).len(), 0);
    }

    #[test]
    fn framing_and_identity_headers_cannot_be_nominated() {
        for kind in [
            Kind::ContentLength,
            Kind::Host,
            Kind::ForwardedFor,
            Kind::ForwardedProto,
            Kind::ForwardedOther,
        ] {
            assert!(!kind.may_be_nominated(), "{kind:?}");
        }
        assert!(Kind::Other.may_be_nominated());
    }

    #[test]
    fn tokens_are_trimmed_and_empty_ones_skipped() {
        let got: Vec<&[u8]> = tokens(b" keep-alive ,, Upgrade\t").collect();
        assert_eq!(got, [&b"keep-alive"[..], b"Upgrade"]);
    }
}
