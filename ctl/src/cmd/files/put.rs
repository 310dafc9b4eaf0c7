//! `sockctl put`: uploads, each on its own channel (several at once).
//!
//! Per file: OPEN `put REMOTE OPTIONS`; the server offers the partial it
//! holds (offset and hash of that prefix); we hash the same prefix of the
//! source and start there if they agree, else at 0; a reader thread reads
//! and hashes 256 KiB chunks which go out as they come (sending waits for
//! the server's credit); then our size and hash, and the server answers
//! with its own before it renames the file into place.

use super::progress::{FileBar, Progress, of};
use super::remote::{
    self, CHUNK, Lines, Message, closed_error, hash_prefix, hash_zeros, local, local_error,
    next_message,
};
use crate::client::{Client, ClientError, Event};
use bytes::Bytes;
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks read ahead of the network per file.
const READ_AHEAD: usize = 4;

/// What the reader thread hands the network task.
enum Piece {
    Data(Bytes),
    /// A hole of a sparse file: sent as a `zeros` message, not as data.
    Zeros(u64),
}

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub local: PathBuf,
    pub remote: String,
    pub size: u64,
}

/// What `put` will do: remote directories to make (in order), then files.
#[derive(Debug, Default)]
pub struct Plan {
    pub dirs: Vec<String>,
    pub jobs: Vec<Job>,
}

/// Works out the uploads for `sources` into `remote` (default: the remote
/// working directory), like `cp`: into REMOTE if it is a directory, else
/// as REMOTE (one source only).
pub async fn plan(
    client: &Client,
    sources: &[PathBuf],
    remote: Option<&str>,
    recursive: bool,
) -> Result<Plan, ClientError> {
    let target = remote.unwrap_or(".");
    let target_is_dir = remote::stat(client, target)
        .await?
        .is_some_and(|e| e.is_dir());
    if sources.len() > 1 && !target_is_dir {
        return Err(local(
            ErrorCode::NotADirectory,
            format!("{target}: not a directory (several sources go into a directory)"),
        ));
    }
    let mut plan = Plan::default();
    for source in sources {
        let meta = std::fs::metadata(source).map_err(|e| local_error(source, &e))?;
        let name = local_name(source)?;
        let dest = if target_is_dir {
            remote::join(target, &name)
        } else {
            target.to_string()
        };
        if meta.is_dir() {
            if !recursive {
                return Err(local(
                    ErrorCode::IsADirectory,
                    format!("{}: is a directory; use -r", source.display()),
                ));
            }
            plan.dirs.push(dest.clone());
            walk(source, &dest, &mut plan)?;
        } else if meta.is_file() {
            plan.jobs.push(Job {
                local: source.clone(),
                remote: dest,
                size: meta.len(),
            });
        } else {
            return Err(ClientError::failure(format!(
                "{}: not a regular file or directory",
                source.display()
            )));
        }
    }
    Ok(plan)
}

/// The name a local path gets remotely.
fn local_name(path: &Path) -> Result<String, ClientError> {
    let name = match path.file_name() {
        Some(name) => name.to_owned(),
        // `.`, `..` or `/`: the name of what they are.
        None => std::fs::canonicalize(path)
            .map_err(|e| local_error(path, &e))?
            .file_name()
            .map(ToOwned::to_owned)
            .unwrap_or_else(|| "root".into()),
    };
    name.into_string().map_err(|_| {
        ClientError::usage(format!(
            "{}: the name is not UTF-8; rename it first",
            path.display()
        ))
    })
}

/// Adds the contents of the local directory `dir` (uploaded as `remote`).
/// Symbolic links and special files are skipped, with a note.
fn walk(dir: &Path, remote: &str, plan: &mut Plan) -> Result<(), ClientError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| local_error(dir, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| local_error(dir, &e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| local_error(&path, &e))?;
        let dest = remote::join(remote, &local_name(&path)?);
        if kind.is_dir() {
            plan.dirs.push(dest.clone());
            walk(&path, &dest, plan)?;
        } else if kind.is_file() {
            let size = entry.metadata().map_err(|e| local_error(&path, &e))?.len();
            plan.jobs.push(Job {
                local: path,
                remote: dest,
                size,
            });
        } else {
            eprintln!(
                "sockctl: skipping {}: not a regular file or directory",
                path.display()
            );
        }
    }
    Ok(())
}

