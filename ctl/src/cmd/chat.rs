//! `sockctl chat`: talk to other users of the same sockd.
//!
//! Without a subcommand it starts the interactive client
//! ([`interactive`]); the subcommands are for scripts: `send`, `read`,
//! `who`, `history`, `join`, `leave`, `rooms`, each with `--json` for one
//! JSON object per line. Everything rides on the daemon's `chat` command
//! (docs/PROTOCOL.md, "chat").
//!
//! - [`inbox`]: showing each delivery once and in order;
//! - [`session`]: the `chat listen` channel (deliveries, requests, acks);
//! - [`format`]: colors and message lines;
//! - [`interactive`]: the line editor and its `/commands`.

mod format;
pub mod inbox;
mod interactive;
pub mod session;

use super::Context;
use crate::client::{Client, ClientError, Event};
use crate::output::{self, Table};
use clap::{Args, Subcommand};
use format::Style;
use inbox::Delivery;
use serde_json::Value;
use session::{Incoming, Session, split_lines};
use sockd_proto::ErrorCode;
use sockd_proto::code::exit;
use sockd_proto::message::stream;
use std::io::IsTerminal;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ChatArgs {
    #[command(subcommand)]
    pub command: Option<ChatCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Send a message to a user or a room (#ROOM)
    Send(SendArgs),
    /// Print the messages waiting for you, acknowledge them, exit
    Read(ReadArgs),
    /// List the users online, or the members of a room
    Who(WhoArgs),
    /// Print the last messages with a user or in a room
    History(HistoryArgs),
    /// Join a room (created if it does not exist)
    Join(RoomArgs),
    /// Leave a room
    Leave(RoomArgs),
    /// List the rooms
    Rooms(JsonOnly),
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// USER or #ROOM
    pub target: String,
    /// The message; `-` reads it from standard input
    #[arg(allow_hyphen_values = true)]
    pub text: String,
    /// With `-`: every line of standard input is a message of its own
    #[arg(long)]
    pub lines: bool,
    /// Print each accepted message's id and timestamp as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Keep printing new messages as they arrive
    #[arg(short, long)]
    pub follow: bool,
    /// Exit after this many messages
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per message
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    /// List the members of this room (#ROOM) instead
    pub room: Option<String>,
    /// One JSON object per user
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// USER or #ROOM
    pub target: String,
    /// How many messages (the latest)
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// Only messages older than this message id (paging)
    #[arg(long, value_name = "ID")]
    pub before: Option<i64>,
    /// One JSON object per message
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RoomArgs {
    /// #ROOM (the # may be left out)
    pub room: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonOnly {
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Context, args: ChatArgs) -> Result<u8, ClientError> {
    let client = ctx.connect().await?;
    let result = match args.command {
        None => interactive::run(ctx, &client).await,
        Some(ChatCommand::Send(a)) => send(&client, a).await,
        Some(ChatCommand::Read(a)) => read(ctx, &client, a).await,
        Some(ChatCommand::Who(a)) => who(&client, a).await,
        Some(ChatCommand::History(a)) => history(ctx, &client, a).await,
        Some(ChatCommand::Join(a)) => room_op(&client, "join", a).await,
        Some(ChatCommand::Leave(a)) => room_op(&client, "leave", a).await,
        Some(ChatCommand::Rooms(a)) => rooms(&client, a).await,
    };
    client.close().await;
    result
}

/// A room argument: `ops` means `#ops`.
fn room_arg(room: &str) -> String {
    if room.starts_with('#') {
        room.to_string()
    } else {
        format!("#{room}")
    }
}

/// Runs `chat ARGS...` to the end; returns the JSON lines of stream 0.
/// With `stdin`, standard input is the call's stream 0.
async fn call(client: &Client, args: &[&str], stdin: bool) -> Result<Called, ClientError> {
    let args = args.iter().map(|a| a.as_bytes().to_vec());
    let mut channel = if stdin {
        client.open("chat", args).await?
    } else {
        client.open_without_input("chat", args).await?
    };
    let input = stdin.then(|| tokio::spawn(super::forward_stdin(channel.sender())));
    let mut partial = Vec::new();
    let mut lines = Vec::new();
    let result = loop {
        match channel.recv().await {
            Some(Event::Data {
                stream: stream::MAIN,
                bytes,
            }) => split_lines(&mut partial, &bytes, &mut lines),
            Some(Event::Data { .. } | Event::Eof { .. }) => {}
            Some(Event::Closed {
                code: ErrorCode::Ok,
                ..
            }) => break Ok(()),
            Some(Event::Closed { code, message, .. }) => {
                break Err(ClientError::remote(code, message));
            }
            None => {
                break Err(ClientError::remote(
                    ErrorCode::Unavailable,
                    "the chat call ended without a result",
                ));
            }
        }
    };
    if let Some(task) = input {
        task.abort();
    }
    let values = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l)
                .map_err(|e| ClientError::protocol(format!("chat: bad reply from sockd: {e}")))
        })
        .collect::<Result<Vec<Value>, _>>();
    match values {
        Ok(values) => Ok(Called { values, result }),
        Err(e) => Err(result.err().unwrap_or(e)),
    }
}

