//! Ending a command with everything it started.
//!
//! Each command is a session leader (`setsid` before exec), so its session
//! id is its pid, and every process it starts stays in that session unless
//! it calls `setsid` itself. Job-control shells move jobs to other process
//! groups, so a `killpg` alone is not enough: the session's members are
//! found by scanning `/proc` and signalled one by one, as well as the
//! process group. The leader is kept as an unreaped zombie until the end
//! (the supervisor waits with `WNOWAIT`), so its pid — the session and
//! group id — cannot be reused meanwhile.
//!
//! Limit: a process that starts its own session (`setsid`, a daemonizing
//! program) leaves ours and is not found. A cgroup per command would close
//! that gap; see docs/EXEC.md.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getsid};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the members are looked for while waiting for them to die.
const POLL: Duration = Duration::from_millis(10);
/// How long SIGKILLed processes may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The session id and state of a process, from `/proc/PID/stat`.
fn stat(pid: &str) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session ..."; comm may hold anything,
    // including spaces and parentheses, so parse from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some((state, session))
}

/// Live (not yet zombie) processes of session `sid`.
///
/// Every process is asked for its session with `getsid`, one system call;
/// only the session's members get their `stat` file read (for the state).
/// Reading every process's `stat` instead made this scan most of the
/// daemon's work with hundreds of commands running.
pub fn members(sid: i32) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let name = name.to_str()?;
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let pid = Pid::from_raw(name.parse().ok()?);
        if getsid(Some(pid)).ok()?.as_raw() != sid {
            return None;
        }
        let (state, session) = stat(name)?;
        (session == sid && state != 'Z' && state != 'X').then_some(pid)
    })
    .collect()
}

/// Sends `sig` to the process group `sid` and to every live member of
/// session `sid`; returns how many members there were.
fn signal_all(sid: i32, sig: Signal) -> usize {
    let _ = killpg(Pid::from_raw(sid), sig);
    let found = members(sid);
    for &pid in &found {
        let _ = kill(pid, sig);
    }
    found.len()
}

/// Waits until session `sid` has no live member, up to `limit`.
fn wait_empty(sid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if members(sid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Ends the sessions in `sids`: SIGTERM (and SIGCONT, so stopped processes
/// see it), then SIGKILL for whatever is still there after `grace`. Returns
/// once nothing is left (or after a last bounded wait).
pub fn terminate(sids: &[i32], grace: Duration) {
    if !Path::new("/proc/self/stat").exists() {
        // No /proc: the process groups are all we can reach.
        for &sid in sids {
            let _ = killpg(Pid::from_raw(sid), Signal::SIGTERM);
            let _ = killpg(Pid::from_raw(sid), Signal::SIGCONT);
        }
        std::thread::sleep(grace);
        for &sid in sids {
            let _ = killpg(Pid::from_raw(sid), Signal::SIGKILL);
        }
        return;
    }
    let live: Vec<i32> = sids
        .iter()
        .copied()
        .filter(|&s| !members(s).is_empty())
        .collect();
    if live.is_empty() {
        return;
    }
    for &sid in &live {
        signal_all(sid, Signal::SIGTERM);
        signal_all(sid, Signal::SIGCONT);
    }
    let deadline = Instant::now() + grace;
    for &sid in &live {
        wait_empty(sid, deadline.saturating_duration_since(Instant::now()));
    }
    let kill_deadline = Instant::now() + KILL_WAIT;
    for &sid in &live {
        // Repeat: a process may have forked between the scan and the kill.
        while signal_all(sid, Signal::SIGKILL) > 0 && Instant::now() < kill_deadline {
            std::thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn finds_and_ends_a_whole_session() {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "sleep 1000 & (sleep 1001 &); trap '' TERM; sleep 1002",
        ]);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let sid = child.id() as i32;
        let start = Instant::now();
        while members(sid).len() < 4 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(POLL);
        }
        assert_eq!(members(sid).len(), 4, "sh and three sleeps");
        terminate(&[sid], Duration::from_millis(300));
        assert!(members(sid).is_empty());
        child.wait().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn stat_parses_odd_command_names() {
        let me = std::process::id().to_string();
        let (state, session) = stat(&me).unwrap();
        assert!(state.is_ascii_alphabetic());
        assert_eq!(session, nix::unistd::getsid(None).unwrap().as_raw());
    }
}
