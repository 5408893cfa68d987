//! Real backends on `127.0.0.1:0` (or an address of the test's choosing): an HTTP/1.1 server
//! (hyper) with a chosen behaviour, and a TCP echo server.
//!
//! [`HttpBackend`]:
//! - answers every request by its current [`Behaviour`], read when the request head arrives, so
//!   [`HttpBackend::set_behaviour`] takes effect from the next request on, on keep-alive connections
//!   too;
//! - answers `GET /healthz` (any request whose path is exactly `/healthz`) separately: 200 `ok` by
//!   default, another status after [`HttpBackend::set_health`], or a [`Behaviour`] after
//!   [`HttpBackend::set_health_behaviour`]. Those requests count in [`HttpBackend::checks`], never in
//!   [`HttpBackend::requests`];
//! - counts accepted connections, requests, health checks and closed connections;
//! - stops on [`HttpBackend::stop`], [`HttpBackend::kill`] or drop: the listener and every open
//!   connection (keep-alive, hanging and upgraded ones included) are closed at once;
//! - can be started on a given address ([`HttpBackend::start_on`]), e.g. to bring a killed backend
//!   back on the same port.
//!
//! [`TcpEchoBackend`] counts accepted connections and stops the same way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::{pattern, Fnv, POLL};

pub type RespBody = BoxBody<Bytes, Infallible>;

/// The `Sec-WebSocket-Key` of RFC 6455 §1.3 and its accept value.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The path an [`HttpBackend`] treats as a health check.
pub const HEALTH_PATH: &str = "/healthz";

/// How long [`Behaviour::Reset`] waits for more request body bytes before resetting.
const RESET_READ_GRACE: Duration = Duration::from_millis(20);

/// How long [`HttpBackend::start_on`] retries binding an address that is still in use.
const REBIND_PATIENCE: Duration = Duration::from_secs(2);

/// What an [`HttpBackend`] answers. Every answer except the WebSocket one carries
/// `x-backend: NAME`.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200, body = the backend's name.
    Identity,
    /// 200, body = JSON `{backend, method, uri, version, headers: [[name, value], ...], body_len}`
    /// describing the request as the backend received it.
    EchoRequest,
    /// Reads the body as it streams in; 200, body = JSON `{len, fnv}` (FNV-1a 64, hex).
    Checksum,
    /// 200 with this many bytes of the test pattern, streamed in 16 KiB chunks with a
    /// Content-Length.
    Download(u64),
    /// Waits this long after the request head arrives, then answers like `Identity`.
    Slow(Duration),
    /// This status, body = the backend's name.
    Status(u16),
    /// Like `Identity`, plus these response headers (appended, in order).
    Headers(Vec<(&'static str, &'static str)>),
    /// Answers a WebSocket upgrade with 101 and echoes raw bytes on the upgraded connection.
    WebSocketEcho,
    /// Waits for a permit of this semaphore (taken for good) after the head arrives, then answers
    /// like `Identity`: the test decides when requests complete.
    Gated(Arc<Semaphore>),
    /// A server that died mid-request: reads the request head (not the body), then closes the
    /// connection (FIN) without a byte of response.
    HangUp,
    /// A server that is stuck: reads the request head (not the body), then never answers and keeps
    /// the connection open until the backend stops.
    Hang,
    /// A server that aborts: reads the request head and whatever body bytes arrive without a pause
    /// (20 ms), then resets the connection (TCP RST, SO_LINGER 0) without a byte of response.
    Reset,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub accepts: AtomicUsize,
    /// Requests read, health checks (`/healthz`) excepted.
    pub requests: AtomicUsize,
    /// Health-check requests (`/healthz`) read.
    pub checks: AtomicUsize,
    /// Connections that have ended (closed by either side).
    pub closed: AtomicUsize,
}

/// How an [`HttpBackend`] answers `/healthz`.
#[derive(Clone, Debug)]
enum Health {
    /// This status, body `ok`.
    Status(u16),
    /// Like a client request with this behaviour (but counted as a check).
    Follow(Behaviour),
}

/// What a request handler asks its connection to do instead of answering.
#[derive(Clone, Copy, Debug)]
enum Abort {
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST).
    Reset,
}

/// State shared by a backend's handle, its accept loop, its connections and their requests.
struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    health: Mutex<Health>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
}

