//! Active health checks: the probes and the loop that runs them.
//!
//! A TCP check passes when a connection is made within `timeout`. An HTTP check opens a new
//! connection (never one of the client pools, so a check cannot take or spoil a pooled connection,
//! and it is not counted as a client request), sends `GET path HTTP/1.1` with `Host` and
//! `Connection: close`, and passes when a well-formed response head with an expected status arrives
//! within `timeout` (connect included). Anything else fails, with a detail an operator can act on:
//! `connect refused`, `timeout after 1s`, `status 503`, `bad response: ...`.
//!
//! Checks run at once, then every `interval × U(0.9, 1.0)`, start to start: jitter only shortens the
//! interval, and spreads the checks of many servers so they do not arrive in bursts.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::rise_fall::CheckReport;
use crate::config::{CheckKind, HealthCheckConfig};

/// The largest response head a check reads; a longer one fails the check.
const MAX_HEAD: usize = 16 * 1024;

/// Runs one check of `addr` (whose configured address text is `address`, the default `Host`).
pub async fn probe(config: &HealthCheckConfig, addr: SocketAddr, address: &str) -> CheckReport {
    let outcome = tokio::time::timeout(config.timeout, attempt(config, addr, address)).await;
    let (ok, detail) = match outcome {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (
            false,
            format!(
                "timeout after {}",
                humantime::format_duration(config.timeout)
            ),
        ),
    };
    CheckReport {
        ok,
        detail,
        at: SystemTime::now(),
    }
}

async fn attempt(
    config: &HealthCheckConfig,
    addr: SocketAddr,
    address: &str,
) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_detail(&e))?;
    if config.kind == CheckKind::Tcp {
        return Ok("connected".into());
    }
    let _ = stream.set_nodelay(true);
    let host = config.host.as_deref().unwrap_or(address);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: fulcrum-health-check\r\nAccept: */*\r\n\r\n",
        config.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write failed: {}", io_detail(&e)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read failed: {}", io_detail(&e)))?;
        if n == 0 {
            return Err(if head.is_empty() {
                "closed before responding".into()
            } else {
                "bad response: cut short".into()
            });
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let status = response.code.unwrap_or(0);
                return if config.expect_status.matches(status) {
                    Ok(status.to_string())
                } else {
                    Err(format!("status {status}"))
                };
            }
            Ok(httparse::Status::Partial) if head.len() <= MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(format!("bad response: head longer than {MAX_HEAD} bytes"))
            }
            Err(e) => return Err(format!("bad response: {e}")),
        }
    }
}

fn connect_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect refused".into(),
        _ => format!("connect failed: {}", io_detail(e)),
    }
}

fn io_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string(),
    }
}

/// The pause before the next check: `interval` shortened by a random 0–10 %.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - fastrand::f64() * 0.1)
}

/// Checks `addr` at once and then on the jittered interval, start to start, handing each result to
/// `report`; stops when `report` returns false (the upstream's writer is gone).
pub async fn run(
    config: HealthCheckConfig,
    addr: SocketAddr,
    address: String,
    mut report: impl FnMut(CheckReport) -> bool,
) {
    loop {
        let started = Instant::now();
        let result = probe(&config, addr, &address).await;
        if !report(result) {
            return;
        }
        tokio::time::sleep_until(started + jittered(config.interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExpectStatus;
    use tokio::net::TcpListener;

    fn config(kind: CheckKind) -> HealthCheckConfig {
        HealthCheckConfig {
            kind,
            path: "/healthz".into(),
            host: None,
            expect_status: ExpectStatus::default_range(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 3,
        }
    }

    /// A server on 127.0.0.1 that reads one request head, hands it to the test, answers `reply`
    /// and closes (or, with `None`, keeps the connection open without answering).
    async fn server(
        reply: Option<&'static [u8]>,
    ) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            match reply {
                Some(reply) => {
                    let _ = s.write_all(reply).await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        (addr, rx)
    }

    async fn check(reply: Option<&'static [u8]>) -> (CheckReport, String) {
        let (addr, head) = server(reply).await;
        let report = probe(&config(CheckKind::Http), addr, "app.test:80").await;
        (report, head.await.unwrap_or_default())
    }

    #[tokio::test]
    async fn an_http_check_sends_a_get_with_host_and_connection_close() {
        let (report, head) = check(Some(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.detail, "204");
        assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: app.test:80\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    }

    #[tokio::test]
    async fn an_unexpected_status_fails_and_says_which() {
        let (report, _) = check(Some(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        ))
        .await;
        assert!(!report.ok);
        assert_eq!(report.detail, "status 503");
        let (report, _) = check(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n")).await;
        assert_eq!((report.ok, report.detail.as_str()), (false, "status 400"));
        let (report, _) = check(Some(b"HTTP/1.1 399 Odd\r\n\r\n")).await;
        assert!(report.ok, "399 is inside 200-399: {report:?}");
    }

    #[tokio::test]
    async fn garbage_a_cut_head_and_silence_are_failures_with_a_detail() {
        let (report, _) = check(Some(b"NOT HTTP\r\n\r\n")).await;
        assert!(!report.ok);
        assert!(report.detail.starts_with("bad response: "), "{report:?}");
        let (report, _) = check(Some(b"HTTP/1.1 200 OK\r\nContent-Le")).await;
        assert_eq!(
            (report.ok, report.detail.as_str()),
            (false, "bad response: cut short")
        );
        let (report, _) = check(Some(b"")).await;
        assert_eq!(
            (report.ok, report.detail.as_str()),
            (false, "closed before responding")
        );
        let (report, _) = check(None).await;
        assert_eq!(
            (report.ok, report.detail.as_str()),
            (false, "timeout after 300ms")
        );
    }

    #[tokio::test]
    async fn tcp_checks_pass_on_connect_and_fail_on_refusal() {
        let (addr, _head) = server(None).await;
        let report = probe(&config(CheckKind::Tcp), addr, "x").await;
        assert_eq!((report.ok, report.detail.as_str()), (true, "connected"));
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let report = probe(&config(CheckKind::Tcp), refused, "x").await;
        assert_eq!(
            (report.ok, report.detail.as_str()),
            (false, "connect refused")
        );
    }

    // Real time: paused time would jump over the socket waits. Only the lower bound is exact.
    #[tokio::test]
    async fn checks_run_at_once_then_on_the_jittered_interval_start_to_start() {
        let (addr, _head) = server(None).await;
        let mut config = config(CheckKind::Tcp);
        config.interval = Duration::from_millis(200);
        let started = Instant::now();
        let mut at = Vec::new();
        run(config, addr, "x".into(), |report| {
            assert!(report.ok);
            at.push(started.elapsed());
            at.len() < 4
        })
        .await;
        assert!(
            at[0] < Duration::from_millis(100),
            "the first check runs at start: {at:?}"
        );
        for pair in at.windows(2) {
            let gap = pair[1] - pair[0];
            let ok = gap >= Duration::from_millis(180) && gap < Duration::from_secs(2);
            assert!(ok, "interval × U(0.9, 1.0) start to start: {at:?}");
        }
    }

    #[test]
    fn jitter_only_shortens_by_at_most_a_tenth() {
        let interval = Duration::from_secs(2);
        for _ in 0..1000 {
            let d = jittered(interval);
            assert!(d <= interval && d >= Duration::from_millis(1800), "{d:?}");
        }
    }
}
