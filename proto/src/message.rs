//! Typed messages and their mapping to and from [`Frame`]s.
//!
//! `Message::decode` is the only place peer bytes become values: it checks
//! the channel each kind may use, every field and every length, and returns a
//! [`ProtocolError`] instead of panicking.

use crate::code::ErrorCode;
use crate::frame::{CONTROL_CHANNEL, Frame, Kind};
use crate::wire::{DecodeError, Reader, Writer};
use bytes::Bytes;
use std::fmt;

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;
/// ALPN protocol id negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"sockd/1";
/// Length of nonces, proofs and signatures.
pub const NONCE_LEN: usize = 32;

/// The HELLO capability of one-shot calls: a server that lists it accepts
/// CALL; a client that lists it accepts REPLY (docs/PROTOCOL.md).
pub const ONESHOT: &str = "oneshot";
/// Most arguments an OPEN may carry.
pub const MAX_ARGS: usize = 4096;

/// Well-known streams inside a channel. Plugins may use others.
pub mod stream {
    /// Main data: stdout, file content, command input.
    pub const MAIN: u8 = 0;
    /// Diagnostics: stderr.
    pub const DIAG: u8 = 1;
    /// Structured control messages (JSON) of the command's own protocol.
    pub const CONTROL: u8 = 2;
}

/// Credential kinds a client can authenticate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CredentialKind {
    Password = 1,
    Key = 2,
}

impl CredentialKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Password),
            2 => Some(Self::Key),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Key => "key",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The largest frame (length field value) this side accepts.
    pub max_frame: u32,
    /// Initial credit this side grants the peer on every new channel.
    pub window: u32,
    /// Software name and version, e.g. `sockd 0.1.0`.
    pub software: String,
    /// Server: its configured name. Client: empty.
    pub identity: String,
    /// Capability names; unknown ones are ignored.
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    AuthStart {
        user: String,
        kind: CredentialKind,
        client_nonce: [u8; NONCE_LEN],
    },
    AuthChallenge {
        server_nonce: [u8; NONCE_LEN],
        salt: Bytes,
        iterations: u32,
    },
    AuthProof {
        proof: [u8; NONCE_LEN],
    },
    AuthOk {
        server_signature: [u8; NONCE_LEN],
        session_id: u64,
    },
    AuthFail {
        code: ErrorCode,
        retry_after_ms: u32,
        message: String,
    },
    Ping {
        payload: Bytes,
    },
    Pong {
        payload: Bytes,
    },
    /// Fatal connection error; the sender closes after it.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The server accepts no new channels; open ones may finish.
    GoAway {
        code: ErrorCode,
        message: String,
    },
    Open {
        channel: u32,
        command: String,
        args: Vec<Bytes>,
    },
    Data {
        channel: u32,
        stream: u8,
        data: Bytes,
    },
    Eof {
        channel: u32,
        stream: u8,
    },
    Credit {
        channel: u32,
        bytes: u32,
    },
    /// Client: OPEN, then EOF on stream 0, in one frame: a call with no
    /// input. Only to a server whose HELLO lists [`ONESHOT`].
    Call {
        channel: u32,
        command: String,
        args: Vec<Bytes>,
    },
    /// Server: DATA on `stream`, then the channel's CLOSE, in one frame.
    /// Only to a client whose HELLO lists [`ONESHOT`].
    Reply {
        channel: u32,
        stream: u8,
        data: Bytes,
        code: ErrorCode,
        value: i64,
        message: String,
    },
    /// Server: the operation ended. Client: cancel.
    Close {
        channel: u32,
        code: ErrorCode,
        value: i64,
        message: String,
    },
}

