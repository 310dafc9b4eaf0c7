//! The home jail: every path a client names is resolved inside the user's
//! home and nowhere else.
//!
//! Two layers, so neither has to be perfect alone:
//!
//! 1. [`JailPath::resolve`] turns the client's text into clean components:
//!    absolute paths start at the home (like a chroot), `.` and empty parts
//!    vanish, `..` stops at the home, and names with control characters,
//!    longer than 255 bytes or reserved for unfinished uploads are refused.
//! 2. The kernel resolves those components with
//!    `openat2(home_fd, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so
//!    a symlink (planted by another command, or swapped in mid-transfer)
//!    that leads out of the home fails with `EXDEV` instead of being
//!    followed. Operations then work on the opened directory's fd and a
//!    single name, never on a path string again.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use sockd_plugin::{Code, Failure};
use std::fmt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// The longest name of one path component, as on every common filesystem.
pub const MAX_NAME: usize = 255;
/// The longest path a client may name (Linux's PATH_MAX minus the NUL).
pub const MAX_PATH: usize = 4095;
/// Suffix of the hidden file an upload writes before it is complete.
pub const PARTIAL_SUFFIX: &str = ".sockd-partial";
/// Suffix of the small file beside a partial that says what it belongs to.
pub const META_SUFFIX: &str = ".sockd-meta";

/// The resolution rules for paths the client named.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
/// For the plugin's own walks: no symlink is followed at all.
const BENEATH_NO_LINKS: ResolveFlags = BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// True for names the plugin keeps for itself (partials and their
/// metadata): hidden from listings and refused as client paths.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with('.') && (name.ends_with(PARTIAL_SUFFIX) || name.ends_with(META_SUFFIX))
}

/// A path inside the home, as clean components (empty: the home itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JailPath {
    parts: Vec<String>,
}

impl JailPath {
    /// The home itself.
    pub fn root() -> JailPath {
        JailPath::default()
    }

