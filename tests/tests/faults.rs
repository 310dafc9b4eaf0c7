//! Fault injection (issue #8): sockd SIGKILLed at random points of
//! uploads, downloads, chat offline delivery and user changes, then
//! restarted on the same state; and sockctl SIGKILLed at random points of
//! `put`, `get`, `chat send` and `chat read` while the daemon keeps
//! serving. After every kill:
//!
//! - no file under its final name differs from its source, and a command
//!   that exited 0 left its file complete;
//! - every interrupted transfer completes when run again, resuming if the
//!   killed run kept data (never starting over: what a killed process
//!   wrote is a true prefix), to the right content, and leaves no partial
//!   file behind (a metadata file orphaned between rename and removal is
//!   counted, not failed: see docs/RELIABILITY.md);
//! - bob's `chat read` never shows a message again once a read that
//!   showed it exited 0 (acknowledged), never skips a `seq`, and every
//!   message the server answered "accepted" for is delivered, under one
//!   `seq`, stored once;
//! - the users file loads (sockd restarts), every user is in the state
//!   before or after the interrupted `user add`/`add --replace`/`del`, the
//!   new state if sockctl said so, and logs in with its password.
//!
//! Kill points are random but seeded: the seed is printed and
//! `SOCKD_FAULT_SEED=N` replays the same sizes, kill shares and delays
//! (the machine's timing still varies). `SOCKD_FAULT_ROUNDS=N` sets the
//! number of daemon kills (default 100; client kills: 3/5 of that).
//! A full disk is covered by `a_full_disk_...` in files.rs; results and
//! findings are in docs/RELIABILITY.md, "Fault injection".

use serde_json::Value;
use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Longest a single operation may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(60);
/// PBKDF2 iterations of the test users' passwords, plus the round number:
/// near the minimum, for speed.
const ITERATIONS: u32 = 10_000;
/// Users whose entries are added, replaced and deleted under fire.
const USER_POOL: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Daemon,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Upload,
    Download,
}

/// xorshift64*: seeded, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The seed (from `SOCKD_FAULT_SEED`, else the clock) and the number of
/// daemon kills (from `SOCKD_FAULT_ROUNDS`, else 100).
fn settings() -> (u64, usize) {
    let number = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number"))
        })
    };
    let seed = number("SOCKD_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let rounds = number("SOCKD_FAULT_ROUNDS").unwrap_or(100) as usize;
    (seed, rounds)
}

/// The complete lines a child writes to a pipe, gathered by a thread as
/// they come (a line cut short by a kill is not one).
struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<()>,
}

impl Lines {
    fn gather(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let thread = std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                if buf.pop() != Some(b'\n') {
                    break;
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                sink.lock().expect("lines lock").push(line);
                buf.clear();
            }
        });
        Lines { lines, thread }
    }

    fn count(&self) -> usize {
        self.lines.lock().expect("lines lock").len()
    }

    /// Every line, once the pipe has closed.
    fn finish(self) -> Vec<String> {
        self.thread.join().expect("line reader");
        std::mem::take(&mut *self.lines.lock().expect("lines lock"))
    }
}

/// What bob's `chat read`s have shown, checked against the delivery
/// guarantees of docs/CHAT.md.
#[derive(Default)]
struct Ledger {
    /// Each `seq` with the message (id, text) it first carried.
    by_seq: BTreeMap<i64, (i64, String)>,
    seq_of_id: HashMap<i64, i64>,
    id_of_text: HashMap<String, i64>,
    /// Every `seq` up to this one was shown by a read that exited 0, so
    /// it is acknowledged.
    acked: i64,
    /// The highest `seq` any read showed.
    shown: i64,
    /// Message ids the server answered "accepted" for.
    accepted: Vec<i64>,
    redelivered: u32,
}

