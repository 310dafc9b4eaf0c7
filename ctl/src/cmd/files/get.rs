//! `sockctl get`: downloads, each on its own channel (several at once).
//!
//! Per file: OPEN `get REMOTE`; the server says what it sends (size and
//! source identity); if `LOCAL.sockd-partial` holds an earlier download of
//! that same source (per `LOCAL.sockd-meta`), we offer its length and the
//! hash of its content and the server continues there if its file agrees,
//! else from 0. A writer thread writes and hashes the data (holes of
//! sparse files arrive as `zeros` messages and stay holes); once the
//! hashes agree, the partial is fsynced and renamed to LOCAL.

use super::progress::{FileBar, Progress, of};
use super::remote::{
    self, Lines, Message, closed_error, hash_prefix, hash_zeros, local, local_error, next_message,
};
use crate::client::{ChannelHandle, Client, ClientError, Event};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Chunks queued for the writer thread per file.
const WRITE_QUEUE: usize = 8;

/// One file to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub remote: String,
    pub local: PathBuf,
    pub size: u64,
}

/// What `get` will do: local directories to make (in order), then files.
#[derive(Debug, Default)]
pub struct Plan {
    pub dirs: Vec<PathBuf>,
    pub jobs: Vec<Job>,
}

/// Works out the downloads of `sources` into `local` (default: the
/// current directory), like `cp`.
pub async fn plan(
    client: &Client,
    sources: &[String],
    local_target: Option<&Path>,
    recursive: bool,
) -> Result<Plan, ClientError> {
    let target = local_target.unwrap_or(Path::new("."));
    let target_is_dir = target.is_dir();
    if sources.len() > 1 && !target_is_dir {
        return Err(local(
            ErrorCode::NotADirectory,
            format!(
                "{}: not a directory (several sources go into a directory)",
                target.display()
            ),
        ));
    }
    let mut plan = Plan::default();
    for source in sources {
        let Some(entry) = remote::stat(client, source).await? else {
            return Err(ClientError::remote(
                ErrorCode::NotFound,
                format!("{source}: no such file or directory"),
            ));
        };
        // stat names the full path: /a/b.
        let name = match remote::basename(&entry.name) {
            "" => "home",
            name => name,
        };
        let dest = if target_is_dir {
            target.join(name)
        } else {
            target.to_path_buf()
        };
        if entry.is_dir() {
            if !recursive {
                return Err(ClientError::remote(
                    ErrorCode::IsADirectory,
                    format!("{source}: is a directory; use -r"),
                ));
            }
            plan.dirs.push(dest.clone());
            walk(client, &entry.name, &dest, &mut plan).await?;
        } else if entry.is_file() {
            plan.jobs.push(Job {
                remote: entry.name.clone(),
                local: dest,
                size: entry.size,
            });
        } else {
            return Err(ClientError::remote(
                ErrorCode::BadRequest,
                format!("{source}: not a regular file or directory"),
            ));
        }
    }
    Ok(plan)
}

/// Adds the contents of the remote directory `dir` (saved as `local`).
async fn walk(
    client: &Client,
    dir: &str,
    local_dir: &Path,
    plan: &mut Plan,
) -> Result<(), ClientError> {
    let mut pending = vec![(dir.to_string(), local_dir.to_path_buf())];
    while let Some((dir, local_dir)) = pending.pop() {
        for entry in remote::list(client, &dir).await? {
            let remote_path = remote::join(&dir, &entry.name);
            if entry.name.contains('/') || entry.name == ".." || entry.name == "." {
                // Never let a name steer the download out of LOCAL.
                eprintln!("sockctl: skipping {remote_path:?}: not a plain name");
                continue;
            }
            let local_path = local_dir.join(&entry.name);
            if entry.is_dir() {
                plan.dirs.push(local_path.clone());
                pending.push((remote_path, local_path));
            } else if entry.is_file() {
                plan.jobs.push(Job {
                    remote: remote_path,
                    local: local_path,
                    size: entry.size,
                });
            } else {
                eprintln!("sockctl: skipping {remote_path}: not a regular file or directory");
            }
        }
    }
    Ok(())
}

/// `LOCAL.sockd-partial` and `LOCAL.sockd-meta`.
fn partial_paths(local_path: &Path) -> (PathBuf, PathBuf) {
    let mut partial = local_path.as_os_str().to_owned();
    partial.push(".sockd-partial");
    let mut meta = local_path.as_os_str().to_owned();
    meta.push(".sockd-meta");
    (partial.into(), meta.into())
}

