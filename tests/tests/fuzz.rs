//! Fuzzing in CI and the seed corpus (docs/FUZZING.md).
//!
//! - `every_fuzz_target_survives_a_short_run`: builds the cargo-fuzz
//!   targets of fuzz/ (into fuzz/target, apart from the workspace's
//!   target, on stable Rust) and runs each for a bounded time from its
//!   committed seeds, two at a time; any crash fails the test and names
//!   the input that caused it.
//! - `record_seed_corpus` (ignored; run by hand): records real sessions —
//!   the real sockd with the exec, files and chat plugins, the real
//!   sockctl on the control socket — and writes what each parser saw into
//!   fuzz/seeds/<target>/, in the layouts the targets expect.

use bytes::Bytes;
use sockd_e2e::raw::{RawClient, demo_secret};
use sockd_e2e::{Daemon, Options, TEST_CONFIG};
use sockd_proto::auth::Secret;
use sockd_proto::{Frame, Message};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The fuzz targets, as named in fuzz/Cargo.toml.
const TARGETS: &[&str] = &[
    "frame",
    "message",
    "auth",
    "control",
    "config",
    "exec_request",
    "files_request",
    "jail_resolve",
    "chat_request",
];

/// Seconds each target runs in CI.
const CI_SECONDS_PER_TARGET: u32 = 15;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

