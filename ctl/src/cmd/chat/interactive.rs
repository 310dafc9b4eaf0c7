//! The interactive chat client: a line editor at the bottom, messages
//! printed above it as they arrive without garbling the line being typed
//! (rustyline's external printer), and `/commands`.
//!
//! The editor runs on a thread of its own (it blocks on the terminal);
//! after each line it waits for the async side to handle the line and
//! hand back the next prompt, which names the current conversation. When
//! standard input or output is not a terminal, lines are read and printed
//! plainly, without colors or escape codes.

use super::format::{Style, clean};
use super::inbox::Delivery;
use super::room_arg;
use super::session::{Incoming, Session};
use crate::client::{Client, ClientError};
use crate::cmd::Context;
use serde_json::{Value, json};
use sockd_proto::code::exit;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

const HELP: &str = "\
commands:
  /msg USER [TEXT]     talk to USER (and send TEXT)
  /join #ROOM          join a room (created if needed) and talk there
  /leave [#ROOM]       leave a room (default: the current one)
  /rooms               list the rooms
  /who [#ROOM]         who is online, or who is in a room
  /history [USER|#ROOM] [N]
                       the last N messages (default: current conversation, 20)
  /help                this help
  /quit                leave (also Ctrl-D)
other lines go to the current conversation";

/// A line the user typed, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Say(String),
    Msg(String, Option<String>),
    Join(String),
    Leave(Option<String>),
    Rooms,
    Who(Option<String>),
    History(Option<String>, u32),
    Help,
    Quit,
    Nothing,
    Invalid(String),
}

pub fn parse(line: &str) -> Line {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Line::Nothing;
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Line::Say(line.trim_end().to_string());
    };
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    let rest = rest.trim();
    let words: Vec<&str> = rest.split_whitespace().collect();
    match (name, words.as_slice()) {
        ("msg" | "m", [user, ..]) => {
            let text = rest[user.len()..].trim();
            Line::Msg(
                user.to_string(),
                (!text.is_empty()).then(|| text.to_string()),
            )
        }
        ("join" | "j", [room]) => Line::Join(room_arg(room)),
        ("leave" | "part", []) => Line::Leave(None),
        ("leave" | "part", [room]) => Line::Leave(Some(room_arg(room))),
        ("rooms", []) => Line::Rooms,
        ("who" | "w", []) => Line::Who(None),
        ("who" | "w", [room]) => Line::Who(Some(room_arg(room))),
        ("history" | "h", args) if args.len() <= 2 => {
            let mut target = None;
            let mut count = 20;
            for a in args {
                match a.parse::<u32>() {
                    Ok(n) if n > 0 => count = n.min(10_000),
                    _ => target = Some(a.to_string()),
                }
            }
            Line::History(target, count)
        }
        ("help" | "?", _) => Line::Help,
        ("quit" | "exit" | "q", []) => Line::Quit,
        _ => Line::Invalid(format!(
            "unknown command or arguments: /{command} (try /help)"
        )),
    }
}

/// A request waiting for its reply.
enum Waiting {
    Send { to: String, text: String },
    Who,
    Join { previous: Option<String> },
    Leave,
    Rooms,
    History(String),
}

/// Where output goes: through the line editor, or straight to stdout.
struct Screen {
    printer: Option<std_mpsc::Sender<String>>,
}

impl Screen {
    fn print(&self, text: String) {
        match &self.printer {
            Some(printer) => {
                let _ = printer.send(text);
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }
}

/// Input events from the editor thread (or plain stdin).
enum Input {
    Line(String),
    End,
}

pub async fn run(ctx: &Context, client: &Client) -> Result<u8, ClientError> {
    let me = client.info().user.clone();
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let style = Style::new(std::io::stdout().is_terminal(), &me, &ctx.config.colors);
    let mut session = Session::open(client, true).await?;
    let (input_tx, mut input) = mpsc::unbounded_channel();
    let (screen, prompt_tx) = if tty {
        start_editor(input_tx)?
    } else {
        (start_plain(input_tx), None)
    };
    for bad in Style::unknown_colors(&ctx.config.colors) {
        screen.print(format!("! unknown color in [colors]: {bad}"));
    }
    screen.print(format!("chat as {me}; /help for commands"));
    let mut chat = Chat {
        session: &mut session,
        screen,
        style,
        me,
        current: None,
        waiting: HashMap::new(),
    };
    let prompt = |current: &Option<String>| format!("{}> ", current.as_deref().unwrap_or(""));
    if let Some(tx) = &prompt_tx {
        let _ = tx.send(Some(prompt(&chat.current)));
    }

    let ack_every = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_every);
    // After /quit or the end of input, answers still owed are waited for
    // (piped input ends long before the server has answered).
    let mut quitting = false;
    let status = loop {
        if quitting && chat.waiting.is_empty() {
            break Ok(exit::OK);
        }
        tokio::select! {
            incoming = chat.session.next() => match incoming {
                Some(Incoming::Closed(Ok(()))) | None => break Ok(exit::OK),
                Some(Incoming::Closed(Err(e))) => break Err(e),
                Some(incoming) => chat.on_incoming(incoming),
            },
            line = input.recv(), if !quitting => {
                match line {
                    Some(Input::Line(line)) => quitting = !chat.on_line(&line).await?,
                    Some(Input::End) | None => quitting = true,
                }
                if let (Some(tx), false) = (&prompt_tx, quitting) {
                    let _ = tx.send(Some(prompt(&chat.current)));
                }
            }
            () = &mut ack_every, if chat.session.needs_ack() => {
                chat.session.ack().await?;
                ack_every.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(50));
            }
        }
    };
    if let Some(tx) = &prompt_tx {
        let _ = tx.send(None);
    }
    drop(chat);
    let finished = session.finish().await;
    status.and_then(|s| finished.map(|()| s))
}

struct Chat<'a> {
    session: &'a mut Session,
    screen: Screen,
    style: Style,
    me: String,
    /// The last /msg target or joined room.
    current: Option<String>,
    waiting: HashMap<u64, Waiting>,
}

