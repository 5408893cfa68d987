//! Any bytes given to the request-head codec: `find_end` (also fed in pieces), `check_partial` and
//! `request::parse` never panic; an accepted head, once rewritten for the server, parses again
//! with the same method, path and query, `Host`, framing and WebSocket upgrade, as HTTP/1.1, with
//! one `X-Forwarded-For` ending in the client, one `X-Request-Id` and one `traceparent`, and no
//! hop-by-hop or nominated header left.
//!
//! The rewrite is what a server trusts to frame the body the proxy sends after it: a head that
//! reads differently after it is a request-smuggling bug.
//!
//! Input: the first byte holds flags (bit 0: `allow_underscore_headers`; bits 1 to 5: the piece
//! size for the incremental `find_end`; bit 6: the rest is a recipe for a head, see `common.rs`),
//! the rest is the buffer a head was read into.
#![no_main]

#[path = "common.rs"]
mod common;

use fulcrum::config::{HttpLimits, MOST_REQUEST_HEADERS};
use fulcrum::proxy::h1::fields::tokens;
use fulcrum::proxy::h1::request::{self, RequestHead, Target};
use fulcrum::proxy::h1::rewrite::{self, Out};
use fulcrum::proxy::ids::Ids;
use libfuzzer_sys::fuzz_target;

const CLIENT_IP: &str = "192.0.2.1";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let built;
    let buf = if flags & 0x40 != 0 {
        built = common::request(rest);
        &built[..]
    } else {
        rest
    };
    let limits = HttpLimits {
        allow_underscore_headers: flags & 1 != 0,
        ..HttpLimits::default()
    };
    let _ = request::check_partial(buf, &limits);
    let end = request::find_end(buf, 0);
    assert_eq!(
        end,
        find_end_in_pieces(buf, 1 + usize::from(flags >> 1 & 0x1f))
    );
    let Some(end) = end else {
        return;
    };
    assert!(end <= buf.len());
    let buf = &buf[..end];
    let Ok(head) = request::parse(buf, &limits) else {
        return;
    };
    assert_eq!(head.len, end, "an accepted head ends where find_end said");
    check_rewrite(&head, buf, &limits);
});

/// `find_end` on a head that arrives `piece` bytes at a time, each search resuming where the last
/// one stopped, as the engine calls it.
fn find_end_in_pieces(buf: &[u8], piece: usize) -> Option<usize> {
    let mut seen = 0;
    while seen < buf.len() {
        let now = (seen + piece).min(buf.len());
        if let Some(end) = request::find_end(&buf[..now], seen) {
            return Some(end);
        }
        seen = now;
    }
    None
}

fn check_rewrite(head: &RequestHead, buf: &[u8], limits: &HttpLimits) {
    let mut out = Out::new();
    // With tracing on, so that both ways of writing `traceparent` (passed on, or started) run.
    let ids = Ids::of_h1(head, buf, true);
    rewrite::request(head, buf, CLIENT_IP, &ids, &mut out);
    let new = out.bytes();
    let shown = String::from_utf8_lossy(new);
    let lines = common::header_lines(new);

    // Exactly one X-Request-Id, the one decided for the request, and exactly one traceparent.
    assert_eq!(
        common::values(&lines, "x-request-id"),
        [ids.request_id.as_bytes()],
        "{shown}"
    );
    assert_eq!(common::values(&lines, "traceparent").len(), 1, "{shown}");

    // The request line says HTTP/1.1 (the rest is compared once parsed again, below).
    let line_end = new.windows(2).position(|w| w == b"\r\n").unwrap();
    assert!(new[..line_end].ends_with(b" HTTP/1.1"), "{shown}");

    // Exactly one X-Forwarded-For, ending in the client, and one X-Forwarded-Proto.
    let xff = common::values(&lines, "x-forwarded-for");
    assert_eq!(xff.len(), 1, "{shown}");
    let ends_in_client = xff[0] == CLIENT_IP.as_bytes() || xff[0].ends_with(b", 192.0.2.1");
    assert!(ends_in_client, "{shown}");
    assert_eq!(
        common::values(&lines, "x-forwarded-proto"),
        [b"http"],
        "{shown}"
    );

    // No hop-by-hop or nominated header: only the server leg's own Connection, Upgrade and
    // Transfer-Encoding.
    let nominated = head
        .fields
        .iter()
        .filter(|f| f.name.get(buf).eq_ignore_ascii_case(b"connection"))
        .flat_map(|f| tokens(f.value.get(buf)));
    common::check_hop_by_hop(
        &lines,
        nominated,
        head.websocket.then_some("upgrade"),
        head.websocket.then_some("websocket"),
        (head.framing == request::Framing::Chunked).then_some("chunked"),
        &shown,
    );

    // The server reads the same request from it. The added lines may push a head that was near
    // the limits over them: those are the client's limits, not the server's.
    let mut again_limits = *limits;
    if new.len() > again_limits.max_request_head_bytes {
        again_limits.max_request_head_bytes = new.len();
    }
    if lines.len() > again_limits.max_request_headers {
        again_limits.max_request_headers = MOST_REQUEST_HEADERS;
    }
    let again = match request::parse(new, &again_limits) {
        Ok(again) => again,
        Err(e) => panic!("rewritten head refused ({e:?}): {shown}"),
    };
    assert_eq!(again.len, new.len(), "{shown}");
    assert_eq!(again.method, head.method, "{shown}");
    assert_eq!(again.version, http::Version::HTTP_11, "{shown}");
    let (want_path, want_host) = match head.form {
        Target::Absolute { authority, path } => {
            let path = path.get(buf);
            let path = if path.first() == Some(&b'/') {
                path.to_vec()
            } else {
                [&b"/"[..], path].concat()
            };
            (path, Some(authority.get(buf)))
        }
        // An HTTP/1.0 request without `Host` goes on with an empty one (RFC 9112 §3.2).
        _ => (
            head.path_and_query(buf).to_vec(),
            Some(head.host.map_or(&b""[..], |h| h.get(buf))),
        ),
    };
    assert_eq!(again.path_and_query(new), &want_path[..], "{shown}");
    let want_form = match head.form {
        Target::Absolute { .. } => Target::Origin,
        form => form,
    };
    assert_eq!(again.form, want_form, "{shown}");
    assert_eq!(again.host.map(|h| h.get(new)), want_host, "{shown}");
    assert_eq!(again.framing, head.framing, "{shown}");
    assert_eq!(again.websocket, head.websocket, "{shown}");
}
