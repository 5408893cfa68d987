//! Header rewriting between client and server.
//!
//! Hop-by-hop headers belong to one connection and are removed in both directions: the RFC 9110
//! §7.6.1 set plus the older RFC 2616 ones that Go's `httputil.ReverseProxy` also drops (Trailer,
//! Proxy-Authenticate, Proxy-Authorization), and every header the `Connection` header names, except
//! `Host` and `X-Forwarded-*`, which a client must not be able to strip. A WebSocket upgrade keeps its
//! `Connection: upgrade` and `Upgrade: websocket` so the server can accept it.

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Uri, Version};

const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether the request asks for a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")));
    connection_upgrade
        && headers
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("websocket")))
}

/// Whether an HTTP/1.x request's framing is ambiguous and must be refused (400, then close) rather
/// than forwarded: `Transfer-Encoding` other than exactly `chunked` (hyper accepts `gzip, chunked`),
/// or `Transfer-Encoding` together with `Content-Length` (the request-smuggling pair). hyper already
/// drops the `Content-Length` of such a request and closes the connection after the response (RFC
/// 9112 §6.3), so the second rule only guards against that behaviour changing under us.
pub fn has_ambiguous_framing(headers: &HeaderMap) -> bool {
    let mut encodings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (encodings.next(), encodings.next()) {
        (None, _) => false,
        (Some(_), Some(_)) => true,
        (Some(only), None) => {
            let chunked = only
                .to_str()
                .is_ok_and(|v| v.trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked"));
            !chunked || headers.contains_key(header::CONTENT_LENGTH)
        }
    }
}

/// Rewrites a client request head for the server: origin-form URI, HTTP/1.1, `Host` kept (or taken
/// from the URI's authority), hop-by-hop headers removed, `X-Forwarded-For` appended to and
/// `X-Forwarded-Proto` set.
pub fn prepare_request(parts: &mut Parts, client: SocketAddr, websocket: bool) {
    if let Some(authority) = parts.uri.authority() {
        // h2 `:authority` or an HTTP/1.1 absolute-form target: the authority is the host (RFC 9112 §3.2.2).
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, host);
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(origin).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers);
    if websocket {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    append_forwarded_for(&mut parts.headers, client);
    parts
        .headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// Rewrites a server response head for the client.
pub fn prepare_response(headers: &mut HeaderMap, websocket: bool) {
    remove_hop_by_hop(headers);
    if websocket {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// Removes the hop-by-hop set and the headers `Connection` nominates.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(nominated) = nominated_headers(headers) {
        for name in nominated {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Headers named in `Connection` that are not already in the hop-by-hop set; `None` (and no
/// allocation) in the common case of `Connection: keep-alive` or `close`.
fn nominated_headers(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut found: Option<Vec<HeaderName>> = None;
    for value in headers.get_all(header::CONNECTION) {
        for token in tokens(value) {
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            if is_protected(&name) || HOP_BY_HOP.contains(&name) || name == "close" {
                continue;
            }
            found.get_or_insert_with(Vec::new).push(name);
        }
    }
    found
}

/// `Connection` cannot remove these: the server needs them to know who asked for what.
fn is_protected(name: &HeaderName) -> bool {
    *name == header::HOST || name.as_str().starts_with("x-forwarded-")
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_canonical();
    let mut joined = String::new();
    for previous in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(text) = previous.to_str() {
            joined.push_str(text);
            joined.push_str(", ");
        }
    }
    let _ = write!(joined, "{ip}");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_are_removed() {
        let mut p = parts(
            Request::get("/a?b=1")
                .header("connection", "keep-alive, x-secret, host, x-forwarded-for")
                .header("keep-alive", "timeout=5")
                .header("x-secret", "1")
                .header("te", "trailers")
                .header("upgrade", "h2c")
                .header("host", "example.test")
                .header("x-forwarded-for", "1.2.3.4")
                .header("x-kept", "yes")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, "127.0.0.1:5000".parse().unwrap(), false);
        let h = &p.headers;
        for gone in ["connection", "keep-alive", "x-secret", "te", "upgrade"] {
            assert!(h.get(gone).is_none(), "{gone} should be removed");
        }
        assert_eq!(h["host"], "example.test");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(p.uri, "/a?b=1");
    }

    #[test]
    fn absolute_form_and_h2_authority_become_host() {
        let mut p = parts(
            Request::get("http://svc.test:81/x")
                .version(Version::HTTP_2)
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, "[::ffff:10.0.0.1]:1".parse().unwrap(), false);
        assert_eq!(p.headers["host"], "svc.test:81");
        assert_eq!(p.uri, "/x");
        assert_eq!(p.version, Version::HTTP_11);
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn websocket_upgrade_is_detected_and_kept() {
        let mut p = parts(
            Request::get("/ws")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "WebSocket")
                .body(())
                .unwrap(),
        );
        assert!(is_websocket_upgrade(&p.headers));
        prepare_request(&mut p, "127.0.0.1:1".parse().unwrap(), true);
        assert_eq!(p.headers["connection"], "upgrade");
        assert_eq!(p.headers["upgrade"], "websocket");
    }

    #[test]
    fn only_a_lone_chunked_transfer_encoding_is_unambiguous() {
        let framing = |pairs: &[(&str, &str)]| {
            let mut req = Request::post("/");
            for (k, v) in pairs {
                req = req.header(*k, *v);
            }
            has_ambiguous_framing(&parts(req.body(()).unwrap()).headers)
        };
        assert!(!framing(&[]));
        assert!(!framing(&[("content-length", "3")]));
        assert!(!framing(&[("transfer-encoding", " chunked ")]));
        assert!(!framing(&[("transfer-encoding", "Chunked")]));
        assert!(framing(&[("transfer-encoding", "gzip, chunked")]));
        assert!(framing(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ]));
        assert!(framing(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "3")
        ]));
        assert!(framing(&[("transfer-encoding", "identity")]));
    }

    #[test]
    fn other_upgrades_are_not_websocket() {
        let p = parts(
            Request::get("/")
                .header("connection", "upgrade")
                .header("upgrade", "h2c")
                .body(())
                .unwrap(),
        );
        assert!(!is_websocket_upgrade(&p.headers));
    }
}
