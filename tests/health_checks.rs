//! Active health checks end to end (CONTRACT.md "Health and ejection", "Slow start", "Health,
//! ejection, retries"; `src/health/`, `src/table/writer.rs`): a real daemon checking real backends
//! on 127.0.0.1, watched the way an operator would: where client traffic goes, `/status`, the
//! `server state changed` log lines and `/metrics`.
//!
//! Passive ejection is off in every test (`consecutive_failures = 0`): only the checks move servers.
//! Counts come from sequential clients; time bounds are generous ceilings (10 × the expected
//! figure), and the measured figures are printed.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use support::admin::{metric_sum, metrics, series, server_status};
use support::client::{assert_own_error, get_once, H1Client};
use support::{eventually, Behaviour, Daemon, HttpBackend, POLL, WEB};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The fast check most tests use; its timings are [`INTERVAL`], [`TIMEOUT`], [`RISE`], [`FALL`].
const FAST_HTTP: &str = r#"
kind = "http"
path = "/healthz"
interval = "200ms"
timeout = "100ms"
rise = 2
fall = 2
"#;
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const RISE: u32 = 2;
const FALL: u32 = 2;

/// Two primaries of weight 1.
const TWO: &str = r#"{ address = "${A}" }, { address = "${B}" }"#;

/// How long a test waits for any state change before it fails (far above every expected figure).
const DEADLINE: Duration = Duration::from_secs(15);

/// The config of upstream `app`: `servers` (the inside of the TOML array), more upstream keys
/// (`upstream_keys`), the `[upstreams.app.health_check]` table `check`, and passive ejection off.
fn upstream(servers: &str, upstream_keys: &str, check: &str) -> String {
    format!(
        "{WEB}\n[upstreams.app]\nservers = [ {servers} ]\n{upstream_keys}\n\n\
         [upstreams.app.health_check]\n{check}\n\n\
         [upstreams.app.ejection]\nconsecutive_failures = 0\n"
    )
}

/// Starts a daemon on `config` whose `${A}`, `${B}`, ... are `servers`' addresses, in order.
async fn daemon(config: &str, servers: &[SocketAddr]) -> Daemon {
    let names = ["A", "B", "C", "D", "E"];
    servers
        .iter()
        .zip(names)
        .fold(Daemon::builder(config), |b, (addr, name)| b.var(name, addr))
        .start()
        .await
}

/// Polls `/status` until the entry of server `addr` satisfies `cond`; panics naming `what` (with
/// the last entry and the daemon's log) after [`DEADLINE`].
async fn wait_server(
    d: &Daemon,
    addr: SocketAddr,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = server_status(d.admin_addr(), "app", addr).await;
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}; last /status entry: {s:#}\n--- stderr ---\n{}",
            d.stderr_text()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `/status` says the server takes traffic and its last check passed.
fn checked_up(s: &Value) -> bool {
    s["state"] == "up" && s["health"] == "up" && s["last_check"]["ok"] == true
}

/// `/status` says the checks took the server down.
fn checked_down(s: &Value) -> bool {
    s["state"] == "down" && s["health"] == "down"
}

/// The `last_check.detail` of a `/status` entry.
fn detail(s: &Value) -> &str {
    s["last_check"]["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_check.detail: {s:#}"))
}

/// Asserts the `last_check` of a `/status` entry: `ok`, `detail`, and an RFC 3339 `at`.
fn assert_last_check(s: &Value, ok: bool, detail_is: impl Fn(&str) -> bool) {
    assert_eq!(s["last_check"]["ok"], ok, "{s:#}");
    assert!(detail_is(detail(s)), "unexpected detail: {s:#}");
    let at = s["last_check"]["at"].as_str().unwrap_or("");
    assert!(
        humantime::parse_rfc3339(at).is_ok(),
        "last_check.at is not RFC 3339: {s:#}"
    );
}

