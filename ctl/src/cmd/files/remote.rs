//! Talking to the files plugin: one-shot calls whose results are JSON
//! lines on the main stream, the control messages of `put` and `get`
//! (JSON lines on stream 2), and mapping local I/O errors to the same exit
//! statuses the server's codes use.

use crate::client::{ChannelHandle, Client, ClientError, Event};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sockd_proto::ErrorCode;
use sockd_proto::message::stream;
use std::io::ErrorKind;
use std::path::Path;

/// Size of the chunks read from disk and sent in one frame.
pub const CHUNK: usize = 256 * 1024;
/// Zeros to hash for holes of sparse files.
pub static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// The control messages of `put` and `get` (docs/PROTOCOL.md, `### files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    Info {
        size: u64,
        source: String,
        mtime: i64,
    },
    Offer {
        offset: u64,
        hash: String,
    },
    Start {
        offset: u64,
    },
    Zeros {
        len: u64,
    },
    End {
        size: u64,
        hash: String,
    },
}

impl Message {
    pub fn line(&self) -> Bytes {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// A directory entry as `ls` and `stat` report it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.kind == "dir"
    }

    pub fn is_file(&self) -> bool {
        self.kind == "file"
    }
}

/// Collects control-stream bytes and splits them into messages.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub fn pop(&mut self) -> Result<Option<Message>, ClientError> {
        let Some(end) = self.pending.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        serde_json::from_slice(&line[..end])
            .map(Some)
            .map_err(|e| ClientError::protocol(format!("bad control message from sockd: {e}")))
    }
}

/// The error for a CLOSE that is not `ok`.
pub fn closed_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::remote(code, message)
}

/// Waits for the next control message; a CLOSE before it is the error.
pub async fn next_message(
    channel: &mut ChannelHandle,
    lines: &mut Lines,
    waiting_for: &str,
) -> Result<Message, ClientError> {
    loop {
        if let Some(m) = lines.pop()? {
            return Ok(m);
        }
        match channel.recv().await {
            Some(Event::Data {
                stream: stream::CONTROL,
                bytes,
            }) => lines.push(&bytes),
            Some(Event::Data { .. } | Event::Eof { .. }) => {}
            Some(Event::Closed { code, message, .. }) if code != ErrorCode::Ok => {
                return Err(closed_error(code, message));
            }
            Some(Event::Closed { .. }) | None => {
                return Err(ClientError::protocol(format!(
                    "sockd ended the transfer before its {waiting_for} message"
                )));
            }
        }
    }
}

/// Runs a command and returns what it wrote on the main stream.
pub async fn call(
    client: &Client,
    command: &str,
    args: Vec<Vec<u8>>,
) -> Result<Vec<u8>, ClientError> {
    let mut channel = client.open(command, args).await?;
    let mut out = Vec::new();
    while let Some(event) = channel.recv().await {
        match event {
            Event::Data {
                stream: stream::MAIN,
                bytes,
            } => out.extend_from_slice(&bytes),
            Event::Data { .. } | Event::Eof { .. } => {}
            Event::Closed {
                code: ErrorCode::Ok,
                ..
            } => return Ok(out),
            Event::Closed { code, message, .. } => return Err(closed_error(code, message)),
        }
    }
    Err(ClientError::remote(
        ErrorCode::Unavailable,
        "the operation ended without a result",
    ))
}

/// Runs a command and parses each line it wrote as JSON.
pub async fn call_json<T: DeserializeOwned>(
    client: &Client,
    command: &str,
    args: Vec<Vec<u8>>,
) -> Result<Vec<T>, ClientError> {
    let out = call(client, command, args).await?;
    out.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|e| {
                ClientError::protocol(format!("bad answer from sockd to {command}: {e}"))
            })
        })
        .collect()
}

/// The remote entry at `path` (symlinks inside the home followed), or
/// `None` if there is none.
pub async fn stat(client: &Client, path: &str) -> Result<Option<Entry>, ClientError> {
    match call_json::<Entry>(client, "stat", vec![path.as_bytes().to_vec()]).await {
        Ok(mut entries) => Ok(entries.pop()),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of a remote directory.
pub async fn list(client: &Client, path: &str) -> Result<Vec<Entry>, ClientError> {
    call_json(client, "ls", vec![path.as_bytes().to_vec()]).await
}

/// `dir/name` for remote paths.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of a remote path (`/a/b` → `b`).
pub fn basename(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// A local I/O failure, with the exit status of the matching server code.
pub fn local_error(path: &Path, e: &std::io::Error) -> ClientError {
    let code = match e.kind() {
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
        ErrorKind::NotADirectory => ErrorCode::NotADirectory,
        ErrorKind::IsADirectory => ErrorCode::IsADirectory,
        ErrorKind::DirectoryNotEmpty => ErrorCode::DirectoryNotEmpty,
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => ErrorCode::NoSpace,
        ErrorKind::InvalidFilename => ErrorCode::NameTooLong,
        _ => return ClientError::failure(format!("{}: {}", path.display(), plain(e))),
    };
    local(code, format!("{}: {}", path.display(), plain(e)))
}

/// A local failure reported with the exit status of `code`.
pub fn local(code: ErrorCode, message: impl Into<String>) -> ClientError {
    ClientError::new(code.exit_status(), message)
}

/// The error text without Rust's "(os error N)".
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    text.split(" (os error")
        .next()
        .unwrap_or_default()
        .to_lowercase()
}

/// `1.5 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Hashes `len` zero bytes.
pub fn hash_zeros(hasher: &mut blake3::Hasher, mut len: u64) {
    while len > 0 {
        let n = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// BLAKE3 of the first `len` bytes of `file` (off the async thread).
pub fn hash_prefix(file: &std::fs::File, len: u64) -> std::io::Result<blake3::Hasher> {
    use std::os::unix::fs::FileExt;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from(len - pos).unwrap_or(CHUNK).min(CHUNK);
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the file is shorter than expected",
            ));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_messages() {
        let mut lines = Lines::default();
        lines.push(b"{\"type\":\"start\",\"offset\":3}\n{\"type\":\"zer");
        assert_eq!(lines.pop().unwrap(), Some(Message::Start { offset: 3 }));
        assert_eq!(lines.pop().unwrap(), None);
        lines.push(b"os\",\"len\":9}\n");
        assert_eq!(lines.pop().unwrap(), Some(Message::Zeros { len: 9 }));
        lines.push(b"nonsense\n");
        assert!(lines.pop().is_err());
    }

    #[test]
    fn remote_paths_join_and_split() {
        assert_eq!(join(".", "a"), "a");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(basename("b/"), "b");
    }

    #[test]
    fn local_errors_use_the_table() {
        let e = local_error(
            Path::new("x"),
            &std::io::Error::from(ErrorKind::StorageFull),
        );
        assert_eq!(e.status(), 16);
        let e = local_error(Path::new("x"), &std::io::Error::from_raw_os_error(2));
        assert_eq!(
            (e.status(), e.message()),
            (12, "x: no such file or directory")
        );
    }
}
