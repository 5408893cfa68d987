//! L4 (`mode = "tcp"`) proxying: bytes both ways, half-close, balancing and connect retries.

mod support;

use std::time::Duration;

use support::client::read_to_eof;
use support::{pattern, refused_addr, within, Daemon, EchoMode, TcpEchoBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "echo"
"#;

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    within(Duration::from_secs(10), "echo", s.read_exact(&mut back))
        .await
        .expect("read echo");
    assert!(back == msg, "echo differs ({} bytes)", msg.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_proxy() {
    let echo = TcpEchoBackend::start(EchoMode::Stream).await;
    let config = format!("{CONFIG}\n[upstreams.echo]\nservers = [ {{ address = \"${{A}}\" }} ]\n");
    let d = Daemon::builder(&config).var("A", echo.addr()).start().await;

    let mut s = TcpStream::connect(d.addr("l4")).await.expect("connect");
    roundtrip(&mut s, b"ping").await;
    roundtrip(&mut s, b"GET / HTTP/1.1\r\n\r\n").await;
    roundtrip(&mut s, &pattern(0, 512 * 1024)).await;
    s.shutdown().await.unwrap();
    assert_eq!(read_to_eof(&mut s).await.expect("EOF"), b"");
    assert_eq!(echo.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_half_close_lets_the_server_answer_after_eof() {
    let echo = TcpEchoBackend::start(EchoMode::AfterEof).await;
    let config = format!("{CONFIG}\n[upstreams.echo]\nservers = [ {{ address = \"${{A}}\" }} ]\n");
    let d = Daemon::builder(&config).var("A", echo.addr()).start().await;

    for len in [1usize, 100 * 1024] {
        let data = pattern(len as u64, len);
        let mut s = TcpStream::connect(d.addr("l4")).await.expect("connect");
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        let back = read_to_eof(&mut s).await.unwrap_or_else(|e| {
            panic!("{len} bytes: the proxy did not keep the return path open: {e}")
        });
        assert_eq!(
            back.len(),
            len,
            "bytes echoed after the client's half-close"
        );
        assert!(back == data[..], "echo differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_follow_weights() {
    let a = TcpEchoBackend::start(EchoMode::Stream).await;
    let b = TcpEchoBackend::start(EchoMode::Stream).await;
    let config = format!(
        "{CONFIG}{}",
        r#"
[upstreams.echo]
servers = [ { address = "${A}", weight = 1 }, { address = "${B}", weight = 2 } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", a.addr())
        .var("B", b.addr())
        .start()
        .await;
    for _ in 0..30 {
        let mut s = TcpStream::connect(d.addr("l4")).await.expect("connect");
        roundtrip(&mut s, b"x").await;
    }
    assert_eq!((a.accepts(), b.accepts()), (10, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_failure_is_retried_on_another_server() {
    let live = TcpEchoBackend::start(EchoMode::Stream).await;
    let config = format!(
        "{CONFIG}{}",
        r#"
[upstreams.echo]
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
    for i in 0..10 {
        let mut s = TcpStream::connect(d.addr("l4")).await.expect("connect");
        roundtrip(&mut s, format!("connection {i}").as_bytes()).await;
    }
    assert_eq!(live.accepts(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_no_reachable_server_closes_the_client() {
    let config = format!(
        "{CONFIG}{}",
        r#"
[upstreams.echo]
connect_timeout = "1s"
retries = 1
servers = [ { address = "${R1}" }, { address = "${R2}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("R1", refused_addr())
        .var("R2", refused_addr())
        .start()
        .await;
    let mut s = TcpStream::connect(d.addr("l4")).await.expect("connect");
    let _ = s.write_all(b"anyone there?").await;
    // Closed (EOF) or reset, but promptly and without data.
    match read_to_eof(&mut s).await {
        Ok(bytes) => assert!(bytes.is_empty(), "got {bytes:?}"),
        Err(e) => println!("connection reset: {e}"),
    }
}