/// The `server state changed` log lines about `addr`, in order.
fn state_changes(d: &Daemon, addr: SocketAddr) -> Vec<String> {
    let server = format!("server={addr} ");
    d.stderr_text()
        .lines()
        .filter(|l| l.contains("server state changed") && l.contains(&server))
        .map(str::to_string)
        .collect()
}

/// Waits for the log line of `addr` going `from` → `to` with a reason containing `reason`.
async fn wait_change(d: &Daemon, addr: SocketAddr, from: &str, to: &str, reason: &str) -> String {
    let wanted = |l: &String| {
        l.contains(&format!("from=\"{from}\""))
            && l.contains(&format!("to=\"{to}\""))
            && l.split_once("reason=")
                .is_some_and(|(_, r)| r.contains(reason))
    };
    let found = eventually(DEADLINE, || state_changes(d, addr).iter().any(wanted)).await;
    assert!(
        found,
        "no `server state changed` line for {addr} from={from:?} to={to:?} reason ~ {reason:?}\n\
         --- stderr ---\n{}",
        d.stderr_text()
    );
    state_changes(d, addr).into_iter().find(wanted).unwrap()
}

/// Sends `n` sequential GETs; returns how many each backend answered, by name.
async fn spread(client: &mut H1Client, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for i in 0..n {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        *by.entry(r.backend().to_string()).or_default() += 1;
    }
    by
}