impl Chat<'_> {
    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Message(d) => {
                self.screen.print(self.style.message(&d, false));
                self.session.shown(&d);
            }
            Incoming::Reply { reference, result } => {
                if let Some(waiting) = self.waiting.remove(&reference) {
                    self.on_reply(waiting, result);
                }
            }
            Incoming::Notice(e) => self.screen.print(format!("! {e}")),
            Incoming::CaughtUp | Incoming::Closed(_) => {}
        }
    }

    fn on_reply(&mut self, waiting: Waiting, result: Result<Value, ClientError>) {
        let value = match (result, &waiting) {
            (Ok(value), _) => value,
            (Err(e), Waiting::Send { to, .. }) => {
                self.screen.print(format!("! not sent to {to}: {e}"));
                return;
            }
            (Err(e), Waiting::Join { previous }) => {
                self.current = previous.clone();
                self.screen.print(format!("! {e}"));
                return;
            }
            (Err(e), _) => {
                self.screen.print(format!("! {e}"));
                return;
            }
        };
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
                .unwrap_or_default()
        };
        match waiting {
            Waiting::Send { to, text } => {
                let own = Delivery {
                    seq: None,
                    id: value["id"].as_i64().unwrap_or_default(),
                    ts: value["ts"].as_i64().unwrap_or_default(),
                    kind: "msg".into(),
                    from: self.me.clone(),
                    to,
                    text,
                };
                self.screen.print(self.style.message(&own, false));
            }
            Waiting::Who => {
                if let Some(online) = value.get("online") {
                    let list: Vec<String> =
                        names(online).iter().map(|u| self.style.name(u)).collect();
                    self.screen.print(format!("online: {}", list.join(", ")));
                } else {
                    let members: Vec<String> = value["members"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|m| {
                                    let name = self
                                        .style
                                        .name(&clean(m["user"].as_str().unwrap_or_default()));
                                    if m["online"].as_bool() == Some(true) {
                                        name
                                    } else {
                                        format!("{name} (offline)")
                                    }
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    self.screen.print(format!(
                        "{}: {}",
                        value["room"].as_str().unwrap_or_default(),
                        members.join(", ")
                    ));
                }
            }
            Waiting::Join { .. } => {
                let room = value["room"].as_str().unwrap_or_default().to_string();
                self.screen.print(format!(
                    "joined {room}; members: {}",
                    names(&value["members"]).join(", ")
                ));
                self.current = Some(room);
            }
            Waiting::Leave => {
                let room = value["room"].as_str().unwrap_or_default().to_string();
                if self.current.as_deref() == Some(room.as_str()) {
                    self.current = None;
                }
                self.screen.print(format!("left {room}"));
            }
            Waiting::Rooms => {
                let rooms = value["rooms"].as_array().cloned().unwrap_or_default();
                if rooms.is_empty() {
                    self.screen
                        .print("no rooms; /join #NAME creates one".into());
                }
                for r in rooms {
                    let joined = if r["member"].as_bool() == Some(true) {
                        " (joined)"
                    } else {
                        ""
                    };
                    self.screen.print(format!(
                        "{}  {} member(s){joined}",
                        r["room"].as_str().unwrap_or_default(),
                        r["members"]
                    ));
                }
            }
            Waiting::History(target) => {
                let messages = value["messages"].as_array().cloned().unwrap_or_default();
                self.screen.print(format!(
                    "--- history with {target}: {} message(s) ---",
                    messages.len()
                ));
                for m in messages {
                    if let Ok(d) = serde_json::from_value::<Delivery>(m) {
                        self.screen.print(self.style.message(&d, false));
                    }
                }
                self.screen.print("---".into());
            }
        }
    }

    /// Handles a typed line; false to quit.
    async fn on_line(&mut self, line: &str) -> Result<bool, ClientError> {
        match parse(line) {
            Line::Nothing => {}
            Line::Quit => return Ok(false),
            Line::Help => self.screen.print(HELP.into()),
            Line::Invalid(message) => self.screen.print(format!("! {message}")),
            Line::Say(text) => match self.current.clone() {
                Some(to) => self.send(to, text).await?,
                None => self
                    .screen
                    .print("! no conversation yet: /msg USER TEXT or /join #ROOM".into()),
            },
            Line::Msg(to, text) => {
                self.current = Some(to.clone());
                if let Some(text) = text {
                    self.send(to, text).await?;
                }
            }
            Line::Join(room) => {
                let previous = self.current.replace(room.clone());
                let r = self
                    .session
                    .request("join", json!({ "room": room }))
                    .await?;
                self.waiting.insert(r, Waiting::Join { previous });
            }
            Line::Leave(room) => {
                match room.or_else(|| self.current.clone().filter(|c| c.starts_with('#'))) {
                    Some(room) => {
                        let r = self
                            .session
                            .request("leave", json!({ "room": room }))
                            .await?;
                        self.waiting.insert(r, Waiting::Leave);
                    }
                    None => self.screen.print("! not in a room: /leave #ROOM".into()),
                }
            }
            Line::Rooms => {
                let r = self.session.request("rooms", json!({})).await?;
                self.waiting.insert(r, Waiting::Rooms);
            }
            Line::Who(room) => {
                let r = self.session.request("who", json!({ "room": room })).await?;
                self.waiting.insert(r, Waiting::Who);
            }
            Line::History(target, count) => match target.or_else(|| self.current.clone()) {
                Some(with) => {
                    let r = self
                        .session
                        .request("history", json!({ "with": with, "limit": count }))
                        .await?;
                    self.waiting.insert(r, Waiting::History(with));
                }
                None => self
                    .screen
                    .print("! history of what? /history USER|#ROOM [N]".into()),
            },
        }
        Ok(true)
    }

    async fn send(&mut self, to: String, text: String) -> Result<(), ClientError> {
        let r = self
            .session
            .request("send", json!({ "to": to, "text": text }))
            .await?;
        self.waiting.insert(r, Waiting::Send { to, text });
        Ok(())
    }
}

