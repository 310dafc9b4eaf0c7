//! `sockctl files`: an interactive file shell, like sftp's.
//!
//! Line editing, history and tab completion come from rustyline, which runs
//! on its own thread (it blocks). Completing a remote name asks this task
//! for a listing of the directory through a channel, so the one connection
//! serves both; local names (`put`, `lcd`) are completed from the disk.
//!
//! The remote working directory lives on the server, per session: `cd`
//! changes it there and relative paths of every command resolve against it.
//! The shell ends with `exit`, Ctrl-D or the end of its input, with the
//! status of the last command that failed (0 if none did), so it also runs
//! scripts: `sockctl files < commands.txt`.

use super::remote::{self, Entry, call_json};
use super::{Op, ShellArgs, run_op};
use crate::client::{Client, ClientError};
use clap::{Parser, Subcommand};
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context as LineContext, Editor, Helper};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::mpsc as sync_mpsc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long tab completion waits for a remote listing.
const COMPLETION_WAIT: Duration = Duration::from_secs(5);

/// One line typed at the shell.
#[derive(Debug, Parser)]
#[command(
    name = "files",
    no_binary_name = true,
    disable_version_flag = true,
    help_template = "Commands (`help COMMAND` for details):\n{subcommands}"
)]
struct Line {
    #[command(subcommand)]
    command: ShellCommand,
}

#[derive(Debug, Subcommand)]
enum ShellCommand {
    #[command(flatten)]
    Op(Op),
    /// Change the remote working directory (default: your home)
    Cd { path: Option<String> },
    /// Show the remote working directory
    Pwd,
    /// Change the local working directory
    Lcd { path: Option<PathBuf> },
    /// Show the local working directory
    Lpwd,
    /// Leave the shell
    #[command(visible_aliases = ["quit", "bye"])]
    Exit,
}

#[derive(Debug, Deserialize)]
struct Cwd {
    cwd: String,
}

/// What the line-editor thread sends back.
enum Input {
    Line(String),
    /// Ctrl-C at the prompt: a fresh prompt.
    Interrupted,
    /// Ctrl-D or end of input.
    End,
    Failed(String),
}

/// A request from tab completion: the entries of a remote directory.
struct Listing {
    dir: String,
    reply: sync_mpsc::Sender<Vec<Entry>>,
}

pub async fn run(client: &Client, args: ShellArgs) -> Result<u8, ClientError> {
    // Ctrl-C must never kill the shell: during a transfer it cancels it.
    let _ignore_interrupts =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| ClientError::failure(format!("cannot handle Ctrl-C: {e}")))?;
    let (prompt_tx, lines_rx, mut listings) = start_editor()?;
    let mut lines_rx = lines_rx;
    let mut cwd = current_dir(client).await?;
    let mut status = 0u8;
    loop {
        if prompt_tx.send(format!("files:{cwd}> ")).is_err() {
            break;
        }
        let input = loop {
            tokio::select! {
                input = lines_rx.recv() => break input.unwrap_or(Input::End),
                Some(request) = listings.recv() => {
                    let entries = remote::list(client, &request.dir).await.unwrap_or_default();
                    let _ = request.reply.send(entries);
                }
            }
        };
        let line = match input {
            Input::Line(line) => line,
            Input::Interrupted => continue,
            Input::End => break,
            Input::Failed(e) => {
                return Err(ClientError::failure(format!(
                    "cannot read the command line: {e}"
                )));
            }
        };
        let Some(words) = shlex::split(&line) else {
            eprintln!("sockctl: unbalanced quotes");
            status = sockd_proto::code::exit::USAGE;
            continue;
        };
        if words.is_empty() {
            continue;
        }
        let command = match Line::try_parse_from(&words) {
            Ok(line) => line.command,
            Err(e) => {
                let _ = e.print();
                if e.use_stderr() {
                    status = sockd_proto::code::exit::USAGE;
                }
                continue;
            }
        };
        let result = match command {
            ShellCommand::Exit => break,
            ShellCommand::Op(op) => run_op(client, quiet(op, args.quiet)).await,
            ShellCommand::Cd { path } => {
                let path = path.unwrap_or_else(|| "/".to_string());
                match call_json::<Cwd>(client, "cd", vec![path.into_bytes()]).await {
                    Ok(mut answer) => {
                        if let Some(new) = answer.pop() {
                            cwd = new.cwd;
                        }
                        Ok(0)
                    }
                    Err(e) => Err(e),
                }
            }
            ShellCommand::Pwd => crate::output::print(&format!("{cwd}\n")).map(|()| 0),
            ShellCommand::Lcd { path } => {
                let path = path
                    .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
                    .unwrap_or_else(|| PathBuf::from("/"));
                std::env::set_current_dir(&path)
                    .map(|()| 0)
                    .map_err(|e| remote::local_error(&path, &e))
            }
            ShellCommand::Lpwd => match std::env::current_dir() {
                Ok(dir) => crate::output::print(&format!("{}\n", dir.display())).map(|()| 0),
                Err(e) => Err(ClientError::failure(format!(
                    "cannot read the local directory: {e}"
                ))),
            },
        };
        match result {
            Ok(0) => {}
            Ok(code) => status = code,
            Err(e) => status = crate::cli::report(&e),
        }
    }
    Ok(status)
}

