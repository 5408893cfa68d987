//! The rules of Fulcrum's HTTP/1 codec, each sent as raw bytes through the real daemon
//! (CONTRACT.md "Request framing", "Headers", "Errors").
//!
//! Requests go to a [`Recorder`], a raw server that keeps every byte and every connection it gets:
//! for each refused head the client gets the exact status line with `Connection: close`, the
//! daemon closes the connection, and the recorder got not one byte and not one connection. The
//! answers are counted on `fulcrum_requests_total{server=""}`, exactly. A chunked body refused
//! mid-stream (over `max_body_bytes`, or malformed) has had its head forwarded already: the server
//! never gets a complete request, its connection is closed, and the answer is counted on that
//! server's series. Responses come from a
//! [`RawHttpBackend`] answering chosen bytes: an ambiguous or malformed response head is a 502
//! and a discarded server connection, a body cut short is a client connection closed early.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::admin::{metrics, series};
use support::client::{decode_chunked, head_header};
use support::raw::{RawHttpBackend, RawReply, Then};
use support::{eventually, within, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Listener `web` has the default limits but `max_body_bytes = 100`; `lax` allows `_` in names.
const CONFIG: &str = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
max_body_bytes = 100

[listeners.lax]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
allow_underscore_headers = true

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;

/// How long the daemon may take to close a connection it refused (it shuts its write side right
/// after the answer; this is a ceiling, not an expectation).
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// Ceiling for one answer, and for polls of the servers' and the exporter's counters.
const DEADLINE: Duration = Duration::from_secs(5);

/// The status lines Fulcrum writes for its own answers.
fn status_line(code: u16) -> &'static str {
    match code {
        400 => "HTTP/1.1 400 Bad Request",
        413 => "HTTP/1.1 413 Payload Too Large",
        414 => "HTTP/1.1 414 URI Too Long",
        431 => "HTTP/1.1 431 Request Header Fields Too Large",
        502 => "HTTP/1.1 502 Bad Gateway",
        other => panic!("no status line for {other}"),
    }
}

async fn start(recorder: &Recorder) -> Daemon {
    Daemon::builder(CONFIG)
        .var("A", recorder.addr())
        .start()
        .await
}

/// One request as raw bytes, and the status Fulcrum must refuse it with.
struct Vector {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
}

fn vector(name: &'static str, bytes: impl Into<Vec<u8>>, status: u16) -> Vector {
    Vector {
        name,
        bytes: bytes.into(),
        status,
    }
}

/// Sends each vector on a new connection to `addr` and checks the refusal (see [`refused`]);
/// returns how many of them were answered with each status. Called before anything is forwarded,
/// so the recorder must still be empty afterwards.
async fn refuse_all(
    addr: SocketAddr,
    recorder: &Recorder,
    vectors: &[Vector],
) -> BTreeMap<u16, usize> {
    let mut sent = BTreeMap::new();
    for v in vectors {
        refused(addr, recorder, v).await;
        *sent.entry(v.status).or_default() += 1;
    }
    // Nothing arrives late either: the recorder still has nothing after the last close.
    let (accepts, bytes) = (recorder.accepts(), recorder.bytes().len());
    assert_eq!(
        (accepts, bytes),
        (0, 0),
        "after {} refused requests the server got {accepts} connections and {bytes} bytes",
        vectors.len()
    );
    sent
}

/// Sends `v` on a new connection: the answer must be Fulcrum's own with the expected status line
/// and `Connection: close`, the connection must then close, and the server must have got neither
/// a connection nor a byte.
async fn refused(addr: SocketAddr, recorder: &Recorder, v: &Vector) {
    let name = v.name;
    let before = (recorder.accepts(), recorder.bytes().len());
    let started = Instant::now();
    let mut s = within(DEADLINE, name, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("{name}: connect {addr}: {e}"));
    // The daemon reads what a refused client still sends before it closes (lingering close),
    // so the whole vector can be written first.
    s.write_all(&v.bytes)
        .await
        .unwrap_or_else(|e| panic!("{name}: writing the request: {e}"));
    let text = own_answer(&mut s, name, v.status).await;
    let took = started.elapsed();
    let after = (recorder.accepts(), recorder.bytes().len());
    assert_eq!(
        after,
        before,
        "{name}: refused with {}, yet the server got {} connections and {} bytes",
        v.status,
        after.0 - before.0,
        after.1 - before.1
    );
    println!(
        "{name}: {} ({}) closed after {took:?}",
        status_line(v.status),
        text.trim()
    );
}

