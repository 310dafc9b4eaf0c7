//! `sockctl exec`: run a command on the server, like `ssh host CMD`.
//!
//! `sockctl exec -- CMD [ARG...]` runs CMD directly (PATH lookup on the
//! server, no shell); `sockctl exec -c STRING` runs `/bin/sh -c STRING`.
//! stdout and stderr arrive as they are produced, stdin is forwarded (EOF
//! included), and sockctl exits with the command's status (128+N if it died
//! of signal N). `-t` runs it on a pseudo-terminal with the local terminal
//! in raw mode, as `ssh -t` does. The wire format is in docs/EXEC.md.
//!
//! Exit statuses of sockctl itself: 126 the policy denies the command, 127
//! it does not exist, 124 it timed out, 255 sockctl's own failures
//! (connection, TLS, login, protocol), 130 cancelled with Ctrl-C, and the
//! usual table (docs/PROTOCOL.md) for anything else the server reports.

use super::Context;
use crate::client::{Client, ClientError, Event};
use crate::term;
use bytes::Bytes;
use clap::Args;
use futures_util::FutureExt;
use nix::libc;
use sockd_proto::ErrorCode;
use sockd_proto::code::exit;
use sockd_proto::message::stream;
use std::ffi::OsString;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// Exit status when stdout is a closed pipe (128 + SIGPIPE).
const EXIT_BROKEN_PIPE: u8 = 141;
/// Chunks queued for the output thread (each up to a frame, 256 KiB).
const OUTPUT_QUEUE: usize = 8;
/// Writes are gathered up to this size.
const WRITE_BATCH: usize = 256 * 1024;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sockctl exec -- ls -l /tmp\n  sockctl exec -c 'ls | wc -l'\n  \
                        echo hi | sockctl exec -- cat\n  sockctl exec -t -- vi notes.txt\n\n\
                        Exit status: the command's (128+N if killed by signal N); 126 denied by policy, \
                        127 command not found, 124 timed out, 255 sockctl's own failures."
)]
pub struct ExecArgs {
    /// Run the command on a pseudo-terminal (like ssh -t); with a local terminal, it is put in raw mode meanwhile
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Do not forward standard input: the command reads EOF at once (like ssh -n)
    #[arg(short = 'n', long = "no-stdin")]
    pub no_stdin: bool,
    /// Run STRING with /bin/sh -c on the server
    #[arg(short = 'c', value_name = "STRING", conflicts_with = "command")]
    pub shell: Option<OsString>,
    /// The program and its arguments, run without a shell (PATH lookup on the server)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required_unless_present = "shell",
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// The pty part of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PtyRequest {
    term: String,
    cols: u16,
    rows: u16,
}

/// The OPEN arguments: mode, options (JSON), then the command.
fn open_args(args: &ExecArgs, pty: Option<&PtyRequest>) -> Vec<Bytes> {
    let options = match pty {
        Some(p) => serde_json::json!({ "pty": { "term": p.term, "cols": p.cols, "rows": p.rows } })
            .to_string(),
        None => "{}".to_string(),
    };
    let mut out = Vec::new();
    match &args.shell {
        Some(script) => {
            out.push(Bytes::from_static(b"shell"));
            out.push(Bytes::from(options));
            out.push(Bytes::copy_from_slice(script.as_bytes()));
        }
        None => {
            out.push(Bytes::from_static(b"argv"));
            out.push(Bytes::from(options));
            out.extend(
                args.command
                    .iter()
                    .map(|a| Bytes::copy_from_slice(a.as_bytes())),
            );
        }
    }
    out
}

fn resize_message(cols: u16, rows: u16) -> Bytes {
    Bytes::from(format!(
        "{{\"resize\":{{\"cols\":{cols},\"rows\":{rows}}}}}\n"
    ))
}

/// sockctl's own failures end `exec` with 255, as ssh does.
fn own(e: ClientError) -> ClientError {
    ClientError::new(exit::EXEC_CLIENT_FAILURE, e.message())
}

/// The exit status for the server's CLOSE.
fn close_status(code: ErrorCode, value: i64, message: String) -> Result<u8, ClientError> {
    match code {
        ErrorCode::Ok => Ok(u8::try_from(value).unwrap_or(exit::EXEC_CLIENT_FAILURE)),
        ErrorCode::PermissionDenied => Err(ClientError::new(exit::EXEC_DENIED, message)),
        ErrorCode::NotFound => Err(ClientError::new(exit::EXEC_NOT_FOUND, message)),
        ErrorCode::Timeout => Err(ClientError::new(exit::EXEC_TIMEOUT, message)),
        code => Err(ClientError::remote(code, message)),
    }
}

/// True if the connection is gone (so a `Closed` event came from it, not
/// from the server's CLOSE). Never waits: a live connection answers
/// "pending" at the first poll.
fn connection_lost(client: &Client) -> bool {
    matches!(client.ping().now_or_never(), Some(Err(_)))
}

