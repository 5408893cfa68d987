//! L4 sessions and `idle_timeout`: no byte in either direction for that long closes both sockets;
//! a byte either way keeps the session open; half-close and large transfers still work with the
//! copy that holds no buffer between reads.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::client::read_to_eof;
use support::{pattern, within, Daemon, EchoMode, TcpEchoBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A tcp listener `l4` over server `${A}`, idle after [`IDLE`].
const CONFIG: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[listeners.l4]
bind = "127.0.0.1:0"
mode = "tcp"
upstream = "app"
idle_timeout = "300ms"

[upstreams.app]
servers = [ { address = "${A}" } ]
"#;

/// The listener's `idle_timeout`.
const IDLE: Duration = Duration::from_millis(300);

/// A generous ceiling on anything that should happen at once, or after [`IDLE`].
const CEILING: Duration = Duration::from_secs(5);

/// The pause between the bytes of a session that must stay open: a third of [`IDLE`].
const TICK: Duration = Duration::from_millis(100);

/// Bytes sent one [`TICK`] apart: 1.2 s in all, four times [`IDLE`].
const TICKS: u8 = 12;

/// A server that hands every connection it accepts to the test, which then plays the server.
async fn handover() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if tx.send(stream).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// The daemon over a [`handover`] server, and one session through it: (daemon, client, server).
async fn session() -> (Daemon, TcpStream, TcpStream) {
    let (addr, mut accepted) = handover().await;
    let d = Daemon::builder(CONFIG).var("A", addr).start().await;
    let client = TcpStream::connect(d.addr("l4")).await.expect("connect");
    let server = within(CEILING, "the proxy's connect", accepted.recv())
        .await
        .expect("accepted");
    (d, client, server)
}

/// Reads one byte, which must be `want`.
async fn read_byte(s: &mut TcpStream, want: u8, what: &str) {
    let mut byte = [0u8; 1];
    within(CEILING, what, s.read_exact(&mut byte))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(byte[0], want, "{what}");
}

/// Reads until a clean EOF, which must come with no bytes; returns when it came.
async fn eof(s: &mut TcpStream, what: &str) -> Instant {
    let mut buf = [0u8; 64];
    let n = within(CEILING, what, s.read(&mut buf))
        .await
        .unwrap_or_else(|e| panic!("{what}: a reset, not a close: {e}"));
    assert_eq!(n, 0, "{what}: got {:?}", &buf[..n]);
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_session_is_closed_on_both_sides_after_idle_timeout() {
    let started = Instant::now();
    let (_d, mut client, mut server) = session().await;
    let closed = eof(&mut client, "the client's EOF").await - started;
    println!("a silent session closed after {closed:?} (idle_timeout {IDLE:?})");
    assert!(
        closed >= IDLE,
        "closed after {closed:?}, before idle_timeout"
    );
    eof(&mut server, "the server's EOF").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_client_keeps_talking_in_stays_open_until_it_stops() {
    let (_d, mut client, mut server) = session().await;
    let mut last = Instant::now();
    for i in 0..TICKS {
        tokio::time::sleep(TICK).await;
        client
            .write_all(&[i])
            .await
            .expect("the session was closed");
        last = Instant::now();
        read_byte(&mut server, i, "a byte from the client").await;
    }
    // Open both ways after four idle_timeouts.
    server.write_all(b"!").await.expect("write to the client");
    read_byte(&mut client, b'!', "the server's answer").await;
    let closed = eof(&mut client, "the client's EOF once quiet").await - last;
    println!("closed {closed:?} after the last byte (idle_timeout {IDLE:?})");
    assert!(closed >= IDLE, "closed {closed:?} after the last byte");
    eof(&mut server, "the server's EOF").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_which_only_the_server_talks_is_not_idle() {
    let (_d, mut client, mut server) = session().await;
    for i in 0..TICKS {
        tokio::time::sleep(TICK).await;
        server
            .write_all(&[i])
            .await
            .expect("the session was closed");
        read_byte(&mut client, i, "a byte from the server").await;
    }
    // The client, silent for four idle_timeouts, can still talk.
    client.write_all(b"?").await.expect("write to the server");
    read_byte(&mut server, b'?', "the client's question").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_half_close_still_gets_the_whole_echo() {
    let echo = TcpEchoBackend::start(EchoMode::AfterEof).await;
    let d = Daemon::builder(CONFIG).var("A", echo.addr()).start().await;
    // Bigger than a block and than a loopback socket buffer's first window.
    let data = pattern(0, 1 << 20);
    let mut s = TcpStream::connect(d.addr("l4")).await.expect("connect");
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let back = read_to_eof(&mut s)
        .await
        .expect("the echo after the half-close");
    assert_eq!(back.len(), data.len());
    assert!(back == data[..], "echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_half_close_leaves_the_client_direction_open() {
    let (_d, mut client, mut server) = session().await;
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    let got = read_to_eof(&mut client)
        .await
        .expect("the server's bytes, then EOF");
    assert_eq!(got, b"bye");
    client.write_all(b"still sending").await.unwrap();
    client.shutdown().await.unwrap();
    let got = read_to_eof(&mut server)
        .await
        .expect("the client's bytes, then EOF");
    assert_eq!(got, b"still sending");
}

/// Writes `send` and then EOF while reading what comes back until EOF, both at once (the two ends of
/// a session each do this, so neither waits for the other to read).
async fn exchange(s: &mut TcpStream, send: &[u8]) -> Result<Vec<u8>, String> {
    let (mut read, mut write) = s.split();
    let sent = async {
        write.write_all(send).await.expect("write");
        write.shutdown().await.expect("shutdown");
    };
    tokio::join!(sent, read_to_eof(&mut read)).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_each_way_arrive_intact() {
    const LEN: usize = 8 << 20;
    // Made before the session starts: in a debug build this takes longer than idle_timeout.
    let up = pattern(0, LEN);
    let down = pattern(1 << 32, LEN);
    let (_d, mut client, mut server) = session().await;
    let started = Instant::now();
    let (at_server, at_client) = within(Duration::from_secs(60), "8 MiB each way", async {
        tokio::join!(exchange(&mut client, &up), exchange(&mut server, &down))
    })
    .await;
    println!("8 MiB each way in {:?}", started.elapsed());
    for (what, got, want) in [("up", at_server, up), ("down", at_client, down)] {
        let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got.len(), LEN, "{what}: length");
        if let Some(at) = got.iter().zip(want.iter()).position(|(g, w)| g != w) {
            panic!("{what}: first differing byte at offset {at}");
        }
    }
}
