//! Calls through the plugin host with real channels: the Rust testkit
//! plugin and the C `upper` example, panics and quarantine, reload with
//! calls in flight, lifecycle hooks, push and backpressure.

mod plugin_support;

use plugin_support::{Client, Dirs, config, dirs, eventually, session, start, testkit, upper};
use sockd::config::OnPluginError;
use sockd::plugin::PluginHost;
use sockd_proto::{ErrorCode, Message};
use std::path::Path;
use std::sync::Arc;

const CREDIT: u32 = 1 << 20;

/// Loads the testkit (plus `upper`) from a fresh plugin dir; `settings` is
/// the testkit's own table.
fn host_with_testkit(d: &plugin_support::Dirs, settings: &str) -> Arc<PluginHost> {
    testkit(d.plugins.path(), "libsockd_testkit.so");
    upper(d.plugins.path());
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[
            ("testkit", "libsockd_testkit.so", settings),
            ("upper", "libsockd_upper.so", ""),
        ],
    );
    PluginHost::load(&cfg, d.state.path()).expect("testkit and upper load")
}

fn marker_settings(marker: &Path) -> String {
    format!("marker = {:?}", marker.display().to_string())
}

fn events(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn info(host: &PluginHost, name: &str) -> sockd_proto::control::PluginInfo {
    host.list()
        .into_iter()
        .find(|p| p.name == name)
        .expect("plugin listed")
}

#[test]
fn plugin_testkit_echo_round_trip() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    assert_eq!(host.plugin_for("echo").as_deref(), Some("testkit"));
    let s = session("echo-user");
    let call = start(&host, &s, "echo", &["a b", "c"], CREDIT).expect("echo starts");
    call.send(0, "hello ");
    call.send(2, "{\"ctl\":1}");
    call.send(0, "world");
    call.eof(0);
    let closed = call.wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    assert_eq!(closed.main(), "a b\nc\nhello world");
    assert_eq!(
        closed.streams.get(&2).map(Vec::as_slice),
        Some(&b"{\"ctl\":1}"[..])
    );
    assert_eq!(closed.eofs, [0]);
    let i = info(&host, "testkit");
    assert_eq!((i.calls, i.errors, i.panics), (1, 0, 0));
}

#[test]
fn plugin_c_upper_answers_upper_cased() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("upper-user");
    let call = start(&host, &s, "upper", &["hello", "wörld"], CREDIT).expect("upper starts");
    call.send(0, "abc xyz\n");
    call.send(1, "diag");
    call.eof(1);
    call.send(0, "more");
    call.eof(0);
    let closed = call.wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    assert_eq!(closed.main(), "HELLO WöRLD\nABC XYZ\nMORE");
    assert_eq!(
        closed.streams.get(&1).map(Vec::as_slice),
        Some(&b"DIAG"[..])
    );
}

#[test]
fn plugin_call_sees_user_session_home_and_peer() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("whoami-user");
    let closed = start(&host, &s, "whoami", &[], CREDIT)
        .expect("whoami starts")
        .wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    assert_eq!(
        closed.main(),
        format!(
            "user whoami-user\nsession {}\nhome /srv/sockd/home/whoami-user\npeer 127.0.0.1:40000\n",
            s.id
        )
    );
}

#[test]
fn plugin_unknown_command_is_refused() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("nobody");
    let e = start(&host, &s, "frobnicate", &[], CREDIT)
        .err()
        .expect("refused");
    assert_eq!(
        e,
        (
            ErrorCode::UnknownCommand,
            "no plugin serves the command `frobnicate`".to_string()
        )
    );
}

#[test]
fn plugin_failure_codes_and_messages_reach_the_client() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("sleepy");
    let closed = start(&host, &s, "sleep", &["soon"], CREDIT)
        .expect("starts")
        .wait();
    assert_eq!(closed.code, Some(ErrorCode::BadRequest));
    assert_eq!(closed.message, "sleep: `soon` is not a number of seconds");
    let closed = start(&host, &s, "sleep", &["0.01"], CREDIT)
        .expect("starts")
        .wait();
    assert_eq!(
        (closed.code, closed.main()),
        (Some(ErrorCode::Ok), "slept\n".to_string())
    );
    let i = info(&host, "testkit");
    assert_eq!((i.calls, i.errors, i.panics), (2, 1, 0));
}

