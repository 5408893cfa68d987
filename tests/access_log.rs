//! Access logs through the real daemon: the JSON line of a proxied request, of Fulcrum's own 503
//! and of a malformed request, every field checked; the combined format; stdout; h2 and WebSocket
//! requests; SIGUSR1 reopening a rotated file; lines dropped (and counted) when the writer cannot
//! keep up, with requests unaffected; a file that cannot be opened stopping the start; and
//! `fulcrum check` locating bad values.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::admin::{metric_sum, metrics};
use support::client::{get, head_header, read_head};
use support::{eventually, Behaviour, Daemon, H1Client, H2Client, HttpBackend};

/// How long a line may take to reach the file (the writer flushes as soon as its channel is empty).
const LINE_DEADLINE: Duration = Duration::from_secs(5);

/// `web` logs JSON to `${LOG}`; `dead` (a down server: 503) logs there too; `plain` logs the
/// combined format to `${COMBINED}`; `out` logs JSON to stdout.
const CONFIG: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
access_log = "${LOG}"

[listeners.dead]
bind = "127.0.0.1:0"
mode = "http"
upstream = "none"
access_log = "${LOG}"

[listeners.plain]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
access_log = "${COMBINED}"
access_log_format = "combined"

[listeners.out]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
access_log = "stdout"

[upstreams.app]
servers = [{ address = "${APP}" }]

[upstreams.none]
servers = [{ address = "${APP}", down = true }]
"#;

struct Setup {
    daemon: Daemon,
    app: HttpBackend,
    log: PathBuf,
    combined: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(behaviour: Behaviour) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let combined = dir.path().join("combined.log");
    let app = HttpBackend::start("backend-a", behaviour).await;
    let daemon = Daemon::builder(CONFIG)
        .var("APP", app.addr())
        .var("LOG", log.display())
        .var("COMBINED", combined.display())
        .start()
        .await;
    Setup {
        daemon,
        app,
        log,
        combined,
        _dir: dir,
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `path` holds `n` lines; returns them parsed as JSON.
async fn json_lines(path: &Path, n: usize) -> Vec<Value> {
    let appeared = eventually(LINE_DEADLINE, || read_lines(path).len() >= n).await;
    let lines = read_lines(path);
    assert!(
        appeared,
        "expected {n} lines in {}, got {lines:?}",
        path.display()
    );
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Sends `request` on a new connection; the response head and body as received, and the client's
/// own address.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>, SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(request).await.unwrap();
    let (head, mut body) = read_head(&mut stream).await;
    let len: usize = head_header(&head, "content-length")
        .unwrap()
        .parse()
        .unwrap();
    while body.len() < len {
        let mut chunk = [0; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut chunk)
            .await
            .unwrap();
        assert!(n > 0, "body cut short");
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body, local)
}

/// A time like `2026-12-01T18:00:00.123Z`, within a minute of now.
fn assert_recent_rfc3339_ms(value: &Value) {
    let text = value.as_str().expect("time is a string");
    assert_eq!(text.len(), 24, "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    let then = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let age = std::time::SystemTime::now()
        .duration_since(then)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "{text}");
}

#[tokio::test]
async fn a_proxied_request_logs_every_field() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("web");
    let sent_at = Instant::now();
    let (head, body, client) = raw_exchange(
        addr,
        b"GET /a/b?c=1&d=%22 HTTP/1.1\r\nHost: x\r\nX-Request-Id: rid-1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nUser-Agent: test\r\n\r\n",
    )
    .await;
    let elapsed = sent_at.elapsed().as_secs_f64();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"backend-a");
    let lines = json_lines(&s.log, 1).await;
    let line = &lines[0];
    assert_eq!(line.as_object().unwrap().len(), 14, "{line}");
    assert_recent_rfc3339_ms(&line["time"]);
    assert_eq!(line["listener"], "web");
    assert_eq!(line["client"], client.to_string());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/a/b?c=1&d=%22");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 9);
    assert_eq!(line["upstream"], "app");
    assert_eq!(line["server"], s.app.addr().to_string());
    assert_eq!(line["request_id"], "rid-1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let upstream_time = line["upstream_time"].as_f64().unwrap();
    let total_time = line["total_time"].as_f64().unwrap();
    assert!(upstream_time > 0.0 && upstream_time <= total_time, "{line}");
    assert!(total_time <= elapsed, "{line}: the client saw {elapsed} s");
    assert_eq!(s.app.requests(), 1);
}

#[tokio::test]
async fn fulcrums_own_503_is_logged_without_a_server() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("dead");
    let (head, body, client) =
        raw_exchange(addr, b"DELETE /gone HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let id = head_header(&head, "x-request-id")
        .expect("a request id")
        .to_string();
    let line = &json_lines(&s.log, 1).await[0];
    assert_eq!(line["listener"], "dead");
    assert_eq!(line["client"], client.to_string());
    assert_eq!(line["method"], "DELETE");
    assert_eq!(line["path"], "/gone");
    assert_eq!(line["status"], 503);
    assert_eq!(line["bytes"], body.len());
    assert_eq!(line["upstream"], "none");
    assert!(line["server"].is_null(), "{line}");
    assert!(line["upstream_time"].is_null(), "{line}");
    assert!(line["total_time"].as_f64().unwrap() > 0.0);
    assert_eq!(line["request_id"], id);
    assert!(line["trace_id"].is_null(), "{line}");
    assert_eq!(s.app.requests(), 0);
}

#[tokio::test]
async fn a_malformed_request_is_logged_with_what_is_known() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("web");
    let (head, body, client) =
        raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let line = &json_lines(&s.log, 1).await[0];
    assert_eq!(line["listener"], "web");
    assert_eq!(line["client"], client.to_string());
    assert_eq!(line["method"], "-");
    assert_eq!(line["path"], "-");
    assert_eq!(line["protocol"], "-");
    assert_eq!(line["status"], 400);
    assert_eq!(line["bytes"], body.len());
    assert_eq!(line["upstream"], "app");
    assert!(
        line["server"].is_null() && line["upstream_time"].is_null(),
        "{line}"
    );
    assert!(line["request_id"].is_null(), "{line}");
    assert_eq!(s.app.requests(), 0);
}

