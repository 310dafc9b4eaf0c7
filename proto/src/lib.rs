//! The sockd wire protocol, shared by the daemon and sockctl.
//!
//! - [`frame`]: length-prefixed frames and their tokio-util codec;
//! - [`message`]: typed messages inside frames;
//! - [`auth`]: the channel-bound SCRAM-SHA-256 exchange and key files;
//! - [`code`]: status codes and sockctl exit statuses;
//! - [`control`]: the JSON-lines protocol of the Unix control socket.
//!
//! docs/PROTOCOL.md is the normative description; this crate is its
//! reference implementation.

pub mod auth;
pub mod code;
pub mod control;
pub mod frame;
pub mod hex;
pub mod message;
pub mod wire;

pub use code::ErrorCode;
pub use frame::{Frame, FrameCodec, Kind};
pub use message::{CredentialKind, Hello, Message, ProtocolError};