/// What a call returned: its result lines, and how it ended (`send
/// --lines` can fail after some messages were accepted).
struct Called {
    values: Vec<Value>,
    result: Result<(), ClientError>,
}

impl Called {
    fn ok(self) -> Result<Vec<Value>, ClientError> {
        self.result.map(|()| self.values)
    }
}

async fn send(client: &Client, args: SendArgs) -> Result<u8, ClientError> {
    let called = match (args.text.as_str(), args.lines) {
        ("-", true) => call(client, &["send-lines", &args.target], true).await?,
        ("-", false) => call(client, &["send", &args.target], true).await?,
        (_, true) => {
            return Err(ClientError::usage(
                "--lines needs the text `-` (read standard input)",
            ));
        }
        (text, false) => call(client, &["send", &args.target, text], false).await?,
    };
    if args.json {
        let text: String = called.values.iter().map(|v| format!("{v}\n")).collect();
        output::print(&text)?;
    }
    called.result.map(|()| exit::OK)
}

async fn who(client: &Client, args: WhoArgs) -> Result<u8, ClientError> {
    let room = args.room.as_deref().map(room_arg);
    let mut call_args = vec!["who"];
    if let Some(room) = &room {
        call_args.push(room);
    }
    let result = call(client, &call_args, false)
        .await?
        .ok()?
        .into_iter()
        .next()
        .unwrap_or_default();
    let mut text = String::new();
    if let Some(online) = result["online"].as_array() {
        for user in online.iter().filter_map(Value::as_str) {
            if args.json {
                text.push_str(&format!(
                    "{}\n",
                    serde_json::json!({ "user": user, "online": true })
                ));
            } else {
                text.push_str(&format!("{user}\n"));
            }
        }
    } else if let Some(members) = result["members"].as_array() {
        let mut table = Table::new(&["USER", "STATUS"]);
        for m in members {
            if args.json {
                text.push_str(&format!("{m}\n"));
            } else {
                let status = if m["online"].as_bool() == Some(true) {
                    "online"
                } else {
                    "offline"
                };
                table.row(vec![
                    m["user"].as_str().unwrap_or_default().to_string(),
                    status.to_string(),
                ]);
            }
        }
        if !args.json {
            text = table.render();
        }
    }
    output::print(&text)?;
    Ok(exit::OK)
}

