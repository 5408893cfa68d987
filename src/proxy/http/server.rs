//! The HTTP/1.1 side of a client connection, on Fulcrum's codec.
//!
//! A connection holds no buffer while it idles: it waits for its socket to become readable, then
//! takes a block from the worker's pool for the head. The head must be complete within
//! `client_header_timeout` of its first byte (else 408); between requests the connection may idle
//! for `idle_timeout` (then it closes quietly), and at shutdown an idle connection closes at once.
//! Requests are answered one at a time, in order (pipelined ones wait in the block). A head
//! that breaks a rule is answered 4xx with `Connection: close`, and nothing of it reaches a
//! server. A connection that starts with the HTTP/2 preface is handed over to hyper's h2.
//!
//! Every answer carries the request's `X-Request-Id` (`proxy::ids`) once its head has parsed, and,
//! on a listener with an access log, every request that got an answer (or whose client went away
//! first) leaves an [`Entry`], which sends its line when dropped.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Method, Version};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::answer::{answer_and_close, answer_open, refuse, respond, start_entry};
use super::exchange::Downstream;
use super::forward::is_idempotent;
use super::forward::{self, client_fault_answer, Outcome, Outgoing, Served};
use super::pool;
use super::upload::{ClientBody, Inbox, Source, Upload};
use crate::access_log::Entry;
use crate::balance::{PickContext, RequestView};
use crate::config::HttpLimits;
use crate::lifecycle::Shutdown;
use crate::proxy::buffer::Block;
use crate::proxy::h1::request::{self, Framing, RequestHead};
use crate::proxy::h1::response::BodyFraming;
use crate::proxy::h1::rewrite::{self, ClientLeg, Out};
use crate::proxy::ids::Ids;
use crate::proxy::io::{write_all, write_all_pair};
use crate::proxy::{Listener, ListenerCtx, ProxyError, Route};
use crate::table::Snapshot;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection does after an exchange.
pub(super) enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// Join the client and this server connection (an accepted WebSocket upgrade).
    Tunnel(TcpStream, crate::server::InFlight),
}

