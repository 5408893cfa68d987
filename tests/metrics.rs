//! Every metric of CONTRACT.md's catalogue (`fulcrum_config_reloads_total` and
//! `fulcrum_access_log_dropped_total` aside: they come with reload and access logs), read from the
//! real daemon's `/metrics` after sequential traffic, moves by exactly what it counts; and a dead
//! server's connect failures reach stderr at most once a second, with the count of those held back.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::admin::{metrics, series};
use support::client::{get, get_once, H1Client};
use support::{eventually, refused_addr, Behaviour, Daemon, HttpBackend, WEB};
use tokio::time::Instant;

/// How long a test waits for anything asynchronous (a check, an ejection, a closed connection).
const DEADLINE: Duration = Duration::from_secs(10);

/// The single sample of `name` with exactly these `labels` among others (panics on none or two).
fn one(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    match series(text, name, labels)[..] {
        [v] => v,
        ref other => panic!("{name} {labels:?}: {other:?} in\n{text}"),
    }
}

/// `WEB` over `[upstreams.app]` with `servers` (the inside of the TOML array) and `keys`.
fn config(servers: &str, keys: &str) -> String {
    format!("{WEB}\n[upstreams.app]\nservers = [ {servers} ]\n{keys}\n")
}

/// Polls `/metrics` until `name{labels}` reads `want`; returns the text, or panics with it.
async fn wait_for_value(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = metrics(admin).await;
        if series(&text, name, labels) == [want] {
            return text;
        }
        if Instant::now() >= deadline {
            panic!("{name} {labels:?} never read {want}:\n{text}");
        }
        tokio::time::sleep(support::POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_total_counts_each_code_on_its_own_series() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    // `none` has no server that may take traffic: its answers (503) involve no server.
    let text = format!(
        "{}\n[listeners.empty]\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"none\"\n\n\
         [upstreams.none]\nservers = [ {{ address = \"${{OFF}}\", down = true }} ]\n",
        config(
            r#"{ address = "${APP}" }"#,
            "[upstreams.app.ejection]\nconsecutive_failures = 0"
        )
    );
    let d = Daemon::builder(&text)
        .var("APP", app.addr())
        .var("OFF", refused_addr())
        .start()
        .await;
    // Each pair of these shared one cache slot under the old `code % 64` scheme.
    let codes: [(u16, usize); 9] = [
        (200, 4),
        (429, 3),
        (301, 2),
        (500, 1),
        (308, 2),
        (431, 3),
        (303, 1),
        (421, 2),
        (404, 1),
    ];
    let mut c = H1Client::connect(d.addr("web")).await;
    for (code, times) in codes {
        app.set_behaviour(if code == 200 {
            Behaviour::Identity
        } else {
            Behaviour::Status(code)
        });
        for _ in 0..times {
            if c.is_closed() {
                c = H1Client::connect(d.addr("web")).await;
            }
            assert_eq!(c.get("/").await.status.as_u16(), code);
        }
    }
    for _ in 0..3 {
        assert_eq!(
            get_once(d.addr("empty"), "/").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let text = metrics(d.admin_addr()).await;
    let server = app.addr().to_string();
    for (code, times) in codes {
        let labels = [
            ("listener", "web"),
            ("upstream", "app"),
            ("server", server.as_str()),
            ("code", &code.to_string()),
        ];
        assert_eq!(
            one(&text, "fulcrum_requests_total", &labels),
            times as f64,
            "{code}"
        );
    }
    let web = series(&text, "fulcrum_requests_total", &[("listener", "web")]);
    assert_eq!(web.len(), codes.len(), "no other series of web:\n{text}");
    let unserved = [
        ("listener", "empty"),
        ("upstream", "none"),
        ("server", ""),
        ("code", "503"),
    ];
    assert_eq!(one(&text, "fulcrum_requests_total", &unserved), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_series_follow_client_connections() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let d = Daemon::builder(&config(r#"{ address = "${APP}" }"#, ""))
        .var("APP", app.addr())
        .start()
        .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = H1Client::connect(d.addr("web")).await;
        assert_eq!(c.get("/").await.status, StatusCode::OK);
        clients.push(c);
    }
    let web = [("listener", "web")];
    let text = metrics(d.admin_addr()).await;
    assert_eq!(one(&text, "fulcrum_connections_active", &web), 3.0);
    assert_eq!(one(&text, "fulcrum_connections_total", &web), 3.0);
    clients.truncate(1);
    let text = wait_for_value(d.admin_addr(), "fulcrum_connections_active", &web, 1.0).await;
    assert_eq!(one(&text, "fulcrum_connections_total", &web), 3.0);
    drop(clients);
    let text = wait_for_value(d.admin_addr(), "fulcrum_connections_active", &web, 0.0).await;
    assert_eq!(one(&text, "fulcrum_connections_total", &web), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_time_histogram_counts_every_response_in_its_bucket() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let d = Daemon::builder(&config(r#"{ address = "${APP}" }"#, ""))
        .var("APP", app.addr())
        .start()
        .await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..6 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let slow = Duration::from_millis(300);
    app.set_behaviour(Behaviour::Slow(slow));
    for _ in 0..4 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let text = metrics(d.admin_addr()).await;
    let server = app.addr().to_string();
    let labels = [("upstream", "app"), ("server", server.as_str())];
    let name = "fulcrum_upstream_response_seconds";
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "{name}_bucket{{upstream=\"app\",server=\"{server}\""
            ))
        })
        .map(|l| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            (
                le.to_string(),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(
        les,
        [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "5", "10", "30", "+Inf"
        ],
        "{text}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    let at = |le: &str| buckets.iter().find(|(l, _)| l == le).unwrap().1;
    // The fast six are far below 250 ms; the slow four take at least 300 ms.
    assert_eq!(at("0.25"), 6.0, "{buckets:?}");
    assert_eq!(at("+Inf"), 10.0);
    assert_eq!(one(&text, &format!("{name}_count"), &labels), 10.0);
    let sum = one(&text, &format!("{name}_sum"), &labels);
    assert!(sum >= 4.0 * slow.as_secs_f64(), "sum {sum}");
    assert!(sum < 10.0, "sum {sum}");
    assert_eq!(
        text.matches(&format!("# TYPE {name} histogram\n")).count(),
        1,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_up_follows_the_health_check() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let check = "[upstreams.app.health_check]\nkind = \"http\"\npath = \"/healthz\"\n\
                 interval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1";
    let d = Daemon::builder(&config(r#"{ address = "${APP}" }"#, check))
        .var("APP", app.addr())
        .start()
        .await;
    let server = app.addr().to_string();
    let labels = [("upstream", "app"), ("server", server.as_str())];
    wait_for_value(d.admin_addr(), "fulcrum_server_up", &labels, 1.0).await;
    app.set_health(503);
    wait_for_value(d.admin_addr(), "fulcrum_server_up", &labels, 0.0).await;
    app.set_health(200);
    wait_for_value(d.admin_addr(), "fulcrum_server_up", &labels, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_total_counts_each_check_by_result() {
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let dead = refused_addr();
    // Checks run at start, then every interval: with an hour, exactly one each.
    let check = "[upstreams.app.health_check]\nkind = \"http\"\npath = \"/healthz\"\n\
                 interval = \"1h\"\ntimeout = \"1s\"";
    let d = Daemon::builder(&config(
        r#"{ address = "${LIVE}" }, { address = "${DEAD}" }"#,
        check,
    ))
    .var("LIVE", live.addr())
    .var("DEAD", dead)
    .start()
    .await;
    let (live_addr, dead_addr) = (live.addr().to_string(), dead.to_string());
    let name = "fulcrum_health_checks_total";
    let ok = [("server", live_addr.as_str()), ("result", "ok")];
    let fail = [("server", dead_addr.as_str()), ("result", "fail")];
    wait_for_value(d.admin_addr(), name, &ok, 1.0).await;
    let text = wait_for_value(d.admin_addr(), name, &fail, 1.0).await;
    assert_eq!(live.checks(), 1);
    let none = [("server", live_addr.as_str()), ("result", "fail")];
    assert_eq!(one(&text, name, &none), 0.0);
    let none = [("server", dead_addr.as_str()), ("result", "ok")];
    assert_eq!(one(&text, name, &none), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejections_and_retries_count_what_happened() {
    let live = HttpBackend::start("live", Behaviour::Identity).await;
    let dead = refused_addr();
    let keys =
        "retries = 1\n\n[upstreams.app.ejection]\nconsecutive_failures = 2\nbase_time = \"60s\"";
    let d = Daemon::builder(&config(
        r#"{ address = "${LIVE}" }, { address = "${DEAD}" }"#,
        keys,
    ))
    .var("LIVE", live.addr())
    .var("DEAD", dead)
    .start()
    .await;
    let mut c = H1Client::connect(d.addr("web")).await;
    // Round robin puts the dead server first for two of four requests; each is retried on the
    // live one, and its second failure ejects it.
    for _ in 0..4 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let (live_addr, dead_addr) = (live.addr().to_string(), dead.to_string());
    let ejections = "fulcrum_server_ejections_total";
    let dead_server = [("server", dead_addr.as_str())];
    wait_for_value(d.admin_addr(), ejections, &dead_server, 1.0).await;
    // Ejected, it is tried no more: no more retries, no second ejection.
    for _ in 0..6 {
        assert_eq!(c.get("/").await.status, StatusCode::OK);
    }
    let text = metrics(d.admin_addr()).await;
    assert_eq!(one(&text, ejections, &dead_server), 1.0);
    assert_eq!(
        one(&text, ejections, &[("server", live_addr.as_str())]),
        0.0
    );
    let retries = one(&text, "fulcrum_retries_total", &[("upstream", "app")]);
    assert_eq!(retries, 2.0, "{text}");
    assert_eq!(live.requests(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_key_missing_total_counts_requests_without_the_key() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let keys = "strategy = \"consistent_hash\"\n\n[upstreams.app.hash]\nkey = \"header:x-user-id\"";
    let d = Daemon::builder(&config(r#"{ address = "${APP}" }"#, keys))
        .var("APP", app.addr())
        .start()
        .await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for i in 0..5 {
        let mut req = get(d.addr("web"), "/");
        if i % 2 == 0 {
            req.headers_mut()
                .insert("x-user-id", format!("user{i}").parse().unwrap());
        }
        assert_eq!(c.send(req).await.status, StatusCode::OK);
    }
    let text = metrics(d.admin_addr()).await;
    let missing = one(
        &text,
        "fulcrum_hash_key_missing_total",
        &[("upstream", "app")],
    );
    assert_eq!(missing, 2.0, "{text}");
}

/// The `connect failed` lines in `stderr`, as their `suppressed=` counts.
fn connect_failures(stderr: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("connect failed"))
        .map(|l| {
            let n = l
                .split("suppressed=")
                .nth(1)
                .unwrap_or_else(|| panic!("{l}"));
            n.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_logs_one_connect_failure_a_second_with_the_suppressed_count() {
    let keys = "retries = 0\n\n[upstreams.app.ejection]\nconsecutive_failures = 0";
    let d = Daemon::builder(&config(r#"{ address = "${DEAD}" }"#, keys))
        .var("DEAD", refused_addr())
        .start()
        .await;
    let burst = 30;
    let started = Instant::now();
    for _ in 0..burst {
        assert_eq!(
            get_once(d.addr("web"), "/").await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    let took = started.elapsed();
    println!("{burst} failed requests took {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "the burst must fit in one period: {took:?}"
    );
    // Then one request at a time until the site may log again (one second after its first line).
    let mut sent = burst;
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert_eq!(
            get_once(d.addr("web"), "/").await.status,
            StatusCode::BAD_GATEWAY
        );
        sent += 1;
        let second = eventually(Duration::from_millis(300), || {
            connect_failures(&d.stderr_text()).len() >= 2
        })
        .await;
        if second {
            break;
        }
        assert!(Instant::now() < deadline, "{}", d.stderr_text());
    }
    let lines = connect_failures(&d.stderr_text());
    println!("{sent} failed requests, lines: {lines:?}");
    // The first failure is logged; the rest of the burst and the requests in the rest of that
    // second are held back and reported by the second line.
    assert_eq!(lines, [0, sent - 2], "{}", d.stderr_text());
}