/// Hands the editor thread its next prompt; `None` stops it.
type PromptSender = std_mpsc::Sender<Option<String>>;

/// Starts the line editor on its own thread; returns the screen that
/// prints through it and the sender of prompts (`None` stops it).
fn start_editor(
    input: mpsc::UnboundedSender<Input>,
) -> Result<(Screen, Option<PromptSender>), ClientError> {
    use rustyline::ExternalPrinter as _;
    let fail = |e: rustyline::error::ReadlineError| {
        ClientError::failure(format!("cannot start the line editor: {e}"))
    };
    let mut editor = rustyline::DefaultEditor::new().map_err(fail)?;
    let mut printer = editor.create_external_printer().map_err(fail)?;
    let (print_tx, print_rx) = std_mpsc::channel::<String>();
    let (prompt_tx, prompt_rx) = std_mpsc::channel::<Option<String>>();
    std::thread::Builder::new()
        .name("chat-printer".into())
        .spawn(move || {
            while let Ok(text) = print_rx.recv() {
                // Raw mode does not turn \n into \r\n by itself; outside
                // readline the printer writes as is, so end the line too.
                if printer
                    .print(format!("{}\r\n", text.replace('\n', "\r\n")))
                    .is_err()
                {
                    break;
                }
            }
        })
        .map_err(|e| ClientError::failure(format!("cannot start a thread: {e}")))?;
    std::thread::Builder::new()
        .name("chat-editor".into())
        .spawn(move || {
            use rustyline::error::ReadlineError;
            while let Ok(Some(prompt)) = prompt_rx.recv() {
                match editor.readline(&prompt) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        if input.send(Input::Line(line)).is_err() {
                            break;
                        }
                    }
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) | Err(_) => {
                        let _ = input.send(Input::End);
                        break;
                    }
                }
            }
        })
        .map_err(|e| ClientError::failure(format!("cannot start a thread: {e}")))?;
    Ok((
        Screen {
            printer: Some(print_tx),
        },
        Some(prompt_tx),
    ))
}

/// Reads plain lines from stdin (not a terminal).
fn start_plain(input: mpsc::UnboundedSender<Input>) -> Screen {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if input.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = input.send(Input::End);
    });
    Screen { printer: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("hello there "), Line::Say("hello there".into()));
        assert_eq!(parse("   "), Line::Nothing);
        assert_eq!(
            parse("/msg bob  hi  you"),
            Line::Msg("bob".into(), Some("hi  you".into()))
        );
        assert_eq!(parse("/msg bob"), Line::Msg("bob".into(), None));
        assert_eq!(parse("/join ops"), Line::Join("#ops".into()));
        assert_eq!(parse("/join #ops"), Line::Join("#ops".into()));
        assert_eq!(parse("/leave"), Line::Leave(None));
        assert_eq!(parse("/who #ops"), Line::Who(Some("#ops".into())));
        assert_eq!(
            parse("/history bob 5"),
            Line::History(Some("bob".into()), 5)
        );
        assert_eq!(parse("/history"), Line::History(None, 20));
        assert_eq!(parse("/rooms"), Line::Rooms);
        assert_eq!(parse("/quit"), Line::Quit);
        assert!(matches!(parse("/frobnicate"), Line::Invalid(_)));
        assert!(matches!(parse("/msg"), Line::Invalid(_)));
    }
}
