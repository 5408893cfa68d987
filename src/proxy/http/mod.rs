//! L7: serve HTTP/1.1 (Fulcrum's own codec, `proxy::h1`) and h2c (hyper's HTTP/2) on one port and
//! forward each request to a server of the upstream over HTTP/1.1, with the same codec.
//!
//! A request takes the upstream's current snapshot, walks its candidates and claims a slot on the
//! first server not at its limit. Connecting is separate from sending, so a refused or timed-out
//! connect moves to the next candidate with the request untouched (up to `retries` other servers).
//! Once bytes of the request are on the wire, only an idempotent request goes again, from its replay
//! copy (`upload.rs`), when its connection closed before a response or, with `retry_on`, on a
//! 502/503/504 or a response timeout (`forward.rs` has the rules). Every attempt records its outcome
//! on the server, which feeds passive ejection.
//!
//! The modules, from the client inwards: `server` (HTTP/1 client connections, with `answer` for
//! Fulcrum's own answers on them) and `h2` with `stream` (h2 connections and their requests),
//! `forward` (the attempt loop), `exchange` (one request and response head on one server
//! connection, then the response body), `upload` (the request body and its replay copy), `pool`
//! (server connections); `proxy::io` (socket readiness).

mod answer;
mod exchange;
mod forward;
mod h2;
mod pool;
mod server;
mod stream;
mod upload;

pub use pool::{connect_tcp, sweep_forever, sweep_interval, ConnectError};
pub use server::serve as serve_connection;
pub use upload::REPLAY_LIMIT;
