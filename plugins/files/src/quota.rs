//! Per-user quotas: a tally of bytes and files, reservations taken before
//! data is written, and the walk that recounts a home from disk (and
//! sweeps expired partial files on the way).
//!
//! Every change to a user's tally happens under that user's lock, and an
//! upload reserves the whole rest of its announced size before it writes a
//! byte, so neither a client that lies about its size (data beyond the
//! announced size is refused) nor several uploads of one user at once can
//! go over the limit. What counts: the apparent size of regular files
//! (partial files included) and one per file, directory or other entry;
//! the small `.sockd-meta` files are the plugin's own and do not count.
//!
//! The tally is recounted from disk at a user's first call after the
//! daemon starts (and by `quota --recount`), so it agrees with the disk
//! even after a crash; it is also saved to
//! `<state_dir>/files/quota/<user>.json` for operators.

use crate::config::Limits;
use crate::jail::{self, META_SUFFIX, PARTIAL_SUFFIX};
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{AtFlags, Stat};
use serde::Serialize;
use sockd_plugin::{Code, Failure};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// How deep a recount or sweep descends; deeper trees are not counted.
const MAX_DEPTH: usize = 256;
/// How often a user's whole home is swept for expired partial files.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// An upload in progress: the directory (device, inode) and partial name.
pub type ActiveKey = (u64, u64, String);

/// The quotas of all users seen since the plugin started.
#[derive(Default)]
pub struct Quotas {
    users: Mutex<HashMap<String, Arc<UserQuota>>>,
}

impl Quotas {
    /// The quota state of `user`, whose home is `home`.
    pub fn user(&self, user: &str, home: &Path) -> Arc<UserQuota> {
        let mut users = lock(&self.users);
        users
            .entry(user.to_string())
            .or_insert_with(|| Arc::new(UserQuota::new(user, home)))
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few assignments; a panic cannot
    // leave them half-done, so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One user's tally.
pub struct UserQuota {
    state_file: Option<PathBuf>,
    inner: Mutex<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    /// Recounted from disk since the plugin started.
    counted: bool,
    last_sweep: Option<Instant>,
    bytes: u64,
    files: u64,
    reserved_bytes: u64,
    reserved_files: u64,
    /// Partial files being written now: never swept.
    active: HashSet<ActiveKey>,
}

/// What `quota` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub limit_bytes: u64,
    pub limit_files: u64,
    /// Bytes set aside for uploads in progress.
    pub reserved_bytes: u64,
}

#[derive(Serialize)]
struct Saved {
    bytes: u64,
    files: u64,
}

impl UserQuota {
    fn new(user: &str, home: &Path) -> UserQuota {
        // home = <state_dir>/home/<user>
        let state_file = home.parent().and_then(Path::parent).map(|state| {
            state
                .join("files")
                .join("quota")
                .join(format!("{user}.json"))
        });
        UserQuota {
            state_file,
            inner: Mutex::new(Tally::default()),
        }
    }

    /// Recounts from disk if that has not happened since the start, or
    /// sweeps the home if the last sweep is older than an hour (or `ttl`).
    pub fn prepare(&self, home: BorrowedFd<'_>, ttl: Duration) -> Result<(), Failure> {
        let mut t = lock(&self.inner);
        let due = t
            .last_sweep
            .is_none_or(|at| at.elapsed() >= SWEEP_EVERY.min(ttl));
        if !t.counted || due {
            self.recount_locked(&mut t, home, ttl)?;
        }
        Ok(())
    }

    /// Recounts the home from disk, deleting expired partial files.
    pub fn recount(&self, home: BorrowedFd<'_>, ttl: Duration) -> Result<(), Failure> {
        let mut t = lock(&self.inner);
        self.recount_locked(&mut t, home, ttl)
    }

    fn recount_locked(
        &self,
        t: &mut Tally,
        home: BorrowedFd<'_>,
        ttl: Duration,
    ) -> Result<(), Failure> {
        let mut totals = Totals::default();
        let sweep = Sweep {
            ttl,
            now: SystemTime::now(),
            active: &t.active,
        };
        walk(home, 0, &sweep, &mut totals)
            .map_err(|e| Failure::internal(format!("cannot count the files in your home: {e}")))?;
        t.bytes = totals.bytes;
        t.files = totals.files;
        t.counted = true;
        t.last_sweep = Some(Instant::now());
        self.save(t);
        Ok(())
    }

