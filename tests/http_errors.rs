//! L7 failures: the status codes Fulcrum generates itself (502, 503, 504) and which failed
//! attempts are retried on another server.

mod support;

use std::time::Duration;
use tokio::time::Instant;

use http::{Method, StatusCode};
use support::client::{self, assert_own_error, get_once, H1Client};
use support::{refused_addr, Behaviour, Daemon, HttpBackend};

const WEB: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_give_502() {
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
connect_timeout = "1s"
retries = 2
servers = [ { address = "${R1}" }, { address = "${R2}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("R1", refused_addr())
        .var("R2", refused_addr())
        .start()
        .await;
    let mut client = H1Client::connect(d.addr("web")).await;
    for _ in 0..3 {
        let r = client.get("/").await;
        assert_own_error(&r, 502);
        // A 5xx does not close the client connection by itself; open a new one if it did.
        if client.is_closed() {
            client = H1Client::connect(d.addr("web")).await;
        }
    }
    let r = client::send_once(
        d.addr("web"),
        client::request(Method::POST, d.addr("web"), "/", client::full("payload")),
    )
    .await;
    assert_own_error(&r, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_server_gives_fast_503() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
servers = [ { address = "${A}", down = true }, { address = "${B}", down = true, backup = true } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", a.addr())
        .var("B", refused_addr())
        .start()
        .await;
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let r = get_once(d.addr("web"), "/").await;
        let took = started.elapsed();
        worst = worst.max(took);
        assert_own_error(&r, 503);
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }
    println!("503 with no eligible server: slowest of 5 (connect included) {worst:?}");
    assert!(worst < Duration::from_millis(100), "503 took {worst:?}");
    assert_eq!(a.accepts(), 0, "a down server was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_response_gives_504() {
    let slow = HttpBackend::start("slow", Behaviour::Slow(Duration::from_secs(5))).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
response_timeout = "200ms"
retries = 0
servers = [ { address = "${A}" } ]
"#
    );
    let d = Daemon::builder(&config).var("A", slow.addr()).start().await;
    let started = Instant::now();
    let r = get_once(d.addr("web"), "/").await;
    let took = started.elapsed();
    println!("504 after {took:?} (response_timeout 200ms)");
    assert_own_error(&r, 504);
    assert!(took < Duration::from_secs(2), "504 took {took:?}");
    assert_eq!(slow.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_server() {
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
connect_timeout = "1s"
retries = 1
servers = [ { address = "${DEAD}" }, { address = "${LIVE}" } ]
# Failing servers stay in rotation: this test is about retries, not ejection.
[upstreams.app.ejection]
consecutive_failures = 0
"#
    );
    let d = Daemon::builder(&config)
        .var("DEAD", refused_addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    let mut client = H1Client::connect(d.addr("web")).await;
    for i in 0..20 {
        // Nothing was sent on a refused connect, so any method may be retried.
        let req = if i % 2 == 0 {
            client::get(d.addr("web"), "/")
        } else {
            client::request(Method::POST, d.addr("web"), "/", client::full("post body"))
        };
        let r = client.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        assert_eq!(r.backend(), "live");
    }
    assert_eq!(live.requests(), 20);
}

/// A daemon over one server that closes every connection after reading a request head, and one
/// live server, with `retries = 1`.
async fn hang_up_daemon() -> (HttpBackend, HttpBackend, Daemon) {
    let dead = HttpBackend::start("dead", Behaviour::HangUp).await;
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 1
servers = [ { address = "${DEAD}" }, { address = "${LIVE}" } ]
# Failing servers stay in rotation: this test is about retries, not ejection.
[upstreams.app.ejection]
consecutive_failures = 0
"#
    );
    let d = Daemon::builder(&config)
        .var("DEAD", dead.addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    (dead, live, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_closed_before_response_is_retried_on_another_server() {
    let (dead, live, d) = hang_up_daemon().await;
    let web = d.addr("web");
    // Closed before any response byte, no body streamed: an idempotent request goes elsewhere.
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = get_once(web, "/").await;
        codes.push(r.status.as_u16());
        if r.status == StatusCode::OK {
            assert_eq!(r.backend(), "live");
        }
    }
    println!(
        "GET outcomes: {codes:?}; dead server saw {} request(s)",
        dead.requests()
    );
    assert_eq!(
        codes,
        vec![200; 10],
        "GETs the dead server dropped were not retried"
    );
    // Round robin over [dead, live]: GETs 0, 2, 4, 6, 8 try the dead server first, once each (it
    // is never tried twice for one request), then the live one.
    assert_eq!(
        dead.requests(),
        5,
        "the dead server should see exactly the 5 GETs round robin gave it first"
    );
    assert_eq!(live.requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_never_sent_to_a_second_server() {
    let (dead, live, d) = hang_up_daemon().await;
    let web = d.addr("web");
    // Once its bytes were written to a server, a non-idempotent request is not replayed.
    let mut codes = Vec::new();
    for i in 0..10 {
        let req = client::request(Method::POST, web, "/", client::full(format!("post {i}")));
        let r = client::send_once(web, req).await;
        match r.status.as_u16() {
            200 => assert_eq!(r.backend(), "live"),
            502 => assert_own_error(&r, 502),
            other => panic!("POST {i}: unexpected {other}: {r:?}"),
        }
        codes.push(r.status.as_u16());
    }
    println!("POST outcomes: {codes:?}");
    // Round robin over [dead, live]: POSTs 0, 2, 4, 6, 8 go to the dead server and become 502s;
    // 1, 3, 5, 7, 9 go to the live one.
    let expected: Vec<u16> = (0..10)
        .map(|i| if i % 2 == 0 { 502 } else { 200 })
        .collect();
    assert_eq!(
        codes, expected,
        "every POST the dead server took becomes a 502, the others reach the live server"
    );
    assert_eq!(
        (dead.requests(), live.requests()),
        (5, 5),
        "each POST reaches exactly one server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 1
servers = [ { address = "${R1}" }, { address = "${R2}" }, { address = "${R3}" }, { address = "${LIVE}" } ]
# Failing servers stay in rotation: this test is about retries, not ejection.
[upstreams.app.ejection]
consecutive_failures = 0
"#
    );
    let d = Daemon::builder(&config)
        .var("R1", refused_addr())
        .var("R2", refused_addr())
        .var("R3", refused_addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    let mut codes = Vec::new();
    for _ in 0..20 {
        let r = get_once(d.addr("web"), "/").await;
        match r.status.as_u16() {
            200 => assert_eq!(r.backend(), "live"),
            502 => assert_own_error(&r, 502),
            other => panic!("unexpected {other}: {r:?}"),
        }
        codes.push(r.status.as_u16());
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    println!("retries = 1 over 3 refused + 1 live: {codes:?}");
    // Round robin over [R1, R2, R3, LIVE]: the first candidate follows the cycle, the one retry
    // takes the next server in tier order. Per cycle of four requests: R1 then R2 (502), R2 then
    // R3 (502), R3 then LIVE (200), LIVE (200). A third attempt would turn the second into a 200.
    let expected: Vec<u16> = (0..20).map(|i| if i % 4 < 2 { 502 } else { 200 }).collect();
    assert_eq!(
        codes, expected,
        "retries = 1 must give exactly two attempts per request, in round-robin order"
    );
    assert_eq!((ok, live.requests()), (10, 10));
}

/// A daemon over one server that resets every connection after reading the request (head, and
/// the body bytes sent with it), and one live server, with `retries = 1`.
async fn reset_daemon() -> (HttpBackend, HttpBackend, Daemon) {
    let reset = HttpBackend::start("reset", Behaviour::Reset).await;
    let live = HttpBackend::start("live", Behaviour::EchoRequest).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 1
servers = [ { address = "${RESET}" }, { address = "${LIVE}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("RESET", reset.addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    (reset, live, d)
}

/// Sends `req` on a new client connection; returns the status, and the method the live server
/// saw when it answered.
async fn outcome(web: std::net::SocketAddr, req: http::Request<client::ReqBody>) -> (u16, String) {
    let what = format!("{} {}", req.method(), req.uri());
    let r = client::send_once(web, req).await;
    match r.status.as_u16() {
        200 => {
            assert_eq!(r.backend(), "live", "{what}");
            (200, r.json()["method"].as_str().unwrap_or("?").to_string())
        }
        502 => {
            assert_own_error(&r, 502);
            (502, String::new())
        }
        other => panic!("{what}: unexpected {other}: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_post_reset_by_the_server_is_never_replayed() {
    let (reset, live, d) = reset_daemon().await;
    let web = d.addr("web");
    // Round robin over [reset, live]: requests 0, 2, 4 go to the reset server first, 1, 3 to the
    // live one. A bodiless PUT is idempotent and is replayed on the live server; a bodiless POST
    // is not idempotent: its head was written, so it is never sent to a second server.
    let post = || client::request(Method::POST, web, "/", client::empty());
    let put = || client::request(Method::PUT, web, "/", client::empty());
    let get = || client::get(web, "/");
    let mut seen = Vec::new();
    for req in [post(), get(), put(), get(), post()] {
        seen.push(outcome(web, req).await);
    }
    println!("[reset, live] outcomes: {seen:?}");
    let seen: Vec<(u16, &str)> = seen.iter().map(|(c, m)| (*c, m.as_str())).collect();
    assert_eq!(
        seen,
        vec![
            (502, ""),
            (200, "GET"),
            (200, "PUT"),
            (200, "GET"),
            (502, "")
        ],
        "a bodiless POST the server reset must give 502 (the bodiless PUT is the replayed control)"
    );
    assert_eq!(
        reset.requests(),
        3,
        "POST, PUT, POST each reached the reset server once"
    );
    assert_eq!(
        live.requests(),
        3,
        "the live server saw the GETs and the replayed PUT, never a POST"
    );
}

/// An idempotent request with a body is replayed from the 64 KiB copy kept while it streamed
/// (CONTRACT.md "Retries"): the live server gets the whole body. A body longer than the copy
/// cannot be replayed once it has been streamed: 502, and the live server never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_body_reset_by_the_server_is_replayed_from_the_copy() {
    let (reset, live, d) = reset_daemon().await;
    let web = d.addr("web");
    let mut seen = Vec::new();
    for i in 0..3 {
        // Even requests go to the reset server first, odd ones to the live one.
        let body = format!("put {i} ").repeat(1000 * (i + 1));
        let r = client::send_once(
            web,
            client::request(Method::PUT, web, "/", client::full(body.clone())),
        )
        .await;
        assert_eq!(r.status.as_u16(), 200, "PUT {i}: {r:?}");
        assert_eq!(r.backend(), "live");
        assert_eq!(r.json()["method"], "PUT");
        assert_eq!(
            r.json()["body_len"],
            body.len() as u64,
            "PUT {i} arrived whole"
        );
        seen.push(outcome(web, client::get(web, "/")).await);
    }
    assert_eq!(
        reset.requests(),
        3,
        "each PUT reached the reset server first"
    );
    assert_eq!(
        live.requests(),
        6,
        "the live server got the three replayed PUTs and three GETs"
    );

    let big = vec![b'x'; 1024 * 1024];
    let r = client::send_once(
        web,
        client::request(Method::PUT, web, "/", client::full(big)),
    )
    .await;
    assert_own_error(&r, 502);
    assert_eq!(reset.requests(), 4);
    assert_eq!(
        live.requests(),
        6,
        "a body past the replay copy is never sent twice"
    );
}