/// A frame that is well-framed but not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    Field { kind: Kind, error: DecodeError },
    WrongChannel { kind: Kind, channel: u32 },
    BadCredentialKind(u8),
    TooManyArgs(usize),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field { kind, error } => write!(f, "malformed {kind:?}: {error}"),
            Self::WrongChannel { kind, channel } => {
                write!(f, "{kind:?} is not allowed on channel {channel}")
            }
            Self::BadCredentialKind(k) => write!(f, "unknown credential kind {k}"),
            Self::TooManyArgs(n) => write!(f, "OPEN with {n} arguments (maximum {MAX_ARGS})"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl Message {
    /// Decodes a frame received from the peer.
    pub fn decode(frame: Frame) -> Result<Self, ProtocolError> {
        let kind = frame.kind;
        let channel = frame.channel;
        let on_control = channel == CONTROL_CHANNEL;
        let control_kind = (kind as u8) < 0x10;
        if on_control != control_kind {
            return Err(ProtocolError::WrongChannel { kind, channel });
        }
        let field = |error| ProtocolError::Field { kind, error };
        let mut r = Reader::new(frame.payload);
        let msg = match kind {
            Kind::Hello => {
                let version = r.u16("version").map_err(field)?;
                let max_frame = r.u32("max_frame").map_err(field)?;
                let window = r.u32("window").map_err(field)?;
                let software = r.str("software").map_err(field)?;
                let identity = r.str("identity").map_err(field)?;
                let count = r.u16("capabilities").map_err(field)?;
                let mut capabilities = Vec::new();
                for _ in 0..count {
                    capabilities.push(r.str("capability").map_err(field)?);
                }
                Message::Hello(Hello {
                    version,
                    max_frame,
                    window,
                    software,
                    identity,
                    capabilities,
                })
            }
            Kind::AuthStart => {
                let user = r.str("user").map_err(field)?;
                let raw = r.u8("kind").map_err(field)?;
                let kind =
                    CredentialKind::from_u8(raw).ok_or(ProtocolError::BadCredentialKind(raw))?;
                let client_nonce = r.array("client_nonce").map_err(field)?;
                Message::AuthStart {
                    user,
                    kind,
                    client_nonce,
                }
            }
            Kind::AuthChallenge => Message::AuthChallenge {
                server_nonce: r.array("server_nonce").map_err(field)?,
                salt: r.bytes("salt").map_err(field)?,
                iterations: r.u32("iterations").map_err(field)?,
            },
            Kind::AuthProof => Message::AuthProof {
                proof: r.array("proof").map_err(field)?,
            },
            Kind::AuthOk => Message::AuthOk {
                server_signature: r.array("server_signature").map_err(field)?,
                session_id: r.u64("session_id").map_err(field)?,
            },
            Kind::AuthFail => Message::AuthFail {
                code: ErrorCode::from_u16(r.u16("code").map_err(field)?),
                retry_after_ms: r.u32("retry_after_ms").map_err(field)?,
                message: r.str("message").map_err(field)?,
            },
            Kind::Ping => Message::Ping { payload: r.rest() },
            Kind::Pong => Message::Pong { payload: r.rest() },
            Kind::Error => Message::Error {
                code: ErrorCode::from_u16(r.u16("code").map_err(field)?),
                message: r.str("message").map_err(field)?,
            },
            Kind::GoAway => Message::GoAway {
                code: ErrorCode::from_u16(r.u16("code").map_err(field)?),
                message: r.str("message").map_err(field)?,
            },
            Kind::Open | Kind::Call => {
                let command = r.str("command").map_err(field)?;
                let count = r.u16("argc").map_err(field)? as usize;
                if count > MAX_ARGS {
                    return Err(ProtocolError::TooManyArgs(count));
                }
                let mut args = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    args.push(r.bytes("arg").map_err(field)?);
                }
                if kind == Kind::Call {
                    Message::Call {
                        channel,
                        command,
                        args,
                    }
                } else {
                    Message::Open {
                        channel,
                        command,
                        args,
                    }
                }
            }
            Kind::Reply => Message::Reply {
                channel,
                stream: r.u8("stream").map_err(field)?,
                code: ErrorCode::from_u16(r.u16("code").map_err(field)?),
                value: r.i64("value").map_err(field)?,
                message: r.str("message").map_err(field)?,
                data: r.rest(),
            },
            Kind::Data => {
                let stream = r.u8("stream").map_err(field)?;
                Message::Data {
                    channel,
                    stream,
                    data: r.rest(),
                }
            }
            Kind::Eof => Message::Eof {
                channel,
                stream: r.u8("stream").map_err(field)?,
            },
            Kind::Credit => Message::Credit {
                channel,
                bytes: r.u32("bytes").map_err(field)?,
            },
            Kind::Close => Message::Close {
                channel,
                code: ErrorCode::from_u16(r.u16("code").map_err(field)?),
                value: r.i64("value").map_err(field)?,
                message: r.str("message").map_err(field)?,
            },
        };
        r.finish().map_err(field)?;
        Ok(msg)
    }

    /// Encodes the message as a frame.
    pub fn encode(&self) -> Frame {
        let mut w = Writer::new();
        let (channel, kind) = self.write_payload(&mut w);
        Frame {
            channel,
            kind,
            payload: w.finish(),
        }
    }

    /// Appends the frame payload to `w`; returns the frame's channel and
    /// kind. The frame encoder writes it straight into its output buffer.
    pub(crate) fn write_payload(&self, w: &mut Writer) -> (u32, Kind) {
        match self {
            Message::Hello(h) => {
                w.u16(h.version)
                    .u32(h.max_frame)
                    .u32(h.window)
                    .str(&h.software)
                    .str(&h.identity);
                w.u16(h.capabilities.len() as u16);
                for c in &h.capabilities {
                    w.str(c);
                }
                (CONTROL_CHANNEL, Kind::Hello)
            }
            Message::AuthStart {
                user,
                kind,
                client_nonce,
            } => {
                w.str(user).u8(*kind as u8).raw(client_nonce);
                (CONTROL_CHANNEL, Kind::AuthStart)
            }
            Message::AuthChallenge {
                server_nonce,
                salt,
                iterations,
            } => {
                w.raw(server_nonce).bytes(salt).u32(*iterations);
                (CONTROL_CHANNEL, Kind::AuthChallenge)
            }
            Message::AuthProof { proof } => {
                w.raw(proof);
                (CONTROL_CHANNEL, Kind::AuthProof)
            }
            Message::AuthOk {
                server_signature,
                session_id,
            } => {
                w.raw(server_signature).u64(*session_id);
                (CONTROL_CHANNEL, Kind::AuthOk)
            }
            Message::AuthFail {
                code,
                retry_after_ms,
                message,
            } => {
                w.u16(code.as_u16()).u32(*retry_after_ms).str(message);
                (CONTROL_CHANNEL, Kind::AuthFail)
            }
            Message::Ping { payload } => {
                w.raw(payload);
                (CONTROL_CHANNEL, Kind::Ping)
            }
            Message::Pong { payload } => {
                w.raw(payload);
                (CONTROL_CHANNEL, Kind::Pong)
            }
            Message::Error { code, message } => {
                w.u16(code.as_u16()).str(message);
                (CONTROL_CHANNEL, Kind::Error)
            }
            Message::GoAway { code, message } => {
                w.u16(code.as_u16()).str(message);
                (CONTROL_CHANNEL, Kind::GoAway)
            }
            Message::Open {
                channel,
                command,
                args,
            }
            | Message::Call {
                channel,
                command,
                args,
            } => {
                w.str(command).u16(args.len() as u16);
                for a in args {
                    w.bytes(a);
                }
                let kind = if matches!(self, Message::Call { .. }) {
                    Kind::Call
                } else {
                    Kind::Open
                };
                (*channel, kind)
            }
            Message::Reply {
                channel,
                stream,
                data,
                code,
                value,
                message,
            } => {
                w.u8(*stream)
                    .u16(code.as_u16())
                    .i64(*value)
                    .str(message)
                    .raw(data);
                (*channel, Kind::Reply)
            }
            Message::Data {
                channel,
                stream,
                data,
            } => {
                w.u8(*stream).raw(data);
                (*channel, Kind::Data)
            }
            Message::Eof { channel, stream } => {
                w.u8(*stream);
                (*channel, Kind::Eof)
            }
            Message::Credit { channel, bytes } => {
                w.u32(*bytes);
                (*channel, Kind::Credit)
            }
            Message::Close {
                channel,
                code,
                value,
                message,
            } => {
                w.u16(code.as_u16()).i64(*value).str(message);
                (*channel, Kind::Close)
            }
        }
    }
}

