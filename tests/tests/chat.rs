//! The chat plugin end to end: the real sockd with `libsockd_chat.so`
//! and real `sockctl chat` clients as several users — direct messages,
//! rooms and presence, limits and their errors, offline delivery that
//! survives SIGKILL exactly once, a hot reload under a live listener, 50
//! concurrent senders with rooms churning, the interactive client driven
//! through tmux; live delivery ahead of the commit with only confirmed
//! messages durable across SIGKILL, ids increasing across restarts, and
//! one room order for every member under concurrent senders.

use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, wait_until};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// A daemon with the chat plugin and users with key files.
struct ChatServer {
    d: Daemon,
    keys: HashMap<String, PathBuf>,
}

impl ChatServer {
    fn start(chat_settings: &str) -> ChatServer {
        let config = format!(
            "{TEST_CONFIG}\n[plugins.chat]\nfile = \"libsockd_chat.so\"\n{chat_settings}\n"
        );
        let d = Daemon::start_with(Options {
            config: Some(config),
            ..Options::default()
        });
        ChatServer {
            d,
            keys: HashMap::new(),
        }
    }

    /// Creates `name` with a key file; `demo` exists already.
    fn add_user(&mut self, name: &str) {
        let key = self.d.path(&format!("{name}.key"));
        let out = self
            .d
            .run(&["user", "add", name, "--key-file", key.to_str().unwrap()]);
        assert_eq!(out.code(), 0, "user add {name}: {}", out.stderr_text());
        self.keys.insert(name.to_string(), key);
    }

    /// `sockctl` as `user`.
    fn sockctl(&self, user: &str) -> Command {
        let mut cmd = self.d.sockctl();
        if let Some(key) = self.keys.get(user) {
            cmd.args(["--user", user, "--key-file", key.to_str().unwrap()]);
        }
        cmd
    }

    fn run(&self, user: &str, args: &[&str]) -> std::process::Output {
        self.sockctl(user).args(args).output().expect("run sockctl")
    }

