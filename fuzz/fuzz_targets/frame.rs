//! Fuzz target `frame`: the frame decoder (`FrameCodec::decode`,
//! proto/src/frame.rs) on a byte stream as TLS delivers it.
//!
//! Input: byte 0 picks the receive limit (bit 0) and how the stream is
//! chunked; the rest is the stream. Checks: no panic; the same frames and
//! the same error whether the stream arrives at once or in chunks; every
//! frame re-encodes to exactly the bytes it was read from; the buffer
//! never grows by more than the limit allows (a claimed length is not
//! allocated); every frame's message decodes without panicking.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sockd_proto::frame::{DEFAULT_MAX_FRAME, LENGTH_PREFIX, MIN_MAX_FRAME};
use sockd_proto::{Frame, FrameCodec, Message};
use tokio_util::codec::{Decoder, Encoder};

/// What decoding a stream produced: frames, then maybe the fatal error,
/// and how many bytes were left waiting for more (none counted after an
/// error: the connection is closed, whatever else was buffered).
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<String>,
    left: usize,
}

fn decode(max: u32, parts: &[&[u8]]) -> Outcome {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let total: usize = parts.iter().map(|p| p.len()).sum();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        error: Some(e.to_string()),
                        left: 0,
                    };
                }
            }
        }
        // Reserving is bounded by the limit, never by a claimed length.
        let bound = 2 * (total + LENGTH_PREFIX + max as usize) + 64;
        assert!(
            buf.capacity() <= bound,
            "buffer grew to {} (bound {bound})",
            buf.capacity()
        );
    }
    Outcome {
        frames,
        error: None,
        left: buf.len(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((seed, stream)) = sockd_fuzz::selector(data) else {
        return;
    };
    let max = if seed & 1 == 0 {
        DEFAULT_MAX_FRAME
    } else {
        MIN_MAX_FRAME
    };
    let whole = decode(max, &[stream]);
    let chunked = decode(max, &sockd_fuzz::chunks(seed, stream));
    assert_eq!(whole, chunked, "chunking changed what was decoded");

    let mut codec = FrameCodec::new(max);
    let mut at = 0;
    for frame in whole.frames {
        let mut encoded = BytesMut::new();
        codec
            .encode(frame.clone(), &mut encoded)
            .expect("a decoded frame fits the limit it was decoded with");
        assert_eq!(&encoded[..], &stream[at..at + encoded.len()]);
        at += encoded.len();
        let _ = Message::decode(frame).map_err(|e| e.to_string());
    }
    if whole.error.is_none() {
        assert_eq!(at + whole.left, stream.len());
    }
});