impl From<Message> for Frame {
    fn from(m: Message) -> Frame {
        m.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message) {
        assert_eq!(Message::decode(m.encode()).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Hello(Hello {
            version: 1,
            max_frame: 1 << 20,
            window: 1 << 20,
            software: "sockd 0.1".into(),
            identity: "host".into(),
            capabilities: vec!["a".into(), "b".into()],
        }));
        round_trip(Message::AuthStart {
            user: "demo".into(),
            kind: CredentialKind::Key,
            client_nonce: [7; 32],
        });
        round_trip(Message::AuthChallenge {
            server_nonce: [1; 32],
            salt: Bytes::from_static(b"salt"),
            iterations: 4096,
        });
        round_trip(Message::AuthProof { proof: [2; 32] });
        round_trip(Message::AuthOk {
            server_signature: [3; 32],
            session_id: 9,
        });
        round_trip(Message::AuthFail {
            code: ErrorCode::AuthFailed,
            retry_after_ms: 10,
            message: "no".into(),
        });
        round_trip(Message::Ping {
            payload: Bytes::from_static(b"12345678"),
        });
        round_trip(Message::Pong {
            payload: Bytes::new(),
        });
        round_trip(Message::Error {
            code: ErrorCode::Protocol,
            message: "bad".into(),
        });
        round_trip(Message::GoAway {
            code: ErrorCode::ShuttingDown,
            message: "bye".into(),
        });
        round_trip(Message::Open {
            channel: 1,
            command: "exec".into(),
            args: vec![Bytes::from_static(b"ls")],
        });
        round_trip(Message::Call {
            channel: 2,
            command: "pong".into(),
            args: vec![Bytes::from_static(b"12345678")],
        });
        round_trip(Message::Reply {
            channel: 2,
            stream: 0,
            data: Bytes::from_static(b"12345678"),
            code: ErrorCode::Ok,
            value: -1,
            message: String::new(),
        });
        round_trip(Message::Data {
            channel: 1,
            stream: 1,
            data: Bytes::from_static(b"x"),
        });
        round_trip(Message::Eof {
            channel: 1,
            stream: 0,
        });
        round_trip(Message::Credit {
            channel: 1,
            bytes: 65536,
        });
        round_trip(Message::Close {
            channel: 1,
            code: ErrorCode::Ok,
            value: -1,
            message: String::new(),
        });
    }

    #[test]
    fn channel_rules_are_enforced() {
        let mut f = Message::Data {
            channel: 1,
            stream: 0,
            data: Bytes::new(),
        }
        .encode();
        f.channel = 0;
        assert!(matches!(
            Message::decode(f),
            Err(ProtocolError::WrongChannel { .. })
        ));
        let mut f = Message::Ping {
            payload: Bytes::new(),
        }
        .encode();
        f.channel = 4;
        assert!(matches!(
            Message::decode(f),
            Err(ProtocolError::WrongChannel { .. })
        ));
    }

    #[test]
    fn trailing_and_truncated_fields_are_errors() {
        let mut f = Message::AuthProof { proof: [0; 32] }.encode();
        f.payload = f.payload.slice(..31);
        assert!(matches!(
            Message::decode(f),
            Err(ProtocolError::Field { .. })
        ));
        let mut f = Message::Eof {
            channel: 1,
            stream: 0,
        }
        .encode();
        f.payload = Bytes::from_static(&[0, 0]);
        assert!(matches!(
            Message::decode(f),
            Err(ProtocolError::Field { .. })
        ));
    }
}