/// Reads Fulcrum's own answer on `s`: the status line of `status`, `Connection: close`, a short
/// plain-text body and nothing after it, then the close. Returns the body.
async fn own_answer(s: &mut TcpStream, name: &str, status: u16) -> String {
    // The status is checked as soon as the head is in, so that a request that was let through
    // fails here rather than at the close that never comes.
    let mut all = read_head_bytes(s, name).await;
    let (head, _) = split_head(&all).expect("a whole head");
    assert_eq!(
        head.lines().next(),
        Some(status_line(status)),
        "{name}: answered\n{head}"
    );
    assert_eq!(
        head_header(&head, "connection").map(str::to_ascii_lowercase),
        Some("close".to_string()),
        "{name}: Fulcrum's {status} carries Connection: close\n{head}"
    );
    all.extend_from_slice(&read_until_close(s, name).await);
    let (_, body) = split_head(&all).expect("a whole head");
    let length: usize = head_header(&head, "content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no Content-Length\n{head}"));
    assert_eq!(
        body.len(),
        length,
        "{name}: the body is the short text and nothing follows it: {body:?}"
    );
    let text = String::from_utf8_lossy(body).into_owned();
    assert!(
        text.starts_with(&status.to_string()),
        "{name}: plain-text body expected, got {text:?}"
    );
    text
}

/// Reads until the daemon closes the connection: everything it sent. A reset or no close within
/// [`CLOSE_DEADLINE`] fails the test.
async fn read_until_close(s: &mut TcpStream, name: &str) -> Vec<u8> {
    let mut all = Vec::new();
    let read = tokio::time::timeout(CLOSE_DEADLINE, s.read_to_end(&mut all)).await;
    match read {
        Ok(Ok(_)) => all,
        Ok(Err(e)) => panic!(
            "{name}: the connection failed ({e}) instead of closing, after {:?}",
            String::from_utf8_lossy(&all)
        ),
        Err(_) => panic!(
            "{name}: the daemon did not close the connection within {CLOSE_DEADLINE:?}; got {:?}",
            String::from_utf8_lossy(&all)
        ),
    }
}

