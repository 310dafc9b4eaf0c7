//! The exec plugin: runs a command for the logged-in user, like
//! `ssh host CMD`, under a per-user policy.
//!
//! - the command runs directly (`argv` mode, PATH lookup) or through
//!   `/bin/sh -c` (`shell` mode), in the user's home directory, with a
//!   scrubbed environment, on pipes or on a pseudo-terminal;
//! - its output is streamed as it is produced, with backpressure: each
//!   output has its own thread doing blocking reads and blocking channel
//!   writes, so a client that stops reading stops the command, not the
//!   daemon;
//! - on timeout, cancel or disconnect, its whole session is ended (SIGTERM,
//!   then SIGKILL after `kill_grace_ms`), and so is whatever it left behind
//!   when it exits.
//!
//! The wire format is in [`request`] and docs/EXEC.md.

// Public only for the fuzz targets (fuzz/); not an API.
#[doc(hidden)]
pub mod config;
mod fdio;
mod process;
#[doc(hidden)]
pub mod request;
mod spawn;
mod tree;

use config::Config;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use process::{Input as CommandInput, Spawned};
use request::{Lines, Request};
use sockd_plugin::{Call, Channel, ChannelError, Code, Failure, Host, Input, Plugin, stream};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// First read buffer per output and for input: most commands move little
/// data, and hundreds may run at once.
const FIRST_BUF: usize = 16 * 1024;
/// Largest read buffer for an output: one full frame, so that bulk data
/// (`exec -- cat BIGFILE`) moves in few reads, host calls and wake-ups.
/// Reads of the whole 1 MiB pipe were not faster and cost the daemon more
/// CPU in our runs (probably the cache: the host copies the buffer next).
const MAX_OUTPUT_BUF: usize = 256 * 1024;
/// Largest read buffer for input: a whole DATA frame of the client's.
const MAX_INPUT_BUF: usize = 256 * 1024;
/// Stack of the helper threads (their buffers are on the heap).
const THREAD_STACK: usize = 128 * 1024;
/// After the command is gone, how long its outputs may take to reach EOF
/// before the readers are told to stop (a process that left the session
/// may still hold them).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Exec {
    host: Host,
    config: RwLock<Arc<Config>>,
    /// Commands running per user.
    running: Mutex<HashMap<String, u32>>,
    /// Session ids of running commands by channel id, to end them all on
    /// shutdown.
    sessions: Mutex<HashMap<u64, i32>>,
}

/// A place in a user's `max_concurrent`; given back when dropped.
struct Slot<'a> {
    exec: &'a Exec,
    user: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.exec.running);
        if let Some(n) = running.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.user);
            }
        }
    }
}

impl Exec {
    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn acquire(&self, user: &str, max: u32) -> Result<Slot<'_>, Failure> {
        let mut running = lock(&self.running);
        let n = running.entry(user.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return Err(Failure::new(
                Code::Busy,
                format!(
                    "user {user} already runs {n} commands, the most allowed at once (max_concurrent = {max})"
                ),
            ));
        }
        *n += 1;
        Ok(Slot {
            exec: self,
            user: user.to_string(),
        })
    }

    /// Checks the request against the policy and starts the command.
    fn start(
        &self,
        call: &Call<'_>,
        req: &Request,
        policy: &config::Policy,
    ) -> Result<Spawned, Failure> {
        let user = call.user();
        let home = call.home();
        let env = process::environment(user, home, policy, req.pty.as_ref());
        let path = env.get("PATH").cloned().unwrap_or_default();
        let name = req.shown_name();
        let denied = || {
            Failure::new(
                Code::PermissionDenied,
                format!("exec denied: user {user} may not run {name:?}"),
            )
        };
        let Some(program) = process::resolve(&req.program, &path, home) else {
            // Only a name the user could run learns that it does not exist.
            return Err(if policy.may_name(&req.program) {
                Failure::new(Code::NotFound, format!("{name}: command not found"))
            } else {
                denied()
            });
        };
        if !policy.allows(&program) {
            return Err(denied());
        }
        process::ensure_home(home).map_err(|e| {
            self.host.error(&format!(
                "cannot create the home directory {}: {e}",
                home.display()
            ));
            Failure::internal(format!("cannot create the home directory of user {user}"))
        })?;
        let spec = process::Spec {
            program: &program,
            argv: &req.argv,
            env: &env,
            home,
            pty: req.pty.as_ref(),
            rlimits: &policy.rlimits,
        };
        process::spawn(&spec).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Failure::new(Code::NotFound, format!("{name}: command not found"))
            }
            std::io::ErrorKind::PermissionDenied => {
                Failure::new(Code::PermissionDenied, format!("{name}: permission denied"))
            }
            _ => {
                self.host
                    .warn(&format!("cannot start {name:?} for {user}: {e}"));
                Failure::internal(format!("{name}: cannot execute: {e}"))
            }
        })
    }
}

