//! Header rewriting on the L7 path: hop-by-hop headers removed both ways, `X-Forwarded-*` added,
//! `Host` kept; HTTP/2 (h2c) clients reach HTTP/1.1 backends with `Host` from `:authority`; request
//! framing that could smuggle a second request is refused.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use support::client::{self, raw_body, read_head, read_to_eof, H1Client, H2Client};
use support::{Behaviour, Daemon, HttpBackend};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const CONFIG: &str = r#"
[runtime]
worker_threads = 2

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;

/// The request as the `EchoRequest` backend saw it.
struct Seen(serde_json::Value);

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.0["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .filter(|kv| kv[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|kv| kv[1].as_str().unwrap())
            .collect()
    }

    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} seen {} times: {}",
            all.len(),
            self.0
        );
        all.first().copied()
    }
}

async fn echo_daemon() -> (HttpBackend, Daemon) {
    let echo = HttpBackend::start("echo", Behaviour::EchoRequest).await;
    let d = Daemon::builder(CONFIG).var("A", echo.addr()).start().await;
    (echo, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_hop_by_hop_headers_are_removed() {
    let (_echo, d) = echo_daemon().await;
    let req = Request::builder()
        .method(Method::GET)
        .uri("/hop?q=1")
        .header("host", "app.example:8080")
        .header(
            "connection",
            "keep-alive, X-Foo, Host, X-Forwarded-For, X-Forwarded-Proto",
        )
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("proxy-connection", "keep-alive")
        .header("x-foo", "nominated by Connection")
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-end-to-end", "kept")
        .body(client::empty())
        .unwrap();
    let r = client::send_once(d.addr("web"), req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let seen = Seen(r.json());
    println!("backend saw: {}", seen.0);

    for gone in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "proxy-connection",
        "x-foo",
    ] {
        assert_eq!(
            seen.all(gone),
            Vec::<&str>::new(),
            "{gone} reached the backend"
        );
    }
    assert_eq!(seen.one("x-end-to-end"), Some("kept"));
    assert_eq!(
        seen.one("host"),
        Some("app.example:8080"),
        "Host is kept as sent"
    );
    assert_eq!(
        seen.all("x-forwarded-for").join(", "),
        "1.2.3.4, 127.0.0.1",
        "X-Forwarded-For is appended to, and Connection cannot remove it"
    );
    assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.0["uri"], "/hop?q=1");
    assert_eq!(seen.0["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_when_absent() {
    let (_echo, d) = echo_daemon().await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..2 {
        let req = Request::builder()
            .uri("/plain")
            .header("host", "kept.example")
            .header("x-forwarded-proto", "https")
            .body(client::empty())
            .unwrap();
        let seen = Seen(c.send(req).await.json());
        assert_eq!(seen.one("x-forwarded-for"), Some("127.0.0.1"), "{}", seen.0);
        assert_eq!(
            seen.one("x-forwarded-proto"),
            Some("http"),
            "X-Forwarded-Proto is set, not appended: {}",
            seen.0
        );
        assert_eq!(seen.one("host"), Some("kept.example"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_websocket_upgrade_is_removed() {
    let (_echo, d) = echo_daemon().await;
    let req = Request::builder()
        .uri("/up")
        .header("host", "up.example")
        .header("connection", "Upgrade")
        .header("upgrade", "foo/1")
        .body(client::empty())
        .unwrap();
    let r = client::send_once(d.addr("web"), req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let seen = Seen(r.json());
    assert_eq!(seen.all("upgrade"), Vec::<&str>::new(), "{}", seen.0);
    assert_eq!(seen.all("connection"), Vec::<&str>::new(), "{}", seen.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_are_removed() {
    let backend = HttpBackend::start(
        "hop",
        Behaviour::Headers(vec![
            ("connection", "x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "nominated by Connection"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
        ]),
    )
    .await;
    let d = Daemon::builder(CONFIG)
        .var("A", backend.addr())
        .start()
        .await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..3 {
        let r = c.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.header("x-end-to-end"), Some("kept"), "{r:?}");
        for gone in ["keep-alive", "x-hop", "proxy-connection"] {
            assert!(r.header(gone).is_none(), "{gone} reached the client: {r:?}");
        }
        // The proxy's own hop may carry a Connection header, but never the backend's tokens.
        for v in r.headers.get_all("connection") {
            let v = v.to_str().unwrap().to_ascii_lowercase();
            assert!(
                !v.contains("x-hop"),
                "backend's Connection reached the client: {r:?}"
            );
        }
        assert!(!c.is_closed(), "the client connection should stay open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_reaches_http1_backend_with_host_from_authority() {
    let (echo, d) = echo_daemon().await;
    let mut h2 = H2Client::connect(d.addr("web")).await;
    for i in 0..3 {
        let req = Request::builder()
            .method(if i == 2 { Method::POST } else { Method::GET })
            .uri(format!("http://h2.example:8443/h2/{i}?x=y"))
            .body(if i == 2 {
                client::full("h2 body")
            } else {
                client::empty()
            })
            .unwrap();
        let r = h2.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.version, http::Version::HTTP_2);
        let seen = Seen(r.json());
        assert_eq!(
            seen.0["version"], "HTTP/1.1",
            "upstreams speak HTTP/1.1: {}",
            seen.0
        );
        assert_eq!(seen.one("host"), Some("h2.example:8443"), "{}", seen.0);
        assert_eq!(seen.0["uri"], format!("/h2/{i}?x=y"));
        assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
        assert_eq!(seen.one("x-forwarded-for"), Some("127.0.0.1"));
        if i == 2 {
            assert_eq!(seen.0["method"], "POST");
            assert_eq!(seen.0["body_len"], 7);
        }
    }
    assert_eq!(echo.requests(), 3);
}

/// Sends `raw` on a new connection and reads until the daemon closes it: (head, rest).
async fn raw_exchange(addr: std::net::SocketAddr, raw: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.unwrap();
    let (head, mut rest) = read_head(&mut s).await;
    let tail = read_to_eof(&mut s)
        .await
        .unwrap_or_else(|e| panic!("after\n{head}\nthe connection failed: {e}"));
    rest.extend_from_slice(&tail);
    (head, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_with_content_length_is_rejected_or_forwarded_chunked() {
    let (echo, d) = echo_daemon().await;
    // read_to_eof in raw_exchange: either way the client connection is closed afterwards.
    let (head, rest) = raw_exchange(
        d.addr("web"),
        "POST /smuggle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    println!(
        "Transfer-Encoding with Content-Length answered: {}",
        head.lines().next().unwrap()
    );
    if head.starts_with("HTTP/1.1 400") {
        assert_eq!(echo.requests(), 0, "rejected, yet forwarded");
        return;
    }
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "expected 400 or 200, got\n{head}"
    );
    let seen = Seen(serde_json::from_slice(&raw_body(&head, &rest)).expect("echo JSON"));
    assert_eq!(seen.all("content-length"), Vec::<&str>::new(), "{}", seen.0);
    assert_eq!(seen.one("transfer-encoding"), Some("chunked"), "{}", seen.0);
    assert_eq!(seen.0["body_len"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_chunked_is_rejected() {
    let (echo, d) = echo_daemon().await;
    for te in ["gzip, chunked", "chunked, chunked", "identity"] {
        let (head, _) = raw_exchange(
            d.addr("web"),
            &format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n"),
        )
        .await;
        assert!(
            head.starts_with("HTTP/1.1 400") || head.starts_with("HTTP/1.1 501"),
            "Transfer-Encoding: {te}: expected 400 or 501 and close, got\n{head}"
        );
    }
    assert_eq!(
        echo.requests(),
        0,
        "a request with a bad Transfer-Encoding was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_streams_are_multiplexed() {
    let gate = Arc::new(Semaphore::new(0));
    let gated = HttpBackend::start("gated", Behaviour::Gated(gate.clone())).await;
    let d = Daemon::builder(CONFIG).var("A", gated.addr()).start().await;
    // The connection task lives as long as `h2`; streams go through clones of its sender.
    let h2 = H2Client::connect(d.addr("web")).await;
    let sender = h2.sender();
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::builder()
                .uri(format!("http://mux.example/{i}"))
                .body(client::empty())
                .unwrap();
            support::within(
                Duration::from_secs(10),
                "h2 stream",
                sender.send_request(req),
            )
            .await
            .expect("h2 stream")
            .status()
        }));
    }
    // All ten requests are at the backend at once, on one client connection.
    assert!(
        support::eventually(Duration::from_secs(5), || gated.requests() == 10).await,
        "only {} of 10 concurrent h2 streams reached the backend",
        gated.requests()
    );
    gate.add_permits(10);
    for s in streams {
        assert_eq!(s.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_requests_are_refused_with_405_and_closed() {
    let (echo, d) = echo_daemon().await;
    let (head, rest) = raw_exchange(
        d.addr("web"),
        "CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(
        String::from_utf8_lossy(&rest).contains("405"),
        "short plain-text body expected: {rest:?}"
    );
    assert_eq!(echo.requests(), 0, "CONNECT must not reach a server");
}