    /// Resolves `input` against `cwd` (absolute paths start at the home).
    pub fn resolve(cwd: &JailPath, input: &str) -> Result<JailPath, Failure> {
        if input.is_empty() {
            return Err(Failure::bad_request("empty path"));
        }
        if input.len() > MAX_PATH {
            return Err(Failure::new(
                Code::NameTooLong,
                format!("path too long ({} bytes; at most {MAX_PATH})", input.len()),
            ));
        }
        if let Some(c) = input.chars().find(|c| c.is_control()) {
            return Err(Failure::bad_request(format!(
                "{}: control characters ({}) are not allowed in names",
                input.escape_debug(),
                c.escape_debug()
            )));
        }
        let mut parts = if input.starts_with('/') {
            Vec::new()
        } else {
            cwd.parts.clone()
        };
        for part in input.split('/') {
            match part {
                "" | "." => {}
                // Like a chroot: the parent of the home is the home.
                ".." => {
                    parts.pop();
                }
                name => {
                    check_name(name, input)?;
                    parts.push(name.to_string());
                }
            }
        }
        // A short relative path under a deep working directory can still be
        // too long to name: refuse it here, so every JailPath (a `cd`
        // target too) can be shown and resolved again. Found by fuzzing.
        let resolved_len: usize = parts.iter().map(|p| p.len() + 1).sum();
        if resolved_len > MAX_PATH {
            return Err(Failure::new(
                Code::NameTooLong,
                format!(
                    "{}: path too long once resolved against the working directory \
                     ({resolved_len} bytes; at most {MAX_PATH}); use a shorter path or `cd` higher",
                    shorten(input)
                ),
            ));
        }
        Ok(JailPath { parts })
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The last component (`None` for the home).
    pub fn name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// The parent directory and the last component; `None` for the home.
    pub fn split_last(&self) -> Option<(JailPath, &str)> {
        let (name, rest) = self.parts.split_last()?;
        Some((
            JailPath {
                parts: rest.to_vec(),
            },
            name,
        ))
    }

    pub fn join(&self, name: &str) -> JailPath {
        let mut parts = self.parts.clone();
        parts.push(name.to_string());
        JailPath { parts }
    }

    /// True if `other` is this path or inside it.
    pub fn contains(&self, other: &JailPath) -> bool {
        other.parts.starts_with(&self.parts)
    }

    /// The path relative to the home, for `openat2` (`.` for the home).
    pub fn relative(&self) -> String {
        if self.parts.is_empty() {
            ".".to_string()
        } else {
            self.parts.join("/")
        }
    }
}

/// `/a/b`: how the client sees the path (`/` is the home).
impl fmt::Display for JailPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("/");
        }
        for part in &self.parts {
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

/// Checks one component of a client path.
fn check_name(name: &str, input: &str) -> Result<(), Failure> {
    if name.len() > MAX_NAME {
        return Err(Failure::new(
            Code::NameTooLong,
            format!(
                "{}: name too long ({} bytes; at most {MAX_NAME})",
                shorten(input),
                name.len()
            ),
        ));
    }
    if is_reserved(name) {
        return Err(Failure::bad_request(format!(
            "{input}: names ending in {PARTIAL_SUFFIX} or {META_SUFFIX} are reserved for unfinished uploads"
        )));
    }
    Ok(())
}

/// Keeps error messages on one readable line even for absurd names.
pub fn shorten(text: &str) -> String {
    const KEEP: usize = 60;
    if text.chars().count() <= KEEP {
        return text.to_string();
    }
    let head: String = text.chars().take(KEEP).collect();
    format!("{head}...")
}

/// Maps an error from a jailed system call to a failure the client
/// understands; `shown` is the path as the client named it.
pub fn failure(shown: &str, e: Errno) -> Failure {
    match e {
        Errno::XDEV => Failure::new(
            Code::PermissionDenied,
            format!("{shown}: leads outside your home (through a symbolic link); refused"),
        ),
        Errno::LOOP => Failure::new(
            Code::PermissionDenied,
            format!("{shown}: too many or forbidden symbolic links; refused"),
        ),
        Errno::NAMETOOLONG => Failure::new(Code::NameTooLong, format!("{shown}: name too long")),
        Errno::NOSPC | Errno::DQUOT => Failure::new(
            Code::NoSpace,
            format!("{shown}: no space left on the server's disk"),
        ),
        e => Failure::io(shown, &std::io::Error::from(e)),
    }
}

/// File types as the protocol names them.
pub fn type_name(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "link",
        _ => "other",
    }
}

pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

pub fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// One user's home, held open as a directory fd.
pub struct Jail {
    home: OwnedFd,
}

impl Jail {
    /// Opens the home, creating it (mode 0700) on first use.
    pub fn open(home: &Path) -> Result<Jail, Failure> {
        if let Some(parent) = home.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Failure::internal(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(home) {
            Ok(()) => {
                // The umask may have taken bits away; say exactly 0700.
                let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Failure::internal(format!(
                    "cannot create the home {}: {e}",
                    home.display()
                )));
            }
        }
        let fd = rustix::fs::open(
            home,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Failure::internal(format!("cannot open the home {}: {e}", home.display())))?;
        Ok(Jail { home: fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.home.as_fd()
    }

    /// Opens `path` (a directory) inside the home.
    pub fn open_dir(&self, path: &JailPath, shown: &str) -> Result<OwnedFd, Failure> {
        open_beneath(
            self.fd(),
            &path.relative(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            BENEATH,
        )
        .map_err(|e| failure(shown, e))
    }

    /// Opens `path` for reading, following symlinks only inside the home.
    pub fn open_read(&self, path: &JailPath, shown: &str) -> Result<OwnedFd, Failure> {
        open_beneath(self.fd(), &path.relative(), OFlags::RDONLY, BENEATH)
            .map_err(|e| failure(shown, e))
    }

    /// Status of `path` itself (a final symlink is not followed).
    pub fn stat(&self, path: &JailPath, shown: &str) -> Result<Stat, Failure> {
        match path.split_last() {
            None => rustix::fs::fstat(self.fd()).map_err(|e| failure(shown, e)),
            Some((parent, name)) => {
                let dir = self.open_dir(&parent, shown)?;
                rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| failure(shown, e))
            }
        }
    }
}

/// `openat2` with the jail's rules, retrying the `EAGAIN` the kernel
/// returns when a concurrent rename made the check inconclusive.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    open_beneath_mode(dir, path, flags, Mode::empty(), resolve)
}

pub fn open_beneath_mode(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN) if tries < 100 => tries += 1,
            other => return other,
        }
    }
}

