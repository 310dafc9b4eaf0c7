//! Fuzz target `message`: `Message::decode` (proto/src/message.rs), the
//! only place a frame's payload becomes a value: HELLO, every AUTH_*
//! message, and the channel messages.
//!
//! Input: a frame without its length prefix: channel (u32 BE), kind (u8),
//! payload. Checks: no panic; a decoded message re-encodes to exactly the
//! frame it came from (one encoding per value, so nothing in a frame is
//! silently ignored); errors display.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockd_proto::{Frame, Kind, Message};

fuzz_target!(|data: &[u8]| {
    let Some((header, payload)) = data.split_first_chunk::<5>() else {
        return;
    };
    let channel = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let Some(kind) = Kind::from_u8(header[4]) else {
        return;
    };
    let frame = Frame {
        channel,
        kind,
        payload: Bytes::copy_from_slice(payload),
    };
    match Message::decode(frame.clone()) {
        Ok(message) => assert_eq!(message.encode(), frame, "{message:?}"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
