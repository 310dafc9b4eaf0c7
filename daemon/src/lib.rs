//! sockd: a TLS daemon that authenticates every client with a channel-bound
//! HMAC challenge-response and serves commands through plugins.
//!
//! One module per concept: [`config`] (sockd.toml), [`tls`] (certificates),
//! [`users`] (the users file), [`penalty`] (failed-login slow-down),
//! [`auth`] (the server side of the exchange), [`connection`] (one client),
//! [`channel`] (one operation), [`outbound`] (a connection's write queue
//! and its bound), [`session`] (who is logged in),
//! [`server`] (listeners, limits, shutdown), [`release`] (freed memory
//! back to the system when quiet), [`control`] (the Unix control
//! socket), [`plugin`] (the plugin host), [`dev`] (`--dev` quickstart),
//! [`shutdown`] (the broadcast stop signal), [`logging`], [`gen_cert`]
//! (`sockd gen-cert`).

pub mod auth;
pub mod channel;
pub mod config;
pub mod connection;
pub mod control;
#[cfg(feature = "debug-hooks")]
pub mod debug_hooks;
pub mod dev;
pub mod gen_cert;
pub mod logging;
pub mod notify;
pub mod outbound;
pub mod penalty;
pub mod plugin;
pub mod release;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod users;
