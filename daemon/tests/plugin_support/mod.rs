//! Shared helpers for the plugin-host tests: compiling C plugins with the
//! system `cc`, building the Rust testkit plugin with `rustc`, writing
//! plugin configs, and driving one call through a real [`Channel`].

#![allow(dead_code)] // each test file uses a different subset

use bytes::Bytes;
use sockd::channel::{Channel, ChannelTable, Owner};
use sockd::config::{OnPluginError, PluginEntry, PluginsConfig};
use sockd::plugin::{CallRequest, PluginHost};
use sockd::session::{Session, Sessions};
use sockd_proto::{ErrorCode, Message};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ has a parent")
        .to_path_buf()
}

pub fn include_dir() -> PathBuf {
    workspace().join("plugins/sdk/include")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles a C plugin warning-free into `out`.
pub fn compile_c_plugin(source: &Path, out: &Path, defines: &[&str]) {
    let mut cmd = Command::new("cc");
    cmd.args([
        "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I",
    ])
    .arg(include_dir());
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    run(cmd.arg("-o").arg(out).arg(source));
}

/// Compiles `daemon/tests/c/variant.c` with `defines` into `dir/file`.
pub fn variant(dir: &Path, file: &str, defines: &[&str]) -> PathBuf {
    let out = dir.join(file);
    compile_c_plugin(&workspace().join("daemon/tests/c/variant.c"), &out, defines);
    out
}

/// Compiles `plugins/examples/upper.c` into `dir/libsockd_upper.so`.
pub fn upper(dir: &Path) -> PathBuf {
    let out = dir.join("libsockd_upper.so");
    compile_c_plugin(&workspace().join("plugins/examples/upper.c"), &out, &[]);
    out
}

/// The testkit plugin, built once per test binary with plain `rustc` (a
/// nested `cargo` would contend for the build lock of the outer one) into
/// `CARGO_TARGET_TMPDIR`, replacing the previous run's copy atomically.
pub fn testkit_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let stem = exe
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("tests")
            .to_string();
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("sockd-testkit")
            .join(stem);
        let work = base.join(format!("build-{}", std::process::id()));
        std::fs::create_dir_all(&work).expect("create testkit build dir");
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let ws = workspace();
        let rlib = work.join("libsockd_plugin.rlib");
        run(Command::new(&rustc)
            .args([
                "--edition",
                "2024",
                "--crate-type",
                "rlib",
                "--crate-name",
                "sockd_plugin",
            ])
            .args(["-C", "debuginfo=0"])
            .arg(ws.join("plugins/sdk/src/lib.rs"))
            .arg("-o")
            .arg(&rlib));
        let built = work.join("libsockd_testkit.so");
        run(Command::new(&rustc)
            .env("CARGO_PKG_VERSION", env!("CARGO_PKG_VERSION"))
            .args([
                "--edition",
                "2024",
                "--crate-type",
                "cdylib",
                "--crate-name",
                "sockd_testkit",
            ])
            .args(["-C", "debuginfo=0"])
            .arg("--extern")
            .arg(format!("sockd_plugin={}", rlib.display()))
            .arg(ws.join("plugins/testkit/src/lib.rs"))
            .arg("-o")
            .arg(&built));
        let lib = base.join("libsockd_testkit.so");
        std::fs::rename(&built, &lib).expect("install the testkit library");
        let _ = std::fs::remove_dir_all(&work);
        lib
    })
}

/// Copies the testkit library into `dir` as `file`.
pub fn testkit(dir: &Path, file: &str) -> PathBuf {
    let out = dir.join(file);
    std::fs::copy(testkit_library(), &out).expect("copy testkit");
    out
}

/// A `[plugins]` config over `dir` with `(name, file, settings)` entries.
pub fn config(
    dir: &Path,
    on_error: OnPluginError,
    entries: &[(&str, &str, &str)],
) -> PluginsConfig {
    let mut map = BTreeMap::new();
    for (name, file, settings) in entries {
        let settings: toml::Table = toml::from_str(settings).expect("settings are TOML");
        map.insert(
            name.to_string(),
            PluginEntry {
                file: file.into(),
                settings,
            },
        );
    }
    PluginsConfig {
        dir: dir.to_path_buf(),
        on_error,
        quarantine_after: 3,
        entries: map,
        ..PluginsConfig::default()
    }
}