/// Loads testkit with `quarantine_after = 2` and calls `command`, which
/// panics with `message`, twice: each call ends `internal`, then the
/// plugin is quarantined.
fn panic_twice(
    command: &str,
    message: &str,
    user: &str,
) -> (Dirs, Arc<PluginHost>, Arc<sockd::session::Session>) {
    let d = dirs();
    testkit(d.plugins.path(), "libsockd_testkit.so");
    let mut cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("testkit", "libsockd_testkit.so", "")],
    );
    cfg.quarantine_after = 2;
    let host = PluginHost::load(&cfg, d.state.path()).expect("loads");
    let s = session(user);
    for _ in 0..2 {
        let closed = start(&host, &s, command, &[], CREDIT)
            .expect("starts")
            .wait();
        assert_eq!(closed.code, Some(ErrorCode::Internal));
        assert_eq!(closed.message, format!("plugin panicked: {message}"));
    }
    let i = info(&host, "testkit");
    assert_eq!(
        (i.state.as_str(), i.calls, i.errors, i.panics),
        ("quarantined", 2, 2, 2)
    );
    assert_eq!(i.error.as_deref(), Some("quarantined after 2 panics"));
    (d, host, s)
}

#[test]
fn plugin_panics_lead_to_quarantine_until_reload() {
    let (_d, host, s) = panic_twice("panic", "testkit was asked to panic", "panicky");

    // Every command of the plugin is refused, with the way out.
    assert_eq!(host.plugin_for("echo").as_deref(), Some("testkit"));
    let e = start(&host, &s, "echo", &[], CREDIT)
        .err()
        .expect("quarantined");
    assert_eq!(
        e,
        (
            ErrorCode::Unavailable,
            "plugin testkit is quarantined after 2 panics; fix it and run `sockctl plugin reload testkit`".to_string()
        )
    );

    let reloaded = host.reload("testkit").expect("reload");
    assert_eq!(
        (reloaded.state.as_str(), reloaded.builds, reloaded.panics),
        ("loaded", 2, 2)
    );
    let call = start(&host, &s, "echo", &["back"], CREDIT).expect("serving again");
    call.eof(0);
    assert_eq!(call.wait().main(), "back\n");
}

#[test]
fn plugin_reload_lets_calls_in_flight_finish_on_the_old_build() {
    let d = dirs();
    let marker = d.state.path().join("events");
    let host = host_with_testkit(&d, &marker_settings(&marker));
    let s = session("reloader");
    let slow = start(&host, &s, "sleep", &["0.5"], CREDIT).expect("starts");
    let info = host.reload("testkit").expect("reload");
    assert_eq!((info.state.as_str(), info.builds), ("loaded", 2));
    // The old build is busy: not shut down yet.
    assert_eq!(events(&marker), ["init", "init"]);
    // New calls reach the new build meanwhile.
    let quick = start(&host, &s, "whoami", &[], CREDIT).expect("starts");
    assert_eq!(quick.wait().code, Some(ErrorCode::Ok));
    let closed = slow.wait();
    assert_eq!(
        (closed.code, closed.main()),
        (Some(ErrorCode::Ok), "slept\n".to_string())
    );
    eventually("the old build's shutdown", || events(&marker).len() == 3);
    assert_eq!(events(&marker), ["init", "init", "shutdown"]);

    // An idle build is shut down right away.
    host.reload("testkit").expect("second reload");
    assert_eq!(
        events(&marker),
        ["init", "init", "shutdown", "init", "shutdown"]
    );
    assert_eq!(self::info(&host, "testkit").builds, 3);
}