/// Opens the entry `name` of `dir` as a directory without following any
/// symlink (the plugin's own walks: recount, sweep, recursive removal).
pub fn open_subdir(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    open_beneath(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        BENEATH_NO_LINKS,
    )
}

/// Opens (or creates, mode 0600) the plain file `name` in `dir` for reading
/// and writing, refusing symlinks and files with more than one link (a hard
/// link could be a file outside the home).
pub fn open_private_file(dir: BorrowedFd<'_>, name: &str, create: bool) -> Result<OwnedFd, Errno> {
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW;
    if create {
        flags |= OFlags::CREATE;
    }
    let mode = if create {
        Mode::from_raw_mode(0o600)
    } else {
        Mode::empty()
    };
    let fd = open_beneath_mode(dir, name, flags, mode, BENEATH_NO_LINKS)?;
    let st = rustix::fs::fstat(&fd)?;
    if !is_file(&st) {
        return Err(Errno::ISDIR);
    }
    if st.st_nlink > 1 {
        return Err(Errno::MLINK);
    }
    Ok(fd)
}

/// Names in `dir`, without `.` and `..`, as raw bytes.
pub fn read_names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Flushes a directory, so a rename or unlink in it is durable.
pub fn sync_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::fs::fsync(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(cwd: &str, input: &str) -> Result<String, Failure> {
        let cwd = JailPath::resolve(&JailPath::root(), cwd).unwrap();
        JailPath::resolve(&cwd, input).map(|p| p.to_string())
    }

    #[test]
    fn paths_stay_in_the_home() {
        assert_eq!(resolve("/", "a/b").unwrap(), "/a/b");
        assert_eq!(resolve("/a", "b").unwrap(), "/a/b");
        assert_eq!(resolve("/a", "/b").unwrap(), "/b");
        assert_eq!(resolve("/a", "..").unwrap(), "/");
        assert_eq!(resolve("/a", "../../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(resolve("/", "/../..//./x/").unwrap(), "/x");
        assert_eq!(resolve("/a/b", "./../c").unwrap(), "/a/c");
        assert_eq!(
            JailPath::resolve(&JailPath::root(), "/")
                .unwrap()
                .relative(),
            "."
        );
        assert_eq!(
            JailPath::resolve(&JailPath::root(), "x/y")
                .unwrap()
                .relative(),
            "x/y"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(resolve("/", "a\nb").unwrap_err().code, Code::BadRequest);
        assert_eq!(resolve("/", "a\0b").unwrap_err().code, Code::BadRequest);
        assert_eq!(resolve("/", "\x1b[31m").unwrap_err().code, Code::BadRequest);
        assert_eq!(resolve("/", "").unwrap_err().code, Code::BadRequest);
        let long = "x".repeat(256);
        assert_eq!(resolve("/", &long).unwrap_err().code, Code::NameTooLong);
        assert!(resolve("/", &"x".repeat(255)).is_ok());
        assert_eq!(
            resolve("/", &"a/".repeat(3000)).unwrap_err().code,
            Code::NameTooLong
        );
        let e = resolve("/", "d/.f.sockd-partial").unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        assert!(e.message.contains("reserved"), "{}", e.message);
        assert!(
            resolve("/", "f.sockd-partial").is_ok(),
            "only hidden names are reserved"
        );
    }

    /// Found by the `jail_resolve` fuzz target: a relative path under a
    /// deep working directory resolved to a path longer than MAX_PATH,
    /// which could then never be named again (its own `/a/b` form was
    /// refused).
    #[test]
    fn resolved_paths_can_always_be_named_again() {
        let deep = format!("/{}", vec!["d".repeat(200); 20].join("/"));
        let cwd = JailPath::resolve(&JailPath::root(), &deep).unwrap();
        let e = JailPath::resolve(&cwd, &"x".repeat(100)).unwrap_err();
        assert_eq!(e.code, Code::NameTooLong);
        assert!(e.message.contains("once resolved"), "{}", e.message);
        let fits = JailPath::resolve(&cwd, &"x".repeat(50)).unwrap();
        assert_eq!(
            JailPath::resolve(&JailPath::root(), &fits.to_string()),
            Ok(fits)
        );
        // The fuzzer's input had this shape: cwd `/jd`, then a 4093-byte
        // relative path (fuzz/seeds/jail_resolve/crash-f8e5467f...).
        let cwd = JailPath::resolve(&JailPath::root(), "jd").unwrap();
        let input = format!("{}/{}", vec!["y".repeat(250); 16].join("/"), "z".repeat(77));
        assert_eq!(input.len(), 4093);
        assert_eq!(
            JailPath::resolve(&cwd, &input).unwrap_err().code,
            Code::NameTooLong
        );
    }

    #[test]
    fn the_kernel_refuses_symlinks_out_of_the_home() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let jail = Jail::open(&home).unwrap();
        let mode = std::fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::os::unix::fs::symlink(outside.path(), home.join("out")).unwrap();
        std::os::unix::fs::symlink("../..", home.join("up")).unwrap();
        std::fs::create_dir(home.join("d")).unwrap();
        std::fs::write(home.join("d/f"), b"in").unwrap();
        std::os::unix::fs::symlink("d/f", home.join("inside")).unwrap();
        let p = |s: &str| JailPath::resolve(&JailPath::root(), s).unwrap();
        let e = jail
            .open_read(&p("out/secret"), "out/secret")
            .err()
            .unwrap();
        assert_eq!(e.code, Code::PermissionDenied);
        assert!(e.message.contains("outside your home"), "{}", e.message);
        let e = jail.open_dir(&p("up"), "up").err().unwrap();
        assert_eq!(e.code, Code::PermissionDenied);
        assert!(jail.open_read(&p("inside"), "inside").is_ok());
        let e = jail.open_dir(&p("d/f"), "d/f").err().unwrap();
        assert_eq!(e.code, Code::NotADirectory);
        let e = jail.open_read(&p("nope"), "nope").err().unwrap();
        assert_eq!(e.code, Code::NotFound);
        assert_eq!(e.message, "nope: no such file or directory");
        let st = jail.stat(&p("out"), "out").unwrap();
        assert_eq!(type_name(&st), "link");
    }

    #[test]
    fn private_files_refuse_links() {
        let root = tempfile::tempdir().unwrap();
        let jail = Jail::open(&root.path().join("h")).unwrap();
        let home = root.path().join("h");
        std::fs::write(root.path().join("outside"), b"o").unwrap();
        std::fs::hard_link(root.path().join("outside"), home.join("hard")).unwrap();
        std::os::unix::fs::symlink(root.path().join("outside"), home.join("soft")).unwrap();
        assert_eq!(
            open_private_file(jail.fd(), "hard", false).err(),
            Some(Errno::MLINK)
        );
        assert!(open_private_file(jail.fd(), "soft", true).is_err());
        assert!(open_private_file(jail.fd(), "new", true).is_ok());
        assert_eq!(std::fs::read(root.path().join("outside")).unwrap(), b"o");
    }
}
