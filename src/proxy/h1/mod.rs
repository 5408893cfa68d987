//! Fulcrum's HTTP/1.1 codec: heads parsed with `httparse` into offsets over the buffer they were
//! read into, validated, and rewritten once into the head the next hop gets; bodies framed by
//! `Content-Length`, chunked coding (its size lines validated) or the end of the connection.
//!
//! It is the same codec on both legs: requests from clients, responses from servers. Nothing here
//! does I/O; the engine in `proxy::http` reads and writes the sockets.

pub mod chunked;
pub mod fields;
pub mod request;
pub mod response;
pub mod rewrite;
