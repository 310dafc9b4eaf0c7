//! The command line: global options (which override the config file) and
//! the entry point that runs a command and reports its error.

use crate::client::{ClientError, Pin, split_host_port};
use crate::cmd::{self, Command, Context};
use clap::{Args, Parser};
use std::path::PathBuf;

/// sockctl: the command-line client of sockd.
#[derive(Debug, Parser)]
#[command(name = "sockctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts; each overrides the config file.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Config file (TOML)
    #[arg(long, global = true, env = "SOCKCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of sockd
    #[arg(long, global = true, value_name = "HOST:PORT", value_parser = parse_server)]
    pub server: Option<String>,
    /// TLS name the certificate must carry (with --ca); default: the host of --server
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// User to log in as
    #[arg(long, global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// Key file to log in with (for `user add`: the new key file to create)
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Log in with a password ($SOCKCTL_PASSWORD or typed), ignoring `key_file`
    #[arg(long, global = true, conflicts_with = "key_file")]
    pub password: bool,
    /// The daemon's control socket (admin commands)
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Trust only the server certificate with this SHA-256 fingerprint
    #[arg(long, global = true, value_name = "sha256:HEX", value_parser = parse_pin, conflicts_with = "ca")]
    pub pin: Option<Pin>,
    /// Trust server certificates issued by a CA in this PEM file
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

fn parse_server(s: &str) -> Result<String, String> {
    split_host_port(s).map(|_| s.to_string())
}

fn parse_pin(s: &str) -> Result<Pin, String> {
    s.parse()
}

/// Runs the parsed command line; returns the exit status. Errors are
/// printed as `sockctl: <message>`.
pub async fn run(cli: Cli) -> u8 {
    // Completions need no config: a broken $SOCKCTL_CONFIG must not stop them.
    if let Command::Completions(args) = cli.command {
        return cmd::completions::run(args).unwrap_or_else(|e| report(&e));
    }
    let result = async {
        let ctx = Context::load(cli.global)?;
        cmd::run(&ctx, cli.command).await
    }
    .await;
    match result {
        Ok(status) => status,
        Err(e) => report(&e),
    }
}

/// Prints an error the standard way and returns its exit status.
pub fn report(e: &ClientError) -> u8 {
    eprintln!("sockctl: {e}");
    e.status()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_before_and_after_the_command() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let cli = Cli::try_parse_from([
            "sockctl", "--server", "h:1", "ping", "--user", "u", "--pin", &pin,
        ])
        .unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("h:1"));
        assert_eq!(cli.global.user.as_deref(), Some("u"));
        assert_eq!(cli.global.pin.map(|p| p.to_string()), Some(pin.clone()));
        let e = Cli::try_parse_from(["sockctl", "ping", "--pin", "sha256:12"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["sockctl", "ping", "--server", "nohost"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e =
            Cli::try_parse_from(["sockctl", "ping", "--pin", &pin, "--ca", "x.pem"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            Cli::try_parse_from(["sockctl", "nope"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn call_passes_everything_after_the_command_through() {
        let cli = Cli::try_parse_from(["sockctl", "call", "--stdin", "echo", "-n", "--json", "x"])
            .unwrap();
        let Command::Call(args) = cli.command else {
            panic!("not call")
        };
        assert!(args.stdin);
        assert_eq!(args.command, "echo");
        assert_eq!(args.args, ["-n", "--json", "x"]);
    }
}
