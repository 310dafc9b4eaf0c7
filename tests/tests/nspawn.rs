//! sockd under a real systemd: tests/nspawn/run.sh boots systemd as PID 1
//! in a throw-away container, installs the package and drives the service
//! (start, status, ping, reload with a live session, upgrade, stop with
//! STOPPING=1, the watchdog restarting a frozen runtime, purge).
//!
//! This test builds what the script needs — the package
//! (packaging/build-deb.sh) and `sockd-debug-hooks` (the daemon with the
//! `debug-hooks` feature) — and runs it. Where it cannot run (not root, no
//! systemd-nspawn, no cargo-deb, a container that does not boot here) it
//! prints why and passes as skipped; anything else that fails, fails.

use sockd_e2e::{OutputExt, build_deb, target_dir};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The script takes about 30 s; this only bounds a hang.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);
/// run.sh's status for "cannot run here".
const SKIPPED: i32 = 77;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("systemd-nspawn needs root (CI runs the tests as root)");
    }
    if !succeeds("systemd-nspawn", &["--version"]) {
        return Some("systemd-nspawn is missing: apt-get install systemd-container");
    }
    if !succeeds(&cargo(), &["deb", "--version"]) {
        return Some("cargo-deb is missing (tests/tests/deb.rs fails for that)");
    }
    None
}

/// The dev build is enough, and leaves target/release alone.
fn build_debug_hooks_sockd() -> PathBuf {
    let out = Command::new(cargo())
        .args([
            "build",
            "--locked",
            "-p",
            "sockd",
            "--features",
            "debug-hooks",
            "--bin",
            "sockd-debug-hooks",
        ])
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build");
    assert!(
        out.status.success(),
        "building sockd-debug-hooks failed:\n{}",
        out.stderr_text()
    );
    target_dir().join("sockd-debug-hooks")
}

#[test]
fn sockd_under_systemd_in_a_container() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let deb = build_deb();
    let debug_sockd = build_debug_hooks_sockd();

    let output_file = tempfile::NamedTempFile::new().unwrap();
    let mut script = Command::new(workspace().join("tests/nspawn/run.sh"))
        .arg(&deb)
        .arg(&debug_sockd)
        .stdin(Stdio::null())
        .stdout(output_file.reopen().unwrap())
        .stderr(output_file.reopen().unwrap())
        // Its own group, so a hung run can be killed with all it started.
        .process_group(0)
        .spawn()
        .expect("run tests/nspawn/run.sh");
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let status = status.unwrap_or_else(|| {
        // SIGTERM lets the script's trap stop the container and clean up.
        let group = nix::unistd::Pid::from_raw(script.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let cleaned = sockd_e2e::wait_until(Duration::from_secs(20), || {
            script.try_wait().ok().flatten().is_some()
        });
        if !cleaned {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = script.wait();
        panic!(
            "tests/nspawn/run.sh still running after {} s:\n{}",
            SCRIPT_LIMIT.as_secs(),
            std::fs::read_to_string(output_file.path()).unwrap_or_default()
        );
    });
    let output = std::fs::read_to_string(output_file.path()).unwrap_or_default();
    match status.code() {
        Some(0) => eprintln!("{output}"),
        Some(SKIPPED) => eprintln!("skipped: {output}"),
        _ => panic!("tests/nspawn/run.sh failed ({status}):\n{output}"),
    }
}