/// Reads until `s` has delivered a whole head: everything read so far.
async fn read_head_bytes(s: &mut TcpStream, name: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    within(DEADLINE, name, async {
        while find(&buf, b"\r\n\r\n").is_none() {
            match s.read(&mut chunk).await {
                Ok(0) => panic!("{name}: closed before a whole head: {buf:?}"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{name}: the connection failed ({e}) before a whole head"),
            }
        }
    })
    .await;
    buf
}

/// The head (as text) and the bytes after it.
fn split_head(all: &[u8]) -> Option<(String, &[u8])> {
    let end = find(all, b"\r\n\r\n")? + 4;
    Some((
        String::from_utf8_lossy(&all[..end]).into_owned(),
        &all[end..],
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response with a `Content-Length` body from `s`: (head, body).
async fn read_response(s: &mut TcpStream, name: &str) -> (String, Vec<u8>) {
    within(DEADLINE, name, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((head, rest)) = split_head(&buf) {
                let length: usize = head_header(&head, "content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or_else(|| panic!("{name}: no Content-Length\n{head}"));
                if rest.len() >= length {
                    assert_eq!(rest.len(), length, "{name}: bytes after the body\n{head}");
                    return (head, rest.to_vec());
                }
            }
            let n = s
                .read(&mut chunk)
                .await
                .unwrap_or_else(|e| panic!("{name}: reading the response: {e}"));
            assert!(
                n > 0,
                "{name}: the connection closed mid-response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Sends `request` on a new connection to `addr`, expects the recorder's `200 ok` relayed, and
/// returns the request exactly as the server received it.
async fn forwarded(addr: SocketAddr, recorder: &Recorder, name: &str, request: &[u8]) -> Vec<u8> {
    let before = recorder.requests().len();
    let mut s = within(DEADLINE, name, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("{name}: connect {addr}: {e}"));
    s.write_all(request)
        .await
        .unwrap_or_else(|e| panic!("{name}: writing the request: {e}"));
    let (head, body) = read_response(&mut s, name).await;
    assert_eq!(
        head.lines().next(),
        Some("HTTP/1.1 200 OK"),
        "{name}: the server's answer should be relayed\n{head}"
    );
    assert_eq!(body, b"ok", "{name}");
    let requests = recorder.requests();
    assert_eq!(
        requests.len(),
        before + 1,
        "{name}: the server should have got exactly one complete request"
    );
    requests[before].clone()
}

/// The head lines of a request as received, without the request line and the empty line.
fn header_lines(request: &[u8]) -> Vec<String> {
    let (head, _) = split_head(request).expect("a complete request");
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The values of every `name` header of a request as received.
fn values(request: &[u8], name: &str) -> Vec<String> {
    header_lines(request)
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .collect()
}

fn request_line(request: &[u8]) -> String {
    let (head, _) = split_head(request).expect("a complete request");
    head.lines().next().unwrap_or("").to_string()
}

/// Polls `/metrics` until `fulcrum_requests_total{listener="web",upstream="app",server}` holds
/// exactly `expected` (code -> count, every other code 0); panics with the series seen.
async fn assert_counted(d: &Daemon, server: &str, expected: &BTreeMap<u16, usize>) {
    let admin = d.admin_addr();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = metrics(admin).await;
        let seen: BTreeMap<u16, usize> = text
            .lines()
            .filter(|l| support::admin::is_series(l, "fulcrum_requests_total"))
            .filter(|l| {
                l.contains("listener=\"web\"")
                    && l.contains("upstream=\"app\"")
                    && l.contains(&format!("server=\"{server}\""))
            })
            .filter_map(|l| {
                let code = l.split("code=\"").nth(1)?.split('"').next()?.parse().ok()?;
                let value = series(l, "fulcrum_requests_total", &[])[0] as usize;
                (value > 0).then_some((code, value))
            })
            .collect();
        if &seen == expected {
            println!("fulcrum_requests_total{{listener=\"web\",server=\"{server}\"}}: {seen:?}");
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "fulcrum_requests_total{{listener=\"web\",upstream=\"app\",server=\"{server}\"}}: \
                 expected {expected:?}, got {seen:?}\n{text}"
            );
        }
        tokio::time::sleep(support::POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_before_any_server() {
    let recorder = Recorder::start().await;
    let d = start(&recorder).await;
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    let vectors = [
        vector(
            "Transfer-Encoding then Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n{chunked}"
            ),
            400,
        ),
        vector(
            "Content-Length then Transfer-Encoding",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
            ),
            400,
        ),
        vector(
            "Transfer-Encoding: gzip, chunked",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{chunked}"),
            400,
        ),
        vector(
            "Transfer-Encoding: identity",
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n{chunked}"),
            400,
        ),
        vector(
            "two Transfer-Encoding: chunked lines",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
            ),
            400,
        ),
        vector(
            "Transfer-Encoding in an HTTP/1.0 request",
            format!("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"),
            400,
        ),
        vector(
            "Content-Length: abc",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nhello",
            400,
        ),
        vector(
            "Content-Length: +5",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            400,
        ),
        vector(
            "Content-Length: 5, 5",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
            400,
        ),
        vector(
            "two Content-Length: 5 lines",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            400,
        ),
    ];
    let sent = refuse_all(d.addr("web"), &recorder, &vectors).await;
    assert_counted(&d, "", &sent).await;

    // The same requests framed one way only are forwarded (the refusals were for the framing).
    let ok = forwarded(
        d.addr("web"),
        &recorder,
        "Transfer-Encoding: chunked alone",
        format!("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}")
            .as_bytes(),
    )
    .await;
    assert!(ok.ends_with(chunked.as_bytes()), "{ok:?}");
    let ok = forwarded(
        d.addr("web"),
        &recorder,
        "Content-Length: 5 alone",
        b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(values(&ok, "content-length"), ["5"]);
    assert!(ok.ends_with(b"\r\n\r\nhello"), "{ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_target_rules() {
    let recorder = Recorder::start().await;
    let d = start(&recorder).await;
    let vectors = [
        vector(
            "HTTP/1.1 without Host",
            "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
            400,
        ),
        vector(
            "two Host lines",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
            400,
        ),
        vector("Host: a b", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        vector("Host: a/b", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        vector("GET *", "GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ];
    let sent = refuse_all(d.addr("web"), &recorder, &vectors).await;
    assert_counted(&d, "", &sent).await;

    let web = d.addr("web");
    let options = forwarded(
        web,
        &recorder,
        "OPTIONS *",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(request_line(&options), "OPTIONS * HTTP/1.1");

    let absolute = forwarded(
        web,
        &recorder,
        "absolute-form target",
        b"GET http://svc.test:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n",
    )
    .await;
    println!(
        "absolute-form forwarded as:\n{}",
        String::from_utf8_lossy(&absolute)
    );
    assert_eq!(request_line(&absolute), "GET /x?y HTTP/1.1");
    assert_eq!(
        values(&absolute, "host"),
        ["svc.test:81"],
        "exactly one Host, the target's authority"
    );

    let mut served = BTreeMap::new();
    served.insert(200, 2);
    assert_counted(&d, &recorder.addr().to_string(), &served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_lines_are_refused_before_any_server() {
    let recorder = Recorder::start().await;
    let d = start(&recorder).await;
    let vectors = [
        vector(
            "whitespace before the colon",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
            400,
        ),
        vector(
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
            400,
        ),
        vector(
            "NUL in a value",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\x002\r\n\r\n",
            400,
        ),
        vector(
            "lone CR in a value",
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r2\r\n\r\n",
            400,
        ),
        vector(
            "( in a name",
            "GET / HTTP/1.1\r\nHost: x\r\nX(A: 1\r\n\r\n",
            400,
        ),
        vector(
            "X_User: 1",
            "GET / HTTP/1.1\r\nHost: x\r\nX_User: 1\r\n\r\n",
            400,
        ),
        vector(
            "bare-LF line endings",
            "GET / HTTP/1.1\nHost: x\nX-A: 1\n\n",
            400,
        ),
        vector(
            "one bare LF among CRLFs",
            "GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n",
            400,
        ),
    ];
    let sent = refuse_all(d.addr("web"), &recorder, &vectors).await;
    assert_counted(&d, "", &sent).await;

    let lax = forwarded(
        d.addr("lax"),
        &recorder,
        "X_User: 1 with allow_underscore_headers",
        b"GET /u HTTP/1.1\r\nHost: x\r\nX_User: 1\r\n\r\n",
    )
    .await;
    assert!(
        header_lines(&lax).iter().any(|l| l == "X_User: 1"),
        "the header should reach the server intact: {:?}",
        String::from_utf8_lossy(&lax)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_before_any_server() {
    let recorder = Recorder::start().await;
    let d = start(&recorder).await;
    let big = |n: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(n)
        )
    };
    let lines = |n: usize| {
        let mut head = String::from("GET /lines HTTP/1.1\r\nHost: x\r\n");
        for i in 1..n {
            head.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        head + "\r\n"
    };
    let uri = |n: usize| format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(n - 1));
    let body = |n: usize| {
        format!(
            "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n{}",
            "b".repeat(n)
        )
    };
    let vectors = [
        vector("a 40 KiB head", big(40 * 1024), 431),
        vector("a 70 KiB head", big(70 * 1024), 431),
        vector("101 header lines", lines(101), 431),
        vector("a 9 KiB URI", uri(9 * 1024), 414),
        vector("Content-Length 101 over max_body_bytes 100", body(101), 413),
    ];
    let sent = refuse_all(d.addr("web"), &recorder, &vectors).await;
    assert_counted(&d, "", &sent).await;

    let web = d.addr("web");
    let hundred = forwarded(web, &recorder, "100 header lines", lines(100).as_bytes()).await;
    let got = header_lines(&hundred);
    for i in 1..100 {
        assert!(
            got.contains(&format!("X-H{i}: {i}")),
            "100 header lines: X-H{i} missing"
        );
    }
    let long = forwarded(web, &recorder, "an 8 KiB URI", uri(8 * 1024).as_bytes()).await;
    assert_eq!(
        request_line(&long),
        format!("GET /{} HTTP/1.1", "u".repeat(8 * 1024 - 1))
    );
    let hundred_bytes = forwarded(
        web,
        &recorder,
        "Content-Length 100 at max_body_bytes 100",
        body(100).as_bytes(),
    )
    .await;
    assert!(
        hundred_bytes.ends_with(format!("\r\n\r\n{}", "b".repeat(100)).as_bytes()),
        "the whole body reaches the server"
    );
    let mut served = BTreeMap::new();
    served.insert(200, 3);
    assert_counted(&d, &recorder.addr().to_string(), &served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_bodies_never_reach_the_server_whole() {
    let recorder = Recorder::start().await;
    let d = start(&recorder).await;
    let web = d.addr("web");
    let server = recorder.addr().to_string();
    let mut sent = BTreeMap::new();

    // A chunked body over max_body_bytes: its size is not known from the head, so the head is
    // forwarded and the body streams; the 101st byte ends it. The server must then never see a
    // complete request: its connection is closed before the body's end (no last chunk).
    let head = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let first = format!("40\r\n{}\r\n", "a".repeat(64));
    let second = format!("40\r\n{}\r\n0\r\n\r\n", "b".repeat(64));
    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(format!("{head}{first}").as_bytes())
        .await
        .unwrap();
    assert!(
        eventually(DEADLINE, || recorder.bytes().ends_with(first.as_bytes())).await,
        "the head and the first 64 bytes should stream to the server; it has {:?}",
        String::from_utf8_lossy(&recorder.bytes())
    );
    s.write_all(second.as_bytes()).await.unwrap();
    own_answer(&mut s, "chunked body over max_body_bytes", 413).await;
    *sent.entry(413).or_default() += 1;
    assert!(
        eventually(DEADLINE, || recorder.closed() == 1).await,
        "the server connection should be closed after the 413"
    );
    let got = recorder.bytes();
    let body_start = find(&got, b"\r\n\r\n").expect("the head reached the server") + 4;
    let full = format!("{first}{second}");
    let body = &got[body_start..];
    assert!(
        full.as_bytes().starts_with(body) && body.len() < full.len(),
        "the server got {} of the {} body bytes, which must be a strict prefix: {:?}",
        body.len(),
        full.len(),
        String::from_utf8_lossy(body)
    );
    assert_eq!(
        (recorder.accepts(), recorder.requests().len()),
        (1, 0),
        "one connection, never a complete request"
    );
    println!(
        "chunked body over max_body_bytes: 413; the server got {} body bytes of {} and its \
         connection closed",
        body.len(),
        full.len()
    );

    // A bad chunk-size line: the head went ahead of it, not one byte of the bad body follows.
    let head = "POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(head.as_bytes()).await.unwrap();
    assert!(
        eventually(DEADLINE, || recorder.accepts() == 2
            && recorder.bytes().ends_with(b"\r\n\r\n"))
        .await,
        "the head should reach the server"
    );
    let before = recorder.bytes().len();
    s.write_all(b"zz\r\nhello\r\n0\r\n\r\n").await.unwrap();
    let text = own_answer(&mut s, "malformed chunk size line", 400).await;
    println!("malformed chunk size line: {}", text.trim());
    *sent.entry(400).or_default() += 1;
    assert!(
        eventually(DEADLINE, || recorder.closed() == 2).await,
        "the server connection should be closed after the 400"
    );
    assert_eq!(
        recorder.bytes().len(),
        before,
        "bytes of the malformed body reached the server"
    );
    assert_eq!(recorder.requests().len(), 0, "never a complete request");

    // Both answers are Fulcrum's own, counted on the server the head had gone to.
    assert_counted(&d, &server, &sent).await;
    assert_counted(&d, "", &BTreeMap::new()).await;
}

/// The response vectors: what the raw server answers for each path.
fn broken_response(path: &str) -> RawReply {
    let bytes = match path {
        "/cl-te" => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5\r\nhello\r\n0\r\n\r\n"
            .to_string(),
        "/two-cl" => {
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_string()
        }
        "/status" => "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
        "/big-head" => format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(65 * 1024)
        ),
        "/short-length" => {
            return RawReply::new(
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                Then::Close,
            )
        }
        "/short-chunked" => {
            return RawReply::new(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                Then::Close,
            )
        }
        _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
    };
    RawReply::new(bytes, Then::KeepAlive)
}

async fn raw_daemon() -> (RawHttpBackend, Daemon) {
    let backend = RawHttpBackend::start(|req| broken_response(&req.path)).await;
    let d = Daemon::builder(CONFIG)
        .var("A", backend.addr())
        .start()
        .await;
    (backend, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_response_heads_get_502_and_a_new_server_connection() {
    let (backend, d) = raw_daemon().await;
    let mut c = TcpStream::connect(d.addr("web")).await.expect("connect");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    c.write_all(get("/ok").as_bytes()).await.unwrap();
    let (head, _) = read_response(&mut c, "first /ok").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let vectors = [
        ("Content-Length with Transfer-Encoding", "/cl-te"),
        ("two differing Content-Lengths", "/two-cl"),
        ("status line HTTP/1.1 2000 OK", "/status"),
        ("a head over 64 KiB", "/big-head"),
    ];
    for (name, path) in vectors {
        let (accepts, closed) = (backend.accepts(), backend.closed());
        c.write_all(get(path).as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut c, name).await;
        assert_eq!(
            head.lines().next(),
            Some(status_line(502)),
            "{name}\n{head}"
        );
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.starts_with("502"),
            "{name}: Fulcrum's own answer: {body:?}"
        );
        let started = Instant::now();
        assert!(
            eventually(DEADLINE, || backend.closed() == closed + 1).await,
            "{name}: the daemon should close the connection that carried the broken response \
             (server connections: {} accepted, {} closed)",
            backend.accepts(),
            backend.closed()
        );
        let close_took = started.elapsed();
        // The client connection stays open for the next request, which needs a new server
        // connection: the only one there was is gone.
        let at_next = backend.accepts();
        c.write_all(get("/ok").as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut c, &format!("{name}: the next request")).await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "{name}: next\n{head}"
        );
        assert_eq!(body, b"ok");
        assert_eq!(
            backend.accepts(),
            at_next + 1,
            "{name}: the next request should open a new server connection"
        );
        println!(
            "{name}: 502, server connection closed within {close_took:?}; \
             server connections accepted {accepts} -> {}",
            backend.accepts()
        );
    }
    let mut served = BTreeMap::new();
    served.insert(200, 1 + vectors.len());
    served.insert(502, vectors.len());
    assert_counted(&d, &backend.addr().to_string(), &served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_cut_short_close_the_client_connection() {
    let (backend, d) = raw_daemon().await;
    let web = d.addr("web");

    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(b"GET /short-length HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let all = read_until_close(&mut s, "Content-Length 10, 5 bytes").await;
    let (head, body) = split_head(&all).expect("the head is relayed");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(head_header(&head, "content-length"), Some("10"), "{head}");
    assert!(
        body.len() < 10,
        "the client should see fewer than 10 body bytes, then the close: {body:?}"
    );
    println!(
        "Content-Length 10 cut after 5: the client got {} body bytes, then the close",
        body.len()
    );

    let mut s = TcpStream::connect(web).await.expect("connect");
    s.write_all(b"GET /short-chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let all = read_until_close(&mut s, "chunked without the last chunk").await;
    let (head, body) = split_head(&all).expect("the head is relayed");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        head_header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert!(
        find(body, b"0\r\n\r\n").is_none() && decode_chunked(body).is_none(),
        "the client must not see a final chunk: {:?}",
        String::from_utf8_lossy(body)
    );
    println!(
        "chunked cut before the last chunk: the client got {:?}, then the close",
        String::from_utf8_lossy(body)
    );
    assert_eq!(backend.requests(), 2);
}

/// A raw HTTP/1.1 server that records every byte it receives, on every connection, and every
/// connection it accepts; it answers each complete request it can frame (a head, then a
/// `Content-Length` or chunked body) with `200 ok`, and never anything else.
struct Recorder {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Log {
    accepts: usize,
    closed: usize,
    /// Every byte received, in arrival order across connections.
    bytes: Vec<u8>,
    /// Every complete request (head and body) received, in order.
    requests: Vec<Vec<u8>>,
}

const RECORDER_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().expect("recorder addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let l = log.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                l.lock().unwrap().accepts += 1;
                tokio::spawn(record(stream, l.clone()));
            }
        });
        Recorder { addr, log, accept }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn accepts(&self) -> usize {
        self.log.lock().unwrap().accepts
    }

    /// Connections the peer has closed.
    fn closed(&self) -> usize {
        self.log.lock().unwrap().closed
    }

    fn bytes(&self) -> Vec<u8> {
        self.log.lock().unwrap().bytes.clone()
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().requests.clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Records one connection until the peer closes it.
async fn record(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
    let mut unread = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    'conn: loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        log.lock().unwrap().bytes.extend_from_slice(&chunk[..n]);
        unread.extend_from_slice(&chunk[..n]);
        while let Some(len) = complete_request(&unread) {
            log.lock().unwrap().requests.push(unread[..len].to_vec());
            unread.drain(..len);
            if stream.write_all(RECORDER_ANSWER).await.is_err() {
                break 'conn;
            }
        }
    }
    log.lock().unwrap().closed += 1;
}

/// The length of the complete request at the start of `buf`, if there is one that can be framed
/// (a malformed body never completes).
fn complete_request(buf: &[u8]) -> Option<usize> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = &buf[head_end..];
    if head_header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return chunked_len(body).map(|n| head_end + n);
    }
    let length: usize = match head_header(&head, "content-length") {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    (body.len() >= length).then_some(head_end + length)
}

/// The length of the complete chunked body (no trailers) at the start of `body`.
fn chunked_len(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let eol = at + find(&body[at..], b"\r\n")?;
        let line = std::str::from_utf8(&body[at..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = eol + 2;
        if size == 0 {
            return (body.len() >= at + 2 && &body[at..at + 2] == b"\r\n").then_some(at + 2);
        }
        if body.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// Found by fuzzing the codec: `Connection` naming `Content-Length` must not strip the framing,
/// or the server would read the body as a second request (smuggling). The length stays, the body
/// arrives as the body, and an HTTP/1.0 request without `Host` reaches the server with an empty
/// one (RFC 9112 §3.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_the_framing_and_http10_gets_a_host() {
    let recorder = Recorder::start().await;
    let d = start(&recorder).await;
    let web = d.addr("web");
    let smuggle = b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 28\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n\r\n";
    let seen = forwarded(web, &recorder, "Connection: content-length", smuggle).await;
    assert_eq!(values(&seen, "content-length"), ["28"]);
    assert!(
        seen.ends_with(b"\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(
        recorder.requests().len(),
        1,
        "the body was read as a second request"
    );

    let old = forwarded(
        web,
        &recorder,
        "HTTP/1.0 without Host",
        b"GET /old HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(request_line(&old), "GET /old HTTP/1.1");
    assert_eq!(values(&old, "host"), [""]);
}
