//! `put` and `get`: verified, resumable transfers.
//!
//! An upload is written to a hidden partial file beside its target
//! (`.NAME.sockd-partial`, with `.NAME.sockd-meta` saying which source it
//! belongs to). Only when all data has arrived, the BLAKE3 hashes of both
//! sides agree and the data is fsynced is it renamed to its name, and the
//! directory fsynced: no reader ever sees half a file under the final name.
//!
//! Resuming is verified, never trusted by size: the side holding a partial
//! offers its length and the hash of that prefix; the side holding the
//! source hashes the same prefix and answers with where to start (the
//! offered offset if equal, else 0). See `### files` in docs/PROTOCOL.md.

use crate::Ctx;
use crate::jail::{self, META_SUFFIX, PARTIAL_SUFFIX, failure, open_private_file};
use crate::protocol::{self, CHUNK, Event, Message, PutOptions, Reader};
use crate::quota::{Active, ActiveKey, Reservation};
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{AtFlags, RenameFlags, SeekFrom, Timestamps};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sockd_plugin::{Code, Failure, stream};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Names up to this long keep a readable partial name; longer ones use a
/// hash so that `.NAME.sockd-partial` still fits in 255 bytes.
const READABLE_NAME: usize = 200;
static ZEROS: [u8; CHUNK] = [0; CHUNK];
/// How long a put waits for an earlier upload of the same file to end.
const CLAIM_WAIT: Duration = Duration::from_millis(50);
const CLAIM_TRIES: u32 = 100;

/// The partial and metadata file names for the target `name`.
pub fn partial_names(name: &str) -> (String, String) {
    let stem = if name.len() <= READABLE_NAME {
        name.to_string()
    } else {
        blake3::hash(name.as_bytes()).to_hex()[..32].to_string()
    };
    (
        format!(".{stem}{PARTIAL_SUFFIX}"),
        format!(".{stem}{META_SUFFIX}"),
    )
}

/// What the metadata file beside a partial records.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Meta {
    size: u64,
    source: String,
    /// The target, for whoever looks at the file.
    path: String,
}

