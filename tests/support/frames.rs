//! A raw HTTP/2 client for hostile tests: frames written byte by byte (RFC 9113 §4, §6), header
//! blocks HPACK-encoded without Huffman or indexing (RFC 7541 §6.2.2), so a test can do what no
//! correct client does (exceed the advertised stream limit, reset streams in a flood, never ACK the
//! server's SETTINGS) and see every frame the server sends back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// How long a read of one frame may take.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);

/// One frame as received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// SETTINGS parameters, in order.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        assert_eq!(self.kind, SETTINGS, "{self:?}");
        self.payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect()
    }

    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => panic!("no error code in {self:?}"),
        };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    /// A GOAWAY's last stream id.
    pub fn last_stream(&self) -> u32 {
        assert_eq!(self.kind, GOAWAY, "{self:?}");
        u32::from_be_bytes(self.payload[..4].try_into().unwrap()) & 0x7fff_ffff
    }

    /// A GOAWAY's debug data, as text.
    pub fn debug_data(&self) -> String {
        assert_eq!(self.kind, GOAWAY, "{self:?}");
        String::from_utf8_lossy(&self.payload[8..]).into_owned()
    }

    /// The `:status` of a response HEADERS frame (no padding or priority: the daemon sends
    /// neither), decoded from the HPACK forms a server uses for it: an indexed static entry
    /// (200, 204, 206, 304, 400, 404, 500) or a literal whose name is the static `:status`, its
    /// three digits raw or Huffman-coded.
    pub fn status(&self) -> u16 {
        assert_eq!(self.kind, HEADERS, "{self:?}");
        let block = &self.payload;
        const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
        let digits = match block[0] {
            b @ 0x88..=0x8e => return STATIC[usize::from(b - 0x88)],
            // Literal with incremental indexing, without indexing or never indexed, name index 8.
            0x48 | 0x08 | 0x18 => {
                let len = usize::from(block[1] & 0x7f);
                let value = &block[2..2 + len];
                if block[1] & 0x80 == 0 {
                    String::from_utf8(value.to_vec()).unwrap()
                } else {
                    huffman_digits(value)
                }
            }
            _ => panic!("unexpected :status encoding: {block:02x?}"),
        };
        digits
            .parse()
            .unwrap_or_else(|_| panic!("status {digits:?}"))
    }
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B: `0`–`2` are 5-bit codes
/// 0–2, `3`–`9` are 6-bit codes 0x19–0x1f); the padding is the high bits of EOS, all ones.
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let (mut out, mut at) = (String::new(), 0);
    while bits.len() - at >= 5 {
        let code = |n: usize| bits[at..at + n].iter().fold(0u8, |acc, b| acc << 1 | b);
        if code(5) <= 2 {
            out.push(char::from(b'0' + code(5)));
            at += 5;
        } else if bits.len() - at >= 6 && (0x19..=0x1f).contains(&code(6)) {
            out.push(char::from(b'3' + code(6) - 0x19));
            at += 6;
        } else {
            break;
        }
    }
    assert!(
        bits[at..].len() < 8 && bits[at..].iter().all(|&b| b == 1),
        "not Huffman-coded digits: {bytes:02x?}"
    );
    out
}

/// One frame: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 14, "frames here stay within the default 16 KiB");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HEADERS frame with END_HEADERS (and END_STREAM if asked) carrying `block`.
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, block)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix, the first byte's other bits set to `flags`.
fn integer(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A literal field without indexing, its name a literal too.
pub fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    string(out, name.as_bytes());
    string(out, value.as_bytes());
}

/// The header block of `GET http://{authority}{path}`: `:method GET` and `:scheme http` indexed,
/// `:authority` and `:path` literals with indexed names.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86];
    integer(&mut out, 0x00, 4, 1);
    string(&mut out, authority.as_bytes());
    integer(&mut out, 0x00, 4, 4);
    string(&mut out, path.as_bytes());
    out
}

/// The size RFC 9113 §6.5.2 gives a header list: every field's name and value plus 32.
pub fn list_size(fields: &[(&str, &str)]) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
}

/// A client connection that speaks HTTP/2 frame by frame.
pub struct RawH2 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS; the server's SETTINGS are not read.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within(FRAME_DEADLINE, "connect", TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        let mut raw = RawH2 {
            stream,
            buf: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        raw.send(&hello).await;
        raw
    }

    /// Connects, reads the server's first SETTINGS and ACKs it, as a correct client does: the
    /// server applies its own limits once the ACK arrives. Returns the server's SETTINGS.
    pub async fn handshake(addr: SocketAddr) -> (Self, Frame) {
        let mut raw = Self::connect(addr).await;
        let settings = raw.next_frame().await.expect("the server's SETTINGS frame");
        assert_eq!(
            (settings.kind, settings.flags & ACK),
            (SETTINGS, 0),
            "the server's first frame is its SETTINGS: {settings:?}"
        );
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        (raw, settings)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        within(FRAME_DEADLINE, "write frames", self.stream.write_all(bytes))
            .await
            .expect("write frames");
    }

    /// The write half, for a flood written beside the reads; reads go on through `self`.
    pub fn split(self) -> (RawReader, tokio::net::tcp::OwnedWriteHalf) {
        let (read, write) = self.stream.into_split();
        (
            RawReader {
                read,
                buf: self.buf,
            },
            write,
        )
    }

    /// The next frame; `None` once the server has closed the connection (FIN or RST).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        read_frame(&mut self.stream, &mut self.buf).await
    }
}

/// The read half of a split [`RawH2`].
pub struct RawReader {
    read: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
}

impl RawReader {
    /// The next frame; `None` once the server has closed the connection (FIN or RST).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        read_frame(&mut self.read, &mut self.buf).await
    }
}

async fn read_frame<R: AsyncReadExt + Unpin>(read: &mut R, buf: &mut Vec<u8>) -> Option<Frame> {
    let fill = async {
        loop {
            if buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() >= 9 + len {
                    let frame = Frame {
                        kind: buf[3],
                        flags: buf[4],
                        stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                        payload: buf[9..9 + len].to_vec(),
                    };
                    buf.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    within(FRAME_DEADLINE, "next frame", fill).await
}