fn counts(expected: &[(&str, usize)]) -> BTreeMap<String, usize> {
    expected.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// `fulcrum_server_up{upstream="app", server=addr}`.
async fn server_up(d: &Daemon, addr: SocketAddr) -> f64 {
    let text = metrics(d.admin_addr()).await;
    let server = addr.to_string();
    let values = series(
        &text,
        "fulcrum_server_up",
        &[("upstream", "app"), ("server", &server)],
    );
    assert_eq!(
        values.len(),
        1,
        "one fulcrum_server_up for {server}:\n{text}"
    );
    values[0]
}

/// `fulcrum_health_checks_total{upstream="app", server, result}` in `text`.
fn checks_total(text: &str, server: SocketAddr, result: &str) -> f64 {
    metric_sum(
        text,
        "fulcrum_health_checks_total",
        &[
            ("upstream", "app"),
            ("server", &server.to_string()),
            ("result", result),
        ],
    )
}

/// A check target on raw TCP: reads each request head, writes `answer` (possibly nothing), then
/// closes; keeps the heads it read. Reading the whole head first makes the close a FIN (a socket
/// closed with unread data would reset instead).
struct RawCheckTarget {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RawCheckTarget {
    async fn start(answer: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = stream.write_all(answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawCheckTarget { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawCheckTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A 503 on the health path takes the server out after `fall` failed checks, within
/// interval × fall + timeout; `/status`, the log and `fulcrum_server_up` say so; `rise` passing
/// checks bring it back, within interval × rise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_http_check_takes_a_server_out_and_passing_ones_bring_it_back() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = daemon(&upstream(TWO, "", FAST_HTTP), &[a.addr(), b.addr()]).await;
    let admin = d.admin_addr();
    // The first check has passed, so from now on `fall` applies (not the first-check rule).
    wait_server(&d, b.addr(), "b's first check passed", checked_up).await;
    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(spread(&mut client, 10).await, counts(&[("a", 5), ("b", 5)]));

    // Down.
    let checks_before = b.checks();
    let switch = Instant::now();
    b.set_health(503);
    let mut last_at_b = None;
    let (detected, s) = loop {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        if r.backend() == "b" {
            last_at_b = Some(switch.elapsed());
        }
        let s = server_status(admin, "app", b.addr()).await;
        if s["state"] != "up" {
            break (switch.elapsed(), s);
        }
        assert!(switch.elapsed() < DEADLINE, "b never went down: {s:#}");
    };
    let failed_checks = b.checks() - checks_before;
    let expected = INTERVAL * FALL + TIMEOUT;
    println!(
        "down detected {detected:?} after the switch (interval × fall + timeout = {expected:?}); \
         last client request at b {last_at_b:?} after it; {failed_checks} checks seen"
    );
    assert!(checked_down(&s), "{s:#}");
    assert_eq!(s["ejected"], false, "{s:#}");
    assert_last_check(&s, false, |d| d == "status 503");
    assert!(
        detected < expected * 10,
        "detection took {detected:?}, over 10 × {expected:?}"
    );
    assert!(
        failed_checks >= FALL as usize,
        "down after {failed_checks} failed checks, fall = {FALL}"
    );
    let b_requests = b.requests();
    assert_eq!(spread(&mut client, 20).await, counts(&[("a", 20)]));
    assert_eq!(b.requests(), b_requests, "a client request reached b");
    let line = wait_change(
        &d,
        b.addr(),
        "up",
        "down",
        "2 consecutive failures (last: status 503)",
    )
    .await;
    println!("{line}");
    assert_eq!(server_up(&d, b.addr()).await, 0.0);
    assert_eq!(server_up(&d, a.addr()).await, 1.0);

    // Back up.
    let checks_before = b.checks();
    let switch = Instant::now();
    b.set_health(200);
    let recovered = loop {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        if r.backend() == "b" {
            break switch.elapsed();
        }
        assert!(switch.elapsed() < DEADLINE, "b never came back");
    };
    let passed_checks = b.checks() - checks_before;
    let expected = INTERVAL * RISE;
    println!(
        "traffic back at b {recovered:?} after the switch (interval × rise = {expected:?}); \
         {passed_checks} checks seen"
    );
    assert!(
        passed_checks >= RISE as usize,
        "up after {passed_checks} passing checks, rise = {RISE}"
    );
    // Checks start at least 0.9 × interval apart, and the first passing one may have started up to
    // a timeout before the switch: `rise` passes cannot fit in less than this.
    let floor = INTERVAL.mul_f64(0.9) * (RISE - 1) - TIMEOUT;
    assert!(
        recovered >= floor,
        "back after {recovered:?}: {RISE} passing checks take at least {floor:?}"
    );
    assert!(
        recovered < (expected + TIMEOUT) * 10,
        "recovery took {recovered:?}, over 10 × {:?}",
        expected + TIMEOUT
    );
    let line = wait_change(
        &d,
        b.addr(),
        "down",
        "up",
        "2 consecutive passes (last: 200)",
    )
    .await;
    println!("{line}");
    let s = server_status(admin, "app", b.addr()).await;
    assert!(checked_up(&s), "{s:#}");
    assert_last_check(&s, true, |d| d == "200");
    assert_eq!(server_up(&d, b.addr()).await, 1.0);
    assert_eq!(spread(&mut client, 10).await, counts(&[("a", 5), ("b", 5)]));
}

/// A server whose very first check fails is down at once, not after `fall` checks (here only one
/// check ever runs), and gets no client traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_failed_check_marks_a_server_down_at_once() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    b.set_health(500);
    let check = r#"
kind = "http"
path = "/healthz"
interval = "1h"
timeout = "1s"
rise = 2
fall = 3
"#;
    let d = daemon(&upstream(TWO, "", check), &[a.addr(), b.addr()]).await;
    let s = wait_server(&d, b.addr(), "b down after one check", checked_down).await;
    assert_last_check(&s, false, |d| d == "status 500");
    assert_eq!(b.checks(), 1, "one check at start, the next in an hour");
    let line = wait_change(&d, b.addr(), "up", "down", "first check failed: status 500").await;
    println!("{line}");
    let text = metrics(d.admin_addr()).await;
    assert_eq!(checks_total(&text, b.addr(), "fail"), 1.0, "{text}");
    assert_eq!(checks_total(&text, b.addr(), "ok"), 0.0, "{text}");

    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(spread(&mut client, 20).await, counts(&[("a", 20)]));
    assert_eq!(b.requests(), 0);
    assert!(checked_up(
        &server_status(d.admin_addr(), "app", a.addr()).await
    ));
}

/// A TCP check: a killed backend goes down with `connect refused`; a backend started again on
/// the same address comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_follows_a_backend_that_dies_and_returns() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let b_addr = b.addr();
    let check = r#"
kind = "tcp"
interval = "200ms"
timeout = "100ms"
rise = 2
fall = 2
"#;
    let d = daemon(&upstream(TWO, "", check), &[a.addr(), b_addr]).await;
    let s = wait_server(&d, b_addr, "b's first check passed", checked_up).await;
    assert_last_check(&s, true, |d| d == "connected");

    b.kill();
    let s = wait_server(&d, b_addr, "b down after it was killed", checked_down).await;
    assert_last_check(&s, false, |d| d == "connect refused");
    let line = wait_change(
        &d,
        b_addr,
        "up",
        "down",
        "2 consecutive failures (last: connect refused)",
    )
    .await;
    println!("{line}");
    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(spread(&mut client, 10).await, counts(&[("a", 10)]));

    let b2 = HttpBackend::start_on(b_addr, "b2", Behaviour::Identity).await;
    let s = wait_server(&d, b_addr, "b back on the same address", checked_up).await;
    assert_last_check(&s, true, |d| d == "connected");
    let line = wait_change(
        &d,
        b_addr,
        "down",
        "up",
        "2 consecutive passes (last: connected)",
    )
    .await;
    println!("{line}");
    assert_eq!(
        spread(&mut client, 10).await,
        counts(&[("a", 5), ("b2", 5)])
    );
    assert_eq!(b2.requests(), 5);
}

/// A check that hangs, one answered with garbage and one closed without an answer each fail, with a
/// detail that says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_checks_say_why() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let hang = HttpBackend::start("hang", Behaviour::Identity).await;
    hang.set_health_behaviour(Behaviour::Hang);
    let garbage = RawCheckTarget::start(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    let closing = RawCheckTarget::start(b"").await;
    let servers =
        r#"{ address = "${A}" }, { address = "${B}" }, { address = "${C}" }, { address = "${D}" }"#;
    let d = daemon(
        &upstream(servers, "", FAST_HTTP),
        &[a.addr(), hang.addr(), garbage.addr, closing.addr],
    )
    .await;

    // (name, address, the detail `/status` shows: exact, or only its start)
    let cases = [
        ("hang", hang.addr(), "timeout after 100ms", true),
        ("garbage", garbage.addr, "bad response", false),
        ("closing", closing.addr, "closed before responding", true),
    ];
    let matches = |expected: &str, exact: bool| {
        let expected = expected.to_string();
        move |d: &str| {
            if exact {
                d == expected
            } else {
                d.starts_with(&expected)
            }
        }
    };
    for (name, addr, expected, exact) in cases {
        let s = wait_server(&d, addr, &format!("{name} down"), checked_down).await;
        println!("{name}: {}", detail(&s));
        assert_last_check(&s, false, matches(expected, exact));
        let reason = format!("first check failed: {expected}");
        let line = wait_change(&d, addr, "up", "down", &reason).await;
        println!("{line}");
    }
    // Later checks fail the same way.
    assert!(
        eventually(DEADLINE, || garbage.heads().len() >= 3
            && closing.heads().len() >= 3
            && hang.checks() >= 3)
        .await
    );
    for (name, addr, expected, exact) in cases {
        let s = server_status(d.admin_addr(), "app", addr).await;
        assert!(checked_down(&s), "{name}: {s:#}");
        assert_last_check(&s, false, matches(expected, exact));
    }
    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(spread(&mut client, 10).await, counts(&[("a", 10)]));
}

/// `expect_status = "204"`: a 204 passes, a 200 fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_status_decides_what_passes() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    a.set_health(204);
    let check = format!("{FAST_HTTP}expect_status = \"204\"\n");
    let d = daemon(&upstream(TWO, "", &check), &[a.addr(), b.addr()]).await;
    let s = wait_server(&d, b.addr(), "b (200) down", checked_down).await;
    assert_last_check(&s, false, |d| d == "status 200");
    wait_change(&d, b.addr(), "up", "down", "first check failed: status 200").await;
    let s = wait_server(&d, a.addr(), "a (204) checked", checked_up).await;
    assert_last_check(&s, true, |d| d == "204");
    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(spread(&mut client, 10).await, counts(&[("a", 10)]));
}

/// Checks are not client traffic: backends see exactly their share of the client requests,
/// `fulcrum_requests_total` counts exactly those, and `fulcrum_health_checks_total` counts exactly
/// the checks the backends answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_counted_apart_from_client_traffic() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = daemon(&upstream(TWO, "", FAST_HTTP), &[a.addr(), b.addr()]).await;
    let admin = d.admin_addr();
    assert!(eventually(DEADLINE, || a.checks() >= 3 && b.checks() >= 3).await);

    const N: usize = 40;
    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(
        spread(&mut client, N).await,
        counts(&[("a", N / 2), ("b", N / 2)])
    );
    assert_eq!((a.requests(), b.requests()), (N / 2, N / 2));
    for backend in [&a, &b] {
        let s = server_status(admin, "app", backend.addr()).await;
        assert_eq!(s["requests"], N as u64 / 2, "{s:#}");
    }

    let requests = |text: &str, server: Option<SocketAddr>| {
        let server = server.map(|s| s.to_string());
        let mut labels = vec![("listener", "web")];
        if let Some(server) = &server {
            labels.push(("server", server));
        }
        metric_sum(text, "fulcrum_requests_total", &labels)
    };
    // The counters are bumped as the answers go out: wait for the last one to land.
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let text = metrics(admin).await;
        let total = requests(&text, None);
        assert!(
            total <= N as f64,
            "{total} requests counted for {N} sent:\n{text}"
        );
        if total == N as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "fulcrum_requests_total{{listener=\"web\"}} = {total}, not {N}:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    };
    for backend in [&a, &b] {
        assert_eq!(
            requests(&text, Some(backend.addr())),
            (N / 2) as f64,
            "{text}"
        );
    }

    // Exact check counts: the backend counts a check when its head arrives, the daemon when the
    // answer has come back, so the metric never runs ahead, and at a quiet moment (no check in
    // flight across the reading) they are equal.
    for backend in [&a, &b] {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen_before = backend.checks();
            let text = metrics(admin).await;
            let seen_after = backend.checks();
            let ok = checks_total(&text, backend.addr(), "ok");
            assert_eq!(checks_total(&text, backend.addr(), "fail"), 0.0, "{text}");
            assert!(
                ok <= seen_after as f64,
                "{ok} ok checks counted, the backend saw {seen_after}:\n{text}"
            );
            if seen_before == seen_after && ok == seen_after as f64 {
                println!("{}: {seen_after} checks, all counted ok", backend.name());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ok checks {ok}, the backend saw {seen_before}..{seen_after}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The check request itself: `GET path HTTP/1.1` with `Host` (the configured one, else the server
/// address) and `Connection: close`, on a new connection each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_request_is_a_get_with_host_and_connection_close() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    for host in [Some("health.example"), None] {
        let target = RawCheckTarget::start(OK).await;
        let host_key = host.map_or(String::new(), |h| format!("host = \"{h}\"\n"));
        let check = format!(
            "kind = \"http\"\npath = \"/ready?probe=1\"\ninterval = \"200ms\"\n\
             timeout = \"100ms\"\n{host_key}"
        );
        let servers = r#"{ address = "${A}" }"#;
        let d = daemon(&upstream(servers, "", &check), &[target.addr]).await;
        assert!(eventually(DEADLINE, || target.heads().len() >= 2).await);
        let s = wait_server(&d, target.addr, "raw target checked", checked_up).await;
        assert_last_check(&s, true, |d| d == "200");
        let expected_host = host.map_or(target.addr.to_string(), str::to_string);
        for head in target.heads() {
            let mut lines = head.lines();
            assert_eq!(lines.next(), Some("GET /ready?probe=1 HTTP/1.1"), "{head}");
            let header = |name: &str| -> Vec<String> {
                head.lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
                    .collect()
            };
            assert_eq!(header("host"), [expected_host.as_str()], "{head}");
            assert_eq!(
                header("connection")
                    .iter()
                    .map(|v| v.to_ascii_lowercase())
                    .collect::<Vec<_>>(),
                ["close"],
                "{head}"
            );
        }
    }
}

/// Backups take the traffic only while no primary is up, and give it back when one returns; with
/// every server down, clients get a fast 503 with `Retry-After: 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_only_while_every_primary_is_down() {
    let p1 = HttpBackend::start("p1", Behaviour::Identity).await;
    let p2 = HttpBackend::start("p2", Behaviour::Identity).await;
    let bk = HttpBackend::start("bk", Behaviour::Identity).await;
    let servers =
        r#"{ address = "${A}" }, { address = "${B}" }, { address = "${C}", backup = true }"#;
    let d = daemon(
        &upstream(servers, "", FAST_HTTP),
        &[p1.addr(), p2.addr(), bk.addr()],
    )
    .await;
    for s in [&p1, &p2, &bk] {
        let st = wait_server(&d, s.addr(), "first check passed", checked_up).await;
        assert_eq!(st["backup"], s.name() == "bk", "{st:#}");
    }
    let mut client = H1Client::connect(d.addr("web")).await;
    assert_eq!(
        spread(&mut client, 20).await,
        counts(&[("p1", 10), ("p2", 10)])
    );

    p1.set_health(503);
    p2.set_health(503);
    for s in [&p1, &p2] {
        wait_server(&d, s.addr(), "primary down", checked_down).await;
    }
    assert_eq!(spread(&mut client, 20).await, counts(&[("bk", 20)]));

    p1.set_health(200);
    wait_server(&d, p1.addr(), "p1 back", checked_up).await;
    assert_eq!(spread(&mut client, 20).await, counts(&[("p1", 20)]));
    assert_eq!(
        bk.requests(),
        20,
        "the backup took traffic beside a primary"
    );

    bk.set_health(503);
    p1.set_health(503);
    for s in [&p1, &bk] {
        wait_server(&d, s.addr(), "server down", checked_down).await;
    }
    let web = d.addr("web");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let r = get_once(web, "/").await;
        slowest = slowest.max(started.elapsed());
        assert_own_error(&r, 503);
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }
    println!("all servers down: slowest of 10 503s took {slowest:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "a 503 took {slowest:?}"
    );
    assert_eq!(
        (p1.requests(), p2.requests(), bk.requests()),
        (30, 10, 20),
        "no server saw the refused requests"
    );
}

/// Slow start: a server that comes back up gets its weight back from 10 % to 100 % over
/// `slow_start`, in steps that never go down, and meanwhile only a small share of the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_returning_server_up() {
    const RAMP: Duration = Duration::from_secs(3);
    const WINDOW: Duration = Duration::from_millis(300);
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = daemon(
        &upstream(TWO, "slow_start = \"3s\"", FAST_HTTP),
        &[a.addr(), b.addr()],
    )
    .await;
    let admin = d.admin_addr();
    for backend in [&a, &b] {
        let s = wait_server(&d, backend.addr(), "first check passed", checked_up).await;
        assert_eq!(s["effective_weight"], 1, "no ramp at process start: {s:#}");
    }

    b.set_health(503);
    wait_server(&d, b.addr(), "b down", checked_down).await;

    // A sequential client runs throughout, noting who answered when.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        let mut client = H1Client::connect(d.addr("web")).await;
        async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = client.get("/").await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
                seen.push((Instant::now(), r.backend() == "b"));
            }
            seen
        }
    });

    let switch = Instant::now();
    b.set_health(200);
    // (time since the switch, effective weight) while b is up again.
    let mut weights: Vec<(Duration, f64)> = Vec::new();
    loop {
        let s = server_status(admin, "app", b.addr()).await;
        if s["state"] == "up" {
            let w = s["effective_weight"]
                .as_f64()
                .unwrap_or_else(|| panic!("effective_weight is not a number: {s:#}"));
            weights.push((switch.elapsed(), w));
            if w >= 1.0 {
                break;
            }
        }
        assert!(
            switch.elapsed() < DEADLINE,
            "b never reached full weight: {weights:?}\n{s:#}"
        );
        tokio::time::sleep(POLL).await;
    }
    stop.store(true, Ordering::SeqCst);
    let seen = traffic.await.expect("client task");

    let (first_up, first_weight) = weights[0];
    let (full_at, _) = *weights.last().unwrap();
    let mut steps: Vec<f64> = weights.iter().map(|&(_, w)| w).collect();
    steps.dedup();
    println!(
        "b up {first_up:?} after the switch at weight {first_weight}; full weight {:?} later \
         (slow_start {RAMP:?}); weights seen: {steps:?}",
        full_at - first_up
    );
    assert!(
        first_weight <= 0.3,
        "ramp starts at {first_weight}: {weights:?}"
    );
    assert!(
        weights.windows(2).all(|w| w[0].1 <= w[1].1),
        "the weight went down: {weights:?}"
    );
    assert!(steps.len() >= 5, "too few steps: {steps:?}");
    assert!(steps.iter().all(|&w| (0.1..=1.0).contains(&w)), "{steps:?}");
    assert!(
        full_at >= RAMP,
        "full weight {full_at:?} after b's health came back, before slow_start ({RAMP:?})"
    );
    assert!(
        full_at - first_up <= RAMP + Duration::from_secs(2),
        "full weight {:?} after b came back",
        full_at - first_up
    );

    // The share of b in the first 300 ms after its first request: tenths 1 against a's 10, so
    // 1/11 of the traffic (1/6 from the second step on, at 333 ms).
    let start = seen
        .iter()
        .find(|&&(at, to_b)| to_b && at > switch)
        .map(|&(at, _)| at)
        .expect("b got no traffic after it came back");
    let window: Vec<bool> = seen
        .iter()
        .filter(|&&(at, _)| at >= start && at < start + WINDOW)
        .map(|&(_, to_b)| to_b)
        .collect();
    let to_b = window.iter().filter(|&&b| b).count();
    println!(
        "first {WINDOW:?} of b's return: {to_b} of {} requests at b ({:.1} %, expected 1/11 ≈ 9 %)",
        window.len(),
        100.0 * to_b as f64 / window.len() as f64
    );
    assert!(
        window.len() >= 12,
        "too few requests in {WINDOW:?} to measure a share: {}",
        window.len()
    );
    assert!(
        to_b * 4 <= window.len(),
        "b took {to_b} of {} requests in its first {WINDOW:?}",
        window.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_is_not_checked() {
    let up = HttpBackend::start("up", Behaviour::Identity).await;
    let off = HttpBackend::start("off", Behaviour::Identity).await;
    let config = upstream(
        r#"{ address = "${A}" }, { address = "${B}", down = true }"#,
        "",
        FAST_HTTP,
    );
    let d = daemon(&config, &[up.addr(), off.addr()]).await;
    assert!(
        eventually(DEADLINE, || up.checks() >= 3).await,
        "the up server is checked"
    );
    assert_eq!(
        off.checks(),
        0,
        "a down = true server takes no traffic, checks included"
    );
    let s = server_status(d.admin_addr(), "app", off.addr()).await;
    assert_eq!(s["state"], "config_down", "{s}");
    assert!(s["last_check"].is_null(), "{s}");
}
