//! L7 failure paths against misbehaving servers: connects that hang, pooled connections the server
//! has closed, garbage and truncated responses, and a server that dies mid-run (CONTRACT.md,
//! "Retries" and "Errors"; `src/proxy/http/forward.rs`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

use http::{Method, StatusCode};
use support::admin::server_status;
use support::client::{self, assert_own_error, get_once, head_header, read_head, H1Client};
use support::raw::{HangingAddr, RawHttpBackend, RawReply, Then};
use support::{eventually, within, Behaviour, Daemon, HttpBackend, WEB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `failures` count `/status` shows for a server once it reads `expected` (polled, bounded), or
/// the last value read.
async fn failures_settled(
    admin: SocketAddr,
    upstream: &str,
    address: SocketAddr,
    expected: u64,
) -> u64 {
    let mut last = 0;
    for _ in 0..100 {
        let s = server_status(admin, upstream, address).await;
        last = s["failures"]
            .as_u64()
            .unwrap_or_else(|| panic!("no failures count: {s}"));
        if last == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_moves_to_the_next_server() {
    let hanging = tokio::task::spawn_blocking(HangingAddr::bind)
        .await
        .expect("hanging address");
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[listeners.lone]
bind = "127.0.0.1:0"
mode = "http"
upstream = "hang"

[upstreams.app]
connect_timeout = "300ms"
retries = 1
servers = [ { address = "${HANG}" }, { address = "${LIVE}" } ]

[upstreams.hang]
connect_timeout = "300ms"
retries = 1
servers = [ { address = "${HANG}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("HANG", hanging.addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    let connect_timeout = Duration::from_millis(300);
    let ceiling = Duration::from_secs(3);

    let mut client = H1Client::connect(d.addr("web")).await;
    let mut took = Vec::new();
    for i in 0..6 {
        let started = Instant::now();
        let r = client.get("/").await;
        took.push(started.elapsed());
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        assert_eq!(r.backend(), "live", "request {i}");
    }
    println!("[hanging, live] with connect_timeout 300ms: {took:?}");
    let slow: Vec<bool> = took.iter().map(|t| *t >= connect_timeout).collect();
    // Round robin over [hanging, live]: requests 0, 2, 4 try the hanging one first and cannot be
    // answered before its connect times out; 1, 3, 5 go straight to the live one.
    assert_eq!(
        slow,
        [true, false].repeat(3),
        "which requests waited out the 300ms connect timeout: {took:?}"
    );
    let worst = took.iter().max().copied().unwrap_or_default();
    assert!(worst < ceiling, "a request took {worst:?}");
    assert_eq!(live.requests(), 6);
    let admin = d.admin_addr();
    let failures = failures_settled(admin, "app", hanging.addr(), 3).await;
    assert_eq!(failures, 3, "timed-out connects counted as failures");

    // With nothing else to try: 502 once the connect times out.
    let started = Instant::now();
    let r = get_once(d.addr("lone"), "/").await;
    let took = started.elapsed();
    println!("[hanging] alone: {} after {took:?}", r.status);
    assert_own_error(&r, 502);
    assert!(
        took >= connect_timeout,
        "502 before the connect timed out: {took:?}"
    );
    assert!(took < ceiling, "502 took {took:?}");
    assert!(
        tokio::task::spawn_blocking(move || hanging.still_hangs())
            .await
            .expect("probe"),
        "the hanging address started accepting connects during the test"
    );
}

/// A server that answers each request with a keep-alive response (no `Connection: close`) and then
/// closes the connection 50 ms later: every pooled connection to it goes stale.
async fn one_shot_backend() -> RawHttpBackend {
    RawHttpBackend::start(|_| {
        RawReply::new(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::CloseAfter(Duration::from_millis(50)),
        )
    })
    .await
}

/// Sequential requests through one client connection, each sent once the server has closed the
/// connection the previous one used (so the daemon's pooled connection is stale): all must be
/// answered 200, each on a new server connection.
async fn stale_pooled_connections(method: Method) {
    let backend = one_shot_backend().await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 1
servers = [ { address = "${A}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", backend.addr())
        .start()
        .await;
    let web = d.addr("web");
    let mut client = H1Client::connect(web).await;
    let n = 8;
    for i in 0..n {
        let body = if method == Method::GET {
            client::empty()
        } else {
            client::full(format!("body of request {i}"))
        };
        let r = client
            .send(client::request(method.clone(), web, "/", body))
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{method} {i} after the server closed the pooled connection: {r:?}"
        );
        assert_eq!(r.text(), "ok", "{method} {i}");
        assert!(
            eventually(Duration::from_secs(5), || backend.closed() > i).await,
            "the server did not close connection {i}"
        );
    }
    assert_eq!(backend.requests(), n, "{method}: requests the server read");
    assert_eq!(
        backend.accepts(),
        n,
        "{method}: one server connection per request"
    );
    let failures = failures_settled(d.admin_addr(), "app", backend.addr(), 0).await;
    assert_eq!(
        failures, 0,
        "a stale pooled connection is not a server fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_for_get() {
    stale_pooled_connections(Method::GET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_for_post() {
    stale_pooled_connections(Method::POST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_response_gives_502_and_is_not_retried() {
    let garbage =
        RawHttpBackend::start(|_| RawReply::new("NOT HTTP AT ALL\r\n\r\n", Then::KeepAlive)).await;
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 1
servers = [ { address = "${GARBAGE}" }, { address = "${LIVE}" } ]
# Failing servers stay in rotation: this test is about retries, not ejection.
[upstreams.app.ejection]
consecutive_failures = 0
"#
    );
    let d = Daemon::builder(&config)
        .var("GARBAGE", garbage.addr())
        .var("LIVE", live.addr())
        .start()
        .await;
    let web = d.addr("web");
    let mut client = H1Client::connect(web).await;
    let mut outcomes = Vec::new();
    let mut reconnects = 0;
    // POSTs first, then GETs: response bytes came back, so neither is retried (CONTRACT.md retries
    // only a connect failure, or a close/reset before any response byte).
    for i in 0..12 {
        let method = if i < 6 { Method::POST } else { Method::GET };
        let body = if method == Method::POST {
            client::full(format!("post {i}"))
        } else {
            client::empty()
        };
        let r = client
            .send(client::request(method.clone(), web, "/", body))
            .await;
        match r.status.as_u16() {
            200 => assert_eq!(r.backend(), "live", "{method} {i}"),
            502 => assert_own_error(&r, 502),
            other => panic!("{method} {i}: unexpected {other}: {r:?}"),
        }
        outcomes.push((method.to_string(), r.status.as_u16()));
        // The client connection stays usable (the next request goes on it), unless the daemon said
        // it would close it.
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            reconnects += 1;
            client = H1Client::connect(web).await;
        }
    }
    println!("outcomes: {outcomes:?}; client reconnects after `Connection: close`: {reconnects}");
    // Round robin over [garbage, live]: requests 0, 2, 4 (POST) and 6, 8, 10 (GET) go to the
    // garbage server and become 502s; the odd ones reach the live server.
    let codes: Vec<u16> = outcomes.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        codes,
        [502, 200].repeat(6),
        "every request the garbage server took becomes a 502, and only those: {outcomes:?}"
    );
    assert_eq!(
        (garbage.requests(), live.requests()),
        (6, 6),
        "each request reaches exactly one server"
    );
    let failures = failures_settled(d.admin_addr(), "app", garbage.addr(), 6).await;
    assert_eq!(
        failures, 6,
        "each garbage response counts as a failure of that server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_response_body_is_not_passed_off_as_complete() {
    let backend = RawHttpBackend::start(|req| {
        if req.path == "/trunc" {
            RawReply::new(
                "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789",
                Then::Close,
            )
        } else {
            RawReply::new(
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                Then::KeepAlive,
            )
        }
    })
    .await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 1
servers = [ { address = "${A}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", backend.addr())
        .start()
        .await;
    let web = d.addr("web");
    let ceiling = Duration::from_secs(5);

    // Raw client: the 200 head, the 10 bytes, then the end of the connection instead of 990 more.
    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(b"GET /trunc HTTP/1.1\r\nhost: trunc.example\r\n\r\n")
        .await
        .expect("write request");
    let (head, mut body) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = Instant::now();
    let mut chunk = [0u8; 4096];
    let ended = within(ceiling, "the truncated body to end", async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => return "EOF".to_string(),
                Ok(n) => body.extend_from_slice(&chunk[..n]),
                Err(e) => return format!("error: {e}"),
            }
        }
    })
    .await;
    println!(
        "raw client: head {head:?}, then {} body byte(s) {:?}, then {ended} after {:?}",
        body.len(),
        String::from_utf8_lossy(&body),
        started.elapsed()
    );
    match head_header(&head, "content-length") {
        Some(len) => {
            assert_eq!(len, "1000", "{head}");
            assert_eq!(body, b"0123456789", "bytes after the head");
        }
        None => {
            // Re-framed as chunked: the terminating chunk must be missing.
            assert!(
                head_header(&head, "transfer-encoding").is_some(),
                "no framing: {head}"
            );
            let decoded = client::decode_chunked(&body);
            assert!(
                decoded.is_none(),
                "a truncated body ended cleanly: {decoded:?}"
            );
        }
    }

    // An HTTP client: the exchange fails instead of yielding a short body.
    let mut c = H1Client::connect(web).await;
    let result = within(
        ceiling,
        "GET /trunc",
        c.try_send(client::get(web, "/trunc")),
    )
    .await;
    println!("hyper client: {result:?}");
    assert!(
        result.is_err(),
        "a truncated body was delivered as complete: {result:?}"
    );

    // A fresh client connection still gets answers.
    let r = within(ceiling, "GET /ok", get_once(web, "/ok")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.text(), "ok");
    assert_eq!(backend.requests(), 3, "nothing was sent twice");
    let failures = failures_settled(d.admin_addr(), "app", backend.addr(), 2).await;
    assert_eq!(failures, 2, "each truncated response counts as a failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dying_mid_run_is_routed_around() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
connect_timeout = "1s"
retries = 1
servers = [ { address = "${A}" }, { address = "${B}" } ]
# Failing servers stay in rotation: this test is about retries, not ejection.
[upstreams.app.ejection]
consecutive_failures = 0
"#
    );
    let d = Daemon::builder(&config)
        .var("A", a.addr())
        .var("B", b.addr())
        .start()
        .await;
    let mut client = H1Client::connect(d.addr("web")).await;
    for i in 0..4 {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "warm-up {i}: {r:?}");
    }
    assert_eq!((a.requests(), b.requests()), (2, 2), "round robin warm-up");

    b.stop();
    let b_addr = b.addr();
    assert!(
        eventually(Duration::from_secs(5), || b.closed() >= b.accepts()).await,
        "b did not close its connections"
    );
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            b_addr
        )
        .is_err())
        .await,
        "b's port still accepts connections"
    );

    for i in 0..20 {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "request {i} after b died: {r:?}");
        assert_eq!(r.backend(), "a", "request {i}");
    }
    assert_eq!(a.requests(), 22);
    assert_eq!(b.requests(), 2);
    // The cursor stood at 4 after the warm-up: requests 1, 3, ..., 19 after b died tried b first,
    // each with one refused connect, then went to a.
    let b_failures = failures_settled(d.admin_addr(), "app", b_addr, 10).await;
    println!("b's failures after it died: {b_failures}");
    assert_eq!(
        b_failures, 10,
        "each of the 10 refused connects to b counts as one failure"
    );
}

/// A server that closes every keep-alive connection about 1 ms after answering, with requests
/// arriving back to back: requests regularly go out on a connection the server is closing. A GET
/// may be replayed, so it is resent once on a fresh connection to the same server (even with a
/// single server and no retries left), and the client never sees the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sent_on_a_connection_the_server_is_closing_is_resent_on_a_fresh_one() {
    let backend = RawHttpBackend::start(|_| {
        RawReply::new(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Then::CloseAfter(Duration::from_millis(1)),
        )
    })
    .await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
retries = 0
servers = [ { address = "${A}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", backend.addr())
        .start()
        .await;
    let web = d.addr("web");
    let mut client = H1Client::connect(web).await;
    for i in 0..200 {
        let r = client.get("/").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "GET {i}: {r:?}\n{}",
            d.stderr_text()
        );
    }
    let failures = failures_settled(d.admin_addr(), "app", backend.addr(), 0).await;
    assert_eq!(failures, 0, "the keep-alive race is not a server fault");
    eprintln!(
        "200 GETs used {} server connections for {} requests read",
        backend.accepts(),
        backend.requests()
    );
}
