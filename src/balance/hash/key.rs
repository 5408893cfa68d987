//! What a request is hashed on: the bytes of the configured key, borrowed from the request head so
//! that nothing is allocated per request, or the client's IP.
//!
//! The rules, as the README states them: `uri` is the path and query as sent (the request target
//! of HTTP/1, `:path` of HTTP/2); `path` stops before the `?`; `header:NAME` is the header's first
//! value; `cookie:NAME` is the value of the first cookie of that exact (case-sensitive) name across
//! the `Cookie` headers; `query:NAME` is the raw value of the first parameter of that exact name.
//! Nothing is percent-decoded or unquoted: values are hashed as sent. A key whose value is empty
//! (`X-User-Id:` with nothing, `?user=` or a bare `?user`, `user=`) counts as missing, like an
//! absent one: it names nobody, and hashing it would send every such request to one server.

use std::net::IpAddr;

use crate::balance::RequestView;
use crate::config::HashKey;

/// Where one request's hash comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'h> {
    /// The configured key's value.
    Key(&'h [u8]),
    /// The client's IP, because that is the key (or the listener is in tcp mode).
    ClientIp,
    /// The client's IP, because the request lacks the key (counted as missing).
    Missing,
}

/// Where the hash of a request with `head` (`None` in tcp mode) comes from under `key`.
pub fn source<'h>(key: &HashKey, head: Option<&'h dyn RequestView>) -> Source<'h> {
    let Some(head) = head else {
        return Source::ClientIp;
    };
    let target = head.path_and_query();
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    let value = match key {
        HashKey::ClientIp => return Source::ClientIp,
        HashKey::Uri => Some(target),
        HashKey::Path => Some(path),
        HashKey::Header(name) => head.header(name.as_str()),
        HashKey::Cookie(name) => cookie(head, name.as_bytes()),
        HashKey::Query(name) => query.and_then(|q| self::query(q, name.as_bytes())),
    };
    match value {
        Some(bytes) if !bytes.is_empty() => Source::Key(bytes),
        _ => Source::Missing,
    }
}

/// The value of the first cookie called `name` in the `Cookie` headers (`a=1; b=2`).
fn cookie<'h>(head: &'h dyn RequestView, name: &[u8]) -> Option<&'h [u8]> {
    head.find_in_values("cookie", &mut |value| {
        value.split(|&b| b == b';').find_map(|pair| {
            let (n, v) = split_once(pair, b'=')?;
            (trim(n) == name).then(|| trim(v))
        })
    })
}