/// A local file's identity: a partial upload is resumed only for the same
/// device, inode, size and modification time.
fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}:{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Uploads one file; returns its size.
pub async fn put_one(
    client: &Client,
    job: &Job,
    force: bool,
    progress: &Progress,
) -> Result<u64, ClientError> {
    let file = File::open(&job.local).map_err(|e| local_error(&job.local, &e))?;
    let meta = file.metadata().map_err(|e| local_error(&job.local, &e))?;
    if meta.is_dir() {
        return Err(local(
            ErrorCode::IsADirectory,
            format!("{}: is a directory; use -r", job.local.display()),
        ));
    }
    let size = meta.len();
    let options = serde_json::json!({
        "size": size,
        "source": identity(&meta),
        "mtime": meta.mtime(),
        "force": force,
    });
    let mut channel = client
        .open(
            "put",
            vec![
                job.remote.as_bytes().to_vec(),
                options.to_string().into_bytes(),
            ],
        )
        .await?;
    let bar = progress.file(&job.local.display().to_string(), size);
    let result = upload(&mut channel, job, file, &meta, progress, &bar).await;
    bar.finish();
    result
}

async fn upload(
    channel: &mut crate::client::ChannelHandle,
    job: &Job,
    file: File,
    meta: &std::fs::Metadata,
    progress: &Progress,
    bar: &FileBar,
) -> Result<u64, ClientError> {
    let size = meta.len();
    let shown = job.local.display().to_string();
    let mut lines = Lines::default();
    let (offset, their_hash) = match next_message(channel, &mut lines, "offer").await? {
        Message::Offer { offset, hash } => (offset, hash),
        other => return Err(unexpected(&other)),
    };
    let file = Arc::new(file);
    let mut start = 0;
    let mut hasher = blake3::Hasher::new();
    if offset > 0 && offset <= size {
        let f = file.clone();
        let prefix = tokio::task::spawn_blocking(move || hash_prefix(&f, offset))
            .await
            .map_err(|e| ClientError::failure(format!("hashing failed: {e}")))?
            .map_err(|e| local_error(&job.local, &e))?;
        if prefix.finalize().to_hex().as_str() == their_hash {
            start = offset;
            hasher = prefix;
            if start == size {
                // The server has the whole file already (a re-run).
                progress.note(&format!("{shown}: already on the server, same content"));
            } else {
                progress.note(&format!("resuming {shown} at {}", of(start, size)));
            }
            bar.skip(start);
        } else if offset < size {
            progress.note(&format!(
                "{shown}: the partial upload on the server does not match; starting over"
            ));
        }
    }
    channel
        .send(stream::CONTROL, Message::Start { offset: start }.line())
        .await?;

    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || read_chunks(&file, start, size, hasher, &tx))
    };
    let mut reader = Some(reader);
    let sender = channel.sender();
    let mut sending = true;
    let mut our_hash = None;
    let mut server_end = None;
    loop {
        tokio::select! {
            chunk = rx.recv(), if sending => match chunk {
                Some(piece) => {
                    let (n, sent) = match piece {
                        Piece::Data(bytes) => (bytes.len() as u64, sender.send(stream::MAIN, bytes).await),
                        Piece::Zeros(len) => (len, sender.send(stream::CONTROL, Message::Zeros { len }.line()).await),
                    };
                    if sent.is_err() {
                        // The server ended the call: its CLOSE says why.
                        sending = false;
                    }
                    bar.inc(n);
                }
                None => {
                    sending = false;
                    let Some(task) = reader.take() else { continue };
                    let hasher = task
                        .await
                        .map_err(|e| ClientError::failure(format!("reading failed: {e}")))?
                        .map_err(|e| local_error(&job.local, &e))?;
                    let now = std::fs::metadata(&job.local).map_err(|e| local_error(&job.local, &e))?;
                    if identity(&now) != identity(meta) {
                        let _ = channel.cancel().await;
                        return Err(local(
                            ErrorCode::Conflict,
                            format!("{shown}: changed while it was being sent; run put again"),
                        ));
                    }
                    let hash = hasher.finalize().to_hex().to_string();
                    let end = Message::End { size, hash: hash.clone() };
                    our_hash = Some(hash);
                    // Failures show up as the server's CLOSE.
                    if sender.send(stream::CONTROL, end.line()).await.is_ok() {
                        let _ = sender.send_eof(stream::MAIN).await;
                    }
                }
            },
            event = channel.recv() => match event {
                Some(Event::Data { stream: stream::CONTROL, bytes }) => {
                    lines.push(&bytes);
                    while let Some(message) = lines.pop()? {
                        match message {
                            Message::End { size, hash } => server_end = Some((size, hash)),
                            other => return Err(unexpected(&other)),
                        }
                    }
                }
                Some(Event::Data { .. } | Event::Eof { .. }) => {}
                Some(Event::Closed { code: ErrorCode::Ok, .. }) => break,
                Some(Event::Closed { code, message, .. }) => return Err(closed_error(code, message)),
                None => return Err(ClientError::protocol("the upload ended without a result")),
            },
        }
    }
    match (our_hash, server_end) {
        (Some(ours), Some((n, theirs))) if n == size && theirs == ours => Ok(size),
        _ => Err(local(
            ErrorCode::Conflict,
            format!(
                "{}: the server's size or hash does not match ours",
                job.remote
            ),
        )),
    }
}