async fn next_signal(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

async fn join<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

pub async fn run(ctx: &Context, args: ExecArgs) -> Result<u8, ClientError> {
    let stdin_tty = term::stdin_is_terminal();
    let pty = args.tty.then(|| {
        let (cols, rows) = term::window_size().unwrap_or((80, 24));
        let term = std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "dumb".into());
        PtyRequest { term, cols, rows }
    });
    let client = ctx.connect().await.map_err(own)?;
    let open = open_args(&args, pty.as_ref());
    let mut channel = if args.no_stdin {
        client.open_without_input("exec", open).await
    } else {
        client.open("exec", open).await
    }
    .map_err(own)?;

    // Raw mode only when our keystrokes go to the remote terminal.
    // SAFETY: descriptor 0 stays open for the life of the process.
    let stdin_fd = unsafe { BorrowedFd::borrow_raw(0) };
    let raw = if pty.is_some() && stdin_tty && !args.no_stdin {
        match term::RawMode::enable(stdin_fd) {
            Ok(raw) => Some(raw),
            Err(e) => {
                return Err(own(ClientError::failure(format!(
                    "cannot put the terminal in raw mode: {e}"
                ))));
            }
        }
    } else {
        None
    };

    let mut input = (!args.no_stdin).then(|| tokio::spawn(super::forward_stdin(channel.sender())));

    let (out_tx, out_rx) = mpsc::channel::<(u8, Bytes)>(OUTPUT_QUEUE);
    let writer = std::thread::Builder::new()
        .name("sockctl-output".into())
        .spawn(move || write_output(out_rx))
        .map_err(|e| {
            own(ClientError::failure(format!(
                "cannot start the output thread: {e}"
            )))
        })?;
    let mut pending: Option<(u8, Bytes)> = None;

    let listen = |kind: SignalKind| signal(kind).ok();
    // Without raw mode ^C arrives as SIGINT: the first cancels the command
    // (the server ends it and answers), a second one gives up waiting.
    let mut sigint = listen(SignalKind::interrupt());
    let mut sigterm = listen(SignalKind::terminate());
    let mut sighup = listen(SignalKind::hangup());
    let mut sigwinch = if pty.is_some() {
        listen(SignalKind::window_change())
    } else {
        None
    };
    let mut size = pty.as_ref().map(|p| (p.cols, p.rows));
    let mut interrupted = false;

    let result = loop {
        tokio::select! {
            permit = out_tx.reserve(), if pending.is_some() => match permit {
                Ok(permit) => permit.send(pending.take().expect("pending output")),
                Err(_) => {
                    // The output thread stopped: stdout is closed or broken.
                    let _ = channel.cancel().await;
                    break Ok(EXIT_BROKEN_PIPE);
                }
            },
            event = channel.recv(), if pending.is_none() => match event {
                Some(Event::Data { stream: s @ (stream::MAIN | stream::DIAG), bytes }) => pending = Some((s, bytes)),
                // Stream 2 carries {"exit":...}; the CLOSE value says the same.
                Some(Event::Data { .. } | Event::Eof { .. }) => {}
                Some(Event::Closed { code, value, message }) => {
                    if code != ErrorCode::Ok && connection_lost(&client) {
                        break Err(ClientError::new(exit::EXEC_CLIENT_FAILURE, message));
                    }
                    break close_status(code, value, message);
                }
                None => break Err(ClientError::new(exit::EXEC_CLIENT_FAILURE, "the operation ended without a result")),
            },
            joined = join(&mut input), if input.is_some() => {
                input = None;
                let failure = match joined {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(e) => Some(ClientError::failure(format!("reading standard input failed: {e}"))),
                };
                if let Some(e) = failure {
                    let _ = channel.cancel().await;
                    break Err(own(e));
                }
            }
            () = next_signal(&mut sigint) => {
                if interrupted {
                    break Err(ClientError::new(ErrorCode::Cancelled.exit_status(), "cancelled"));
                }
                interrupted = true;
                let _ = channel.cancel().await;
            }
            () = next_signal(&mut sigterm) => {
                let _ = channel.cancel().await;
                break Ok(128 + libc::SIGTERM as u8);
            }
            () = next_signal(&mut sighup) => {
                let _ = channel.cancel().await;
                break Ok(128 + libc::SIGHUP as u8);
            }
            () = next_signal(&mut sigwinch) => {
                if let Some(now) = term::window_size()
                    && size != Some(now)
                {
                    size = Some(now);
                    let _ = channel.send(stream::CONTROL, resize_message(now.0, now.1)).await;
                }
            }
        }
    };
    if let Some(task) = input {
        task.abort();
    }
    // Let the output thread write what it has, then restore the terminal.
    drop(out_tx);
    let written = writer.join().unwrap_or(Ok(()));
    drop(raw);
    drop(channel);
    client.close().await;
    match (result, written) {
        (Ok(_), Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(EXIT_BROKEN_PIPE),
        (Ok(_), Err(e)) => Err(own(ClientError::failure(format!(
            "cannot write to standard output: {e}"
        )))),
        (result, _) => result,
    }
}

/// The output thread: writes stream 0 to stdout and stream 1 to stderr,
/// gathering small chunks into larger writes. Returns stdout's error (a
/// failing stderr is ignored).
fn write_output(mut rx: mpsc::Receiver<(u8, Bytes)>) -> io::Result<()> {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    let mut batch_fd = 1;
    let flush = |fd: i32, data: &mut Vec<u8>| -> io::Result<()> {
        let r = write_fd(fd, data);
        data.clear();
        if fd == 1 { r } else { Ok(()) }
    };
    loop {
        let next = if batch.is_empty() {
            rx.blocking_recv()
        } else {
            match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    flush(batch_fd, &mut batch)?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let Some((s, bytes)) = next else {
            return flush(batch_fd, &mut batch);
        };
        let fd = if s == stream::MAIN { 1 } else { 2 };
        if !batch.is_empty() && (fd != batch_fd || batch.len() + bytes.len() > WRITE_BATCH) {
            flush(batch_fd, &mut batch)?;
        }
        if batch.is_empty() && bytes.len() >= WRITE_BATCH / 4 {
            // Large enough already: write it without copying.
            let r = write_fd(fd, &bytes);
            if fd == 1 {
                r?;
            }
            continue;
        }
        batch_fd = fd;
        batch.extend_from_slice(&bytes);
    }
}

/// Writes all of `data` to `fd`, waiting if it is non-blocking and full.
fn write_fd(fd: i32, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is valid for reads of data.len() bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 1000) };
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::cmd::Command;
    use clap::Parser;

    fn parse(argv: &[&str]) -> Result<ExecArgs, clap::Error> {
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Exec(args) => Ok(args),
            _ => panic!("not exec"),
        }
    }

    #[test]
    fn command_line_forms() {
        let a = parse(&["sockctl", "exec", "--", "ls", "-l", "--user", "x"]).unwrap();
        assert_eq!(a.command, ["ls", "-l", "--user", "x"]);
        assert!(!a.tty && !a.no_stdin && a.shell.is_none());
        let a = parse(&["sockctl", "exec", "-t", "-n", "vi", "notes.txt"]).unwrap();
        assert!(a.tty && a.no_stdin);
        assert_eq!(a.command, ["vi", "notes.txt"]);
        let a = parse(&["sockctl", "exec", "-c", "echo hi | wc"]).unwrap();
        assert_eq!(
            a.shell.as_deref(),
            Some(std::ffi::OsStr::new("echo hi | wc"))
        );
        assert!(
            parse(&["sockctl", "exec"]).is_err(),
            "a command is required"
        );
        assert!(
            parse(&["sockctl", "exec", "-c", "x", "--", "ls"]).is_err(),
            "-c or a command, not both"
        );
    }

    #[test]
    fn open_arguments_follow_the_protocol() {
        let a = parse(&["sockctl", "exec", "--", "ls", "-l"]).unwrap();
        let got = open_args(&a, None);
        assert_eq!(got, [&b"argv"[..], b"{}", b"ls", b"-l"]);
        let a = parse(&["sockctl", "exec", "-c", "exit 3"]).unwrap();
        let pty = PtyRequest {
            term: "xterm".into(),
            cols: 120,
            rows: 40,
        };
        let got = open_args(&a, Some(&pty));
        assert_eq!(got[0], &b"shell"[..]);
        let options: serde_json::Value = serde_json::from_slice(&got[1]).unwrap();
        assert_eq!(
            options,
            serde_json::json!({"pty": {"term": "xterm", "cols": 120, "rows": 40}})
        );
        assert_eq!(got[2], &b"exit 3"[..]);
        assert_eq!(
            &resize_message(80, 24)[..],
            b"{\"resize\":{\"cols\":80,\"rows\":24}}\n"
        );
    }

    #[test]
    fn close_codes_map_to_ssh_like_statuses() {
        assert_eq!(close_status(ErrorCode::Ok, 3, String::new()), Ok(3));
        assert_eq!(close_status(ErrorCode::Ok, 137, String::new()), Ok(137));
        assert_eq!(close_status(ErrorCode::Ok, 300, String::new()), Ok(255));
        let status = |code| close_status(code, 0, "m".into()).unwrap_err().status();
        assert_eq!(status(ErrorCode::PermissionDenied), 126);
        assert_eq!(status(ErrorCode::NotFound), 127);
        assert_eq!(status(ErrorCode::Timeout), 124);
        assert_eq!(status(ErrorCode::Busy), 21);
        assert_eq!(status(ErrorCode::Cancelled), 130);
        assert_eq!(own(ClientError::connect("x")).status(), 255);
    }
}
