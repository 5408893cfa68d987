//! The test backends themselves (no daemon): runtime behaviour switches, health checks counted apart,
//! `Hang`, `HangUp`, `Reset`, and `kill` then `start_on` the same port. Other tests rely on these.

mod support;

use std::io::ErrorKind;
use std::time::Duration;

use http::StatusCode;
use support::client::{get_once, H1Client};
use support::{eventually, within, Behaviour, HttpBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `request` on a new connection to `backend` and returns the stream.
async fn raw(backend: &HttpBackend, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(backend.addr()).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    s
}

/// What one read on `s` gives within `wait`: `None` if nothing came.
async fn read_within(s: &mut TcpStream, wait: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(n)) => Some(Ok(buf[..n].to_vec())),
        Ok(Err(e)) => Some(Err(e)),
    }
}

const GET: &str = "GET / HTTP/1.1\r\nhost: t\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_behaviour_applies_to_the_next_request_on_a_keep_alive_connection() {
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let mut c = H1Client::connect(b.addr()).await;
    let r = c.get("/").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "b"));
    b.set_behaviour(Behaviour::Status(503));
    let r = c.get("/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    b.set_behaviour(Behaviour::Identity);
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    assert_eq!((b.accepts(), b.requests(), b.checks()), (1, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_answered_and_counted_apart_from_requests() {
    let b = HttpBackend::start("b", Behaviour::Status(500)).await;
    let r = get_once(b.addr(), "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    b.set_health(503);
    assert_eq!(
        get_once(b.addr(), "/healthz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Client requests keep their own behaviour.
    assert_eq!(
        get_once(b.addr(), "/").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get_once(b.addr(), "/healthz?x=1").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_once(b.addr(), "/healthz/more").await.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "only the exact path is a health check"
    );
    assert_eq!((b.requests(), b.checks()), (2, 3));

    b.set_health_behaviour(Behaviour::Hang);
    let mut s = raw(&b, "GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert!(
        read_within(&mut s, Duration::from_millis(300))
            .await
            .is_none(),
        "a hanging health check answered"
    );
    b.set_health_behaviour(Behaviour::Reset);
    let mut s = raw(&b, "GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let got = read_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&got, Some(Err(e)) if e.kind() == ErrorKind::ConnectionReset),
        "{got:?}"
    );
    assert_eq!((b.requests(), b.checks()), (2, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_keeps_the_connection_open_until_stop() {
    let b = HttpBackend::start("b", Behaviour::Hang).await;
    let mut s = raw(&b, GET).await;
    assert!(
        read_within(&mut s, Duration::from_millis(500))
            .await
            .is_none(),
        "a hanging backend answered or closed"
    );
    assert_eq!((b.requests(), b.closed()), (1, 0));
    b.stop();
    let got = read_within(&mut s, Duration::from_secs(1)).await;
    assert!(
        matches!(&got, Some(Ok(bytes)) if bytes.is_empty()),
        "stop did not close the hanging connection: {got:?}"
    );
    assert!(eventually(Duration::from_secs(1), || b.closed() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_up_closes_without_a_byte() {
    let b = HttpBackend::start("b", Behaviour::HangUp).await;
    let mut s = raw(&b, GET).await;
    let got = read_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&got, Some(Ok(bytes)) if bytes.is_empty()),
        "expected EOF, got {got:?}"
    );
    assert_eq!(b.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reads_the_request_and_resets() {
    let b = HttpBackend::start("b", Behaviour::Reset).await;
    let mut s = raw(
        &b,
        "PUT / HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    let got = read_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&got, Some(Err(e)) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset, got {got:?}"
    );
    assert_eq!(b.requests(), 1);
    assert!(eventually(Duration::from_secs(1), || b.closed() == 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_closes_keep_alive_connections_and_start_on_takes_the_port_back() {
    let b = HttpBackend::start("first", Behaviour::Identity).await;
    let addr = b.addr();
    let mut c = H1Client::connect(addr).await;
    assert_eq!(c.get("/").await.text(), "first");
    b.kill();
    assert!(
        eventually(Duration::from_millis(500), || c.is_closed()).await,
        "kill left a keep-alive connection open"
    );
    assert!(
        eventually(Duration::from_millis(500), || std::net::TcpStream::connect(
            addr
        )
        .is_err())
        .await,
        "the killed backend still accepts"
    );
    // The killed side closed first, so its end of the old connection is in TIME_WAIT.
    let again = within(
        Duration::from_secs(5),
        "start_on",
        HttpBackend::start_on(addr, "second", Behaviour::Identity),
    )
    .await;
    assert_eq!(again.addr(), addr);
    assert_eq!(get_once(addr, "/").await.text(), "second");
    assert_eq!((b.requests(), again.requests()), (1, 1));
}