    /// Deletes the expired partial files of one directory (cheap: one
    /// directory read), fixing the tally.
    pub fn sweep_dir(&self, dir: BorrowedFd<'_>, ttl: Duration) {
        let mut t = lock(&self.inner);
        let sweep = Sweep {
            ttl,
            now: SystemTime::now(),
            active: &t.active,
        };
        let mut freed = Totals::default();
        sweep.dir(dir, &mut freed);
        t.bytes = t.bytes.saturating_sub(freed.bytes);
        t.files = t.files.saturating_sub(freed.files);
        if freed.files > 0 {
            self.save(&t);
        }
    }

    pub fn usage(&self, limits: Limits) -> Usage {
        let t = lock(&self.inner);
        Usage {
            bytes: t.bytes,
            files: t.files,
            limit_bytes: limits.bytes,
            limit_files: limits.files,
            reserved_bytes: t.reserved_bytes,
        }
    }

    /// Sets aside `bytes` and `files` under `limits`, or fails with
    /// [`Code::QuotaExceeded`] and changes nothing.
    pub fn reserve(
        &self,
        limits: Limits,
        bytes: u64,
        files: u64,
    ) -> Result<Reservation<'_>, Failure> {
        let mut t = lock(&self.inner);
        check(&t, limits, bytes, files)?;
        t.reserved_bytes += bytes;
        t.reserved_files += files;
        Ok(Reservation {
            quota: self,
            limits,
            bytes,
            files,
        })
    }

    /// Adds (or with negative values removes) usage that is already on
    /// disk: a directory made, a file deleted.
    pub fn adjust(&self, bytes: i128, files: i128) {
        let mut t = lock(&self.inner);
        t.bytes = apply(t.bytes, bytes);
        t.files = apply(t.files, files);
        self.save(&t);
    }

    /// Checks that `files` more entries fit (for mkdir, which cannot
    /// reserve: the directory exists as soon as it is made).
    pub fn check_files(&self, limits: Limits, files: u64) -> Result<(), Failure> {
        check(&lock(&self.inner), limits, 0, files)
    }

    /// Marks an upload's partial file as in use; `None` if another upload
    /// already writes it.
    pub fn activate(&self, key: ActiveKey) -> Option<Active<'_>> {
        let fresh = lock(&self.inner).active.insert(key.clone());
        // Built after the lock is released: dropping an Active takes it.
        fresh.then(|| Active { quota: self, key })
    }

    /// Saves the tally for operators; failures only cost that copy.
    fn save(&self, t: &Tally) {
        let Some(path) = &self.state_file else { return };
        let Some(dir) = path.parent() else { return };
        let text = match serde_json::to_string(&Saved {
            bytes: t.bytes,
            files: t.files,
        }) {
            Ok(text) => text,
            Err(_) => return,
        };
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, text + "\n"))
            .and_then(|()| std::fs::rename(&tmp, path));
    }
}

fn apply(value: u64, delta: i128) -> u64 {
    u64::try_from((i128::from(value) + delta).max(0)).unwrap_or(u64::MAX)
}

fn check(t: &Tally, limits: Limits, bytes: u64, files: u64) -> Result<(), Failure> {
    let used = t.bytes.saturating_add(t.reserved_bytes);
    if limits.bytes > 0 && bytes > 0 && used.saturating_add(bytes) > limits.bytes {
        let free = limits.bytes.saturating_sub(used);
        return Err(Failure::new(
            Code::QuotaExceeded,
            format!(
                "quota exceeded: this needs {} but only {} of your {} remain",
                human(bytes),
                human(free),
                human(limits.bytes)
            ),
        ));
    }
    let used = t.files.saturating_add(t.reserved_files);
    if limits.files > 0 && files > 0 && used.saturating_add(files) > limits.files {
        return Err(Failure::new(
            Code::QuotaExceeded,
            format!(
                "quota exceeded: you have {} of at most {} files",
                used, limits.files
            ),
        ));
    }
    Ok(())
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

/// Space set aside for an upload; what is not used is given back on drop.
pub struct Reservation<'a> {
    quota: &'a UserQuota,
    limits: Limits,
    bytes: u64,
    files: u64,
}