/// Serves one accepted client connection until it closes.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments in every connection task"
)]
pub fn serve(
    listener: Arc<Listener>,
    stream: TcpStream,
    client: SocketAddr,
    shutdown: Shutdown,
) -> impl std::future::Future<Output = ()> + Send {
    // An async block rather than an async fn: its captures are used in place, where an async fn
    // would keep a second copy of its arguments in the connection's task.
    async move {
        let client_ip = client.ip().to_canonical().to_string();
        let mut inbox = Inbox::default();
        let mut first = true;
        loop {
            if inbox.unread().is_empty() {
                inbox.release_if_empty();
                let idle_timeout = listener.idle_timeout();
                if !wait_for_bytes(&stream, &mut inbox, idle_timeout, &shutdown).await {
                    return;
                }
            }
            skip_empty_lines(&mut inbox);
            if inbox.unread().is_empty() {
                continue;
            }
            // Read once per request: a reload between requests applies to the next one.
            let ctx = listener.ctx();
            let started = Instant::now();
            let deadline = started + ctx.http.client_header_timeout;
            if first {
                first = false;
                match read_preface(&stream, &mut inbox, deadline).await {
                    Preface::Http2 => {
                        let already = inbox.unread().to_vec();
                        drop(inbox);
                        // Boxed: hyper's connection state would otherwise size every connection's task.
                        drop(ctx);
                        Box::pin(super::h2::serve(
                            listener,
                            super::h2::Prefixed::new(already, stream),
                            client,
                            shutdown,
                        ))
                        .await;
                        return;
                    }
                    Preface::Gone => return,
                    Preface::Http1 => {}
                }
            }
            let end = match read_head(&stream, &mut inbox, &ctx.http, deadline).await {
                Ok(Some(end)) => end,
                Ok(None) => return,
                Err(error) => {
                    Box::pin(refuse(&ctx, &stream, client, started, error)).await;
                    return;
                }
            };
            let block_start = inbox.start;
            let parsed = {
                let buf = &inbox.unread()[..end];
                request::parse(buf, &ctx.http)
            };
            let head = match parsed {
                Ok(head) => head,
                Err(reject) => {
                    debug!(listener = %ctx.name, %client, error = %reject, "request refused");
                    Box::pin(refuse(&ctx, &stream, client, started, reject.into())).await;
                    return;
                }
            };
            let next = match &ctx.route {
                Route::Respond { response, counters } => {
                    counters.inc(response.status.as_u16());
                    let close = head.close || head.framing != Framing::Empty || shutdown.is_fired();
                    let mut out = Out::new();
                    {
                        // The line is sent before the write: no entry is kept across it, in the
                        // task an idle connection holds.
                        let buf = &inbox.unread()[..head.len];
                        let ids = Ids::of_h1(&head, buf, ctx.tracing);
                        respond(response, close, ids.request_id.as_bytes(), &mut out);
                        if let Some(mut entry) =
                            start_entry(&ctx, client, started, None, &head, buf, &ids)
                        {
                            entry.status(response.status.as_u16());
                            entry.sent(response.body.len());
                        }
                    }
                    inbox.consume(head.len);
                    if write_all(&stream, out.bytes()).await.is_err() || close {
                        Next::Close
                    } else {
                        Next::KeepAlive
                    }
                }
                Route::Upstream(upstream) => {
                    let snap = upstream.load();
                    let exchange = Exchange {
                        ctx: &ctx,
                        snap: &snap,
                        stream: &stream,
                        client,
                        client_ip: &client_ip,
                        started,
                        shutdown: &shutdown,
                    };
                    // Boxed, so that the connection's task, which an idle connection keeps, is sized for
                    // waiting (about 700 bytes) rather than for an exchange (about 1.8 KB more): one
                    // allocation per request instead of 1.8 KB per idle connection.
                    Box::pin(exchange.run(&mut inbox, block_start, head)).await
                }
            };
            match next {
                Next::KeepAlive => {}
                Next::Close => return,
                Next::Tunnel(upstream, slot) => {
                    Box::pin(tunnel(stream, upstream, &mut inbox, ctx.idle_timeout)).await;
                    drop(slot);
                    return;
                }
            }
        }
    }
}