/// What `LOCAL.sockd-meta` records about the partial download.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    size: u64,
    source: String,
    remote: String,
}

/// Downloads one file; returns its size.
pub async fn get_one(
    client: &Client,
    job: &Job,
    force: bool,
    progress: &Progress,
) -> Result<u64, ClientError> {
    let mut same_size = false;
    match std::fs::symlink_metadata(&job.local) {
        Ok(meta) if meta.is_dir() => {
            return Err(local(
                ErrorCode::IsADirectory,
                format!("{}: is a directory", job.local.display()),
            ));
        }
        // Perhaps the same content (a re-run after a download whose end
        // went unconfirmed): the server checks the hash.
        Ok(meta) if !force && meta.is_file() && meta.len() == job.size => same_size = true,
        Ok(_) if !force => {
            return Err(local(
                ErrorCode::AlreadyExists,
                format!(
                    "{}: already exists; use --force to replace it",
                    job.local.display()
                ),
            ));
        }
        _ => {}
    }
    let mut channel = client
        .open("get", vec![job.remote.as_bytes().to_vec()])
        .await?;
    let bar = progress.file(&job.remote, job.size);
    let result = if same_size {
        confirm_same(&mut channel, job, progress, &bar).await
    } else {
        download(&mut channel, job, force, progress, &bar).await
    };
    bar.finish();
    result
}

/// `get` to an existing local file of the remote file's size, without
/// --force: the whole local file is offered as a partial. The server
/// starts at its end if its file hashes the same, and the download
/// succeeds with nothing sent; other content is refused, nothing written.
async fn confirm_same(
    channel: &mut ChannelHandle,
    job: &Job,
    progress: &Progress,
    bar: &FileBar,
) -> Result<u64, ClientError> {
    let shown = job.local.display().to_string();
    let exists = |what: &str| {
        local(
            ErrorCode::AlreadyExists,
            format!("{shown}: already exists{what}; use --force to replace it"),
        )
    };
    let mut lines = Lines::default();
    let size = match next_message(channel, &mut lines, "info").await? {
        Message::Info { size, .. } => size,
        other => return Err(unexpected(&other)),
    };
    let file = File::open(&job.local).map_err(|e| local_error(&job.local, &e))?;
    let local_size = file
        .metadata()
        .map_err(|e| local_error(&job.local, &e))?
        .len();
    if local_size != size {
        let _ = channel.cancel().await;
        return Err(exists(""));
    }
    let ours = tokio::task::spawn_blocking(move || hash_prefix(&file, size))
        .await
        .map_err(|e| ClientError::failure(format!("hashing failed: {e}")))?
        .map_err(|e| local_error(&job.local, &e))?
        .finalize()
        .to_hex()
        .to_string();
    let offer = Message::Offer {
        offset: size,
        hash: ours.clone(),
    };
    channel.send(stream::CONTROL, offer.line()).await?;
    match next_message(channel, &mut lines, "start").await? {
        Message::Start { offset } if offset == size => {}
        Message::Start { offset: 0 } => {
            let _ = channel.cancel().await;
            return Err(exists(" with other content"));
        }
        other => return Err(unexpected(&other)),
    }
    let mut server_end = None;
    loop {
        match channel.recv().await {
            Some(Event::Data {
                stream: stream::CONTROL,
                bytes,
            }) => {
                lines.push(&bytes);
                while let Some(message) = lines.pop()? {
                    match message {
                        Message::End { size, hash } => server_end = Some((size, hash)),
                        other => return Err(unexpected(&other)),
                    }
                }
            }
            Some(Event::Data { .. }) => {
                return Err(ClientError::protocol(
                    "sockd sent data after it agreed the file was complete",
                ));
            }
            Some(Event::Eof { .. }) => {}
            Some(Event::Closed {
                code: ErrorCode::Ok,
                ..
            }) => break,
            Some(Event::Closed { code, message, .. }) => return Err(closed_error(code, message)),
            None => return Err(ClientError::protocol("the download ended without a result")),
        }
    }
    match server_end {
        Some((n, theirs)) if n == size && theirs == ours => {
            progress.note(&format!("{shown}: already here, same content"));
            bar.skip(size);
            Ok(size)
        }
        _ => Err(exists(" and the server's size or hash does not match it")),
    }
}