impl Reservation<'_> {
    /// Turns `n` reserved bytes into used ones, before they are written.
    /// Fails if the reservation is too small (the client sent more than it
    /// announced).
    pub fn use_bytes(&mut self, n: u64) -> Result<(), Failure> {
        if n > self.bytes {
            return Err(Failure::bad_request(
                "the client sent more data than it announced",
            ));
        }
        let mut t = lock(&self.quota.inner);
        self.bytes -= n;
        t.reserved_bytes -= n;
        t.bytes += n;
        Ok(())
    }

    /// Turns the reserved file into a used one (the partial was created).
    pub fn use_file(&mut self) {
        if self.files == 0 {
            return;
        }
        let mut t = lock(&self.quota.inner);
        self.files -= 1;
        t.reserved_files -= 1;
        t.files += 1;
    }

    /// Reserves `n` more bytes (after a failed resume freed as many).
    pub fn grow(&mut self, n: u64) -> Result<(), Failure> {
        let mut t = lock(&self.quota.inner);
        check(&t, self.limits, n, 0)?;
        t.reserved_bytes += n;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut t = lock(&self.quota.inner);
        t.reserved_bytes -= self.bytes;
        t.reserved_files -= self.files;
        self.quota.save(&t);
    }
}

/// An upload's claim on its partial file; released on drop.
pub struct Active<'a> {
    quota: &'a UserQuota,
    key: ActiveKey,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        lock(&self.quota.inner).active.remove(&self.key);
    }
}

#[derive(Debug, Default)]
struct Totals {
    bytes: u64,
    files: u64,
}

/// What a sweep deletes: partial files (and their metadata) older than
/// `ttl` that no upload is writing.
struct Sweep<'a> {
    ttl: Duration,
    now: SystemTime,
    active: &'a HashSet<ActiveKey>,
}

fn mtime(st: &Stat) -> SystemTime {
    let secs = u64::try_from(st.st_mtime).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

impl Sweep<'_> {
    fn expired(&self, st: &Stat) -> bool {
        self.now
            .duration_since(mtime(st))
            .is_ok_and(|age| age >= self.ttl)
    }

    /// Sweeps one directory; adds what it deleted to `freed`.
    fn dir(&self, dir: BorrowedFd<'_>, freed: &mut Totals) {
        let Ok(names) = jail::read_names(dir) else {
            return;
        };
        let Ok(dir_st) = rustix::fs::fstat(dir) else {
            return;
        };
        for name in names {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            if jail::is_reserved(&name)
                && let Ok(st) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                && let Some(freed_here) = self.entry(dir, &dir_st, &name, &st)
            {
                freed.bytes += freed_here.bytes;
                freed.files += freed_here.files;
            }
        }
    }

    /// Deletes `name` if it is an expired partial or metadata file; returns
    /// what that freed from the tally.
    fn entry(&self, dir: BorrowedFd<'_>, dir_st: &Stat, name: &str, st: &Stat) -> Option<Totals> {
        let partial = partial_of(name)?;
        let key = (dir_st.st_dev, dir_st.st_ino, partial.clone());
        if self.active.contains(&key) || !self.expired(st) {
            return None;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).ok()?;
        if name.ends_with(META_SUFFIX) {
            // Metadata never counted.
            return Some(Totals::default());
        }
        let bytes = if jail::is_file(st) {
            u64::try_from(st.st_size).unwrap_or(0)
        } else {
            0
        };
        Some(Totals { bytes, files: 1 })
    }
}

/// The partial file name a reserved name belongs to.
fn partial_of(name: &str) -> Option<String> {
    if !jail::is_reserved(name) {
        return None;
    }
    match name.strip_suffix(META_SUFFIX) {
        Some(stem) => Some(format!("{stem}{PARTIAL_SUFFIX}")),
        None => Some(name.to_string()),
    }
}

