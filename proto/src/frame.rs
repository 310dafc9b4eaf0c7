//! Frames: the unit the connection reads and writes.
//!
//! ```text
//! +----------------+----------------+----------+-------------------+
//! | length: u32 BE | channel: u32 BE| kind: u8 | payload           |
//! +----------------+----------------+----------+-------------------+
//! ```
//! `length` counts channel, kind and payload (so it is at least 5). A frame
//! whose announced length exceeds the negotiated maximum is rejected as soon
//! as the four length bytes arrive; the claimed length is never allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes of channel + kind that `length` counts besides the payload.
pub const FRAME_OVERHEAD: usize = 5;
/// Bytes of the length prefix itself.
pub const LENGTH_PREFIX: usize = 4;
/// The smallest maximum frame size a peer may announce.
pub const MIN_MAX_FRAME: u32 = 16 * 1024;
/// Default maximum frame size (value of the length field).
pub const DEFAULT_MAX_FRAME: u32 = 256 * 1024 + FRAME_OVERHEAD as u32 + 1;

/// The connection-level channel: hello, authentication, ping, errors.
pub const CONTROL_CHANNEL: u32 = 0;

/// Frame kinds. Numbers are stable; see docs/PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 0x01,
    AuthStart = 0x02,
    AuthChallenge = 0x03,
    AuthProof = 0x04,
    AuthOk = 0x05,
    AuthFail = 0x06,
    Ping = 0x07,
    Pong = 0x08,
    Error = 0x09,
    GoAway = 0x0a,
    Open = 0x10,
    Data = 0x11,
    Eof = 0x12,
    Credit = 0x13,
    Close = 0x14,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Hello,
            0x02 => Self::AuthStart,
            0x03 => Self::AuthChallenge,
            0x04 => Self::AuthProof,
            0x05 => Self::AuthOk,
            0x06 => Self::AuthFail,
            0x07 => Self::Ping,
            0x08 => Self::Pong,
            0x09 => Self::Error,
            0x0a => Self::GoAway,
            0x10 => Self::Open,
            0x11 => Self::Data,
            0x12 => Self::Eof,
            0x13 => Self::Credit,
            0x14 => Self::Close,
            _ => return None,
        })
    }
}

/// One frame as read off or written to the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    pub kind: Kind,
    pub payload: Bytes,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Frame({:?} ch={} len={})",
            self.kind,
            self.channel,
            self.payload.len()
        )
    }
}

/// Why the byte stream could not be cut into frames. All are fatal to the
/// connection: after one, framing is lost.
#[derive(Debug)]
pub enum FrameError {
    TooLarge { length: u32, max: u32 },
    TooShort { length: u32 },
    UnknownKind { kind: u8 },
    Io(std::io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { length, max } => {
                write!(f, "frame of {length} bytes exceeds the maximum of {max}")
            }
            Self::TooShort { length } => {
                write!(
                    f,
                    "frame length {length} is shorter than the {FRAME_OVERHEAD}-byte header"
                )
            }
            Self::UnknownKind { kind } => write!(f, "unknown frame kind 0x{kind:02x}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// tokio-util codec for [`Frame`]s with separate limits for what we accept
/// and what we send (each side announces its own maximum in HELLO).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_recv: u32,
    max_send: u32,
}

impl FrameCodec {
    pub fn new(max_frame: u32) -> Self {
        Self {
            max_recv: max_frame,
            max_send: max_frame,
        }
    }

    /// After HELLO: never send more than the peer accepts.
    pub fn set_max_send(&mut self, max: u32) {
        self.max_send = max;
    }

    pub fn max_send(&self) -> u32 {
        self.max_send
    }

    /// The largest DATA payload (stream byte excluded) a frame may carry.
    pub fn max_data_chunk(max_frame: u32) -> usize {
        max_frame as usize - FRAME_OVERHEAD - 1
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if length > self.max_recv {
            return Err(FrameError::TooLarge {
                length,
                max: self.max_recv,
            });
        }
        if (length as usize) < FRAME_OVERHEAD {
            return Err(FrameError::TooShort { length });
        }
        let total = LENGTH_PREFIX + length as usize;
        if src.len() < total {
            // Bounded by max_recv, checked above.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX);
        let channel = src.get_u32();
        let raw_kind = src.get_u8();
        let payload = src.split_to(length as usize - FRAME_OVERHEAD).freeze();
        let kind = Kind::from_u8(raw_kind).ok_or(FrameError::UnknownKind { kind: raw_kind })?;
        Ok(Some(Frame {
            channel,
            kind,
            payload,
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let length = frame.payload.len() + FRAME_OVERHEAD;
        if length > self.max_send as usize {
            return Err(FrameError::TooLarge {
                length: u32::try_from(length).unwrap_or(u32::MAX),
                max: self.max_send,
            });
        }
        dst.reserve(LENGTH_PREFIX + length);
        dst.put_u32(length as u32);
        dst.put_u32(frame.channel);
        dst.put_u8(frame.kind as u8);
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

/// Writes a message straight into the output buffer. For DATA this copies
/// the bytes once (into `dst`) instead of twice (into a [`Frame`], then
/// into `dst`), which matters for bulk transfers.
impl Encoder<crate::Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: crate::Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let crate::Message::Data {
            channel,
            stream,
            data,
        } = message
        else {
            return self.encode(message.encode(), dst);
        };
        let length = data.len() + FRAME_OVERHEAD + 1;
        if length > self.max_send as usize {
            return Err(FrameError::TooLarge {
                length: u32::try_from(length).unwrap_or(u32::MAX),
                max: self.max_send,
            });
        }
        dst.reserve(LENGTH_PREFIX + length);
        dst.put_u32(length as u32);
        dst.put_u32(channel);
        dst.put_u8(Kind::Data as u8);
        dst.put_u8(stream);
        dst.put_slice(&data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        let f = Frame {
            channel: 3,
            kind: Kind::Data,
            payload: Bytes::from_static(b"\0hi"),
        };
        codec.encode(f.clone(), &mut buf).unwrap();
        assert_eq!(&buf[..], b"\0\0\0\x08\0\0\0\x03\x11\0hi");
        // Byte by byte: no frame until the last byte.
        let bytes = buf.split().freeze();
        let mut partial = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            partial.put_u8(*b);
            let got = codec.decode(&mut partial).unwrap();
            assert_eq!(got.is_some(), i == bytes.len() - 1);
            if let Some(got) = got {
                assert_eq!(got, f);
            }
        }
    }

    #[test]
    fn messages_encode_like_their_frames() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        for m in [
            crate::Message::Data {
                channel: 7,
                stream: 1,
                data: Bytes::from_static(b"payload"),
            },
            crate::Message::Eof {
                channel: 7,
                stream: 0,
            },
        ] {
            let (mut direct, mut via_frame) = (BytesMut::new(), BytesMut::new());
            codec.encode(m.clone(), &mut direct).unwrap();
            codec.encode(m.encode(), &mut via_frame).unwrap();
            assert_eq!(direct, via_frame);
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let mut codec = FrameCodec::new(MIN_MAX_FRAME);
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { length, max }) => {
                assert_eq!(length, u32::MAX);
                assert_eq!(max, MIN_MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(
            buf.capacity() < 1024,
            "the claimed length must not be reserved"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooShort { length: 2 })
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 0, 0, 0, 0, 0x7f][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::UnknownKind { kind: 0x7f })
        ));
    }
}
