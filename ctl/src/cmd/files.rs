//! The file commands, served by the files plugin: `put`, `get`, `ls`,
//! `mkdir`, `rm`, `mv`, `quota`, and `files`, an interactive shell like
//! sftp's.
//!
//! - [`remote`]: calls, control messages and local error mapping;
//! - [`put`] / [`get`]: verified, resumable transfers, up to
//!   [`CONCURRENT`] files at once on one connection;
//! - [`progress`]: the bars; [`shell`]: `sockctl files`.
//!
//! Paths on the server are relative to the home (or, in the shell, to the
//! directory of `cd`); `/` is the home. The protocol is under `### files`
//! in docs/PROTOCOL.md, the use in docs/FILES.md.

pub mod get;
pub mod progress;
pub mod put;
pub mod remote;
pub mod shell;

use super::Context;
use crate::client::{Client, ClientError};
use crate::output;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use progress::Progress;
use remote::{Entry, call, call_json, human};
use serde::Deserialize;
use sockd_proto::ErrorCode;
use std::future::Future;
use std::path::PathBuf;

/// Files transferred at once, each on its own channel.
pub const CONCURRENT: usize = 4;

/// The top-level file commands.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    #[command(flatten)]
    Op(Op),
    /// Interactive file shell (like sftp): cd, ls, put, get, ...
    Files(ShellArgs),
}

/// The operations, on the command line and in the shell.
#[derive(Debug, Subcommand)]
pub enum Op {
    /// Upload files: put LOCAL... [REMOTE] (verified, resumable)
    Put(PutArgs),
    /// Download files: get REMOTE... [LOCAL] (verified, resumable)
    Get(GetArgs),
    /// List a remote directory
    Ls(LsArgs),
    /// Make remote directories
    Mkdir(MkdirArgs),
    /// Remove remote files (directories with -r)
    Rm(RmArgs),
    /// Move or rename a remote file or directory
    Mv(MvArgs),
    /// Show your storage use and limits
    Quota(QuotaArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "With one PATH, it is uploaded into the remote working directory; \
with more, the last is the remote destination: a directory, or the new name of a single file.\n\
An interrupted upload resumes when the same put runs again."
)]
pub struct PutArgs {
    /// Upload directories and their contents
    #[arg(short, long)]
    pub recursive: bool,
    /// Replace existing remote files
    #[arg(short, long)]
    pub force: bool,
    /// Show no progress bars or notes
    #[arg(short, long)]
    pub quiet: bool,
    /// LOCAL... [REMOTE]
    #[arg(required = true, num_args = 1.., value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "With one PATH, it is downloaded into the current directory; \
with more, the last is the local destination: a directory, or the new name of a single file.\n\
An interrupted download resumes when the same get runs again."
)]
pub struct GetArgs {
    /// Download directories and their contents
    #[arg(short, long)]
    pub recursive: bool,
    /// Replace existing local files
    #[arg(short, long)]
    pub force: bool,
    /// Show no progress bars or notes
    #[arg(short, long)]
    pub quiet: bool,
    /// REMOTE... [LOCAL]
    #[arg(required = true, num_args = 1.., value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Long format: type and permissions, size, modification time
    #[arg(short, long)]
    pub long: bool,
    /// Directory or file (default: the working directory)
    pub path: Option<String>,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// Make parent directories as needed; no error if it exists
    #[arg(short, long)]
    pub parents: bool,
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove directories and their contents
    #[arg(short, long)]
    pub recursive: bool,
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MvArgs {
    /// Replace an existing destination
    #[arg(short, long)]
    pub force: bool,
    pub from: String,
    /// New name, or a directory to move into
    pub to: String,
}

#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// Count the files on the server again first
    #[arg(long)]
    pub recount: bool,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Show no progress bars or notes
    #[arg(short, long)]
    pub quiet: bool,
}

/// Runs a file command on a new connection.
pub async fn run(ctx: &Context, command: FilesCommand) -> Result<u8, ClientError> {
    let client = ctx.connect().await?;
    let result = match command {
        FilesCommand::Op(op) => run_op(&client, op).await,
        FilesCommand::Files(args) => shell::run(&client, args).await,
    };
    // Lets queued frames (such as cancels after Ctrl-C) reach the server.
    client.close().await;
    result
}

