//! Any bytes given to the response-head parser: `response::parse` never panics, and what it
//! accepts is framed one way only: never both `Content-Length` and `Transfer-Encoding`, no body
//! for HEAD, 1xx, 204 and 304, a `Content-Length` or chunked body as declared, else until close.
//! Rewritten for the client (each client leg the engine can choose), a head parses again with the
//! same status and reason, the framing the leg says, and no hop-by-hop header of the server's.
//!
//! A response read two ways desynchronises the client's connection (response splitting).
//!
//! Input: the first byte holds flags (bit 0: the request was HEAD; bit 6: the rest is a recipe
//! for a head, see `common.rs`), the rest is the buffer a response head was read into.
#![no_main]

#[path = "common.rs"]
mod common;

use fulcrum::proxy::h1::fields::{content_length, tokens};
use fulcrum::proxy::h1::response::{
    self, BodyFraming, ResponseHead, MOST_RESPONSE_HEAD, MOST_RESPONSE_HEADERS,
};
use fulcrum::proxy::h1::rewrite::{self, ClientLeg, Out};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let built;
    let buf = if flags & 0x40 != 0 {
        built = common::response(rest);
        &built[..]
    } else {
        rest
    };
    let head_request = flags & 1 != 0;
    let head = match response::parse(buf, head_request) {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert!(
                buf.len() <= MOST_RESPONSE_HEAD,
                "an incomplete head over the limit"
            );
            return;
        }
        Err(_) => return,
    };
    assert!(head.len <= buf.len() && head.len <= MOST_RESPONSE_HEAD);
    assert!((100..=999).contains(&head.status));

    // The head alone parses the same: nothing after it was read into it.
    let alone = response::parse(&buf[..head.len], head_request)
        .expect("the head alone is accepted")
        .expect("and complete");
    assert_eq!((alone.len, alone.status), (head.len, head.status));
    assert_eq!(alone.framing, head.framing);

    check_framing(&head, &buf[..head.len], head_request);
    for leg in legs(&head) {
        check_rewrite(&head, buf, head_request, leg);
    }
});

/// The framing against the header lines as received (read here with httparse directly).
fn check_framing(head: &ResponseHead, buf: &[u8], head_request: bool) {
    let mut slots = vec![httparse::EMPTY_HEADER; MOST_RESPONSE_HEADERS];
    let mut raw = httparse::Response::new(&mut slots);
    assert!(matches!(raw.parse(buf), Ok(httparse::Status::Complete(_))));
    let named = |name: &str| {
        raw.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let lengths = named("content-length");
    let encodings = named("transfer-encoding");
    assert!(
        lengths.is_empty() || encodings.is_empty(),
        "Content-Length with Transfer-Encoding accepted"
    );
    assert!(encodings.len() <= 1);
    let length = lengths
        .first()
        .map(|v| content_length(v).expect("a valid length"));
    assert!(lengths.iter().all(|v| content_length(v) == length));

    let bodiless = head_request || head.status < 200 || head.status == 204 || head.status == 304;
    let want = match (bodiless, encodings.is_empty(), length) {
        (true, _, _) | (false, true, Some(0)) => BodyFraming::Empty,
        (false, false, _) => BodyFraming::Chunked,
        (false, true, Some(n)) => BodyFraming::Length(n),
        (false, true, None) => BodyFraming::UntilClose,
    };
    assert_eq!(head.framing, want, "status {}", head.status);
    if want == BodyFraming::UntilClose {
        assert!(
            head.close,
            "a body delimited by the close keeps the connection"
        );
    }
}

/// The client legs the engine may pick for this response: chunked only for a chunked body (or
/// not, for an HTTP/1.0 client), WebSocket only for a 101, and close, HTTP/1.0 keep-alive or
/// neither.
fn legs(head: &ResponseHead) -> Vec<ClientLeg> {
    let mut legs = Vec::new();
    for chunked in [false, head.framing == BodyFraming::Chunked] {
        for websocket in [false, head.status == 101] {
            for (close, keep_alive_10) in [(false, false), (true, false), (false, true)] {
                let leg = ClientLeg {
                    chunked,
                    close,
                    keep_alive_10,
                    websocket,
                };
                if !legs.contains(&leg) {
                    legs.push(leg);
                }
            }
        }
    }
    legs
}

/// The request id the client is given back on every rewritten response.
const REQUEST_ID: &[u8] = b"0123456789abcdef0123456789abcdef";

fn check_rewrite(head: &ResponseHead, buf: &[u8], head_request: bool, leg: ClientLeg) {
    let mut out = Out::new();
    rewrite::response(head, buf, leg, Some(REQUEST_ID), &mut out);
    let new = out.bytes();
    let shown = String::from_utf8_lossy(new);
    assert!(new.starts_with(b"HTTP/1.1 "), "{shown}");

    // A server head at the limits can go over them with the client leg's lines: those limits are
    // the proxy's reading a server, so there is nothing to compare then.
    let line_count = new.windows(2).filter(|w| *w == b"\r\n").count() - 2;
    if new.len() > MOST_RESPONSE_HEAD || line_count > MOST_RESPONSE_HEADERS {
        return;
    }
    let again = match response::parse(new, head_request) {
        Ok(Some(again)) => again,
        Ok(None) => panic!("rewritten head incomplete ({leg:?}): {shown}"),
        Err(e) => panic!("rewritten head refused ({e:?}, {leg:?}): {shown}"),
    };
    assert_eq!(again.len, new.len(), "{shown}");
    assert_eq!(again.status, head.status, "{shown}");
    assert_eq!(again.reason.get(new), head.reason.get(buf), "{shown}");
    assert!(!again.http10, "{shown}");
    let request_ids = common::values(&common::header_lines(new), "x-request-id");
    assert_eq!(request_ids, [REQUEST_ID], "the client gets its request id once: {shown}");

    // The framing the client reads is the leg's: chunked as said, else the server's length.
    let want = match head.framing {
        BodyFraming::Empty => BodyFraming::Empty,
        _ if leg.chunked => BodyFraming::Chunked,
        BodyFraming::Length(n) => BodyFraming::Length(n),
        BodyFraming::Chunked | BodyFraming::UntilClose => BodyFraming::UntilClose,
    };
    assert_eq!(again.framing, want, "{leg:?}: {shown}");
    if leg.close && !leg.websocket {
        assert!(again.close, "{shown}");
    }

    // No hop-by-hop or nominated header: Connection, Upgrade and Transfer-Encoding are the leg's.
    let connection = if leg.websocket {
        Some("upgrade")
    } else if leg.close {
        Some("close")
    } else if leg.keep_alive_10 {
        Some("keep-alive")
    } else {
        None
    };
    let nominated = head
        .fields
        .iter()
        .filter(|f| f.name.get(buf).eq_ignore_ascii_case(b"connection"))
        .flat_map(|f| tokens(f.value.get(buf)));
    common::check_hop_by_hop(
        &common::header_lines(new),
        nominated,
        connection,
        leg.websocket.then_some("websocket"),
        leg.chunked.then_some("chunked"),
        &shown,
    );
}
