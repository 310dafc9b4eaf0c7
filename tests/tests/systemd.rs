//! systemd integration without PID 1: the sd_notify datagrams sockd sends
//! (READY, STATUS, WATCHDOG, RELOADING with MONOTONIC_USEC, STOPPING), and
//! socket activation by name under `systemd-socket-activate`.

use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, bin, wait_until};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Reads datagrams until one satisfies `want`, returning every one seen.
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no matching notification; seen: {seen:#?}"
        );
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if want(&msg) {
                return msg;
            }
        }
    }
}

#[test]
fn notify_sequence_and_watchdog() {
    let sockdir = tempfile::tempdir().unwrap();
    let path = sockdir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), path.display().to_string()),
        ("WATCHDOG_USEC".to_string(), "400000".to_string()),
    ];
    let mut d = Daemon::start_with(Options {
        env,
        ..Default::default()
    });
    let mut seen = Vec::new();

    let ready = read_until(&sock, &mut seen, |m| m.lines().any(|l| l == "READY=1"));
    assert!(
        ready.contains("STATUS=") && ready.contains("plugins"),
        "{ready}"
    );
    // Pings at half of WATCHDOG_USEC: at least two arrive.
    read_until(&sock, &mut seen, |m| m.contains("WATCHDOG=1"));
    read_until(&sock, &mut seen, |m| m.contains("WATCHDOG=1"));

    d.signal(nix::sys::signal::Signal::SIGHUP);
    let reloading = read_until(&sock, &mut seen, |m| m.contains("RELOADING=1"));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC in the same datagram");
    assert!(usec.parse::<u64>().unwrap() > 0);
    read_until(&sock, &mut seen, |m| m.lines().any(|l| l == "READY=1"));

    // `sockctl reload` does the same and waits for it.
    assert_eq!(d.run(&["reload"]).code(), 0);
    read_until(&sock, &mut seen, |m| m.contains("RELOADING=1"));
    read_until(&sock, &mut seen, |m| m.lines().any(|l| l == "READY=1"));

    d.signal(nix::sys::signal::Signal::SIGTERM);
    let stopping = read_until(&sock, &mut seen, |m| m.contains("STOPPING=1"));
    assert!(stopping.contains("STATUS="), "{stopping}");
    read_until(&sock, &mut seen, |m| m.contains("EXTEND_TIMEOUT_USEC="));
    assert!(
        d.wait_exit(Duration::from_secs(15))
            .expect("exits")
            .success()
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn socket_activation_by_name() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sockd.toml"),
        TEST_CONFIG.replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:9\"]"),
    )
    .unwrap();
    let control = dir.path().join("activated.sock");
    let port = free_port();
    // The control socket is listed first: sockd must find them by name,
    // not by position.
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&control)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=control:tls")
        .arg(bin("sockd"))
        .arg("--dev")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = scopeguard(activator.id());
    // The first connection starts sockd; the control socket already listens.
    let wait = || control.exists();
    assert!(wait_until(Duration::from_secs(20), wait));
    let status = Command::new(bin("sockctl"))
        .args(["--socket", control.to_str().unwrap(), "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(status.code(), 0, "{}", status.stderr_text());
    let s: serde_json::Value = serde_json::from_str(&status.stdout_text()).unwrap();
    assert_eq!(
        s["listen"][0],
        format!("127.0.0.1:{port}"),
        "uses the inherited TLS socket, not the configured one"
    );
    assert_eq!(
        s["control_socket"],
        control.to_str().unwrap(),
        "reports the inherited control socket, not the configured one"
    );
    let client = dir.path().join("client.toml");
    assert!(wait_until(Duration::from_secs(20), || client.exists()));
    let written = std::fs::read_to_string(&client).unwrap();
    assert!(written.contains(control.to_str().unwrap()), "{written}");
    let ping = Command::new(bin("sockctl"))
        .env("SOCKCTL_CONFIG", &client)
        .arg("ping")
        .output()
        .unwrap();
    assert_eq!(ping.code(), 0, "{}", ping.stderr_text());
    drop(guard);
    let _ = activator.wait();
    assert!(
        control.exists(),
        "the socket unit's control socket is left in place for the next start"
    );
}

/// Kills a process (and so its exec'd sockd) when the test ends, pass or fail.
struct Kill(u32);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
fn scopeguard(pid: u32) -> Kill {
    Kill(pid)
}

#[test]
fn journal_lines_carry_priorities_and_no_timestamps() {
    let env = vec![("JOURNAL_STREAM".to_string(), "8:1234".to_string())];
    let d = Daemon::start_with(Options {
        env,
        ..Default::default()
    });
    let wrong = d.path("nobody.key");
    std::fs::write(&wrong, "00".repeat(32)).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(
        d.run(&["--key-file", wrong.to_str().unwrap(), "ping"])
            .code(),
        5
    );
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('<')).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("ready")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("authentication failed")),
        "{log}"
    );
    assert!(
        !log.contains("Z  INFO") && !log.contains("T1"),
        "no timestamps: {log}"
    );
}