async fn download(
    channel: &mut ChannelHandle,
    job: &Job,
    force: bool,
    progress: &Progress,
    bar: &FileBar,
) -> Result<u64, ClientError> {
    let mut lines = Lines::default();
    let (size, source, mtime) = match next_message(channel, &mut lines, "info").await? {
        Message::Info {
            size,
            source,
            mtime,
        } => (size, source, mtime),
        other => return Err(unexpected(&other)),
    };
    let (partial_path, meta_path) = partial_paths(&job.local);
    let meta = Meta {
        size,
        source,
        remote: job.remote.clone(),
    };
    let (file, offset, prefix) = {
        let (partial, meta_file) = (partial_path.clone(), meta_path.clone());
        let meta_text = serde_json::to_vec(&meta).unwrap_or_default();
        let wanted = (meta.size, meta.source.clone());
        tokio::task::spawn_blocking(move || open_partial(&partial, &meta_file, &meta_text, wanted))
            .await
            .map_err(|e| ClientError::failure(format!("opening the partial file failed: {e}")))?
            .map_err(|e| local_error(&partial_path, &e))?
    };
    let offer = Message::Offer {
        offset,
        hash: prefix.finalize().to_hex().to_string(),
    };
    channel.send(stream::CONTROL, offer.line()).await?;
    let start = match next_message(channel, &mut lines, "start").await? {
        Message::Start { offset: start } if start == offset || start == 0 => start,
        other => return Err(unexpected(&other)),
    };
    let hasher = if start > 0 {
        progress.note(&format!(
            "resuming {} at {}",
            job.local.display(),
            of(start, size)
        ));
        bar.skip(start);
        prefix
    } else {
        if offset > 0 {
            progress.note(&format!(
                "{}: the partial download does not match the server's file; starting over",
                job.local.display()
            ));
        }
        blake3::Hasher::new()
    };

    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_chunks(file, start, hasher, rx));
    let mut tx = Some(tx);
    let mut server_end = None;
    let closed = loop {
        let Some(event) = channel.recv().await else {
            break Err(ClientError::protocol("the download ended without a result"));
        };
        let chunk = match event {
            Event::Data {
                stream: stream::MAIN,
                bytes,
            } => {
                bar.inc(bytes.len() as u64);
                Chunk::Data(bytes)
            }
            Event::Data {
                stream: stream::CONTROL,
                bytes,
            } => {
                lines.push(&bytes);
                let mut zeros = 0;
                while let Some(message) = lines.pop()? {
                    match message {
                        Message::Zeros { len } => zeros += len,
                        Message::End { size, hash } => server_end = Some((size, hash)),
                        other => return Err(unexpected(&other)),
                    }
                }
                if zeros == 0 {
                    continue;
                }
                bar.inc(zeros);
                Chunk::Zeros(zeros)
            }
            Event::Data { .. } | Event::Eof { .. } => continue,
            Event::Closed {
                code: ErrorCode::Ok,
                ..
            } => break Ok(()),
            Event::Closed { code, message, .. } => break Err(closed_error(code, message)),
        };
        let queued = match &tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if !queued {
            // The writer stopped: its error says why.
            tx = None;
            let _ = channel.cancel().await;
        }
    };
    drop(tx);
    let written = writer
        .await
        .map_err(|e| ClientError::failure(format!("writing failed: {e}")))?;
    let (file, hasher, written) = match written {
        Ok(done) => done,
        Err(e) => {
            let e = local_error(&partial_path, &e);
            if e.status() == ErrorCode::NoSpace.exit_status() {
                return Err(local(
                    ErrorCode::NoSpace,
                    format!(
                        "{}: no space left on this disk; the partial download is kept: run the same get again to resume",
                        partial_path.display()
                    ),
                ));
            }
            return Err(e);
        }
    };
    if let Err(e) = closed {
        if e.code() == Some(ErrorCode::Conflict) {
            discard(&partial_path, &meta_path);
        }
        return Err(e);
    }
    let ours = hasher.finalize().to_hex().to_string();
    match server_end {
        Some((n, theirs)) if n == size && written == size && theirs == ours => {}
        _ => {
            discard(&partial_path, &meta_path);
            return Err(local(
                ErrorCode::Conflict,
                format!(
                    "{}: the content hash does not match the server's; the download was discarded",
                    job.remote
                ),
            ));
        }
    }
    let local_path = job.local.clone();
    tokio::task::spawn_blocking(move || {
        commit(&file, &partial_path, &meta_path, &local_path, mtime, force)
    })
    .await
    .map_err(|e| ClientError::failure(format!("saving failed: {e}")))?
    .map_err(|e| local_error(&job.local, &e))?;
    Ok(size)
}

