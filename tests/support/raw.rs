//! Misbehaving servers written on raw sockets, for the failure tests: an HTTP/1.1 server whose every
//! answer is bytes chosen by the test (garbage, truncated bodies, keep-alive without keeping alive),
//! a TCP server that closes or resets each connection as soon as it accepts it, and an address whose
//! connects hang.
//!
//! Like the well-behaved backends, each counts accepted connections, requests and closed
//! connections, and stops (closing its listener and every connection) on `stop()` or drop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::backend::Counters;

/// Largest request head or body a [`RawHttpBackend`] reads.
const MAX_REQUEST: usize = 1024 * 1024;

/// One request as a [`RawHttpBackend`] read it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: String,
    pub path: String,
    /// The whole head, request line included.
    pub head: String,
    pub body: Vec<u8>,
}

/// What a [`RawHttpBackend`] does with the connection once it has written its answer.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Reads the next request on the same connection (the peer decides when it ends).
    KeepAlive,
    /// Closes the connection at once (FIN).
    Close,
    /// Closes the connection (FIN) this long after the answer, whatever the peer sends meanwhile.
    CloseAfter(Duration),
}

/// The bytes a [`RawHttpBackend`] writes for one request, and what it does next.
#[derive(Clone, Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    pub then: Then,
}

impl RawReply {
    pub fn new(bytes: impl Into<Vec<u8>>, then: Then) -> Self {
        RawReply {
            bytes: bytes.into(),
            then,
        }
    }
}

/// A raw HTTP/1.1 server: reads each request (head, and a Content-Length or chunked body) and
/// writes whatever `handler` returns for it, byte for byte.
pub struct RawHttpBackend {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl RawHttpBackend {
    pub async fn start<F>(handler: F) -> Self
    where
        F: Fn(&RawRequest) -> RawReply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let addr = listener.local_addr().expect("raw backend addr");
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let handler = Arc::new(handler);
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
                let _ = stream.set_nodelay(true);
                let (c, handler, mut stop_rx) = (c.clone(), handler.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_raw(stream, &c, &*handler) => {}
                        _ = stop_rx.changed() => {}
                    }
                    c.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawHttpBackend {
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

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Connections that have ended (this side closed its socket).
    pub fn closed(&self) -> usize {
        self.counters.closed.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for RawHttpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves requests on one connection until the handler closes it or the peer does. The stream is
/// dropped (closed) on return.
async fn serve_raw(
    mut stream: TcpStream,
    counters: &Counters,
    handler: &(dyn Fn(&RawRequest) -> RawReply + Send + Sync),
) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        counters.requests.fetch_add(1, Ordering::SeqCst);
        let reply = handler(&req);
        if stream.write_all(&reply.bytes).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        match reply.then {
            Then::KeepAlive => {}
            Then::Close => return,
            Then::CloseAfter(delay) => {
                // The backend's own behaviour (a server keep-alive timeout), not synchronisation.
                tokio::time::sleep(delay).await;
                return;
            }
        }
    }
}

/// Reads one request from `stream` (bytes already read past the previous request are in `buf`);
/// `None` at EOF, on a read error or on a request too large to be a test's.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > MAX_REQUEST || !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut line = head.lines().next().unwrap_or("").split_whitespace();
    let method = line.next().unwrap_or("").to_string();
    let path = line.next().unwrap_or("").to_string();
    let header = |name: &str| super::client::head_header(&head, name).map(str::to_string);
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Enough for the tests' bodies: read up to the last chunk and hand back the raw chunks.
        loop {
            if buf.starts_with(b"0\r\n\r\n") {
                buf.drain(..5);
                break Vec::new();
            }
            if let Some(end) = buf.windows(7).position(|w| w == b"\r\n0\r\n\r\n") {
                break buf.drain(..end + 7).collect();
            }
            if buf.len() > MAX_REQUEST || !fill(stream, buf).await {
                return None;
            }
        }
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if len > MAX_REQUEST {
            return None;
        }
        while buf.len() < len {
            if !fill(stream, buf).await {
                return None;
            }
        }
        buf.drain(..len).collect()
    };
    Some(RawRequest {
        method,
        path,
        head,
        body,
    })
}

/// Appends what one read returns; false at EOF or on an error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// What a [`ClosingTcpBackend`] does with each connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Closes it at once without reading or writing: the peer sees a FIN.
    Fin,
    /// Sets SO_LINGER to 0 and closes it at once: the peer sees a RST.
    Reset,
}

/// A TCP server that accepts every connection and immediately closes or resets it.
pub struct ClosingTcpBackend {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
}

impl ClosingTcpBackend {
    pub async fn start(how: Closing) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind closing backend");
        let addr = listener.local_addr().expect("closing backend addr");
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
                if how == Closing::Reset {
                    SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .expect("SO_LINGER 0");
                }
                drop(stream);
                c.closed.fetch_add(1, Ordering::SeqCst);
            }
        });
        ClosingTcpBackend {
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

impl Drop for ClosingTcpBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An address on 127.0.0.1 whose connects hang: a listener with a backlog of 0 that never accepts,
/// its accept queue filled by connections this value holds open, so the kernel drops further SYNs
/// (a full accept queue drops them even with SYN cookies on).
pub struct HangingAddr {
    addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl HangingAddr {
    /// How long a probing connect waits before it counts as hanging.
    pub const PROBE: Duration = Duration::from_millis(200);

    /// Binds the listener and fills its queue; panics if connects to it still complete.
    pub fn bind() -> Self {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&bind.into()).expect("bind");
        socket.listen(0).expect("listen");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("inet addr");
        let mut fillers = Vec::new();
        // Each completed connect takes a place in the accept queue; stop at the first that hangs.
        for _ in 0..32 {
            match std::net::TcpStream::connect_timeout(&addr, Self::PROBE) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return HangingAddr {
                        addr,
                        _listener: socket,
                        _fillers: fillers,
                    }
                }
                Err(e) => panic!("connect to the hanging listener {addr} failed: {e}"),
            }
        }
        panic!(
            "{} connects to a backlog-0 listener all completed; no way to make a hanging address",
            fillers.len()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a plain connect still hangs (times out after [`Self::PROBE`]).
    pub fn still_hangs(&self) -> bool {
        matches!(
            std::net::TcpStream::connect_timeout(&self.addr, Self::PROBE),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut
        )
    }
}
