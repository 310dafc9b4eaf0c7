//! Starting the command: PATH lookup, the scrubbed environment, the home
//! directory, resource limits, pipes or a pseudo-terminal; the child itself
//! is started by [`crate::spawn`].

use crate::config::{DEFAULT_LANG, DEFAULT_PATH, Policy, Rlimits};
use crate::fdio;
use crate::request::PtyRequest;
use crate::spawn::{self, Limit};
use nix::fcntl::OFlag;
use nix::libc;
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the command's input goes.
pub enum Input {
    /// The write end of the stdin pipe.
    Pipe(OwnedFd),
    /// The pty master (shared with the output reader).
    Pty(Arc<OwnedFd>),
}

/// A started command.
pub struct Spawned {
    /// Also its session and process group id.
    pub pid: Pid,
    pub input: Input,
    /// (stream, read end): stdout → 0 and stderr → 1, or the pty master → 0.
    pub outputs: Vec<(u8, Arc<OwnedFd>)>,
}

/// The environment: nothing of the daemon's, only what is listed here.
pub fn environment(
    user: &str,
    home: &Path,
    policy: &Policy,
    pty: Option<&PtyRequest>,
) -> BTreeMap<String, OsString> {
    let mut env: BTreeMap<String, OsString> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert("HOME".into(), home.as_os_str().to_owned());
    env.insert("USER".into(), user.into());
    env.insert("LOGNAME".into(), user.into());
    env.insert("LANG".into(), DEFAULT_LANG.into());
    env.insert("SHELL".into(), "/bin/sh".into());
    for (k, v) in &policy.env {
        env.insert(k.clone(), v.into());
    }
    if let Some(pty) = pty {
        env.insert("TERM".into(), pty.term.clone().into());
    }
    env
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `name` like execvp would: as given if it contains a `/` (relative
/// to `home`; if it exists but cannot be executed, starting it fails with
/// "permission denied"), else the first executable file of that name in the
/// absolute directories of `path`.
pub fn resolve(name: &OsStr, path: &OsStr, home: &Path) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        let p = home.join(name);
        return p.exists().then_some(p);
    }
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| Path::new(OsStr::from_bytes(dir)))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Creates the home directory (mode 0700) if it is missing.
pub fn ensure_home(home: &Path) -> io::Result<()> {
    match std::fs::metadata(home) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home),
    }
}

/// Computes the limits in the parent, so the child only calls setrlimit.
/// Without privilege a limit cannot exceed the current hard limit, so it is
/// capped there instead of failing the command.
fn limits(r: &Rlimits) -> Vec<Limit> {
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    let mut out = Vec::new();
    let mut add = |resource: libc::__rlimit_resource_t, soft: Option<u64>, slack: u64| {
        let Some(soft) = soft else { return };
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: cur is a valid out-pointer.
        let max = if unsafe { libc::getrlimit(resource, &mut cur) } == 0 {
            cur.rlim_max
        } else {
            libc::RLIM_INFINITY
        };
        let mut hard = soft.saturating_add(slack);
        let mut soft = soft;
        if !privileged && max != libc::RLIM_INFINITY {
            hard = hard.min(max);
            soft = soft.min(hard);
        }
        out.push(Limit {
            resource,
            value: libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            },
        });
    };
    // CPU: SIGXCPU at the limit, SIGKILL a second later.
    add(libc::RLIMIT_CPU, r.cpu_secs, 1);
    add(libc::RLIMIT_NOFILE, r.nofile, 0);
    add(libc::RLIMIT_FSIZE, r.fsize_bytes, 0);
    add(libc::RLIMIT_NPROC, r.nproc, 0);
    out
}

/// Sets the terminal size of a pty (the kernel signals SIGWINCH to its
/// foreground process group).
pub fn set_window_size(master: &OwnedFd, cols: u16, rows: u16) {
    let (cols, rows) = if cols == 0 || rows == 0 {
        (80, 24)
    } else {
        (cols, rows)
    };
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// The pty's end-of-file character (VEOF, normally ^D), as the command's
/// side has it set (the master's own settings are not the terminal's).
pub fn eof_char(master: &OwnedFd) -> u8 {
    // SAFETY: TIOCGPTPEER opens the slave and returns a new descriptor,
    // which we own; it takes open flags as its argument.
    let fd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 4;
    }
    // SAFETY: fd was just returned by the kernel and is ours.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::sys::termios::tcgetattr(slave.as_fd())
        .map(|t| t.control_chars[nix::sys::termios::SpecialCharacterIndices::VEOF as usize])
        .ok()
        .filter(|&c| c != 0)
        .unwrap_or(4)
}

