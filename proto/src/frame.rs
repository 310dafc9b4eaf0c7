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

/// Bytes in front of a DATA frame's payload: length, channel, kind, stream.
pub const DATA_HEADER: usize = LENGTH_PREFIX + FRAME_OVERHEAD + 1;

/// Writers send DATA payloads at least this large from their own buffer,
/// behind a [`FrameCodec::data_header`] in one vectored write; smaller
/// frames are encoded into a batch buffer and leave together.
pub const DIRECT_DATA: usize = 16 * 1024;
/// A writer's batch of small frames is handed to TLS once this large.
pub const BATCH_LIMIT: usize = 64 * 1024;

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
    /// An OPEN whose input on stream 0 has already ended (capability
    /// `oneshot`).
    Call = 0x15,
    /// A DATA and the channel's CLOSE in one frame (capability `oneshot`).
    Reply = 0x16,
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
            0x15 => Self::Call,
            0x16 => Self::Reply,
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

    /// The header of a DATA frame carrying `len` bytes, for writers that
    /// send the payload from where it lies (a vectored write) instead of
    /// copying it into an output buffer behind the header.
    pub fn data_header(
        &self,
        channel: u32,
        stream: u8,
        len: usize,
    ) -> Result<[u8; DATA_HEADER], FrameError> {
        let length = len + FRAME_OVERHEAD + 1;
        if length > self.max_send as usize {
            return Err(FrameError::TooLarge {
                length: u32::try_from(length).unwrap_or(u32::MAX),
                max: self.max_send,
            });
        }
        let mut header = [0u8; DATA_HEADER];
        header[..4].copy_from_slice(&(length as u32).to_be_bytes());
        header[4..8].copy_from_slice(&channel.to_be_bytes());
        header[8] = Kind::Data as u8;
        header[9] = stream;
        Ok(header)
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

/// Writes a message straight into the output buffer, not through a
/// [`Frame`] of its own: no buffer to allocate, grow and free per message,
/// and DATA's bytes are copied once, which matters for bulk transfers.
impl Encoder<crate::Message> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: crate::Message, dst: &mut BytesMut) -> Result<(), FrameError> {
        let crate::Message::Data {
            channel,
            stream,
            data,
        } = message
        else {
            let start = dst.len();
            // The header's length, channel and kind are filled in below.
            dst.reserve(LENGTH_PREFIX + FRAME_OVERHEAD + 64);
            dst.put_bytes(0, LENGTH_PREFIX + FRAME_OVERHEAD);
            let mut w = crate::wire::Writer::resume(std::mem::take(dst));
            let (channel, kind) = message.write_payload(&mut w);
            *dst = w.into_inner();
            let length = dst.len() - start - LENGTH_PREFIX;
            if length > self.max_send as usize {
                dst.truncate(start);
                return Err(FrameError::TooLarge {
                    length: u32::try_from(length).unwrap_or(u32::MAX),
                    max: self.max_send,
                });
            }
            let header = &mut dst[start..start + LENGTH_PREFIX + FRAME_OVERHEAD];
            header[..4].copy_from_slice(&(length as u32).to_be_bytes());
            header[4..8].copy_from_slice(&channel.to_be_bytes());
            header[8] = kind as u8;
            return Ok(());
        };
        let header = self.data_header(channel, stream, data.len())?;
        dst.reserve(DATA_HEADER + data.len());
        dst.put_slice(&header);
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

    /// Three frames cut in two reads at every byte boundary: the same
    /// frames come out whatever the cut.
    #[test]
    fn frames_split_anywhere_across_reads() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let messages = [
            crate::Message::Data {
                channel: 1,
                stream: 0,
                data: Bytes::from((0..=255u8).cycle().take(3000).collect::<Vec<_>>()),
            },
            crate::Message::Credit {
                channel: 1,
                bytes: 77,
            },
            crate::Message::Eof {
                channel: 3,
                stream: 2,
            },
        ];
        let mut wire = BytesMut::new();
        for m in &messages {
            codec.encode(m.clone(), &mut wire).unwrap();
        }
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(part);
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    got.push(crate::Message::decode(frame).unwrap());
                }
            }
            assert_eq!(got, messages, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn one_shot_frames_match_the_protocol_document() {
        // docs/PROTOCOL.md, "One-shot calls".
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut out = BytesMut::new();
        codec
            .encode(
                crate::Message::Call {
                    channel: 1,
                    command: "pong".into(),
                    args: vec![Bytes::from_static(b"abcdefgh")],
                },
                &mut out,
            )
            .unwrap();
        let mut call = vec![0, 0, 0, 0x19, 0, 0, 0, 1, 0x15, 0, 4];
        call.extend_from_slice(b"pong");
        call.extend_from_slice(&[0, 1, 0, 0, 0, 8]);
        call.extend_from_slice(b"abcdefgh");
        assert_eq!(&out[..], &call[..]);
        out.clear();
        codec
            .encode(
                crate::Message::Reply {
                    channel: 1,
                    stream: 0,
                    data: Bytes::from_static(b"abcdefgh"),
                    code: crate::ErrorCode::Ok,
                    value: 0,
                    message: String::new(),
                },
                &mut out,
            )
            .unwrap();
        let mut reply = vec![0, 0, 0, 0x1a, 0, 0, 0, 1, 0x16, 0, 0, 0];
        reply.extend_from_slice(&[0; 8]);
        reply.extend_from_slice(&[0, 0]);
        reply.extend_from_slice(b"abcdefgh");
        assert_eq!(&out[..], &reply[..]);
    }

    #[test]
    fn messages_encode_as_their_frames_do() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let messages = [
            crate::Message::Pong {
                payload: Bytes::from_static(b"12345678"),
            },
            crate::Message::Close {
                channel: 7,
                code: crate::ErrorCode::UnknownCommand,
                value: -3,
                message: "no plugin serves the command `x`".repeat(9),
            },
            crate::Message::Credit {
                channel: 1,
                bytes: 65536,
            },
        ];
        let mut direct = BytesMut::from(&b"before"[..]);
        let mut via_frames = direct.clone();
        for m in messages {
            codec.encode(m.encode(), &mut via_frames).unwrap();
            codec.encode(m, &mut direct).unwrap();
        }
        assert_eq!(direct, via_frames);
        // Too large for the peer: an error, and the buffer as it was.
        codec.set_max_send(MIN_MAX_FRAME);
        let long = crate::Message::Error {
            code: crate::ErrorCode::Internal,
            message: "x".repeat(MIN_MAX_FRAME as usize),
        };
        assert!(matches!(
            codec.encode(long, &mut direct),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(direct, via_frames);
    }

    #[test]
    fn data_header_and_payload_are_the_encoded_message() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let data = Bytes::from(vec![7u8; 1000]);
        let mut encoded = BytesMut::new();
        codec
            .encode(
                crate::Message::Data {
                    channel: 9,
                    stream: 2,
                    data: data.clone(),
                },
                &mut encoded,
            )
            .unwrap();
        let header = codec.data_header(9, 2, data.len()).unwrap();
        assert_eq!(&encoded[..DATA_HEADER], &header[..]);
        assert_eq!(&encoded[DATA_HEADER..], &data[..]);
        // The largest payload fits; one byte more does not.
        let max = FrameCodec::max_data_chunk(DEFAULT_MAX_FRAME);
        assert!(codec.data_header(9, 2, max).is_ok());
        assert!(matches!(
            codec.data_header(9, 2, max + 1),
            Err(FrameError::TooLarge { .. })
        ));
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
