//! `sockctl exec` against the real daemon and the real exec plugin: exit
//! statuses, streams, stdin, streaming, policy, timeouts, process-tree
//! cleanup, the scrubbed environment, pseudo-terminals and bulk data.

use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, wait_until};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The exec section every test daemon gets, then `users`.
fn exec_config(users: &str) -> String {
    format!(
        "{TEST_CONFIG}\n[plugins.exec]\nfile = \"libsockd_exec.so\"\nkill_grace_ms = 300\nenv = {{ EDITOR = \"vi\" }}\n{users}\n"
    )
}

const DEMO_ANY: &str = "[plugins.exec.users.demo]\nallow = \"any\"\n";

fn start(users: &str) -> Daemon {
    Daemon::start_with(Options {
        config: Some(exec_config(users)),
        env: Vec::new(),
    })
}

fn exec(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    d.run(&all)
}

/// A number no other test (or test run) uses, to find "our" processes.
fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{:05}{}",
        7,
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed) + 100
    )
}

/// Live (non-zombie) processes whose command line is `sleep SECS`.
fn live_sleeps(secs: &str) -> Vec<u32> {
    let want = format!("sleep\0{secs}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .next()?
            .to_string();
        (cmdline == want.as_bytes() && state != "Z" && state != "X").then_some(pid)
    })
    .collect()
}

/// A shell line that starts a child, a grandchild (its parent exits) and
/// a foreground child, each `sleep` with its own marker.
fn tree_script(marks: &[String; 3]) -> String {
    format!(
        "sleep {} & (sleep {} &) ; sleep {}",
        marks[0], marks[1], marks[2]
    )
}

fn marks() -> [String; 3] {
    [marker(), marker(), marker()]
}

fn all_running(marks: &[String; 3]) -> bool {
    marks.iter().all(|m| live_sleeps(m).len() == 1)
}

fn none_running(marks: &[String; 3]) -> bool {
    marks.iter().all(|m| live_sleeps(m).is_empty())
}

fn spawn_exec(d: &Daemon, args: &[&str]) -> Child {
    d.sockctl()
        .arg("exec")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sockctl")
}

#[test]
fn exit_statuses_pass_through() {
    let d = start(DEMO_ANY);
    assert_eq!(exec(&d, &["--", "true"]).code(), 0);
    assert_eq!(exec(&d, &["--", "false"]).code(), 1);
    let out = exec(&d, &["-c", "exit 3"]);
    assert_eq!(out.code(), 3, "{}", out.stderr_text());
    // Death by signal N is 128+N, as ssh and shells report it, and quiet.
    let out = exec(&d, &["-c", "kill -9 $$"]);
    assert_eq!(out.code(), 137);
    assert_eq!(out.stderr_text(), "");
    assert_eq!(exec(&d, &["-c", "kill -TERM $$"]).code(), 143);
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let d = start(DEMO_ANY);
    let out = exec(&d, &["-c", "echo out; echo err >&2; echo out2"]);
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout_text(), "out\nout2\n");
    assert_eq!(out.stderr_text(), "err\n");
    // argv mode passes arguments as they are, without a shell.
    let out = exec(&d, &["--", "printf", "%s|", "a b", "$HOME", "*"]);
    assert_eq!(out.stdout_text(), "a b|$HOME|*|");
}