/// Opens a pseudo-terminal pair. Both ends are close-on-exec from the
/// start (`openpty(3)` does not set it, and another thread of the daemon
/// may fork at any moment: a leaked master would let another user's
/// command read this terminal).
fn open_pty(req: &PtyRequest) -> io::Result<(OwnedFd, OwnedFd)> {
    let master: PtyMaster = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY) // std adds O_CLOEXEC
        .open(&name)?;
    let master: OwnedFd = master.into();
    set_window_size(&master, req.cols, req.rows);
    Ok((master, slave.into()))
}

/// The size asked for the command's pipes.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// What [`spawn`] needs.
pub struct Spec<'a> {
    pub program: &'a Path,
    pub argv: &'a [OsString],
    pub env: &'a BTreeMap<String, OsString>,
    pub home: &'a Path,
    pub pty: Option<&'a PtyRequest>,
    pub rlimits: &'a Rlimits,
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created both descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the command (without copying the daemon: see [`spawn`]).
pub fn spawn(spec: &Spec<'_>) -> io::Result<Spawned> {
    let limits = limits(spec.rlimits);
    let launch = |stdio: [RawFd; 3]| {
        spawn::spawn(&spawn::Launch {
            program: spec.program,
            argv: spec.argv,
            env: spawn::env_entries(spec.env),
            cwd: spec.home,
            stdio,
            controlling_tty: spec.pty.is_some(),
            limits: &limits,
        })
    };

    if let Some(req) = spec.pty {
        let (master, slave) = open_pty(req)?;
        let raw = slave.as_raw_fd();
        let pid = launch([raw, raw, raw])?;
        // Close our copy of the slave now: the master reports EIO once
        // the command's side is closed everywhere.
        drop(slave);
        fdio::set_nonblocking(master.as_fd())?;
        let master = Arc::new(master);
        return Ok(Spawned {
            pid: Pid::from_raw(pid),
            input: Input::Pty(master.clone()),
            outputs: vec![(0, master)],
        });
    }

    let (child_stdin, stdin) = pipe()?;
    let (stdout, child_stdout) = pipe()?;
    let (stderr, child_stderr) = pipe()?;
    let pid = launch([
        child_stdin.as_raw_fd(),
        child_stdout.as_raw_fd(),
        child_stderr.as_raw_fd(),
    ])?;
    drop((child_stdin, child_stdout, child_stderr));
    for fd in [&stdin, &stdout, &stderr] {
        fdio::set_nonblocking(fd.as_fd())?;
        // Larger pipes than the default 64 KiB: fewer, larger reads and
        // frames for bulk data. Best effort (capped by pipe-max-size).
        // SAFETY: F_SETPIPE_SZ takes an int argument.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    Ok(Spawned {
        pid: Pid::from_raw(pid),
        input: Input::Pipe(stdin),
        outputs: vec![(0, Arc::new(stdout)), (1, Arc::new(stderr))],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn resolves_like_execvp() {
        let path = OsStr::new("/nonexistent:relative:/usr/bin:/bin");
        let sh = resolve(OsStr::new("sh"), path, Path::new("/")).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        assert_eq!(
            resolve(OsStr::new("no-such-program-xyz"), path, Path::new("/")),
            None
        );
        assert_eq!(
            resolve(OsStr::new("/bin/sh"), path, Path::new("/")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve(OsStr::new("bin/sh"), path, Path::new("/")),
            Some(PathBuf::from("/bin/sh"))
        );
        // In PATH, a directory or a non-executable file is not a program;
        // named with a slash, it is found (and fails to start: 126).
        assert_eq!(
            resolve(OsStr::new("tmp"), OsStr::new("/"), Path::new("/")),
            None
        );
        assert_eq!(
            resolve(OsStr::new("/tmp"), path, Path::new("/")),
            Some(PathBuf::from("/tmp"))
        );
        let plain = std::env::temp_dir().join(format!("sockd-exec-plain-{}", std::process::id()));
        std::fs::write(&plain, "x").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            resolve(plain.as_os_str(), path, Path::new("/")),
            Some(plain.clone())
        );
        let name = plain.file_name().unwrap();
        assert_eq!(
            resolve(name, std::env::temp_dir().as_os_str(), Path::new("/")),
            None
        );
        let _ = std::fs::remove_file(&plain);
    }

    #[test]
    fn environment_is_built_from_scratch() {
        let c = Config::parse("env = { EDITOR = \"vi\", LANG = \"fr_FR.UTF-8\" }").unwrap();
        let p = c.policy("u");
        let pty = PtyRequest {
            term: "xterm".into(),
            cols: 1,
            rows: 1,
        };
        let env = environment("u", Path::new("/h/u"), &p, Some(&pty));
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "EDITOR", "HOME", "LANG", "LOGNAME", "PATH", "SHELL", "TERM", "USER"
            ]
        );
        assert_eq!(env["LANG"], "fr_FR.UTF-8");
        assert_eq!(env["TERM"], "xterm");
        assert!(!environment("u", Path::new("/h"), &p, None).contains_key("TERM"));
    }
}
