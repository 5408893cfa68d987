//! Consistent hashing end to end (CONTRACT.md "Consistent hashing", "Strategies"): a key keeps to
//! one server, for every key kind; tcp listeners hash the client IP; two instances with one config
//! agree on every key; a request without the key goes by client IP and is counted; removing a
//! server moves only its keys (ring) and its return gives them back.
//!
//! Backends name themselves in `x-backend`, so which server a key reached is read off the answer.
//! Client addresses other than 127.0.0.1 come from binding the client socket to another loopback
//! address (Linux routes all of 127.0.0.0/8 to `lo`).

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use support::admin::{metric_sum, metrics, wait_for_state};
use support::client::{echo_roundtrip, get, head_header, read_to_eof, H1Client};
use support::{within, Behaviour, Daemon, EchoMode, HttpBackend, TcpEchoBackend, WEB};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// How long one connect or exchange may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// `n` identity backends named `s0`, `s1`, ...
async fn backends(n: usize) -> Vec<HttpBackend> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(HttpBackend::start(&format!("s{i}"), Behaviour::Identity).await);
    }
    all
}

fn servers_line(backends: &[HttpBackend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{}\" }}", b.addr()))
        .collect();
    format!("servers = [ {} ]", list.join(", "))
}

/// `[upstreams.NAME]` hashing `key` with `algorithm` over `backends`.
fn hashed_upstream(name: &str, key: &str, algorithm: &str, backends: &[HttpBackend]) -> String {
    format!(
        "\n[upstreams.{name}]\nstrategy = \"consistent_hash\"\n{}\n\n\
         [upstreams.{name}.hash]\nkey = \"{key}\"\nalgorithm = \"{algorithm}\"\n",
        servers_line(backends)
    )
}

/// `[listeners.NAME]` in `mode` over `upstream`.
fn listener(name: &str, mode: &str, upstream: &str) -> String {
    format!(
        "\n[listeners.{name}]\nbind = \"127.0.0.1:0\"\nmode = \"{mode}\"\nupstream = \"{upstream}\"\n"
    )
}

/// A `WEB` daemon (listener `web`, upstream `app`) hashing `key`.
async fn start(key: &str, algorithm: &str, backends: &[HttpBackend]) -> Daemon {
    let config = format!("{WEB}{}", hashed_upstream("app", key, algorithm, backends));
    Daemon::builder(&config).start().await
}

/// `GET path` with `headers` on `client`: the backend that answered.
async fn backend_for(client: &mut H1Client, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = get(client.addr(), path);
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let r = client.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    r.backend().to_string()
}

/// A connection to `to` from loopback address `from`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    within(DEADLINE, "connect", socket.connect(to))
        .await
        .unwrap_or_else(|e| panic!("connect {to} from {from}: {e}"))
}

/// `GET path` written raw from `from` (Connection: close): the backend that answered.
async fn raw_get_from(from: IpAddr, to: SocketAddr, path: &str, extra_headers: &str) -> String {
    let mut s = connect_from(from, to).await;
    let head =
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra_headers}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let raw = read_to_eof(&mut s).await.expect("response");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    head_header(&text, "x-backend")
        .unwrap_or_else(|| panic!("no x-backend: {text}"))
        .to_string()
}

