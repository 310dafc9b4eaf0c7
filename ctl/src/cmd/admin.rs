//! Daemon administration over the control socket: `status`, `sessions`,
//! `kick`, `reload`.

use super::Context;
use crate::client::ClientError;
use crate::client::control::Reply;
use crate::output::{self, Table};
use clap::Args;
use sockd_proto::code::exit;
use sockd_proto::control::{Request, SessionInfo, StatusInfo};

/// `--json`, shared by the commands that print data.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct JsonArg {
    /// Print the daemon's JSON result instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub out: JsonArg,
}

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub out: JsonArg,
}

#[derive(Debug, Args)]
pub struct KickArgs {
    /// Session id (see `sockctl sessions`)
    pub id: u64,
    #[command(flatten)]
    pub out: JsonArg,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub out: JsonArg,
}

/// Prints `reply` as JSON with `--json`, else as `human(result)`; falls
/// back to pretty JSON if the result has an unexpected shape.
pub fn show<T: serde::de::DeserializeOwned>(
    out: JsonArg,
    reply: &Reply,
    human: impl FnOnce(T) -> String,
) -> Result<u8, ClientError> {
    if out.json {
        output::print_json(&reply.raw)?;
    } else {
        match serde_json::from_value::<T>(reply.result.clone()) {
            Ok(value) => output::print(&human(value))?,
            Err(_) => output::print(&pretty(&reply.result))?,
        }
    }
    Ok(exit::OK)
}

/// Prints `summary`, or the JSON result with `--json`.
pub fn done(out: JsonArg, reply: &Reply, summary: String) -> Result<u8, ClientError> {
    if out.json {
        output::print_json(&reply.raw)?;
    } else {
        output::print(&format!("{summary}\n"))?;
    }
    Ok(exit::OK)
}

fn pretty(value: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    s.push('\n');
    s
}

pub async fn status(ctx: &Context, args: StatusArgs) -> Result<u8, ClientError> {
    let reply = ctx.control(&Request::Status {}).await?;
    show(args.out, &reply, |s: StatusInfo| {
        let failed = s.plugins.iter().filter(|p| p.state != "loaded").count();
        let plugins = if s.plugins.is_empty() {
            "none".to_string()
        } else {
            let names: Vec<String> = s
                .plugins
                .iter()
                .map(|p| {
                    let version = if p.version.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", p.version)
                    };
                    format!("{}{version} ({})", p.name, p.state)
                })
                .collect();
            let problems = if failed > 0 {
                format!(" ({failed} not loaded; see `sockctl plugins`)")
            } else {
                String::new()
            };
            format!("{}{problems}: {}", s.plugins.len(), names.join(", "))
        };
        format!(
            "sockd {} (pid {}), up {}\n{}",
            s.version,
            s.pid,
            output::duration(s.uptime_secs),
            output::fields(&[
                ("listening on", s.listen.join(", ")),
                ("control socket", s.control_socket),
                ("connections", s.connections.to_string()),
                ("sessions", s.sessions.to_string()),
                ("plugins", plugins),
            ])
        )
    })
}

pub async fn sessions(ctx: &Context, args: SessionsArgs) -> Result<u8, ClientError> {
    let reply = ctx.control(&Request::Sessions {}).await?;
    show(args.out, &reply, |sessions: Vec<SessionInfo>| {
        if sessions.is_empty() {
            return "no sessions\n".to_string();
        }
        let mut table = Table::new(&["ID", "USER", "ADDRESS", "SINCE", "OPS", "COMMANDS"]);
        for s in sessions {
            table.row(vec![
                s.id.to_string(),
                s.user,
                s.address,
                output::utc_time(s.since),
                s.active_operations.to_string(),
                s.commands.join(", "),
            ]);
        }
        table.render()
    })
}

pub async fn kick(ctx: &Context, args: KickArgs) -> Result<u8, ClientError> {
    let reply = ctx.control(&Request::Kick { id: args.id }).await?;
    done(args.out, &reply, format!("closed session {}", args.id))
}

pub async fn reload(ctx: &Context, args: ReloadArgs) -> Result<u8, ClientError> {
    let reply = ctx.control(&Request::Reload {}).await?;
    // The daemon answers {"reloaded": "<summary>"}.
    let summary = match reply.result.get("reloaded") {
        Some(serde_json::Value::String(summary)) => format!("reloaded: {summary}"),
        _ => "reloaded configuration, users, certificates and plugin settings".to_string(),
    };
    done(args.out, &reply, summary)
}