/// Waits, holding no buffer, until the client sends something; `false` when it closed, idled for
/// `idle_timeout`, or shutdown began.
async fn wait_for_bytes(
    stream: &TcpStream,
    inbox: &mut Inbox,
    idle: Duration,
    shutdown: &Shutdown,
) -> bool {
    // One poll loop over the socket's readiness, the idle timer and shutdown: this future is
    // what an idle connection's task holds, so it is kept small (no `readable()` waiter, no
    // `select!` of futures).
    let mut timer = pin!(tokio::time::sleep(idle));
    let mut stop = pin!(shutdown.wait());
    loop {
        let ready = std::future::poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() || timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            stream.poll_read_ready(cx).map(|r| r.is_ok())
        })
        .await;
        if !ready {
            return false;
        }
        let mut block = Block::take();
        match crate::proxy::io::read_now(stream, &mut block) {
            Ok(0) => return false,
            Ok(n) => {
                *inbox = Inbox {
                    block: Some(block),
                    start: 0,
                    end: n,
                };
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
}

/// Drops the CRLFs a client may send between requests (RFC 9112 §2.2).
fn skip_empty_lines(inbox: &mut Inbox) {
    let skip = inbox
        .unread()
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    inbox.consume(skip);
}

enum Preface {
    Http1,
    Http2,
    Gone,
}

/// Tells an h2c connection (prior knowledge) from an HTTP/1 one by its first bytes.
async fn read_preface(stream: &TcpStream, inbox: &mut Inbox, deadline: Instant) -> Preface {
    loop {
        let unread = inbox.unread();
        let n = unread.len().min(PREFACE.len());
        if unread[..n] != PREFACE[..n] {
            return Preface::Http1;
        }
        if n == PREFACE.len() {
            return Preface::Http2;
        }
        match tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| inbox.poll_fill(stream, cx)),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Preface::Gone,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads until the inbox holds a whole head; its length, `None` when the client went away, or the
/// error to answer (408 after `client_header_timeout`, 414 or 431 over the limits).
async fn read_head(
    stream: &TcpStream,
    inbox: &mut Inbox,
    limits: &HttpLimits,
    deadline: Instant,
) -> Result<Option<usize>, ProxyError> {
    let mut scanned = 0;
    loop {
        let unread = inbox.unread();
        if let Some(end) = request::find_end(unread, scanned) {
            return Ok(Some(end));
        }
        scanned = unread.len();
        request::check_partial(unread, limits)?;
        let block = inbox.block.as_mut().expect("the inbox holds bytes");
        if inbox.end == block.len() && inbox.start == 0 {
            // A head longer than one block: grow it up to the limit (and one byte more, to see
            // that the limit was passed).
            let len = block.len();
            block.grow(
                (len * 2)
                    .min(limits.max_request_head_bytes + 1)
                    .max(len + 1),
            );
        }
        match tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| inbox.poll_fill(stream, cx)),
        )
        .await
        {
            Err(_) => return Err(ProxyError::HeadTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
    }
}

/// A parsed HTTP/1 head as strategies read it (hash keys).
struct H1View<'b> {
    head: &'b RequestHead,
    buf: &'b [u8],
}

impl RequestView for H1View<'_> {
    fn path_and_query(&self) -> &[u8] {
        self.head.path_and_query(self.buf)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.fields.first(self.buf, name.as_bytes())
    }

    fn find_in_values<'s>(
        &'s self,
        name: &str,
        find: &mut dyn FnMut(&'s [u8]) -> Option<&'s [u8]>,
    ) -> Option<&'s [u8]> {
        self.head
            .fields
            .iter()
            .filter(|f| f.name.get(self.buf).eq_ignore_ascii_case(name.as_bytes()))
            .find_map(|f| find(f.value.get(self.buf)))
    }
}

/// One request on its way through an upstream.
struct Exchange<'a> {
    ctx: &'a ListenerCtx,
    snap: &'a Snapshot,
    stream: &'a TcpStream,
    client: SocketAddr,
    client_ip: &'a str,
    started: Instant,
    shutdown: &'a Shutdown,
}