fn loopback(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// Asserts that each key of `seen` (key -> backends it reached) reached one backend, and that
/// the keys together reached more than one.
fn assert_sticky_and_spread(what: &str, seen: &HashMap<String, HashSet<String>>) {
    for (key, servers) in seen {
        assert_eq!(servers.len(), 1, "{what}: key {key:?} reached {servers:?}");
    }
    let used: HashSet<&String> = seen.values().flatten().collect();
    assert!(used.len() > 1, "{what}: every key on {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_user_id_always_reaches_the_same_server() {
    let backends = backends(3).await;
    let d = start("header:x-user-id", "maglev", &backends).await;
    let mut client = H1Client::connect(d.addr("web")).await;
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    // Interleaved rounds, different paths: only the header decides.
    for round in 0..5 {
        for user in 0..40 {
            let id = format!("user-{user}");
            let path = format!("/round/{round}/page/{}", user * 7);
            let server = backend_for(&mut client, &path, &[("x-user-id", &id)]).await;
            seen.entry(id).or_default().insert(server);
        }
    }
    assert_sticky_and_spread("header:x-user-id", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_hashes_the_client_ip() {
    let mut echoes = Vec::new();
    for _ in 0..3 {
        echoes.push(TcpEchoBackend::start(EchoMode::Stream).await);
    }
    let servers: Vec<String> = echoes
        .iter()
        .map(|e| format!("{{ address = \"{}\" }}", e.addr()))
        .collect();
    // The key names a header, which a tcp connection does not have: tcp hashes the client IP.
    let config = format!(
        "{WEB}{}\n[upstreams.app]\nstrategy = \"consistent_hash\"\nservers = [ {} ]\n\n\
         [upstreams.app.hash]\nkey = \"header:x-user-id\"\n",
        listener("l4", "tcp", "app"),
        servers.join(", ")
    );
    let d = Daemon::builder(&config).start().await;
    let l4 = d.addr("l4");
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for round in 0..3 {
        for i in 1..=30u8 {
            let before: Vec<usize> = echoes.iter().map(TcpEchoBackend::accepts).collect();
            let mut s = connect_from(loopback(i), l4).await;
            echo_roundtrip(&mut s, format!("round {round}").as_bytes()).await;
            let took: Vec<usize> = (0..echoes.len())
                .filter(|&k| echoes[k].accepts() > before[k])
                .collect();
            assert_eq!(took.len(), 1, "{took:?}");
            seen.entry(loopback(i).to_string())
                .or_default()
                .insert(format!("echo{}", took[0]));
        }
    }
    assert_sticky_and_spread("tcp client IP", &seen);
    let text = metrics(d.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &text,
            "fulcrum_hash_key_missing_total",
            &[("upstream", "app")]
        ),
        0.0,
        "a tcp connection has no key to miss"
    );
}

/// Which backend each key `user-{i}` (i < `keys`) reaches through `web`, asked over `clients`
/// concurrent keep-alive connections.
async fn map_keys(web: SocketAddr, keys: usize, clients: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = H1Client::connect(web).await;
                let mut got = Vec::new();
                for i in (c..keys).step_by(clients) {
                    let id = format!("user-{i}");
                    got.push((
                        i,
                        backend_for(&mut client, "/", &[("x-user-id", &id)]).await,
                    ));
                }
                got
            })
        })
        .collect();
    let mut all = vec![String::new(); keys];
    for t in tasks {
        for (i, server) in t.await.expect("client task") {
            all[i] = server;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_with_one_config_agree_on_every_key() {
    const KEYS: usize = 3000;
    let backends = backends(5).await;
    let config = format!(
        "{WEB}{}{}{}",
        listener("ring", "http", "ring"),
        hashed_upstream("app", "header:x-user-id", "maglev", &backends),
        hashed_upstream("ring", "header:x-user-id", "ring", &backends),
    );
    let one = Daemon::builder(&config).start().await;
    let two = Daemon::builder(&config).start().await;
    for listener in ["web", "ring"] {
        let (a, b) = tokio::join!(
            map_keys(one.addr(listener), KEYS, 4),
            map_keys(two.addr(listener), KEYS, 4)
        );
        let differ: Vec<usize> = (0..KEYS).filter(|&i| a[i] != b[i]).collect();
        assert!(
            differ.is_empty(),
            "{listener}: {} of {KEYS} keys map differently, e.g. user-{}: {} vs {}",
            differ.len(),
            differ[0],
            a[differ[0]],
            b[differ[0]]
        );
        let mut shares: HashMap<&str, usize> = HashMap::new();
        for server in &a {
            *shares.entry(server.as_str()).or_default() += 1;
        }
        println!("{listener}: {KEYS} keys over 5 servers: {shares:?}");
        // Equal weights: 600 each; ring keeps shares within 10 % of the weight share.
        assert_eq!(shares.len(), 5, "{listener}: {shares:?}");
        assert!(
            shares.values().all(|&n| (480..=720).contains(&n)),
            "{listener}: {shares:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_kind_keeps_a_key_on_one_server_and_spreads_different_keys() {
    let backends = backends(3).await;
    let kinds = [
        ("k_client_ip", "client_ip"),
        ("k_uri", "uri"),
        ("k_path", "path"),
        ("k_header", "header:x-user-id"),
        ("k_cookie", "cookie:session"),
        ("k_query", "query:user"),
    ];
    let mut config = String::from(
        "[runtime]\nworker_threads = 2\nshutdown_timeout = \"5s\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
    );
    for (name, key) in kinds {
        config.push_str(&listener(name, "http", name));
        config.push_str(&hashed_upstream(name, key, "maglev", &backends));
    }
    let d = Daemon::builder(&config).start().await;
    for (name, key) in kinds {
        let addr = d.addr(name);
        let mut client = H1Client::connect(addr).await;
        let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
        // Per repetition, whatever is not the key changes.
        for rep in 0..3 {
            for k in 1..=30u8 {
                let server = match key {
                    "client_ip" => raw_get_from(loopback(k), addr, &format!("/r{rep}"), "").await,
                    "uri" => {
                        let uri = format!("/item/{k}?v=1");
                        backend_for(&mut client, &uri, &[("x-noise", &rep.to_string())]).await
                    }
                    "path" => backend_for(&mut client, &format!("/item/{k}?r={rep}"), &[]).await,
                    "header:x-user-id" => {
                        let id = format!("u{k}");
                        backend_for(&mut client, &format!("/r{rep}"), &[("x-user-id", &id)]).await
                    }
                    "cookie:session" => {
                        let cookie = format!("theme=t{rep}; session=s{k}; lang=l{rep}");
                        backend_for(&mut client, &format!("/r{rep}"), &[("cookie", &cookie)]).await
                    }
                    "query:user" => {
                        let uri = format!("/search?r={rep}&user=u{k}&z={rep}");
                        backend_for(&mut client, &uri, &[]).await
                    }
                    other => unreachable!("{other}"),
                };
                seen.entry(k.to_string()).or_default().insert(server);
            }
        }
        assert_sticky_and_spread(key, &seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_key_goes_by_client_ip_and_is_counted() {
    let backends = backends(3).await;
    let config = format!(
        "{WEB}{}{}{}",
        listener("by_ip", "http", "by_ip"),
        hashed_upstream("app", "header:x-user-id", "maglev", &backends),
        hashed_upstream("by_ip", "client_ip", "maglev", &backends),
    );
    let d = Daemon::builder(&config).start().await;
    let mut missing = 0;
    for i in 1..=20u8 {
        let by_ip = raw_get_from(loopback(i), d.addr("by_ip"), "/", "").await;
        for _ in 0..2 {
            let fallback = raw_get_from(loopback(i), d.addr("web"), "/", "").await;
            missing += 1;
            assert_eq!(
                fallback,
                by_ip,
                "from {}: without x-user-id the request goes by client IP",
                loopback(i)
            );
        }
        // With the key it is not counted.
        raw_get_from(loopback(i), d.addr("web"), "/", "x-user-id: someone\r\n").await;
    }
    let text = metrics(d.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &text,
            "fulcrum_hash_key_missing_total",
            &[("upstream", "app")]
        ),
        f64::from(missing),
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "fulcrum_hash_key_missing_total",
            &[("upstream", "by_ip")]
        ),
        0.0,
        "client_ip is never missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_takes_only_its_keys_and_gets_them_back() {
    const KEYS: usize = 400;
    let mut backends = backends(4).await;
    // A killed server fails its next check and is down at once (its first failure); back, it is up
    // after one good check.
    let check = "kind = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
                 rise = 1\nfall = 1\n";
    let mut config = format!("{WEB}{}", listener("ring", "http", "ring"));
    for (name, algorithm) in [("app", "maglev"), ("ring", "ring")] {
        config.push_str(&hashed_upstream(
            name,
            "header:x-user-id",
            algorithm,
            &backends,
        ));
        config.push_str(&format!("\n[upstreams.{name}.health_check]\n{check}"));
    }
    let d = Daemon::builder(&config).start().await;
    let (maglev, ring) = (d.addr("web"), d.addr("ring"));
    let before = (
        map_keys(maglev, KEYS, 4).await,
        map_keys(ring, KEYS, 4).await,
    );

    let gone = backends.pop().expect("four backends");
    let (gone_addr, gone_name) = (gone.addr(), gone.name().to_string());
    gone.kill();
    for upstream in ["app", "ring"] {
        wait_for_state(d.admin_addr(), upstream, gone_addr, "down", DEADLINE).await;
    }
    let during = (
        map_keys(maglev, KEYS, 4).await,
        map_keys(ring, KEYS, 4).await,
    );
    for (algorithm, before, during, allowed) in [
        ("maglev", &before.0, &during.0, KEYS / 100),
        ("ring", &before.1, &during.1, 0),
    ] {
        let owned = before.iter().filter(|s| **s == gone_name).count();
        assert!(owned > 0, "{algorithm}: {gone_name} owned no key");
        assert!(
            during.iter().all(|s| *s != gone_name),
            "{algorithm}: a key still reached the removed server"
        );
        let others_moved = (0..KEYS)
            .filter(|&i| before[i] != gone_name && before[i] != during[i])
            .count();
        println!("{algorithm}: {owned} keys moved off {gone_name}, {others_moved} others moved");
        assert!(
            others_moved <= allowed,
            "{algorithm}: {others_moved} keys of other servers moved (at most {allowed})"
        );
    }

    let back = HttpBackend::start_on(gone_addr, &gone_name, Behaviour::Identity).await;
    for upstream in ["app", "ring"] {
        wait_for_state(d.admin_addr(), upstream, back.addr(), "up", DEADLINE).await;
    }
    let after = (
        map_keys(maglev, KEYS, 4).await,
        map_keys(ring, KEYS, 4).await,
    );
    assert!(
        after.0 == before.0,
        "maglev: the returned server got its keys back"
    );
    assert!(
        after.1 == before.1,
        "ring: the returned server got its keys back"
    );
}
