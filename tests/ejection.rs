//! Passive ejection and retries through the real daemon: servers that answer 500, hang, reset or
//! die under load (CONTRACT.md "Health and ejection", "Retries", "Health, ejection, retries").

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use support::admin::{metric_sum, metrics, server_status, wait_for_state};
use support::client::{self, assert_own_error, echo_roundtrip, get_once, H1Client};
use support::raw::{Closing, ClosingTcpBackend};
use support::{within, Behaviour, Daemon, EchoMode, HttpBackend, TcpEchoBackend, WEB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn start(upstream: &str, backends: &[&HttpBackend]) -> Daemon {
    let mut servers = String::from("servers = [");
    for i in 0..backends.len() {
        servers.push_str(&format!(" {{ address = \"${{S{i}}}\" }},"));
    }
    servers.push_str(" ]\n");
    let config = format!("{WEB}\n[upstreams.app]\n{servers}{upstream}");
    let mut builder = Daemon::builder(&config);
    for (i, b) in backends.iter().enumerate() {
        builder = builder.var(&format!("S{i}"), b.addr());
    }
    builder.start().await
}

/// Sends sequential GETs until `until` holds (at most `max`); returns the status codes.
async fn gets_until(web: SocketAddr, max: usize, mut until: impl FnMut() -> bool) -> Vec<u16> {
    let mut codes = Vec::new();
    while !until() {
        assert!(
            codes.len() < max,
            "condition not met after {max} requests: {codes:?}"
        );
        codes.push(get_once(web, "/").await.status.as_u16());
    }
    codes
}

fn count(codes: &[u16], code: u16) -> usize {
    codes.iter().filter(|&&c| c == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_500_is_ejected_after_exactly_the_threshold_and_for_longer_each_time() {
    let bad = HttpBackend::start("bad", Behaviour::Status(500)).await;
    let good = HttpBackend::start("good", Behaviour::Identity).await;
    let d = start(
        r#"retries = 0
[upstreams.app.ejection]
consecutive_failures = 3
base_time = "1s"
max_time = "10s"
"#,
        &[&bad, &good],
    )
    .await;
    let (web, admin) = (d.addr("web"), d.admin_addr());
    let mut lengths = Vec::new();
    for round in 1..=2u32 {
        // Round robin alternates, so the bad server sees its third request within six.
        let before = bad.requests();
        let codes = gets_until(web, 20, || bad.requests() == before + 3).await;
        let ejected_at = Instant::now();
        assert_eq!(
            count(&codes, 500),
            3,
            "round {round}: the client saw each failure: {codes:?}"
        );
        wait_for_state(admin, "app", bad.addr(), "ejected", Duration::from_secs(5)).await;
        // While ejected, every request goes to the good server.
        for _ in 0..10 {
            let r = get_once(web, "/").await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.backend(), "good");
        }
        assert_eq!(
            bad.requests(),
            before + 3,
            "round {round}: exactly 3 failures eject"
        );
        wait_for_state(admin, "app", bad.addr(), "up", Duration::from_secs(20)).await;
        lengths.push(ejected_at.elapsed());
    }
    println!("ejection lengths seen (base_time 1s): {lengths:?}");
    assert!(
        lengths[0] >= Duration::from_millis(900) && lengths[0] < Duration::from_secs(10),
        "the first ejection lasts base_time: {lengths:?}"
    );
    assert!(
        lengths[1] >= Duration::from_millis(1900),
        "the second lasts twice base_time: {lengths:?}"
    );
    let text = metrics(admin).await;
    let server = bad.addr().to_string();
    assert_eq!(
        metric_sum(
            &text,
            "fulcrum_server_ejections_total",
            &[("server", &server)]
        ),
        2.0
    );
    let log = d.stderr_text();
    assert!(
        log.contains("reason=\"3 consecutive failures (last: status 500); ejected for 1s\""),
        "{log}"
    );
    assert!(log.contains("ejected for 2s"), "{log}");
    assert!(
        log.contains("from=\"ejected\" to=\"up\" reason=\"ejection ended\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_on_5xx_the_client_sees_no_503() {
    let bad = HttpBackend::start("bad", Behaviour::Status(503)).await;
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = start("retry_on = [\"5xx\"]\n", &[&bad, &a, &b]).await;
    let web = d.addr("web");
    for i in 0..60 {
        let r = get_once(web, "/").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        assert_ne!(r.backend(), "bad");
    }
    assert!(
        bad.requests() >= 5,
        "the bad server was tried until ejected"
    );
    let text = metrics(d.admin_addr()).await;
    assert_eq!(
        metric_sum(&text, "fulcrum_retries_total", &[("upstream", "app")]),
        bad.requests() as f64,
        "each 503 was retried exactly once"
    );
    assert_eq!(a.requests() + b.requests(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_attempt_fails_the_client_gets_the_last_servers_answer() {
    let all: Vec<HttpBackend> = backends(["x", "y", "z"], Behaviour::Status(503)).await;
    let d = start(
        "retry_on = [\"5xx\"]\n[upstreams.app.ejection]\nconsecutive_failures = 0\n",
        &all.iter().collect::<Vec<_>>(),
    )
    .await;
    let web = d.addr("web");
    for i in 0..5 {
        let r = get_once(web, "/").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
        assert!(
            r.header("x-backend").is_some(),
            "request {i}: the server's own 503, not Fulcrum's: {r:?}"
        );
    }
    let attempts: usize = all.iter().map(HttpBackend::requests).sum();
    assert_eq!(attempts, 15, "each request tried all three servers once");
}

async fn backends(names: [&str; 3], behaviour: Behaviour) -> Vec<HttpBackend> {
    let mut all = Vec::new();
    for name in names {
        all.push(HttpBackend::start(name, behaviour.clone()).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_when_every_server_fails() {
    let all = backends(["x", "y", "z"], Behaviour::Status(503)).await;
    let d = start(
        "retry_on = [\"5xx\"]\nretry_budget = 0.2\n[upstreams.app.ejection]\nconsecutive_failures = 0\n",
        &all.iter().collect::<Vec<_>>(),
    )
    .await;
    let web = d.addr("web");
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(
            get_once(web, "/").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let took = started.elapsed();
    let attempts: usize = all.iter().map(HttpBackend::requests).sum();
    println!("40 requests over three failing servers in {took:?}: {attempts} attempts");
    assert!(
        took < Duration::from_secs(9),
        "the test needs one 10 s window: {took:?}"
    );
    // 40 first attempts allow max(30, 0.2 × 40) = 30 retries in the window; without the budget
    // every request would make 3 attempts (120).
    assert_eq!(attempts, 40 + 30);
    let text = metrics(d.admin_addr()).await;
    assert_eq!(
        metric_sum(&text, "fulcrum_retries_total", &[("upstream", "app")]),
        30.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_server_gives_504_then_is_ejected_and_never_waited_on() {
    let hang = HttpBackend::start("hang", Behaviour::Hang).await;
    let good = HttpBackend::start("good", Behaviour::Identity).await;
    let d = start(
        r#"response_timeout = "300ms"
[upstreams.app.ejection]
consecutive_failures = 2
base_time = "60s"
"#,
        &[&hang, &good],
    )
    .await;
    let (web, admin) = (d.addr("web"), d.admin_addr());
    let detect = Instant::now();
    let codes = gets_until(web, 10, || hang.requests() == 2).await;
    assert_eq!(count(&codes, 504), 2, "{codes:?}");
    assert_eq!(count(&codes, 200), codes.len() - 2, "{codes:?}");
    wait_for_state(admin, "app", hang.addr(), "ejected", Duration::from_secs(5)).await;
    println!(
        "hang: 2 × 504, ejected {:?} after the first request",
        detect.elapsed()
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let r = get_once(web, "/").await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, StatusCode::OK);
    }
    println!("slowest of 20 requests after the ejection: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(300),
        "a request waited on the hung server"
    );
    assert_eq!(hang.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_on_timeout_a_hanging_server_costs_the_client_no_error() {
    let hang = HttpBackend::start("hang", Behaviour::Hang).await;
    let good = HttpBackend::start("good", Behaviour::Identity).await;
    let d = start(
        "response_timeout = \"200ms\"\nretry_on = [\"timeout\"]\n",
        &[&hang, &good],
    )
    .await;
    let web = d.addr("web");
    for i in 0..6 {
        let r = get_once(web, "/").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        assert_eq!(r.backend(), "good");
    }
    assert_eq!(
        hang.requests(),
        3,
        "round robin sent every other request there first"
    );
    // A POST is not idempotent: its timeout is the client's answer.
    let r = client::send_once(
        web,
        client::request(Method::POST, web, "/", client::full("x")),
    )
    .await;
    let r2 = client::send_once(
        web,
        client::request(Method::POST, web, "/", client::full("y")),
    )
    .await;
    let mut codes = [r.status.as_u16(), r2.status.as_u16()];
    codes.sort();
    assert_eq!(
        codes,
        [200, 504],
        "one POST met the hung server and was not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reset_mid_request_is_never_replayed() {
    let reset = HttpBackend::start("reset", Behaviour::Reset).await;
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = start("retry_on = [\"5xx\", \"timeout\"]\n", &[&reset, &a, &b]).await;
    let web = d.addr("web");
    // Round robin: the first request goes to the resetting server.
    let body = vec![b'p'; 200 * 1024];
    let r = client::send_once(
        web,
        client::request(Method::POST, web, "/", client::full(body)),
    )
    .await;
    assert_own_error(&r, 502);
    assert_eq!(reset.requests(), 1);
    assert_eq!(
        a.requests() + b.requests(),
        0,
        "the other servers received nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_percent_caps_how_many_servers_are_ejected() {
    let all = backends(["w", "x", "y"], Behaviour::Status(500)).await;
    let extra = HttpBackend::start("z", Behaviour::Status(500)).await;
    let mut servers: Vec<&HttpBackend> = all.iter().collect();
    servers.push(&extra);
    let d = start(
        "retries = 0\n[upstreams.app.ejection]\nconsecutive_failures = 2\nbase_time = \"60s\"\nmax_percent = 50\n",
        &servers,
    )
    .await;
    let (web, admin) = (d.addr("web"), d.admin_addr());
    let ejected = || async {
        let mut n = 0;
        for s in &servers {
            n += usize::from(server_status(admin, "app", s.addr()).await["state"] == "ejected");
        }
        n
    };
    let mut sent = 0;
    while ejected().await < 2 {
        assert!(sent < 100, "two servers were never ejected");
        get_once(web, "/").await;
        sent += 1;
    }
    for _ in 0..40 {
        assert_eq!(
            get_once(web, "/").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(
        ejected().await,
        2,
        "at most ⌊4 × 50 %⌋ servers are ejected at once"
    );
    assert!(d.stderr_text().contains("not ejected: max_percent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_under_load_fails_no_request() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let victim = HttpBackend::start("victim", Behaviour::Identity).await;
    let d = start("", &[&a, &b, &victim]).await;
    let (web, admin) = (d.addr("web"), d.admin_addr());
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let mut client = H1Client::connect(web).await;
                let mut failed = Vec::new();
                for _ in 0..100 {
                    let r = client.get("/").await;
                    if r.status != StatusCode::OK {
                        failed.push(r.status.as_u16());
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failed
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    victim.kill();
    let detected = wait_for_state(
        admin,
        "app",
        victim.addr(),
        "ejected",
        Duration::from_secs(10),
    )
    .await;
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.expect("client task"));
    }
    println!(
        "2,000 GETs from 20 clients, one server of three killed after 500: {} failed; ejected within {detected:?} of the kill",
        failed.len(),
    );
    assert_eq!(failed, Vec::<u16>::new(), "no client saw an error");
    assert_eq!(a.requests() + b.requests() + victim.requests(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_server_that_resets_before_its_first_byte_is_ejected() {
    let bad = ClosingTcpBackend::start(Closing::Reset).await;
    let echo = TcpEchoBackend::start(EchoMode::Stream).await;
    let config = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "app"

[upstreams.app]
servers = [ { address = "${BAD}" }, { address = "${ECHO}" } ]
[upstreams.app.ejection]
consecutive_failures = 3
base_time = "60s"
"#;
    let d = Daemon::builder(config)
        .var("BAD", bad.addr())
        .var("ECHO", echo.addr())
        .start()
        .await;
    let (l4, admin) = (d.addr("l4"), d.admin_addr());
    // Round robin alternates: sessions 0, 2, 4 meet the resetting server.
    let mut echoed = 0;
    for _ in 0..6 {
        let mut s = TcpStream::connect(l4).await.expect("connect");
        let _ = s.write_all(b"ping").await;
        let mut buf = [0u8; 4];
        if within(Duration::from_secs(5), "session", s.read_exact(&mut buf))
            .await
            .is_ok()
        {
            assert_eq!(&buf, b"ping");
            echoed += 1;
        }
    }
    // A reset that lands before the proxy's connect completes (set_nodelay sees it) counts as a
    // connect failure and the session moves to the echo server; either way it is one failure.
    assert_eq!(bad.accepts(), 3);
    assert!(echoed >= 3, "{echoed}");
    wait_for_state(admin, "app", bad.addr(), "ejected", Duration::from_secs(5)).await;
    for _ in 0..6 {
        let mut s = TcpStream::connect(l4).await.expect("connect");
        echo_roundtrip(&mut s, b"after").await;
    }
    assert_eq!(bad.accepts(), 3, "an ejected tcp server gets no session");
    let status = server_status(admin, "app", bad.addr()).await;
    assert_eq!(status["failures"], 3, "{status}");
    let echo_status = server_status(admin, "app", echo.addr()).await;
    assert_eq!(echo_status["failures"], 0, "{echo_status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_server_costs_concurrent_clients_nothing_with_retry_on_5xx() {
    let flappy = Arc::new(HttpBackend::start("flappy", Behaviour::Identity).await);
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = start(
        r#"retry_on = ["5xx"]
[upstreams.app.ejection]
consecutive_failures = 3
base_time = "200ms"
max_time = "1s"
"#,
        &[&flappy, &a, &b],
    )
    .await;
    let web = d.addr("web");
    // The server answers 503 for 150 ms, then 200 for 150 ms, and so on.
    let stop = Arc::new(AtomicUsize::new(0));
    let flapper = tokio::spawn({
        let (flappy, stop) = (Arc::clone(&flappy), Arc::clone(&stop));
        async move {
            let mut failing = true;
            while stop.load(Ordering::Relaxed) == 0 {
                flappy.set_behaviour(if failing {
                    Behaviour::Status(503)
                } else {
                    Behaviour::Identity
                });
                failing = !failing;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });
    let clients: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = H1Client::connect(web).await;
                let mut failed = Vec::new();
                for _ in 0..100 {
                    let r = client.get("/").await;
                    if r.status != StatusCode::OK {
                        failed.push(r.status.as_u16());
                    }
                    // Spread the requests over a few flaps.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(c.await.expect("client task"));
    }
    stop.store(1, Ordering::Relaxed);
    flapper.await.expect("flapper");
    let text = metrics(d.admin_addr()).await;
    let server = flappy.addr().to_string();
    let ejections = metric_sum(
        &text,
        "fulcrum_server_ejections_total",
        &[("server", &server)],
    );
    let retries = metric_sum(&text, "fulcrum_retries_total", &[("upstream", "app")]);
    println!(
        "flapping 503 server, 2,000 GETs from 20 clients: {} client errors, {ejections} ejections, {retries} retries, flappy saw {}",
        failed.len(),
        flappy.requests()
    );
    assert_eq!(failed, Vec::<u16>::new(), "no client saw an error");
    assert!(ejections >= 1.0, "the flapping server was never ejected");
    assert_eq!(
        a.requests() + b.requests() + flappy.requests(),
        2000 + retries as usize
    );
}

/// A server that answers 503 as soon as it has a request head, without reading the body, and keeps
/// the connection open.
async fn early_503() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                    .await;
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_before_the_body_is_read_replays_the_rest_as_the_client_sends_it() {
    let (early, heads) = early_503().await;
    let good = HttpBackend::start("good", Behaviour::EchoRequest).await;
    let config = format!(
        "{WEB}\n[upstreams.app]\nretry_on = [\"5xx\"]\nservers = [ {{ address = \"{early}\" }}, {{ address = \"{}\" }} ]\n",
        good.addr()
    );
    let d = Daemon::builder(&config).start().await;
    let mut s = TcpStream::connect(d.addr("web")).await.expect("connect");
    s.write_all(b"PUT /doc HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .expect("write");
    // A slow client: the rest of its body comes well after the first server has answered 503,
    // and after the time a retry would wait for a body still held by that server's connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"world").await.expect("write");
    let (head, rest) = within(
        Duration::from_secs(10),
        "response",
        client::read_head(&mut s),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = client::head_header(&head, "content-length")
        .unwrap()
        .parse()
        .unwrap();
    let mut body = rest;
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed early");
        body.extend_from_slice(&chunk[..n]);
    }
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["method"], "PUT");
    assert_eq!(
        json["body_len"], 10,
        "the replay carried what was sent before and after: {json}"
    );
    assert_eq!(heads.load(Ordering::SeqCst), 1);
}