impl Ledger {
    /// Checks and records what one `chat read --json` printed; `finished`:
    /// it exited 0, which it does only after its acknowledgement is stored.
    fn observe(&mut self, lines: &[String], finished: bool, at: &str) {
        let mut next: Option<i64> = None;
        for line in lines {
            let m: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{at}: unreadable delivery {line:?}: {e}"));
            let (Some(seq), Some(id), Some(text)) =
                (m["seq"].as_i64(), m["id"].as_i64(), m["text"].as_str())
            else {
                panic!("{at}: delivery without seq, id or text: {line}");
            };
            match next {
                None => {
                    assert!(
                        seq > self.acked,
                        "{at}: seq {seq} delivered again after it was acknowledged (through {})",
                        self.acked
                    );
                    assert!(
                        seq <= self.shown + 1,
                        "{at}: the read started at seq {seq} but only {} was ever shown: messages lost",
                        self.shown
                    );
                }
                Some(expected) => assert_eq!(seq, expected, "{at}: gap or disorder in {lines:?}"),
            }
            next = Some(seq + 1);
            if let Some((first_id, first_text)) = self.by_seq.get(&seq) {
                assert_eq!(
                    (*first_id, first_text.as_str()),
                    (id, text),
                    "{at}: seq {seq} came back with another message"
                );
                self.redelivered += 1;
            } else {
                if let Some(other) = self.seq_of_id.insert(id, seq) {
                    panic!("{at}: message {id} delivered as seq {other} and again as seq {seq}");
                }
                if let Some(other) = self.id_of_text.insert(text.to_string(), id) {
                    panic!("{at}: {text:?} stored twice, as message {other} and {id}");
                }
                self.by_seq.insert(seq, (id, text.to_string()));
            }
            self.shown = self.shown.max(seq);
        }
        if finished && let Some(next) = next {
            self.acked = self.acked.max(next - 1);
        }
    }

    fn accept(&mut self, lines: &[String], at: &str) {
        for line in lines {
            let reply: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{at}: unreadable send reply {line:?}: {e}"));
            let id = reply["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{at}: send reply without an id: {line}"));
            self.accepted.push(id);
        }
    }

    fn assert_all_delivered(&self, at: &str) {
        for id in &self.accepted {
            assert!(
                self.seq_of_id.contains_key(id),
                "{at}: message {id} was accepted but never delivered"
            );
        }
    }
}

/// Kill points and their outcomes for one kind of operation.
#[derive(Default, Debug)]
struct Tally {
    kills: u32,
    /// The operation was still running when the kill came.
    mid_way: u32,
    /// The operation had to be run again: it failed, or it was killed.
    interrupted: u32,
    /// ... and the second run continued from the partial file.
    resumed: u32,
    /// Interrupted, yet done: the file was complete under its name, the
    /// user change in its new state.
    took_effect: u32,
    /// Metadata files left beside a completed file.
    orphaned_meta: u32,
}

/// A daemon with the files and chat plugins, the users demo and bob, and
/// what the test expects of them.
struct Rig {
    d: Daemon,
    victim: Victim,
    rng: Rng,
    seed: u64,
    round: usize,
    local: tempfile::TempDir,
    bob_key: String,
    ledger: Ledger,
    /// The pool users' expected state: password and iterations, or absent.
    users: BTreeMap<String, Option<(String, u32)>>,
    tallies: BTreeMap<&'static str, Tally>,
}

impl Rig {
    fn start(seed: u64, victim: Victim) -> Rig {
        let config = format!(
            "{TEST_CONFIG}\n[plugins.files]\nfile = \"libsockd_files.so\"\n\n\
             [plugins.chat]\nfile = \"libsockd_chat.so\"\nrate_per_sec = 1000000\nburst = 1000000\n"
        );
        let d = Daemon::start_with(Options {
            config: Some(config),
            ..Options::default()
        });
        let local = tempfile::tempdir().expect("tempdir");
        for dir in ["src", "dl"] {
            std::fs::create_dir(local.path().join(dir)).expect("local dir");
        }
        let bob_key = d.path("bob.key").display().to_string();
        let rig = Rig {
            d,
            victim,
            // Each test draws its own numbers from the one printed seed.
            rng: Rng::new(seed ^ victim as u64),
            seed,
            round: 0,
            local,
            bob_key,
            ledger: Ledger::default(),
            users: (0..USER_POOL).map(|i| (format!("u{i}"), None)).collect(),
            tallies: BTreeMap::new(),
        };
        rig.ok(&rig.d.run(&["ls"]), "first ls");
        let out = rig
            .d
            .run(&["user", "add", "bob", "--key-file", &rig.bob_key]);
        rig.ok(&out, "user add bob");
        // Chat knows bob once he has used it.
        let out = rig
            .as_bob(&["chat", "read", "--json"])
            .output()
            .expect("run");
        rig.ok(&out, "bob's first chat read");
        rig
    }