async fn history(ctx: &Context, client: &Client, args: HistoryArgs) -> Result<u8, ClientError> {
    let count = args.count.to_string();
    let before = args.before.map(|b| b.to_string());
    let mut call_args = vec!["history", args.target.as_str(), count.as_str()];
    if let Some(before) = &before {
        call_args.push(before);
    }
    let messages = call(client, &call_args, false).await?.ok()?;
    let style = Style::new(false, &client.info().user, &ctx.config.colors);
    let mut text = String::new();
    for m in messages {
        if args.json {
            text.push_str(&format!("{m}\n"));
        } else if let Ok(d) = serde_json::from_value::<Delivery>(m) {
            text.push_str(&style.message(&d, true));
            text.push('\n');
        }
    }
    output::print(&text)?;
    Ok(exit::OK)
}

async fn room_op(client: &Client, op: &str, args: RoomArgs) -> Result<u8, ClientError> {
    let room = room_arg(&args.room);
    let result = call(client, &[op, &room], false)
        .await?
        .ok()?
        .into_iter()
        .next()
        .unwrap_or_default();
    if args.json {
        output::print_json(&result.to_string())?;
    } else if op == "join" {
        let members: Vec<&str> = result["members"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        output::print(&format!(
            "joined {}; members: {}\n",
            result["room"].as_str().unwrap_or(&args.room),
            members.join(", ")
        ))?;
    } else {
        output::print(&format!(
            "left {}\n",
            result["room"].as_str().unwrap_or(&args.room)
        ))?;
    }
    Ok(exit::OK)
}

async fn rooms(client: &Client, args: JsonOnly) -> Result<u8, ClientError> {
    let result = call(client, &["rooms"], false)
        .await?
        .ok()?
        .into_iter()
        .next()
        .unwrap_or_default();
    let rooms = result["rooms"].as_array().cloned().unwrap_or_default();
    if args.json {
        output::print(&rooms.iter().map(|r| format!("{r}\n")).collect::<String>())?;
    } else {
        let mut table = Table::new(&["ROOM", "MEMBERS", "JOINED"]);
        for r in &rooms {
            let joined = if r["member"].as_bool() == Some(true) {
                "yes"
            } else {
                ""
            };
            table.row(vec![
                r["room"].as_str().unwrap_or_default().to_string(),
                r["members"].to_string(),
                joined.to_string(),
            ]);
        }
        output::print(&table.render())?;
    }
    Ok(exit::OK)
}

/// `chat read`: prints what is waiting (and with `--follow` what comes),
/// acknowledging as it goes; exits once caught up (or after `--count`).
async fn read(ctx: &Context, client: &Client, args: ReadArgs) -> Result<u8, ClientError> {
    let mut session = Session::open(client, args.follow).await?;
    let color = !args.json && std::io::stdout().is_terminal();
    let style = Style::new(color, &client.info().user, &ctx.config.colors);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    if limit == 0 {
        return session.finish().await.map(|()| exit::OK);
    }
    let ack_every = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_every);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let incoming = tokio::select! {
            incoming = session.next() => incoming,
            () = &mut ack_every, if session.needs_ack() => {
                session.ack().await?;
                ack_every.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(50));
                continue;
            }
            _ = &mut ctrl_c => break,
        };
        match incoming {
            Some(Incoming::Message(d)) => {
                let line = if args.json {
                    serde_json::to_string(&d).map_err(|e| ClientError::failure(e.to_string()))?
                } else {
                    style.message(&d, true)
                };
                output::print(&format!("{line}\n"))?;
                session.shown(&d);
                printed += 1;
                if printed >= limit {
                    break;
                }
            }
            // Without --follow, stop once everything that was waiting is shown.
            Some(Incoming::CaughtUp) if !args.follow => break,
            Some(Incoming::CaughtUp) => {}
            Some(Incoming::Notice(e)) => eprintln!("sockctl: {e}"),
            Some(Incoming::Reply { .. }) => {}
            Some(Incoming::Closed(result)) => {
                result?;
                return Err(ClientError::remote(
                    ErrorCode::Unavailable,
                    "the chat channel ended",
                ));
            }
            None => {
                return Err(ClientError::remote(
                    ErrorCode::Unavailable,
                    "the chat channel ended",
                ));
            }
        }
    }
    session.finish().await?;
    Ok(exit::OK)
}