/// Applies the shell's `--quiet` to transfers.
fn quiet(op: Op, quiet: bool) -> Op {
    match op {
        Op::Put(mut args) => {
            args.quiet |= quiet;
            Op::Put(args)
        }
        Op::Get(mut args) => {
            args.quiet |= quiet;
            Op::Get(args)
        }
        other => other,
    }
}

async fn current_dir(client: &Client) -> Result<String, ClientError> {
    let mut answer = call_json::<Cwd>(client, "pwd", Vec::new()).await?;
    Ok(answer.pop().map_or_else(|| "/".to_string(), |c| c.cwd))
}

type EditorChannels = (
    sync_mpsc::Sender<String>,
    mpsc::UnboundedReceiver<Input>,
    mpsc::UnboundedReceiver<Listing>,
);

/// Starts the line editor on its own thread: it reads one line per prompt
/// it is sent, and stops when the prompt sender is dropped.
fn start_editor() -> Result<EditorChannels, ClientError> {
    let (prompt_tx, prompt_rx) = sync_mpsc::channel::<String>();
    let (lines_tx, lines_rx) = mpsc::unbounded_channel();
    let (listings_tx, listings_rx) = mpsc::unbounded_channel();
    let mut editor = Editor::<FilesHelper, DefaultHistory>::new()
        .map_err(|e| ClientError::failure(format!("cannot start the line editor: {e}")))?;
    editor.set_helper(Some(FilesHelper {
        listings: listings_tx,
        local: FilenameCompleter::new(),
    }));
    std::thread::Builder::new()
        .name("files-shell".into())
        .spawn(move || {
            while let Ok(prompt) = prompt_rx.recv() {
                let input = match editor.readline(&prompt) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        Input::Line(line)
                    }
                    Err(ReadlineError::Interrupted) => Input::Interrupted,
                    Err(ReadlineError::Eof) => Input::End,
                    Err(e) => Input::Failed(e.to_string()),
                };
                if lines_tx.send(input).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| ClientError::failure(format!("cannot start the line editor: {e}")))?;
    Ok((prompt_tx, lines_rx, listings_rx))
}

/// Tab completion: command names, then remote names (local ones for `put`
/// and `lcd`).
struct FilesHelper {
    listings: mpsc::UnboundedSender<Listing>,
    local: FilenameCompleter,
}

const COMMANDS: &[&str] = &[
    "bye", "cd", "exit", "get", "help", "lcd", "lpwd", "ls", "mkdir", "mv", "put", "pwd", "quit",
    "quota", "rm",
];

impl FilesHelper {
    fn remote_entries(&self, dir: &str) -> Vec<Entry> {
        let (reply, answer) = sync_mpsc::channel();
        let dir = if dir.is_empty() { "." } else { dir };
        let request = Listing {
            dir: dir.to_string(),
            reply,
        };
        if self.listings.send(request).is_err() {
            return Vec::new();
        }
        answer.recv_timeout(COMPLETION_WAIT).unwrap_or_default()
    }
}

impl Completer for FilesHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &LineContext<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let word = &before[start..];
        if start == 0 {
            let matches = COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| Pair {
                    display: c.to_string(),
                    replacement: format!("{c} "),
                })
                .collect();
            return Ok((0, matches));
        }
        let command = before.split_whitespace().next().unwrap_or_default();
        if matches!(command, "put" | "lcd") {
            return self.local.complete(line, pos, ctx);
        }
        let (dir, prefix) = match word.rfind('/') {
            Some(i) => (&word[..=i], &word[i + 1..]),
            None => ("", word),
        };
        let mut matches: Vec<Pair> = self
            .remote_entries(dir)
            .into_iter()
            .filter(|e| e.name.starts_with(prefix) && !e.name.chars().any(char::is_control))
            .map(|e| {
                let name = e.name.replace(' ', "\\ ");
                let (display, tail) = if e.is_dir() {
                    (format!("{}/", e.name), "/")
                } else {
                    (e.name.clone(), " ")
                };
                Pair {
                    display,
                    replacement: format!("{dir}{name}{tail}"),
                }
            })
            .collect();
        matches.sort_by(|a, b| a.display.cmp(&b.display));
        Ok((start, matches))
    }
}

impl Hinter for FilesHelper {
    type Hint = String;
}

impl Highlighter for FilesHelper {}

impl Validator for FilesHelper {}

impl Helper for FilesHelper {}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn shell_lines_parse() {
        Line::command().debug_assert();
        let line = Line::try_parse_from(["put", "-f", "a", "b"]).unwrap();
        assert!(
            matches!(line.command, ShellCommand::Op(Op::Put(ref a)) if a.force && a.paths.len() == 2)
        );
        let line = Line::try_parse_from(["cd"]).unwrap();
        assert!(matches!(line.command, ShellCommand::Cd { path: None }));
        assert!(matches!(
            Line::try_parse_from(["quit"]).unwrap().command,
            ShellCommand::Exit
        ));
        assert!(Line::try_parse_from(["nope"]).is_err());
    }
}