#[test]
fn plugin_failed_reload_keeps_the_running_build() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let lib = d.plugins.path().join("libsockd_testkit.so");
    std::fs::write(&lib, b"garbage").expect("overwrite");
    let (code, message) = host.reload("testkit").expect_err("reload fails");
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(
        message.starts_with(&format!(
            "plugin \"testkit\" ({}) refused: cannot load the library",
            lib.display()
        )),
        "{message}"
    );
    let i = info(&host, "testkit");
    assert_eq!((i.state.as_str(), i.builds, i.error), ("loaded", 1, None));
    let s = session("still-there");
    assert_eq!(
        start(&host, &s, "whoami", &[], CREDIT)
            .expect("starts")
            .wait()
            .code,
        Some(ErrorCode::Ok)
    );

    assert_eq!(
        host.reload("nope").err().map(|e| e.0),
        Some(ErrorCode::NotFound)
    );
}

#[test]
fn plugin_failed_at_startup_can_be_reloaded_once_fixed() {
    let d = dirs();
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Skip,
        &[("testkit", "libsockd_testkit.so", "")],
    );
    let host = PluginHost::load(&cfg, d.state.path()).expect("skip");
    assert_eq!(info(&host, "testkit").state, "failed");
    assert_eq!(host.plugin_for("echo"), None);
    testkit(d.plugins.path(), "libsockd_testkit.so");
    let i = host.reload("testkit").expect("now it loads");
    assert_eq!((i.state.as_str(), i.builds, i.error), ("loaded", 1, None));
    assert_eq!(host.plugin_for("echo").as_deref(), Some("testkit"));
}

#[test]
fn plugin_refusals_carry_the_reason_it_logged() {
    let d = dirs();
    testkit(d.plugins.path(), "libsockd_testkit.so");
    let failing = config(
        d.plugins.path(),
        OnPluginError::Skip,
        &[("testkit", "libsockd_testkit.so", "fail_init = \"true\"")],
    );
    let host = PluginHost::load(&failing, d.state.path()).expect("skip");
    let i = info(&host, "testkit");
    assert_eq!(i.state, "failed");
    let error = i.error.unwrap_or_default();
    assert!(error.contains("fail_init is set"), "{error}");
}

#[test]
fn plugin_lifecycle_hooks_reach_the_plugin() {
    let d = dirs();
    let marker = d.state.path().join("events");
    let host = host_with_testkit(&d, &marker_settings(&marker));
    host.session_closed(4242);
    host.shutdown();
    assert_eq!(events(&marker), ["init", "session_closed 4242", "shutdown"]);
    host.shutdown();
    assert_eq!(events(&marker).len(), 3, "shutdown runs once per build");
    let s = session("late");
    assert_eq!(
        start(&host, &s, "echo", &[], CREDIT).err().map(|e| e.0),
        Some(ErrorCode::ShuttingDown)
    );
}

#[test]
fn plugin_reconfigure_passes_new_settings_and_adds_and_removes_plugins() {
    let d = dirs();
    let marker = d.state.path().join("events");
    let settings = marker_settings(&marker);
    testkit(d.plugins.path(), "libsockd_testkit.so");
    upper(d.plugins.path());
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("testkit", "libsockd_testkit.so", &settings)],
    );
    let host = PluginHost::load(&cfg, d.state.path()).expect("loads");
    let s = session("reconf");

    let new_settings = format!("{settings}\ngreeting = \"hi\"");
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[
            ("testkit", "libsockd_testkit.so", &new_settings),
            ("upper", "libsockd_upper.so", ""),
        ],
    );
    host.reconfigure(&cfg).expect("reconfigure");
    assert_eq!(events(&marker), ["init", "configure"]);
    let closed = start(&host, &s, "config", &[], CREDIT)
        .expect("starts")
        .wait();
    assert!(
        closed.main().contains("greeting = \"hi\""),
        "{}",
        closed.main()
    );
    assert_eq!(
        host.plugin_for("upper").as_deref(),
        Some("upper"),
        "added plugin is loaded"
    );

    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("upper", "libsockd_upper.so", "")],
    );
    host.reconfigure(&cfg).expect("reconfigure");
    assert_eq!(
        events(&marker),
        ["init", "configure", "shutdown"],
        "removed plugin is retired"
    );
    assert_eq!(host.plugin_for("echo"), None);
    assert_eq!(host.list().len(), 1);

    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[
            ("upper", "libsockd_upper.so", ""),
            ("gone", "libgone.so", ""),
        ],
    );
    let e = host
        .reconfigure(&cfg)
        .expect_err("a missing new plugin is an error");
    assert!(
        e.contains("plugin \"gone\"") && e.contains("cannot open the file"),
        "{e}"
    );
    assert_eq!(info(&host, "gone").state, "failed");
}

