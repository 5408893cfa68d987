//! Fulcrum's HTTP/1 engine (`src/proxy/http/` on the `src/proxy/h1/` codec) through the real
//! daemon, with raw sockets wherever framing matters: the client-side timeouts (CONTRACT.md
//! "Timeouts on the client side"), a client that leaves mid-upload, pipelining, HTTP/1.0,
//! `Expect: 100-continue`, bodiless responses, the header rules the old core left untested
//! ("Headers"), the server pool's expiry, cap and hygiene, and the bytes that follow a WebSocket
//! upgrade request.
//!
//! Lower time bounds are taken from an instant the daemon cannot have started its timer before (the
//! client's first write, its connect), so they are exact, with one allowance explained at
//! [`TIMER_AFTER_WRITE`]; upper bounds are ceilings of 10 × the expected time or more (CONTRACT.md
//! "Tests"). The timing tests print what they measured.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use support::admin::server_status;
use support::backend::{WS_ACCEPT, WS_KEY};
use support::client::{self, echo_roundtrip, head_header, read_head, read_to_eof, H1Client};
use support::raw::{RawHttpBackend, RawReply, Then};
use support::{eventually, fnv1a, pattern, within, Behaviour, Daemon, HttpBackend, POLL};

/// The listener's `client_header_timeout` in the head tests.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// The listener's `idle_timeout` in the idle tests.
const IDLE: Duration = Duration::from_millis(300);

/// The listener line that sets [`HEADER_TIMEOUT`].
fn header_timeout() -> String {
    format!(
        "client_header_timeout = \"{}ms\"",
        HEADER_TIMEOUT.as_millis()
    )
}

/// The listener line that sets [`IDLE`].
fn idle_timeout() -> String {
    format!("idle_timeout = \"{}ms\"", IDLE.as_millis())
}

/// How long a test waits for something the daemon does at once (a close, a count settling).
const SETTLE: Duration = Duration::from_secs(5);

/// Starts a daemon with `workers` worker threads, an admin endpoint, and listener `web` over
/// upstream `app` whose servers are `servers`; `listener` and `upstream` are appended to their
/// tables (`upstream` may end with a sub-table such as `[upstreams.app.ejection]`).
async fn daemon(workers: usize, listener: &str, upstream: &str, servers: &[SocketAddr]) -> Daemon {
    let servers = servers
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"
[runtime]
worker_threads = {workers}
shutdown_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
{listener}

[upstreams.app]
servers = [ {servers} ]
{upstream}
"#
    );
    Daemon::builder(&config).start().await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the complete chunked body at the start of `raw` (trailers included), `None`
