//! A small async client for sockd, used by every sockctl command.
//!
//! - [`Config`] / [`Overrides`] / [`Settings`] (config.rs): the TOML file,
//!   command-line overrides and what a connection needs;
//! - [`Client`] (connection.rs): TLS + login, [`Client::ping`],
//!   [`Client::open`];
//! - [`ChannelHandle`] / [`ChannelSender`] / [`Event`] (channel.rs): one
//!   operation, its streams and flow control;
//! - auth.rs: credentials and the login exchange; tls.rs: certificate pins
//!   and CA files;
//! - [`control`]: the daemon's Unix control socket (admin commands);
//! - [`ClientError`] (error.rs): a one-line message and an exit status.

mod auth;
mod channel;
mod config;
mod connection;
pub mod control;
mod error;
mod tls;

pub use auth::{load_secret, random_bytes, read_key_file};
pub use channel::{ChannelHandle, ChannelSender, Event};
pub use config::{
    Config, DEFAULT_CONNECT_TIMEOUT, Overrides, PASSWORD_ENV, Pin, Settings, Trust, split_host_port,
};
pub use connection::{Client, ServerInfo, WINDOW};
pub use error::{ClientError, code_from_slug};
pub use tls::{client_config, fingerprint, server_name};
