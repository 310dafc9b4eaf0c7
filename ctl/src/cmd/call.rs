//! `sockctl call COMMAND [ARG...]`: run one plugin command and relay its
//! streams: stream 0 to stdout, streams 1 and 2 (and any other) to stderr.

use super::Context;
use crate::client::{ClientError, Event};
use clap::Args;
use sockd_proto::ErrorCode;
use sockd_proto::code::exit;
use sockd_proto::message::stream;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use tokio::io::AsyncWriteExt;

/// Exit status when stdout is a closed pipe (128 + SIGPIPE, as a shell reports).
const EXIT_BROKEN_PIPE: u8 = 141;

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Forward standard input to the command (stream 0), then EOF
    #[arg(long)]
    pub stdin: bool,
    /// Command name, as served by a plugin
    pub command: String,
    /// Arguments, passed as bytes
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

pub async fn run(ctx: &Context, args: CallArgs) -> Result<u8, ClientError> {
    let client = ctx.connect().await?;
    let command_args = args.args.into_iter().map(OsStringExt::into_vec);
    let mut channel = if args.stdin {
        client.open(&args.command, command_args).await?
    } else {
        client
            .open_without_input(&args.command, command_args)
            .await?
    };

    let mut input = args
        .stdin
        .then(|| tokio::spawn(super::forward_stdin(channel.sender())));
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut watch_ctrl_c = true;

    let result = loop {
        tokio::select! {
            event = channel.recv() => match event {
                Some(Event::Data { stream: stream::MAIN, bytes }) => {
                    if let Err(e) = write_all(&mut stdout, &bytes).await {
                        let _ = channel.cancel().await;
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            // The reader went away (`| head`): end quietly, as
                            // a process killed by SIGPIPE would.
                            break Ok(EXIT_BROKEN_PIPE);
                        }
                        break Err(ClientError::failure(format!("cannot write to standard output: {e}")));
                    }
                }
                Some(Event::Data { bytes, .. }) => {
                    let _ = write_all(&mut stderr, &bytes).await;
                }
                Some(Event::Eof { .. }) => {}
                Some(Event::Closed { code, value, message }) => break close_status(code, value, message),
                None => break Err(ClientError::remote(ErrorCode::Unavailable, "the operation ended without a result")),
            },
            joined = join(&mut input), if input.is_some() => {
                input = None;
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        let _ = channel.cancel().await;
                        break Err(e);
                    }
                    Err(e) => {
                        let _ = channel.cancel().await;
                        break Err(ClientError::failure(format!("reading standard input failed: {e}")));
                    }
                }
            }
            signal = &mut ctrl_c, if watch_ctrl_c => {
                if signal.is_err() {
                    // No signal handling available: keep going without it.
                    watch_ctrl_c = false;
                    continue;
                }
                let _ = channel.cancel().await;
                break Err(ClientError::new(ErrorCode::Cancelled.exit_status(), "cancelled"));
            }
        }
    };
    if let Some(task) = input {
        task.abort();
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    drop(channel);
    client.close().await;
    result
}

/// Waits for the stdin task; never completes without one.
async fn join<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn write_all(out: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

/// The exit status for the server's CLOSE.
fn close_status(code: ErrorCode, value: i64, message: String) -> Result<u8, ClientError> {
    match code {
        ErrorCode::Ok => Ok(u8::try_from(value).unwrap_or(exit::OK)),
        code => Err(ClientError::remote(code, message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_maps_to_exit_status() {
        assert_eq!(close_status(ErrorCode::Ok, 0, String::new()), Ok(0));
        assert_eq!(close_status(ErrorCode::Ok, 3, String::new()), Ok(3));
        assert_eq!(close_status(ErrorCode::Ok, 255, String::new()), Ok(255));
        assert_eq!(close_status(ErrorCode::Ok, 256, String::new()), Ok(0));
        assert_eq!(close_status(ErrorCode::Ok, -1, String::new()), Ok(0));
        let e = close_status(ErrorCode::NotFound, 0, "no such file: x".into()).unwrap_err();
        assert_eq!((e.status(), e.message()), (12, "no such file: x"));
        let e = close_status(ErrorCode::UnknownCommand, 0, String::new()).unwrap_err();
        assert_eq!(
            (e.status(), e.message()),
            (10, "no plugin serves this command")
        );
    }
}
