//! The admin endpoint: `/healthz`, `/metrics` and `/status`.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::admin::is_series;
use support::client::{get_once, H1Client};
use support::{Behaviour, Daemon, HttpBackend};

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
