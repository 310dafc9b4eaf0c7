//! The plugin ABI through the real daemon and sockctl: the C example
//! plugin, panic isolation and quarantine, blocking calls, hot reload under
//! load, backpressure against a client that does not read, what an
//! operator sees when a plugin is refused, inline commands (ABI 1.1),
//! pending inline calls (ABI 1.2) and a plugin built for ABI 1.0.

use sockd_e2e::raw::{self, RawClient, demo_secret};
use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, bin, target_dir, wait_until};
use sockd_proto::message::ONESHOT;
use sockd_proto::{ErrorCode, Message};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A plugin directory holding the C `upper` plugin (compiled here from the
/// header alone) and the testkit.
fn plugin_dir(dir: &Path) -> std::path::PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new("cc")
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-I",
        ])
        .arg(root.join("plugins/sdk/include"))
        .arg(root.join("plugins/examples/upper.c"))
        .arg("-o")
        .arg(plugins.join("libupper.so"))
        .status()
        .expect("run cc");
    assert!(
        status.success(),
        "upper.c compiles with the system C compiler"
    );
    std::fs::copy(
        target_dir().join("libsockd_testkit.so"),
        plugins.join("libsockd_testkit.so"),
    )
    .unwrap();
    plugins
}

fn config_with(plugins: &Path, extra: &str) -> String {
    TEST_CONFIG.replace(
        "on_error = \"skip\"",
        &format!("on_error = \"skip\"\ndir = \"{}\"", plugins.display()),
    ) + "\n[plugins.upper]\nfile = \"libupper.so\"\n"
        + extra
}

/// A daemon with upper and testkit; the plugin directory lives as long as
/// the returned guard (dropped after the daemon).
/// `sockctl call sleep 30` in the background: a call that holds a call
/// thread while the test does other things. Killed when dropped.
struct SlowCall(std::process::Child);