impl Plugin for Exec {
    fn init(host: Host, settings: &str) -> Result<Self, String> {
        let config = Config::parse(settings)?;
        Ok(Exec {
            host,
            config: RwLock::new(Arc::new(config)),
            running: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn configure(&self, settings: &str) -> Result<(), String> {
        let config = Config::parse(settings)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.host.info("exec settings reloaded");
        Ok(())
    }

    fn handle(&self, call: &Call<'_>) -> Result<(), Failure> {
        let req = Request::parse(&call.args())?;
        let config = self.config();
        let policy = config.policy(call.user());
        let _slot = self.acquire(call.user(), policy.max_concurrent)?;
        let spawned = self.start(call, &req, &policy)?;
        let channel = call.channel();
        let sid = spawned.pid.as_raw();
        lock(&self.sessions).insert(channel.id(), sid);
        self.host.debug(&format!(
            "user {} started {:?} (pid {sid})",
            call.user(),
            req.shown_name()
        ));
        let outcome = supervise(channel, spawned, policy.timeout, config.kill_grace);
        lock(&self.sessions).remove(&channel.id());
        match outcome {
            Outcome::Exited(status) => {
                let (value, json, message) = describe(status);
                let _ = channel.write(stream::CONTROL, json.as_bytes());
                channel.set_result(value, &message);
                Ok(())
            }
            Outcome::TimedOut(after) => Err(Failure::new(
                Code::Timeout,
                format!("command timed out after {} s", after.as_secs()),
            )),
            Outcome::Cancelled => Err(Failure::new(
                Code::Cancelled,
                "cancelled; the command was ended",
            )),
            Outcome::Failed(message) => Err(Failure::internal(message)),
        }
    }

    fn shutdown(&self) {
        let sids: Vec<i32> = lock(&self.sessions).values().copied().collect();
        if !sids.is_empty() {
            self.host
                .info(&format!("ending {} running commands", sids.len()));
            tree::terminate(&sids, self.config().kill_grace);
        }
    }
}

sockd_plugin::export_plugin!(name: "exec", version: env!("CARGO_PKG_VERSION"), commands: ["exec"], plugin: Exec);

/// The exit status (as a shell reports it), the `exit` control line and
/// the CLOSE message.
fn describe(status: Option<WaitStatus>) -> (i64, String, String) {
    match status {
        Some(WaitStatus::Exited(_, code)) => (
            code.into(),
            format!("{{\"exit\":{{\"code\":{code}}}}}\n"),
            String::new(),
        ),
        Some(WaitStatus::Signaled(_, sig, core)) => {
            let n = sig as i32;
            let core_text = if core { " (core dumped)" } else { "" };
            (
                128 + i64::from(n),
                format!("{{\"exit\":{{\"signal\":{n},\"core\":{core}}}}}\n"),
                format!("killed by {}{core_text}", sig.as_str()),
            )
        }
        _ => (
            255,
            "{\"exit\":{\"code\":255}}\n".into(),
            "the exit status was lost".into(),
        ),
    }
}

/// How a command ended.
enum Outcome {
    /// It exited and its outputs were all delivered; `None` if its status
    /// could not be read.
    Exited(Option<WaitStatus>),
    TimedOut(Duration),
    Cancelled,
    Failed(String),
}

enum Event {
    Exited(Option<WaitStatus>),
    OutputDone,
    Cancelled,
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .map(drop)
}

/// Relays the command's streams until it is over, enforcing the timeout
/// and the client's cancel; always leaves nothing of the session running
/// and the leader reaped.
fn supervise(
    channel: Channel,
    spawned: Spawned,
    timeout: Option<Duration>,
    grace: Duration,
) -> Outcome {
    let started = Instant::now();
    let pid = spawned.pid;
    let pty = matches!(spawned.input, CommandInput::Pty(_));
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let waker = match fdio::Waker::new() {
        Ok(w) => Arc::new(w),
        Err(e) => {
            tree::terminate(&[pid.as_raw()], grace);
            let _ = waitpid(pid, None);
            return Outcome::Failed(format!("cannot set up the command's streams: {e}"));
        }
    };

    let mut failed = None;
    // The waiter leaves the leader a zombie (WNOWAIT): its pid, which is
    // the session id, stays taken until we reap it at the very end.
    let waiter_tx = tx.clone();
    if let Err(e) = thread("exec-wait", move || {
        let status = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(status) => break Some(status),
                Err(_) => break None,
            }
        };
        let _ = waiter_tx.send(Event::Exited(status));
    }) {
        failed = Some(format!("cannot start a thread: {e}"));
    }

    let mut open_outputs = 0;
    for (stream, fd) in spawned.outputs {
        let (tx, waker) = (tx.clone(), waker.clone());
        match thread("exec-out", move || {
            pump_output(channel, stream, &fd, &waker, &tx)
        }) {
            Ok(()) => open_outputs += 1,
            Err(e) => failed = Some(format!("cannot start a thread: {e}")),
        }
    }

    // Input is not joined: it ends when the channel does (read returns
    // Closed), so a command that never reads stdin cannot hold us.
    let (input_tx, input_done) = (tx.clone(), done.clone());
    if let Err(e) = thread("exec-in", move || {
        pump_input(channel, spawned.input, &input_done, &input_tx)
    }) {
        failed = Some(format!("cannot start a thread: {e}"));
    }
    drop(tx);

    let deadline = timeout.map(|t| started + t);
    let mut exited: Option<Option<WaitStatus>> = None;
    let outcome = loop {
        if let Some(message) = failed.take() {
            break Outcome::Failed(message);
        }
        if exited.is_some() && open_outputs == 0 {
            break Outcome::Exited(exited.take().flatten());
        }
        let event = match deadline {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match event {
            // On a terminal, the command's exit ends the session (as with
            // ssh -t): whatever it left running, holding the terminal open,
            // is ended below, and the output drained.
            Ok(Event::Exited(status)) if pty => break Outcome::Exited(status),
            Ok(Event::Exited(status)) => exited = Some(status),
            Ok(Event::OutputDone) => open_outputs -= 1,
            Ok(Event::Cancelled) => break Outcome::Cancelled,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Outcome::TimedOut(timeout.unwrap_or_default());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Outcome::Failed("the command's threads ended".into());
            }
        }
    };

    // Whatever the outcome: nothing of the session may stay behind.
    tree::terminate(&[pid.as_raw()], grace);
    // Let the outputs deliver what the session wrote before it died. A
    // process that escaped the session may keep them open: after a while
    // the readers are told to stop. After a normal exit, what was read is
    // still delivered, however slowly the client reads; otherwise a reader
    // stuck on a full window is abandoned too (its write fails once the
    // call ends).
    let mut until = Some(Instant::now() + DRAIN_WAIT);
    while open_outputs > 0 {
        let event = match until {
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(Event::OutputDone) => open_outputs -= 1,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) if !waker.is_woken() => {
                waker.wake();
                until = match outcome {
                    Outcome::Exited(_) => None,
                    _ => Some(Instant::now() + DRAIN_WAIT),
                };
            }
            Err(_) => break,
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = waitpid(pid, None);
    outcome
}

/// After a read of `n` bytes into `buf`: a read that filled it means bulk
/// data, so the next reads get a larger buffer (up to `max`).
fn grow(buf: &mut Vec<u8>, n: usize, max: usize) {
    if n == buf.len() && buf.len() < max {
        *buf = vec![0u8; (buf.len() * 4).min(max)];
    }
}

/// Copies one output of the command to its stream until EOF.
fn pump_output(
    channel: Channel,
    stream: u8,
    fd: &OwnedFd,
    waker: &fdio::Waker,
    tx: &mpsc::Sender<Event>,
) {
    let mut buf = vec![0u8; FIRST_BUF];
    loop {
        match fdio::read(fd.as_fd(), &mut buf, waker) {
            Ok(fdio::Read::Data(n)) => {
                if let Err(e) = channel.write(stream, &buf[..n]) {
                    if e == ChannelError::Cancelled {
                        let _ = tx.send(Event::Cancelled);
                    }
                    break;
                }
                grow(&mut buf, n, MAX_OUTPUT_BUF);
            }
            Ok(fdio::Read::Eof) => {
                let _ = channel.write_eof(stream);
                break;
            }
            Ok(fdio::Read::Stopped) | Err(_) => break,
        }
    }
    let _ = tx.send(Event::OutputDone);
}

/// Copies the client's stream 0 to the command's stdin (or pty) and applies
/// control messages; reports a cancel.
fn pump_input(channel: Channel, input: CommandInput, done: &AtomicBool, tx: &mpsc::Sender<Event>) {
    let (mut pipe, pty): (Option<OwnedFd>, Option<Arc<OwnedFd>>) = match input {
        CommandInput::Pipe(fd) => (Some(fd), None),
        CommandInput::Pty(master) => (None, Some(master)),
    };
    let mut stdin_open = true;
    let mut lines = Lines::default();
    let mut buf = vec![0u8; FIRST_BUF];
    let stop = || done.load(Ordering::SeqCst) || channel.is_cancelled();
    loop {
        match channel.read(&mut buf, None) {
            Ok(Input::Data {
                stream: stream::MAIN,
                len,
            }) if stdin_open => {
                let target = pipe.as_ref().or(pty.as_deref());
                let ok = target.is_some_and(|fd| {
                    matches!(fdio::write_all(fd.as_fd(), &buf[..len], stop), Ok(true))
                });
                if !ok {
                    // The command closed its stdin (or is gone): drop the
                    // rest, as a pipe to an exited reader would.
                    stdin_open = false;
                    pipe = None;
                }
                grow(&mut buf, len, MAX_INPUT_BUF);
            }
            Ok(Input::Data {
                stream: stream::CONTROL,
                len,
            }) => lines.push(&buf[..len], |line| {
                if let (Some(resize), Some(master)) = (request::parse_control(line), pty.as_ref()) {
                    process::set_window_size(master, resize.cols, resize.rows);
                }
            }),
            Ok(Input::Data { .. }) => {}
            Ok(Input::Eof {
                stream: stream::MAIN,
            }) if stdin_open => {
                stdin_open = false;
                pipe = None;
                if let Some(master) = &pty {
                    // A terminal has no half-close: send its EOF character.
                    let _ = fdio::write_all(master.as_fd(), &[process::eof_char(master)], stop);
                }
            }
            Ok(Input::Eof { .. }) => {}
            Err(ChannelError::Cancelled) => {
                let _ = tx.send(Event::Cancelled);
                return;
            }
            Err(ChannelError::Timeout | ChannelError::WouldBlock) => {}
            Err(ChannelError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn exit_statuses_are_described_like_a_shell() {
        let pid = Pid::from_raw(1);
        let (v, json, msg) = describe(Some(WaitStatus::Exited(pid, 3)));
        assert_eq!(
            (v, json.as_str(), msg.as_str()),
            (3, "{\"exit\":{\"code\":3}}\n", "")
        );
        let (v, json, msg) = describe(Some(WaitStatus::Signaled(pid, Signal::SIGKILL, false)));
        assert_eq!(
            (v, json.as_str(), msg.as_str()),
            (
                137,
                "{\"exit\":{\"signal\":9,\"core\":false}}\n",
                "killed by SIGKILL"
            )
        );
        let (_, json, _) = describe(Some(WaitStatus::Signaled(pid, Signal::SIGSEGV, true)));
        assert!(json.contains("\"core\":true"));
        assert_eq!(describe(None).0, 255);
    }
}