/// while it is incomplete.
fn chunked_len(raw: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let eol = at + find(&raw[at..], b"\r\n")?;
        let line = std::str::from_utf8(&raw[at..eol]).expect("chunk size line");
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
        at = eol + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let eol = at + find(&raw[at..], b"\r\n")?;
                let empty = eol == at;
                at = eol + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        if raw.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// A response as a [`RawClient`] read it.
struct RawResponse {
    head: String,
    status: u16,
    /// The body as it was on the wire (chunk framing included).
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        head_header(&self.head, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1 client connection: writes bytes as given, reads responses one at a time by their
/// framing, and keeps what arrives past one response for the next.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let stream = within(client::CLIENT_DEADLINE, "connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("write");
    }

    /// Appends one read to the buffer; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads until the buffer holds a whole head and `body` bytes after it; the head's length.
    async fn fill_head_and(&mut self, body: usize) -> usize {
        within(client::CLIENT_DEADLINE, "reading a head", async {
            loop {
                if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                    if self.buf.len() >= at + 4 + body {
                        return at + 4;
                    }
                }
                assert!(
                    self.fill().await,
                    "EOF; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        })
        .await
    }

    /// The next response; `to_head`: it answers a HEAD request, so it has no body whatever its
    /// head says.
    async fn response(&mut self, to_head: bool) -> RawResponse {
        let end = self.fill_head_and(0).await;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let body = within(client::CLIENT_DEADLINE, "reading a body", async {
            let len = if to_head || status < 200 || status == 204 || status == 304 {
                Some(0)
            } else if head_header(&head, "transfer-encoding").is_some() {
                loop {
                    if let Some(n) = chunked_len(&self.buf) {
                        break Some(n);
                    }
                    assert!(self.fill().await, "EOF in a chunked body after\n{head}");
                }
            } else if let Some(len) = head_header(&head, "content-length") {
                let n: usize = len.parse().expect("content-length");
                while self.buf.len() < n {
                    assert!(self.fill().await, "EOF in a body after\n{head}");
                }
                Some(n)
            } else {
                None
            };
            match len {
                Some(n) => self.buf.drain(..n).collect(),
                None => {
                    while self.fill().await {}
                    std::mem::take(&mut self.buf)
                }
            }
        })
        .await;
        RawResponse { head, status, body }
    }

    /// Reads until the server closes: what arrived before (bytes already buffered included), or
    /// why the read failed.
    async fn until_eof(&mut self) -> Result<Vec<u8>, String> {
        let rest = read_to_eof(&mut self.stream).await?;
        let mut all = std::mem::take(&mut self.buf);
        all.extend_from_slice(&rest);
        Ok(all)
    }
}

/// Polls `/status` until server `addr`'s entry satisfies `cond`, and returns it; panics with the
/// last entry after [`SETTLE`].
async fn status_until(admin: SocketAddr, addr: SocketAddr, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let s = server_status(admin, "app", addr).await;
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not settle within {SETTLE:?}: {s:#}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Aborts a spawned task when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---- Timeouts on the client side -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_head_gets_408_after_client_header_timeout_and_reaches_no_server() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(2, &header_timeout(), "", &[app.addr()]).await;
    let mut c = RawClient::connect(d.addr("web")).await;
    let started = Instant::now();
    c.send("GET /partial HTTP/1.1\r\nHost: partial.example\r\nX-Rest: never sent")
        .await;
    let r = c.response(false).await;
    let took = started.elapsed();
    println!("partial head: {} after {took:?}", r.status);
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert!(
        took >= HEADER_TIMEOUT,
        "408 after {took:?}, before client_header_timeout"
    );
    assert!(took < HEADER_TIMEOUT * 10, "408 after {took:?}");
    assert_eq!(c.until_eof().await, Ok(Vec::new()), "closed after the 408");
    assert_eq!(
        (app.accepts(), app.requests()),
        (0, 0),
        "a partial head reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_gets_408_from_its_first_byte_not_per_read() {
    const TRICKLE: Duration = Duration::from_millis(100);
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(2, &header_timeout(), "", &[app.addr()]).await;
    let head = format!(
        "GET /slow HTTP/1.1\r\nHost: slow.example\r\nUser-Agent: one byte per 100 ms\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(40)
    );
    // When the last byte would go out.
    let whole = TRICKLE * (head.len() as u32 - 1);
    let stream = TcpStream::connect(d.addr("web")).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut read, mut write) = stream.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writer = {
        let (sent, bytes) = (sent.clone(), head.clone().into_bytes());
        Task(tokio::spawn(async move {
            for b in bytes {
                if write.write_all(&[b]).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                // The trickle itself: one byte per read, each well within any per-read timer.
                tokio::time::sleep(TRICKLE).await;
            }
            // The write half stays open (dropping it would send a FIN) until the task is aborted.
            std::future::pending::<()>().await;
        }))
    };
    let (answer, _) = within(
        HEADER_TIMEOUT * 10,
        "408 to a slowloris",
        read_head(&mut read),
    )
    .await;
    let took = started.elapsed();
    let sent_then = sent.load(Ordering::SeqCst);
    println!(
        "slowloris: {:?} after {took:?}, {sent_then} of {} head bytes sent (the head would be whole after {whole:?})",
        answer.lines().next().unwrap_or(""),
        head.len()
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(
        head_header(&answer, "connection"),
        Some("close"),
        "{answer}"
    );
    assert!(
        took >= HEADER_TIMEOUT,
        "408 after {took:?}, before client_header_timeout"
    );
    assert!(
        took < HEADER_TIMEOUT * 10 && took < whole / 2,
        "408 after {took:?}: the timer restarted with each byte"
    );
    assert!(sent_then < head.len() / 2, "{sent_then} bytes sent");
    read_to_eof(&mut read)
        .await
        .expect("the connection closes after the 408");
    drop(writer);
    assert_eq!(app.accepts(), 0, "a partial head reached the server");
}

/// The daemon arms its idle timer just after writing a response, and the client can read that
/// response before the daemon reads its clock: a quiet close measured from the client's read may
/// come this much under `idle_timeout`.
const TIMER_AFTER_WRITE: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_quietly_after_idle_timeout() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(2, &idle_timeout(), "", &[app.addr()]).await;
    let web = d.addr("web");

    // After one complete exchange.
    let mut c = RawClient::connect(web).await;
    c.send("GET / HTTP/1.1\r\nHost: idle.example\r\n\r\n").await;
    let r = c.response(false).await;
    let answered = Instant::now();
    assert_eq!((r.status, r.text().as_str()), (200, "app"), "{}", r.head);
    assert_eq!(r.header("connection"), None, "{}", r.head);
    let tail = c.until_eof().await;
    let idle_for = answered.elapsed();
    println!("keep-alive connection closed {idle_for:?} after its response");
    assert_eq!(tail, Ok(Vec::new()), "a quiet close sends nothing");
    assert!(
        idle_for + TIMER_AFTER_WRITE >= IDLE,
        "closed {idle_for:?} after the response"
    );
    assert!(
        idle_for < IDLE * 10,
        "still open {idle_for:?} after the response"
    );

    // A connection that never sends a byte.
    let mut silent = RawClient::connect(web).await;
    let connected = Instant::now();
    let tail = silent.until_eof().await;
    let took = connected.elapsed();
    println!("silent connection closed after {took:?}");
    assert_eq!(tail, Ok(Vec::new()), "a quiet close sends nothing");
    assert!(took >= IDLE, "closed after {took:?}");
    assert!(took < IDLE * 10, "still open after {took:?}");
    assert_eq!(app.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_after_idle_timeout_and_no_server_is_blamed() {
    let a = HttpBackend::start("a", Behaviour::Checksum).await;
    let b = HttpBackend::start("b", Behaviour::Checksum).await;
    // One failure would eject a server (one of two may be ejected): the stalls must count as none.
    let d = daemon(
        2,
        &idle_timeout(),
        "[upstreams.app.ejection]\nconsecutive_failures = 1",
        &[a.addr(), b.addr()],
    )
    .await;
    // Round robin: one stalled upload for each server.
    for i in 0..2 {
        let mut c = RawClient::connect(d.addr("web")).await;
        let started = Instant::now();
        c.send("POST /upload HTTP/1.1\r\nHost: stall.example\r\nContent-Length: 10\r\n\r\nabc")
            .await;
        let r = c.response(false).await;
        let took = started.elapsed();
        println!(
            "upload {i} stalled after 3 of 10 bytes: {} after {took:?}",
            r.status
        );
        assert_eq!(r.status, 408, "{}", r.head);
        assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
        assert!(r.header("x-backend").is_none(), "{}", r.head);
        assert!(took >= IDLE, "408 after {took:?}, before idle_timeout");
        assert!(took < IDLE * 10, "408 after {took:?}");
        assert_eq!(c.until_eof().await, Ok(Vec::new()), "closed after the 408");
    }
    assert_eq!((a.requests(), b.requests()), (1, 1));
    assert!(
        eventually(SETTLE, || a.closed() == 1 && b.closed() == 1).await,
        "the stalled uploads' server connections stayed open"
    );
    for server in [&a, &b] {
        let s = server_status(d.admin_addr(), "app", server.addr()).await;
        assert_eq!(
            s["failures"], 0,
            "a stalled client blamed on the server: {s}"
        );
        assert_eq!(s["state"], "up", "{s}");
        assert_eq!(s["in_flight"], 0, "{s}");
    }
}

// ---- A client that leaves mid-upload ---------------------------------------------------------

/// The daemon's open descriptors, by what they point at.
fn open_fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(Result::ok)
        .map(|e| match std::fs::read_link(e.path()) {
            Ok(target) => target.display().to_string(),
            Err(_) => "(closed while listed)".to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_upload_cuts_the_server_request_at_once_and_leaks_nothing() {
    const DECLARED: usize = 10 * 1024 * 1024;
    const SENT: usize = 1024 * 1024;
    const CLIENTS: usize = 21;
    let sum = HttpBackend::start("sum", Behaviour::Checksum).await;
    let d = daemon(2, "", "", &[sum.addr()]).await;
    let web = d.addr("web");
    let baseline = open_fds(d.pid());
    let body = pattern(0, SENT);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: gone.example\r\nContent-Length: {DECLARED}\r\n\r\n"
    );
    let mut cut_after = Vec::new();
    for i in 0..CLIENTS {
        let mut c = RawClient::connect(web).await;
        c.send(&head).await;
        c.send(&body).await;
        assert!(
            eventually(SETTLE, || sum.requests() == i + 1).await,
            "client {i}: the upload never reached the server"
        );
        assert_eq!(
            sum.closed(),
            i,
            "client {i}: a server connection closed early"
        );
        let left = Instant::now();
        drop(c);
        assert!(
            eventually(SETTLE, || sum.closed() == i + 1).await,
            "client {i}: the server's connection still open {SETTLE:?} after the client left"
        );
        cut_after.push(left.elapsed());
    }
    let slowest = cut_after.iter().max().copied().unwrap_or_default();
    println!("server connection closed after the client left: {cut_after:?}");
    assert!(slowest < Duration::from_secs(1), "cut after {slowest:?}");
    assert_eq!(sum.accepts(), CLIENTS, "a cut connection was pooled");

    let s = status_until(d.admin_addr(), sum.addr(), |s| s["in_flight"] == 0).await;
    assert_eq!(
        s["failures"], 0,
        "a departed client blamed on the server: {s}"
    );
    assert_eq!(s["state"], "up", "{s}");

    // Every client socket and server socket is closed again.
    let deadline = Instant::now() + SETTLE;
    let started = Instant::now();
    loop {
        let now = open_fds(d.pid());
        if now.len() == baseline.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} descriptors open {SETTLE:?} after the last client, {} before the first\nbefore: {baseline:?}\nafter: {now:?}",
            now.len(),
            baseline.len()
        );
        tokio::time::sleep(POLL).await;
    }
    println!(
        "descriptors back to {} within {:?}",
        baseline.len(),
        started.elapsed()
    );
}

// ---- Pipelining, HTTP/1.0, 100-continue, bodiless responses ----------------------------------

/// A raw server that answers each request with `METHOD PATH`, then ` BODY` when it had one (a
/// chunked body as received), keeping the connection open.
async fn echo_path_backend() -> RawHttpBackend {
    RawHttpBackend::start(|req| {
        let mut text = format!("{} {}", req.method, req.path);
        if !req.body.is_empty() {
            text.push(' ');
            text.push_str(&String::from_utf8_lossy(&req.body));
        }
        RawReply::new(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            ),
            Then::KeepAlive,
        )
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let echo = echo_path_backend().await;
    let d = daemon(2, "", "", &[echo.addr()]).await;
    let mut c = RawClient::connect(d.addr("web")).await;
    let host = "Host: pipe.example\r\n";
    let writes = [
        (
            format!("GET /one HTTP/1.1\r\n{host}\r\nGET /two HTTP/1.1\r\n{host}\r\nGET /three HTTP/1.1\r\n{host}\r\n"),
            vec!["GET /one", "GET /two", "GET /three"],
        ),
        (
            format!("POST /form HTTP/1.1\r\n{host}Content-Length: 11\r\n\r\nhello worldGET /after HTTP/1.1\r\n{host}\r\n"),
            vec!["POST /form hello world", "GET /after"],
        ),
        (
            format!("POST /chunks HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /last HTTP/1.1\r\n{host}\r\n"),
            vec!["POST /chunks 5\r\nhello\r\n0\r\n\r\n", "GET /last"],
        ),
    ];
    for (bytes, expected) in writes {
        c.send(&bytes).await;
        let mut got = Vec::new();
        for _ in &expected {
            let r = c.response(false).await;
            assert_eq!(r.status, 200, "{}", r.head);
            assert_eq!(r.header("connection"), None, "{}", r.head);
            got.push(r.text());
        }
        assert_eq!(got, expected, "responses to one write of {bytes:?}");
        assert!(
            c.buf.is_empty(),
            "bytes past the last response: {:?}",
            c.buf
        );
    }
    assert_eq!(echo.requests(), 7);
    assert_eq!(echo.accepts(), 1, "one server connection, reused in turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_close_or_keep_alive_and_chunked_bodies_dechunked() {
    let backend = RawHttpBackend::start(|req| {
        let bytes = if req.path == "/chunked" {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                .to_string()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                req.path.len(),
                req.path
            )
        };
        RawReply::new(bytes, Then::KeepAlive)
    })
    .await;
    let d = daemon(2, "", "", &[backend.addr()]).await;
    let web = d.addr("web");

    // Without keep-alive: `Connection: close`, then the close.
    let mut c = RawClient::connect(web).await;
    c.send("GET /plain HTTP/1.0\r\nHost: old.example\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/plain"), "{}", r.head);
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert_eq!(
        c.until_eof().await,
        Ok(Vec::new()),
        "closed after the response"
    );

    // With `Connection: keep-alive`: said back, and the connection carries a second request.
    let mut c = RawClient::connect(web).await;
    for path in ["/first", "/second"] {
        c.send(format!(
            "GET {path} HTTP/1.0\r\nHost: old.example\r\nConnection: keep-alive\r\n\r\n"
        ))
        .await;
        let r = c.response(false).await;
        assert_eq!((r.status, r.text().as_str()), (200, path), "{}", r.head);
        assert!(
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")),
            "{}",
            r.head
        );
    }

    // A chunked response: the data alone, delimited by the close (also when keep-alive was asked).
    for keep_alive in ["", "Connection: keep-alive\r\n"] {
        let mut c = RawClient::connect(web).await;
        c.send(format!(
            "GET /chunked HTTP/1.0\r\nHost: old.example\r\n{keep_alive}\r\n"
        ))
        .await;
        let (head, rest) = read_head(&mut c.stream).await;
        let body = [rest, read_to_eof(&mut c.stream).await.expect("read to EOF")].concat();
        println!(
            "HTTP/1.0 {keep_alive:?}, chunked response:\n{head}{}",
            String::from_utf8_lossy(&body)
        );
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(head_header(&head, "transfer-encoding"), None, "{head}");
        assert_eq!(head_header(&head, "content-length"), None, "{head}");
        assert_eq!(head_header(&head, "connection"), Some("close"), "{head}");
        assert_eq!(String::from_utf8_lossy(&body), "hello world", "{head}");
    }
    assert_eq!(backend.requests(), 5);
}

/// A raw server that answers `Expect: 100-continue` with `100 Continue` as soon as it has the
/// head, then reads the `Content-Length` body and sends it back in a 200.
async fn continue_echo_backend() -> (SocketAddr, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(at) = find(&buf, b"\r\n\r\n") {
                        break at + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head_header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if head_header(&head, "expect")
                    .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
                    && s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                {
                    return;
                }
                let mut body = buf.split_off(end);
                while body.len() < len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
                answer.extend_from_slice(&body[..len]);
                let _ = s.write_all(&answer).await;
            });
        }
    });
    (addr, Task(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_reaches_the_client_before_it_sends_its_body() {
    let hyper = HttpBackend::start("sum", Behaviour::Checksum).await;
    let (raw, _raw_task) = continue_echo_backend().await;
    let body = b"the body, sent only after 100 Continue";
    for (name, server) in [("hyper", hyper.addr()), ("raw", raw)] {
        let d = daemon(2, "", "", &[server]).await;
        let mut c = RawClient::connect(d.addr("web")).await;
        c.send(format!(
            "POST /upload HTTP/1.1\r\nHost: continue.example\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        ))
        .await;
        let interim = c.response(false).await;
        assert_eq!(interim.status, 100, "{name}: {}", interim.head);
        assert!(
            interim.head.starts_with("HTTP/1.1 100 "),
            "{name}: {}",
            interim.head
        );
        assert!(c.buf.is_empty(), "{name}: bytes after the 100: {:?}", c.buf);
        c.send(body).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{name}: {}", r.head);
        if name == "hyper" {
            let sum: Value = serde_json::from_slice(&r.body).expect("JSON");
            assert_eq!(sum["len"], body.len(), "{name}: {sum}");
            assert_eq!(sum["fnv"], format!("{:016x}", fnv1a(body)), "{name}: {sum}");
        } else {
            assert_eq!(r.body, body, "{name}");
        }
    }
    assert_eq!(hyper.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_reach_http11_clients_and_never_http10_ones() {
    // RFC 9110 §15.2: a server must not send a 1xx response to an HTTP/1.0 client, which would
    // take it for the final response.
    let backend = RawHttpBackend::start(|_| {
        RawReply::new(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            Then::KeepAlive,
        )
    })
    .await;
    let d = daemon(2, "", "", &[backend.addr()]).await;
    for version in ["1.1", "1.0"] {
        let mut c = RawClient::connect(d.addr("web")).await;
        c.send(format!(
            "GET /hints HTTP/{version}\r\nHost: hints.example\r\nConnection: keep-alive\r\n\r\n"
        ))
        .await;
        let first = c.response(false).await;
        let last = if version == "1.1" {
            assert_eq!(first.status, 103, "HTTP/{version}: {}", first.head);
            assert_eq!(
                first.header("link"),
                Some("</style.css>; rel=preload"),
                "HTTP/{version}: {}",
                first.head
            );
            c.response(false).await
        } else {
            first
        };
        assert_eq!(
            (last.status, last.text().as_str()),
            (200, "final"),
            "HTTP/{version}: {}",
            last.head
        );
        assert!(c.buf.is_empty(), "HTTP/{version}: stray bytes {:?}", c.buf);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_relay_no_body_and_the_connection_stays_in_step() {
    let backend = RawHttpBackend::start(|req| {
        let bytes = match (req.method.as_str(), req.path.as_str()) {
            ("HEAD", _) => "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Kind: head\r\n\r\n",
            (_, "/204") => "HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n",
            (_, "/304") => {
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 11\r\nETag: \"v1\"\r\n\r\n"
            }
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
        };
        RawReply::new(bytes, Then::KeepAlive)
    })
    .await;
    let d = daemon(2, "", "", &[backend.addr()]).await;
    let mut c = RawClient::connect(d.addr("web")).await;
    for (request, to_head, status, length) in [
        ("HEAD /page", true, 200, Some("11")),
        ("GET /204", false, 204, None),
        ("GET /304", false, 304, Some("11")),
    ] {
        c.send(format!(
            "{request} HTTP/1.1\r\nHost: bodiless.example\r\n\r\n"
        ))
        .await;
        let r = c.response(to_head).await;
        assert_eq!(r.status, status, "{request}: {}", r.head);
        assert_eq!(r.header("content-length"), length, "{request}: {}", r.head);
        assert_eq!(r.header("transfer-encoding"), None, "{request}: {}", r.head);
        // The next bytes on the connection must be the next response.
        c.send("GET /next HTTP/1.1\r\nHost: bodiless.example\r\n\r\n")
            .await;
        let next = c.response(false).await;
        assert_eq!(
            (next.status, next.text().as_str()),
            (200, "hello world"),
            "after {request}: {}",
            next.head
        );
        assert!(c.buf.is_empty(), "after {request}: stray bytes {:?}", c.buf);
    }
    assert_eq!(backend.requests(), 6);
    assert_eq!(
        backend.accepts(),
        1,
        "one server connection carried every exchange, so its framing stayed in step too"
    );
}

// ---- Headers ---------------------------------------------------------------------------------

/// Every value of header `name` the `EchoRequest` backend saw, in order.
fn seen(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|kv| kv[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
        .map(|kv| kv[1].as_str().expect("value").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorization_and_proxy_authenticate_are_removed() {
    let app = HttpBackend::start("app", Behaviour::EchoRequest).await;
    let d = daemon(2, "", "", &[app.addr()]).await;
    let mut c = H1Client::connect(d.addr("web")).await;
    let req = Request::builder()
        .uri("/private")
        .header("host", "auth.example")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("authorization", "Bearer end-to-end")
        .body(client::empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let echo = r.json();
    assert_eq!(
        seen(&echo, "proxy-authorization"),
        Vec::<String>::new(),
        "{echo}"
    );
    assert_eq!(
        seen(&echo, "authorization"),
        ["Bearer end-to-end"],
        "{echo}"
    );

    app.set_behaviour(Behaviour::Headers(vec![
        ("proxy-authenticate", "Basic realm=\"proxy\""),
        ("www-authenticate", "Basic realm=\"app\""),
    ]));
    let r = c.get("/private").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("proxy-authenticate"), None, "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"app\""),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_lines_are_joined_in_order_then_the_client() {
    let app = HttpBackend::start("app", Behaviour::EchoRequest).await;
    let d = daemon(2, "", "", &[app.addr()]).await;
    let mut c = RawClient::connect(d.addr("web")).await;
    c.send(
        "GET /xff HTTP/1.1\r\nHost: xff.example\r\nX-Forwarded-For: 203.0.113.7, 192.0.2.1\r\n\
         X-Other: between\r\nX-Forwarded-For: 198.51.100.9\r\n\r\n",
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let echo: Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(
        seen(&echo, "x-forwarded-for").join(", "),
        "203.0.113.7, 192.0.2.1, 198.51.100.9, 127.0.0.1",
        "{echo}"
    );
}

// ---- The server connection pool --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_pooled_connection_is_never_handed_out() {
    // The sweep closes expired connections every quarter of the timeout (100 ms) as well; a round
    // shows that checkout itself refuses them only when the request comes before the sweep did,
    // which the server sees as the old connection still open. Three such rounds are required.
    const POOL_IDLE: Duration = Duration::from_millis(400);
    const PAST_EXPIRY: Duration = Duration::from_millis(50);
    const NEEDED: usize = 3;
    const MOST_ROUNDS: usize = 20;
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    // One worker: one pool.
    let pool = format!("pool_idle_timeout = \"{}ms\"", POOL_IDLE.as_millis());
    let d = daemon(1, "", &pool, &[app.addr()]).await;
    let mut c = H1Client::connect(d.addr("web")).await;
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    let mut before_sweep = 0;
    let mut rounds = 0;
    while before_sweep < NEEDED {
        rounds += 1;
        assert!(
            rounds <= MOST_ROUNDS,
            "only {before_sweep} of {MOST_ROUNDS} rounds came before the sweep"
        );
        // One server connection open (pooled); the ones before it closed.
        assert!(
            eventually(SETTLE, || app.closed() + 1 == app.accepts()).await,
            "round {rounds}: {} connections opened, {} closed",
            app.accepts(),
            app.closed()
        );
        let (accepts, closed) = (app.accepts(), app.closed());
        // Idle past the pooled connection's expiry, on purpose.
        tokio::time::sleep(POOL_IDLE + PAST_EXPIRY).await;
        let still_open = app.closed() == closed;
        assert_eq!(c.get("/").await.status, StatusCode::OK);
        assert_eq!(
            app.accepts(),
            accepts + 1,
            "round {rounds}: a connection idle for {:?} (pool_idle_timeout {POOL_IDLE:?}) was used again{}",
            POOL_IDLE + PAST_EXPIRY,
            if still_open { " (the sweep had not closed it)" } else { "" }
        );
        before_sweep += usize::from(still_open);
    }
    println!(
        "{rounds} rounds, {before_sweep} of them before the sweep closed the expired connection"
    );
    assert!(
        eventually(SETTLE, || app.closed() == app.accepts() - 1).await,
        "expired connections left open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_max_idle_per_server_caps_the_connections_kept() {
    let gate = Arc::new(Semaphore::new(0));
    let app = HttpBackend::start("app", Behaviour::Gated(gate.clone())).await;
    // One worker: one pool, capped at one idle connection.
    let d = daemon(1, "", "pool_max_idle_per_server = 1", &[app.addr()]).await;
    let (web, admin) = (d.addr("web"), d.admin_addr());
    // Three requests at once need three connections; of those, one is kept. The next three at
    // once take it and open two more: 3 + 2 (with the cap ignored, 3 + 0).
    for (batch, accepts) in [(1, 3), (2, 5)] {
        let before = app.requests();
        let clients: Vec<_> = (0..3)
            .map(|_| tokio::spawn(client::get_once(web, "/")))
            .collect();
        assert!(
            eventually(SETTLE, || app.requests() == before + 3).await,
            "batch {batch}: three requests not all in flight"
        );
        assert_eq!(
            app.accepts(),
            accepts,
            "batch {batch}: server connections opened"
        );
        gate.add_permits(3);
        for client in clients {
            let r = client.await.expect("client task");
            assert_eq!(r.status, StatusCode::OK, "batch {batch}: {r:?}");
        }
        // Every exchange has checked its connection in (or closed it) before its slot is freed.
        status_until(admin, app.addr(), |s| s["in_flight"] == 0).await;
    }
    assert!(
        eventually(SETTLE, || app.closed() == 4).await,
        "{} of 5 connections closed: the pool kept more than one",
        app.closed()
    );
}

/// A server whose `/big` response (1 MiB, with its length) stops twice: after its head and a first
/// 64 KiB, until the test says go; then after 1 KiB more, until its connection either closes or
/// carries another request. That request gets the rest of `/big` first, as any server sends it
/// when a client reuses a connection in mid-response. Every other path gets `small`.
///
/// The second part is smaller than one read of the daemon's, so once the daemon has failed to pass
/// it on, the connection has nothing unread: only the exchange's own decision keeps it out of the
/// pool (a check of the socket at checkout would find it quiet).
struct PausingServer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    go: Arc<Notify>,
    _task: Task,
}

impl PausingServer {
    const BIG: usize = 1024 * 1024;
    const FIRST: usize = 64 * 1024;
    const SECOND: usize = 1024;
    const SMALL: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall";

    async fn start() -> PausingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(Notify::new());
        let task = {
            let (accepts, closed, go) = (accepts.clone(), closed.clone(), go.clone());
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let (closed, go) = (closed.clone(), go.clone());
                    tokio::spawn(async move {
                        Self::serve(s, &go).await;
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        };
        PausingServer {
            addr,
            accepts,
            closed,
            go,
            _task: Task(task),
        }
    }

    async fn serve(mut s: TcpStream, go: &Notify) {
        let body = pattern(0, Self::BIG);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let end = loop {
                if let Some(at) = find(&buf, b"\r\n\r\n") {
                    break at + 4;
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head: Vec<u8> = buf.drain(..end).collect();
            if !head.starts_with(b"GET /big ") {
                if s.write_all(Self::SMALL).await.is_err() {
                    return;
                }
                continue;
            }
            let start = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", Self::BIG);
            let second = Self::FIRST + Self::SECOND;
            if s.write_all(start.as_bytes()).await.is_err()
                || s.write_all(&body[..Self::FIRST]).await.is_err()
            {
                return;
            }
            go.notified().await;
            if s.write_all(&body[Self::FIRST..second]).await.is_err() {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if s.write_all(&body[second..]).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_response_was_cut_is_not_pooled() {
    let server = PausingServer::start().await;
    // One worker: the next request would find the cut connection in the same pool.
    let d = daemon(1, "", "", &[server.addr]).await;
    let web = d.addr("web");
    let mut c = RawClient::connect(web).await;
    c.send("GET /big HTTP/1.1\r\nHost: cut.example\r\n\r\n")
        .await;
    // The whole first part: the daemon has passed on all it read and waits for more.
    let end = c.fill_head_and(PausingServer::FIRST).await;
    let head = String::from_utf8_lossy(&c.buf[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // The client goes away mid-body (a reset, so the daemon's next write fails at once); the
    // server then sends more, which the daemon cannot pass on.
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(c);
    server.go.notify_one();
    let s = status_until(d.admin_addr(), server.addr, |s| s["in_flight"] == 0).await;
    assert_eq!(
        s["failures"], 0,
        "a departed client blamed on the server: {s}"
    );

    let mut c = RawClient::connect(web).await;
    c.send("GET /small HTTP/1.1\r\nHost: cut.example\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "small"),
        "the next request was answered with the rest of the cut response: {}",
        r.head
    );
    assert_eq!(
        server.accepts.load(Ordering::SeqCst),
        2,
        "a new connection for the next request"
    );
    assert!(
        eventually(SETTLE, || server.closed.load(Ordering::SeqCst) == 1).await,
        "the cut connection was never closed"
    );
}

// ---- WebSocket -------------------------------------------------------------------------------

/// A raw WebSocket server: reads the upgrade request's head, keeps what arrives with it or within
/// a moment after (none should: Fulcrum holds it until the 101), answers 101, then echoes.
struct WsServer {
    addr: SocketAddr,
    before_101: Arc<Mutex<Option<Vec<u8>>>>,
    _task: Task,
}

impl WsServer {
    /// How long the server watches for bytes before it answers 101 (idleness on purpose).
    const WATCH: Duration = Duration::from_millis(100);

    async fn start() -> WsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let before_101 = Arc::new(Mutex::new(None));
        let seen = before_101.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        if let Some(at) = find(&buf, b"\r\n\r\n") {
                            break at + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let mut early = buf.split_off(end);
                    if let Ok(Ok(n)) = tokio::time::timeout(Self::WATCH, s.read(&mut chunk)).await {
                        early.extend_from_slice(&chunk[..n]);
                    }
                    *seen.lock().unwrap() = Some(early.clone());
                    let answer = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
                    );
                    if s.write_all(answer.as_bytes()).await.is_err()
                        || s.write_all(&early).await.is_err()
                    {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        WsServer {
            addr,
            before_101,
            _task: Task(task),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_a_websocket_upgrade_request_reach_the_server_after_its_101() {
    let hyper = HttpBackend::start("ws", Behaviour::WebSocketEcho).await;
    let raw = WsServer::start().await;
    let early = b"\x81\x05early";
    for (name, server) in [("hyper", hyper.addr()), ("raw", raw.addr)] {
        let d = daemon(2, "", "", &[server]).await;
        let mut s = TcpStream::connect(d.addr("web")).await.expect("connect");
        let mut first = format!(
            "GET /ws HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
        )
        .into_bytes();
        first.extend_from_slice(early);
        s.write_all(&first).await.expect("write");
        let (head, mut echoed) = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{name}: {head}");
        within(client::CLIENT_DEADLINE, "the early bytes' echo", async {
            let mut chunk = [0u8; 64];
            while echoed.len() < early.len() {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "{name}: EOF after {echoed:?}");
                echoed.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        assert_eq!(echoed, early, "{name}: the early bytes, echoed");
        echo_roundtrip(&mut s, b"\x81\x05later").await;
    }
    assert_eq!(
        raw.before_101.lock().unwrap().as_deref(),
        Some(&[][..]),
        "bytes reached the server before its 101"
    );
    assert_eq!(hyper.requests(), 1);
}
