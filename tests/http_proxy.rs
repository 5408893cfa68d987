//! L7 proxying: balancing, upstream keep-alive and pooling, backups, `respond` listeners.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use http::{Method, StatusCode};
use support::client::{self, get_once, H1Client};
use support::{Behaviour, Daemon, HttpBackend};

const WEB: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights_exactly() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let c = HttpBackend::start("c", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
strategy = "round_robin"
servers = [
  { address = "${A}", weight = 1 },
  { address = "${B}", weight = 2 },
  { address = "${C}", weight = 3 },
]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", a.addr())
        .var("B", b.addr())
        .var("C", c.addr())
        .start()
        .await;

    let mut client = H1Client::connect(d.addr("web")).await;
    let mut order = Vec::new();
    for _ in 0..600 {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.text(), r.backend());
        order.push(r.backend().to_string());
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for name in &order {
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(
        (counts["a"], counts["b"], counts["c"]),
        (100, 200, 300),
        "weights 1:2:3 over 600 sequential requests"
    );
    assert_eq!((a.requests(), b.requests(), c.requests()), (100, 200, 300));

    // Smooth: every 6 consecutive picks hold one period (1, 2, 3), and the heaviest server never
    // gets three in a row (a plain weighted RR would send c, c, c).
    for (i, window) in order.windows(6).enumerate() {
        let n = |s: &str| window.iter().filter(|w| *w == s).count();
        assert_eq!(
            (n("a"), n("b"), n("c")),
            (1, 2, 3),
            "window at {i}: {window:?}"
        );
    }
    let longest_run = order
        .chunk_by(|x, y| x == y)
        .map(|run| run.len())
        .max()
        .unwrap();
    assert!(
        longest_run <= 2,
        "not smooth: a run of {longest_run} in {:?}",
        &order[..24]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
servers = [ { address = "${A}" } ]
"#
    );
    let d = Daemon::builder(&config).var("A", app.addr()).start().await;

    let mut client = H1Client::connect(d.addr("web")).await;
    for _ in 0..50 {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    assert_eq!(app.requests(), 50);
    let accepts = app.accepts();
    println!("50 requests on one client connection: {accepts} upstream connection(s)");
    assert!(
        accepts <= 2,
        "{accepts} upstream connections for 50 sequential requests"
    );

    // Sequential client connections reuse the per-worker pools: at most one idle connection per
    // worker is needed (bound doubled against a connection returning to its pool late).
    drop(client);
    for _ in 0..5 {
        let mut client = H1Client::connect(d.addr("web")).await;
        for _ in 0..10 {
            assert_eq!(client.get("/").await.status, StatusCode::OK);
        }
    }
    assert_eq!(app.requests(), 100);
    let accepts = app.accepts();
    println!("100 requests on 6 client connections: {accepts} upstream connection(s)");
    assert!(
        accepts <= 4,
        "{accepts} upstream connections for 100 sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_serve_only_when_no_primary_may() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let backup = HttpBackend::start("backup", Behaviour::Identity).await;
    let config = r#"
[runtime]
worker_threads = 2

[listeners.mixed]
bind = "127.0.0.1:0"
mode = "http"
upstream = "mixed"

[listeners.fallback]
bind = "127.0.0.1:0"
mode = "http"
upstream = "fallback"

[upstreams.mixed]
servers = [
  { address = "${A}", weight = 1 },
  { address = "${B}", weight = 1, down = true },
  { address = "${BACKUP}", weight = 5, backup = true },
]

[upstreams.fallback]
servers = [
  { address = "${A}", down = true },
  { address = "${BACKUP}", backup = true },
]
"#;
    let d = Daemon::builder(config)
        .var("A", a.addr())
        .var("B", b.addr())
        .var("BACKUP", backup.addr())
        .start()
        .await;

    let mut client = H1Client::connect(d.addr("mixed")).await;
    for _ in 0..30 {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(
            r.backend(),
            "a",
            "the one eligible primary takes all traffic"
        );
    }
    assert_eq!((a.requests(), b.requests(), backup.requests()), (30, 0, 0));

    let mut client = H1Client::connect(d.addr("fallback")).await;
    for _ in 0..30 {
        let r = client.get("/").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(
            r.backend(),
            "backup",
            "with its only primary down, the backup serves"
        );
    }
    assert_eq!((a.requests(), backup.requests()), (30, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_listener_answers_from_config() {
    let config = r#"
[runtime]
worker_threads = 2

[listeners.hello]
bind = "127.0.0.1:0"
mode = "http"
respond = { status = 200, body = "hello\n", headers = { "content-type" = "text/plain" } }

[listeners.teapot]
bind = "127.0.0.1:0"
mode = "http"
respond = { status = 418, body = "short and stout", headers = { "x-custom" = "yes", "cache-control" = "no-store" } }
"#;
    let d = Daemon::builder(config).start().await;

    let mut client = H1Client::connect(d.addr("hello")).await;
    for path in ["/", "/anything?x=1", "/a/b/c"] {
        let r = client.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.text(), "hello\n");
        assert_eq!(r.header("content-type"), Some("text/plain"));
    }
    let r = client::send_once(
        d.addr("hello"),
        client::request(
            Method::POST,
            d.addr("hello"),
            "/post",
            client::full("ignored body"),
        ),
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "hello\n"));

    let r = get_once(d.addr("teapot"), "/").await;
    assert_eq!(r.status.as_u16(), 418, "{r:?}");
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_upstream_connections_expire() {
    let app = HttpBackend::start("app", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
pool_idle_timeout = "300ms"
servers = [ { address = "${A}" } ]
"#
    );
    let d = Daemon::builder(&config).var("A", app.addr()).start().await;
    let mut c = H1Client::connect(d.addr("web")).await;
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    assert_eq!(app.accepts(), 1);
    let started = Instant::now();
    assert!(
        support::eventually(Duration::from_secs(3), || app.closed() == 1).await,
        "the idle upstream connection was still open 3 s after a 300 ms pool_idle_timeout"
    );
    println!(
        "idle upstream connection closed after {:?}",
        started.elapsed()
    );
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    assert_eq!(
        app.accepts(),
        2,
        "a new upstream connection after the idle one closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_with_one_shared_socket_serves() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let config = r#"
[runtime]
worker_threads = 2

[listeners.shared]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
reuse_port = false
backlog = 16

[upstreams.app]
servers = [ { address = "${A}" }, { address = "${B}" } ]
"#;
    let d = Daemon::builder(config)
        .var("A", a.addr())
        .var("B", b.addr())
        .start()
        .await;
    assert_eq!(d.addrs("shared").len(), 1);
    for _ in 0..10 {
        assert_eq!(get_once(d.addr("shared"), "/").await.status, StatusCode::OK);
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_all_succeed_and_spread() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let config = format!(
        "{WEB}{}",
        r#"
[upstreams.app]
servers = [ { address = "${A}" }, { address = "${B}" } ]
"#
    );
    let d = Daemon::builder(&config)
        .var("A", a.addr())
        .var("B", b.addr())
        .start()
        .await;
    let web = d.addr("web");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1Client::connect(web).await;
            for _ in 0..25 {
                let r = c.get("/").await;
                assert_eq!(r.status, StatusCode::OK, "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let (na, nb) = (a.requests(), b.requests());
    println!("200 concurrent requests: a {na}, b {nb}");
    assert_eq!(na + nb, 200);
    assert!((80..=120).contains(&na), "uneven spread: a {na}, b {nb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_listener_serves_ipv4_and_ipv6() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let config = r#"
[runtime]
worker_threads = 2

[listeners.web]
bind = ["127.0.0.1:0", "[::1]:0"]
mode = "http"
upstream = "app"

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;
    let d = Daemon::builder(config).var("A", a.addr()).start().await;
    let addrs = d.addrs("web");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    for addr in addrs {
        let r = get_once(addr, "/").await;
        assert_eq!(r.status, StatusCode::OK, "via {addr}");
        assert_eq!(r.backend(), "a", "via {addr}");
    }
}