/// Runs one operation on `client`.
pub async fn run_op(client: &Client, op: Op) -> Result<u8, ClientError> {
    match op {
        Op::Put(args) => run_put(client, args).await,
        Op::Get(args) => run_get(client, args).await,
        Op::Ls(args) => ls(client, args).await,
        Op::Mkdir(args) => {
            let options = serde_json::json!({ "parents": args.parents }).to_string();
            for path in &args.paths {
                call(
                    client,
                    "mkdir",
                    vec![path.clone().into_bytes(), options.clone().into_bytes()],
                )
                .await?;
            }
            Ok(0)
        }
        Op::Rm(args) => {
            let options = serde_json::json!({ "recursive": args.recursive }).to_string();
            for path in &args.paths {
                call(
                    client,
                    "rm",
                    vec![path.clone().into_bytes(), options.clone().into_bytes()],
                )
                .await?;
            }
            Ok(0)
        }
        Op::Mv(args) => {
            let options = serde_json::json!({ "force": args.force }).to_string();
            call(
                client,
                "mv",
                vec![
                    args.from.into_bytes(),
                    args.to.into_bytes(),
                    options.into_bytes(),
                ],
            )
            .await?;
            Ok(0)
        }
        Op::Quota(args) => quota(client, args).await,
    }
}

async fn run_put(client: &Client, args: PutArgs) -> Result<u8, ClientError> {
    let mut sources = args.paths;
    let remote = if sources.len() > 1 {
        let last = sources.pop().unwrap_or_default();
        Some(
            last.into_os_string()
                .into_string()
                .map_err(|_| ClientError::usage("the remote destination must be UTF-8"))?,
        )
    } else {
        None
    };
    let plan = put::plan(client, &sources, remote.as_deref(), args.recursive).await?;
    let options = serde_json::json!({ "parents": true }).to_string();
    for dir in &plan.dirs {
        call(
            client,
            "mkdir",
            vec![dir.clone().into_bytes(), options.clone().into_bytes()],
        )
        .await?;
    }
    let total = plan.jobs.iter().map(|j| j.size).sum();
    let progress = Progress::new(args.quiet, plan.jobs.len(), total);
    let force = args.force;
    let result = run_jobs(plan.jobs, &progress, |job| {
        let progress = &progress;
        async move { put::put_one(client, &job, force, progress).await }
    })
    .await;
    progress.finish();
    result
}

async fn run_get(client: &Client, args: GetArgs) -> Result<u8, ClientError> {
    let mut sources = args.paths;
    let local_target = if sources.len() > 1 {
        sources.pop().map(PathBuf::from)
    } else {
        None
    };
    let plan = get::plan(client, &sources, local_target.as_deref(), args.recursive).await?;
    for dir in &plan.dirs {
        std::fs::create_dir_all(dir).map_err(|e| remote::local_error(dir, &e))?;
    }
    let total = plan.jobs.iter().map(|j| j.size).sum();
    let progress = Progress::new(args.quiet, plan.jobs.len(), total);
    let force = args.force;
    let result = run_jobs(plan.jobs, &progress, |job| {
        let progress = &progress;
        async move { get::get_one(client, &job, force, progress).await }
    })
    .await;
    progress.finish();
    result
}

/// Runs transfers, [`CONCURRENT`] at a time. A single file's failure is
/// the error; with several, each failure is reported as it happens, the
/// others go on, and the status is the first failure's. Ctrl-C cancels
/// them all (what was received is kept for resuming).
async fn run_jobs<J, F, Fut>(
    jobs: Vec<J>,
    progress: &Progress,
    transfer: F,
) -> Result<u8, ClientError>
where
    F: FnMut(J) -> Fut,
    Fut: Future<Output = Result<u64, ClientError>>,
{
    let single = jobs.len() == 1;
    let mut running = futures_util::stream::iter(jobs)
        .map(transfer)
        .buffer_unordered(CONCURRENT);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut watch_ctrl_c = true;
    let mut status = None;
    loop {
        tokio::select! {
            next = running.next() => match next {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) if single => return Err(e),
                Some(Err(e)) => {
                    progress.error(e.message());
                    status.get_or_insert(e.status());
                }
            },
            signal = &mut ctrl_c, if watch_ctrl_c => {
                if signal.is_err() {
                    watch_ctrl_c = false;
                    continue;
                }
                return Err(ClientError::new(
                    ErrorCode::Cancelled.exit_status(),
                    "cancelled; run the same command again to resume",
                ));
            }
        }
    }
    Ok(status.unwrap_or(0))
}