impl Exchange<'_> {
    async fn run(&self, inbox: &mut Inbox, block_start: usize, head: RequestHead) -> Next {
        let ctx = self.ctx;
        let (ids, mut entry) = {
            let block = inbox.block.as_ref().expect("the inbox holds the head");
            let buf = &block[block_start..block_start + head.len];
            let ids = Ids::of_h1(&head, buf, ctx.tracing);
            let entry = start_entry(
                ctx,
                self.client,
                self.started,
                Some(&self.snap.name),
                &head,
                buf,
                &ids,
            );
            (ids, entry)
        };
        let request_id = ids.request_id.as_bytes();
        if head.method == Method::CONNECT {
            return self
                .own_answer(
                    inbox,
                    &head,
                    ProxyError::MethodNotAllowed,
                    request_id,
                    entry,
                )
                .await;
        }
        if !self.snap.has_eligible() {
            return self
                .own_answer(inbox, &head, ProxyError::NoServer, request_id, entry)
                .await;
        }
        let mut out = Out::new();
        let attempts = {
            let block = inbox.block.as_ref().expect("the inbox holds the head");
            let buf = &block[block_start..block_start + head.len];
            rewrite::request(&head, buf, self.client_ip, &ids, &mut out);
            let view = H1View { head: &head, buf };
            self.snap.attempts(&PickContext {
                client: self.client,
                head: Some(&view),
                now: self.started,
            })
        };
        inbox.consume(head.len);
        let http10 = head.version == Version::HTTP_10;
        let source = match ClientBody::new(
            self.stream,
            inbox,
            head.framing,
            ctx.http.max_body_bytes,
            ctx.idle_timeout,
        ) {
            Some(body) => Source::Client(body),
            None => Source::Empty,
        };
        let replayable = is_idempotent(&head.method);
        let mut req = Outgoing {
            head: out.bytes(),
            upload: Upload::new(source, replayable),
            replayable,
            head_request: head.method == Method::HEAD,
            websocket: head.websocket,
            // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client, which would take it for the answer.
            interim: (!http10).then_some(self.stream),
        };
        let outcome = forward::forward(ctx, self.snap, attempts, &mut req).await;
        let unfinished = req.upload.is_unfinished();
        drop(req);
        let must_close = head.close || unfinished || self.shutdown.is_fired();
        match outcome {
            Outcome::Failed(error) => {
                if must_close || error.closes() {
                    answer_and_close(self.stream, error, Some(request_id), entry).await;
                    return Next::Close;
                }
                answer_open(self.stream, error, request_id, entry).await
            }
            Outcome::Client(fault) => {
                if let Some(error) = client_fault_answer(fault) {
                    answer_and_close(self.stream, error, Some(request_id), entry).await;
                }
                Next::Close
            }
            Outcome::Served(served) => {
                if let Some(entry) = &mut entry {
                    entry.served(&served.slot.server().config.address, served.upstream_time);
                }
                let how = Relay {
                    http10,
                    must_close,
                    websocket: head.websocket,
                    request_id,
                };
                self.relay(served, how, entry).await
            }
        }
    }

    /// Answers a request that goes to no server: counted on the listener's unserved series; the
    /// connection stays open for a 5xx when the request had no body.
    async fn own_answer(
        &self,
        inbox: &mut Inbox,
        head: &RequestHead,
        error: ProxyError,
        request_id: &[u8],
        entry: Option<Entry>,
    ) -> Next {
        if let Some(counters) = self.snap.unserved_for(self.ctx.id) {
            counters.inc(error.status().as_u16());
        }
        inbox.consume(head.len);
        let close = head.close
            || head.framing != Framing::Empty
            || error.closes()
            || self.shutdown.is_fired();
        if close {
            answer_and_close(self.stream, error, Some(request_id), entry).await;
            return Next::Close;
        }
        answer_open(self.stream, error, request_id, entry).await
    }

    /// Passes the server's response on to the client.
    async fn relay(&self, served: Served, how: Relay<'_>, mut entry: Option<Entry>) -> Next {
        let Relay {
            http10,
            must_close,
            websocket,
            request_id,
        } = how;
        let Served {
            reply,
            conn,
            slot,
            idle_timeout,
            max_idle,
            upstream_time: _,
        } = served;
        let upgraded = websocket && reply.head.status == 101;
        let framing = reply.head.framing;
        let dechunk = http10 && framing == BodyFraming::Chunked;
        let close = must_close || framing == BodyFraming::UntilClose || dechunk;
        let leg = ClientLeg {
            chunked: framing == BodyFraming::Chunked && !dechunk,
            close: close && !upgraded,
            keep_alive_10: http10 && !close,
            websocket: upgraded,
        };
        let mut out = Out::new();
        rewrite::response(&reply.head, &reply.block, leg, Some(request_id), &mut out);
        if let Some(entry) = &mut entry {
            entry.status(reply.head.status);
        }
        if upgraded {
            // What the server sent after its 101 already belongs to the tunnel.
            out.put(&reply.block[reply.head.len..reply.filled]);
            drop(reply);
            if write_all(self.stream, out.bytes()).await.is_err() {
                return Next::Close;
            }
            return Next::Tunnel(conn.stream, slot);
        }
        let server_closes = reply.head.close;
        let mut down = Downstream::new(reply, dechunk);
        let mut upstream = Some((conn, slot));
        // The head and what of the body came with it go out in one write (writev).
        let first = std::future::poll_fn(|cx| {
            let (conn, _) = upstream.as_ref().expect("held until the body ends");
            match down.poll_next(cx, &conn.stream, false) {
                std::task::Poll::Pending => std::task::Poll::Ready(Ok(Some(0..0))),
                other => other,
            }
        })
        .await;
        let mut next = first;
        let mut head = Some(out);
        loop {
            let range = match next {
                Ok(Some(range)) => range,
                Ok(None) => 0..0,
                Err(e) => {
                    if let Some((_, slot)) = upstream.take() {
                        debug!(upstream = %self.snap.name, server = %slot.server().config.address, error = %e, "response body failed");
                        slot.failed(crate::server::Failure::BrokenResponse);
                    }
                    if let Some(out) = head.take() {
                        let _ = write_all(self.stream, out.bytes()).await;
                    }
                    // The client sees the body cut short: no final chunk, or fewer bytes than
                    // its length, then the close.
                    return Next::Close;
                }
            };
            // The server's side is done as soon as its response has been read whole: the
            // connection goes back to the pool and the slot is freed before the client has the
            // last bytes, so a client that sends its next request at once finds the slot free.
            if down.is_done() {
                if let Some((conn, slot)) = upstream.take() {
                    if !server_closes && !down.has_extra() {
                        pool::checkin(slot.server().addr(), conn.stream, idle_timeout, max_idle);
                    }
                }
            }
            let body = down.slice(range);
            let written = match head.take() {
                Some(out) => write_all_pair(self.stream, out.bytes(), body).await,
                None => write_all(self.stream, body).await,
            };
            if written.is_err() {
                // The client went away: a half-read server connection is closed.
                return Next::Close;
            }
            if let Some(entry) = &mut entry {
                entry.sent(body.len());
            }
            let Some((conn, _)) = upstream.as_ref() else {
                break;
            };
            next = std::future::poll_fn(|cx| down.poll_next(cx, &conn.stream, true)).await;
        }
        if close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

/// How a server's response goes to the client.
struct Relay<'r> {
    /// The client speaks HTTP/1.0.
    http10: bool,
    /// The client connection closes after this response.
    must_close: bool,
    /// The request asked for a WebSocket upgrade.
    websocket: bool,
    /// The request's `X-Request-Id`, returned to the client.
    request_id: &'r [u8],
}

