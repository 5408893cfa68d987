//! Real clients: HTTP/1.1 over one keep-alive connection, HTTP/2 with prior knowledge (h2c), and
//! raw-socket helpers. Every call has a ceiling ([`CLIENT_DEADLINE`]) so a hung daemon fails the
//! test instead of hanging it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::within;

pub type ReqBody = BoxBody<Bytes, Infallible>;

/// Ceiling for one request/response exchange.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

pub fn empty() -> ReqBody {
    Empty::new().boxed()
}

pub fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into()).boxed()
}

/// A request for `path` with `Host` set to `addr` (the low-level hyper client adds no Host).
pub fn request(method: Method, addr: SocketAddr, path: &str, body: ReqBody) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(body)
        .expect("request")
}

pub fn get(addr: SocketAddr, path: &str) -> Request<ReqBody> {
    request(Method::GET, addr, path, empty())
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-backend` header test backends set.
    pub fn backend(&self) -> &str {
        self.header("x-backend")
            .unwrap_or_else(|| panic!("no x-backend header: {self:?}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading response body: {e}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// One HTTP/1.1 client connection, used for sequential keep-alive requests.
pub struct H1Client {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<ReqBody>,
    conn: JoinHandle<()>,
}

impl H1Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within(CLIENT_DEADLINE, "connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        H1Client { addr, sender, conn }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn try_send(&mut self, req: Request<ReqBody>) -> Result<Reply, String> {
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            collect(resp).await
        };
        match tokio::time::timeout(CLIENT_DEADLINE, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete response within {CLIENT_DEADLINE:?}")),
        }
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        self.try_send(req)
            .await
            .unwrap_or_else(|e| panic!("{what} via {}: {e}", self.addr))
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let req = get(self.addr, path);
        self.send(req).await
    }

    /// Whether the connection has ended (the server closed it, or it failed).
    pub fn is_closed(&self) -> bool {
        self.conn.is_finished()
    }
}

impl Drop for H1Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// One request on a new HTTP/1.1 connection.
pub async fn send_once(addr: SocketAddr, req: Request<ReqBody>) -> Reply {
    H1Client::connect(addr).await.send(req).await
}

/// `GET path` on a new HTTP/1.1 connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Reply {
    send_once(addr, get(addr, path)).await
}

/// One HTTP/2 prior-knowledge (h2c) client connection.
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<ReqBody>,
    conn: JoinHandle<()>,
}

impl H2Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within(CLIENT_DEADLINE, "connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (sender, conn) = within(
            CLIENT_DEADLINE,
            "h2 handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
        )
        .await
        .expect("h2 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        H2Client { sender, conn }
    }

    /// A handle for sending concurrent streams on this connection.
    pub fn sender(&self) -> hyper::client::conn::http2::SendRequest<ReqBody> {
        self.sender.clone()
    }

    /// Sends `req`; its URI should be absolute (`http://authority/path`) so it carries
    /// `:authority`.
    pub async fn send(&mut self, req: Request<ReqBody>) -> Reply {
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("h2 connection not ready: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("h2 request failed: {e}"))?;
            collect(resp).await
        };
        match tokio::time::timeout(CLIENT_DEADLINE, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no complete h2 response within {CLIENT_DEADLINE:?}"),
        }
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Opens a WebSocket tunnel through `addr`: sends the RFC 6455 sample upgrade request for `path`,
/// asserts a 101 with the matching accept value, and returns the raw stream.
pub async fn websocket_connect(addr: SocketAddr, path: &str) -> TcpStream {
    use super::backend::{WS_ACCEPT, WS_KEY};
    use tokio::io::AsyncWriteExt;
    let mut s = within(CLIENT_DEADLINE, "connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write upgrade");
    let (head, rest) = read_head(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "expected 101, got:\n{head}"
    );
    assert_eq!(
        head_header(&head, "upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert!(
        head_header(&head, "connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "sec-websocket-accept"),
        Some(WS_ACCEPT),
        "{head}"
    );
    assert!(rest.is_empty(), "bytes before we wrote any: {rest:?}");
    s
}

/// Writes `msg` and reads the same number of bytes back, asserting they are equal.
pub async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    within(CLIENT_DEADLINE, "echo", s.read_exact(&mut back))
        .await
        .expect("read echo");
    assert!(back == msg, "echo differs ({} bytes)", msg.len());
}

/// Reads from `stream` until the end of an HTTP head (`\r\n\r\n`); returns the head as text and
/// any bytes read past it.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    within(CLIENT_DEADLINE, "reading a response head", async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return (String::from_utf8_lossy(&buf).into_owned(), rest);
            }
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(
                n > 0,
                "EOF before the end of the head; got {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// The value of header `name` in a raw head (case-insensitive name).
pub fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads until EOF; `Err` text if the read failed (e.g. reset).
pub async fn read_to_eof<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, String> {
    let mut all = Vec::new();
    match within(
        CLIENT_DEADLINE,
        "reading to EOF",
        stream.read_to_end(&mut all),
    )
    .await
    {
        Ok(_) => Ok(all),
        Err(e) => Err(format!("{e} after {} bytes", all.len())),
    }
}

/// Decodes a complete chunked body (trailers ignored); `None` if it is malformed or incomplete.
pub fn decode_chunked(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The body of a raw response whose head is `head` and whose following bytes (read to EOF) are
/// `rest`, by its framing: chunked, Content-Length, or close-delimited.
pub fn raw_body(head: &str, rest: &[u8]) -> Vec<u8> {
    if head_header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest).unwrap_or_else(|| panic!("bad chunked body after\n{head}"))
    } else if let Some(len) = head_header(head, "content-length") {
        let len: usize = len.parse().expect("content-length");
        assert!(rest.len() >= len, "short body after\n{head}");
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    }
}

/// Asserts a status Fulcrum generated itself: a short plain-text body, not a server's answer.
pub fn assert_own_error(r: &Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status, "{r:?}");
    assert!(
        !r.body.is_empty() && r.body.len() < 1024,
        "short body expected: {r:?}"
    );
    assert!(
        std::str::from_utf8(&r.body).is_ok(),
        "plain text expected: {r:?}"
    );
    if let Some(ct) = r.header("content-type") {
        assert!(ct.starts_with("text/plain"), "content-type {ct}");
    }
    assert!(
        r.header("x-backend").is_none(),
        "came from a backend: {r:?}"
    );
}