    fn at(&self) -> String {
        format!("seed {} round {}", self.seed, self.round)
    }

    #[track_caller]
    fn ok(&self, out: &Output, what: &str) {
        assert_eq!(
            out.code(),
            0,
            "{}: {what} failed: {}",
            self.at(),
            out.stderr_text()
        );
    }

    fn tally(&mut self, name: &'static str) -> &mut Tally {
        self.tallies.entry(name).or_default()
    }

    fn home(&self) -> PathBuf {
        self.d.path("state/home/demo")
    }

    fn as_bob(&self, args: &[&str]) -> Command {
        let mut cmd = self.d.sockctl();
        cmd.args(["--user", "bob", "--key-file", &self.bob_key])
            .args(args);
        cmd
    }

    /// Waits until `reached` holds or `op` ends by itself, then SIGKILLs
    /// the victim: the daemon (restarted at once on the same state) or
    /// `op`. Returns whether `op` was still running when the kill came.
    fn strike(&mut self, op: &mut Child, mut reached: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + LIMIT;
        while !reached() && op.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "{}: the operation neither progressed nor ended",
                self.at()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let mid_way = op.try_wait().ok().flatten().is_none();
        match self.victim {
            Victim::Daemon => self.d.restart_after_kill(),
            Victim::Client => {
                let _ = op.kill();
            }
        }
        mid_way
    }