#[test]
fn plugin_push_reaches_subscribed_calls_of_the_user() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let listener_session = session("push-target");
    let mut listener = start(&host, &listener_session, "subscribe", &[], CREDIT).expect("starts");
    match listener.next() {
        Message::Data {
            stream: 2, data, ..
        } => assert_eq!(&data[..], b"subscribed\n"),
        other => panic!("unexpected {other:?}"),
    }
    let sender = session("push-sender");
    let closed = start(&host, &sender, "push", &["push-target", "hello"], CREDIT)
        .expect("starts")
        .wait();
    assert_eq!(closed.main(), "delivered 1 full 0\n");
    match listener.next() {
        Message::Data {
            stream: 0, data, ..
        } => assert_eq!(&data[..], b"hello\n"),
        other => panic!("unexpected {other:?}"),
    }
    let closed = start(&host, &sender, "push", &["nobody-at-all", "hello"], CREDIT)
        .expect("starts")
        .wait();
    assert_eq!(closed.main(), "delivered 0 full 0\n");
    listener.eof(0);
    assert_eq!(listener.wait().code, Some(ErrorCode::Ok));
}

#[test]
fn plugin_flood_is_held_by_backpressure_until_cancelled() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("flooded");
    let credit = 3 * 64 * 1024 + 100;
    let mut call: Client = start(&host, &s, "flood", &[], credit).expect("starts");
    let mut received = 0usize;
    while received < credit as usize {
        match call.next() {
            Message::Data { data, .. } => received += data.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The plugin is now blocked in write: nothing beyond the credit comes.
    std::thread::sleep(std::time::Duration::from_millis(100));
    call.channel.cancel();
    let closed = call.wait();
    assert_eq!(
        closed.streams.values().map(Vec::len).sum::<usize>(),
        0,
        "nothing beyond the client's credit"
    );
    assert_eq!(received, credit as usize);
    assert_eq!(closed.code, Some(ErrorCode::Cancelled));
}

// ---- ABI 1.1: inline commands ----

#[test]
fn plugin_inline_command_runs_to_the_end_on_the_callers_thread() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("inline-user");
    let call = start(&host, &s, "whoami", &[], CREDIT).expect("whoami starts");
    // No thread hand-off: the call is over when start_call returns.
    assert!(call.channel.is_finished());
    let closed = call.wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    assert_eq!(
        closed.main(),
        format!(
            "user inline-user\nsession {}\nhome /srv/sockd/home/inline-user\npeer 127.0.0.1:40000\n",
            s.id
        )
    );
    // The same handler on the blocking path answers the same.
    let blocking = start(&host, &s, "whoami-blocking", &[], CREDIT)
        .expect("starts")
        .wait();
    assert_eq!(blocking.main(), closed.main());
    let i = info(&host, "testkit");
    assert_eq!((i.calls, i.errors, i.panics), (2, 0, 0));
}

/// Checks the probe's report and returns N from `write: would_block after N`.
fn probe_report(closed: &plugin_support::Closed) -> usize {
    assert_eq!(closed.code, Some(ErrorCode::Busy), "{}", closed.message);
    let (head, written) = closed
        .message
        .rsplit_once(' ')
        .expect("a report ending in a number");
    assert_eq!(
        head,
        "read 5s: would_block\nread 0: timeout\nread forever: would_block\nwrite: would_block after"
    );
    written.parse().expect("a byte count")
}