#[tokio::test]
async fn h2_streams_and_websocket_upgrades_get_lines() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("web");
    let mut h2 = H2Client::connect(addr).await;
    let req = http::Request::builder()
        .uri(format!("http://{addr}/over-h2?x=1"))
        .body(support::client::empty())
        .unwrap();
    let reply = h2.send(req).await;
    assert_eq!(reply.status, 200);
    let line = &json_lines(&s.log, 1).await[0];
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/over-h2?x=1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 9);
    assert_eq!(line["server"], s.app.addr().to_string());
    assert_eq!(line["request_id"], reply.header("x-request-id").unwrap());

    s.app.set_behaviour(Behaviour::WebSocketEcho);
    let mut ws = support::client::websocket_connect(addr, "/ws").await;
    support::client::echo_roundtrip(&mut ws, b"hello").await;
    let lines = json_lines(&s.log, 2).await;
    assert_eq!(lines[1]["path"], "/ws");
    assert_eq!(lines[1]["status"], 101);
    assert_eq!(lines[1]["bytes"], 0);
}

#[tokio::test]
async fn the_combined_format_is_ncsa_with_the_request_id() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("plain");
    let (head, _, _) = raw_exchange(
        addr,
        b"POST /form?q=1 HTTP/1.0\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: ua \"1\"\r\nX-Request-Id: c-1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(eventually(LINE_DEADLINE, || read_lines(&s.combined).len() == 1).await);
    let line = read_lines(&s.combined).remove(0);
    let (start, rest) = line.split_once(" [").unwrap();
    assert_eq!(start, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").unwrap();
    // 01/Dec/2026:18:00:00 +0000
    assert_eq!(time.len(), 26, "{time}");
    assert!(
        time.ends_with(" +0000") && &time[2..3] == "/" && &time[6..7] == "/",
        "{time}"
    );
    assert_eq!(
        rest,
        r#""POST /form?q=1 HTTP/1.0" 200 9 "http://r/" "ua \x221\x22" "c-1""#
    );
}

#[tokio::test]
async fn a_stdout_log_goes_to_the_daemons_standard_output() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("out");
    let reply = support::client::send_once(addr, get(addr, "/to-stdout")).await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert!(
        eventually(LINE_DEADLINE, || s.daemon.stdout_text().contains(&id)).await,
        "stdout: {}",
        s.daemon.stdout_text()
    );
    let text = s.daemon.stdout_text();
    let line: Value =
        serde_json::from_str(text.lines().find(|l| l.contains(&id)).unwrap()).unwrap();
    assert_eq!(line["listener"], "out");
    assert_eq!(line["path"], "/to-stdout");
}

#[tokio::test]
async fn sigusr1_reopens_a_rotated_file() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("web");
    let mut client = H1Client::connect(addr).await;
    assert_eq!(client.get("/before").await.status, 200);
    json_lines(&s.log, 1).await;
    let rotated = s.log.with_extension("log.1");
    std::fs::rename(&s.log, &rotated).unwrap();
    assert_eq!(client.get("/renamed").await.status, 200);
    assert_eq!(json_lines(&rotated, 2).await[1]["path"], "/renamed");
    s.daemon.signal("USR1");
    // The reopen happens before the first line after the signal; poll with a fresh request each
    // time, since the signal may still be on its way.
    let deadline = Instant::now() + LINE_DEADLINE;
    let mut sent = 0;
    while !s.log.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never reappeared",
            s.log.display()
        );
        assert_eq!(client.get("/after").await.status, 200);
        sent += 1;
        tokio::time::sleep(support::POLL).await;
    }
    let new = json_lines(&s.log, 1).await;
    assert!(new.iter().all(|l| l["path"] == "/after"), "{new:?}");
    let old = json_lines(&rotated, 2).await;
    assert_eq!(old.len() + new.len(), 2 + sent, "no line lost or doubled");
}

