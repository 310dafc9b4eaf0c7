//! The end-to-end harness: starts the real `sockd` (built by
//! `cargo build --workspace`) on 127.0.0.1 with an ephemeral port in a
//! temporary directory, waits for it by polling, runs the real `sockctl`
//! against it, and always stops it by PID — also when a test fails.
//!
//! [`raw`] is a minimal protocol client for what sockctl refuses to do on
//! purpose: replay proofs, relay them, send oversized frames or garbage.

pub mod raw;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The cargo target directory holding the built binaries and plugins.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// Path of a workspace binary; fails with a hint if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// Base config for tests; `extra` is appended (more tables or keys of
/// tables not listed here).
pub const TEST_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
name = "sockd-test"
state_dir = "state"
shutdown_grace_secs = 10

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[auth]
penalty_base_ms = 10
penalty_max_ms = 40
timeout_secs = 10

[control]
socket = "control.sock"
admin_group = ""

[plugins]
on_error = "skip"

[plugins.testkit]
file = "libsockd_testkit.so"
"#;

/// A running daemon, stopped when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    log: PathBuf,
}

/// Options for [`Daemon::start_with`].
#[derive(Default)]
pub struct Options {
    /// Replaces sections of [`TEST_CONFIG`]: full config text when set.
    pub config: Option<String>,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("sockd-e2e-")
            .tempdir()
            .expect("tempdir");
        let config = options.config.unwrap_or_else(|| TEST_CONFIG.to_string());
        std::fs::write(dir.path().join("sockd.toml"), config).expect("write config");
        let mut daemon = Daemon {
            child: None,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: PathBuf::new(),
        };
        daemon.log = daemon.dir.path().join("sockd.log");
        daemon.spawn(&options.env);
        daemon
    }

    /// Starts the process and polls until client.toml names the bound port.
    fn spawn(&mut self, env: &[(String, String)]) {
        let client = self.path("client.toml");
        let _ = std::fs::remove_file(&client);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin("sockd"));
        cmd.arg("--dev")
            .arg(self.dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0");
        cmd.env("RUST_LOG", "debug").env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sockd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&client)
                && let Some(addr) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("server = \""))
                    .and_then(|l| l.strip_suffix('"'))
            {
                self.addr = addr.parse().expect("server address in client.toml");
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sockd exited during start-up ({status}):\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sockd not ready after 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("daemon running")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `sockctl` command aimed at this daemon through its client.toml.
    pub fn sockctl(&self) -> Command {
        let mut cmd = Command::new(bin("sockctl"));
        cmd.env("SOCKCTL_CONFIG", self.path("client.toml"))
            .env_remove("SOCKCTL_PASSWORD")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs sockctl with `args` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.sockctl().args(args).output().expect("run sockctl")
    }

    /// Runs sockctl with `args` and `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .sockctl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sockctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("sockctl output")
    }

    /// `sockctl user add NAME --password-stdin` fed `password`, with the
    /// fewest PBKDF2 iterations sockctl accepts (10,000), to keep it quick.
    pub fn add_password_user(&self, name: &str, password: &str) -> Output {
        self.run_with_input(
            &[
                "user",
                "add",
                name,
                "--password-stdin",
                "--iterations",
                "10000",
            ],
            format!("{password}\n").as_bytes(),
        )
    }

    /// `sockctl --user NAME --password ping` with `password` in
    /// `SOCKCTL_PASSWORD`.
    pub fn password_ping(&self, name: &str, password: &str) -> Output {
        self.sockctl()
            .args(["--user", name, "--password", "ping"])
            .env("SOCKCTL_PASSWORD", password)
            .output()
            .expect("run sockctl")
    }

    /// `sockctl --user NAME --key-file KEY ping`.
    pub fn key_ping(&self, name: &str, key: &std::path::Path) -> Output {
        let key = key.to_str().expect("UTF-8 key path");
        self.run(&["--user", name, "--key-file", key, "ping"])
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal sockd");
    }

    /// Waits for the process to exit on its own, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs and starts again on the same directory.
    pub fn restart_after_kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn(&[]);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- sockd log ----\n{}", self.log_text());
        }
    }
}

/// Output helpers for assertions.
pub trait OutputExt {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    fn code(&self) -> i32;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Builds the Debian package with packaging/build-deb.sh from the debug
/// build (`SOCKD_DEB_PROFILE=dev`: the tests check what the package holds
/// and does, not the speed of its binaries) and returns its path. Fails
/// with what to install when cargo-deb is missing.
pub fn build_deb() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have_cargo_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have_cargo_deb,
        "cargo-deb is not installed: run `cargo install cargo-deb --locked` (.ci/run does)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // --fast: lighter compression, same contents.
    let out = Command::new(root.join("packaging/build-deb.sh"))
        .arg("--fast")
        .env("CARGO", &cargo)
        .env("SOCKD_DEB_PROFILE", "dev")
        .stdin(Stdio::null())
        .output()
        .expect("run packaging/build-deb.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "packaging/build-deb.sh failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(stdout.trim().lines().last().unwrap_or_default());
    assert!(
        path.extension().is_some_and(|e| e == "deb") && path.is_file(),
        "build-deb.sh printed no .deb path:\n{stdout}"
    );
    path
}
