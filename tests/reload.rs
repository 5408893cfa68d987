//! Hot reload through the real daemon: `fulcrum reload` and SIGHUP with keep-alive clients
//! running, listeners and servers added and removed, invalid files, addresses in use.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use support::admin::{metric_sum, metrics, status};
use support::client::get_once;
use support::{eventually, Behaviour, Daemon, H1Client, HttpBackend};
use tokio::net::TcpStream;

/// A config: listener `web` on upstream `route`, upstream `app` with `app` servers and, when
/// given, upstream `other` with `other` servers, and an `extra` listener over `app` when asked.
fn config(app: &[&HttpBackend], other: &[&HttpBackend], extra: bool, route: &str) -> String {
    let servers = |list: &[&HttpBackend]| {
        list.iter()
            .map(|b| format!("{{ address = \"{}\" }}", b.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "{route}"

[upstreams.app]
servers = [ {} ]
"#,
        servers(app)
    );
    if !other.is_empty() {
        text.push_str(&format!(
            "\n[upstreams.other]\nservers = [ {} ]\n",
            servers(other)
        ));
    }
    if extra {
        text.push_str(
            "\n[listeners.extra]\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n",
        );
    }
    text
}

/// Writes `text` as the daemon's config and runs `fulcrum reload`; panics unless it succeeds.
async fn reload_ok(d: &Daemon, text: &str) {
    d.write_config(text);
    let (code, out, err) = reload_command(d).await;
    assert_eq!(
        code,
        0,
        "fulcrum reload failed:\n{out}\n{err}\n--- daemon ---\n{}",
        d.stderr_text()
    );
    assert!(out.starts_with("reloaded:"), "{out}");
}

async fn reload_command(d: &Daemon) -> (i32, String, String) {
    tokio::task::block_in_place(|| d.reload_command())
}

async fn reloads(d: &Daemon, result: &str) -> f64 {
    metric_sum(
        &metrics(d.admin_addr()).await,
        "fulcrum_config_reloads_total",
        &[("result", result)],
    )
}

/// Waits until `backend` has served `more` requests beyond what it had.
async fn serves(backend: &HttpBackend, more: usize) {
    let from = backend.requests();
    assert!(
        eventually(Duration::from_secs(10), || backend.requests()
            >= from + more)
        .await,
        "{} served {} requests, expected {} more",
        backend.name(),
        backend.requests(),
        more
    );
}

/// Asserts that `gone` takes no request while `live` serves `n` more (after a grace of 20, for
/// requests that had picked `gone` before the reload and are finishing).
async fn takes_nothing(gone: &[&HttpBackend], live: &HttpBackend) {
    serves(live, 20).await;
    let before: Vec<usize> = gone.iter().map(|b| b.requests()).collect();
    serves(live, 100).await;
    let after: Vec<usize> = gone.iter().map(|b| b.requests()).collect();
    assert_eq!(before, after, "a removed server still takes requests");
}

/// Keep-alive clients that send requests one after another on one connection each, until told to
/// stop, counting successes and failures.
struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<H1Client>>,
}

impl Clients {
    async fn start(addr: SocketAddr, n: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut client = H1Client::connect(addr).await;
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                // Paced, so that connections spend most of their time idle between requests.
                let mut pace = tokio::time::interval(Duration::from_millis(5 + i as u64 % 7));
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    match client.try_send(support::client::get(addr, "/")).await {
                        Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("client {i}: {r:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("client {i}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    };
                }
                client
            }));
        }
        Clients {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the clients; returns (requests answered 200, failed, connections closed).
    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut closed = 0;
        for task in self.tasks {
            let client = task.await.expect("client task");
            closed += usize::from(client.is_closed());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            closed,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_keep_alive_traffic_fail_nothing_and_close_nothing() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let c = HttpBackend::start("c", Behaviour::Identity).await;
    let o = HttpBackend::start("o", Behaviour::Identity).await;
    let d = Daemon::builder(&config(&[&a], &[], false, "app"))
        .start()
        .await;
    let web = d.addr("web");
    let clients = Clients::start(web, 20).await;
    serves(&a, 100).await;

    // 1. A server added.
    reload_ok(&d, &config(&[&a, &b], &[], false, "app")).await;
    serves(&b, 50).await;

    // 2. A listener added: it binds, and serves.
    reload_ok(&d, &config(&[&a, &b], &[], true, "app")).await;
    assert!(
        d.wait_for_stderr("listening listener=extra", Duration::from_secs(5))
            .await
    );
    let extra = d.addr("extra");
    assert_eq!(get_once(extra, "/").await.status, StatusCode::OK);

    // 3. A server removed: it takes nothing more.
    reload_ok(&d, &config(&[&b], &[], true, "app")).await;
    takes_nothing(&[&a], &b).await;

    // 4. An invalid file: refused with its line, nothing changes.
    let mut broken = config(&[&b, &c], &[], true, "app");
    broken.push_str("\n[upstreams.app.ejection]\nmax_percent = \"half\"\n");
    d.write_config(&broken);
    let (code, out, err) = reload_command(&d).await;
    assert_eq!(code, 1, "an invalid file was accepted:\n{out}\n{err}");
    assert!(
        err.contains("fulcrum.toml") && err.contains("max_percent"),
        "{err}"
    );
    assert!(
        err.contains("at line 23, column 15"),
        "the error names the line: {err}"
    );
    // The daemon, told directly, refuses it too: logged with file, line and key, and counted.
    d.signal("HUP");
    assert!(
        d.wait_for_stderr("reload refused", Duration::from_secs(5))
            .await
    );
    let log = d.stderr_text();
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        line.contains("fulcrum.toml at line 23, column 15, key `max_percent`"),
        "{line}"
    );
    assert_eq!(reloads(&d, "error").await, 1.0);
    takes_nothing(&[&a, &c], &b).await;
    assert_eq!(get_once(extra, "/").await.status, StatusCode::OK);

    // 5. By SIGHUP: a server added.
    d.write_config(&config(&[&b, &c], &[], true, "app"));
    d.signal("HUP");
    serves(&c, 50).await;

    // 6. A listener removed: its port closes; web's clients go on.
    reload_ok(&d, &config(&[&b, &c], &[], false, "app")).await;
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            extra
        )
        .is_err())
        .await,
        "the removed listener still accepts"
    );

    // 7. The listener routed to another upstream: idle keep-alive connections follow.
    reload_ok(&d, &config(&[&b, &c], &[&o], false, "other")).await;
    takes_nothing(&[&b, &c], &o).await;

    // 8. Routed back, and `other` removed.
    reload_ok(&d, &config(&[&b, &c], &[], false, "app")).await;
    takes_nothing(&[&o], &c).await;

    // 9. A server removed again.
    reload_ok(&d, &config(&[&c], &[], false, "app")).await;
    takes_nothing(&[&b], &c).await;

    // 10. The first server back.
    reload_ok(&d, &config(&[&a, &c], &[], false, "app")).await;
    serves(&a, 50).await;

    let (ok, failed, closed) = clients.finish().await;
    let text = metrics(d.admin_addr()).await;
    let connections = metric_sum(&text, "fulcrum_connections_total", &[("listener", "web")]);
    println!("20 keep-alive clients, 10 reloads: {ok} requests, {failed} failed, {closed} connections closed, {connections} connections accepted on web");
    assert_eq!(failed, 0, "requests failed across the reloads");
    assert_eq!(
        closed, 0,
        "Fulcrum closed client connections across the reloads"
    );
    assert_eq!(connections, 20.0, "a client had to reconnect");
    assert_eq!(reloads(&d, "ok").await, 9.0);
    assert_eq!(reloads(&d, "error").await, 1.0);
    let names: Vec<String> = status(d.admin_addr()).await["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["app"],
        "the admin endpoint reads the running upstreams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_finishes_the_request_in_flight_then_closes() {
    let slow = HttpBackend::start("slow", Behaviour::Slow(Duration::from_millis(600))).await;
    let fast = HttpBackend::start("fast", Behaviour::Identity).await;
    let d = Daemon::builder(&config(&[&slow], &[], true, "app"))
        .start()
        .await;
    let extra = d.addr("extra");
    let mut busy = H1Client::connect(extra).await;
    let mut idle = H1Client::connect(extra).await;
    assert_eq!(idle.get("/").await.status, StatusCode::OK);
    let in_flight = tokio::spawn(async move {
        let reply = busy.get("/").await;
        (reply, busy)
    });
    assert!(eventually(Duration::from_secs(5), || slow.requests() == 2).await);
    // The listener goes while a request is in flight on it.
    d.write_config(&config(&[&slow, &fast], &[], false, "app"));
    let (code, out, err) = reload_command(&d).await;
    assert_eq!(code, 0, "{out}{err}");
    let (reply, busy) = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the request in flight is answered"
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(
        eventually(Duration::from_secs(5), || busy.is_closed()
            && idle.is_closed())
        .await,
        "the removed listener's connections close once idle"
    );
    assert!(
        TcpStream::connect(extra).await.is_err(),
        "the removed listener accepts no more"
    );
    assert_eq!(get_once(d.addr("web"), "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_new_address_is_in_use_changes_nothing() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = Daemon::builder(&config(&[&a], &[], false, "app"))
        .start()
        .await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut text = config(&[&a, &b], &[], false, "app");
    text.push_str(&format!(
        "\n[listeners.taken]\nbind = \"{}\"\nmode = \"http\"\nupstream = \"app\"\n",
        taken.local_addr().unwrap()
    ));
    d.write_config(&text);
    let (code, out, err) = reload_command(&d).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("address in use") && err.contains("taken"),
        "{err}"
    );
    let mut client = H1Client::connect(d.addr("web")).await;
    for _ in 0..10 {
        assert_eq!(
            client.get("/").await.backend(),
            "a",
            "b must not have been added"
        );
    }
    assert_eq!(reloads(&d, "error").await, 1.0);
    assert_eq!(reloads(&d, "ok").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_stay_keep_their_counters_and_state() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = Daemon::builder(&config(&[&a], &[], false, "app"))
        .start()
        .await;
    let mut client = H1Client::connect(d.addr("web")).await;
    for _ in 0..7 {
        client.get("/").await;
    }
    assert_eq!(
        a.accepts(),
        1,
        "one pooled connection serves a sequential client"
    );
    reload_ok(&d, &config(&[&a, &b], &[], false, "app")).await;
    let doc = status(d.admin_addr()).await;
    let servers = doc["upstreams"][0]["servers"].as_array().unwrap().clone();
    let requests: Vec<u64> = servers
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .collect();
    assert_eq!(requests, [7, 0], "a kept its count; b starts at zero");
    // Round robin now alternates a and b: a takes two of the next four.
    for _ in 0..4 {
        client.get("/").await;
    }
    assert_eq!(a.requests(), 9);
    assert_eq!(a.accepts(), 1, "a's pooled connection outlived the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_a_running_daemon_says_so() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let mut d = Daemon::builder(&config(&[&a], &[], false, "app"))
        .start()
        .await;
    d.sigterm();
    assert!(d.wait_exit(Duration::from_secs(10)).await.is_some());
    assert!(!d.pid_file().exists(), "the pid file is removed at exit");
    let (code, _, err) = reload_command(&d).await;
    assert_eq!(code, 1);
    assert!(err.contains("pid file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_addresses_fails_with_address_in_use() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let first = Daemon::builder(&config(&[&a], &[], false, "app"))
        .start()
        .await;
    let port = first.addr("web");
    let text = format!(
        "[runtime]\nworker_threads = 2\n[listeners.web]\nbind = \"{port}\"\nmode = \"http\"\nreuse_port = true\nupstream = \"app\"\n[upstreams.app]\nservers = [{{ address = \"{}\" }}]\n",
        a.addr()
    );
    let second = Daemon::builder(&text).try_start().await;
    let err = match second {
        Ok(_) => panic!("a second fulcrum bound {port} beside the first"),
        Err(e) => e,
    };
    assert!(err.contains("address in use"), "{err}");
    assert_eq!(get_once(port, "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_marked_down_by_its_checks_stays_down_across_a_reload() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let c = HttpBackend::start("c", Behaviour::Identity).await;
    b.set_health(503);
    // One check per minute: after the first, only a reset by the reload could change b's state.
    let checked = |servers: &[&HttpBackend]| {
        let mut text = config(servers, &[], false, "app");
        text.push_str(&format!(
            "\n[upstreams.app.health_check]\nkind = \"http\"\npath = \"{}\"\ninterval = \"60s\"\n",
            support::HEALTH_PATH
        ));
        text
    };
    let d = Daemon::builder(&checked(&[&a, &b])).start().await;
    let admin = d.admin_addr();
    support::admin::wait_for_state(admin, "app", b.addr(), "down", Duration::from_secs(5)).await;
    let checks = b.checks();
    reload_ok(&d, &checked(&[&a, &b, &c])).await;
    let b_now = support::admin::server_status(admin, "app", b.addr()).await;
    assert_eq!(b_now["state"], "down", "{b_now}");
    assert_eq!(
        b.checks(),
        checks,
        "b's checker kept its rhythm: no new check at reload"
    );
    assert!(
        eventually(Duration::from_secs(5), || c.checks() == 1).await,
        "the new server is checked at once"
    );
    assert_eq!(b.checks(), checks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_stays_drained_across_a_reload() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let c = HttpBackend::start("c", Behaviour::Identity).await;
    let d = Daemon::builder(&config(&[&a, &b], &[], false, "app"))
        .start()
        .await;
    let admin = d.admin_addr();
    let drained = support::admin::action(admin, "app", &b.addr().to_string(), "drain", &[]).await;
    assert_eq!(drained.status, StatusCode::OK, "{drained:?}");
    reload_ok(&d, &config(&[&a, &b, &c], &[], false, "app")).await;
    let b_now = support::admin::server_status(admin, "app", b.addr()).await;
    assert_eq!(b_now["state"], "draining", "{b_now}");
    let mut client = H1Client::connect(d.addr("web")).await;
    for _ in 0..10 {
        assert_ne!(client.get("/").await.backend(), "b");
    }
    assert_eq!(b.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_access_log_and_refuses_one_it_cannot_open() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let dir = tempfile::tempdir().unwrap();
    let with_log = |path: &std::path::Path| {
        config(&[&a], &[], false, "app").replace(
            "upstream = \"app\"\n",
            &format!("upstream = \"app\"\naccess_log = \"{}\"\n", path.display()),
        )
    };
    let first = dir.path().join("first.log");
    let second = dir.path().join("second.log");
    let d = Daemon::builder(&with_log(&first)).start().await;
    let mut client = H1Client::connect(d.addr("web")).await;
    let lines = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    client.get("/one").await;
    assert!(eventually(Duration::from_secs(5), || lines(&first) == 1).await);

    // A log in a directory that does not exist: refused, and the old log goes on.
    d.write_config(&with_log(&dir.path().join("missing/dir/x.log")));
    let (code, out, err) = reload_command(&d).await;
    // The file passes validation; the daemon refuses it, and `fulcrum reload` says so.
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("reload refused") && err.contains("cannot open access_log"),
        "{err}"
    );
    assert_eq!(reloads(&d, "error").await, 1.0);
    client.get("/two").await;
    assert!(eventually(Duration::from_secs(5), || lines(&first) == 2).await);

    reload_ok(&d, &with_log(&second)).await;
    client.get("/three").await;
    assert!(eventually(Duration::from_secs(5), || lines(&second) == 1).await);
    assert_eq!(lines(&first), 2, "the old file gets nothing more");
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&second).unwrap().trim()).unwrap();
    assert_eq!(line["path"], "/three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_server_listed_twice_or_a_zero_weight_is_refused_at_its_line() {
    let a = HttpBackend::start("a", Behaviour::Identity).await;
    let b = HttpBackend::start("b", Behaviour::Identity).await;
    let d = Daemon::builder(&config(&[&a], &[], false, "app"))
        .start()
        .await;
    let base = config(&[], &[], false, "app");
    let (head, _) = base.split_once("[upstreams.app]").unwrap();
    let twice = format!(
        "{head}[upstreams.app]\nservers = [\n  {{ address = \"{a}\" }},\n  {{ address = \"{a}\" }},\n]\n",
        a = a.addr()
    );
    let zero = format!(
        "{head}[[upstreams.app.servers]]\naddress = \"{}\"\n\n[[upstreams.app.servers]]\naddress = \"{}\"\nweight = 0\n",
        a.addr(),
        b.addr()
    );
    let line_of =
        |text: &str, needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();
    for (text, key, line, column) in [
        (
            &twice,
            "upstreams.app.servers[1].address",
            line_of(&twice, "},") + 1,
            15,
        ),
        (
            &zero,
            "upstreams.app.servers[1].weight",
            line_of(&zero, "weight = 0"),
            10,
        ),
    ] {
        let at = format!("at line {line}, column {column}, key `{key}`");
        d.write_config(text);
        let (code, out, err) = reload_command(&d).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains(&at), "fulcrum reload: {err}\nwanted {at}");
        // The daemon's own validation says the same.
        let before = reloads(&d, "error").await;
        d.signal("HUP");
        assert!(
            eventually(Duration::from_secs(5), || d.stderr_text().contains(&at)).await,
            "the daemon did not log {at}:\n{}",
            d.stderr_text()
        );
        assert_eq!(reloads(&d, "error").await, before + 1.0);
    }
    let mut client = H1Client::connect(d.addr("web")).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.backend(), "a", "nothing changed");
    }
}