impl Shared {
    /// Resolves once the backend is stopped (at once if it already is).
    async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

/// An HTTP/1.1 backend (keep-alive on, upgrades on).
pub struct HttpBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl HttpBackend {
    /// A backend on a free port of 127.0.0.1.
    pub async fn start(name: &str, behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), name, behaviour).await
    }

    /// A backend on `addr` (bound with SO_REUSEADDR, so a port whose old connections are in
    /// TIME_WAIT can be taken again; a port still in use is retried for up to 2 s).
    pub async fn start_on(addr: SocketAddr, name: &str, behaviour: Behaviour) -> Self {
        let listener = bind_reusable(addr).await;
        let addr = listener.local_addr().expect("backend addr");
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour: Mutex::new(behaviour),
            health: Mutex::new(Health::Status(200)),
            counters: Arc::new(Counters::default()),
            stop: stop_rx,
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = s.stopped() => break,
                    r = listener.accept() => match r {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                s.counters.accepts.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, s.clone()));
            }
            // The listener is dropped (closed) here.
        });
        HttpBackend { addr, shared, stop }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepts(&self) -> usize {
        self.shared.counters.accepts.load(Ordering::SeqCst)
    }

    /// Requests read, health checks excepted.
    pub fn requests(&self) -> usize {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Health-check requests (path exactly `/healthz`) read.
    pub fn checks(&self) -> usize {
        self.shared.counters.checks.load(Ordering::SeqCst)
    }

    /// Connections that have ended.
    pub fn closed(&self) -> usize {
        self.shared.counters.closed.load(Ordering::SeqCst)
    }

    /// Answers every request whose head arrives from now on with `b` (keep-alive connections
    /// included). Health checks are not affected.
    pub fn set_behaviour(&self, b: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = b;
    }

    /// Answers `/healthz` from now on with `status` (body `ok`). The default is 200.
    pub fn set_health(&self, status: u16) {
        StatusCode::from_u16(status).expect("health status");
        *self.shared.health.lock().unwrap() = Health::Status(status);
    }

    /// Answers `/healthz` from now on like a client request with behaviour `b` (e.g. `Hang` or
    /// `Reset`); still counted in [`checks`](Self::checks), not in [`requests`](Self::requests).
    pub fn set_health_behaviour(&self, b: Behaviour) {
        *self.shared.health.lock().unwrap() = Health::Follow(b);
    }

    /// Closes the listener and every open connection at once (new connects are refused).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The backend dies: the same as [`stop`](Self::stop).
    pub fn kill(&self) {
        self.stop();
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listening socket on `addr` with SO_REUSEADDR, retrying for [`REBIND_PATIENCE`] while the
/// address is in use.
async fn bind_reusable(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + REBIND_PATIENCE;
    loop {
        let bound = (|| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(1024)
        })();
        match bound {
            Ok(listener) => return listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => panic!("bind backend on {addr}: {e}"),
        }
    }
}

/// Serves one connection until it ends, the backend stops, or a request asks for it to be closed
/// or reset.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // A second descriptor of the same socket, to set SO_LINGER on while hyper owns the stream. The
    // socket closes when both are dropped.
    let control = stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from);
    let (abort_tx, mut abort_rx) = mpsc::unbounded_channel();
    let s = shared.clone();
    let svc = service_fn(move |req| handle(req, s.clone(), abort_tx.clone()));
    let mut conn = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades(),
    );
    let abort = tokio::select! {
        _ = &mut conn => None,
        _ = shared.stopped() => None,
        Some(abort) = abort_rx.recv() => Some(abort),
    };
    if let (Some(Abort::Reset), Some(control)) = (abort, &control) {
        let _ = control.set_linger(Some(Duration::ZERO));
    }
    drop(conn);
    drop(control);
    shared.counters.closed.fetch_add(1, Ordering::SeqCst);
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).boxed()
}

fn reply(status: u16, name: &str, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).expect("status");
    resp.headers_mut()
        .insert("x-backend", HeaderValue::from_str(name).expect("name"));
    resp
}

/// Counts the request (as a request or a health check) and answers it by the behaviour in force.
async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    abort: mpsc::UnboundedSender<Abort>,
) -> Result<Response<RespBody>, Infallible> {
    let behaviour = if req.uri().path() == HEALTH_PATH {
        shared.counters.checks.fetch_add(1, Ordering::SeqCst);
        let health = shared.health.lock().unwrap().clone();
        match health {
            Health::Status(code) => return Ok(reply(code, &shared.name, "ok")),
            Health::Follow(b) => b,
        }
    } else {
        shared.counters.requests.fetch_add(1, Ordering::SeqCst);
        shared.behaviour.lock().unwrap().clone()
    };
    respond(req, &shared, behaviour, abort).await
}

