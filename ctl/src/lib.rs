//! sockctl, the command-line client of sockd, as a library.
//!
//! - [`client`]: a reusable async client for the sockd protocol (TLS,
//!   authentication, multiplexed channels with flow control) and for the
//!   daemon's Unix control socket;
//! - [`cmd`]: the `sockctl` subcommands, one file per command group;
//! - [`cli`]: the command line (clap) and the entry point [`cli::run`];
//! - [`output`]: small helpers for human-readable output.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod output;
pub mod term;
