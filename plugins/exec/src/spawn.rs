//! Starting a program without copying the daemon: `clone(CLONE_VM |
//! CLONE_VFORK)`, as glibc's `posix_spawn` does, with a child that makes
//! only plain system calls before `execve`.
//!
//! `fork` (what `std::process::Command` does as soon as a `pre_exec` hook
//! is set) copies the daemon's page tables and, in glibc, takes every
//! malloc arena lock for the duration: with hundreds of threads, every
//! thread that allocates waits for each spawn (docs/RELIABILITY.md). Here
//! the child shares the daemon's memory and only the calling thread is
//! suspended until the child has called `execve` (or failed to).
//!
//! The child runs on a stack of its own, with every signal blocked (a
//! handler of the daemon must never run in it), and does, in order:
//! standard streams (`dup2`), `chdir`, `setsid`, the controlling terminal
//! (`TIOCSCTTY`), `setrlimit`, default signal dispositions, close-on-exec
//! for every other descriptor, an empty signal mask, `execve`. Whatever
//! fails is reported as its errno through memory the two share, so the
//! caller gets the same `io::Error` as from `Command::spawn`.
//!
//! Everything the child needs (C strings, pointer arrays, limits) is built
//! before the clone: the child allocates nothing, takes no lock and cannot
//! panic.

use nix::libc;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// A resource limit as the child sets it.
#[derive(Clone, Copy)]
pub struct Limit {
    pub resource: libc::__rlimit_resource_t,
    pub value: libc::rlimit,
}

/// Signals whose disposition the child resets to the default even when
/// the daemon ignores them (an inherited "ignore" survives `execve`; a
/// handler does not, and the child resets every handler anyway).
const DEFAULT_SIGNALS: [libc::c_int; 16] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGPIPE,
    libc::SIGCHLD,
    libc::SIGALRM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGWINCH,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGURG,
];

/// What runs a program without a `#!` line, as `execvp` does.
const SHELL: &str = "/bin/sh";

/// The highest signal number on Linux (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// The child's stack: it makes a handful of system calls, no deep calls.
const CHILD_STACK: usize = 64 * 1024;

/// What the program gets.
pub struct Launch<'a> {
    /// Passed to `execve` as it is (after `chdir`).
    pub program: &'a Path,
    pub argv: &'a [OsString],
    /// `NAME=value` entries.
    pub env: Vec<OsString>,
    pub cwd: &'a Path,
    /// Become stdin, stdout and stderr.
    pub stdio: [RawFd; 3],
    /// Make stdin (a pty slave) the controlling terminal.
    pub controlling_tty: bool,
    pub limits: &'a [Limit],
}

/// The child's instructions, all pointers into memory the parent keeps
/// alive until the child has exec'd or exited.
struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    /// For a program the kernel cannot run (`ENOEXEC`: a script without
    /// a `#!` line): `/bin/sh PROGRAM ARGS...`, as `execvp` does.
    shell_argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    controlling_tty: bool,
    limits: &'a [Limit],
    /// The errno of the step that failed; 0 while none has.
    error: AtomicI32,
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument or variable contains a NUL byte",
        )
    })
}

/// A NULL-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Starts the program; returns its pid once it has called `execve`, or the
/// error of the step that failed (the child is reaped then).
pub fn spawn(launch: &Launch<'_>) -> io::Result<libc::pid_t> {
    let program = c_string(launch.program.as_os_str())?;
    let cwd = c_string(launch.cwd.as_os_str())?;
    let argv: Vec<CString> = launch
        .argv
        .iter()
        .map(|a| c_string(a))
        .collect::<io::Result<_>>()?;
    let env: Vec<CString> = launch
        .env
        .iter()
        .map(|e| c_string(e))
        .collect::<io::Result<_>>()?;
    let (argv_ptrs, env_ptrs) = (pointers(&argv), pointers(&env));
    let shell = c_string(OsStr::new(SHELL))?;
    let shell_argv: Vec<*const libc::c_char> = [shell.as_ptr(), program.as_ptr()]
        .into_iter()
        .chain(argv_ptrs.iter().skip(1).copied())
        .collect();
    let plan = ChildPlan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        shell_argv: shell_argv.as_ptr(),
        envp: env_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        stdio: launch.stdio,
        controlling_tty: launch.controlling_tty,
        limits: launch.limits,
        error: AtomicI32::new(0),
    };
    // Never read by us, so left uninitialised.
    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
    // The stack grows down on every Linux target Rust supports with clone;
    // keep its top 16-byte aligned as the ABIs want.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;

    // SAFETY: sigfillset/pthread_sigmask get valid pointers; the clone
    // child runs child_main on its own stack with `plan`, which outlives
    // it: CLONE_VFORK suspends this thread until the child has called
    // execve or exited, and only then is the mask restored and `plan`
    // (and the strings it points into) dropped.
    let (pid, clone_error) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &plan as *const ChildPlan<'_> as *mut libc::c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        (pid, clone_error)
    };
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    let errno = plan.error.load(Ordering::SeqCst);
    if errno != 0 {
        // The child has exited (CLONE_VFORK returned): reap it.
        let mut status = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        return Err(io::Error::from_raw_os_error(errno));
    }
    Ok(pid)
}

