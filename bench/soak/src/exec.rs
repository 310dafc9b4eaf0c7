//! Commands through the exec plugin (docs/EXEC.md), each with a result
//! known in advance: `echo TOKEN` prints the token, `cat` gives back its
//! random stdin byte for byte, `false` exits 1. The soak users' policy
//! must allow these three programs.

use crate::fail;
use bytes::Bytes;
use sockctl::client::{Client, Event};
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;

/// Largest stdin for `cat`.
pub const MAX_CAT: u64 = 256 * 1024;

/// What a command produced.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    control: Vec<u8>,
    /// The CLOSE value: the exit status.
    status: i64,
}

/// Runs `argv` with `stdin`, sending and receiving at once.
async fn run(client: &Client, argv: &[&[u8]], stdin: Bytes) -> Result<Output, String> {
    let shown = String::from_utf8_lossy(argv[0]).into_owned();
    let mut args: Vec<Vec<u8>> = vec![b"argv".to_vec(), b"{}".to_vec()];
    args.extend(argv.iter().map(|a| a.to_vec()));
    let mut channel = client.open("exec", args).await.map_err(fail)?;
    let sender = channel.sender();
    let input = async move {
        if !stdin.is_empty() {
            sender.send(stream::MAIN, stdin).await?;
        }
        sender.send_eof(stream::MAIN).await
    };
    let output = async {
        let mut out = Output::default();
        loop {
            match channel.recv().await {
                Some(Event::Data { stream: s, bytes }) => match s {
                    stream::MAIN => out.stdout.extend_from_slice(&bytes),
                    stream::DIAG => out.stderr.extend_from_slice(&bytes),
                    _ => out.control.extend_from_slice(&bytes),
                },
                Some(Event::Eof { .. }) => {}
                Some(Event::Closed {
                    code: ErrorCode::Ok,
                    value,
                    ..
                }) => {
                    out.status = value;
                    return Ok(out);
                }
                Some(Event::Closed { code, message, .. }) => {
                    let hint = match code {
                        ErrorCode::PermissionDenied => {
                            "; allow the soak users echo, cat and false: \
                             [plugins.exec.default] allow = [\"echo\", \"cat\", \"false\"]"
                        }
                        ErrorCode::Busy => "; raise max_concurrent in [plugins.exec.default]",
                        _ => "",
                    };
                    return Err(format!("exec {shown}: {message} ({}){hint}", code.slug()));
                }
                None => return Err(format!("exec {shown}: the channel ended without a CLOSE")),
            }
        }
    };
    let (sent, out) = tokio::join!(input, output);
    let out = out?;
    // A command that exits before reading all of its input is judged by
    // its output; a failed send matters only if that is wrong too.
    if let Err(e) = sent
        && out.status != 0
    {
        return Err(format!(
            "exec {shown}: sending stdin failed: {}",
            e.message()
        ));
    }
    Ok(out)
}

/// `echo TOKEN`; returns the bytes checked.
pub async fn echo(client: &Client, token: &str) -> Result<u64, String> {
    let out = run(client, &[b"echo", token.as_bytes()], Bytes::new()).await?;
    let want = format!("{token}\n");
    if out.status != 0 || out.stdout != want.as_bytes() || !out.stderr.is_empty() {
        return Err(format!(
            "exec echo: status {}, stdout {:?}, stderr {:?}; expected status 0 and {want:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout.len() as u64)
}

/// `cat` with `input` on stdin; returns the bytes checked.
pub async fn cat(client: &Client, input: Bytes) -> Result<u64, String> {
    let out = run(client, &[b"cat"], input.clone()).await?;
    if out.status != 0 || out.stdout != input {
        let same = out
            .stdout
            .iter()
            .zip(input.iter())
            .take_while(|(a, b)| a == b)
            .count();
        return Err(format!(
            "exec cat: status {}, {} bytes out for {} in, equal for the first {same}",
            out.status,
            out.stdout.len(),
            input.len()
        ));
    }
    Ok(input.len() as u64)
}

/// `false`: status 1, announced on stream 2 as `{"exit":{"code":1}}` too.
pub async fn status(client: &Client) -> Result<u64, String> {
    let out = run(client, &[b"false"], Bytes::new()).await?;
    let exit: Option<serde_json::Value> = out
        .control
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .find(|v: &serde_json::Value| v.get("exit").is_some());
    let code = exit.as_ref().and_then(|v| v["exit"]["code"].as_i64());
    if out.status != 1 || code != Some(1) || !out.stdout.is_empty() {
        return Err(format!(
            "exec false: CLOSE value {}, exit line {exit:?}, stdout {:?}; expected 1 and {{\"exit\":{{\"code\":1}}}}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(0)
}