fn unexpected(message: &Message) -> ClientError {
    ClientError::protocol(format!("unexpected message from sockd: {message:?}"))
}

/// Reads `file[start..size]` in chunks into `tx`, hashing them; returns
/// the hash state. Stops quietly if the receiver is gone.
fn read_chunks(
    file: &File,
    start: u64,
    size: u64,
    mut hasher: blake3::Hasher,
    tx: &mpsc::Sender<Piece>,
) -> std::io::Result<blake3::Hasher> {
    let mut pos = start;
    // The current run of data ends here (asked again only when reached:
    // finding a hole can take a scan of the whole file).
    let mut hole = pos;
    while pos < size {
        if pos >= hole {
            let (data, next_hole) = next_extent(file, pos, size);
            if data > pos {
                hash_zeros(&mut hasher, data - pos);
                if tx.blocking_send(Piece::Zeros(data - pos)).is_err() {
                    break;
                }
                pos = data;
                continue;
            }
            hole = next_hole;
        }
        let want = usize::try_from(hole.min(size) - pos)
            .unwrap_or(CHUNK)
            .min(CHUNK);
        // read_to_end fills the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(want);
        let mut reader = file;
        reader.seek(SeekFrom::Start(pos))?;
        reader.take(want as u64).read_to_end(&mut buf)?;
        if buf.len() < want {
            return Err(std::io::Error::other(
                "the file shrank while it was being sent",
            ));
        }
        hasher.update(&buf);
        pos += want as u64;
        if tx.blocking_send(Piece::Data(Bytes::from(buf))).is_err() {
            break;
        }
    }
    Ok(hasher)
}

/// Where data resumes at or after `pos`, and where it next stops (a hole
/// or the end). Filesystems that do not know holes report all data.
fn next_extent(file: &File, pos: u64, size: u64) -> (u64, u64) {
    use rustix::fs::{SeekFrom, seek};
    let data = match seek(file, SeekFrom::Data(pos)) {
        Ok(at) => at.min(size),
        // No data after pos: the rest is a hole.
        Err(rustix::io::Errno::NXIO) => size,
        Err(_) => pos,
    };
    let hole = if data >= size {
        size
    } else {
        seek(file, SeekFrom::Hole(data)).unwrap_or(size)
    };
    (data, hole.max(data + 1))
}