/// The child: runs the plan, and exits 127 if `execve` did not replace it.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `plan`, alive while we run (see spawn).
    let plan = unsafe { &*(arg as *const ChildPlan<'_>) };
    // SAFETY: child_setup is called once, in the child, as it requires.
    let errno = unsafe { child_setup(plan) };
    plan.error.store(errno.max(1), Ordering::SeqCst);
    // SAFETY: _exit ends this child only (no CLONE_THREAD: its own thread
    // group), without running the daemon's atexit handlers.
    unsafe { libc::_exit(127) }
}

fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns this thread's errno; the child
    // shares the suspended parent thread's, which nothing else reads now.
    unsafe { *libc::__errno_location() }
}

/// The steps between clone and execve; returns the errno of the one that
/// failed (execve only returns on failure).
///
/// # Safety
/// Only in the clone child of [`spawn`]: plain system calls on the child's
/// own descriptors, signal state and limits; nothing that allocates, locks
/// or may panic.
unsafe fn child_setup(plan: &ChildPlan<'_>) -> libc::c_int {
    // SAFETY: each call is a plain system call wrapper with valid
    // arguments; the pointers come from the parent's live plan.
    unsafe {
        // Standard streams. A source that is itself 0–2 is first moved
        // above 2, so that no dup2 overwrites a source still needed.
        let mut stdio = plan.stdio;
        for fd in stdio.iter_mut() {
            if *fd < 3 {
                let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3);
                if moved < 0 {
                    return errno();
                }
                *fd = moved;
            }
        }
        for (target, &fd) in (0..).zip(stdio.iter()) {
            if libc::dup2(fd, target) < 0 {
                return errno();
            }
        }
        if libc::chdir(plan.cwd) < 0 {
            return errno();
        }
        // A new session: the command leads its own process group, and all
        // it starts can be found and killed together.
        if libc::setsid() < 0 {
            return errno();
        }
        // stdin is the pty slave: make it the controlling terminal.
        if plan.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
            return errno();
        }
        for limit in plan.limits {
            if libc::setrlimit(limit.resource, &limit.value) < 0 {
                return errno();
            }
        }
        // No handler of the daemon may run here (it would run on the
        // daemon's memory), and the command starts with default
        // dispositions except for what the daemon ignores otherwise.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=MAX_SIGNAL {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut current) < 0 {
                continue; // glibc's own signals (32, 33) are refused
            }
            if current.sa_sigaction != libc::SIG_IGN || DEFAULT_SIGNALS.contains(&sig) {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        // Every other descriptor is close-on-exec already; make sure of it
        // (best effort: the flag needs Linux 5.11).
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
        let error = errno();
        if error == libc::ENOEXEC {
            libc::execve(*plan.shell_argv, plan.shell_argv, plan.envp);
            // As execvp: the error is the program's, not the shell's.
        }
        error
    }
}

/// `NAME=value` for each variable.
pub fn env_entries<'a>(
    vars: impl IntoIterator<Item = (&'a String, &'a OsString)>,
) -> Vec<OsString> {
    vars.into_iter()
        .map(|(k, v)| {
            let mut e = OsString::from(k);
            e.push("=");
            e.push(v);
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn launch(program: &str, argv: &[&str], cwd: &str, stdio: [RawFd; 3]) -> io::Result<i32> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        let limits = [Limit {
            resource: libc::RLIMIT_NOFILE,
            value: libc::rlimit {
                rlim_cur: 77,
                rlim_max: 77,
            },
        }];
        spawn(&Launch {
            program: Path::new(program),
            argv: &argv,
            env: vec!["FOO=bar".into()],
            cwd: Path::new(cwd),
            stdio,
            controlling_tty: false,
            limits: &limits,
        })
    }

    fn wait(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn runs_the_program_with_its_arguments_environment_and_limits() {
        let (read, write) = std::io::pipe().unwrap();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let pid = launch(
            "/bin/sh",
            &[
                "zero",
                "-c",
                "echo \"$0 $FOO $(ulimit -n) $(pwd) $(cut -d' ' -f6 /proc/$$/stat)\"",
                "one",
            ],
            "/tmp",
            [null.as_raw_fd(), write.as_raw_fd(), null.as_raw_fd()],
        )
        .unwrap();
        drop(write);
        let mut out = String::new();
        { read }.read_to_string(&mut out).unwrap();
        // The last field is the shell's session: its own.
        assert_eq!(out, format!("one bar 77 /tmp {pid}\n"));
        assert_eq!(wait(pid), 0);
    }

    #[test]
    fn a_program_without_a_shebang_line_runs_with_the_shell() {
        let dir = std::env::temp_dir().join(format!("sockd-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("bare");
        std::fs::write(&script, "echo \"$0 $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (read, write) = std::io::pipe().unwrap();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let pid = launch(
            script.to_str().unwrap(),
            &["ignored", "one"],
            "/",
            [null.as_raw_fd(), write.as_raw_fd(), null.as_raw_fd()],
        )
        .unwrap();
        drop(write);
        let mut out = String::new();
        { read }.read_to_string(&mut out).unwrap();
        assert_eq!(out, format!("{} one\n", script.display()));
        assert_eq!(wait(pid), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_fails_in_the_child_comes_back_as_its_errno() {
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let stdio = [null.as_raw_fd(); 3];
        let kind =
            |program: &str, cwd: &str| launch(program, &["x"], cwd, stdio).unwrap_err().kind();
        assert_eq!(kind("/no/such/program", "/"), io::ErrorKind::NotFound);
        assert_eq!(kind("/tmp", "/"), io::ErrorKind::PermissionDenied);
        assert_eq!(kind("/bin/true", "/no/such/dir"), io::ErrorKind::NotFound);
    }
}