/// Counts `dir` recursively into `totals`, sweeping expired partials.
fn walk(
    dir: BorrowedFd<'_>,
    depth: usize,
    sweep: &Sweep<'_>,
    totals: &mut Totals,
) -> Result<(), rustix::io::Errno> {
    let names = jail::read_names(dir)?;
    let dir_st = rustix::fs::fstat(dir)?;
    for name in names {
        let st = match rustix::fs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Deleted meanwhile.
            Err(_) => continue,
        };
        if let Ok(text) = std::str::from_utf8(&name)
            && jail::is_reserved(text)
            && (sweep.entry(dir, &dir_st, text, &st).is_some() || text.ends_with(META_SUFFIX))
        {
            // Swept now, or metadata, which does not count.
            continue;
        }
        totals.files += 1;
        if jail::is_file(&st) {
            totals.bytes += u64::try_from(st.st_size).unwrap_or(0);
        } else if jail::is_dir(&st) && depth < MAX_DEPTH {
            let Ok(name) = std::str::from_utf8(&name) else {
                continue;
            };
            if let Ok(sub) = jail::open_subdir(dir, name) {
                walk(sub.as_fd(), depth + 1, sweep, totals)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jail::Jail;

    const NO_LIMIT: Limits = Limits { bytes: 0, files: 0 };

    #[test]
    fn reservations_cannot_exceed_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let q = UserQuota::new("u", &root.path().join("home/u"));
        let limits = Limits {
            bytes: 100,
            files: 2,
        };
        let mut a = q.reserve(limits, 60, 1).unwrap();
        let e = q.reserve(limits, 41, 0).err().unwrap();
        assert_eq!(e.code, Code::QuotaExceeded);
        a.use_bytes(50).unwrap();
        assert!(a.use_bytes(11).is_err(), "more than reserved");
        a.use_file();
        drop(a);
        let u = q.usage(limits);
        assert_eq!((u.bytes, u.files, u.reserved_bytes), (50, 1, 0));
        assert!(q.reserve(limits, 50, 1).is_ok());
        assert!(q.reserve(limits, 51, 0).is_err());
        assert!(q.reserve(limits, 0, 2).is_err());
        assert!(q.reserve(NO_LIMIT, u64::MAX / 2, 100).is_ok());
        q.adjust(-50, -1);
        assert_eq!(q.usage(limits).bytes, 0);
        let saved = std::fs::read_to_string(root.path().join("files/quota/u.json")).unwrap();
        assert_eq!(saved.trim(), r#"{"bytes":0,"files":0}"#);
    }

    #[test]
    fn recount_agrees_with_the_disk_and_sweeps_old_partials() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home/u");
        let jail = Jail::open(&home).unwrap();
        std::fs::create_dir(home.join("d")).unwrap();
        std::fs::write(home.join("d/a"), vec![1; 10]).unwrap();
        std::fs::write(home.join("b"), vec![1; 5]).unwrap();
        std::fs::write(home.join(".c.sockd-partial"), vec![1; 7]).unwrap();
        std::fs::write(home.join(".c.sockd-meta"), b"{}").unwrap();
        std::os::unix::fs::symlink("/", home.join("link")).unwrap();
        let q = UserQuota::new("u", &home);
        q.prepare(jail.fd(), Duration::from_secs(3600)).unwrap();
        let u = q.usage(NO_LIMIT);
        // d, d/a, b, the partial and the link; the metadata does not count.
        assert_eq!((u.bytes, u.files), (22, 5));
        q.recount(jail.fd(), Duration::ZERO).unwrap();
        assert!(!home.join(".c.sockd-partial").exists());
        assert!(!home.join(".c.sockd-meta").exists());
        let u = q.usage(NO_LIMIT);
        assert_eq!((u.bytes, u.files), (15, 4));
    }

    #[test]
    fn active_partials_are_not_swept() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home/u");
        let jail = Jail::open(&home).unwrap();
        std::fs::write(home.join(".c.sockd-partial"), vec![1; 7]).unwrap();
        let st = rustix::fs::fstat(jail.fd()).unwrap();
        let q = UserQuota::new("u", &home);
        let key = (st.st_dev, st.st_ino, ".c.sockd-partial".to_string());
        let active = q.activate(key.clone()).unwrap();
        assert!(q.activate(key).is_none(), "one upload per partial");
        q.sweep_dir(jail.fd(), Duration::ZERO);
        assert!(home.join(".c.sockd-partial").exists());
        drop(active);
        q.sweep_dir(jail.fd(), Duration::ZERO);
        assert!(!home.join(".c.sockd-partial").exists());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(5), "5 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }
}
