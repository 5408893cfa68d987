//! Any bytes given to the chunked decoder, in pieces of any size: `Decoder::advance` never panics,
//! takes at most what it is given, always makes progress (at least one byte, or the body is done),
//! and points its data inside the bytes it took; one piece or many give the same data, the same
//! end and the same error. And a body encoded here (chunk sizes, extensions and trailers from the
//! input) decodes to the data it was made of, leaving the bytes after it alone.
//!
//! The proxy sees a chunked body as TCP delivers it: how it is cut must never change what it
//! means, or a body could be read two ways.
//!
//! Input: the first byte picks the mode (bit 7: round trip) and the piece sizes (bit 6: fixed,
//! bits 0 to 5: the largest piece), the rest is the body or the plan of one.
#![no_main]

use fulcrum::proxy::h1::chunked::{ChunkError, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let mut pieces = Pieces::new(mode);
    if mode & 0x80 != 0 {
        round_trip(input, &mut pieces);
        return;
    }
    let whole = decode(input, &mut Pieces::whole());
    let cut = decode(input, &mut pieces);
    assert_eq!(
        whole, cut,
        "piece sizes changed the outcome (mode {mode:#x})"
    );
    let by_byte = decode(input, &mut Pieces::fixed(1));
    assert_eq!(whole, by_byte, "one byte at a time changed the outcome");
});

/// What decoding a buffer gave: the data, then either where the body ended (`None` while it has
/// not) or the error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    data: Vec<u8>,
    end: Result<Option<usize>, ChunkError>,
}

/// Feeds `input` to a decoder in the pieces `pieces` cuts, as reads would deliver it, checking
/// every step.
fn decode(input: &[u8], pieces: &mut Pieces) -> Outcome {
    let mut decoder = Decoder::new();
    let mut data = Vec::new();
    let mut at = 0;
    while at < input.len() && !decoder.is_done() {
        // The bytes read so far and not yet taken: the end of the last piece, or more.
        let end = (at + pieces.next()).min(input.len());
        while at < end && !decoder.is_done() {
            let given = &input[at..end];
            let step = match decoder.advance(given) {
                Ok(step) => step,
                Err(e) => {
                    assert_eq!(decoder.decoded(), data.len() as u64);
                    return Outcome { data, end: Err(e) };
                }
            };
            assert!(step.consumed <= given.len(), "{step:?} of {}", given.len());
            assert!(
                step.consumed >= 1 || decoder.is_done(),
                "no progress: {step:?} of {}",
                given.len()
            );
            assert!(
                step.data.start <= step.data.end && step.data.end == step.consumed,
                "data outside the bytes taken: {step:?}"
            );
            data.extend_from_slice(&given[step.data.clone()]);
            assert_eq!(decoder.decoded(), data.len() as u64);
            at += step.consumed;
        }
    }
    if decoder.is_done() {
        // A finished body takes nothing more: the bytes after it are the next message's.
        let rest = decoder
            .advance(&input[at..])
            .expect("a done decoder takes nothing");
        assert_eq!((rest.consumed, rest.data.len()), (0, 0), "{rest:?}");
    }
    Outcome {
        data,
        end: Ok(decoder.is_done().then_some(at)),
    }
}

/// Piece sizes from the mode byte: all fixed, or varying in 1..=largest.
struct Pieces {
    largest: usize,
    fixed: bool,
    state: u32,
}

impl Pieces {
    fn new(mode: u8) -> Pieces {
        Pieces {
            largest: 1 + usize::from(mode & 0x3f),
            fixed: mode & 0x40 != 0,
            state: 0x9e37_79b9 ^ u32::from(mode),
        }
    }

    fn fixed(size: usize) -> Pieces {
        Pieces {
            largest: size,
            fixed: true,
            state: 1,
        }
    }

    fn whole() -> Pieces {
        Pieces::fixed(usize::MAX / 2)
    }

    fn next(&mut self) -> usize {
        if self.fixed {
            return self.largest;
        }
        // xorshift32: cheap, and the same sizes for the same mode byte.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + self.state as usize % self.largest
    }
}

/// Encodes a body from the plan in `plan` and decodes it back. Each chunk takes a control byte
/// (bits 0 to 5: size - 1; bit 6: an extension; bit 7: upper-case hex with leading zeros) and then
/// its data; a control byte of 0xff ends the chunks and adds trailers.
fn round_trip(plan: &[u8], pieces: &mut Pieces) {
    let mut body = Vec::new();
    let mut want = Vec::new();
    let mut rest = plan;
    let mut trailers = false;
    while let Some((&control, after)) = rest.split_first() {
        if control == 0xff {
            trailers = true;
            break;
        }
        let size = 1 + usize::from(control & 0x3f);
        let (chunk, after) = after.split_at(size.min(after.len()));
        rest = after;
        if chunk.is_empty() {
            break;
        }
        if control & 0x80 != 0 {
            body.extend_from_slice(format!("{:04X}", chunk.len()).as_bytes());
        } else {
            body.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
        }
        if control & 0x40 != 0 {
            body.extend_from_slice(b" ;name=\"v; x\";flag");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
        want.extend_from_slice(chunk);
    }
    body.extend_from_slice(b"0;last\r\n");
    if trailers {
        body.extend_from_slice(b"X-Sum: 1\r\nExpires:\r\n");
    }
    body.extend_from_slice(b"\r\n");
    let end = body.len();
    // The next message on the connection, which the decoder must leave alone.
    body.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let got = decode(&body, pieces);
    assert_eq!(
        got,
        Outcome {
            data: want,
            end: Ok(Some(end)),
        },
        "{:?}",
        String::from_utf8_lossy(&body)
    );
}
