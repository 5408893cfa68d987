//! Shared harness for the end-to-end tests: the real `fulcrum` binary on a temporary config
//! ([`daemon`]), real backends bound to `127.0.0.1:0` or a chosen address ([`backend`]: behaviours
//! switchable at runtime, `/healthz` answered and counted apart, `kill` and `start_on` to take a
//! server down and bring it back), misbehaving raw servers ([`raw`]), a raw HTTP/2 client for
//! frames no real client sends ([`frames`]), real clients ([`client`]) and readers of the admin
//! endpoint's `/status` and `/metrics` ([`admin`]).
//!
//! Every test binary compiles this module but uses only part of it.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod backend;
pub mod client;
pub mod daemon;
pub mod frames;
pub mod raw;

pub use backend::{Behaviour, EchoMode, HttpBackend, TcpEchoBackend, HEALTH_PATH};
pub use client::{H1Client, H2Client, Reply};
pub use daemon::Daemon;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// A daemon with an admin endpoint and one listener `web` over upstream `app`; the test appends
/// `[upstreams.app]`.
pub const WEB: &str = r#"
[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[admin]
bind = "127.0.0.1:0"

[listeners.web]
bind = "127.0.0.1:0"
mode = "http"
upstream = "app"
"#;

/// How often a poll loop looks again.
pub const POLL: Duration = Duration::from_millis(10);

/// A port on 127.0.0.1 that nothing listens on: bound to port 0, then released.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// The byte at `offset` of the deterministic test stream used by uploads and downloads.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9).rotate_right(13) ^ (offset >> 11)) as u8
}

/// `len` bytes of the deterministic test stream starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| pattern_byte(offset + i))
        .collect::<Vec<u8>>()
        .into()
}

/// FNV-1a (64 bit), fed incrementally so streamed bodies need not be buffered.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.update(bytes);
    h.finish()
}

/// Checksum of `len` bytes of the test stream from offset 0.
pub fn pattern_fnv(len: u64) -> u64 {
    let mut h = Fnv::default();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(64 * 1024) as usize;
        h.update(&pattern(offset, n));
        offset += n as u64;
    }
    h.finish()
}

/// Polls `cond` every [`POLL`] until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `fut` with a ceiling, panicking with `what` when it is exceeded.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {timeout:?}"),
    }
}