    /// One `put` or `get` of a new random file, killed once a random share
    /// of it is in the partial file (or never, if it finishes first).
    fn transfer_round(&mut self, direction: Direction) {
        let size = self.rng.between(1, 12 * MIB) as usize;
        let bytes = self.rng.bytes(size);
        let (verb, tag) = match direction {
            Direction::Upload => ("put", "upload"),
            Direction::Download => ("get", "download"),
        };
        let name = format!("{tag}{}.bin", self.round);
        let (src, dl, home) = (
            self.local.path().join("src"),
            self.local.path().join("dl"),
            self.home(),
        );
        let (cwd, source, target, partial) = match direction {
            Direction::Upload => (
                src.clone(),
                src.join(&name),
                home.join(&name),
                home.join(format!(".{name}.sockd-partial")),
            ),
            Direction::Download => (
                dl.clone(),
                home.join(&name),
                dl.join(&name),
                dl.join(format!("{name}.sockd-partial")),
            ),
        };
        std::fs::write(&source, &bytes).expect("write source");
        // 0 kills before the partial exists; the whole size, while it is
        // verified, synced and renamed (or after).
        let threshold = size as u64 * self.rng.below(1001) / 1000;
        eprintln!("{}: {verb} {size} bytes, kill at {threshold}", self.at());

        let mut op = self
            .d
            .sockctl()
            .current_dir(&cwd)
            .args([verb, "-q", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockctl");
        let mid_way = {
            let (partial, target) = (partial.clone(), target.clone());
            self.strike(&mut op, move || {
                threshold == 0 || size_of(&partial) >= threshold || target.exists()
            })
        };
        let first = op.wait_with_output().expect("sockctl output");
        let kept = size_of(&partial);
        let at = self.at();
        // Nothing but the source's exact content under the final name.
        let assert_intact = |when: &str| {
            if let Ok(found) = std::fs::read(&target) {
                assert!(
                    found == bytes,
                    "{at}: {} {when} differs from its source ({} of {size} bytes)",
                    target.display(),
                    found.len()
                );
            }
        };
        assert_intact("after the kill");
        if first.status.success() {
            assert!(target.exists(), "{at}: {verb} exited 0 without the file");
        } else {
            let again = self
                .d
                .sockctl()
                .current_dir(&cwd)
                .args([verb, &name])
                .output()
                .expect("run sockctl");
            let err = again.stderr_text();
            // The first run may have renamed the file just before the kill:
            // the re-run then finds the same content and sends nothing.
            let done_before = err.contains("already on the server, same content")
                || err.contains("already here, same content");
            assert!(
                again.code() == 0,
                "{at}: {verb} again after the kill failed: {err}"
            );
            assert!(
                !err.contains("starting over"),
                "{at}: the partial file was not a prefix of the source: {err}"
            );
            let resumed = err.contains("resuming");
            assert!(
                resumed || done_before || kept == 0,
                "{at}: {kept} bytes were kept, yet {verb} did not resume: {err}"
            );
            let tally = self.tally(tag);
            tally.interrupted += 1;
            tally.resumed += u32::from(resumed);
            tally.took_effect += u32::from(done_before);
        }
        assert!(target.exists(), "{at}: {} missing", target.display());
        assert_intact("after it was run again");
        let (partials, metas) = leftovers(target.parent().expect("parent"));
        assert!(
            partials.is_empty(),
            "{at}: partial files left: {partials:?}"
        );
        // A kill between the rename and the removal of the metadata file
        // (the directory is fsynced in between, on purpose) orphans it:
        // harmless, swept after partial_ttl_secs on the server.
        for meta in &metas {
            std::fs::remove_file(meta).expect("remove metadata file");
        }
        let tally = self.tally(tag);
        tally.kills += 1;
        tally.mid_way += u32::from(mid_way);
        tally.orphaned_meta += metas.len() as u32;
        for path in [&source, &target] {
            std::fs::remove_file(path).expect("remove transferred file");
        }
    }

    /// demo sends bob a batch of messages; the kill comes while bob reads
    /// what waits for him, or while demo sends (bob reading meanwhile).
    fn chat_round(&mut self) {
        let count = self.rng.between(1, 150);
        let input: String = (0..count)
            .map(|i| format!("round {} message {i}\n", self.round))
            .collect();
        // The client victim is mostly a reader: that is where acks matter.
        let during_read = match self.victim {
            Victim::Daemon => self.rng.coin(),
            Victim::Client => self.rng.below(4) != 0,
        };
        let limit = (self.rng.below(3) == 0).then(|| self.rng.between(1, count));
        eprintln!(
            "{}: chat {count} messages, kill during {}, read -n {limit:?}",
            self.at(),
            if during_read { "read" } else { "send" }
        );
        let mut sender = self
            .d
            .sockctl()
            .args(["chat", "send", "bob", "-", "--lines", "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sender");
        // A sender that died early shows in its exit status, not here.
        let _ = sender
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes());
        let sent = Lines::gather(sender.stdout.take().expect("stdout"));
        let spawn_reader = |rig: &Rig| {
            let n = limit.map(|n| n.to_string());
            let mut args = vec!["chat", "read", "--json"];
            if let Some(n) = &n {
                args.extend(["-n", n]);
            }
            let mut reader = rig
                .as_bob(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn reader");
            let shown = Lines::gather(reader.stdout.take().expect("stdout"));
            (reader, shown)
        };

        let (mut reader, shown, mid_way) = if during_read {
            let status = sender.wait().expect("sender");
            assert!(status.success(), "{}: chat send failed", self.at());
            let (mut reader, shown) = spawn_reader(self);
            let after = self.rng.between(0, limit.unwrap_or(count)) as usize;
            let mid_way = self.strike(&mut reader, || shown.count() >= after);
            (reader, shown, mid_way)
        } else {
            let (reader, shown) = spawn_reader(self);
            let at = Instant::now() + Duration::from_micros(self.rng.below(40_000));
            let mid_way = self.strike(&mut sender, || Instant::now() >= at);
            (reader, shown, mid_way)
        };
        let at = self.at();
        let send_out = sender.wait_with_output().expect("sender output");
        let accepted = sent.finish();
        if send_out.status.success() {
            assert_eq!(
                accepted.len() as u64,
                count,
                "{at}: send exited 0 without accepting every message"
            );
        }
        self.ledger.accept(&accepted, &at);
        let read_ok = reader.wait().expect("reader").success();
        let lines = shown.finish();
        self.ledger.observe(&lines, read_ok, &at);

        // Whatever is left waits for bob: read it all, and nothing is lost.
        let out = self
            .as_bob(&["chat", "read", "--json"])
            .output()
            .expect("run");
        self.ok(&out, "chat read after the kill");
        let rest: Vec<String> = out.stdout_text().lines().map(str::to_string).collect();
        self.ledger.observe(&rest, true, &at);
        self.ledger.assert_all_delivered(&at);
        let (name, failed) = if during_read {
            ("chat read", !read_ok)
        } else {
            ("chat send", !send_out.status.success())
        };
        let tally = self.tally(name);
        tally.kills += 1;
        tally.mid_way += u32::from(mid_way);
        tally.interrupted += u32::from(failed);
    }

    /// `user list` as name -> iterations.
    fn listed_users(&self) -> BTreeMap<String, u64> {
        let out = self.d.run(&["user", "list", "--json"]);
        self.ok(&out, "user list");
        let list: Value = serde_json::from_str(&out.stdout_text()).expect("user list JSON");
        list.as_array()
            .expect("a list of users")
            .iter()
            .map(|u| {
                (
                    u["name"].as_str().unwrap_or_default().to_string(),
                    u["iterations"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn logs_in(&self, name: &str, password: &str) -> bool {
        self.d.password_ping(name, password).status.success()
    }

    /// One `user add`, `user add --replace` (a new password) or `user del`
    /// of a pool user, killed after a random delay or the moment the new
    /// users file is being written.
    fn users_round(&mut self) {
        let name = format!("u{}", self.rng.below(USER_POOL));
        let old = self.users[&name].clone();
        let password = format!("pw-{}-{:x}", self.round, self.rng.next());
        // Each credential gets its own count, so `user list` tells them apart.
        let iterations = ITERATIONS + self.round as u32;
        let iter_arg = iterations.to_string();
        let mut args = vec!["user", "add", name.as_str(), "--password-stdin"];
        args.extend(["--iterations", &iter_arg]);
        let new = match old {
            None => Some((password.clone(), iterations)),
            Some(_) if self.rng.coin() => {
                args.push("--replace");
                Some((password.clone(), iterations))
            }
            Some(_) => {
                args = vec!["user", "del", name.as_str()];
                None
            }
        };
        let at_write = self.rng.coin();
        let delay = Duration::from_micros(self.rng.below(20_000));
        eprintln!(
            "{}: {args:?}, kill {}",
            self.at(),
            if at_write {
                "while the users file is written".to_string()
            } else {
                format!("after {delay:?}")
            }
        );
        let mut op = self
            .d
            .sockctl()
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sockctl");
        let _ = op
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes());
        // users.rs writes `.users.toml.PID`, then renames it over the file.
        let temp = self.d.path(&format!("state/.users.toml.{}", self.d.pid()));
        let deadline = Instant::now() + delay;
        let mid_way = self.strike(&mut op, || {
            if at_write {
                temp.exists()
            } else {
                Instant::now() >= deadline
            }
        });
        let out = op.wait_with_output().expect("sockctl output");
        let at = self.at();

        // sockd restarted, so the file loaded; now each user's state.
        let listed = self.listed_users();
        let found = match listed.get(&name) {
            None => None,
            Some(n) => [&new, &old]
                .into_iter()
                .flatten()
                .find(|(_, i)| u64::from(*i) == *n)
                .cloned()
                .or_else(|| panic!("{at}: {name} has {n} iterations, neither old nor new")),
        };
        let is_new = found == new;
        assert!(
            is_new || found == old,
            "{at}: {name} is {found:?}, neither {old:?} nor {new:?}"
        );
        if out.status.success() {
            assert!(is_new, "{at}: {args:?} exited 0 but {name} is {found:?}");
        } else {
            let tally = self.tally("user change");
            tally.interrupted += 1;
            tally.took_effect += u32::from(is_new && new != old);
        }
        if let Some((password, _)) = &found {
            assert!(
                self.logs_in(&name, password),
                "{at}: {name} cannot log in with the password it has"
            );
        }
        self.users.insert(name, found);
        self.assert_users_listed(&listed);
        let tally = self.tally("user change");
        tally.kills += 1;
        tally.mid_way += u32::from(mid_way);
    }

    /// Everyone the test expects, and nobody else, is in `listed`.
    fn assert_users_listed(&self, listed: &BTreeMap<String, u64>) {
        let mut expected: Vec<&str> = vec!["bob", "demo"];
        for (name, state) in &self.users {
            if state.is_some() {
                expected.push(name);
            }
        }
        expected.sort_unstable();
        let names: Vec<&str> = listed.keys().map(String::as_str).collect();
        assert_eq!(names, expected, "{}: users", self.at());
    }

    /// After the last kill: everything still there and working.
    fn final_checks(&mut self) {
        let at = format!("seed {} after all rounds", self.seed);
        let out = self
            .as_bob(&["chat", "read", "--json"])
            .output()
            .expect("run");
        self.ok(&out, "final chat read");
        let rest: Vec<String> = out.stdout_text().lines().map(str::to_string).collect();
        self.ledger.observe(&rest, true, &at);
        self.ledger.assert_all_delivered(&at);
        assert!(rest.is_empty(), "{at}: messages appeared late: {rest:?}");
        let listed = self.listed_users();
        self.assert_users_listed(&listed);
        for (name, state) in &self.users {
            if let Some((password, _)) = state {
                assert!(self.logs_in(name, password), "{at}: {name} cannot log in");
            }
        }
        for dir in [self.home(), self.local.path().join("dl")] {
            let left = leftovers(&dir);
            assert_eq!(left, (vec![], vec![]), "{at}: transfer files left");
        }
        println!(
            "fault injection, seed {} ({:?} killed):",
            self.seed, self.victim
        );
        println!("  operation    kills mid-way failed resumed done-anyway orphaned-meta");
        for (name, t) in &self.tallies {
            println!(
                "  {name:<12} {:>5} {:>7} {:>6} {:>7} {:>11} {:>13}",
                t.kills, t.mid_way, t.interrupted, t.resumed, t.took_effect, t.orphaned_meta
            );
        }
        println!(
            "  chat: {} messages accepted, {} delivered, {} shown again (killed before the ack)",
            self.ledger.accepted.len(),
            self.ledger.by_seq.len(),
            self.ledger.redelivered
        );
        // The next write of the users file sweeps what killed writes left.
        let temps = stale_user_temps(&self.d.path("state"));
        let out = self.d.run(&["user", "del", "bob"]);
        self.ok(&out, "user del bob");
        assert_eq!(
            stale_user_temps(&self.d.path("state")),
            0,
            "{at}: temporary users files left"
        );
        println!("  users file temporaries left by kills, then swept: {temps}");
    }
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Partial files and metadata files of transfers under `dir`.
fn leftovers(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut found = (Vec::new(), Vec::new());
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sockd-partial") {
                found.0.push(entry.path());
            } else if name.ends_with(".sockd-meta") {
                found.1.push(entry.path());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found
}

/// `.users.toml.PID` files a killed daemon did not get to rename.
fn stale_user_temps(state: &Path) -> usize {
    std::fs::read_dir(state)
        .expect("state dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".users.toml."))
        .count()
}

#[test]
fn the_daemon_killed_at_random_points_loses_and_corrupts_nothing() {
    let (seed, rounds) = settings();
    eprintln!("fault injection seed {seed}: rerun with SOCKD_FAULT_SEED={seed}");
    let mut rig = Rig::start(seed, Victim::Daemon);
    for round in 0..rounds {
        rig.round = round;
        match round % 4 {
            0 => rig.transfer_round(Direction::Upload),
            1 => rig.transfer_round(Direction::Download),
            2 => rig.chat_round(),
            _ => rig.users_round(),
        }
    }
    rig.d.restart_after_kill();
    rig.final_checks();
    let mid_way: u32 = rig.tallies.values().map(|t| t.mid_way).sum();
    assert!(
        mid_way as usize * 2 >= rounds,
        "seed {seed}: only {mid_way} of {rounds} kills came while an operation ran"
    );
}

#[test]
fn the_client_killed_at_random_points_leaves_the_daemon_serving() {
    let (seed, rounds) = settings();
    let rounds = rounds * 3 / 5;
    eprintln!("fault injection seed {seed}: rerun with SOCKD_FAULT_SEED={seed}");
    let mut rig = Rig::start(seed, Victim::Client);
    let pid = rig.d.pid();
    for round in 0..rounds {
        rig.round = round;
        match round % 3 {
            0 => rig.transfer_round(Direction::Upload),
            1 => rig.transfer_round(Direction::Download),
            _ => rig.chat_round(),
        }
    }
    rig.final_checks();
    assert_eq!(rig.d.pid(), pid, "the daemon is the one started first");
    assert!(
        rig.d.wait_exit(Duration::ZERO).is_none(),
        "seed {seed}: sockd exited:\n{}",
        rig.d.log_text()
    );
    let out = rig.d.run(&["ping"]);
    rig.ok(&out, "ping");
}