#[test]
fn stdin_is_forwarded_and_ended() {
    let d = start(DEMO_ANY);
    let out = d.run_with_input(&["exec", "--", "cat"], b"hi\n");
    assert_eq!(
        (out.code(), out.stdout_text().as_str()),
        (0, "hi\n"),
        "{}",
        out.stderr_text()
    );
    let out = d.run_with_input(&["exec", "-c", "wc -l"], b"1\n2\n3\n");
    assert_eq!(out.stdout_text().trim(), "3");
    // -n: the command sees EOF at once even though our stdin stays open.
    let mut child = d
        .sockctl()
        .args(["exec", "-n", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _keep_open = child.stdin.take();
    assert!(
        wait_until(Duration::from_secs(5), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "-n must not forward stdin"
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn output_is_streamed_as_produced() {
    let d = start(DEMO_ANY);
    let started = Instant::now();
    let mut child = spawn_exec(&d, &["-c", "echo first; sleep 3; echo second"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_after = started.elapsed();
    assert!(
        first_after < Duration::from_millis(2500),
        "first line after {first_after:?}: buffered until exit?"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the command is still running"
    );
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn policy_denies_with_126_and_missing_programs_are_127() {
    let d = start("[plugins.exec.users.demo]\nallow = [\"ls\", \"/usr/bin/env\", \"true\"]\n");
    assert_eq!(exec(&d, &["--", "true"]).code(), 0);
    let out = exec(&d, &["--", "cat", "/etc/hostname"]);
    assert_eq!(out.code(), 126);
    assert_eq!(
        out.stderr_text(),
        "sockctl: exec denied: user demo may not run \"cat\"\n"
    );
    assert_eq!(out.stdout_text(), "");
    // -c runs /bin/sh, which this list does not contain.
    let out = exec(&d, &["-c", "true"]);
    assert_eq!(out.code(), 126);
    assert!(
        out.stderr_text().contains("may not run \"/bin/sh\""),
        "{}",
        out.stderr_text()
    );
    // A name outside the list is denied, not reported missing.
    assert_eq!(exec(&d, &["--", "no-such-program-zz"]).code(), 126);

    let d = start(DEMO_ANY);
    let out = exec(&d, &["--", "no-such-program-zz", "arg"]);
    assert_eq!(out.code(), 127);
    assert_eq!(
        out.stderr_text(),
        "sockctl: no-such-program-zz: command not found\n"
    );

    // Users not listed get [default], which denies unless it says otherwise.
    let d = start("");
    let out = exec(&d, &["--", "true"]);
    assert_eq!(out.code(), 126, "{}", out.stderr_text());
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let d = start("[plugins.exec.users.demo]\nallow = \"any\"\ntimeout_secs = 1\n");
    let m = marks();
    let script = format!("echo started; trap '' TERM; {}", tree_script(&m));
    let started = Instant::now();
    let out = exec(&d, &["-c", &script]);
    assert_eq!(out.code(), 124, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "started\n");
    assert_eq!(out.stderr_text(), "sockctl: command timed out after 1 s\n");
    // 1 s, plus the 300 ms grace for the shell that ignores SIGTERM.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(3), || none_running(&m)),
        "left running: {m:?}"
    );
}

#[test]
fn killing_the_client_kills_the_process_tree() {
    let d = start(DEMO_ANY);
    let m = marks();
    let mut child = spawn_exec(&d, &["-c", &tree_script(&m)]);
    assert!(
        wait_until(Duration::from_secs(10), || all_running(&m)),
        "the tree did not start"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || none_running(&m)),
        "left running after the client died"
    );
}

#[test]
fn ctrl_c_cancels_and_kills_the_process_tree() {
    let d = start(DEMO_ANY);
    let m = marks();
    let mut child = spawn_exec(&d, &["-c", &tree_script(&m)]);
    assert!(
        wait_until(Duration::from_secs(10), || all_running(&m)),
        "the tree did not start"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || child
            .try_wait()
            .unwrap()
            .is_some()),
        "sockctl did not end on ^C"
    );
    assert_eq!(child.wait().unwrap().code(), Some(130));
    // The server answered only once the command was gone.
    assert!(none_running(&m), "left running after ^C");
}

#[test]
fn the_environment_is_scrubbed() {
    let d = Daemon::start_with(Options {
        config: Some(exec_config(DEMO_ANY)),
        env: vec![
            ("NOTIFY_SOCKET".into(), "/nonexistent/notify".into()),
            ("SOCKD_E2E_SECRET".into(), "must-not-leak".into()),
            ("LANG".into(), "de_DE.UTF-8".into()),
        ],
    });
    let out = exec(&d, &["--", "env"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let env = out.stdout_text();
    let mut names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["EDITOR", "HOME", "LANG", "LOGNAME", "PATH", "SHELL", "USER"],
        "{env}"
    );
    let home = d.path("state/home/demo");
    for line in [
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "USER=demo",
        "LOGNAME=demo",
        "LANG=C.UTF-8",
        "SHELL=/bin/sh",
        "EDITOR=vi",
        &format!("HOME={}", home.display()),
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} missing from:\n{env}"
        );
    }
    // The command runs in the home directory, created 0700.
    let out = exec(&d, &["--", "pwd"]);
    assert_eq!(out.stdout_text().trim(), home.display().to_string());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// (pid, pgrp, session, tty_nr, tpgid) from a `/proc/PID/stat` line.
fn stat_ids(stat: &str) -> (i64, i64, i64, i64, i64) {
    let pid = stat.split_whitespace().next().unwrap().parse().unwrap();
    let after: Vec<i64> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .skip(2) // state, ppid
        .take(4)
        .map(|f| f.parse().unwrap())
        .collect();
    (pid, after[0], after[1], after[2], after[3])
}

/// What the plugin sets up between starting the command and its exec:
/// its own session, default signals and an empty mask, the policy's
/// limits, only the three standard descriptors, and the errors of a
/// failed start reported as before.
#[test]
fn the_command_starts_clean_in_a_session_of_its_own() {
    let d = start(
        "[plugins.exec.users.demo]\nallow = \"any\"\n\
         rlimits = { cpu_secs = 30, nofile = 64, fsize_bytes = 1048576 }\n",
    );
    let out = exec(&d, &["--", "cat", "/proc/self/status"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let status = out.stdout_text();
    let mask = |name: &str| {
        let hex = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{status}");
    // Signals 1-31 at their defaults (the daemon ignores SIGPIPE). 32 and
    // up are left as sockd got them, e.g. from the test runner.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "{status}");

    // A session and process group of its own, without a terminal...
    let out = exec(&d, &["--", "cat", "/proc/self/stat"]);
    let (pid, pgrp, session, tty, _) = stat_ids(&out.stdout_text());
    assert_eq!((pgrp, session, tty), (pid, pid, 0), "{}", out.stdout_text());
    // ...or with the pty as its controlling terminal, in the foreground.
    let out = d
        .sockctl()
        .args(["exec", "-t", "--", "cat", "/proc/self/stat"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (pid, pgrp, session, tty, tpgid) = stat_ids(&out.stdout_text());
    assert_eq!(
        (pgrp, session, tpgid),
        (pid, pid, pid),
        "{}",
        out.stdout_text()
    );
    assert_ne!(tty, 0);

    let out = exec(&d, &["--", "cat", "/proc/self/limits"]);
    let limits = out.stdout_text();
    for (name, soft, hard) in [
        ("Max cpu time", "30", "31"),
        ("Max open files", "64", "64"),
        ("Max file size", "1048576", "1048576"),
    ] {
        assert!(
            limits.lines().any(|l| l.starts_with(name)
                && l[name.len()..].split_whitespace().take(2).eq([soft, hard])),
            "{name} {soft} {hard} in:\n{limits}"
        );
    }

    // stdin, stdout, stderr, and the directory ls is reading: nothing of
    // the daemon's.
    let out = exec(&d, &["--", "ls", "/proc/self/fd"]);
    assert_eq!(out.stdout_text(), "0\n1\n2\n3\n");

    // A script without a #! line runs with /bin/sh, as execvp does.
    let home = d.path("state/home/demo");
    use std::os::unix::fs::PermissionsExt;
    let bare = home.join("bare");
    std::fs::write(&bare, "echo \"bare $1\"\n").unwrap();
    std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = exec(&d, &["--", "./bare", "x"]);
    assert_eq!(
        (out.code(), out.stdout_text().as_str()),
        (0, "bare x\n"),
        "{}",
        out.stderr_text()
    );

    // Failures of the start itself, as the exec reports them.
    std::fs::write(home.join("plain"), "x").unwrap();
    let script = home.join("script");
    std::fs::write(&script, "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (args, code, message) in [
        (
            ["--", "./plain"],
            126,
            "sockctl: ./plain: permission denied\n",
        ),
        (["--", "/tmp"], 126, "sockctl: /tmp: permission denied\n"),
        (
            ["--", "./script"],
            127,
            "sockctl: ./script: command not found\n",
        ),
    ] {
        let out = exec(&d, &args);
        assert_eq!(
            (out.code(), out.stderr_text().as_str()),
            (code, message),
            "{args:?}"
        );
    }
}

#[test]
fn a_pty_merges_output_and_gets_term_and_size() {
    let d = start(DEMO_ANY);
    let out = exec(&d, &["-t", "--", "tty"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(
        out.stdout_text().starts_with("/dev/pts/"),
        "{:?}",
        out.stdout_text()
    );
    let out = d
        .sockctl()
        .env("TERM", "xterm-256color")
        .args([
            "exec",
            "-t",
            "-c",
            "echo $TERM; stty size; echo err >&2; exit 5",
        ])
        .output()
        .unwrap();
    assert_eq!(out.code(), 5);
    // No local terminal: the default size; stderr arrives on stdout.
    assert_eq!(out.stdout_text(), "xterm-256color\r\n24 80\r\nerr\r\n");
    assert_eq!(out.stderr_text(), "");
    // stdin reaches the terminal; its end is the terminal's EOF character.
    let out = d.run_with_input(&["exec", "-t", "--", "cat"], b"hello\n");
    assert_eq!(out.code(), 0);
    assert!(
        out.stdout_text().contains("hello\r\n"),
        "{:?}",
        out.stdout_text()
    );
}

/// Runs `line` under script(1), so sockctl has a real terminal.
fn under_script(d: &Daemon, line: &str) -> std::process::Output {
    Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .env("SOCKCTL_CONFIG", d.path("client.toml"))
        .env("TERM", "xterm")
        .current_dir(d.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux")
}

#[test]
fn with_a_local_terminal_raw_mode_is_restored_and_resizes_follow() {
    let d = start(DEMO_ANY);
    let sockctl = sockd_e2e::bin("sockctl");
    let s = sockctl.display();
    // The terminal's settings are the same after sockctl, whether the
    // command exits, dies of a signal, or sockctl itself is terminated.
    let line = format!(
        "stty -g > before; {s} exec -t -- true; stty -g > after1; \
         {s} exec -t -c 'kill -9 $$'; echo status=$?; stty -g > after2; \
         (while [ ! -e state/home/demo/running ]; do sleep 0.02; done; kill -TERM $(cat pid)) & \
         sh -c 'echo $$ > pid; exec {s} exec -t -c \"touch running; sleep 30\"'; \
         echo status=$?; stty -g > after3"
    );
    let out = under_script(&d, &line);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status=137") && text.contains("status=143"),
        "{text}"
    );
    let before = std::fs::read_to_string(d.path("before")).unwrap();
    for after in ["after1", "after2", "after3"] {
        assert_eq!(
            std::fs::read_to_string(d.path(after)).unwrap(),
            before,
            "{after}: terminal not restored"
        );
    }
    // A window-size change reaches the remote terminal (SIGWINCH → resize).
    let remote = "stty size; touch sized; i=0; while [ \"$(stty size)\" = \"30 100\" ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done; stty size";
    let line = format!(
        "stty cols 100 rows 30; {s} exec -t -c '{remote}' & p=$!; \
         while [ ! -e state/home/demo/sized ]; do sleep 0.02; done; stty cols 120 rows 40; wait $p"
    );
    let out = under_script(&d, &line);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("30 100") && text.contains("40 120"),
        "{text:?}"
    );
}

#[test]
fn bulk_data_arrives_intact_both_ways() {
    let d = start(DEMO_ANY);
    let size = 32 << 20;
    let mut data = vec![0u8; size];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut data).unwrap();
    let file = d.path("big.bin");
    std::fs::write(&file, &data).unwrap();
    let digest = |b: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let want = digest(&data);

    let started = Instant::now();
    let out = exec(&d, &["--", "cat", file.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout.len(), size);
    assert!(digest(&out.stdout) == want, "server → client data differs");

    let mut child = d
        .sockctl()
        .args(["exec", "--", "sha256sum"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        text.split_whitespace().next(),
        Some(hex.as_str()),
        "client → server data differs"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn too_many_commands_at_once_is_busy() {
    let d = start("[plugins.exec.users.demo]\nallow = \"any\"\nmax_concurrent = 1\n");
    let m = marker();
    let mut first = spawn_exec(&d, &["--", "sleep", &m]);
    assert!(wait_until(Duration::from_secs(10), || live_sleeps(&m)
        .len()
        == 1));
    let out = exec(&d, &["--", "true"]);
    assert_eq!(out.code(), 21, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("max_concurrent = 1"),
        "{}",
        out.stderr_text()
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // The slot is given back once the first command is over.
    assert!(wait_until(Duration::from_secs(5), || exec(
        &d,
        &["--", "true"]
    )
    .code()
        == 0));
}

#[test]
fn reload_applies_new_settings() {
    let d = start(DEMO_ANY);
    assert_eq!(exec(&d, &["--", "true"]).code(), 0);
    std::fs::write(
        d.path("sockd.toml"),
        exec_config("[plugins.exec.users.demo]\nallow = \"none\"\n"),
    )
    .unwrap();
    let out = d.run(&["reload"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(exec(&d, &["--", "true"]).code(), 126);

    // A typo in the plugin's table: the reload says which plugin refused
    // and why, and the plugin keeps the policy it had.
    std::fs::write(
        d.path("sockd.toml"),
        exec_config("[plugins.exec.users.demo]\nalow = \"any\"\n"),
    )
    .unwrap();
    let out = d.run(&["reload"]);
    assert_ne!(out.code(), 0);
    let err = out.stderr_text();
    assert!(err.contains("reload incomplete"), "{err}");
    assert!(
        err.contains("plugin \"exec\" rejected its new settings and keeps its previous ones"),
        "{err}"
    );
    assert!(err.contains("alow"), "the plugin's reason is shown: {err}");
    assert_eq!(exec(&d, &["--", "true"]).code(), 126);
}

#[test]
fn sockctl_failures_exit_255() {
    let d = start(DEMO_ANY);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = d.run(&["exec", "--server", &closed, "--", "true"]);
    assert_eq!(out.code(), 255, "{}", out.stderr_text());
    assert!(
        out.stderr_text().starts_with("sockctl: "),
        "{}",
        out.stderr_text()
    );
    // The daemon going away mid-command is sockctl's failure too.
    let m = marker();
    let mut child = spawn_exec(&d, &["--", "sleep", &m]);
    assert!(wait_until(Duration::from_secs(10), || live_sleeps(&m)
        .len()
        == 1));
    drop(d); // SIGKILL: the daemon cannot clean up; we do it below.
    assert!(wait_until(Duration::from_secs(10), || child
        .try_wait()
        .unwrap()
        .is_some()));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.code(), 255, "{}", out.stderr_text());
    for pid in live_sleeps(&m) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn what_a_command_leaves_behind_is_ended_with_it() {
    let d = start(DEMO_ANY);
    // Output redirected: exec returns at once, and the sleep is gone.
    let m = marker();
    let started = Instant::now();
    let out = exec(&d, &["-c", &format!("sleep {m} >/dev/null 2>&1 &")]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(live_sleeps(&m).is_empty(), "sleep {m} outlived its command");
    // On a terminal, the command's exit ends what still holds the terminal.
    let m = marker();
    let out = exec(
        &d,
        &[
            "-t",
            "-c",
            &format!("echo hi; (trap '' HUP; sleep {m}) & echo bye"),
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "hi\r\nbye\r\n");
    assert!(live_sleeps(&m).is_empty(), "sleep {m} outlived its command");
}

#[test]
fn a_closed_stdout_ends_the_command() {
    let d = start(DEMO_ANY);
    let m = marker();
    let mut child = spawn_exec(&d, &["-c", &format!("sleep {m} & yes")]);
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 4];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"y\ny\n");
    drop(stdout);
    assert!(wait_until(Duration::from_secs(10), || child
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(
        child.wait().unwrap().code(),
        Some(141),
        "128 + SIGPIPE, like a shell pipeline"
    );
    assert!(
        wait_until(Duration::from_secs(5), || live_sleeps(&m).is_empty()),
        "sleep {m} still running"
    );
}