#[test]
fn plugin_inline_call_that_tries_to_block_gets_would_block() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("inline-prober");
    // Limited by the client's window: 16 chunks of 64 KiB fit in 1 MiB.
    let call = start(&host, &s, "inline-probe", &[], CREDIT).expect("starts");
    assert!(call.channel.is_finished(), "returned without waiting");
    let closed = call.wait();
    assert_eq!(probe_report(&closed), CREDIT as usize);
    assert_eq!(closed.main().len(), CREDIT as usize);

    // Limited by the connection's bounded queue: a client that grants a
    // huge window but reads nothing gets at most LIMIT queued.
    let call = start(&host, &s, "inline-probe", &[], u32::MAX).expect("starts");
    assert!(call.channel.is_finished(), "returned without waiting");
    let written = probe_report(&call.wait());
    let limit = sockd::outbound::LIMIT as usize;
    assert!(
        (limit - 64 * 1024..=limit + 64 * 1024).contains(&written),
        "{written}"
    );

    // Other calls are served meanwhile and afterwards.
    let closed = start(&host, &s, "whoami-blocking", &[], CREDIT)
        .expect("starts")
        .wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
}

#[test]
fn plugin_inline_panics_become_errors_and_quarantine() {
    let (_d, host, s) = panic_twice(
        "inline-panic",
        "testkit was asked to panic inline",
        "inline-panicky",
    );
    let e = start(&host, &s, "whoami", &[], CREDIT)
        .err()
        .expect("quarantined");
    assert_eq!(e.0, ErrorCode::Unavailable);
    host.reload("testkit").expect("reload");
    let closed = start(&host, &s, "whoami", &[], CREDIT)
        .expect("serving again")
        .wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
}

/// Loads `daemon/tests/c/variant.c` built with `defines` and runs one call
/// (the client ends its input at once); returns the ABI shown and the answer.
fn variant_call(defines: &[&str]) -> (String, String) {
    let d = dirs();
    plugin_support::variant(d.plugins.path(), "libvariant.so", defines);
    let cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("variant", "libvariant.so", "")],
    );
    let host = PluginHost::load(&cfg, d.state.path()).expect("variant loads");
    let s = session("variant-user");
    let call = start(&host, &s, "variant", &[], CREDIT).expect("starts");
    call.eof(0);
    let closed = call.wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    (info(&host, "variant").abi, closed.main())
}

#[test]
fn plugin_built_for_abi_1_0_loads_and_runs_on_a_call_thread() {
    // A 1.0 descriptor ends before inline_commands: whatever lies after it
    // (here an inline list the 1.0 size does not cover) is never read.
    let (abi, answer) = variant_call(&[
        "V_MINOR=0",
        "V_SIZE=SOCKD_PLUGIN_SIZE_1_0",
        "V_INLINE=\"variant\"",
    ]);
    assert_eq!((abi.as_str(), answer.as_str()), ("1.0", "read 0\n"));
    // The same command declared inline by a 1.1 descriptor (which ends
    // before on_input): its read may not wait.
    let (abi, answer) = variant_call(&[
        "V_MINOR=1",
        "V_SIZE=SOCKD_PLUGIN_SIZE_1_1",
        "V_INLINE=\"variant\"",
    ]);
    assert_eq!((abi.as_str(), answer.as_str()), ("1.1", "read -100\n"));
    // And by a 1.2 one, which has no on_input: the same.
    let (abi, answer) = variant_call(&["V_INLINE=\"variant\""]);
    assert_eq!((abi.as_str(), answer.as_str()), ("1.2", "read -100\n"));
}

// ---- ABI 1.2: pending inline calls ----

#[test]
fn plugin_pending_call_serves_each_input_on_the_feeding_thread() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("pending-echo");
    let mut call = start(&host, &s, "inline-echo", &[], CREDIT).expect("starts");
    assert!(!call.channel.is_finished(), "stays open after handle");
    for text in ["one", "two"] {
        call.send(0, text);
        // on_input ran inside on_data, on this thread: the echo is queued.
        match call.next() {
            Message::Data {
                stream: 0, data, ..
            } => assert_eq!(&data[..], text.as_bytes()),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    call.send(2, "ctl");
    call.eof(0);
    assert!(call.channel.is_finished(), "ended by on_input at EOF");
    let closed = call.wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    assert_eq!(closed.streams.get(&2).map(Vec::as_slice), Some(&b"ctl"[..]));
    assert_eq!(closed.eofs, [0]);
    let i = info(&host, "testkit");
    assert_eq!((i.calls, i.errors, i.panics), (1, 0, 0));
}

#[test]
fn plugin_inline_call_may_ask_for_a_call_thread() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("pending-thread");
    let call = start(&host, &s, "inline-echo", &["--on-thread"], CREDIT).expect("starts");
    call.send(0, "abc");
    call.eof(0);
    let closed = call.wait();
    assert_eq!(closed.code, Some(ErrorCode::Ok));
    assert_eq!(closed.main(), "--on-thread\nabc");
}

