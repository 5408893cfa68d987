//! CONTRACT.md "HTTP/2 limits" through the real daemon: 100 concurrent streams advertised and
//! enforced, rapid reset (CVE-2023-44487) and MadeYouReset (CVE-2025-8671) floods ended with
//! `GOAWAY(ENHANCE_YOUR_CALM)` without reaching the backend, and the header list limited like the
//! HTTP/1 head. Hostile clients are raw frames (`support::frames`); well-behaved ones are the `h2`
//! crate's client, which decodes what the daemon answers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use support::frames::{self, Frame, RawH2};
use support::{eventually, within, Behaviour, Daemon, H2Client, HttpBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The listener's `max_request_head_bytes` in these tests: small, so oversize lists stay small.
const HEAD_LIMIT: usize = 4096;

const CONFIG: &str = r#"
[runtime]
worker_threads = 2

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
max_request_head_bytes = 4096

[upstreams.app]
response_timeout = "30s"
servers = [ { address = "${A}" } ]
"#;

async fn daemon(backend: &HttpBackend) -> Daemon {
    Daemon::builder(CONFIG)
        .var("A", backend.addr())
        .start()
        .await
}

/// Frames until one matches `done`, which is returned with the frames before it; panics if the
/// connection closes first.
async fn frames_until(
    raw: &mut RawH2,
    what: &str,
    mut done: impl FnMut(&Frame) -> bool,
) -> (Frame, Vec<Frame>) {
    let mut before = Vec::new();
    loop {
        match raw.next_frame().await {
            Some(f) if done(&f) => return (f, before),
            Some(f) => before.push(f),
            None => panic!("connection closed before {what}; frames: {before:?}"),
        }
    }
}

/// A GET and an h2c GET on new connections both answered 200: the daemon still serves.
async fn still_serves(d: &Daemon) {
    let r = support::client::get_once(d.addr("web"), "/after").await;
    assert_eq!(r.status, StatusCode::OK, "HTTP/1.1 after the attack: {r:?}");
    let mut h2 = H2Client::connect(d.addr("web")).await;
    let req = Request::builder()
        .uri("http://h2.test/after")
        .body(support::client::empty())
        .unwrap();
    let r = h2.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "h2c after the attack: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_advertise_100_streams_and_the_head_limit() {
    let backend = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(&backend).await;
    let (_raw, settings) = RawH2::handshake(d.addr("web")).await;
    let settings = settings.settings();
    println!("server SETTINGS: {settings:?}");
    let value = |id| settings.iter().find(|(k, _)| *k == id).map(|(_, v)| *v);
    assert_eq!(value(frames::SETTINGS_MAX_CONCURRENT_STREAMS), Some(100));
    assert_eq!(
        value(frames::SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(HEAD_LIMIT as u32),
        "the header list is limited like the HTTP/1 head"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_101st_concurrent_stream_is_refused_and_never_reaches_the_backend() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = HttpBackend::start("gated", Behaviour::Gated(gate.clone())).await;
    let d = daemon(&backend).await;
    let (mut raw, _) = RawH2::handshake(d.addr("web")).await;
    // 101 requests in one write, ignoring the advertised limit.
    let block = frames::get_block("h2.test", "/");
    let ids: Vec<u32> = (0..101).map(|i| 1 + 2 * i).collect();
    let flood: Vec<u8> = ids
        .iter()
        .flat_map(|&id| frames::headers(id, &block, true))
        .collect();
    raw.send(&flood).await;

    let (rst, before) = frames_until(&mut raw, "a RST_STREAM", |f| {
        f.kind == frames::RST_STREAM || f.kind == frames::GOAWAY
    })
    .await;
    assert_eq!(
        (rst.kind, rst.stream, rst.error_code()),
        (frames::RST_STREAM, 201, frames::REFUSED_STREAM),
        "the 101st stream is refused: {rst:?} after {before:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || backend.requests() == 100).await,
        "{} of the 100 admitted streams reached the backend",
        backend.requests()
    );

    // Let them all finish: 100 answers of 200, on streams 1..=199.
    gate.add_permits(1000);
    let mut finished = Vec::new();
    while finished.len() < 100 {
        let (f, _) = frames_until(&mut raw, "100 responses", |f| {
            f.flags & frames::END_STREAM != 0 || f.kind == frames::RST_STREAM
        })
        .await;
        assert_ne!(
            f.kind,
            frames::RST_STREAM,
            "an admitted stream was reset: {f:?}"
        );
        finished.push(f.stream);
    }
    finished.sort_unstable();
    assert_eq!(finished, ids[..100]);

    // The refusal ended the stream, not the connection, and the refused request never arrived.
    raw.send(&frames::headers(203, &block, true)).await;
    let (head, _) = frames_until(&mut raw, "the answer on stream 203", |f| {
        f.stream == 203 && f.kind == frames::HEADERS
    })
    .await;
    assert_eq!(head.status(), 200);
    assert_eq!(backend.requests(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_gets_goaway_at_the_21st_reset() {
    let backend = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(&backend).await;
    let (raw, _) = RawH2::handshake(d.addr("web")).await;
    const PAIRS: u32 = 5000;
    let block = frames::get_block("h2.test", "/");
    let flood: Vec<u8> = (0..PAIRS)
        .map(|i| 1 + 2 * i)
        .flat_map(|id| {
            let mut pair = frames::headers(id, &block, true);
            pair.extend(frames::rst_stream(id, frames::CANCEL));
            pair
        })
        .collect();
    let (mut reader, mut writer) = raw.split();
    // Written beside the reads; the daemon closes the connection mid-flood, failing the write.
    let write = tokio::spawn(async move { writer.write_all(&flood).await });
    let mut before = Vec::new();
    let goaway = loop {
        match reader.next_frame().await {
            Some(f) if f.kind == frames::GOAWAY => break f,
            Some(f) => before.push(f),
            None => panic!("closed without a GOAWAY after {before:?}"),
        }
    };
    within(Duration::from_secs(10), "close after the GOAWAY", async {
        while let Some(f) = reader.next_frame().await {
            assert_eq!(
                f.kind,
                frames::DATA,
                "nothing but a closed connection after GOAWAY: {f:?}"
            );
        }
    })
    .await;
    let written = write.await.unwrap();
    println!(
        "rapid reset: GOAWAY({:#x}, {:?}, last_stream={}) after {before:?}; flood write: {written:?}; {} requests reached the backend",
        goaway.error_code(),
        goaway.debug_data(),
        goaway.last_stream(),
        backend.requests()
    );
    assert_eq!(goaway.error_code(), frames::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug_data(), "too_many_resets");
    // h2 reads the burst faster than hyper accepts streams: 20 resets of streams not yet accepted
    // are tolerated (MAX_PENDING_ACCEPT_RESET_STREAMS), the 21st, on stream 41, is not.
    assert_eq!(goaway.last_stream(), 41);
    assert!(
        before
            .iter()
            .all(|f| f.kind != frames::RST_STREAM && f.kind != frames::HEADERS),
        "no stream was answered: {before:?}"
    );
    // Every stream was reset before hyper handed it to Fulcrum.
    assert_eq!(backend.requests(), 0);
    still_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_gets_goaway_at_the_1025th_provoked_reset() {
    let gate = Arc::new(Semaphore::new(0));
    let backend = HttpBackend::start("gated", Behaviour::Gated(gate.clone())).await;
    let d = daemon(&backend).await;
    let (mut raw, _) = RawH2::handshake(d.addr("web")).await;
    let block = frames::get_block("h2.test", "/");
    // Each stream is opened, then sent a WINDOW_UPDATE that overflows its send window
    // (65,535 + 2^31 − 1): a stream error, so the daemon's h2 resets the stream itself. In rounds
    // of 25, each read back before the next, so the streams stay under the concurrency limit and
    // every reset is a provoked one.
    const ROUND: u32 = 25;
    let mut next = 1;
    let mut provoked = 0;
    let goaway = 'rounds: loop {
        let ids: Vec<u32> = (0..ROUND).map(|i| next + 2 * i).collect();
        next += 2 * ROUND;
        let round: Vec<u8> = ids
            .iter()
            .flat_map(|&id| {
                let mut pair = frames::headers(id, &block, true);
                pair.extend(frames::window_update(id, 0x7fff_ffff));
                pair
            })
            .collect();
        raw.send(&round).await;
        let mut reset = 0;
        while reset < ROUND {
            match raw.next_frame().await {
                Some(f) if f.kind == frames::GOAWAY => break 'rounds f,
                Some(f) if f.kind == frames::RST_STREAM => {
                    assert_eq!(
                        f.error_code(),
                        frames::FLOW_CONTROL_ERROR,
                        "after {provoked} provoked resets: {f:?}"
                    );
                    assert!(ids.contains(&f.stream), "{f:?} is not of this round");
                    reset += 1;
                    provoked += 1;
                }
                Some(_) => {}
                None => panic!("closed without a GOAWAY after {provoked} provoked resets"),
            }
        }
    };
    println!(
        "MadeYouReset: {provoked} RST_STREAM(FLOW_CONTROL_ERROR), then GOAWAY({:#x}, {:?}, last_stream={}); {} requests reached the backend",
        goaway.error_code(),
        goaway.debug_data(),
        goaway.last_stream(),
        backend.requests()
    );
    assert_eq!(goaway.error_code(), frames::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug_data(), "too_many_internal_resets");
    // 1024 provoked resets are tolerated (MAX_LOCAL_ERROR_RESET_STREAMS); the GOAWAY comes in the
    // round holding the 1025th, before that round's resets are sent.
    assert_eq!(provoked, 1024 / ROUND * ROUND);
    assert_eq!(
        goaway.last_stream(),
        2 * 1025 - 1,
        "stream 1025 is the last one read"
    );
    // Each stream was reset before hyper handed it to Fulcrum, which drops a reset stream's work.
    assert_eq!(backend.requests(), 0);
    gate.add_permits(10_000);
    still_serves(&d).await;
}

/// The `h2` crate's client on a new connection: its sender, and the connection driven beside it.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = within(
        Duration::from_secs(10),
        "h2 handshake",
        h2::client::handshake(tcp),
    )
    .await
    .expect("h2 handshake");
    (sender, tokio::spawn(conn))
}

/// A GET of `/` from h2.test whose header list, as RFC 9113 counts it, is `size` bytes: the four
/// pseudo-headers and one `x-pad` field sized to make up the rest.
fn get_of_size(size: usize) -> Request<()> {
    let pseudo = frames::list_size(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "h2.test"),
        (":path", "/"),
    ]);
    let pad = size - pseudo - frames::list_size(&[("x-pad", "")]);
    Request::builder()
        .uri("http://h2.test/")
        .header("x-pad", "p".repeat(pad))
        .body(())
        .unwrap()
}

/// Sends `req` (no body) and returns its status, or the h2 error that ended it.
async fn status_of(
    sender: &mut h2::client::SendRequest<Bytes>,
    req: Request<()>,
) -> Result<StatusCode, h2::Error> {
    let ready = within(Duration::from_secs(10), "h2 ready", sender.clone().ready()).await;
    let (resp, _) = ready?.send_request(req, true)?;
    let resp = within(Duration::from_secs(10), "h2 response", resp).await?;
    Ok(resp.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_at_the_limit_gets_431_on_its_stream_only() {
    let backend = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(&backend).await;
    let (mut sender, conn) = h2_client(d.addr("web")).await;
    // h2 refuses a list whose size reaches the limit (size ≥ SETTINGS_MAX_HEADER_LIST_SIZE).
    assert_eq!(
        status_of(&mut sender, get_of_size(HEAD_LIMIT - 1))
            .await
            .unwrap(),
        StatusCode::OK
    );
    assert_eq!(backend.requests(), 1);
    for size in [HEAD_LIMIT, HEAD_LIMIT + 1, 2 * HEAD_LIMIT] {
        assert_eq!(
            status_of(&mut sender, get_of_size(size)).await.unwrap(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "a header list of {size} bytes"
        );
    }
    // The 431s ended their streams, not the connection, and never reached the backend.
    assert_eq!(
        status_of(&mut sender, get_of_size(300)).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(backend.requests(), 2);
    assert!(!conn.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_list_past_four_times_the_limit_gets_goaway() {
    let backend = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(&backend).await;
    let (mut sender, conn) = h2_client(d.addr("web")).await;
    assert_eq!(
        status_of(&mut sender, get_of_size(4 * HEAD_LIMIT))
            .await
            .unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "four times the limit is still answered on its stream"
    );
    let err = status_of(&mut sender, get_of_size(4 * HEAD_LIMIT + 1))
        .await
        .expect_err("the connection is closed");
    println!("past 4 × the limit: {err:?}");
    assert!(err.is_go_away(), "{err:?}");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    assert!(
        format!("{err:?}").contains("header_list_way_too_large"),
        "{err:?}"
    );
    let _ = within(Duration::from_secs(10), "connection end", conn).await;
    assert_eq!(backend.requests(), 0);
    still_serves(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_settings_is_held_to_the_header_limit() {
    let backend = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(&backend).await;
    // RFC 9113 §6.5.3 would let the server wait for the ACK of its SETTINGS before holding the
    // client to them; h2 holds it to the header-list limit from the first frame. This client
    // never ACKs, and never even reads the SETTINGS.
    let mut raw = RawH2::connect(d.addr("web")).await;
    let mut block = frames::get_block("h2.test", "/");
    frames::field(&mut block, "x-pad", &"p".repeat(2 * HEAD_LIMIT));
    raw.send(&frames::headers(1, &block, true)).await;
    let (head, before) = frames_until(&mut raw, "the answer on stream 1", |f| {
        f.stream == 1 && (f.kind == frames::HEADERS || f.kind == frames::RST_STREAM)
    })
    .await;
    println!("unacked oversize list answered {head:?} after {before:?}");
    assert_eq!(head.kind, frames::HEADERS, "{head:?}");
    assert_eq!(head.status(), 431);
    assert_eq!(
        backend.requests(),
        0,
        "an oversize header list reached the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_in_pieces_still_tells_h2c_from_http1() {
    let backend = HttpBackend::start("app", Behaviour::Identity).await;
    let d = daemon(&backend).await;
    // The pause between the pieces is not synchronisation: either way the daemon must see one
    // stream of bytes; with it, the first piece usually arrives alone, a strict prefix of the
    // preface, and the daemon has to wait for the rest.
    let pause = Duration::from_millis(20);

    let mut h2 = TcpStream::connect(d.addr("web")).await.unwrap();
    h2.set_nodelay(true).unwrap();
    h2.write_all(&frames::PREFACE[..7]).await.unwrap();
    tokio::time::sleep(pause).await;
    h2.write_all(&frames::PREFACE[7..]).await.unwrap();
    h2.write_all(&frames::frame(frames::SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    let mut first = [0u8; 9];
    within(
        Duration::from_secs(10),
        "the server's SETTINGS",
        h2.read_exact(&mut first),
    )
    .await
    .unwrap();
    assert_eq!(
        first[3],
        frames::SETTINGS,
        "h2c is answered with SETTINGS: {first:02x?}"
    );

    // "PRI" starts the preface too, but this is an HTTP/1.1 request with an extension method.
    let mut h1 = TcpStream::connect(d.addr("web")).await.unwrap();
    h1.set_nodelay(true).unwrap();
    h1.write_all(b"PRI").await.unwrap();
    tokio::time::sleep(pause).await;
    h1.write_all(b" /pri HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = support::client::read_head(&mut h1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(backend.requests(), 1);
}
