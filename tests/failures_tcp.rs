//! Failures at the socket level: L4 servers that close or reset every connection, and a daemon
//! that runs out of file descriptors.

mod support;

use std::time::Duration;
use tokio::time::Instant;

use http::StatusCode;
use support::client::{echo_roundtrip, get_once};
use support::raw::{Closing, ClosingTcpBackend};
use support::{eventually, within, Daemon, EchoMode, TcpEchoBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Listener `bad` over a server that closes or resets every connection, listener `echo` over an
/// echo server.
const L4: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.bad]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "bad"

[listeners.echo]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "echo"

[upstreams.bad]
connect_timeout = "1s"
retries = 1
servers = [ { address = "${BAD}" } ]

[upstreams.echo]
servers = [ { address = "${ECHO}" } ]
"#;

/// How long a client may wait for the proxy to pass a server's close on.
const PROMPT: Duration = Duration::from_secs(5);

async fn closing_daemon(how: Closing) -> (ClosingTcpBackend, TcpEchoBackend, Daemon) {
    let bad = ClosingTcpBackend::start(how).await;
    let echo = TcpEchoBackend::start(EchoMode::Stream).await;
    let d = Daemon::builder(L4)
        .var("BAD", bad.addr())
        .var("ECHO", echo.addr())
        .start()
        .await;
    (bad, echo, d)
}

/// The daemon is running and still proxies on its other listener.
async fn assert_still_serving(d: &mut Daemon) {
    assert!(d.try_exit().is_none(), "the daemon exited");
    let mut s = within(PROMPT, "connect", TcpStream::connect(d.addr("echo")))
        .await
        .expect("connect to the echo listener");
    echo_roundtrip(&mut s, b"still serving").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_close_reaches_the_client_as_eof() {
    let (bad, _echo, mut d) = closing_daemon(Closing::Fin).await;
    for i in 0..3 {
        let mut s = TcpStream::connect(d.addr("bad")).await.expect("connect");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = within(PROMPT, "EOF after the server closed", s.read(&mut buf)).await;
        let took = started.elapsed();
        println!("connection {i}: {read:?} after {took:?}");
        // The server sent a FIN and nothing else: the client gets a clean EOF, no bytes, no reset.
        assert_eq!(
            read.unwrap_or_else(|e| panic!("connection {i}: {e}")),
            0,
            "connection {i}: bytes from a server that sent none"
        );
    }
    assert_eq!(bad.accepts(), 3);
    assert_still_serving(&mut d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_reset_closes_the_client_promptly() {
    let (bad, _echo, mut d) = closing_daemon(Closing::Reset).await;
    for i in 0..3 {
        let mut s = TcpStream::connect(d.addr("bad")).await.expect("connect");
        // The write may fail if the reset has already come back; what matters is the close.
        let _ = s.write_all(b"hello?").await;
        let started = Instant::now();
        let mut got = Vec::new();
        let end = within(PROMPT, "the client connection to close", async {
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return "EOF".to_string(),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => return format!("error: {e}"),
                }
            }
        })
        .await;
        println!("connection {i}: {end} after {:?}", started.elapsed());
        assert!(got.is_empty(), "connection {i}: got {got:?}");
    }
    assert_eq!(bad.accepts(), 3);
    assert_still_serving(&mut d).await;
}

/// Open file descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// CPU time (user + system) process `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `comm`.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK) = {hz}");
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

const RESPOND: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.hello]
bind = "127.0.0.1:0"
mode = "http"
respond = { status = 200, body = "hello" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_neither_crashes_nor_spins() {
    const LIMIT: usize = 64;
    let mut d = Daemon::builder(RESPOND)
        .nofile_limit(LIMIT as u64)
        .start()
        .await;
    let pid = d.pid();
    let addr = d.addr("hello");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect())
        .unwrap_or_default();
    assert_eq!(nofile, ["64", "64"], "RLIMIT_NOFILE not applied:\n{limits}");
    let r = get_once(addr, "/").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(
        eventually(PROMPT, || fd_count(pid) < LIMIT / 2).await,
        "the daemon idles with {} descriptors open",
        fd_count(pid)
    );
    let baseline = fd_count(pid);

    // More connections than the daemon has descriptors: the kernel completes them all (they wait in
    // the listen backlog), the daemon accepts until accept() fails with EMFILE.
    let mut held = Vec::new();
    for i in 0..100 {
        let s = within(PROMPT, "connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        held.push(s);
    }
    let full = eventually(Duration::from_secs(10), || fd_count(pid) >= LIMIT).await;
    println!(
        "descriptors: {baseline} idle, {} with 100 client connections held (limit {LIMIT})",
        fd_count(pid)
    );
    assert!(full, "the daemon never reached its descriptor limit");

    // Out of descriptors with connections waiting: it must back off, not retry accept() in a loop.
    let cpu_before = cpu_time(pid);
    let window = Instant::now();
    // A measurement window, not synchronisation: nothing is awaited but time.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_time(pid).saturating_sub(cpu_before);
    let elapsed = window.elapsed();
    println!("CPU used while out of descriptors: {spent:?} in {elapsed:?}");
    assert!(
        d.try_exit().is_none(),
        "the daemon exited when out of descriptors"
    );
    assert!(
        spent < Duration::from_millis(500),
        "the daemon used {spent:?} of CPU in {elapsed:?} while out of descriptors (busy loop?)"
    );

    drop(held);
    let started = Instant::now();
    let r = within(
        Duration::from_secs(10),
        "a request after the clients left",
        get_once(addr, "/"),
    )
    .await;
    println!(
        "first request after the clients left: {} in {:?}",
        r.status,
        started.elapsed()
    );
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.text(), "hello");
    assert!(d.try_exit().is_none(), "the daemon exited");
    assert!(
        eventually(Duration::from_secs(10), || fd_count(pid) <= baseline + 2).await,
        "descriptors not released: {} open, {baseline} before",
        fd_count(pid)
    );
    let log = d.stderr_text();
    println!(
        "accept failures logged: {}",
        log.lines().filter(|l| l.contains("accept failed")).count()
    );
}