/// `cargo fuzz` with the environment of the outer cargo removed, so the
/// nested build uses fuzz/target and its own flags.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("fuzz")
        .current_dir(fuzz_dir())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    cmd
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `target` for the CI time from its seeds, on a scratch corpus;
/// returns the process and its log.
fn start_target(binaries: &Path, scratch: &Path, target: &str) -> (Child, PathBuf) {
    let corpus = scratch.join(target);
    let artifacts = scratch.join(format!("{target}-artifacts"));
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).expect("scratch directory");
    }
    let log = scratch.join(format!("{target}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(binaries.join(target))
        .arg(&corpus)
        .arg(fuzz_dir().join("seeds").join(target))
        .arg(format!("-max_total_time={CI_SECONDS_PER_TARGET}"))
        .arg("-max_len=8192")
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("start fuzz target");
    (child, log)
}

/// What a finished run left: `None` if it passed, else the failure text.
fn verdict(target: &str, status: ExitStatus, scratch: &Path, log: &Path) -> Option<String> {
    if status.success() {
        return None;
    }
    let artifacts = scratch.join(format!("{target}-artifacts"));
    let crash = std::fs::read_dir(&artifacts)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .next()
        .map(|found| {
            let keep = fuzz_dir().join("artifacts").join(target);
            let _ = std::fs::create_dir_all(&keep);
            let dest = keep.join(found.file_name().unwrap_or_default());
            let _ = std::fs::copy(&found, &dest);
            dest.display().to_string()
        })
        .unwrap_or_else(|| "(no input saved)".into());
    Some(format!(
        "fuzz target {target} failed ({status}) on {crash}; replay it with \
         `cd fuzz && cargo fuzz run -s none {target} {crash}`, fix it and make the input a \
         regression test (docs/FUZZING.md):\n{}",
        tail(log, 30)
    ))
}

#[test]
fn every_fuzz_target_survives_a_short_run() {
    let version = cargo_fuzz().arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked` (.ci/run does), \
         then run the tests again"
    );
    // `-s none`: no sanitizer, so stable Rust builds the targets. `--dev`:
    // half the build time of a release build, fast enough for short runs.
    let scratch = tempfile::Builder::new()
        .prefix("sockd-fuzz-")
        .tempdir()
        .expect("tempdir");
    let build_log = scratch.path().join("build.log");
    let status = cargo_fuzz()
        .args(["build", "-s", "none", "--dev", "--target-dir", "target"])
        .stdout(std::fs::File::create(&build_log).expect("build log"))
        .stderr(std::fs::File::create(scratch.path().join("build.err")).expect("build log"))
        .status()
        .expect("run cargo fuzz build");
    assert!(
        status.success(),
        "cargo fuzz build failed; reproduce with `cd fuzz && cargo fuzz build -s none --dev`:\n{}",
        tail(&scratch.path().join("build.err"), 40)
    );
    let binaries = fuzz_dir().join("target/x86_64-unknown-linux-gnu/debug");
    // Two at a time: one per core of the CI machine.
    let mut failures = Vec::new();
    for pair in TARGETS.chunks(2) {
        let running: Vec<_> = pair
            .iter()
            .map(|t| (*t, start_target(&binaries, scratch.path(), t)))
            .collect();
        for (target, (mut child, log)) in running {
            let status = child.wait().expect("fuzz target ends");
            failures.extend(verdict(target, status, scratch.path(), &log));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---- the seed recorder -------------------------------------------------

/// Writes seeds into fuzz/seeds/<target>/<name>.
struct Seeds {
    root: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), bytes).expect("write seed");
        self.written += 1;
    }

    /// A seed that starts with the target's selector byte.
    fn put_case(&mut self, target: &str, name: &str, selector: u8, bytes: &[u8]) {
        let mut seed = vec![selector];
        seed.extend_from_slice(bytes);
        self.put(target, name, &seed);
    }
}

/// The frame as it travels: length prefix, channel, kind, payload.
fn wire(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + frame.payload.len());
    out.extend_from_slice(&(frame.payload.len() as u32 + 5).to_be_bytes());
    out.extend_from_slice(&frame.channel.to_be_bytes());
    out.push(frame.kind as u8);
    out.extend_from_slice(&frame.payload);
    out
}

/// What the `message` target reads: the frame without its length.
fn body(frame: &Frame) -> Vec<u8> {
    wire(frame)[4..].to_vec()
}

fn open_payload(command: &str, args: &[&[u8]]) -> Bytes {
    Message::Open {
        channel: 1,
        command: command.into(),
        args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
    }
    .encode()
    .payload
}

/// A command's arguments, and its input: (stream, bytes), where empty
/// bytes end the stream.
type Args<'a> = Vec<&'a [u8]>;
type Input<'a> = Vec<(u8, &'a [u8])>;

/// One protocol connection whose frames, both ways, are kept.
struct Recorded {
    client: RawClient,
    sent: Vec<Frame>,
    received: Vec<Frame>,
    next_channel: u32,
}

/// One command's exchange.
struct Call {
    sent: Vec<Frame>,
    received: Vec<Frame>,
    /// Stream-2 bytes each way.
    control_in: Vec<u8>,
    control_out: Vec<u8>,
}

impl Recorded {
    async fn connect(d: &Daemon) -> Recorded {
        let client = RawClient::connect(d.addr).await;
        let mut r = Recorded {
            client,
            sent: Vec::new(),
            received: Vec::new(),
            next_channel: 1,
        };
        r.send(Message::Hello(sockd_proto::Hello {
            version: sockd_proto::message::PROTOCOL_VERSION,
            max_frame: sockd_proto::frame::DEFAULT_MAX_FRAME,
            window: 1 << 20,
            software: format!("sockctl {}", env!("CARGO_PKG_VERSION")),
            identity: String::new(),
            capabilities: Vec::new(),
        }))
        .await;
        assert!(matches!(r.recv().await, Some(Message::Hello(_))));
        r
    }

    async fn send(&mut self, m: Message) {
        self.sent.push(m.encode());
        self.client.send(m).await;
    }

    async fn recv(&mut self) -> Option<Message> {
        let m = tokio::time::timeout(Duration::from_secs(30), self.client.recv())
            .await
            .expect("the daemon answers within 30 s")?;
        self.received.push(m.encode());
        Some(m)
    }

    /// Logs in; returns (AUTH_START, AUTH_CHALLENGE, AUTH_PROOF, AUTH_OK or
    /// AUTH_FAIL) as frames.
    async fn login(&mut self, user: &str, secret: &Secret) -> [Frame; 4] {
        let challenge = self.client.start_auth(user, secret.kind()).await;
        let start = Message::AuthStart {
            user: user.into(),
            kind: secret.kind(),
            client_nonce: challenge.client_nonce,
        }
        .encode();
        let offered = Message::AuthChallenge {
            server_nonce: challenge.server_nonce,
            salt: challenge.salt.clone(),
            iterations: challenge.iterations,
        }
        .encode();
        self.sent.push(start.clone());
        self.received.push(offered.clone());
        let proof = challenge.proof(secret, &self.client.channel_binding);
        self.send(Message::AuthProof { proof }).await;
        let proof = self.sent.last().cloned().expect("proof sent");
        let answer = self.recv().await.expect("an answer to the proof").encode();
        [start, offered, proof, answer]
    }

    /// OPENs `command args`, sends `input` (stream, bytes; empty bytes is
    /// EOF of that stream) and reads until the CLOSE.
    async fn call(&mut self, command: &str, args: &[&[u8]], input: &[(u8, &[u8])]) -> Call {
        let channel = self.next_channel;
        self.next_channel += 1;
        let first_sent = self.sent.len();
        let first_received = self.received.len();
        self.send(Message::Open {
            channel,
            command: command.into(),
            args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
        })
        .await;
        let mut control_in = Vec::new();
        for (stream, data) in input {
            if data.is_empty() {
                self.send(Message::Eof {
                    channel,
                    stream: *stream,
                })
                .await;
            } else {
                if *stream == 2 {
                    control_in.extend_from_slice(data);
                }
                self.send(Message::Data {
                    channel,
                    stream: *stream,
                    data: Bytes::copy_from_slice(data),
                })
                .await;
            }
        }
        let mut control_out = Vec::new();
        loop {
            match self.recv().await {
                Some(Message::Close { channel: c, .. }) if c == channel => break,
                Some(Message::Data {
                    channel: c,
                    stream: 2,
                    data,
                }) if c == channel => control_out.extend_from_slice(&data),
                Some(_) => {}
                None => panic!("the daemon closed the connection during {command}"),
            }
        }
        Call {
            sent: self.sent[first_sent..].to_vec(),
            received: self.received[first_received..].to_vec(),
            control_in,
            control_out,
        }
    }
}

/// Forwards one control-socket exchange from sockctl to the daemon and
/// returns (request line, response line); both empty if the connection
/// sent nothing (the recorder's own wake-up when sockctl did not connect).
fn proxy_one(
    listener: UnixListener,
    daemon_socket: PathBuf,
) -> std::thread::JoinHandle<(String, String)> {
    std::thread::spawn(move || {
        let (client, _) = listener.accept().expect("sockctl connects");
        let mut request = String::new();
        BufReader::new(&client)
            .read_line(&mut request)
            .expect("request line");
        if request.is_empty() {
            return (request, String::new());
        }
        let mut daemon = UnixStream::connect(&daemon_socket).expect("daemon control socket");
        daemon.write_all(request.as_bytes()).expect("forward");
        let mut response = String::new();
        BufReader::new(&daemon)
            .read_line(&mut response)
            .expect("response line");
        (&client)
            .write_all(response.as_bytes())
            .expect("answer sockctl");
        (request, response)
    })
}

/// The `[plugins.NAME]` tables of `config`, as the daemon hands them to
/// the plugin: without `file`, sub-tables relative to the plugin's table.
fn plugin_table(config: &str, name: &str) -> String {
    let prefix = format!("[plugins.{name}");
    let mut out = String::new();
    let mut inside = false;
    for line in config.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed.starts_with(&prefix);
            if inside && trimmed != format!("{prefix}]") {
                out.push_str(&format!("[{}\n", &trimmed[prefix.len() + 1..]));
            }
            continue;
        }
        if inside && !trimmed.starts_with("file ") && !trimmed.starts_with("file=") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

const SEED_CONFIG_EXTRA: &str = r#"
[plugins.exec]
file = "libsockd_exec.so"
kill_grace_ms = 300
env = { EDITOR = "vi" }

[plugins.exec.users.demo]
allow = "any"

[plugins.files]
file = "libsockd_files.so"
quota_bytes = 1048576

[plugins.files.users.demo]
quota_files = 100

[plugins.chat]
file = "libsockd_chat.so"
max_message_bytes = 4096
"#;

/// Records real sessions into fuzz/seeds/. Run by hand after a protocol
/// change: `cargo test -p sockd-e2e --test fuzz -- --ignored record_seed_corpus`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand to refresh the seed corpus"]
fn record_seed_corpus() {
    let config = format!("{TEST_CONFIG}{SEED_CONFIG_EXTRA}");
    let d = Daemon::start_with(Options {
        config: Some(config.clone()),
        env: Vec::new(),
    });
    let mut seeds = Seeds {
        root: fuzz_dir().join("seeds"),
        written: 0,
    };

    // Control socket: the real sockctl through a recording proxy.
    let proxy_path = d.path("proxy.sock");
    let client_toml = std::fs::read_to_string(d.path("client.toml")).expect("client.toml");
    let daemon_socket = client_toml
        .lines()
        .find_map(|l| l.strip_prefix("socket = \""))
        .and_then(|l| l.strip_suffix('"'))
        .map(PathBuf::from)
        .expect("socket in client.toml");
    let proxy_toml = client_toml
        .lines()
        .map(|l| {
            if l.starts_with("socket = ") {
                format!("socket = \"{}\"", proxy_path.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.path("proxy-client.toml"), proxy_toml).expect("proxy config");
    let control: &[(&str, &[&str], &[u8])] = &[
        (
            "user-add-password",
            &[
                "user",
                "add",
                "alice",
                "--password-stdin",
                "--iterations",
                "10000",
            ],
            b"pencil\n",
        ),
        (
            "user-add-again",
            &["user", "add", "alice", "--password-stdin"],
            b"x\n",
        ),
        ("status", &["status"], b""),
        ("sessions", &["sessions"], b""),
        ("user-list", &["user", "list"], b""),
        ("plugins", &["plugins"], b""),
        ("plugin-reload", &["plugin", "reload", "files"], b""),
        ("kick", &["kick", "999"], b""),
        ("reload", &["reload"], b""),
        ("user-del", &["user", "del", "nobody"], b""),
    ];
    for (name, args, input) in control {
        let _ = std::fs::remove_file(&proxy_path);
        let listener = UnixListener::bind(&proxy_path).expect("proxy socket");
        let proxy = proxy_one(listener, daemon_socket.clone());
        let mut child = d
            .sockctl()
            .env("SOCKCTL_CONFIG", d.path("proxy-client.toml"))
            .args(*args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sockctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("stdin");
        child.wait().expect("sockctl ends");
        // Wakes the proxy up if sockctl never connected.
        drop(UnixStream::connect(&proxy_path));
        let (request, response) = proxy.join().expect("proxy");
        assert!(!request.is_empty(), "sockctl {args:?} sent no request");
        // Machine-specific paths would only make the seeds differ per run.
        let redact = |line: &str| {
            line.replace(&d.dir.path().display().to_string(), "/var/lib/sockd")
                .replace(
                    &sockd_e2e::target_dir().display().to_string(),
                    "/usr/lib/sockd/plugins",
                )
        };
        seeds.put(
            "control",
            &format!("{name}-request"),
            redact(&request).as_bytes(),
        );
        seeds.put(
            "control",
            &format!("{name}-response"),
            redact(&response).as_bytes(),
        );
    }

    // Configuration files.
    seeds.put(
        "config",
        "etc-sockd-toml",
        &std::fs::read(repo_root().join("etc/sockd.toml")).expect("etc/sockd.toml"),
    );
    seeds.put(
        "config",
        "e2e-sockd-toml",
        &std::fs::read(d.path("sockd.toml")).expect("test sockd.toml"),
    );
    let shipped = std::fs::read_to_string(repo_root().join("etc/sockd.toml")).expect("etc");
    for (target, plugin, selector) in [
        ("exec_request", "exec", 3u8),
        ("files_request", "files", 2),
        ("chat_request", "chat", 2),
    ] {
        for (source, text) in [("etc", &shipped), ("e2e", &config)] {
            let table = plugin_table(text, plugin);
            seeds.put_case(
                target,
                &format!("settings-{source}"),
                selector,
                table.as_bytes(),
            );
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let key = std::fs::read_to_string(d.path("demo.key")).expect("demo.key");
        seeds.put_case("auth", "key-file", 0, key.as_bytes());

        // Logins: a password, a wrong key, then the demo key.
        let mut c = Recorded::connect(&d).await;
        let [start, challenge, proof, answer] =
            c.login("alice", &Secret::Password("pencil".into())).await;
        record_login(&mut seeds, "password", &start, &challenge, &proof, &answer);
        let mut c = Recorded::connect(&d).await;
        let [start, challenge, proof, answer] = c.login("demo", &Secret::Key([7; 32])).await;
        record_login(&mut seeds, "wrong-key", &start, &challenge, &proof, &answer);
        let [start, challenge, proof, answer] = c.login("demo", &demo_secret(d.dir.path())).await;
        record_login(&mut seeds, "key", &start, &challenge, &proof, &answer);
        c.send(Message::Ping {
            payload: Bytes::from_static(b"12345678"),
        })
        .await;
        c.recv().await;
        let login_sent = c.sent.clone();
        let login_received = c.received.clone();

        let mut calls: Vec<(String, Call)> = Vec::new();
        // exec, with sockctl's argument shapes (ctl/src/cmd/exec.rs).
        let pty = br#"{"pty":{"term":"xterm-256color","cols":80,"rows":24}}"#;
        let resize = b"{\"resize\":{\"cols\":100,\"rows\":30}}\n";
        let exec_calls: Vec<(&str, Args, Input)> = vec![
            ("argv", vec![b"argv", b"{}", b"echo", b"hello"], vec![(0, b"")]),
            ("shell", vec![b"shell", b"{}", b"printf hello > hello.txt; echo out; echo err >&2; exit 3"], vec![(0, b"")]),
            ("stdin", vec![b"argv", b"{}", b"cat"], vec![(0, b"line one\nline two\n"), (0, b"")]),
            ("pty", vec![b"shell", pty, b"stty size"], vec![(2, resize), (0, b"")]),
            ("missing", vec![b"argv", b"{}", b"no-such-program"], vec![(0, b"")]),
            ("bad-mode", vec![b"spawn", b"{}", b"ls"], vec![]),
        ];
        for (name, args, input) in &exec_calls {
            let call = c.call("exec", args, input).await;
            seeds.put_case("exec_request", &format!("open-{name}"), 0, &open_payload("exec", args));
            if !call.control_in.is_empty() {
                seeds.put_case("exec_request", &format!("control-{name}"), 1, &call.control_in);
                seeds.put_case("exec_request", &format!("lines-{name}"), 2, &call.control_in);
            }
            calls.push((format!("exec-{name}"), call));
        }

        // files (ctl/src/cmd/files.rs, files/put.rs and files/get.rs).
        let get = c
            .call(
                "get",
                &[b"hello.txt"],
                &[(2, b"{\"type\":\"offer\",\"offset\":0,\"hash\":\"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"}\n")],
            )
            .await;
        let hash = String::from_utf8_lossy(&get.control_out)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "end")
            .and_then(|v| v["hash"].as_str().map(str::to_string))
            .expect("get ends with the file's hash");
        let put_options = br#"{"force":false,"mtime":1700000000,"size":5,"source":"2049:131:5:1700000000.000000000"}"#;
        let end = format!("{{\"type\":\"end\",\"size\":5,\"hash\":\"{hash}\"}}\n");
        let put_input: Vec<(u8, &[u8])> = vec![
            (2, b"{\"type\":\"start\",\"offset\":0}\n"),
            (0, b"hello"),
            (2, end.as_bytes()),
            (0, b""),
        ];
        let files_calls: Vec<(&str, &str, Args, Input)> = vec![
            ("mkdir", "mkdir", vec![b"d/e", br#"{"parents":true}"#], vec![]),
            ("put", "put", vec![b"d/copy.txt", put_options], put_input),
            ("ls", "ls", vec![b"/"], vec![]),
            ("cd", "cd", vec![b"d"], vec![]),
            ("pwd", "pwd", vec![], vec![]),
            ("stat", "stat", vec![b"copy.txt"], vec![]),
            ("mv", "mv", vec![b"copy.txt", b"e/moved.txt", br#"{"force":false}"#], vec![]),
            ("rm", "rm", vec![b"/d", br#"{"recursive":true}"#], vec![]),
            ("quota", "quota", vec![br#"{"recount":true}"#], vec![]),
            ("escape", "stat", vec![b"../../../etc/passwd"], vec![]),
            ("dots", "ls", vec![b"/../..//./"], vec![]),
            ("reserved", "mkdir", vec![b".x.sockd-partial"], vec![]),
            ("control-char", "ls", vec!["a\u{1b}[31m".as_bytes()], vec![]),
            ("cd-home", "cd", vec![], vec![]),
        ];
        let mut cwd = "/".to_string();
        for (name, command, args, input) in &files_calls {
            let call = c.call(command, args, input).await;
            seeds.put_case("files_request", &format!("open-{name}"), 0, &open_payload(command, args));
            for (way, bytes) in [("in", &call.control_in), ("out", &call.control_out)] {
                for (i, line) in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                    seeds.put_case("files_request", &format!("control-{name}-{way}-{i}"), 1, line);
                }
            }
            let paths: Vec<&[u8]> = match *command {
                "mv" => args[..2].to_vec(),
                "quota" | "pwd" => Vec::new(),
                _ => args.first().into_iter().copied().collect(),
            };
            for path in paths {
                let mut seed = vec![cwd.len() as u8];
                seed.extend_from_slice(cwd.as_bytes());
                seed.extend_from_slice(path);
                seeds.put("jail_resolve", &format!("{name}-{}", paths_name(path)), &seed);
            }
            if *command == "cd" {
                cwd = String::from_utf8_lossy(&call.received.iter().find_map(|f| match Message::decode(f.clone()) {
                    Ok(Message::Data { stream: 0, data, .. }) => Some(data),
                    _ => None,
                }).unwrap_or_default())
                .split('"')
                .nth(3)
                .unwrap_or("/")
                .to_string();
            }
            calls.push((format!("files-{name}"), call));
        }
        for (i, line) in [&get.control_in, &get.control_out]
            .into_iter()
            .flat_map(|b| b.split(|&b| b == b'\n'))
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            seeds.put_case("files_request", &format!("control-get-{i}"), 1, line);
        }
        calls.push(("files-get".into(), get));
        seeds.put_case("files_request", "open-get", 0, &open_payload("get", &[b"hello.txt"]));

        // chat (ctl/src/cmd/chat.rs and chat/session.rs).
        let chat_calls: Vec<(&str, Args, Input)> = vec![
            ("join", vec![b"join", b"#ops"], vec![]),
            ("send", vec![b"send", b"#ops", b"hello room"], vec![]),
            ("send-self", vec![b"send", b"demo", b"note to self"], vec![]),
            ("send-stdin", vec![b"send", b"demo"], vec![(0, b"from stdin\n"), (0, b"")]),
            ("who", vec![b"who", b"#ops"], vec![]),
            ("who-all", vec![b"who"], vec![]),
            ("rooms", vec![b"rooms"], vec![]),
            ("history", vec![b"history", b"#ops", b"10"], vec![]),
            ("history-before", vec![b"history", b"demo", b"5", b"100"], vec![]),
            ("bad-room", vec![b"join", b"#No Spaces"], vec![]),
            (
                "listen",
                vec![b"listen", b"--no-live"],
                vec![
                    (2, b"{\"op\":\"send\",\"to\":\"#ops\",\"text\":\"hi\",\"ref\":1}\n"),
                    (2, b"{\"ack\":1}\n"),
                    (2, b"{\"op\":\"history\",\"with\":\"#ops\",\"limit\":5,\"ref\":2}\n"),
                    (2, b"{\"op\":\"who\",\"room\":\"#ops\",\"ref\":3}\n"),
                    (2, b"{\"resync\":1}\n"),
                    (2, b"{\"op\":\"leave\",\"room\":\"#ops\",\"ref\":4}\n"),
                    (2, b""),
                ],
            ),
        ];
        for (name, args, input) in &chat_calls {
            let call = c.call("chat", args, input).await;
            seeds.put_case("chat_request", &format!("open-{name}"), 1, &open_payload("chat", args));
            for (i, line) in call.control_in.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                seeds.put_case("chat_request", &format!("listen-{name}-{i}"), 0, line);
            }
            calls.push((format!("chat-{name}"), call));
        }

        // Frames: each direction of the login and of every call as a byte
        // stream; every distinct frame as a message.
        let mut streams: Vec<(String, Vec<Frame>)> = vec![
            ("login-client".into(), login_sent),
            ("login-server".into(), login_received),
        ];
        for (name, call) in &calls {
            streams.push((format!("{name}-client"), call.sent.clone()));
            streams.push((format!("{name}-server"), call.received.clone()));
        }
        let mut bodies = std::collections::BTreeSet::new();
        for (i, (name, frames)) in streams.iter().enumerate() {
            let bytes: Vec<u8> = frames.iter().flat_map(wire).collect();
            seeds.put_case("frame", name, (i as u8).wrapping_mul(37), &bytes);
            bodies.extend(frames.iter().map(body));
        }
        // A few of each kind is plenty: libFuzzer mutates the rest.
        let mut per_kind = std::collections::HashMap::new();
        for b in &bodies {
            let count = per_kind.entry(b[4]).or_insert(0);
            *count += 1;
            if *count <= 6 {
                seeds.put("message", &format!("kind{:02x}-{count}", b[4]), b);
            }
        }
    });
    eprintln!(
        "wrote {} seeds under {}",
        seeds.written,
        seeds.root.display()
    );
}

/// A file-name-safe rendering of a path argument.
fn paths_name(path: &[u8]) -> String {
    let name: String = String::from_utf8_lossy(path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "empty".into()
    } else {
        name
    }
}

fn record_login(
    seeds: &mut Seeds,
    name: &str,
    start: &Frame,
    challenge: &Frame,
    proof: &Frame,
    answer: &Frame,
) {
    let kind = start.payload[start.payload.len() - 33];
    // AUTH_OK carries the server signature; after a failure, any 32 bytes.
    let signature = match Message::decode(answer.clone()) {
        Ok(Message::AuthOk {
            server_signature, ..
        }) => server_signature,
        _ => [0; 32],
    };
    let mut client = vec![kind];
    client.extend_from_slice(&signature);
    client.extend_from_slice(&challenge.payload);
    seeds.put_case("auth", &format!("challenge-{name}"), 1, &client);
    let mut server = proof.payload.to_vec();
    server.extend_from_slice(&start.payload);
    seeds.put_case("auth", &format!("start-{name}"), 2, &server);
}
