//! The sockctl subcommands, one file per command group.
//!
//! To add a command group (e.g. `exec`): write `cmd/exec.rs` with a clap
//! `Args` (or `Subcommand`) type and
//! `pub async fn run(ctx: &Context, args: ExecArgs) -> Result<u8, ClientError>`
//! returning the exit status, then add a variant to [`Command`] and a line
//! to [`run`]. Use [`Context::connect`] for the TLS protocol and
//! [`Context::control`] for the control socket; print with
//! [`crate::output`]; return errors instead of printing them.

pub mod admin;
pub mod call;
pub mod chat;
pub mod completions;
pub mod exec;
pub mod files;
pub mod ping;
pub mod plugin;
pub mod user;

use crate::cli::GlobalArgs;
use crate::client::control::{self, Reply};
use crate::client::{Client, ClientError, Config, Overrides};
use clap::Subcommand;
use sockd_proto::control::Request;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in and measure the round trip to sockd
    Ping(ping::PingArgs),
    /// Run a plugin command and relay its output
    Call(call::CallArgs),
    /// Run a command on the server, like `ssh host CMD`
    Exec(exec::ExecArgs),
    /// Chat with other users: interactive without a subcommand
    Chat(chat::ChatArgs),
    #[command(flatten)]
    Files(files::FilesCommand),
    /// Show the daemon's status (control socket)
    Status(admin::StatusArgs),
    /// List logged-in sessions (control socket)
    Sessions(admin::SessionsArgs),
    /// Close a session (control socket)
    Kick(admin::KickArgs),
    /// Re-read the daemon's config, users and certificates (control socket)
    Reload(admin::ReloadArgs),
    /// Manage users (control socket)
    #[command(subcommand)]
    User(user::UserCommand),
    /// List plugins (control socket)
    Plugins(plugin::PluginsArgs),
    /// Manage plugins (control socket)
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Print a shell completion script (bash, zsh, fish)
    Completions(completions::CompletionsArgs),
}

/// Runs one command; returns the exit status.
pub async fn run(ctx: &Context, command: Command) -> Result<u8, ClientError> {
    match command {
        Command::Ping(args) => ping::run(ctx, args).await,
        Command::Call(args) => call::run(ctx, args).await,
        Command::Exec(args) => exec::run(ctx, args).await,
        Command::Chat(args) => chat::run(ctx, args).await,
        Command::Files(command) => files::run(ctx, command).await,
        Command::Status(args) => admin::status(ctx, args).await,
        Command::Sessions(args) => admin::sessions(ctx, args).await,
        Command::Kick(args) => admin::kick(ctx, args).await,
        Command::Reload(args) => admin::reload(ctx, args).await,
        Command::User(command) => user::run(ctx, command).await,
        Command::Plugins(args) => plugin::list(ctx, args).await,
        Command::Plugin(command) => plugin::run(ctx, command).await,
        Command::Completions(args) => completions::run(args),
    }
}

/// What every command gets: the merged configuration and the raw global
/// options (for commands that give one a meaning of their own).
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Config,
    pub global: GlobalArgs,
}

impl Context {
    /// Reads the config file (if any) and applies the command-line options.
    pub fn load(global: GlobalArgs) -> Result<Context, ClientError> {
        let mut config = Config::load(global.config.as_deref())?;
        config.apply(Overrides {
            server: global.server.clone(),
            server_name: global.server_name.clone(),
            user: global.user.clone(),
            key_file: global.key_file.clone(),
            socket: global.socket.clone(),
            pin: global.pin,
            ca: global.ca.clone(),
            password: global.password,
        });
        Ok(Context { config, global })
    }

    /// Connects and logs in (asking for a password if needed).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.config.settings()?).await
    }

    /// Sends one request to the control socket.
    pub async fn control(&self, request: &Request) -> Result<Reply, ClientError> {
        control::request(self.config.socket(), request).await
    }
}

/// Copies stdin to stream 0 of an operation, then sends EOF. Stops quietly
/// if the operation ends first (its result is reported by the caller).
pub async fn forward_stdin(sender: crate::client::ChannelSender) -> Result<(), ClientError> {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 128 * 1024;
    let mut stdin = tokio::io::stdin();
    let mut buf = bytes::BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        let n = stdin
            .read_buf(&mut buf)
            .await
            .map_err(|e| ClientError::failure(format!("cannot read standard input: {e}")))?;
        if n == 0 {
            let _ = sender.send_eof(sockd_proto::message::stream::MAIN).await;
            return Ok(());
        }
        if sender
            .send(sockd_proto::message::stream::MAIN, buf.split().freeze())
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}
