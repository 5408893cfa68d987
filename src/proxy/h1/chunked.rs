//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally and strictly.
//!
//! The decoder sees the coded bytes as they arrive, in pieces of any size, and says how many of
//! them it has taken and where the data inside them is. The proxy passes a chunked body on to a
//! client or server that speaks chunked as the very bytes received, once validated, and hands the
//! data alone to one that does not (an HTTP/1.0 client). Refused: a size that is not 1 to 16 hex
//! digits, a chunk extension with control bytes or longer than [`MOST_LINE`], a bare LF or a CR
//! not followed by LF, data not followed by CRLF, a trailer line that is not `name: value` or
//! obs-folded, and trailers longer than [`MOST_TRAILERS`].

use std::ops::Range;

/// The longest chunk-size line, extensions included.
pub const MOST_LINE: usize = 4096;
/// The most trailer bytes after the last chunk.
pub const MOST_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` so far).
    Size { digits: u8 },
    /// After the digits: optional whitespace, then `;` or CR.
    AfterSize,
    /// Inside chunk extensions, until CR.
    Extension,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// Expecting the CR after a chunk's data.
    DataCr,
    /// Expecting the LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field's name.
    TrailerName,
    /// Inside a trailer field's value, until CR.
    TrailerValue,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// An incremental chunked decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// Data bytes left in the current chunk (also the size being read).
    remaining: u64,
    /// Bytes of the current size line, or of all trailers.
    line: usize,
    /// Data bytes decoded so far.
    decoded: u64,
}

/// What one call to [`Decoder::advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// How many input bytes were taken.
    pub consumed: usize,
    /// Where the data is among them (empty when there was none); it always ends at `consumed`.
    pub data: Range<usize>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Decoder {
        Decoder {
            state: State::Size { digits: 0 },
            remaining: 0,
            line: 0,
            decoded: 0,
        }
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes decoded so far (for `max_body_bytes`).
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Takes bytes from the start of `input` until it is used up, the body ends, or a run of data
    /// has been found (so the caller can pass the data on before the framing after it).
    pub fn advance(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Data => {
                    let n = (input.len() - i)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    self.remaining -= n as u64;
                    self.decoded += n as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok(Step {
                        consumed: i + n,
                        data: i..i + n,
                    });
                }
                State::Size { digits } => {
                    if let Some(d) = hex(b) {
                        if digits == 16 {
                            return Err(ChunkError("chunk size longer than 16 hex digits"));
                        }
                        self.remaining = (self.remaining << 4) | u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError("chunk size is not hex"));
                    } else {
                        self.state = State::AfterSize;
                        continue;
                    }
                }
                State::AfterSize => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Extension,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(ChunkError("invalid byte after the chunk size")),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return Err(ChunkError("control byte in a chunk extension")),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF after the chunk size"));
                    }
                    self.line = 0;
                    self.state = if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                    i += 1;
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = State::Size { digits: 0 };
                    self.remaining = 0;
                    self.line = 0;
                    i += 1;
                    continue;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    _ if is_token(b) => self.state = State::TrailerName,
                    _ => return Err(ChunkError("invalid trailer line")),
                },
                State::TrailerName => match b {
                    b':' => self.state = State::TrailerValue,
                    _ if is_token(b) => {}
                    _ => return Err(ChunkError("invalid trailer field name")),
                },
                State::TrailerValue => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return Err(ChunkError("control byte in a trailer field")),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF in the trailers"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("CR without LF at the end of the body"));
                    }
                    self.state = State::Done;
                    i += 1;
                    break;
                }
            }
            self.line += 1;
            let most = match self.state {
                State::Size { .. } | State::AfterSize | State::Extension | State::SizeLf => {
                    MOST_LINE
                }
                _ => MOST_TRAILERS,
            };
            if self.line > most {
                return Err(ChunkError("chunk-size line or trailers too long"));
            }
            i += 1;
        }
        Ok(Step {
            consumed: i,
            data: i..i,
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 tchar.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Decodes all of `input` in pieces of `piece` bytes: the data, and whether the body ended.
#[cfg(test)]
pub(crate) fn decode_all(input: &[u8], piece: usize) -> Result<(Vec<u8>, bool, usize), ChunkError> {
    let mut decoder = Decoder::new();
    let mut data = Vec::new();
    let mut offset = 0;
    while offset < input.len() && !decoder.is_done() {
        let end = (offset + piece).min(input.len());
        let mut at = offset;
        while at < end && !decoder.is_done() {
            let step = decoder.advance(&input[at..end])?;
            data.extend_from_slice(&input[at + step.data.start..at + step.data.end]);
            at += step.consumed;
        }
        offset = at;
    }
    Ok((data, decoder.is_done(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_decodes_the_same_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for piece in 1..=body.len() {
            let (data, done, used) = decode_all(body, piece).unwrap();
            assert_eq!(data, b"hello world", "{piece}");
            assert!(done, "{piece}");
            assert_eq!(
                used,
                body.len() - 4,
                "the next message is left alone ({piece})"
            );
        }
    }

    #[test]
    fn sizes_are_hex_of_at_most_sixteen_digits() {
        let (data, done, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n", 64).unwrap();
        assert_eq!((data.len(), done), (10, true));
        assert!(decode_all(b"0000000000000000\r\n\r\n", 64).unwrap().1);
        for bad in [
            &b"00000000000000000\r\n\r\n"[..],
            b"x\r\n",
            b"\r\n",
            b"-1\r\n",
            b"0x5\r\n",
            b"5 x\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_all(b"5 \t;ext\r\nhello\r\n0\r\n\r\n", 64).unwrap().1);
    }

    #[test]
    fn line_ends_must_be_crlf() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\rX0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\n\rX",
            b"0\r\nA: b\n\r\n",
            b"5;a\0b\r\nhello\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailers_must_be_fields() {
        assert!(decode_all(b"0\r\nA: 1\r\nB-c: two\r\n\r\n", 64).unwrap().1);
        for bad in [
            &b"0\r\n A: 1\r\n\r\n"[..],
            b"0\r\nA : 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nA: 1\0\r\n\r\n",
            b"0\r\nA(b): 1\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_lines_and_trailers_are_refused() {
        let ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MOST_LINE));
        assert!(decode_all(ext.as_bytes(), 512).is_err());
        let ok = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MOST_LINE - 8));
        assert!(decode_all(ok.as_bytes(), 512).unwrap().1);
        let trailers = format!("0\r\nA: {}\r\n\r\n", "v".repeat(MOST_TRAILERS));
        assert!(decode_all(trailers.as_bytes(), 512).is_err());
        let fits = format!("0\r\nA: {}\r\n\r\n", "v".repeat(MOST_TRAILERS - 16));
        assert!(
            decode_all(fits.as_bytes(), 512).unwrap().1,
            "16 KiB of trailers fit"
        );
    }

    #[test]
    fn a_cut_body_is_not_done_and_counts_its_data() {
        let mut decoder = Decoder::new();
        let step = decoder.advance(b"a\r\n01234").unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 8,
                data: 3..8
            }
        );
        assert_eq!(decoder.decoded(), 5);
        assert!(!decoder.is_done());
        let huge = decoder
            .clone()
            .advance(b"56789\r\nffffffffffffffff\r\n")
            .unwrap();
        assert_eq!(huge.data, 0..5);
    }
}