fn unexpected(message: &Message) -> ClientError {
    ClientError::protocol(format!("unexpected message from sockd: {message:?}"))
}

/// Opens (or creates) the partial file. If its metadata names the same
/// source, returns its length and the hash of its content (to offer);
/// otherwise empties it and records the new source.
fn open_partial(
    partial: &Path,
    meta_path: &Path,
    meta_text: &[u8],
    (size, source): (u64, String),
) -> std::io::Result<(File, u64, blake3::Hasher)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(partial)?;
    let len = file.metadata()?.len();
    let same = std::fs::read(meta_path)
        .ok()
        .and_then(|text| serde_json::from_slice::<Meta>(&text).ok())
        .is_some_and(|m| m.size == size && m.source == source);
    if same && len > 0 && len <= size {
        let prefix = hash_prefix(&file, len)?;
        return Ok((file, len, prefix));
    }
    file.set_len(0)?;
    std::fs::write(meta_path, meta_text)?;
    Ok((file, 0, blake3::Hasher::new()))
}

/// What the network task hands the writer thread.
enum Chunk {
    Data(Bytes),
    Zeros(u64),
}

/// Writes chunks into `file` from `start`, hashing them; returns the file,
/// the hash state and the size written.
fn write_chunks(
    mut file: File,
    start: u64,
    mut hasher: blake3::Hasher,
    mut rx: mpsc::Receiver<Chunk>,
) -> std::io::Result<(File, blake3::Hasher, u64)> {
    file.set_len(start)?;
    file.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    while let Some(chunk) = rx.blocking_recv() {
        match chunk {
            Chunk::Data(bytes) => {
                file.write_all(&bytes)?;
                hasher.update(&bytes);
                pos += bytes.len() as u64;
            }
            Chunk::Zeros(len) => {
                // Leave a hole: seek past it, and extend the file at the end.
                hash_zeros(&mut hasher, len);
                pos += len;
                file.seek(SeekFrom::Start(pos))?;
            }
        }
    }
    if file.metadata()?.len() < pos {
        file.set_len(pos)?;
    }
    Ok((file, hasher, pos))
}

/// Makes the verified partial file durable and gives it its name.
fn commit(
    file: &File,
    partial: &Path,
    meta: &Path,
    local_path: &Path,
    mtime: i64,
    force: bool,
) -> std::io::Result<()> {
    if let Ok(secs) = u64::try_from(mtime) {
        let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    }
    file.sync_all()?;
    if !force && std::fs::symlink_metadata(local_path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "was created meanwhile; use --force to replace it",
        ));
    }
    std::fs::rename(partial, local_path)?;
    let dir = match local_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    let _ = std::fs::remove_file(meta);
    Ok(())
}

fn discard(partial: &Path, meta: &Path) {
    let _ = std::fs::remove_file(partial);
    let _ = std::fs::remove_file(meta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_resume_only_the_same_source() {
        let dir = tempfile::tempdir().unwrap();
        let (partial, meta) = partial_paths(&dir.path().join("f"));
        let text = serde_json::to_vec(&Meta {
            size: 10,
            source: "s1".into(),
            remote: "/f".into(),
        })
        .unwrap();
        let (file, offset, _) = open_partial(&partial, &meta, &text, (10, "s1".into())).unwrap();
        assert_eq!(offset, 0);
        let (mut file, _, _) = write_chunks(file, 0, blake3::Hasher::new(), {
            let (tx, rx) = mpsc::channel(4);
            tx.try_send(Chunk::Data(Bytes::from_static(b"abcd")))
                .unwrap();
            rx
        })
        .unwrap();
        file.flush().unwrap();
        let (_, offset, prefix) = open_partial(&partial, &meta, &text, (10, "s1".into())).unwrap();
        assert_eq!(offset, 4);
        assert_eq!(prefix.finalize(), blake3::hash(b"abcd"));
        let (_, offset, _) = open_partial(&partial, &meta, &text, (10, "s2".into())).unwrap();
        assert_eq!(offset, 0, "another source starts over");
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 0);
    }

    #[test]
    fn holes_stay_holes_and_hash_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Chunk::Data(Bytes::from_static(b"ab"))).unwrap();
        tx.try_send(Chunk::Zeros(3)).unwrap();
        drop(tx);
        let (_, hasher, n) = write_chunks(file, 0, blake3::Hasher::new(), rx).unwrap();
        assert_eq!(n, 5);
        assert_eq!(hasher.finalize(), blake3::hash(b"ab\0\0\0"));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"ab\0\0\0");
    }
}