    /// `chat send TARGET - --lines` as `user`, fed `input` by a thread of
    /// `scope`; returns the running sockctl (stderr piped).
    fn send_lines<'scope>(
        &self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        user: &str,
        target: &str,
        input: String,
    ) -> std::process::Child {
        let mut child = self
            .sockctl(user)
            .args(["chat", "send", target, "-", "--lines"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sockctl chat send");
        let mut stdin = child.stdin.take().expect("piped stdin");
        scope.spawn(move || stdin.write_all(input.as_bytes()).expect("feed sockctl"));
        child
    }

    /// Waits until `chat who` lists `user` as online.
    fn wait_online(&self, user: &str) {
        assert!(
            wait_until(LIMIT, || self
                .run_ok("demo", &["chat", "who"])
                .lines()
                .any(|l| l == user)),
            "{user} never came online"
        );
    }

    fn run_ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.run(user, args);
        assert_eq!(
            out.code(),
            0,
            "{user}: sockctl {args:?}: {}",
            out.stderr_text()
        );
        out.stdout_text()
    }

    fn run_with_input(&self, user: &str, args: &[&str], input: &[u8]) -> std::process::Output {
        let mut child = self
            .sockctl(user)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockctl");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `chat read --json` as `user`: the messages waiting, parsed.
    fn read(&self, user: &str) -> Vec<serde_json::Value> {
        json_lines(&self.run_ok(user, &["chat", "read", "--json"]))
    }

    /// A `chat read --follow --json` running as `user`.
    fn follow(&self, user: &str) -> Follower {
        Follower::spawn(
            self.sockctl(user)
                .args(["chat", "read", "--follow", "--json"]),
        )
    }
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn texts(messages: &[serde_json::Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// A long-running client whose stdout lines are collected by a thread.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<serde_json::Value>,
}

impl Follower {
    fn spawn(cmd: &mut Command) -> Follower {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn follower");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Collects lines until `done(seen)` holds; false after `limit`.
    fn wait_for(&mut self, limit: Duration, done: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                return false;
            };
            // Take every line already there before checking again.
            for line in std::iter::once(line).chain(self.lines.try_iter()) {
                self.seen
                    .push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
            }
        }
        true
    }

    fn messages(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter(|m| m["kind"] == "msg")
            .cloned()
            .collect()
    }

    /// Ctrl-C: the client acknowledges what it printed and exits 0.
    fn interrupt(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "follower exited with {status}");
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_and_three_users_talk_directly_and_in_rooms() {
    let mut s = ChatServer::start("");
    s.add_user("bob");
    s.add_user("carol");
    // A user nobody has seen in chat is unknown; after a login they exist.
    let out = s.run("demo", &["chat", "send", "bob", "too early"]);
    assert_eq!(out.code(), 12, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("no such user"),
        "{}",
        out.stderr_text()
    );
    assert!(s.read("bob").is_empty());
    assert!(s.read("carol").is_empty());

    // Direct messages, offline: waiting in order, shown once.
    s.run_ok("demo", &["chat", "send", "bob", "hello bob"]);
    let out = s.run_with_input("demo", &["chat", "send", "bob", "-"], b"from stdin\n");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let got = s.read("bob");
    assert_eq!(texts(&got), ["hello bob", "from stdin"]);
    assert!(
        got.iter()
            .all(|m| m["from"] == "demo" && m["to"] == "bob" && m["kind"] == "msg")
    );
    assert!(
        got[0]["id"].as_i64() < got[1]["id"].as_i64(),
        "ids increase: {got:?}"
    );
    assert!(got[0]["ts"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(s.read("bob").is_empty(), "read twice");
    // Replies go the other way; history shows the conversation to both.
    s.run_ok("bob", &["chat", "send", "demo", "hi demo"]);
    let history = json_lines(&s.run_ok("demo", &["chat", "history", "bob", "--json"]));
    assert_eq!(texts(&history), ["hello bob", "from stdin", "hi demo"]);
    let last_two = json_lines(&s.run_ok("bob", &["chat", "history", "demo", "-n", "2", "--json"]));
    assert_eq!(texts(&last_two), ["from stdin", "hi demo"]);
    let older = history[1]["id"].to_string();
    let page = json_lines(&s.run_ok(
        "bob",
        &["chat", "history", "demo", "--before", &older, "--json"],
    ));
    assert_eq!(texts(&page), ["hello bob"]);
    let plain = s.run_ok("demo", &["chat", "history", "bob"]);
    assert!(
        plain.contains("bob: hi demo") && !plain.contains('\x1b'),
        "{plain:?}"
    );

    // Live: bob listens (twice: presence counts him once) and gets messages
    // as they are sent, in order.
    let mut bob = s.follow("bob");
    let mut bob2 = s.follow("bob");
    s.wait_online("bob");
    let who = s.run_ok("demo", &["chat", "who"]);
    assert_eq!(who.lines().filter(|l| *l == "bob").count(), 1, "{who}");
    // carol's last session ends once the daemon has seen her disconnect.
    assert!(
        wait_until(LIMIT, || {
            !s.run_ok("demo", &["chat", "who"])
                .lines()
                .any(|l| l == "carol")
        }),
        "carol is offline"
    );
    let many: String = (0..20).map(|i| format!("live {i}\n")).collect();
    let out = s.run_with_input(
        "demo",
        &["chat", "send", "bob", "-", "--lines"],
        many.as_bytes(),
    );
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let expected: Vec<String> = (0..20).map(|i| format!("live {i}")).collect();
    assert!(
        bob.wait_for(LIMIT, |seen| seen.len() >= 20),
        "bob got {:?}",
        bob.seen
    );
    assert!(
        bob2.wait_for(LIMIT, |seen| seen.len() >= 20),
        "bob's 2nd session got {:?}",
        bob2.seen
    );
    assert_eq!(texts(&bob.seen), expected);
    assert_eq!(texts(&bob2.seen), expected);

    // A room of three: members, notices, messages to everyone but the sender.
    let mut carol = s.follow("carol");
    let join = s.run_ok("demo", &["chat", "join", "#team", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&join).unwrap()["members"],
        serde_json::json!(["demo"])
    );
    assert!(
        s.run_ok("bob", &["chat", "join", "team"])
            .contains("joined #team")
    );
    s.run_ok("carol", &["chat", "join", "#Team"]);
    let members = s.run_ok("demo", &["chat", "who", "#team"]);
    for user in ["demo", "bob", "carol"] {
        assert!(
            members
                .lines()
                .any(|l| l.starts_with(user) && l.ends_with("online")),
            "{members}"
        );
    }
    s.run_ok("demo", &["chat", "send", "#team", "hello team"]);
    s.run_ok("carol", &["chat", "send", "#team", "hi all"]);
    assert!(
        bob.wait_for(LIMIT, |seen| texts_of(seen, "#team")
            == ["hello team", "hi all"]),
        "bob: {:?}",
        bob.seen
    );
    assert!(
        carol.wait_for(LIMIT, |seen| texts_of(seen, "#team") == ["hello team"]),
        "carol: {:?}",
        carol.seen
    );
    let notices: Vec<String> = bob
        .seen
        .iter()
        .filter(|m| m["to"] == "#team" && m["kind"] == "join")
        .map(|m| m["from"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(notices, ["carol"], "bob sees carol join after him");
    let rooms = s.run_ok("bob", &["chat", "rooms"]);
    assert!(
        rooms.contains("#team") && rooms.contains("3") && rooms.contains("yes"),
        "{rooms}"
    );
    s.run_ok("carol", &["chat", "leave", "#team"]);
    assert!(bob.wait_for(LIMIT, |seen| {
        seen.iter()
            .any(|m| m["kind"] == "leave" && m["from"] == "carol")
    }));
    let out = s.run("carol", &["chat", "send", "#team", "still here?"]);
    assert_eq!(
        out.code(),
        11,
        "not a member any more: {}",
        out.stderr_text()
    );
    let out = s.run("carol", &["chat", "send", "#nowhere", "anyone?"]);
    assert_eq!(out.code(), 12, "no such room: {}", out.stderr_text());
    let room_history = json_lines(&s.run_ok("carol", &["chat", "history", "#team", "--json"]));
    assert_eq!(
        texts(&room_history)
            .iter()
            .filter(|t| !t.is_empty())
            .count(),
        2
    );

    // What the followers printed was acknowledged when they stopped.
    bob.interrupt();
    bob2.interrupt();
    carol.interrupt();
    assert!(s.read("bob").is_empty());
    assert!(s.read("carol").is_empty());
}

fn texts_of(seen: &[serde_json::Value], to: &str) -> Vec<String> {
    seen.iter()
        .filter(|m| m["to"] == to && m["kind"] == "msg")
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn limits_refuse_clearly_and_affect_nothing_else() {
    let mut s = ChatServer::start(
        "max_message_bytes = 16\nrate_per_sec = 0.01\nburst = 3\nmax_rooms = 1\n",
    );
    s.add_user("bob");
    assert!(s.read("bob").is_empty());
    let out = s.run("demo", &["chat", "send", "bob", &"x".repeat(17)]);
    assert_eq!(out.code(), 18, "too large: {}", out.stderr_text());
    assert!(
        out.stderr_text().contains("max_message_bytes"),
        "{}",
        out.stderr_text()
    );
    let out = s.run_with_input(
        "demo",
        &["chat", "send", "bob", "-"],
        "y".repeat(100).as_bytes(),
    );
    assert_eq!(
        out.code(),
        18,
        "too large from stdin: {}",
        out.stderr_text()
    );
    for i in 0..3 {
        s.run_ok("demo", &["chat", "send", "bob", &format!("m{i}")]);
    }
    let out = s.run("demo", &["chat", "send", "bob", "one too many"]);
    assert_eq!(out.code(), 19, "rate limited: {}", out.stderr_text());
    assert!(out.stderr_text().contains("rate"), "{}", out.stderr_text());
    // bob's own bucket is untouched, and what was accepted arrives.
    assert_eq!(texts(&s.read("bob")), ["m0", "m1", "m2"]);
    s.run_ok("bob", &["chat", "send", "demo", "bob is fine"]);
    s.run_ok("demo", &["chat", "join", "#one"]);
    let out = s.run("bob", &["chat", "join", "#two"]);
    assert_eq!(out.code(), 15, "max_rooms: {}", out.stderr_text());
    s.run_ok("bob", &["chat", "join", "#one"]);
    let out = s.run_with_input("demo", &["chat", "send", "bob", "-", "--lines"], b"a\nb\n");
    assert_eq!(out.code(), 19, "still limited: {}", out.stderr_text());
    for bad in [
        &["chat", "send", "#bad room", "x"][..],
        &["chat", "join", "nope!"][..],
    ] {
        let out = s.run("demo", bad);
        assert_eq!(out.code(), 23, "{bad:?}: {}", out.stderr_text());
    }
    let log = s.d.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn bad_settings_are_reported() {
    let s = ChatServer::start("max_mesage_bytes = 10\n");
    let out = s.run("demo", &["chat", "who"]);
    assert_ne!(
        out.code(),
        0,
        "a chat plugin with a typo in its settings must not run"
    );
    assert!(
        wait_until(LIMIT, || s.d.log_text().contains("max_mesage_bytes")),
        "{}",
        s.d.log_text()
    );
}

#[test]
fn offline_messages_survive_sigkill_and_are_delivered_exactly_once() {
    let mut s = ChatServer::start("");
    s.add_user("bob");
    assert!(s.read("bob").is_empty());
    let lines: String = (1..=5).map(|i| format!("offline {i}\n")).collect();
    let out = s.run_with_input(
        "demo",
        &["chat", "send", "bob", "-", "--lines", "--json"],
        lines.as_bytes(),
    );
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert_eq!(
        json_lines(&out.stdout_text()).len(),
        5,
        "each message accepted with an id"
    );
    s.d.restart_after_kill();

    // A client that shows two and stops acknowledges exactly those two.
    let two = json_lines(&s.run_ok("bob", &["chat", "read", "--json", "-n", "2"]));
    assert_eq!(texts(&two), ["offline 1", "offline 2"]);
    // A client that dies before acknowledging gets the rest again: the
    // generic `call` never acknowledges.
    let mut raw = Follower::spawn(
        s.sockctl("bob")
            .args(["call", "chat", "listen", "--no-live"]),
    );
    assert!(
        raw.wait_for(LIMIT, |seen| seen.len() >= 3),
        "{:?}",
        raw.seen
    );
    assert_eq!(texts(&raw.seen), ["offline 3", "offline 4", "offline 5"]);
    drop(raw);
    s.d.restart_after_kill();
    let rest = s.read("bob");
    assert_eq!(texts(&rest), ["offline 3", "offline 4", "offline 5"]);
    assert!(
        rest.windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );
    s.d.restart_after_kill();
    assert!(s.read("bob").is_empty(), "never again after the ack");
    let history = json_lines(&s.run_ok("bob", &["chat", "history", "demo", "--json"]));
    assert_eq!(history.len(), 5, "history survives too");
}

#[test]
fn hot_reload_keeps_old_listeners_served() {
    let mut s = ChatServer::start("");
    s.add_user("bob");
    let mut bob = s.follow("bob");
    s.wait_online("bob");
    s.run_ok("demo", &["chat", "send", "bob", "before reload"]);
    assert!(bob.wait_for(LIMIT, |seen| seen.len() == 1));
    let out = s.d.run(&["plugin", "reload", "chat"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    // The new build writes and pushes; the old build's listener shows it and
    // acknowledges through the old build: both use the database at once.
    for i in 0..10 {
        s.run_ok(
            "demo",
            &["chat", "send", "bob", &format!("after reload {i}")],
        );
    }
    assert!(
        bob.wait_for(LIMIT, |seen| seen.len() == 11),
        "{:?}",
        bob.seen
    );
    bob.interrupt();
    assert!(
        s.read("bob").is_empty(),
        "acknowledged through the old build"
    );
    s.run_ok("demo", &["chat", "send", "bob", "last"]);
    assert_eq!(texts(&s.read("bob")), ["last"]);
    // The first build delivered live before its commits until the new one
    // opened the database; then both delivered after the commit.
    let log = s.d.log_text();
    assert!(
        log.contains("another build uses the database"),
        "the live build handed over"
    );
    // The old build ended with its last listener: the new one is alone and
    // delivers live again.
    assert!(
        wait_until(LIMIT, || s
            .d
            .log_text()
            .contains("this build is alone again")),
        "the new build went live"
    );
    s.run_ok("demo", &["chat", "send", "bob", "live again"]);
    assert_eq!(texts(&s.read("bob")), ["live again"]);
}

#[test]
fn fifty_senders_while_members_join_and_leave_lose_and_duplicate_nothing() {
    const SENDERS: usize = 50;
    const EACH: usize = 1000;
    let mut s = ChatServer::start("rate_per_sec = 1000000\nburst = 1000000\n");
    for user in ["bob", "carol", "dave", "erin"] {
        s.add_user(user);
    }
    for user in ["demo", "bob", "carol"] {
        s.run_ok(user, &["chat", "join", "#load"]);
    }
    let mut receivers = [s.follow("bob"), s.follow("carol")];

    let churn = |s: &ChatServer, user: &str| {
        let mut ops = 0;
        for _ in 0..10 {
            s.run_ok(user, &["chat", "join", "#load"]);
            s.run_ok(user, &["chat", "leave", "#load"]);
            ops += 2;
        }
        ops
    };
    let notices = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                let input: String = (0..EACH).map(|n| format!("s{i} {n}\n")).collect();
                s.send_lines(scope, "demo", "#load", input)
            })
            .collect();
        let dave = scope.spawn(|| churn(&s, "dave"));
        let erin = scope.spawn(|| churn(&s, "erin"));
        for child in senders {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.code(), 0, "sender: {}", out.stderr_text());
        }
        dave.join().unwrap() + erin.join().unwrap()
    });

    let complete = |seen: &[serde_json::Value]| {
        let msgs = seen.iter().filter(|m| m["kind"] == "msg").count();
        let churned = seen
            .iter()
            .filter(|m| m["kind"] != "msg" && (m["from"] == "dave" || m["from"] == "erin"))
            .count();
        msgs == SENDERS * EACH && churned == notices
    };
    for r in &mut receivers {
        assert!(
            r.wait_for(Duration::from_secs(120), complete),
            "got {} deliveries",
            r.seen.len()
        );
        let mut next = vec![0usize; SENDERS];
        for m in r.messages() {
            let text = m["text"].as_str().unwrap();
            let (sender, n) = text
                .strip_prefix('s')
                .and_then(|t| t.split_once(' '))
                .unwrap();
            let (sender, n): (usize, usize) = (sender.parse().unwrap(), n.parse().unwrap());
            assert_eq!(
                n, next[sender],
                "sender {sender}: out of order, lost or duplicated"
            );
            next[sender] += 1;
        }
        assert!(next.iter().all(|&n| n == EACH), "{next:?}");
        let seqs: Vec<i64> = r.seen.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "deliveries numbered without gaps"
        );
    }
    for r in receivers {
        r.interrupt();
    }
    assert!(s.read("bob").is_empty());
    assert!(s.read("carol").is_empty());
}

/// tmux on a private socket, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "chat"])
            .stdout_text()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn interactive_client_prints_messages_above_a_half_typed_line() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux is not installed; skipping");
        return;
    }
    let mut s = ChatServer::start("");
    s.add_user("bob");
    assert!(s.read("bob").is_empty());
    let tmux = Tmux {
        socket: format!("sockd-chat-{}", std::process::id()),
    };
    let command = format!(
        "env SOCKCTL_CONFIG={} TERM=xterm-256color {} chat",
        s.d.path("client.toml").display(),
        sockd_e2e::bin("sockctl").display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-x",
        "120",
        "-y",
        "30",
        "-s",
        "chat",
        &command,
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(
        wait_until(LIMIT, || tmux.screen().contains("chat as demo")),
        "{}",
        tmux.screen()
    );

    tmux.cmd(&["send-keys", "-t", "chat", "/msg bob", "Enter"]);
    // capture-pane drops trailing blanks: the prompt "bob> " shows as "bob>".
    assert!(
        wait_until(LIMIT, || tmux.screen().lines().any(|l| l == "bob>")),
        "{}",
        tmux.screen()
    );
    tmux.cmd(&["send-keys", "-t", "chat", "-l", "hello wor"]);
    assert!(
        wait_until(LIMIT, || tmux.screen().contains("bob> hello wor")),
        "{}",
        tmux.screen()
    );
    s.run_ok("bob", &["chat", "send", "demo", "ping from bob"]);
    assert!(
        wait_until(LIMIT, || {
            let screen = tmux.screen();
            let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
            screen.contains("bob: ping from bob")
                && lines
                    .last()
                    .is_some_and(|l| l.trim_end() == "bob> hello wor")
        }),
        "the message is printed above the intact half-typed line:\n{}",
        tmux.screen()
    );
    tmux.cmd(&["send-keys", "-t", "chat", "-l", "ld"]);
    tmux.cmd(&["send-keys", "-t", "chat", "Enter"]);
    assert!(
        wait_until(LIMIT, || tmux.screen().contains("demo -> bob: hello world")),
        "{}",
        tmux.screen()
    );
    assert_eq!(texts(&s.read("bob")), ["hello world"]);
    tmux.cmd(&["send-keys", "-t", "chat", "/who", "Enter"]);
    assert!(
        wait_until(LIMIT, || tmux.screen().contains("online: ")),
        "{}",
        tmux.screen()
    );
    tmux.cmd(&["send-keys", "-t", "chat", "/quit", "Enter"]);
    assert!(
        wait_until(LIMIT, || tmux.cmd(&["has-session", "-t", "chat"]).code()
            != 0),
        "{}",
        tmux.screen()
    );
    // The message shown in the client was acknowledged: not waiting any more.
    let out = s.run_ok("demo", &["chat", "read", "--json"]);
    assert!(json_lines(&out).is_empty(), "{out}");
}

/// Holds the chat store's cross-build lock (`chat.db.lock`) from the test
/// process: the daemon's store thread cannot commit until it is dropped.
struct CommitsBlocked {
    /// Holding the open file holds the flock; closing it releases it.
    _lock: std::fs::File,
}

impl CommitsBlocked {
    fn hold(s: &ChatServer) -> CommitsBlocked {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(s.d.path("state/chat/chat.db.lock"))
            .expect("the chat store's lock file");
        file.lock().expect("flock chat.db.lock");
        CommitsBlocked { _lock: file }
    }
}

/// The `id` of the message with `text` among `seen`.
fn id_of(seen: &[serde_json::Value], text: &str) -> i64 {
    seen.iter()
        .find(|m| m["text"] == text)
        .and_then(|m| m["id"].as_i64())
        .unwrap_or_else(|| panic!("{text:?} not among {seen:?}"))
}

#[test]
fn live_delivery_precedes_the_commit_and_only_confirmed_messages_are_durable() {
    let mut s = ChatServer::start("");
    s.add_user("bob");
    let mut bob = s.follow("bob");
    s.wait_online("bob");
    let first = json_lines(&s.run_ok("demo", &["chat", "send", "bob", "committed", "--json"]));
    let committed_id = first[0]["id"].as_i64().unwrap();
    assert!(bob.wait_for(LIMIT, |seen| seen.len() == 1));

    // With commits blocked, bob still gets the message at once; the sender
    // is confirmed only once the commit could happen.
    let blocked = CommitsBlocked::hold(&s);
    let mut sender = s
        .sockctl("demo")
        .args(["chat", "send", "bob", "live first", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        bob.wait_for(LIMIT, |seen| seen.len() == 2),
        "delivered before its commit: {:?}",
        bob.seen
    );
    assert!(
        sender.try_wait().unwrap().is_none(),
        "confirmed although nothing could be committed"
    );
    drop(blocked);
    let out = sender.wait_with_output().unwrap();
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let live_first = json_lines(&out.stdout_text())[0]["id"].as_i64().unwrap();
    assert_eq!(live_first, id_of(&bob.seen, "live first"));

    // A message delivered live but never committed is what a crash loses:
    // its sender was never confirmed.
    let blocked = CommitsBlocked::hold(&s);
    let mut unconfirmed = s
        .sockctl("demo")
        .args(["chat", "send", "bob", "never committed"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        bob.wait_for(LIMIT, |seen| seen.len() == 3),
        "{:?}",
        bob.seen
    );
    let lost_id = id_of(&bob.seen, "never committed");
    assert!(unconfirmed.try_wait().unwrap().is_none());
    s.d.restart_after_kill();
    drop(blocked);
    let status = unconfirmed.wait().unwrap();
    assert!(!status.success(), "the unconfirmed sender saw an error");
    drop(bob);

    // Every confirmed message survived, the unconfirmed one is gone, and
    // ids go on above every id handed out before the kill.
    let history = json_lines(&s.run_ok("bob", &["chat", "history", "demo", "--json"]));
    assert_eq!(texts(&history), ["committed", "live first"]);
    let after = json_lines(&s.run_ok("demo", &["chat", "send", "bob", "after restart", "--json"]));
    let after_id = after[0]["id"].as_i64().unwrap();
    assert!(
        committed_id < live_first && live_first < lost_id && lost_id < after_id,
        "ids {committed_id} < {live_first} < {lost_id} < {after_id}"
    );
    // bob acknowledged what he was shown before the kill; what was lost is
    // not offered again, the new message is.
    let waiting = s.read("bob");
    assert!(
        waiting.iter().all(|m| m["text"] != "never committed"),
        "{waiting:?}"
    );
    assert_eq!(
        texts(&waiting).last().map(String::as_str),
        Some("after restart")
    );
    // A second kill and restart: ids still increase, nothing repeats.
    s.d.restart_after_kill();
    let again = json_lines(&s.run_ok("demo", &["chat", "send", "bob", "second restart", "--json"]));
    assert!(again[0]["id"].as_i64().unwrap() > after_id);
    let history = json_lines(&s.run_ok("demo", &["chat", "history", "bob", "--json"]));
    assert_eq!(
        texts(&history),
        ["committed", "live first", "after restart", "second restart"]
    );
}

#[test]
fn concurrent_senders_into_one_room_are_seen_in_one_order_by_every_member() {
    const SENDERS: usize = 8;
    const EACH: usize = 300;
    let mut s = ChatServer::start("rate_per_sec = 1000000\nburst = 1000000\n");
    let members = ["bob", "carol", "dave"];
    for user in members {
        s.add_user(user);
        s.run_ok(user, &["chat", "join", "#order"]);
    }
    s.run_ok("demo", &["chat", "join", "#order"]);
    let mut receivers: Vec<Follower> = members.iter().map(|u| s.follow(u)).collect();
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                // Two sessions of demo and the members themselves send at once.
                let user = ["demo", "demo", "bob", "carol"][i % 4];
                let input: String = (0..EACH).map(|n| format!("s{i} {n}\n")).collect();
                s.send_lines(scope, user, "#order", input)
            })
            .collect();
        for child in senders {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.code(), 0, "sender: {}", out.stderr_text());
        }
    });
    // Each member gets every message but their own.
    let expected = |user: &str| {
        (0..SENDERS)
            .filter(|i| ["demo", "demo", "bob", "carol"][i % 4] != user)
            .count()
            * EACH
    };
    let mut orders = Vec::new();
    for (r, user) in receivers.iter_mut().zip(members) {
        let want = expected(user);
        assert!(
            r.wait_for(LIMIT, |seen| seen
                .iter()
                .filter(|m| m["kind"] == "msg")
                .count()
                == want),
            "{user} got {} of {want}",
            r.messages().len()
        );
        let ids: Vec<i64> = r
            .messages()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{user}: in id order");
        let mut next = [0usize; SENDERS];
        for m in r.messages() {
            let (i, n) = m["text"]
                .as_str()
                .and_then(|t| t.strip_prefix('s'))
                .and_then(|t| t.split_once(' '))
                .unwrap();
            let (i, n): (usize, usize) = (i.parse().unwrap(), n.parse().unwrap());
            assert_eq!(n, next[i], "{user}: sender {i} out of order");
            next[i] += 1;
        }
        orders.push(r.messages());
    }
    // The same room order for everyone: what two members both received,
    // they received in the same order, which is also the history's.
    let history = json_lines(&s.run_ok(
        "dave",
        &["chat", "history", "#order", "-n", "10000", "--json"],
    ));
    let history: Vec<i64> = history
        .iter()
        .filter(|m| m["kind"] == "msg")
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(history.len(), SENDERS * EACH);
    for order in &orders {
        let ids: Vec<i64> = order.iter().map(|m| m["id"].as_i64().unwrap()).collect();
        let in_history: Vec<i64> = history
            .iter()
            .copied()
            .filter(|id| ids.contains(id))
            .collect();
        assert_eq!(ids, in_history, "live order is the history's order");
    }
    for r in receivers {
        r.interrupt();
    }
}

#[test]
fn send_lines_answers_alike_on_a_call_thread_and_on_the_connections_task() {
    // The first send-lines opens the store on a call thread; later ones
    // are served on the connection's task (ABI 1.2 pending call), with the
    // same answers: each accepted line's result, then the refusal with the
    // count.
    let mut s = ChatServer::start("max_message_bytes = 10\n");
    s.add_user("bob");
    // The store is not open yet: this one runs on a call thread.
    let unknown = |s: &ChatServer| {
        let out = s.run_with_input("demo", &["chat", "send", "bob", "-", "--lines"], b"hi\n");
        (out.code(), out.stderr_text())
    };
    let on_a_thread = unknown(&s);
    assert!(on_a_thread.1.contains("no such user"), "{}", on_a_thread.1);
    assert!(s.read("bob").is_empty(), "bob has logged in once");
    // Now served on the connection's task: the same refusal for a user
    // chat does not know.
    s.add_user("carol");
    let out = s.run_with_input("demo", &["chat", "send", "carol", "-", "--lines"], b"hi\n");
    assert_eq!(
        (out.code(), out.stderr_text().replace("carol", "bob")),
        on_a_thread
    );
    let input = b"one\n\ntwo\r\nthis is far too long\nthree\n";
    let mut answers = Vec::new();
    for _ in 0..2 {
        let out = s.run_with_input(
            "demo",
            &["chat", "send", "bob", "-", "--lines", "--json"],
            input,
        );
        let results = json_lines(&out.stdout_text());
        assert_eq!(
            results.len(),
            2,
            "{} / {}",
            out.stdout_text(),
            out.stderr_text()
        );
        assert!(results.iter().all(|r| r["to"] == "bob"), "{results:?}");
        answers.push((out.code(), out.stderr_text()));
    }
    assert_eq!(answers[0], answers[1], "the same answer every time");
    assert!(
        answers[0].1.contains("message too large")
            && answers[0].1.contains("(2 message(s) sent before)"),
        "{}",
        answers[0].1
    );
    // A line longer than any message ends the call, without its rest.
    let long = format!("ok\n{}", "x".repeat(64));
    let out = s.run_with_input(
        "demo",
        &["chat", "send", "bob", "-", "--lines"],
        long.as_bytes(),
    );
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr_text().contains("line too long"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(texts(&s.read("bob")), ["one", "two", "one", "two", "ok"]);
}
