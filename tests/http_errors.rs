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
    assert!(
        dead.requests() >= 1,
        "round robin never picked the dead server first"
    );
    assert_eq!(
        codes,
        vec![200; 10],
        "GETs the dead server dropped were not retried"
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
    assert_eq!(
        dead.requests() + live.requests(),
        10,
        "each POST reaches exactly one server"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == 502).count(),
        dead.requests(),
        "every POST the dead server took becomes a 502"
    );
    assert!(
        codes.contains(&502),
        "round robin never picked the dead server for a POST"
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
"#
    );
    let d = Daemon::builder(&config)
        .var("R1", refused_addr())
        .var("R2", refused_addr())
        .var("R3", refused_addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    let (mut ok, mut bad) = (0, 0);
    for _ in 0..20 {
        let r = get_once(d.addr("web"), "/").await;
        match r.status.as_u16() {
            200 => ok += 1,
            502 => bad += 1,
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    println!("retries = 1 over 3 refused + 1 live: {ok} x 200, {bad} x 502");
    assert!(ok > 0, "the live server was never reached");
    assert!(
        bad > 0,
        "two attempts per request cannot always reach the one live server of four"
    );
    assert_eq!(live.requests(), ok);
}