fn read_meta(dir: BorrowedFd<'_>, name: &str) -> Option<Meta> {
    let fd = open_private_file(dir, name, false).ok()?;
    let mut text = String::new();
    File::from(fd)
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

fn write_meta(dir: BorrowedFd<'_>, name: &str, meta: &Meta, shown: &str) -> Result<(), Failure> {
    let fd = open_private_file(dir, name, true).map_err(|e| failure(shown, e))?;
    let mut file = File::from(fd);
    let text = serde_json::to_vec(meta).map_err(|e| Failure::internal(e.to_string()))?;
    file.set_len(0)
        .and_then(|()| file.write_all(&text))
        .map_err(|e| io_failure(shown, &e))
}

/// Like [`jail::failure`] for std I/O errors.
fn io_failure(shown: &str, e: &std::io::Error) -> Failure {
    match e.raw_os_error() {
        Some(n) => failure(shown, Errno::from_raw_os_error(n)),
        None => Failure::io(shown, e),
    }
}

/// BLAKE3 of the first `len` bytes of `file`.
fn hash_prefix(
    file: &File,
    len: u64,
    buf: &mut [u8],
    shown: &str,
) -> Result<blake3::Hasher, Failure> {
    let mut hasher = blake3::Hasher::new();
    let mut pos = 0u64;
    while pos < len {
        let want = usize::try_from(len - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = file
            .read_at(&mut buf[..want], pos)
            .map_err(|e| io_failure(shown, &e))?;
        if n == 0 {
            return Err(Failure::new(
                Code::Conflict,
                format!("{shown}: the file shrank while it was being read"),
            ));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher)
}

fn hex(hasher: &blake3::Hasher) -> String {
    hasher.finalize().to_hex().to_string()
}

/// Status of a file as a `source` identity: device, inode, size and
/// modification time in nanoseconds.
fn identity(st: &rustix::fs::Stat) -> String {
    format!(
        "{}:{}:{}:{}.{:09}",
        st.st_dev, st.st_ino, st.st_size, st.st_mtime, st.st_mtime_nsec
    )
}

fn file_size(st: &rustix::fs::Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

/// `put PATH OPTIONS`: receives a file.
pub fn put(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let [path, options] = args else {
        return Err(Failure::bad_request("usage: put PATH OPTIONS"));
    };
    let opts: PutOptions = protocol::options(Some(options), "put")?;
    let target = ctx.resolve(path)?;
    let Some((parent, name)) = target.split_last() else {
        return Err(Failure::new(
            Code::IsADirectory,
            format!("{path}: is your home directory"),
        ));
    };
    let dir = ctx.jail.open_dir(&parent, path)?;
    let (partial_name, meta_name) = partial_names(name);
    let dir_st = rustix::fs::fstat(&dir).map_err(|e| failure(path, e))?;
    let Some(_active) = claim(ctx, (dir_st.st_dev, dir_st.st_ino, partial_name.clone())) else {
        return Err(Failure::new(
            Code::Busy,
            format!("{path}: another upload to this file is in progress"),
        ));
    };
    // Only now: the upload this one waited for (a re-run's interrupted
    // predecessor) may just have given the file its name.
    let existing = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if jail::is_dir(&st) => {
            return Err(Failure::new(
                Code::IsADirectory,
                format!("{path}: is a directory"),
            ));
        }
        // The same content again (a re-run after an upload whose result
        // never reached the client) is not a conflict: the client checks.
        Ok(st) if !opts.force && jail::is_file(&st) && file_size(&st) == opts.size => {
            return confirm_same(ctx, &target, path, opts.size);
        }
        Ok(_) if !opts.force => {
            return Err(Failure::new(
                Code::AlreadyExists,
                format!("{path}: already exists; use --force to replace it"),
            ));
        }
        Ok(_) => true,
        Err(Errno::NOENT) => false,
        Err(e) => return Err(failure(path, e)),
    };
    ctx.quota.sweep_dir(dir.as_fd(), ctx.settings.partial_ttl());

    // A partial of the same source may be resumed; any other is restarted.
    let meta = Meta {
        size: opts.size,
        source: opts.source.clone(),
        path: target.to_string(),
    };
    let old = match open_private_file(dir.as_fd(), &partial_name, false) {
        Ok(fd) => Some(File::from(fd)),
        Err(Errno::NOENT) => None,
        Err(Errno::MLINK) => {
            return Err(Failure::new(
                Code::PermissionDenied,
                format!("{path}: its partial upload has several hard links; refused"),
            ));
        }
        Err(e) => return Err(failure(path, e)),
    };
    let mut candidate = 0u64;
    if let Some(file) = &old {
        let len = file.metadata().map_err(|e| io_failure(path, &e))?.len();
        let same_source =
            !opts.source.is_empty() && read_meta(dir.as_fd(), &meta_name).as_ref() == Some(&meta);
        if same_source && len <= opts.size {
            candidate = len;
        } else if len > 0 {
            file.set_len(0).map_err(|e| io_failure(path, &e))?;
            ctx.quota.adjust(-i128::from(len), 0);
        }
    }
    let mut reservation =
        ctx.quota
            .reserve(ctx.limits, opts.size - candidate, u64::from(old.is_none()))?;
    let file = match old {
        Some(file) => file,
        None => {
            let fd = open_private_file(dir.as_fd(), &partial_name, true)
                .map_err(|e| failure(path, e))?;
            reservation.use_file();
            File::from(fd)
        }
    };
    write_meta(dir.as_fd(), &meta_name, &meta, path)?;

    let ch = ctx.call.channel();
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = hash_prefix(&file, candidate, &mut buf, path)?;
    protocol::send(
        ch,
        &Message::Offer {
            offset: candidate,
            hash: hex(&hasher),
        },
    )?;
    let mut reader = Reader::new(ch);
    let start = match reader.message(&mut buf, "start")? {
        Message::Start { offset } if offset == candidate => offset,
        Message::Start { offset: 0 } => {
            file.set_len(0).map_err(|e| io_failure(path, &e))?;
            ctx.quota.adjust(-i128::from(candidate), 0);
            reservation.grow(candidate)?;
            hasher = blake3::Hasher::new();
            0
        }
        other => {
            return Err(Failure::bad_request(format!(
                "expected a start message at 0 or {candidate}, got {other:?}"
            )));
        }
    };
    if start > 0 {
        ctx.call.host().debug(&format!(
            "put {target}: resuming at {start} of {} bytes",
            opts.size
        ));
    }

    let (received, end) = receive(
        ctx,
        &mut reader,
        &file,
        start,
        &opts,
        &mut hasher,
        &mut reservation,
        &mut buf,
        path,
    )?;
    let hash = hex(&hasher);
    let Some(end) = end.filter(|(size, _)| *size == received && received == opts.size) else {
        return Err(Failure::bad_request(format!(
            "{path}: the upload ended after {received} of {} bytes; run put again to resume",
            opts.size
        )));
    };
    if end.1 != hash {
        // Nothing to resume from a partial that does not match its source.
        discard(ctx, dir.as_fd(), &partial_name, &meta_name);
        return Err(Failure::new(
            Code::Conflict,
            format!(
                "{path}: the content hash does not match the source's; the upload was discarded"
            ),
        ));
    }

    // Durable before visible, visible before the metadata goes.
    if let Some(mtime) = opts.mtime {
        let at = rustix::fs::Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        };
        let _ = rustix::fs::futimens(
            &file,
            &Timestamps {
                last_access: at,
                last_modification: at,
            },
        );
    }
    file.sync_all().map_err(|e| io_failure(path, &e))?;
    let replaced = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if existing => Some(st),
        _ => None,
    };
    let flags = if existing {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    match rustix::fs::renameat_with(&dir, partial_name.as_str(), &dir, name, flags) {
        Ok(()) => {}
        Err(Errno::EXIST) => {
            return Err(Failure::new(
                Code::AlreadyExists,
                format!("{path}: was created meanwhile; use --force to replace it"),
            ));
        }
        Err(e) => return Err(failure(path, e)),
    }
    if let Some(st) = replaced {
        let bytes = if jail::is_file(&st) {
            file_size(&st)
        } else {
            0
        };
        ctx.quota.adjust(-i128::from(bytes), -1);
    }
    jail::sync_dir(dir.as_fd()).map_err(|e| failure(path, e))?;
    let _ = rustix::fs::unlinkat(&dir, meta_name.as_str(), AtFlags::empty());
    protocol::send(
        ch,
        &Message::End {
            size: received,
            hash,
        },
    )?;
    ch.set_result(
        i64::try_from(received).unwrap_or(i64::MAX),
        &format!("{target}: {received} bytes"),
    );
    Ok(())
}

/// `put` of a file that exists with the upload's size, without --force: the
/// whole file is offered as if it were a complete partial. A client with
/// the same content starts at the end and confirms the hash: the upload
/// succeeds with nothing sent. Other content is refused as a conflict.
fn confirm_same(
    ctx: &Ctx<'_>,
    target: &jail::JailPath,
    path: &str,
    size: u64,
) -> Result<(), Failure> {
    let fd = ctx.jail.open_read(target, path)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| failure(path, e))?;
    if !jail::is_file(&st) || file_size(&st) != size {
        return Err(Failure::new(
            Code::AlreadyExists,
            format!("{path}: already exists; use --force to replace it"),
        ));
    }
    let file = File::from(fd);
    let mut buf = vec![0u8; CHUNK];
    let hash = hex(&hash_prefix(&file, size, &mut buf, path)?);
    let ch = ctx.call.channel();
    protocol::send(
        ch,
        &Message::Offer {
            offset: size,
            hash: hash.clone(),
        },
    )?;
    let mut reader = Reader::new(ch);
    let differs = || {
        Failure::new(
            Code::AlreadyExists,
            format!("{path}: already exists with other content; use --force to replace it"),
        )
    };
    match reader.message(&mut buf, "start")? {
        Message::Start { offset } if offset == size => {}
        Message::Start { offset: 0 } => return Err(differs()),
        other => {
            return Err(Failure::bad_request(format!(
                "expected a start message at 0 or {size}, got {other:?}"
            )));
        }
    }
    match reader.message(&mut buf, "end")? {
        Message::End {
            size: n,
            hash: theirs,
        } if n == size && theirs == hash => {}
        Message::End { .. } => return Err(differs()),
        other => {
            return Err(Failure::bad_request(format!(
                "expected the end message, got {other:?}"
            )));
        }
    }
    protocol::send(ch, &Message::End { size, hash })?;
    ch.set_result(
        i64::try_from(size).unwrap_or(i64::MAX),
        &format!("{target}: already up to date ({size} bytes)"),
    );
    Ok(())
}

/// Claims a partial file for this upload. An upload that was just
/// interrupted may take a moment to notice, so a re-run waits for it a
/// little before it gives up.
fn claim<'a>(ctx: &'a Ctx<'_>, key: ActiveKey) -> Option<Active<'a>> {
    for _ in 0..CLAIM_TRIES {
        if let Some(active) = ctx.quota.activate(key.clone()) {
            return Some(active);
        }
        if ctx.call.channel().is_cancelled() {
            break;
        }
        std::thread::sleep(CLAIM_WAIT);
    }
    None
}

/// Writes the client's data into the partial file from `start` until the
/// client ends the main stream; returns the size received and the client's
/// end message (size and hash), which comes before the end of the stream.
#[allow(clippy::too_many_arguments)]
fn receive(
    ctx: &Ctx<'_>,
    reader: &mut Reader,
    file: &File,
    start: u64,
    opts: &PutOptions,
    hasher: &mut blake3::Hasher,
    reservation: &mut Reservation<'_>,
    buf: &mut [u8],
    path: &str,
) -> Result<(u64, Option<(u64, String)>), Failure> {
    let mut writer = file;
    writer
        .seek(std::io::SeekFrom::Start(start))
        .map_err(|e| io_failure(path, &e))?;
    let mut received = start;
    let mut end = None;
    let too_much = || {
        Failure::bad_request(format!(
            "{path}: the client sent more than the {} bytes it announced",
            opts.size
        ))
    };
    loop {
        match reader.next(buf)? {
            Event::Data(n) => {
                if received + n as u64 > opts.size {
                    return Err(too_much());
                }
                reservation.use_bytes(n as u64)?;
                if let Err(e) = writer.write_all(&buf[..n]) {
                    return Err(write_failed(ctx, file, received + n as u64, path, &e));
                }
                hasher.update(&buf[..n]);
                received += n as u64;
            }
            Event::Message(Message::Zeros { len }) => {
                if received.checked_add(len).is_none_or(|end| end > opts.size) {
                    return Err(too_much());
                }
                reservation.use_bytes(len)?;
                hash_zeros(hasher, len);
                received += len;
                let extended = writer
                    .seek(std::io::SeekFrom::Start(received))
                    .and_then(|_| file.set_len(received));
                if let Err(e) = extended {
                    return Err(write_failed(ctx, file, received, path, &e));
                }
            }
            Event::Message(Message::End { size, hash }) => end = Some((size, hash)),
            Event::Message(other) => {
                return Err(Failure::bad_request(format!(
                    "unexpected message during put: {other:?}"
                )));
            }
            Event::Eof => return Ok((received, end)),
        }
    }
}

/// Accounts for what a failed write left on disk and says what happened.
fn write_failed(
    ctx: &Ctx<'_>,
    file: &File,
    counted: u64,
    path: &str,
    e: &std::io::Error,
) -> Failure {
    if let Ok(meta) = file.metadata() {
        // Only what reached the file stays counted.
        ctx.quota
            .adjust(i128::from(meta.len()) - i128::from(counted), 0);
    }
    let f = io_failure(path, e);
    if f.code == Code::NoSpace {
        return Failure::new(
            Code::NoSpace,
            format!(
                "{path}: no space left on the server's disk; the partial upload is kept: run the same put again to resume"
            ),
        );
    }
    f
}

fn hash_zeros(hasher: &mut blake3::Hasher, mut len: u64) {
    while len > 0 {
        let n = usize::try_from(len).unwrap_or(CHUNK).min(CHUNK);
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// Deletes a partial upload and its metadata, fixing the tally.
fn discard(ctx: &Ctx<'_>, dir: BorrowedFd<'_>, partial: &str, meta: &str) {
    if let Ok(st) = rustix::fs::statat(dir, partial, AtFlags::SYMLINK_NOFOLLOW)
        && rustix::fs::unlinkat(dir, partial, AtFlags::empty()).is_ok()
    {
        ctx.quota.adjust(-i128::from(file_size(&st)), -1);
    }
    let _ = rustix::fs::unlinkat(dir, meta, AtFlags::empty());
}

/// `get PATH`: sends a file.
pub fn get(ctx: &Ctx<'_>, args: &[&str]) -> Result<(), Failure> {
    let [path] = args else {
        return Err(Failure::bad_request("usage: get PATH"));
    };
    let target = ctx.resolve(path)?;
    let fd = ctx.jail.open_read(&target, path)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| failure(path, e))?;
    if jail::is_dir(&st) {
        return Err(Failure::new(
            Code::IsADirectory,
            format!("{path}: is a directory"),
        ));
    }
    if !jail::is_file(&st) {
        return Err(Failure::bad_request(format!("{path}: not a regular file")));
    }
    if st.st_nlink > 1 {
        // A hard link may name a file outside the home.
        return Err(Failure::new(
            Code::PermissionDenied,
            format!(
                "{path}: has {} hard links; files with several links are not served",
                st.st_nlink
            ),
        ));
    }
    let size = file_size(&st);
    let ch = ctx.call.channel();
    protocol::send(
        ch,
        &Message::Info {
            size,
            source: identity(&st),
            mtime: st.st_mtime,
        },
    )?;
    let file = File::from(fd);
    let mut buf = vec![0u8; CHUNK];
    let mut reader = Reader::new(ch);
    let (offset, their_hash) = match reader.message(&mut buf, "offer")? {
        Message::Offer { offset, hash } => (offset, hash),
        other => {
            return Err(Failure::bad_request(format!(
                "expected an offer message, got {other:?}"
            )));
        }
    };
    let mut start = 0;
    let mut hasher = blake3::Hasher::new();
    if offset > 0 && offset <= size {
        let prefix = hash_prefix(&file, offset, &mut buf, path)?;
        if hex(&prefix) == their_hash {
            start = offset;
            hasher = prefix;
        }
    }
    protocol::send(ch, &Message::Start { offset: start })?;
    send_data(ctx, &file, start, size, &mut hasher, &mut buf, path)?;
    let after = rustix::fs::fstat(&file).map_err(|e| failure(path, e))?;
    if identity(&after) != identity(&st) {
        return Err(Failure::new(
            Code::Conflict,
            format!("{path}: changed while it was being sent; run get again"),
        ));
    }
    protocol::send(
        ch,
        &Message::End {
            size,
            hash: hex(&hasher),
        },
    )?;
    ch.write_eof(stream::MAIN)?;
    ch.set_result(
        i64::try_from(size).unwrap_or(i64::MAX),
        &format!("{target}: {size} bytes"),
    );
    Ok(())
}

/// Streams `file[start..size]`, holes as [`Message::Zeros`].
fn send_data(
    ctx: &Ctx<'_>,
    file: &File,
    start: u64,
    size: u64,
    hasher: &mut blake3::Hasher,
    buf: &mut [u8],
    path: &str,
) -> Result<(), Failure> {
    let ch = ctx.call.channel();
    let mut pos = start;
    while pos < size {
        let (data, hole) = next_extent(file.as_fd(), pos, size);
        if data > pos {
            let len = data - pos;
            hash_zeros(hasher, len);
            protocol::send(ch, &Message::Zeros { len })?;
            pos = data;
            continue;
        }
        let end = hole.min(size);
        while pos < end {
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file
                .read_at(&mut buf[..want], pos)
                .map_err(|e| io_failure(path, &e))?;
            if n == 0 {
                return Err(Failure::new(
                    Code::Conflict,
                    format!("{path}: shrank while it was being sent; run get again"),
                ));
            }
            hasher.update(&buf[..n]);
            ch.write(stream::MAIN, &buf[..n])?;
            pos += n as u64;
        }
    }
    Ok(())
}

/// Where data resumes at or after `pos` and where it next stops (a hole or
/// the end), so holes of sparse files need not be sent. Filesystems that
/// do not know holes report all data.
fn next_extent(fd: BorrowedFd<'_>, pos: u64, size: u64) -> (u64, u64) {
    let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
        Ok(at) => at,
        // No data after pos: the rest is a hole.
        Err(Errno::NXIO) => size,
        Err(_) => pos,
    };
    let hole = if data >= size {
        size
    } else {
        rustix::fs::seek(fd, SeekFrom::Hole(data)).unwrap_or(size)
    };
    (data.min(size), hole.max(data + 1))
}

/// Keeps the type used by the tests of the jail honest: the partial names
/// must themselves be reserved names.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_reserved_and_fit() {
        let (p, m) = partial_names("file.bin");
        assert_eq!(
            (p.as_str(), m.as_str()),
            (".file.bin.sockd-partial", ".file.bin.sockd-meta")
        );
        assert!(jail::is_reserved(&p) && jail::is_reserved(&m));
        let long = "x".repeat(255);
        let (p, m) = partial_names(&long);
        assert!(p.len() <= 255 && m.len() <= 255);
        assert!(jail::is_reserved(&p) && jail::is_reserved(&m));
    }

    #[test]
    fn holes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_at(b"data", 4 << 20).unwrap();
        let (data, hole) = next_extent(f.as_fd(), 0, 8 << 20);
        // Either the filesystem reports the hole, or it reports data.
        assert!(data == 0 || (data <= 4 << 20 && data > 0), "{data}");
        assert!(hole > data);
        let (data, _) = next_extent(f.as_fd(), (4 << 20) + 4096, 8 << 20);
        assert!(data <= 8 << 20);
    }
}