#[test]
fn plugin_pending_call_is_finished_by_another_thread_exactly_once() {
    let d = dirs();
    let host = host_with_testkit(&d, "");
    let s = session("pending-later");
    for ms in ["0", "30"] {
        let call = start(&host, &s, "inline-later", &[ms], CREDIT).expect("starts");
        call.send(0, "ignored");
        let closed = call.wait();
        assert_eq!(
            (closed.code, closed.main()),
            (Some(ErrorCode::Ok), "later\n".into())
        );
    }
    // The host's finish on a call that is not pending, or ended: refused.
    let table = sockd::plugin::host_api::HostTable::leak("t-finish");
    // SAFETY (test): the table comes from HostTable::leak.
    let raw = unsafe { &*table.as_raw() };
    let call = start(&host, &s, "inline-later", &["0"], CREDIT).expect("starts");
    let handle = call.channel.handle;
    assert_eq!(call.wait().code, Some(ErrorCode::Ok));
    // SAFETY (test): plain values.
    assert_eq!(unsafe { (raw.finish)(handle, 0) }, -101);
    let sleeper = start(&host, &s, "sleep", &["0"], CREDIT).expect("starts");
    let handle = sleeper.channel.handle;
    // SAFETY (test): plain values. A call on a thread is not pending.
    let refused = unsafe { (raw.finish)(handle, 0) };
    assert!(refused == -10 || refused == -101, "{refused}");
    assert_eq!(sleeper.wait().code, Some(ErrorCode::Ok));
    let i = info(&host, "testkit");
    assert_eq!((i.calls, i.errors), (4, 0));
}

#[test]
fn plugin_pending_calls_end_when_the_client_cancels_or_leaves() {
    let d = dirs();
    let marker = d.state.path().join("events");
    let host = host_with_testkit(&d, &marker_settings(&marker));
    let s = session("pending-cancel");
    // A client CLOSE, and a disconnect (the connection cancels every
    // channel): the same for the host.
    for (command, args) in [("inline-later", &["60000"][..]), ("inline-echo", &[])] {
        let call = start(&host, &s, command, args, CREDIT).expect("starts");
        assert!(!call.channel.is_finished());
        call.channel.cancel();
        assert!(call.channel.is_finished(), "{command}: ended by the cancel");
        let closed = call.wait();
        assert_eq!(closed.code, Some(ErrorCode::Cancelled), "{command}");
    }
    // Both calls ended on their build: a reload shuts it down at once.
    host.reload("testkit").expect("reload");
    assert!(events(&marker).contains(&"shutdown".to_string()));
}

#[test]
fn plugin_pending_call_panic_becomes_internal_and_counts_to_quarantine() {
    let d = dirs();
    testkit(d.plugins.path(), "libsockd_testkit.so");
    let mut cfg = config(
        d.plugins.path(),
        OnPluginError::Refuse,
        &[("testkit", "libsockd_testkit.so", "")],
    );
    cfg.quarantine_after = 2;
    let host = PluginHost::load(&cfg, d.state.path()).expect("loads");
    let s = session("pending-panicky");
    for _ in 0..2 {
        let call = start(&host, &s, "inline-input-panic", &[], CREDIT).expect("starts");
        call.send(0, "boom");
        let closed = call.wait();
        assert_eq!(closed.code, Some(ErrorCode::Internal));
        assert_eq!(
            closed.message,
            "plugin panicked: testkit was asked to panic in on_input"
        );
    }
    let i = info(&host, "testkit");
    assert_eq!((i.state.as_str(), i.panics), ("quarantined", 2));
    let e = start(&host, &s, "inline-echo", &[], CREDIT)
        .err()
        .expect("quarantined");
    assert_eq!(e.0, ErrorCode::Unavailable);
}
