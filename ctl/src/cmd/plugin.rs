//! Plugins over the control socket: `plugins` and `plugin reload NAME`.

use super::Context;
use super::admin::{JsonArg, done, show};
use crate::client::ClientError;
use crate::output::{self, Table};
use clap::{Args, Subcommand};
use sockd_proto::code::exit;
use sockd_proto::control::{PluginInfo, Request};

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(flatten)]
    pub out: JsonArg,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a new build of a plugin's library
    Reload {
        /// Plugin name (see `sockctl plugins`)
        name: String,
        #[command(flatten)]
        out: JsonArg,
    },
}

pub async fn list(ctx: &Context, args: PluginsArgs) -> Result<u8, ClientError> {
    let reply = ctx.control(&Request::Plugins {}).await?;
    show(args.out, &reply, |plugins: Vec<PluginInfo>| {
        if plugins.is_empty() {
            return "no plugins\n".to_string();
        }
        let mut table = Table::new(&[
            "NAME", "VERSION", "STATE", "CALLS", "ERRORS", "PANICS", "BUILDS", "COMMANDS",
        ]);
        let mut problems = String::new();
        for p in plugins {
            if let Some(error) = &p.error {
                problems.push_str(&format!("{}: {}\n", p.name, error.trim_end()));
            }
            table.row(vec![
                p.name,
                p.version,
                p.state,
                p.calls.to_string(),
                p.errors.to_string(),
                p.panics.to_string(),
                p.builds.to_string(),
                p.commands.join(", "),
            ]);
        }
        table.render() + &problems
    })
}

pub async fn run(ctx: &Context, command: PluginCommand) -> Result<u8, ClientError> {
    match command {
        PluginCommand::Reload { name, out } => {
            let reply = ctx
                .control(&Request::PluginReload { name: name.clone() })
                .await?;
            match serde_json::from_value::<PluginInfo>(reply.result.clone()) {
                Ok(p) if !out.json => {
                    output::print(&format!(
                        "reloaded plugin {} {} (build {}, {})\n",
                        p.name, p.version, p.builds, p.state
                    ))?;
                    Ok(exit::OK)
                }
                _ => done(out, &reply, format!("reloaded plugin {name}")),
            }
        }
    }
}