/// Joins the client and the server of an accepted WebSocket upgrade until both sides close, or
/// nothing moves either way for `idle_timeout` (like an L4 session); bytes the client sent after
/// its request head go to the server first.
async fn tunnel(client: TcpStream, server: TcpStream, inbox: &mut Inbox, idle: Duration) {
    if !inbox.unread().is_empty() && write_all(&server, inbox.unread()).await.is_err() {
        return;
    }
    *inbox = Inbox::default();
    crate::proxy::tcp::join(&client, &server, idle).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::lifecycle::shutdown_channel;
    use crate::table::Upstream;

    /// An idle connection costs its task: the connection's future, allocated once when it is
    /// accepted. Everything an exchange needs beyond it is on the heap only while it runs.
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let config = Config::parse(
            std::path::Path::new("t.toml"),
            "[listeners.web]\nbind = \"127.0.0.1:0\"\nmode = \"http\"\nupstream = \"app\"\n[upstreams.app]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
        )
        .unwrap();
        let (upstream, _writer) = Upstream::new(&config.upstreams[0], &[Arc::from("web")]);
        let listener_ctx = Arc::new(Listener::new(ListenerCtx::new(
            &config.listeners[0],
            &[("app".to_string(), upstream)],
        )));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_trigger, shutdown) = shutdown_channel();
        let task = serve(
            listener_ctx,
            stream,
            "127.0.0.1:9".parse().unwrap(),
            shutdown,
        );
        let size = std::mem::size_of_val(&task);
        println!("connection task: {size} bytes");
        // 872 bytes in a debug build; an exchange held inline would add 1.8 KB.
        assert!(size <= 1024, "connection task: {size} bytes");
    }
}