/// `web` logs to a FIFO that nobody reads: the writer blocks on it and its channel fills.
const FIFO_CONFIG: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "1s"

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
access_log = "${FIFO}"

[upstreams.app]
servers = [{ address = "${APP}" }]
"#;

#[tokio::test]
async fn a_writer_that_cannot_keep_up_drops_lines_and_counts_them() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stuck.fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo and open with a valid C string; fcntl on the descriptor just opened.
    let fd = unsafe {
        assert_eq!(libc::mkfifo(c_path.as_ptr(), 0o600), 0);
        // Read-write, so the daemon's open for writing does not wait for a reader; never read.
        let fd = libc::open(c_path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK);
        assert!(fd >= 0);
        // The smallest pipe buffer (one page), so the writer blocks after a few lines.
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096);
        fd
    };
    let app = HttpBackend::start("a", Behaviour::Identity).await;
    let daemon = Daemon::builder(FIFO_CONFIG)
        .var("APP", app.addr())
        .var("FIFO", fifo.display())
        .start()
        .await;
    let addr = daemon.addr("web");
    const CLIENTS: usize = 8;
    const EACH: usize = 750;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = H1Client::connect(addr).await;
                let mut slowest = Duration::ZERO;
                for _ in 0..EACH {
                    let started = Instant::now();
                    assert_eq!(client.get("/x").await.status, 200);
                    slowest = slowest.max(started.elapsed());
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for task in tasks {
        slowest = slowest.max(task.await.unwrap());
    }
    let text = metrics(daemon.admin_addr()).await;
    let dropped = metric_sum(
        &text,
        "fulcrum_access_log_dropped_total",
        &[("listener", "web")],
    );
    println!(
        "dropped {dropped} of {} lines; slowest request {slowest:?}",
        CLIENTS * EACH
    );
    // The channel (4096 lines), the pipe (4 KiB) and the writer's buffer (64 KiB) hold about
    // 4400 of the 6000 lines; the rest are dropped.
    assert!(dropped >= 1.0, "nothing dropped: {text}");
    assert!(dropped < (CLIENTS * EACH) as f64);
    assert_eq!(app.requests(), CLIENTS * EACH);
    // A worker that waited on the log would wait for ever; a second is a generous ceiling.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request took {slowest:?}"
    );
    drop(daemon);
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

#[tokio::test]
async fn an_access_log_that_cannot_be_opened_stops_the_start() {
    let app = HttpBackend::start("a", Behaviour::Identity).await;
    let err = Daemon::builder(CONFIG)
        .var("APP", app.addr())
        .var("LOG", "/nonexistent-fulcrum-dir/access.log")
        .var("COMBINED", "/nonexistent-fulcrum-dir/combined.log")
        .try_start()
        .await
        .err()
        .expect("the daemon must not start");
    assert!(
        err.contains("cannot open access_log /nonexistent-fulcrum-dir/"),
        "{err}"
    );
    assert!(err.contains("listener `"), "{err}");
}

#[test]
fn fulcrum_check_reports_bad_access_log_values_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    for (keys, line, key) in [
        (
            "access_log = \"stdout\"\naccess_log_format = \"xml\"",
            6,
            "access_log_format",
        ),
        ("access_log_format = \"json\"", 5, "access_log_format"),
        ("access_log = \"logs/access.log\"", 5, "access_log"),
    ] {
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(
            &path,
            format!("[listeners.web]\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n{keys}\n\n[upstreams.app]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n"),
        )
        .unwrap();
        let (code, out, err) =
            support::daemon::run_cli(&["check".as_ref(), "-c".as_ref(), path.as_os_str()]);
        let text = format!("{out}{err}");
        assert_ne!(code, Some(0), "{keys}: {text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("line {line}, column")),
            "{keys}: {text}"
        );
        assert!(
            text.contains(&format!("key `listeners.web.{key}`")),
            "{keys}: {text}"
        );
    }
}

#[tokio::test]
async fn heads_over_the_limits_are_logged_with_their_status() {
    let s = start(Behaviour::Identity).await;
    let addr = s.daemon.addr("web");
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(9000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(40_000)
    );
    let mut statuses = Vec::new();
    for request in [long_uri, big_head] {
        let (head, body, _) = raw_exchange(addr, request.as_bytes()).await;
        statuses.push((head[9..12].to_string(), body.len()));
    }
    assert_eq!(statuses[0].0, "414");
    assert_eq!(statuses[1].0, "431");
    let lines = json_lines(&s.log, 2).await;
    for (line, (status, bytes)) in lines.iter().zip(&statuses) {
        assert_eq!(line["status"].to_string(), *status, "{line}");
        assert_eq!(line["bytes"], *bytes, "{line}");
        assert_eq!(line["method"], "-", "{line}");
        assert!(line["server"].is_null(), "{line}");
    }
    assert_eq!(s.app.requests(), 0);
}
