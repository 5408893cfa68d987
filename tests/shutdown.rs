//! SIGTERM: stop accepting at once, finish what is in flight, close idle connections, exit 0.

mod support;

use std::io::ErrorKind;
use std::time::Duration;

use http::StatusCode;
use support::client::{echo_roundtrip, websocket_connect, H1Client};
use support::{eventually, Behaviour, Daemon, HttpBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How soon after its last in-flight work ends a draining daemon must exit. The tests that use it set
/// `shutdown_timeout` far above it, so an exit at the timeout (a drain nobody woke) fails them.
const EXIT_AFTER_LAST_WORK: Duration = Duration::from_secs(5);

/// Waits for `d` to exit after its last in-flight work ended at `ended`; asserts exit 0 within
/// [`EXIT_AFTER_LAST_WORK`].
async fn exits_soon_after(d: &mut Daemon, ended: Instant, what: &str) {
    let status = d.wait_exit(EXIT_AFTER_LAST_WORK).await;
    let took = ended.elapsed();
    println!("exited {status:?} {took:?} after {what} (shutdown_timeout 60 s)");
    assert!(
        status.is_some_and(|s| s.success()),
        "expected exit 0 within {EXIT_AFTER_LAST_WORK:?} of {what}, well before shutdown_timeout \
         (60 s); got {status:?} after {took:?}"
    );
}

/// Polls new connects to `addr` until one is refused; returns how long that took.
async fn refused_within(addr: std::net::SocketAddr, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Some(started.elapsed()),
            _ => tokio::time::sleep(support::POLL).await,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_and_exits_zero() {
    let slow = HttpBackend::start("slow", Behaviour::Slow(Duration::from_secs(2))).await;
    let config = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "60s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
response_timeout = "10s"
servers = [ { address = "${A}" } ]
"#;
    let mut d = Daemon::builder(config).var("A", slow.addr()).start().await;
    let addr = d.addr("web");

    let mut client = H1Client::connect(addr).await;
    let in_flight = tokio::spawn(async move { client.get("/slow").await });
    assert!(
        eventually(Duration::from_secs(5), || slow.requests() == 1).await,
        "the request never reached the backend"
    );

    d.sigterm();
    let refused = refused_within(addr, Duration::from_secs(1)).await;
    let still_running = d.try_exit().is_none();
    let request_pending = !in_flight.is_finished();
    println!(
        "listener refused {refused:?} after SIGTERM; request still in flight: {request_pending}"
    );
    assert!(
        refused.is_some(),
        "new connections still accepted 1 s after SIGTERM"
    );
    assert!(
        still_running,
        "the daemon exited before its in-flight request was answered"
    );
    assert!(
        request_pending,
        "the in-flight request ended before the backend answered"
    );

    let r = in_flight.await.expect("client task");
    let answered = Instant::now();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.text(), "slow");
    assert!(
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close")),
        "in-flight responses during shutdown carry Connection: close: {r:?}"
    );

    exits_soon_after(&mut d, answered, "the in-flight response").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let config = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "30s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[listeners.hello]
bind = "127.0.0.1:0"
mode = "http"
respond = { status = 200, body = "hello\n" }

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;
    let mut d = Daemon::builder(config).var("A", app.addr()).start().await;
    let mut idle = Vec::new();
    for name in ["web", "web", "hello"] {
        let mut c = H1Client::connect(d.addr(name)).await;
        assert_eq!(c.get("/").await.status, StatusCode::OK);
        idle.push(c);
    }

    let started = Instant::now();
    d.sigterm();
    assert!(
        eventually(Duration::from_secs(5), || idle
            .iter()
            .all(|c| c.is_closed()))
        .await,
        "idle keep-alive connections still open 5 s after SIGTERM"
    );
    let status = d.wait_exit(Duration::from_secs(10)).await;
    println!("exited {status:?} {:?} after SIGTERM", started.elapsed());
    assert!(
        status.is_some_and(|s| s.success()),
        "with only idle connections, expected exit 0 well before shutdown_timeout (30 s), got {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_daemon_exits_zero() {
    let config = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.hello]
bind = "127.0.0.1:0"
mode = "http"
respond = { status = 200, body = "hello\n" }

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "app"

[upstreams.app]
servers = [ { address = "127.0.0.1:9" } ]
"#;
    let mut d = Daemon::builder(config).start().await;
    let hello = d.addr("hello");
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "got {status:?}");
    assert!(TcpStream::connect(hello).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_tcp_sessions() {
    let echo = support::TcpEchoBackend::start(support::EchoMode::Stream).await;
    let config = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "60s"

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "echo"

[upstreams.echo]
servers = [ { address = "${A}" } ]
"#;
    let mut d = Daemon::builder(config).var("A", echo.addr()).start().await;
    let addr = d.addr("l4");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();

    d.sigterm();
    assert!(
        refused_within(addr, Duration::from_secs(1)).await.is_some(),
        "new connections still accepted 1 s after SIGTERM"
    );
    // The session counts as in flight: it still works, and the daemon waits for it.
    s.write_all(b"during").await.unwrap();
    support::within(
        Duration::from_secs(5),
        "echo during shutdown",
        s.read_exact(&mut buf),
    )
    .await
    .expect("session cut by SIGTERM");
    assert_eq!(&buf, b"during");
    assert!(d.try_exit().is_none(), "exited with an L4 session open");

    drop(s);
    exits_soon_after(&mut d, Instant::now(), "the L4 session closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_websocket_tunnels() {
    let ws = HttpBackend::start("ws", Behaviour::WebSocketEcho).await;
    let config = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "60s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;
    let mut d = Daemon::builder(config).var("A", ws.addr()).start().await;
    let addr = d.addr("web");
    let mut tunnel = websocket_connect(addr, "/ws").await;
    echo_roundtrip(&mut tunnel, b"before").await;

    d.sigterm();
    assert!(
        refused_within(addr, Duration::from_secs(1)).await.is_some(),
        "new connections still accepted 1 s after SIGTERM"
    );
    // The tunnel counts as in flight: it still works, and the daemon waits for it.
    echo_roundtrip(&mut tunnel, b"during shutdown").await;
    assert!(
        d.try_exit().is_none(),
        "exited with a WebSocket tunnel open"
    );

    drop(tunnel);
    exits_soon_after(&mut d, Instant::now(), "the WebSocket tunnel closed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_what_is_still_running_and_says_how_much() {
    let stuck = HttpBackend::start("stuck", Behaviour::Slow(Duration::from_secs(30))).await;
    let config = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "500ms"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
response_timeout = "60s"
servers = [ { address = "${A}" } ]
"#;
    let mut d = Daemon::builder(config).var("A", stuck.addr()).start().await;
    let addr = d.addr("web");
    let mut client = H1Client::connect(addr).await;
    let in_flight = tokio::spawn(async move {
        let req = support::client::get(addr, "/stuck");
        client.try_send(req).await
    });
    assert!(
        eventually(Duration::from_secs(5), || stuck.requests() == 1).await,
        "the request never reached the backend"
    );
    let signalled = Instant::now();
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    println!("exited {took:?} after SIGTERM with shutdown_timeout = 500ms");
    assert!(
        status.is_some_and(|s| s.success()),
        "expected exit 0, got {status:?}"
    );
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}, before shutdown_timeout"
    );
    assert!(
        took < Duration::from_secs(5),
        "exited after {took:?}, long after shutdown_timeout"
    );
    // The log reader may still be draining the pipe after the exit: wait for the line.
    assert!(
        d.wait_for_stderr("cut=1", Duration::from_secs(5)).await,
        "the log does not say one connection was cut:\n{}",
        d.stderr_text()
    );
    let cut = in_flight.await.expect("client task");
    assert!(
        cut.is_err(),
        "the stuck request cannot have been answered: {cut:?}"
    );
}