/// The raw value of the first parameter called `name` in `query` (`a=1&b=2`); a bare `name`
/// has the empty value.
fn query<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    query.split(|&b| b == b'&').find_map(|param| {
        let (n, v) = split_once(param, b'=').unwrap_or((param, &[]));
        (n == name).then_some(v)
    })
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// Without the spaces and tabs around it.
fn trim(bytes: &[u8]) -> &[u8] {
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

/// A client IP as hashed: its 4 octets for IPv4 and IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a
/// dual-stack socket reports for an IPv4 client), else the 16 octets of the IPv6 address.
pub struct IpBytes {
    octets: [u8; 16],
    len: usize,
}

impl IpBytes {
    /// The stable byte form of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let mut octets = [0; 16];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                octets[..4].copy_from_slice(&v4.octets());
                IpBytes { octets, len: 4 }
            }
            IpAddr::V6(v6) => IpBytes {
                octets: v6.octets(),
                len: 16,
            },
        }
    }

    /// The bytes to hash.
    pub fn as_bytes(&self) -> &[u8] {
        &self.octets[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::request::Parts;
    use http::{HeaderName, Request};

    fn head(target: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::get(target);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn of<'h>(key: &HashKey, head: &'h Parts) -> Source<'h> {
        source(key, Some(head as &dyn RequestView))
    }

    #[test]
    fn uri_is_path_and_query_as_sent_and_path_stops_before_the_query() {
        let h = head("/a/b%20c?x=1&y", &[]);
        assert_eq!(of(&HashKey::Uri, &h), Source::Key(b"/a/b%20c?x=1&y"));
        assert_eq!(of(&HashKey::Path, &h), Source::Key(b"/a/b%20c"));
        // An h2 request's URI carries scheme and authority: only `:path` counts.
        let h2 = head("http://example.com/a?x=1", &[]);
        assert_eq!(of(&HashKey::Uri, &h2), Source::Key(b"/a?x=1"));
        assert_eq!(of(&HashKey::Path, &h2), Source::Key(b"/a"));
    }

    #[test]
    fn a_uri_without_a_path_is_missing() {
        // Authority form (CONNECT): no path at all.
        let h = head("example.com:443", &[]);
        assert_eq!(of(&HashKey::Uri, &h), Source::Missing);
        assert_eq!(of(&HashKey::Path, &h), Source::Missing);
    }

    #[test]
    fn a_header_is_its_first_value() {
        let key = HashKey::Header(HeaderName::from_static("x-user-id"));
        let h = head("/", &[("X-User-Id", "alice"), ("x-user-id", "bob")]);
        assert_eq!(of(&key, &h), Source::Key(b"alice"));
        assert_eq!(of(&key, &head("/", &[("x-other", "a")])), Source::Missing);
        assert_eq!(of(&key, &head("/", &[("x-user-id", "")])), Source::Missing);
    }

    #[test]
    fn a_cookie_is_found_by_its_exact_name_in_any_cookie_header() {
        let key = HashKey::Cookie("sid".into());
        let h = head("/", &[("cookie", "a=1; xsid=no;sid = s1 ; sid=s2")]);
        assert_eq!(of(&key, &h), Source::Key(b"s1"));
        let h = head("/", &[("cookie", "a=1"), ("cookie", "b=2; sid=\"q\"")]);
        assert_eq!(of(&key, &h), Source::Key(b"\"q\""));
        let h = head("/", &[("cookie", "SID=upper; sid")]);
        assert_eq!(of(&key, &h), Source::Missing, "names are case-sensitive");
        assert_eq!(of(&key, &head("/", &[("cookie", "sid=")])), Source::Missing);
        assert_eq!(of(&key, &head("/", &[])), Source::Missing);
    }

    #[test]
    fn a_query_parameter_is_its_first_raw_value() {
        let key = HashKey::Query("user".into());
        let h = head("/p?xuser=no&user=a%20b&user=c", &[]);
        assert_eq!(of(&key, &h), Source::Key(b"a%20b"));
        assert_eq!(of(&key, &head("/p?user=x=y", &[])), Source::Key(b"x=y"));
        assert_eq!(of(&key, &head("/p?user", &[])), Source::Missing);
        assert_eq!(of(&key, &head("/p?user=&user=b", &[])), Source::Missing);
        assert_eq!(of(&key, &head("/p?other=1", &[])), Source::Missing);
        assert_eq!(of(&key, &head("/p", &[])), Source::Missing);
    }

    #[test]
    fn client_ip_and_tcp_mode_hash_the_client() {
        let h = head("/", &[]);
        assert_eq!(of(&HashKey::ClientIp, &h), Source::ClientIp);
        assert_eq!(source(&HashKey::Uri, None), Source::ClientIp);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_hashed_as_ipv4() {
        let bytes = |ip: &str| IpBytes::new(ip.parse().unwrap()).as_bytes().to_vec();
        assert_eq!(bytes("192.0.2.7"), [192, 0, 2, 7]);
        assert_eq!(bytes("::ffff:192.0.2.7"), [192, 0, 2, 7]);
        let v6 = bytes("2001:db8::7");
        assert_eq!(v6.len(), 16);
        assert_eq!(v6[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(v6[15], 7);
    }

    #[test]
    fn trimming_keeps_inner_spaces() {
        assert_eq!(trim(b" \ta b\t "), b"a b");
        assert_eq!(trim(b"  "), b"");
        assert_eq!(trim(b"x"), b"x");
    }
}