impl SlowCall {
    fn start(d: &Daemon) -> SlowCall {
        let child = d
            .sockctl()
            .args(["call", "sleep", "30"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start sockctl call sleep");
        SlowCall(child)
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().expect("poll sockctl").is_none()
    }
}

impl Drop for SlowCall {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (Daemon, tempfile::TempDir) {
    let staging = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(staging.path());
    let d = Daemon::start_with(Options {
        config: Some(config_with(&plugins, "")),
        ..Default::default()
    });
    (d, staging)
}

fn plugin_state(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.run(&["plugins", "--json"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let list: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .expect("plugin listed")
}

#[test]
fn c_plugin_answers_upper_cased() {
    let (d, _plugins) = start();
    let out = d.run(&["call", "upper", "hello"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "HELLO\n");
    let out = d.run_with_input(&["call", "--stdin", "upper"], b"line one\nline two\n");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("LINE ONE\nLINE TWO\n"),
        "{:?}",
        out.stdout_text()
    );
    let upper = plugin_state(&d, "upper");
    assert_eq!(upper["state"], "loaded");
    assert_eq!(upper["abi"], "1.2");
    assert!(upper["calls"].as_u64().unwrap() >= 2);
}

#[test]
fn unknown_command_is_a_clear_error() {
    let (d, _plugins) = start();
    let out = d.run(&["call", "no-such-command"]);
    assert_eq!(out.code(), 10, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("no plugin serves"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn panics_become_errors_then_quarantine_until_reload() {
    let (d, _plugins) = start();
    for _ in 0..3 {
        let out = d.run(&["call", "panic"]);
        assert_eq!(out.code(), 1, "internal error: {}", out.stderr_text());
        assert!(
            out.stderr_text().contains("panicked"),
            "{}",
            out.stderr_text()
        );
    }
    let out = d.run(&["call", "whoami"]);
    assert_eq!(out.code(), 10, "quarantined: {}", out.stderr_text());
    assert!(
        out.stderr_text().contains("quarantined"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(plugin_state(&d, "testkit")["state"], "quarantined");
    // Other plugins and the daemon carry on.
    assert_eq!(d.run(&["call", "upper", "x"]).stdout_text(), "X\n");
    assert_eq!(d.run(&["ping"]).code(), 0);
    let out = d.run(&["plugin", "reload", "testkit"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(plugin_state(&d, "testkit")["state"], "loaded");
    assert_eq!(d.run(&["call", "whoami"]).code(), 0);
}

#[test]
fn a_blocking_call_does_not_delay_other_sessions() {
    let (d, _plugins) = start();
    let mut slow = SlowCall::start(&d);
    let busy = || {
        let out = d.run(&["sessions", "--json"]);
        out.stdout_text().contains("\"sleep\"")
    };
    assert!(
        wait_until(Duration::from_secs(20), busy),
        "the slow call is running"
    );
    for _ in 0..5 {
        let out = d.run(&["call", "whoami"]);
        assert_eq!(out.code(), 0, "{}", out.stderr_text());
    }
    assert!(
        slow.is_running(),
        "the other calls finished while the slow one still runs"
    );
}

#[test]
fn hot_reload_under_load_loses_no_call() {
    let (d, _plugins) = start();
    let d = Arc::new(d);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let (d, stop, done) = (d.clone(), stop.clone(), done.clone());
        callers.push(std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = d.run(&["call", "whoami"]);
                if out.code() != 0 {
                    failures.push(out.stderr_text());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    for i in 0..10 {
        let before = done.load(Ordering::Relaxed);
        let out = d.run(&["plugin", "reload", "testkit"]);
        assert_eq!(out.code(), 0, "reload {i}: {}", out.stderr_text());
        assert!(wait_until(Duration::from_secs(20), || done
            .load(Ordering::Relaxed)
            > before + 1));
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let failures = c.join().unwrap();
        assert!(
            failures.is_empty(),
            "calls failed across reloads: {failures:?}"
        );
    }
    assert_eq!(plugin_state(&d, "testkit")["builds"], 11);
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn flooding_a_client_that_does_not_read_keeps_memory_flat() {
    let (d, _plugins) = start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let before = rss_kib(d.pid());
        let mut c = RawClient::connect_hello(d.addr).await;
        assert!(matches!(
            c.login("demo", &demo_secret(d.dir.path())).await,
            Some(Message::AuthOk { .. })
        ));
        for ch in 1..=8u32 {
            c.send(Message::Open {
                channel: ch,
                command: "flood".into(),
                args: vec![],
            })
            .await;
        }
        // The client reads nothing and grants no credit. Each flood writes
        // until its 1 MiB window is spent, then waits: the daemon holds at
        // most the windows, however long this lasts.
        let mut peak = 0;
        for _ in 0..40 {
            peak = peak.max(rss_kib(d.pid()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let growth_mib = peak.saturating_sub(before) / 1024;
        assert!(growth_mib < 48, "daemon grew by {growth_mib} MiB");
        // Everyone else is still served.
        let out = d.run(&["call", "whoami"]);
        assert_eq!(out.code(), 0, "{}", out.stderr_text());
        // Cancelling ends the floods.
        for ch in 1..=8u32 {
            c.send(Message::Close {
                channel: ch,
                code: sockd_proto::ErrorCode::Cancelled,
                value: 0,
                message: String::new(),
            })
            .await;
        }
        // A client that cancels keeps reading until each channel's CLOSE.
        let mut closed = 0;
        while closed < 8 {
            match tokio::time::timeout(Duration::from_secs(20), c.recv()).await {
                Ok(Some(Message::Close { .. })) => closed += 1,
                Ok(Some(_)) => {}
                other => panic!("expected CLOSE for every cancelled flood, got {other:?}"),
            }
        }
        let out = d.run(&["sessions", "--json"]);
        assert!(
            !out.stdout_text().contains("flood"),
            "{}",
            out.stdout_text()
        );
    });
}

#[test]
fn one_shot_calls_take_one_frame_each_way_when_both_sides_say_so() {
    let (d, _plugins) = start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let call = |channel: u32, command: &str, arg: &'static [u8]| Message::Call {
            channel,
            command: command.into(),
            args: vec![bytes::Bytes::from_static(arg)],
        };
        let (mut c, server) =
            RawClient::connect_with_hello(d.addr, raw::hello_with(&[ONESHOT])).await;
        assert!(
            server.capabilities.iter().any(|c| c == ONESHOT),
            "{server:?}"
        );
        assert!(matches!(
            c.login("demo", &demo_secret(d.dir.path())).await,
            Some(Message::AuthOk { .. })
        ));
        // An inline command's answer and end come in one REPLY.
        c.send(call(1, "pong", b"abc")).await;
        match c.recv().await {
            Some(Message::Reply {
                channel: 1,
                stream: 0,
                data,
                code: ErrorCode::Ok,
                ..
            }) => {
                assert_eq!(&data[..], b"abc");
            }
            other => panic!("expected REPLY, got {other:?}"),
        }
        // The input ended with the CALL: `echo`, which reads to the end of
        // stream 0 on a call thread, writes its argument and ends at once.
        c.send(call(3, "echo", b"x")).await;
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), c.recv()).await {
                Ok(Some(Message::Data {
                    channel: 3, data, ..
                })) => got.extend_from_slice(&data),
                Ok(Some(Message::Eof { channel: 3, .. })) => {}
                Ok(Some(Message::Close {
                    channel: 3, code, ..
                })) => {
                    assert_eq!(code, ErrorCode::Ok);
                    break;
                }
                Ok(Some(Message::Reply {
                    channel: 3,
                    data,
                    code,
                    ..
                })) => {
                    got.extend_from_slice(&data);
                    assert_eq!(code, ErrorCode::Ok);
                    break;
                }
                other => panic!("expected echo's output and end, got {other:?}"),
            }
        }
        assert_eq!(got, b"x\n");
        // A client that does not list the capability gets DATA, then CLOSE.
        let mut old = RawClient::connect_hello(d.addr).await;
        assert!(matches!(
            old.login("demo", &demo_secret(d.dir.path())).await,
            Some(Message::AuthOk { .. })
        ));
        old.send(call(1, "pong", b"abc")).await;
        assert!(matches!(
            old.recv().await,
            Some(Message::Data { channel: 1, .. })
        ));
        assert!(matches!(
            old.recv().await,
            Some(Message::Close {
                channel: 1,
                code: ErrorCode::Ok,
                ..
            })
        ));
        // A CALL on a number still in use is refused as an OPEN would be,
        // and a REPLY is the server's to send: both end that connection.
        c.send(call(5, "sleep", b"30")).await;
        c.send(call(5, "pong", b"again")).await;
        expect_protocol_error(&mut c, "channel 5 is already open").await;
        old.send(Message::Reply {
            channel: 7,
            stream: 0,
            data: bytes::Bytes::from_static(b"x"),
            code: ErrorCode::Ok,
            value: 0,
            message: String::new(),
        })
        .await;
        expect_protocol_error(&mut old, "Reply is not allowed").await;
        // Everyone else is still served.
        assert_eq!(d.run(&["call", "whoami"]).code(), 0);
    });
}

#[test]
fn a_missing_plugin_is_reported_with_skip_and_refused_with_refuse() {
    let staging = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(staging.path());
    let config = config_with(&plugins, "[plugins.ghost]\nfile = \"libghost.so\"\n");
    let d = Daemon::start_with(Options {
        config: Some(config.clone()),
        ..Default::default()
    });
    let ghost = plugin_state(&d, "ghost");
    assert_eq!(ghost["state"], "failed");
    assert!(
        ghost["error"].as_str().unwrap().contains("libghost.so"),
        "{ghost}"
    );
    assert_eq!(d.run(&["call", "upper", "a"]).code(), 0, "the others work");
    let status = d.run(&["status"]);
    assert!(
        status.stdout_text().contains("ghost"),
        "{}",
        status.stdout_text()
    );

    // With on_error = "refuse" the daemon does not start, and says why.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sockd.toml"),
        config.replace("on_error = \"skip\"", "on_error = \"refuse\""),
    )
    .unwrap();
    let out = Command::new(bin("sockd"))
        .args([
            "--dev",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.code(), 1);
    let err = out.stderr_text();
    assert!(
        err.contains("ghost") && err.contains("libghost.so"),
        "{err}"
    );
}

#[test]
fn a_plugin_directory_others_can_write_is_refused() {
    let staging = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(staging.path());
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(&plugins, "").replace("on_error = \"skip\"", "on_error = \"refuse\"");
    std::fs::write(dir.path().join("sockd.toml"), config).unwrap();
    let out = Command::new(bin("sockd"))
        .args([
            "--dev",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.code(), 1);
    let err = out.stderr_text();
    assert!(err.contains("DETAIL") && err.contains("writable"), "{err}");
}

#[test]
fn inline_commands_are_served_and_cannot_block() {
    let (d, _plugins) = start();
    let out = d.run(&["call", "whoami"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let text = out.stdout_text();
    assert!(
        text.starts_with("user ")
            && text.contains("\nsession ")
            && text.contains("\npeer 127.0.0.1:"),
        "{text:?}"
    );
    assert_eq!(plugin_state(&d, "testkit")["abi"], "1.2");

    // A slow call on a call thread keeps running meanwhile.
    let mut slow = SlowCall::start(&d);
    // An inline handler that tries to wait for input or to write more than
    // the client's window gets WOULD_BLOCK each time, and its `?` ends the
    // call with busy. A poll finds the end of the input: sockctl opened the
    // call with a CALL (no input).
    let out = d.run(&["call", "inline-probe"]);
    assert_ne!(out.code(), 0);
    let err = out.stderr_text();
    for expected in [
        "read 5s: would_block",
        "read 0: ok",
        "read forever: would_block",
        "write: would_block after ",
    ] {
        assert!(err.contains(expected), "{expected:?} in {err:?}");
    }
    // The daemon keeps serving: pings, inline and blocking calls, other plugins.
    assert_eq!(d.run(&["ping"]).code(), 0);
    // Each session has its own id and port; user and home are the same.
    let user_and_home =
        |t: &str| [t.lines().next(), t.lines().nth(2)].map(|l| l.map(str::to_string));
    for command in ["whoami", "whoami-blocking"] {
        let again = d.run(&["call", command]).stdout_text();
        assert_eq!(user_and_home(&again), user_and_home(&text), "{command}");
    }
    assert_eq!(d.run(&["call", "upper", "x"]).stdout_text(), "X\n");
    assert!(slow.is_running(), "the slow call still runs");
}

#[test]
fn pending_inline_calls_serve_input_and_end_from_another_thread() {
    let (d, _plugins) = start();
    // Served by on_input on the connection's task, frame by frame.
    let out = d.run_with_input(&["call", "--stdin", "inline-echo"], b"one\ntwo\n");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "one\ntwo\n");
    // The same command sent to a call thread by its inline handler.
    let out = d.run_with_input(&["call", "--stdin", "inline-echo", "--on-thread"], b"x\n");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "--on-thread\nx\n");
    // Ended by a thread of the plugin's own.
    let out = d.run(&["call", "inline-later", "20"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "later\n");
    // A client that goes away while its call is pending: the call ends,
    // the daemon keeps serving, nothing is counted as a panic.
    let mut gone = d
        .sockctl()
        .args(["call", "inline-later", "60000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start sockctl call inline-later");
    let pending = || d.run(&["sessions"]).stdout_text().contains("inline-later");
    assert!(
        wait_until(Duration::from_secs(10), pending),
        "the pending call shows among the operations"
    );
    let _ = gone.kill();
    let _ = gone.wait();
    let out = d.run(&["call", "inline-later"]);
    assert_eq!(out.stdout_text(), "later\n");
    // A panic in on_input ends that call with `internal`.
    let out = d.run_with_input(&["call", "--stdin", "inline-input-panic"], b"boom\n");
    assert_eq!(out.code(), 1, "internal error: {}", out.stderr_text());
    assert!(
        out.stderr_text().contains("panicked"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(plugin_state(&d, "testkit")["panics"], 1);
    assert_eq!(d.run(&["ping"]).code(), 0);
}

#[test]
fn inline_panics_become_errors_then_quarantine() {
    let (d, _plugins) = start();
    for _ in 0..3 {
        let out = d.run(&["call", "inline-panic"]);
        assert_eq!(out.code(), 1, "internal error: {}", out.stderr_text());
        assert!(
            out.stderr_text().contains("panicked"),
            "{}",
            out.stderr_text()
        );
    }
    let testkit = plugin_state(&d, "testkit");
    assert_eq!(
        (testkit["state"].as_str(), testkit["panics"].as_u64()),
        (Some("quarantined"), Some(3))
    );
    let out = d.run(&["call", "whoami"]);
    assert!(
        out.stderr_text().contains("quarantined"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(d.run(&["ping"]).code(), 0);
    assert_eq!(d.run(&["plugin", "reload", "testkit"]).code(), 0);
    assert_eq!(d.run(&["call", "whoami"]).code(), 0);
}

#[test]
fn a_plugin_built_for_abi_1_0_still_loads_and_works() {
    let staging = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(staging.path());
    // daemon/tests/c/variant.c as a 1.0 plugin: abi_minor 0 and the 1.0
    // descriptor size, which ends before inline_commands (so the inline
    // list it also carries must be ignored).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"])
        .args([
            "-DV_MINOR=0",
            "-DV_SIZE=SOCKD_PLUGIN_SIZE_1_0",
            "-DV_INLINE=\"variant\"",
            "-I",
        ])
        .arg(root.join("plugins/sdk/include"))
        .arg(root.join("daemon/tests/c/variant.c"))
        .arg("-o")
        .arg(plugins.join("libvariant.so"))
        .status()
        .expect("run cc");
    assert!(status.success(), "variant.c compiles");
    let d = Daemon::start_with(Options {
        config: Some(config_with(
            &plugins,
            "[plugins.variant]\nfile = \"libvariant.so\"\n",
        )),
        ..Default::default()
    });
    let variant = plugin_state(&d, "variant");
    assert_eq!(
        (variant["state"].as_str(), variant["abi"].as_str()),
        (Some("loaded"), Some("1.0"))
    );
    // Served on a call thread: its read waits for the client's EOF.
    let out = d.run(&["call", "variant"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "read 0\n");
    drop(d);
}

/// The next frame is a fatal ERROR `protocol` whose message says `needle`.
async fn expect_protocol_error(c: &mut RawClient, needle: &str) {
    match c.recv().await {
        Some(Message::Error {
            code: ErrorCode::Protocol,
            message,
        }) => assert!(message.contains(needle), "{message}"),
        other => panic!("expected ERROR protocol, got {other:?}"),
    }
}
