//! `X-Request-Id` and W3C `traceparent` through the real daemon, seen by a backend that echoes
//! the headers it received: ids kept, generated, replaced when invalid, passed upstream as exactly
//! one line and returned to the client (also on Fulcrum's own answers), for HTTP/1.1 and h2.

mod support;

use std::collections::HashSet;

use http::{Method, Request, StatusCode};
use support::client::{empty, get};
use support::{Behaviour, Daemon, H1Client, H2Client, HttpBackend};

/// `web` (tracing off) and `traced` (tracing on) over one echoing backend; `dead` over a server
/// that is down (503); `gone` over a server nothing listens on (502).
const CONFIG: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[listeners.traced]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
tracing = true

[listeners.dead]
bind = "127.0.0.1:0"
mode = "http"
upstream = "none"

[listeners.gone]
bind = "127.0.0.1:0"
mode = "http"
upstream = "refused"

[upstreams.app]
servers = [{ address = "${APP}" }]

[upstreams.none]
servers = [{ address = "${APP}", down = true }]

[upstreams.refused]
retries = 0
servers = [{ address = "${REFUSED}" }]
"#;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn start() -> (Daemon, HttpBackend) {
    let app = HttpBackend::start("app", Behaviour::EchoRequest).await;
    let daemon = Daemon::builder(CONFIG)
        .var("APP", app.addr())
        .var("REFUSED", support::refused_addr())
        .start()
        .await;
    (daemon, app)
}