async fn respond(
    mut req: Request<Incoming>,
    shared: &Shared,
    behaviour: Behaviour,
    abort: mpsc::UnboundedSender<Abort>,
) -> Result<Response<RespBody>, Infallible> {
    let name = shared.name.clone();
    match behaviour {
        Behaviour::WebSocketEcho => return Ok(websocket(&mut req, shared.stop.clone())),
        Behaviour::Hang => return std::future::pending().await,
        Behaviour::HangUp => {
            let _ = abort.send(Abort::Close);
            return std::future::pending().await;
        }
        Behaviour::Reset => {
            let mut body = req.into_body();
            while let Ok(Some(Ok(_))) = tokio::time::timeout(RESET_READ_GRACE, body.frame()).await {
            }
            let _ = abort.send(Abort::Reset);
            return std::future::pending().await;
        }
        _ => {}
    }
    let (parts, mut body) = req.into_parts();
    // Read the whole request body as it streams, hashing it.
    let mut fnv = Fnv::default();
    let mut len = 0u64;
    if !matches!(behaviour, Behaviour::Slow(_) | Behaviour::Gated(_)) {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                fnv.update(data);
                len += data.len() as u64;
            }
        }
    }
    let resp = match behaviour {
        Behaviour::Identity => reply(200, &name, name.clone()),
        Behaviour::EchoRequest => {
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let json = serde_json::json!({
                "backend": name,
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body_len": len,
            });
            let mut r = reply(200, &name, json.to_string());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        Behaviour::Checksum => {
            let json = serde_json::json!({ "len": len, "fnv": format!("{:016x}", fnv.finish()) });
            reply(200, &name, json.to_string())
        }
        Behaviour::Download(n) => {
            let mut r = reply(200, &name, Bytes::new());
            *r.body_mut() = PatternBody::new(n, 16 * 1024, true).boxed();
            r
        }
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            reply(200, &name, name.clone())
        }
        Behaviour::Gated(gate) => {
            gate.acquire().await.expect("gate closed").forget();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            reply(200, &name, name.clone())
        }
        Behaviour::Status(code) => reply(code, &name, name.clone()),
        Behaviour::Headers(extra) => {
            let mut r = reply(200, &name, name.clone());
            for (k, v) in extra {
                r.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    HeaderValue::from_static(v),
                );
            }
            r
        }
        Behaviour::WebSocketEcho | Behaviour::Hang | Behaviour::HangUp | Behaviour::Reset => {
            unreachable!()
        }
    };
    Ok(resp)
}

/// 101 and a raw echo on the upgraded connection (until it ends or the backend stops), when the
/// request is a WebSocket upgrade with the RFC 6455 sample key; 400 otherwise.
fn websocket(req: &mut Request<Incoming>, mut stop: watch::Receiver<bool>) -> Response<RespBody> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let ok = header("upgrade") == "websocket"
        && header("connection")
            .split(',')
            .any(|t| t.trim() == "upgrade")
        && header("sec-websocket-version") == "13"
        && req
            .headers()
            .get("sec-websocket-key")
            .is_some_and(|k| k == WS_KEY);
    if !ok {
        let detail = format!("not a websocket upgrade: {:?}\n", req.headers());
        let mut r = Response::new(full(detail));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        tokio::select! {
            _ = async {
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            } => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", WS_ACCEPT)
        .body(full(Bytes::new()))
        .expect("101")
}

/// A body of `len` bytes of the test pattern, produced `chunk` bytes per frame.
pub struct PatternBody {
    offset: u64,
    len: u64,
    chunk: usize,
    exact: bool,
}

impl PatternBody {
    /// `exact`: advertise the length (Content-Length); otherwise the body is sent chunked.
    pub fn new(len: u64, chunk: usize, exact: bool) -> Self {
        PatternBody {
            offset: 0,
            len,
            chunk,
            exact,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let n = (this.len - this.offset).min(this.chunk as u64) as usize;
        let data = pattern(this.offset, n);
        this.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.len - self.offset)
        } else {
            SizeHint::default()
        }
    }
}

/// How a [`TcpEchoBackend`] echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    /// Writes back each read as it arrives; at EOF shuts down its write side.
    Stream,
    /// Reads until EOF, then writes everything back and closes (needs a working half-close).
    AfterEof,
}

/// A TCP echo server.
pub struct TcpEchoBackend {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl TcpEchoBackend {
    pub async fn start(mode: EchoMode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let c = counters.clone();
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let stream = tokio::select! {
                    _ = stop_rx.wait_for(|stopped| *stopped) => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                c.accepts.fetch_add(1, Ordering::SeqCst);
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = echo(stream, mode) => {}
                        _ = stop_rx.wait_for(|stopped| *stopped) => {}
                    }
                });
            }
        });
        TcpEchoBackend {
            addr,
            counters,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepts(&self) -> usize {
        self.counters.accepts.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for TcpEchoBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn echo(mut stream: TcpStream, mode: EchoMode) -> std::io::Result<()> {
    match mode {
        EchoMode::Stream => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        EchoMode::AfterEof => {
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await?;
            stream.write_all(&all).await?;
        }
    }
    stream.shutdown().await
}
