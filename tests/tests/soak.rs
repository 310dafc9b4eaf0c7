//! The soak's short version for CI: the real `sockd-soak` (bench/soak)
//! drives 20 clients, each a user of its own, through checked puts and
//! gets, exec and chat against a harness daemon for 15 s, and must end
//! with no error and the daemon's memory growth within its bound. A run
//! against a daemon whose policy refuses part of the mix must fail, so
//! the soak's checks are known to bite. The long run is bench/soak.sh.

use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, bin};
use std::process::{Command, Output};

/// The harness config with the three plugins, sized for the soak: every
/// client connects from 127.0.0.1, and chat's rate limit is far above
/// what a client sends, so that neither is what is measured.
fn config(exec_allow: &str) -> String {
    let server = TEST_CONFIG.replace(
        "shutdown_grace_secs = 10",
        "shutdown_grace_secs = 10\nmax_connections_per_source = 1024",
    );
    format!(
        "{server}
[plugins.exec]
file = \"libsockd_exec.so\"
[plugins.exec.default]
allow = {exec_allow}

[plugins.files]
file = \"libsockd_files.so\"

[plugins.chat]
file = \"libsockd_chat.so\"
rate_per_sec = 100000
burst = 100000
"
    )
}

fn soak(d: &Daemon, args: &[&str]) -> Output {
    Command::new(bin("sockd-soak"))
        .arg("--config")
        .arg(d.path("client.toml"))
        .args(["--pid", &d.pid().to_string(), "--progress", "0"])
        .args(args)
        .output()
        .expect("run sockd-soak")
}

/// The number of operations the soak's table gives for `kind`.
fn ops(report: &str, kind: &str) -> u64 {
    report
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(kind)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no line for {kind:?} in the report:\n{report}"))
}

#[test]
fn twenty_clients_for_fifteen_seconds_without_an_error() {
    let d = Daemon::start_with(Options {
        config: Some(config("[\"echo\", \"cat\", \"false\"]")),
        ..Options::default()
    });
    let out = soak(
        &d,
        &[
            "--clients",
            "20",
            "--duration",
            "15s",
            "--seed",
            "1",
            "--max-growth",
            "256",
        ],
    );
    let report = out.stdout_text();
    assert_eq!(
        out.code(),
        0,
        "the soak failed:\n{report}\n{}",
        out.stderr_text()
    );
    assert!(
        report.contains("errors: 0") && report.ends_with("PASS\n"),
        "{report}"
    );
    assert!(report.contains("growth after warm-up"), "{report}");
    for kind in [
        "put ",
        "get ",
        "exec echo",
        "exec cat",
        "exec false",
        "chat send",
        "chat read",
        "chat deliver",
    ] {
        assert!(ops(&report, kind) > 0, "no {kind:?} ran:\n{report}");
    }
}

#[test]
fn a_soak_whose_checks_fail_exits_nonzero_and_says_why() {
    // cat and false are refused: every such exec is an error.
    let d = Daemon::start_with(Options {
        config: Some(config("[\"echo\"]")),
        ..Options::default()
    });
    let out = soak(
        &d,
        &["--clients", "2", "--duration", "2s", "--mix", "exec=1"],
    );
    let report = out.stdout_text();
    assert_eq!(out.code(), 1, "{report}\n{}", out.stderr_text());
    assert!(report.ends_with("FAIL\n"), "{report}");
    assert!(
        report.contains("exec denied") && report.contains("allow = [\"echo\", \"cat\", \"false\"]"),
        "the error and what to do about it: {report}"
    );
}
