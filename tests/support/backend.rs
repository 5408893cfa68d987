//! Real backends on `127.0.0.1:0`: an HTTP/1.1 server (hyper) with a chosen behaviour, and a TCP
//! echo server. Each counts accepted connections and requests, and stops (closing its listener and
//! every connection) on `stop()` or drop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::{pattern, Fnv};

pub type RespBody = BoxBody<Bytes, Infallible>;

/// The `Sec-WebSocket-Key` of RFC 6455 §1.3 and its accept value.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

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
    /// Not HTTP at all: reads a request head, then closes the connection without a byte of
    /// response (a server that died mid-request).
    HangUp,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub accepts: AtomicUsize,
    pub requests: AtomicUsize,
    /// Connections that have ended (closed by either side).
    pub closed: AtomicUsize,
}

/// An HTTP/1.1 backend (keep-alive on, upgrades on).
pub struct HttpBackend {
    name: String,
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl HttpBackend {
    pub async fn start(name: &str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let name = name.to_string();
        let (n, c) = (name.clone(), counters.clone());
        tokio::spawn(async move {
            let mut stop_rx = stop_rx;
            loop {
                let stream = tokio::select! {
                    _ = stop_rx.changed() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                c.accepts.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let (n, c, b, mut stop_rx) =
                    (n.clone(), c.clone(), behaviour.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let counters = c.clone();
                    if let Behaviour::HangUp = b {
                        tokio::select! {
                            _ = hang_up(stream, &c) => {}
                            _ = stop_rx.changed() => {}
                        }
                    } else {
                        let svc =
                            service_fn(move |req| handle(req, n.clone(), b.clone(), c.clone()));
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades();
                        tokio::select! {
                            _ = conn => {}
                            _ = stop_rx.changed() => {}
                        }
                    }
                    counters.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        HttpBackend {
            name,
            addr,
            counters,
            stop,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepts(&self) -> usize {
        self.counters.accepts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Connections that have ended.
    pub fn closed(&self) -> usize {
        self.counters.closed.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection (upgraded tunnels excepted).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop();
    }
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

async fn handle(
    mut req: Request<Incoming>,
    name: String,
    behaviour: Behaviour,
    counters: Arc<Counters>,
) -> Result<Response<RespBody>, Infallible> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    if let Behaviour::WebSocketEcho = behaviour {
        return Ok(websocket(&mut req));
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
        Behaviour::WebSocketEcho | Behaviour::HangUp => unreachable!(),
    };
    Ok(resp)
}

/// Reads one request head, counts it, and returns (closing the connection) without answering.
async fn hang_up(mut stream: TcpStream, counters: &Counters) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    counters.requests.fetch_add(1, Ordering::SeqCst);
}

/// 101 and a raw echo on the upgraded connection, when the request is a WebSocket upgrade with
/// the RFC 6455 sample key; 400 otherwise.
fn websocket(req: &mut Request<Incoming>) -> Response<RespBody> {
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
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
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
                    _ = stop_rx.changed() => break,
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
                        _ = stop_rx.changed() => {}
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
