//! The admin endpoint: `/healthz`, `/metrics` and `/status`; drain, disable and enable; the token,
//! the Origin check and the unix socket.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::admin::{action, is_series, server_status};
use support::client::{get_once, H1Client};
use support::{Behaviour, Daemon, HttpBackend};
use tokio::sync::Semaphore;

const CONFIG: &str = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
strategy = "round_robin"
servers = [
  { address = "${A}", weight = 1 },
  { address = "${B}", weight = 1 },
  { address = "${C}", weight = 3, down = true },
]
"#;

async fn start() -> (Vec<HttpBackend>, Daemon) {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let c = HttpBackend::start("c", Behaviour::Identity).await;
    let d = Daemon::builder(CONFIG)
        .var("A", a.addr())
        .var("B", b.addr())
        .var("C", c.addr())
        .start()
        .await;
    (vec![a, b, c], d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_200() {
    let (_backends, d) = start().await;
    let r = get_once(d.admin_addr(), "/healthz").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_proxied_requests() {
    let (_backends, d) = start().await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let admin = d.admin_addr();
    let mut last = String::new();
    let mut found = false;
    for _ in 0..200 {
        let r = get_once(admin, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        last = r.text();
        // Both servers served 5; their series carry listener, upstream, server and code labels.
        found = last
            .lines()
            .filter(|l| is_series(l, "fulcrum_requests_total"))
            .any(|l| {
                l.contains("listener=\"web\"")
                    && l.contains("upstream=\"app\"")
                    && l.contains("code=\"200\"")
                    && l.contains("server=\"")
            });
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        found,
        "no fulcrum_requests_total series for web/app/200:\n{last}"
    );
    let total: f64 = last
        .lines()
        .filter(|l| is_series(l, "fulcrum_requests_total") && l.contains("listener=\"web\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        total, 10.0,
        "sum of fulcrum_requests_total{{listener=\"web\"}}:\n{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_servers() {
    let (backends, d) = start().await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let admin = d.admin_addr();
    // (backend index, weight, state, requests)
    let expected = [
        (0usize, 1u64, "up", 5u64),
        (1, 1, "up", 5),
        (2, 3, "config_down", 0),
    ];
    let find = |status: &serde_json::Value, i: usize| -> serde_json::Value {
        let address = backends[i].addr().to_string();
        status["upstreams"][0]["servers"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["address"] == address.as_str()))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };

    let mut status = serde_json::Value::Null;
    let settled = {
        let mut ok = false;
        for _ in 0..200 {
            let r = get_once(admin, "/status").await;
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
            status = r.json();
            ok = expected
                .iter()
                .all(|(i, _, _, n)| find(&status, *i)["requests"].as_u64() == Some(*n));
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        ok
    };
    println!("{status:#}");
    let up = &status["upstreams"][0];
    assert_eq!(up["name"], "app", "{status:#}");
    let servers = up["servers"]
        .as_array()
        .unwrap_or_else(|| panic!("no servers: {status:#}"));
    assert_eq!(servers.len(), 3, "{status:#}");
    for (i, weight, state, _) in expected {
        let s = find(&status, i);
        assert!(
            s.is_object(),
            "no server {}: {status:#}",
            backends[i].addr()
        );
        assert_eq!(s["weight"], weight, "{status:#}");
        assert_eq!(s["state"], state, "{status:#}");
        assert!(s["requests"].is_u64(), "{status:#}");
    }
    assert!(settled, "requests should read 5, 5, 0: {status:#}");
    assert!(status["version"].is_string(), "{status:#}");
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| is_series(l, name))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_retries_histograms_connections_and_server_state() {
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let config = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
retries = 1
servers = [ { address = "${DEAD}" }, { address = "${LIVE}" }, { address = "${OFF}", down = true } ]
"#;
    let dead = support::refused_addr();
    let off = support::refused_addr();
    let d = Daemon::builder(config)
        .var("DEAD", dead)
        .var("LIVE", live.addr())
        .var("OFF", off)
        .start()
        .await;
    // One client connection, ten sequential requests: round robin sends every other one to the
    // dead server first, so exactly five are retried.
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let text = get_once(d.admin_addr(), "/metrics").await.text();
    let value = |name: &str, labels: &[&str]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    assert_eq!(value("fulcrum_retries_total", &["upstream=\"app\""]), 5.0);
    let live_label = format!("server=\"{}\"", live.addr());
    assert_eq!(
        value("fulcrum_upstream_response_seconds_count", &[&live_label]),
        10.0
    );
    assert!(
        text.contains("fulcrum_upstream_response_seconds_bucket{"),
        "a histogram, not a summary:\n{text}"
    );
    assert_eq!(
        value("fulcrum_connections_total", &["listener=\"web\""]),
        1.0
    );
    assert_eq!(
        value("fulcrum_connections_active", &["listener=\"web\""]),
        1.0
    );
    assert_eq!(value("fulcrum_server_up", &[&live_label]), 1.0);
    let off_label = format!("server=\"{off}\"");
    assert_eq!(value("fulcrum_server_up", &[&off_label]), 0.0);
}

/// Sequential requests on one connection; the backend names that answered, counted `(a, b)`.
async fn spread(d: &Daemon, n: usize) -> (usize, usize) {
    let mut c = H1Client::connect(d.addr("web")).await;
    let mut counts = (0, 0);
    for _ in 0..n {
        let r = c.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        match r.backend() {
            "a" => counts.0 += 1,
            "b" => counts.1 += 1,
            other => panic!("answered by {other}"),
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_the_request_in_flight_finish_and_takes_nothing_new() {
    let gate = Arc::new(Semaphore::new(0));
    let a = HttpBackend::start("a", Behaviour::Gated(Arc::clone(&gate))).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let c = support::refused_addr();
    let d = Daemon::builder(CONFIG)
        .var("A", a.addr())
        .var("B", b.addr())
        .var("C", c)
        .start()
        .await;
    let admin = d.admin_addr();
    let (a_addr, b_addr) = (a.addr().to_string(), b.addr().to_string());
    // B out of the way, so the one request that stays in flight is on A.
    let r = action(admin, "app", &b_addr, "disable", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let web = d.addr("web");
    let held = tokio::spawn(async move { H1Client::connect(web).await.get("/").await });
    assert!(support::eventually(Duration::from_secs(10), || a.requests() == 1).await);
    action(admin, "app", &b_addr, "enable", &[]).await;

    let r = action(admin, "app", &a_addr, "drain", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let drained = r.json();
    assert_eq!(drained["address"], a_addr.as_str(), "{drained:#}");
    assert_eq!(drained["state"], "draining", "{drained:#}");
    assert_eq!(drained["in_flight"], 1, "{drained:#}");

    assert_eq!(
        spread(&d, 10).await,
        (0, 10),
        "a draining server takes nothing new"
    );
    assert_eq!((a.requests(), b.requests()), (1, 10));
    gate.add_permits(1);
    let finished = support::within(Duration::from_secs(10), "the held request", held)
        .await
        .unwrap();
    assert_eq!(finished.status, StatusCode::OK, "{finished:?}");
    assert_eq!(
        finished.backend(),
        "a",
        "the request in flight finished on A"
    );
    let s = server_status(admin, "app", a.addr()).await;
    assert_eq!(
        (s["state"].as_str(), s["requests"].as_u64()),
        (Some("draining"), Some(1)),
        "{s:#}"
    );
    assert!(
        d.wait_for_stderr("admin: drain", Duration::from_secs(5))
            .await,
        "the action is logged:\n{}",
        d.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_takes_a_server_out_and_enable_brings_its_traffic_back() {
    let (backends, d) = start().await;
    let admin = d.admin_addr();
    let a_addr = backends[0].addr().to_string();
    let r = action(admin, "app", &a_addr, "disable", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["state"], "disabled", "{}", r.text());
    assert_eq!(spread(&d, 10).await, (0, 10));
    let text = support::admin::metrics(admin).await;
    let up = support::admin::series(&text, "fulcrum_server_up", &[("server", &a_addr)]);
    assert_eq!(up, [0.0], "fulcrum_server_up while disabled:\n{text}");
    // The address may come percent-encoded.
    let encoded = a_addr.replace(':', "%3A");
    let r = action(admin, "app", &encoded, "enable", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["state"], "up", "{}", r.text());
    assert_eq!(spread(&d, 10).await, (5, 5), "traffic is back");
    assert_eq!(backends[0].requests(), 5);
    let text = support::admin::metrics(admin).await;
    let up = support::admin::series(&text, "fulcrum_server_up", &[("server", &a_addr)]);
    assert_eq!(up, [1.0], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_actions_are_404_and_get_is_405() {
    let (backends, d) = start().await;
    let admin = d.admin_addr();
    let a_addr = backends[0].addr().to_string();
    for (upstream, address, verb, says) in [
        ("nope", a_addr.as_str(), "drain", "no upstream `nope`"),
        ("app", "127.0.0.1:1", "drain", "no server `127.0.0.1:1`"),
        ("app", a_addr.as_str(), "explode", "no action `explode`"),
    ] {
        let r = action(admin, upstream, address, verb, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{upstream}/{address}/{verb}: {r:?}"
        );
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(says), "{error}");
    }
    let r = get_once(admin, &format!("/upstreams/app/servers/{a_addr}/drain")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(r.json()["error"].is_string(), "{}", r.text());
    assert_eq!(
        server_status(admin, "app", backends[0].addr()).await["state"],
        "up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_a_post_needs_it_and_gets_nowhere_without() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let config = CONFIG.replace(
        "bind = \"127.0.0.1:0\"\n\n[listeners",
        "bind = \"127.0.0.1:0\"\ntoken = \"s3cret-t0ken\"\n\n[listeners",
    );
    assert!(config.contains("token = "));
    let d = Daemon::builder(&config)
        .var("A", a.addr())
        .var("B", b.addr())
        .var("C", support::refused_addr())
        .start()
        .await;
    let admin = d.admin_addr();
    let a_addr = a.addr().to_string();
    for headers in [
        &[][..],
        &[("authorization", "Bearer s3cret-t0kem")][..],
        &[("authorization", "Bearer s3cret-t0ke")][..],
        &[("authorization", "Basic s3cret-t0ken")][..],
    ] {
        let r = action(admin, "app", &a_addr, "disable", headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}: {r:?}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{r:?}"
        );
        assert!(r.json()["error"].is_string());
    }
    // Reading stays open; nothing changed.
    assert_eq!(server_status(admin, "app", a.addr()).await["state"], "up");
    assert_eq!(spread(&d, 4).await, (2, 2));
    let r = action(
        admin,
        "app",
        &a_addr,
        "disable",
        &[("authorization", "Bearer s3cret-t0ken")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["state"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_changes_nothing_and_the_own_origin_may() {
    let (backends, d) = start().await;
    let admin = d.admin_addr();
    let a_addr = backends[0].addr().to_string();
    let other_port = format!("http://127.0.0.1:{}", admin.port() + 1);
    for origin in [
        "http://evil.example",
        "null",
        other_port.as_str(),
        &format!("https://{admin}"),
    ] {
        let r = action(admin, "app", &a_addr, "drain", &[("origin", origin)]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{origin}: {r:?}");
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(
        server_status(admin, "app", backends[0].addr()).await["state"],
        "up"
    );
    assert_eq!(spread(&d, 4).await, (2, 2), "still in rotation");
    let own = format!("http://{admin}");
    let r = action(admin, "app", &a_addr, "drain", &[("origin", own.as_str())]).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(
        server_status(admin, "app", backends[0].addr()).await["state"],
        "draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_self_contained_and_refreshes_itself() {
    let (_backends, d) = start().await;
    let r = get_once(d.admin_addr(), "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        page.contains(&format!("<h1>fulcrum {version}</h1>")),
        "{page}"
    );
    assert!(
        page.contains("setInterval") && page.contains("2000"),
        "{page}"
    );
    for external in ["src=", "href=\"http", "@import", "url("] {
        assert!(!page.contains(external), "`{external}` in:\n{page}");
    }
}

/// One request over the unix socket at `path` (raw HTTP/1.1, `Connection: close`): the status and
/// the body.
async fn over_unix(
    path: &std::path::Path,
    method: &str,
    target: &str,
    extra: &str,
) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::UnixStream::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let raw = support::within(
        Duration::from_secs(10),
        "the admin answer",
        support::client::read_to_eof(&mut stream),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn unix_config(path: &std::path::Path) -> String {
    CONFIG.replace(
        "bind = \"127.0.0.1:0\"\n\n[listeners",
        &format!("bind = \"unix:{}\"\n\n[listeners", path.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_is_0600_replaces_a_stale_one_and_goes_at_shutdown() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(HttpBackend::start(name, Behaviour::Identity).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    // A socket file left by a run that was killed: nobody accepts on it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let mut d = Daemon::builder(&unix_config(&path))
        .var("A", backends[0].addr())
        .var("B", backends[1].addr())
        .var("C", backends[2].addr())
        .start()
        .await;
    assert!(
        support::eventually(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&path).is_ok()
        })
        .await,
        "nothing answers on {}:\n{}",
        path.display(),
        d.stderr_text()
    );
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{meta:?}");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["admin.sock"], "the staging directory is gone");

    let (code, body) = over_unix(&path, "GET", "/status", "").await;
    assert_eq!(code, 200, "{body}");
    let a_addr = backends[0].addr().to_string();
    let drain = format!("/upstreams/app/servers/{a_addr}/drain");
    let (code, body) = over_unix(&path, "POST", &drain, "Origin: http://localhost\r\n").await;
    assert_eq!(
        code, 403,
        "a browser cannot be the origin of a unix socket: {body}"
    );
    let (code, body) = over_unix(&path, "POST", &drain, "").await;
    assert_eq!(code, 200, "{body}");
    let server: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(server["state"], "draining", "{body}");

    d.sigterm();
    assert!(d
        .wait_exit(Duration::from_secs(10))
        .await
        .is_some_and(|s| s.success()));
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_path_held_by_a_live_socket_or_by_a_file_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sock");
    let _holder = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "not a socket").unwrap();
    for (path, says) in [(&live, "address in use"), (&file, "is not a socket")] {
        let builder = Daemon::builder(&unix_config(path))
            .var("A", support::refused_addr())
            .var("B", support::refused_addr())
            .var("C", support::refused_addr());
        let stderr = match builder.try_start().await {
            Err(stderr) => stderr,
            Ok(mut d) => {
                let status = d.wait_exit(Duration::from_secs(10)).await;
                assert!(status.is_some_and(|s| !s.success()), "{status:?}");
                d.stderr_text()
            }
        };
        assert!(stderr.contains(says), "{}: {stderr}", path.display());
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
    assert!(std::os::unix::net::UnixStream::connect(&live).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_tcp_mode_a_drained_server_keeps_its_sessions_and_takes_no_new_ones() {
    use support::client::echo_roundtrip;
    use support::{EchoMode, TcpEchoBackend};
    let a = TcpEchoBackend::start(EchoMode::Stream).await;
    let b = TcpEchoBackend::start(EchoMode::Stream).await;
    let config = r#"
[runtime]
worker_threads = 2

[admin]
bind = "127.0.0.1:0"

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "echo"

[upstreams.echo]
servers = [ { address = "${A}" }, { address = "${B}" } ]
"#;
    let d = Daemon::builder(config)
        .var("A", a.addr())
        .var("B", b.addr())
        .start()
        .await;
    let admin = d.admin_addr();
    // B out of the way while the session that stays open is made, so it is on A.
    action(admin, "echo", &b.addr().to_string(), "disable", &[]).await;
    let mut open = tokio::net::TcpStream::connect(d.addr("l4")).await.unwrap();
    echo_roundtrip(&mut open, b"before").await;
    assert_eq!((a.accepts(), b.accepts()), (1, 0));
    action(admin, "echo", &b.addr().to_string(), "enable", &[]).await;

    let r = action(admin, "echo", &a.addr().to_string(), "drain", &[]).await;
    assert_eq!(r.json()["state"], "draining", "{}", r.text());
    assert_eq!(r.json()["in_flight"], 1, "{}", r.text());
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(d.addr("l4")).await.unwrap();
        echo_roundtrip(&mut s, b"new").await;
    }
    assert_eq!(
        (a.accepts(), b.accepts()),
        (1, 4),
        "new sessions go to B only"
    );
    echo_roundtrip(&mut open, b"after the drain").await;
}
