//! Bodies stream through the L7 proxy in both directions, and WebSocket upgrades become tunnels.

mod support;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use support::backend::PatternBody;
use support::client::{echo_roundtrip, read_to_eof, websocket_connect, H1Client};
use support::{pattern, pattern_fnv, Behaviour, Daemon, HttpBackend};
use tokio::io::AsyncWriteExt;

const CONFIG: &str = r#"
[runtime]
worker_threads = 2

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"

[upstreams.app]
response_timeout = "10s"
servers = [ { address = "${A}" } ]
"#;

const TWO_MIB: u64 = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_to_backend() {
    let sum = HttpBackend::start("sum", Behaviour::Checksum).await;
    let d = Daemon::builder(CONFIG).var("A", sum.addr()).start().await;
    let mut c = H1Client::connect(d.addr("web")).await;

    // Chunked (no length known up front), then with a Content-Length.
    for exact in [false, true] {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/upload")
            .header("host", "upload.example")
            .body(PatternBody::new(TWO_MIB, 16 * 1024, exact).boxed())
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let got = r.json();
        assert_eq!(got["len"], TWO_MIB, "exact length {exact}: {got}");
        assert_eq!(
            got["fnv"],
            format!("{:016x}", pattern_fnv(TWO_MIB)),
            "exact length {exact}: {got}"
        );
    }
    assert_eq!(sum.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_to_client() {
    let dl = HttpBackend::start("dl", Behaviour::Download(TWO_MIB)).await;
    let d = Daemon::builder(CONFIG).var("A", dl.addr()).start().await;
    let mut c = H1Client::connect(d.addr("web")).await;
    for _ in 0..2 {
        let r = c.get("/download").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len() as u64, TWO_MIB);
        assert_eq!(
            support::fnv1a(&r.body),
            pattern_fnv(TWO_MIB),
            "download corrupted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    let ws = HttpBackend::start("ws", Behaviour::WebSocketEcho).await;
    let d = Daemon::builder(CONFIG).var("A", ws.addr()).start().await;

    let mut s = websocket_connect(d.addr("web"), "/ws").await;
    // Small messages, then 256 KiB, each echoed back through the tunnel.
    for msg in [
        &b"hello through the tunnel"[..],
        b"\x81\x05hello",
        &pattern(7, 256 * 1024)[..],
    ] {
        echo_roundtrip(&mut s, msg).await;
    }

    // Half-close travels through the tunnel: the backend's echo ends and closes, and so do we.
    s.shutdown().await.unwrap();
    let tail = read_to_eof(&mut s).await.expect("read to EOF");
    assert!(
        tail.is_empty(),
        "unexpected bytes after half-close: {tail:?}"
    );
    assert_eq!(ws.requests(), 1);
}

/// Peak resident memory of a process, from /proc (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_far_larger_than_memory_bound_stream_in_constant_memory() {
    const BODY: u64 = 128 * 1024 * 1024;
    const CEILING_KIB: u64 = 64 * 1024;
    let sum = HttpBackend::start("sum", Behaviour::Checksum).await;
    let dl = HttpBackend::start("dl", Behaviour::Download(BODY)).await;
    let up = Daemon::builder(CONFIG).var("A", sum.addr()).start().await;
    let mut c = H1Client::connect(up.addr("web")).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/upload")
        .header("host", "upload.example")
        .body(PatternBody::new(BODY, 64 * 1024, false).boxed())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["len"], BODY);
    let upload_peak = peak_rss_kib(up.pid());

    let down = Daemon::builder(CONFIG).var("A", dl.addr()).start().await;
    let mut c = H1Client::connect(down.addr("web")).await;
    let r = c.get("/download").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len() as u64, BODY);
    let download_peak = peak_rss_kib(down.pid());
    eprintln!("peak RSS relaying 128 MiB: upload {upload_peak} KiB, download {download_peak} KiB");
    assert!(
        upload_peak < CEILING_KIB,
        "upload peak RSS {upload_peak} KiB"
    );
    assert!(
        download_peak < CEILING_KIB,
        "download peak RSS {download_peak} KiB"
    );
}
