use super::*;
use crate::config::HttpLimits;
use crate::proxy::h1::{request, response};
use crate::proxy::ids::{Ids, RequestId, Trace};

/// The request id the rewriting tests give every request.
const RID: &[u8] = b"rid-1";

fn ids() -> Ids {
    Ids {
        request_id: RequestId::keep_or_make(Some(RID)),
        trace: Trace::None,
    }
}

fn rewritten_with(text: &str, ids: &Ids) -> String {
    let head = request::parse(text.as_bytes(), &HttpLimits::default()).unwrap();
    let mut out = Out::new();
    request(&head, text.as_bytes(), "10.0.0.9", ids, &mut out);
    String::from_utf8(out.bytes().to_vec()).unwrap()
}

fn rewritten(text: &str) -> String {
    rewritten_with(text, &ids())
}

#[test]
fn a_request_keeps_end_to_end_fields_in_order() {
    let got = rewritten("GET /a?b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Kept: 1\r\n\r\n");
    assert_eq!(
        got,
        "GET /a?b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nX-Kept: 1\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n"
    );
}

#[test]
fn hop_by_hop_and_nominated_fields_are_dropped_but_not_host_or_forwarded() {
    let got = rewritten(concat!(
        "GET / HTTP/1.1\r\nHost: h\r\n",
        "Connection: keep-alive, X-Secret, Host, X-Forwarded-For, X-Forwarded-Host\r\n",
        "Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: x\r\n",
        "Proxy-Authorization: Basic a\r\nProxy-Authenticate: b\r\nUpgrade: h2c\r\n",
        "X-Secret: s\r\nX-Forwarded-Host: fh\r\nX-Forwarded-Proto: https\r\n\r\n",
    ));
    assert_eq!(
        got,
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: fh\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid-1\r\n\r\n"
    );
}

#[test]
fn every_forwarded_for_line_is_kept_on_one() {
    let got = rewritten("GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nHost: h\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\r\n");
    assert!(
        got.contains("\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n"),
        "{got}"
    );
    assert_eq!(got.matches("orwarded-For").count(), 1, "{got}");
}

#[test]
fn absolute_form_becomes_origin_form_with_its_authority_as_host() {
    let got = rewritten("GET http://svc:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n");
    assert!(
        got.starts_with("GET /x?y HTTP/1.1\r\nHost: svc:81\r\n"),
        "{got}"
    );
    assert_eq!(got.matches("Host:").count(), 1, "{got}");
    assert!(
        rewritten("GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n").starts_with("GET / HTTP/1.1\r\n")
    );
    assert!(
        rewritten("GET http://svc?q=1 HTTP/1.1\r\nHost: svc\r\n\r\n")
            .starts_with("GET /?q=1 HTTP/1.1\r\n")
    );
}

