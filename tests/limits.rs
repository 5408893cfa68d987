//! Connection limits: a server's `max_connections` and the daemon-wide `runtime.max_connections`.

mod support;

use std::time::Duration;
use tokio::time::Instant;

use http::StatusCode;
use support::client::{get_once, read_head, read_to_eof, H1Client};
use support::{eventually, Behaviour, Daemon, EchoMode, HttpBackend, TcpEchoBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_max_connections_is_skipped_not_replaced_by_a_backup() {
    let slow = HttpBackend::start("slow", Behaviour::Slow(Duration::from_secs(1))).await;
    let backup = HttpBackend::start("backup", Behaviour::Identity).await;
    let config = r#"
[runtime]
worker_threads = 2

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
response_timeout = "10s"
servers = [ { address = "${A}", max_connections = 1 }, { address = "${B}", backup = true } ]
"#;
    let d = Daemon::builder(config)
        .var("A", slow.addr())
        .var("B", backup.addr())
        .start()
        .await;
    let web = d.addr("web");
    let first = tokio::spawn(async move { get_once(web, "/first").await });
    assert!(eventually(Duration::from_secs(5), || slow.requests() == 1).await);

    let started = Instant::now();
    let r = get_once(web, "/second").await;
    let took = started.elapsed();
    println!("503 at max_connections after {took:?}");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert!(took < Duration::from_millis(100), "503 took {took:?}");
    assert_eq!(
        backup.requests(),
        0,
        "a full primary is not replaced by a backup"
    );

    let r = first.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "slow"));
    // The slot is released with the response.
    let mut c = H1Client::connect(web).await;
    let r = c.get("/third").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(slow.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_max_connections_limits_sessions() {
    let echo = TcpEchoBackend::start(EchoMode::Stream).await;
    let config = r#"
[runtime]
worker_threads = 2

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "echo"

[upstreams.echo]
servers = [ { address = "${A}", max_connections = 1 } ]
"#;
    let d = Daemon::builder(config).var("A", echo.addr()).start().await;
    let l4 = d.addr("l4");
    let mut first = TcpStream::connect(l4).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    first.read_exact(&mut buf).await.unwrap();

    // The second session finds the only server full: closed without data.
    let mut second = TcpStream::connect(l4).await.unwrap();
    let _ = second.write_all(b"two").await;
    match read_to_eof(&mut second).await {
        Ok(bytes) => assert!(bytes.is_empty(), "second session got {bytes:?}"),
        Err(e) => println!("second session reset: {e}"),
    }
    assert_eq!(echo.accepts(), 1);

    // Once the first ends, a new one gets through.
    drop(first);
    let mut ok = false;
    for _ in 0..100 {
        let mut s = TcpStream::connect(l4).await.unwrap();
        if s.write_all(b"three").await.is_ok() {
            let mut buf = [0u8; 5];
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await
            {
                ok = &buf == b"three";
                break;
            }
        }
        tokio::time::sleep(support::POLL).await;
    }
    assert!(
        ok,
        "the slot was not released when the first session closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_max_connections_makes_new_connections_wait() {
    let config = r#"
[runtime]
worker_threads = 2
max_connections = 1

[listeners.hello]
bind = "127.0.0.1:0"
mode = "http"
respond = { status = 200, body = "hello\n" }
"#;
    let d = Daemon::builder(config).start().await;
    let addr = d.addr("hello");
    let mut first = H1Client::connect(addr).await;
    assert_eq!(first.get("/").await.status, StatusCode::OK);

    // The second connection completes its handshake in the backlog but is not served...
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "served while the one allowed connection was open"
    );

    // ...until the first one closes.
    drop(first);
    let (head, _) = read_head(&mut second).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