/// Every value of header `name` the backend received, in order.
fn seen(reply: &support::Reply, name: &str) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.json()["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

fn with_headers(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> Request<support::client::ReqBody> {
    let mut req = get(addr, "/x");
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    req
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `value` is a valid version-00 traceparent with a sampled flag.
fn is_started_trace(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && hex(parts[1])
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].len() == 16
        && hex(parts[2])
        && parts[2].bytes().any(|b| b != b'0')
        && parts[3] == "01"
}

#[tokio::test]
async fn a_client_request_id_is_kept_passed_once_and_returned() {
    let (daemon, _app) = start().await;
    let addr = daemon.addr("web");
    let mut client = H1Client::connect(addr).await;
    let reply = client
        .send(with_headers(
            addr,
            &[("x-request-id", "abc-123"), ("x-request-id", "second")],
        ))
        .await;
    assert_eq!(seen(&reply, "x-request-id"), ["abc-123"]);
    assert_eq!(reply.header("x-request-id"), Some("abc-123"));
    assert_eq!(reply.headers.get_all("x-request-id").iter().count(), 1);
}

#[tokio::test]
async fn a_request_without_an_id_gets_a_new_one_each_time() {
    let (daemon, _app) = start().await;
    let addr = daemon.addr("web");
    let mut client = H1Client::connect(addr).await;
    let mut ids = HashSet::new();
    const N: usize = 50;
    for _ in 0..N {
        let reply = client.get("/x").await;
        let upstream = seen(&reply, "x-request-id");
        assert_eq!(upstream.len(), 1, "{upstream:?}");
        assert!(is_generated_id(&upstream[0]), "{upstream:?}");
        assert_eq!(reply.header("x-request-id"), Some(upstream[0].as_str()));
        ids.insert(upstream[0].clone());
    }
    assert_eq!(ids.len(), N, "ids repeat");
}

#[tokio::test]
async fn an_invalid_request_id_is_replaced() {
    let (daemon, _app) = start().await;
    let addr = daemon.addr("web");
    let mut client = H1Client::connect(addr).await;
    let long = "a".repeat(201);
    let longest = "b".repeat(200);
    for bad in [long.as_str(), "has space", "caf\u{e9}"] {
        let reply = client
            .send(with_headers(addr, &[("x-request-id", bad)]))
            .await;
        let upstream = seen(&reply, "x-request-id");
        assert_eq!(upstream.len(), 1, "{bad}: {upstream:?}");
        assert!(is_generated_id(&upstream[0]), "{bad}: {upstream:?}");
        assert_eq!(reply.header("x-request-id"), Some(upstream[0].as_str()));
    }
    let reply = client
        .send(with_headers(addr, &[("x-request-id", &longest)]))
        .await;
    assert_eq!(seen(&reply, "x-request-id"), [longest]);
}

#[tokio::test]
async fn fulcrums_own_answers_carry_the_request_id() {
    let (daemon, app) = start().await;
    for (listener, status) in [("dead", 503), ("gone", 502)] {
        let addr = daemon.addr(listener);
        let mut client = H1Client::connect(addr).await;
        let reply = client
            .send(with_headers(addr, &[("x-request-id", "mine")]))
            .await;
        assert_eq!(reply.status.as_u16(), status, "{reply:?}");
        assert_eq!(reply.header("x-request-id"), Some("mine"), "{listener}");
        let reply = client.get("/x").await;
        assert_eq!(reply.status.as_u16(), status);
        assert!(
            is_generated_id(reply.header("x-request-id").unwrap()),
            "{reply:?}"
        );
        let mut h2 = H2Client::connect(addr).await;
        let reply = h2.send(get_h2(addr, &[("x-request-id", "h2-mine")])).await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(
            reply.header("x-request-id"),
            Some("h2-mine"),
            "{listener} over h2"
        );
    }
    // A 405 for CONNECT answers a parsed head too.
    let addr = daemon.addr("web");
    let mut client = H1Client::connect(addr).await;
    let mut connect = Request::builder()
        .method(Method::CONNECT)
        .uri(app.addr().to_string())
        .header("host", app.addr().to_string())
        .body(empty())
        .unwrap();
    connect
        .headers_mut()
        .insert("x-request-id", "c-1".parse().unwrap());
    let reply = client.send(connect).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("x-request-id"), Some("c-1"));
}

fn get_h2(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
) -> Request<support::client::ReqBody> {
    let mut req = Request::builder()
        .uri(format!("http://{addr}/x"))
        .body(empty())
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    req
}

#[tokio::test]
async fn h2_requests_get_and_keep_ids_too() {
    let (daemon, _app) = start().await;
    let addr = daemon.addr("traced");
    let mut h2 = H2Client::connect(addr).await;
    let reply = h2
        .send(get_h2(
            addr,
            &[("x-request-id", "h2-1"), ("traceparent", TRACEPARENT)],
        ))
        .await;
    assert_eq!(seen(&reply, "x-request-id"), ["h2-1"]);
    assert_eq!(reply.header("x-request-id"), Some("h2-1"));
    assert_eq!(seen(&reply, "traceparent"), [TRACEPARENT]);
    let reply = h2.send(get_h2(addr, &[])).await;
    let ids = seen(&reply, "x-request-id");
    assert_eq!(ids.len(), 1);
    assert!(is_generated_id(&ids[0]), "{ids:?}");
    assert_eq!(reply.header("x-request-id"), Some(ids[0].as_str()));
    let traces = seen(&reply, "traceparent");
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert!(is_started_trace(&traces[0]), "{traces:?}");
    let reply = h2.send(get_h2(addr, &[("traceparent", "garbage")])).await;
    let traces = seen(&reply, "traceparent");
    assert_eq!(traces.len(), 1, "an invalid one is replaced: {traces:?}");
    assert!(is_started_trace(&traces[0]), "{traces:?}");
}

#[tokio::test]
async fn a_valid_traceparent_passes_unchanged_with_its_tracestate() {
    let (daemon, _app) = start().await;
    for listener in ["web", "traced"] {
        let addr = daemon.addr(listener);
        let mut client = H1Client::connect(addr).await;
        let reply = client
            .send(with_headers(
                addr,
                &[
                    ("traceparent", TRACEPARENT),
                    ("tracestate", "congo=t61rcWkgMzE"),
                ],
            ))
            .await;
        assert_eq!(seen(&reply, "traceparent"), [TRACEPARENT], "{listener}");
        assert_eq!(
            seen(&reply, "tracestate"),
            ["congo=t61rcWkgMzE"],
            "{listener}"
        );
    }
}

#[tokio::test]
async fn a_trace_is_started_only_with_tracing() {
    let (daemon, _app) = start().await;
    let addr = daemon.addr("web");
    let mut client = H1Client::connect(addr).await;
    assert!(seen(&client.get("/x").await, "traceparent").is_empty());

    let addr = daemon.addr("traced");
    let mut client = H1Client::connect(addr).await;
    let mut traces = HashSet::new();
    for _ in 0..10 {
        let got = seen(&client.get("/x").await, "traceparent");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(is_started_trace(&got[0]), "{got:?}");
        traces.insert(got[0].clone());
    }
    assert_eq!(traces.len(), 10, "every request starts its own trace");
}

#[tokio::test]
async fn an_invalid_traceparent_is_replaced_only_with_tracing() {
    let (daemon, _app) = start().await;
    let invalid = [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
    ];
    for bad in invalid {
        let addr = daemon.addr("web");
        let mut client = H1Client::connect(addr).await;
        let reply = client
            .send(with_headers(
                addr,
                &[("traceparent", bad), ("tracestate", "k=v")],
            ))
            .await;
        assert_eq!(
            seen(&reply, "traceparent"),
            [bad],
            "passed as sent without tracing"
        );

        let addr = daemon.addr("traced");
        let mut client = H1Client::connect(addr).await;
        let reply = client
            .send(with_headers(
                addr,
                &[("traceparent", bad), ("tracestate", "k=v")],
            ))
            .await;
        let got = seen(&reply, "traceparent");
        assert_eq!(got.len(), 1, "{bad}: {got:?}");
        assert!(is_started_trace(&got[0]), "{bad}: {got:?}");
        assert_eq!(seen(&reply, "tracestate"), ["k=v"]);
    }
}
