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

    #[test]
    fn jitter_only_shortens_by_at_most_a_tenth() {
        let interval = Duration::from_secs(2);
        for _ in 0..1000 {
            let d = jittered(interval);
            assert!(d <= interval && d >= Duration::from_millis(1800), "{d:?}");
        }
    }
}