/// A plugin dir and a state dir, both private (0700) as the loader wants.
pub struct Dirs {
    pub plugins: tempfile::TempDir,
    pub state: tempfile::TempDir,
}

pub fn dirs() -> Dirs {
    Dirs {
        plugins: tempfile::tempdir().expect("tempdir"),
        state: tempfile::tempdir().expect("tempdir"),
    }
}

/// One call in progress: its channel and what the client receives.
pub struct Client {
    pub channel: Arc<Channel>,
    rx: mpsc::UnboundedReceiver<Message>,
    /// Told what was taken out, as the connection's writer does.
    backlog: Arc<sockd::outbound::Backlog>,
}

/// What the client saw when the call closed.
#[derive(Debug, Default)]
pub struct Closed {
    /// Data per stream, in order.
    pub streams: BTreeMap<u8, Vec<u8>>,
    pub eofs: Vec<u8>,
    pub code: Option<ErrorCode>,
    pub value: i64,
    pub message: String,
}

impl Closed {
    pub fn main(&self) -> String {
        String::from_utf8_lossy(self.streams.get(&0).map_or(&[][..], |v| v)).into_owned()
    }
}

pub fn session(user: &str) -> Arc<Session> {
    Sessions::global().register(
        user,
        "127.0.0.1:40000".parse().expect("address"),
        PathBuf::from(format!("/srv/sockd/home/{user}")),
    )
}

/// Opens a channel for `command` the way the connection code does and
/// hands it to the host. `send_credit` is what the client lets us send.
pub fn start(
    host: &PluginHost,
    session: &Arc<Session>,
    command: &str,
    args: &[&str],
    send_credit: u32,
) -> Result<Client, (ErrorCode, String)> {
    let (tx, rx) = sockd::outbound::channel();
    let backlog = tx.backlog().clone();
    let plugin = host.plugin_for(command).unwrap_or_default();
    let owner = Owner {
        session_id: session.id,
        user: session.user.clone(),
        plugin,
    };
    let channel = Channel::new(
        1,
        owner,
        command.into(),
        tx,
        1 << 20,
        send_credit,
        16 * 1024,
        Default::default(),
    );
    ChannelTable::global().insert(channel.clone());
    let req = CallRequest {
        channel: channel.clone(),
        session: session.clone(),
        args: args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect(),
    };
    match host.start_call(req) {
        Ok(()) => Ok(Client {
            channel,
            rx,
            backlog,
        }),
        Err(e) => {
            channel.finish(e.0, &e.1);
            Err(e)
        }
    }
}

impl Client {
    pub fn send(&self, stream: u8, data: &str) {
        self.channel
            .on_data(stream, Bytes::copy_from_slice(data.as_bytes()))
            .expect("within credit");
    }

    pub fn eof(&self, stream: u8) {
        self.channel.on_eof(stream);
    }

    /// The next message, waiting up to 10 s.
    pub fn next(&mut self) -> Message {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.rx.try_recv() {
                Ok(m) => {
                    self.backlog.written(sockd::outbound::weight(&m));
                    return m;
                }
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("no message from the plugin: {e:?}"),
            }
        }
    }

    /// Collects everything until CLOSE.
    pub fn wait(mut self) -> Closed {
        let mut closed = Closed::default();
        loop {
            match self.next() {
                Message::Data { stream, data, .. } => closed
                    .streams
                    .entry(stream)
                    .or_default()
                    .extend_from_slice(&data),
                Message::Eof { stream, .. } => closed.eofs.push(stream),
                Message::Close {
                    code,
                    value,
                    message,
                    ..
                } => {
                    closed.code = Some(code);
                    closed.value = value;
                    closed.message = message;
                    return closed;
                }
                _ => {}
            }
        }
    }
}

/// Waits up to 10 s for `f` to hold.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