#[test]
fn framing_and_upgrade_are_written_by_the_proxy() {
    let chunked = rewritten("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(
        chunked.ends_with("Transfer-Encoding: chunked\r\n\r\n"),
        "{chunked}"
    );
    let length = rewritten("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n");
    assert!(length.contains("\r\nContent-Length: 3\r\n"), "{length}");
    let ws = rewritten("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n");
    assert!(
        ws.ends_with("Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        "{ws}"
    );
    assert!(ws.contains("Sec-WebSocket-Key: k\r\n"), "{ws}");
    let old = rewritten("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n");
    assert!(old.starts_with("GET / HTTP/1.1\r\nHost: \r\n"), "{old}");
    assert!(!old.to_ascii_lowercase().contains("expect"), "{old}");
    let with_host = rewritten("GET / HTTP/1.0\r\nHost: h\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(with_host.matches("Host:").count(), 1, "{with_host}");
    let expect11 = rewritten("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n");
    assert!(
        expect11.contains("\r\nExpect: 100-continue\r\n"),
        "{expect11}"
    );
}

fn response_for(text: &str, leg: ClientLeg) -> String {
    let head = response::parse(text.as_bytes(), false).unwrap().unwrap();
    let mut out = Out::new();
    response(&head, text.as_bytes(), leg, None, &mut out);
    String::from_utf8(out.bytes().to_vec()).unwrap()
}

const KEEP: ClientLeg = ClientLeg {
    chunked: false,
    close: false,
    keep_alive_10: false,
    websocket: false,
};

#[test]
fn a_response_loses_its_hop_by_hop_fields() {
    let got = response_for(
        "HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nProxy-Authenticate: Basic\r\nContent-Length: 2\r\nX-End: e\r\n\r\n",
        KEEP,
    );
    assert_eq!(
        got,
        "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nX-End: e\r\n\r\n"
    );
}

#[test]
fn the_client_leg_says_how_it_is_framed() {
    let chunked = response_for(
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n",
        ClientLeg {
            chunked: true,
            ..KEEP
        },
    );
    assert_eq!(
        chunked,
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let close = response_for(
        "HTTP/1.0 200 OK\r\n\r\n",
        ClientLeg {
            close: true,
            ..KEEP
        },
    );
    assert_eq!(close, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    let ka = response_for(
        "HTTP/1.1 204 No Content\r\n\r\n",
        ClientLeg {
            keep_alive_10: true,
            ..KEEP
        },
    );
    assert_eq!(
        ka,
        "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"
    );
    let ws = response_for(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\r\n",
        ClientLeg { websocket: true, ..KEEP },
    );
    assert_eq!(ws, "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
}

#[test]
fn connection_cannot_remove_the_content_length() {
    let got = rewritten(
        "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
    );
    assert!(got.contains("\r\nContent-Length: 5\r\n"), "{got}");
    let head = "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\n";
    let got = response_for(head, KEEP);
    assert!(got.contains("\r\nContent-Length: 5\r\n"), "{got}");
}

#[test]
fn a_status_line_without_a_reason_or_with_obs_text_is_written_without_one() {
    assert_eq!(
        response_for("HTTP/1.1 204\r\n\r\n", KEEP),
        "HTTP/1.1 204 \r\n\r\n"
    );
    let got = response_for(
        "HTTP/1.1 200 \u{e9}t\u{e9}\r\nContent-Length: 0\r\n\r\n",
        KEEP,
    );
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
}

#[test]
fn the_request_id_goes_on_as_exactly_one_line() {
    let got = rewritten("GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a\r\nx-request-id: b\r\n\r\n");
    assert_eq!(
        got.to_ascii_lowercase().matches("x-request-id").count(),
        1,
        "{got}"
    );
    assert!(got.contains("\r\nX-Request-Id: rid-1\r\n"), "{got}");
}

#[test]
fn a_traceparent_passes_unless_fulcrum_started_one() {
    let text = "GET / HTTP/1.1\r\nHost: h\r\ntraceparent: abc\r\ntracestate: k=v\r\n\r\n";
    let passed = rewritten(text);
    assert!(passed.contains("\r\ntraceparent: abc\r\n"), "{passed}");
    assert!(passed.contains("\r\ntracestate: k=v\r\n"), "{passed}");
    let started = Ids {
        request_id: RequestId::keep_or_make(Some(RID)),
        trace: Trace::of([&b"abc"[..]].into_iter(), true),
    };
    let header = std::str::from_utf8(started.trace.started().unwrap())
        .unwrap()
        .to_string();
    let got = rewritten_with(text, &started);
    assert_eq!(got.matches("traceparent").count(), 1, "{got}");
    assert!(
        got.contains(&format!("\r\ntraceparent: {header}\r\n")),
        "{got}"
    );
    assert!(got.contains("\r\ntracestate: k=v\r\n"), "{got}");
}

#[test]
fn a_response_carries_the_request_id_in_place_of_the_servers() {
    let text = "HTTP/1.1 200 OK\r\nX-Request-Id: server\r\nContent-Length: 0\r\n\r\n";
    let head = response::parse(text.as_bytes(), false).unwrap().unwrap();
    let mut out = Out::new();
    response(&head, text.as_bytes(), KEEP, Some(RID), &mut out);
    assert_eq!(
        std::str::from_utf8(out.bytes()).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Request-Id: rid-1\r\n\r\n"
    );
    assert!(
        response_for(text, KEEP).contains("X-Request-Id: server"),
        "interim heads keep it"
    );
}