async fn ls(client: &Client, args: LsArgs) -> Result<u8, ClientError> {
    let path = args.path.unwrap_or_else(|| ".".to_string());
    let entries: Vec<Entry> = call_json(client, "ls", vec![path.into_bytes()]).await?;
    let mut out = String::new();
    for entry in &entries {
        out.push_str(&format_entry(entry, args.long));
        out.push('\n');
    }
    output::print(&out)?;
    Ok(0)
}

/// One line of `ls`: the name (directories end in `/`), or with `long`
/// `drwxr-xr-x  SIZE  MTIME  NAME`. Control characters are escaped.
pub fn format_entry(entry: &Entry, long: bool) -> String {
    let mut name = if entry.name.chars().any(char::is_control) {
        entry.name.escape_debug().to_string()
    } else {
        entry.name.clone()
    };
    if entry.is_dir() {
        name.push('/');
    }
    if !long {
        return name;
    }
    let kind = match entry.kind.as_str() {
        "dir" => 'd',
        "link" => 'l',
        "file" => '-',
        _ => '?',
    };
    let mut mode = String::from(kind);
    for shift in [6u32, 3, 0] {
        let bits = (entry.mode >> shift) & 7;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let time = output::utc_time(u64::try_from(entry.mtime).unwrap_or(0));
    format!("{mode} {:>14}  {time}  {name}", entry.size)
}

/// What `quota` answers.
#[derive(Debug, Deserialize)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub limit_bytes: u64,
    pub limit_files: u64,
    pub reserved_bytes: u64,
}

async fn quota(client: &Client, args: QuotaArgs) -> Result<u8, ClientError> {
    let options = serde_json::json!({ "recount": args.recount }).to_string();
    let usage: Vec<Usage> = call_json(client, "quota", vec![options.into_bytes()]).await?;
    let usage = usage
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::protocol("sockd sent no quota"))?;
    output::print(&format_usage(&usage))?;
    Ok(0)
}

/// `bytes  1.5 MiB of 10.0 MiB (15%)` and `files  3 of 100 (3%)`.
pub fn format_usage(usage: &Usage) -> String {
    fn line(used: String, limit: u64, limit_text: String, used_raw: u64) -> String {
        // A limit of 0 means none.
        match used_raw.saturating_mul(100).checked_div(limit) {
            None => format!("{used} (no limit)"),
            Some(percent) => format!("{used} of {limit_text} ({percent}%)"),
        }
    }
    let mut pairs = vec![
        (
            "bytes",
            line(
                human(usage.bytes),
                usage.limit_bytes,
                human(usage.limit_bytes),
                usage.bytes,
            ),
        ),
        (
            "files",
            line(
                usage.files.to_string(),
                usage.limit_files,
                usage.limit_files.to_string(),
                usage.files,
            ),
        ),
    ];
    if usage.reserved_bytes > 0 {
        pairs.push(("in flight", human(usage.reserved_bytes)));
    }
    output::fields(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: &str) -> Entry {
        Entry {
            name: name.into(),
            kind: kind.into(),
            size: 1234,
            mtime: 0,
            mode: 0o754,
        }
    }

    #[test]
    fn entries_format_like_ls() {
        assert_eq!(format_entry(&entry("d", "dir"), false), "d/");
        assert_eq!(format_entry(&entry("a\nb", "file"), false), "a\\nb");
        assert_eq!(
            format_entry(&entry("f", "file"), true),
            "-rwxr-xr--           1234  1970-01-01 00:00:00 UTC  f"
        );
    }

    #[test]
    fn usage_reads_well() {
        let u = Usage {
            bytes: 1536,
            files: 3,
            limit_bytes: 0,
            limit_files: 10,
            reserved_bytes: 0,
        };
        assert_eq!(
            format_usage(&u),
            "bytes  1.5 KiB (no limit)\nfiles  3 of 10 (30%)\n"
        );
    }
}
