//! The chat store: one SQLite database, written by one thread per loaded
//! build with group commit.
//!
//! Call threads hand the store thread closures ([`Store::submit`]). The
//! store thread takes every job waiting, runs them all in ONE transaction,
//! commits (fsync), then pushes the new deliveries to listening clients in
//! commit order, and only then answers each job. So a sender is told
//! "accepted" only once its message is on disk, and pushes reach each
//! recipient in the order of its delivery numbers.
//!
//! Two builds of the plugin can be loaded at once (hot reload), each with
//! its own copy of SQLite. SQLite's POSIX locks cannot keep two copies in
//! one process apart (such locks belong to the process), so every batch
//! also holds an exclusive `flock` on `chat.db.lock`, which does: flock
//! locks belong to the open file, and each build opens its own. The same
//! reason rules out WAL mode, whose shared-memory index would be reset by
//! the second copy: the database uses a rollback journal (see
//! docs/CHAT.md, "Storage").

use crate::config::{Settings, Sync};
use crate::wire::{Message, Target};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sockd_plugin::{Code, Failure, Host, stream};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Jobs run in one transaction at most; more wait for the next batch.
const MAX_BATCH: usize = 8192;
/// How often a lagging listener is reminded of what it missed.
const LAGGING_RETRY: Duration = Duration::from_millis(200);
/// How often old history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per prune step, so a prune never holds the store for long.
const PRUNE_CHUNK: i64 = 20_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users(
    name TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    acked INTEGER NOT NULL,
    first_seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    target TEXT NOT NULL,
    conv TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_conv ON messages(conv, id);
CREATE TABLE IF NOT EXISTS inbox(
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    msg INTEGER NOT NULL,
    PRIMARY KEY(user, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_msg ON inbox(msg);
CREATE TABLE IF NOT EXISTS rooms(
    name TEXT PRIMARY KEY,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members(
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY(room, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_user ON members(user, room);
PRAGMA user_version = 1;
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn db_error(e: rusqlite::Error) -> Failure {
    Failure::internal(format!("chat database: {e}"))
}

/// A job's completion: called after the commit with its outcome.
type Done = Box<dyn FnOnce(Result<(), Failure>) + Send>;
/// A job: runs inside the batch's transaction.
type Job = Box<dyn FnOnce(&mut Tx<'_>) -> Done + Send>;

enum Work {
    Job(Job),
    Stop,
}

/// The store of one loaded build.
pub struct Store {
    queue: Mutex<mpsc::Sender<Work>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub path: PathBuf,
}

/// A job's result, once its batch is committed.
pub struct Pending<T> {
    rx: mpsc::Receiver<Result<T, Failure>>,
}

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T, Failure> {
        self.rx
            .recv()
            .map_err(|_| Failure::new(Code::Unavailable, "the chat store stopped"))?
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and starts the
    /// store thread.
    pub fn open(host: Host, path: &Path, settings: Arc<Mutex<Settings>>) -> Result<Store, String> {
        let dir = path
            .parent()
            .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
        create_private_dir(dir)?;
        let mut lock = CrossBuildLock::open(path)?;
        let sync = settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .synchronous;
        let conn = lock.with(|| open_connection(path, sync))??;
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            host,
            conn,
            lock,
            settings,
            lagging: HashMap::new(),
            last_prune: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("chat-store".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| format!("cannot start the chat store thread: {e}"))?;
        Ok(Store {
            queue: Mutex::new(tx),
            thread: Mutex::new(Some(thread)),
            path: path.to_path_buf(),
        })
    }

    /// Queues `f` to run in the next batch's transaction; its result is
    /// delivered once the batch is committed. `f` must not write anything
    /// before it has decided to succeed: a failing job leaves the
    /// transaction as it found it.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |t: &mut Tx<'_>| {
            let result = f(t);
            Box::new(move |committed: Result<(), Failure>| {
                let _ = tx.send(committed.and(result));
            })
        });
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // If the thread is gone the job (and its sender) is dropped, and
        // wait() reports the store as stopped.
        let _ = queue.send(Work::Job(job));
        Pending { rx }
    }

    /// Submits and waits.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        self.submit(f).wait()
    }

    /// Finishes the queued jobs and stops the thread.
    pub fn stop(&self) {
        let _ = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Work::Stop);
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the chat directory {}: {e}", dir.display()))
}

fn open_connection(path: &Path, sync: Sync) -> Result<Connection, String> {
    let fail =
        |e: rusqlite::Error| format!("cannot open the chat database {}: {e}", path.display());
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    // A rollback journal, not WAL: see the module comment.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = TRUNCATE", [], |r| r.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("truncate") {
        return Err(format!(
            "cannot set the journal mode of {}: got {mode}",
            path.display()
        ));
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {};", sync.pragma()))
        .map_err(fail)?;
    conn.execute_batch(SCHEMA).map_err(fail)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// An exclusive `flock` on `<db>.lock`, taken around every batch.
struct CrossBuildLock {
    path: PathBuf,
    file: Option<File>,
}

impl CrossBuildLock {
    fn open(db: &Path) -> Result<Self, String> {
        let mut path = db.as_os_str().to_owned();
        path.push(".lock");
        let mut lock = CrossBuildLock {
            path: path.into(),
            file: None,
        };
        lock.file = Some(lock.open_file()?);
        Ok(lock)
    }

    fn open_file(&self) -> Result<File, String> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", self.path.display()))
    }

    /// Runs `f` holding the lock.
    fn with<T>(&mut self, f: impl FnOnce() -> T) -> Result<T, String> {
        let mut file = match self.file.take() {
            Some(file) => file,
            None => self.open_file()?,
        };
        let guard = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(guard) => break guard,
                Err((back, Errno::EINTR)) => file = back,
                Err((back, e)) => {
                    self.file = Some(back);
                    return Err(format!("cannot lock {}: {e}", self.path.display()));
                }
            }
        };
        let out = f();
        // If unlocking fails, dropping the guard closes the file, which
        // releases the lock too; the file is opened again next time.
        if let Ok(file) = guard.unlock() {
            self.file = Some(file);
        }
        Ok(out)
    }
}

/// A push to send once the batch is committed.
struct Push {
    user: String,
    seq: i64,
    line: Vec<u8>,
}

/// The store thread's state.
struct Worker {
    host: Host,
    conn: Connection,
    lock: CrossBuildLock,
    settings: Arc<Mutex<Settings>>,
    /// Users with a listener that missed a push (its window was full),
    /// with their latest delivery number: they are reminded until every
    /// listener took the reminder.
    lagging: HashMap<String, i64>,
    last_prune: Instant,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Work>) {
        let mut stopping = false;
        while !stopping {
            let first = if self.lagging.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(LAGGING_RETRY)
            };
            let first = match first {
                Ok(Work::Job(job)) => job,
                Ok(Work::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.remind_lagging();
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Work::Job(job)) => batch.push(job),
                    Ok(Work::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
            if !self.lagging.is_empty() {
                self.remind_lagging();
            }
            if self.last_prune.elapsed() >= PRUNE_EVERY {
                self.last_prune = Instant::now();
                self.prune();
            }
        }
        // Close the connection under the lock, so that another build never
        // sees this copy of SQLite drop locks in the middle of its batch.
        let Worker { conn, mut lock, .. } = self;
        let _ = lock.with(move || drop(conn));
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let host = self.host;
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let conn = &mut self.conn;
        let mut full_users = Vec::new();
        let outcome = self.lock.with(|| {
            // If no transaction can start, the jobs are dropped unrun and
            // their waiters see the store as unavailable.
            let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
                Ok(tx) => tx,
                Err(e) => return Err((db_error(e), Vec::new())),
            };
            let mut t = Tx {
                tx: &tx,
                host,
                settings: &settings,
                seqs: HashMap::new(),
                pushes: Vec::new(),
                failed: None,
            };
            let dones: Vec<Done> = batch.into_iter().map(|job| job(&mut t)).collect();
            let flushed = t.flush_seqs();
            let Tx { pushes, failed, .. } = t;
            if let Some(e) = failed.or(flushed.err()) {
                drop(tx);
                return Err((e, dones));
            }
            if let Err(e) = tx.commit() {
                return Err((db_error(e), dones));
            }
            // Still under the lock: pushes of two builds never interleave,
            // so every listener gets its deliveries in `seq` order.
            for push in pushes {
                let pushed = host.push_user(&push.user, stream::MAIN, &push.line);
                if pushed.full > 0 {
                    full_users.push((push.user, push.seq));
                } else if pushed.delivered > 0 {
                    // A later delivery that every listener took reveals any
                    // earlier gap by itself.
                    full_users.retain(|(u, _)| *u != push.user);
                    self.lagging.remove(&push.user);
                }
            }
            Ok(dones)
        });
        for (user, seq) in full_users {
            self.lagging.insert(user, seq);
        }
        match outcome {
            Ok(Ok(dones)) => dones.into_iter().for_each(|done| done(Ok(()))),
            Ok(Err((e, dones))) => {
                host.error(&format!(
                    "a chat batch failed and was rolled back: {}",
                    e.message
                ));
                dones.into_iter().for_each(|done| done(Err(e.clone())));
            }
            Err(lock_error) => {
                host.error(&lock_error);
                // The jobs were dropped unrun; their waiters see the store
                // as unavailable.
            }
        }
    }

    /// Tells the listeners of lagging users their latest delivery number
    /// on stream 2, so one that missed a push asks for it again.
    fn remind_lagging(&mut self) {
        let host = self.host;
        self.lagging.retain(|user, seq| {
            let line = format!("{{\"head\":{seq}}}\n");
            host.push_user(user, stream::CONTROL, line.as_bytes()).full > 0
        });
    }

    /// Deletes history beyond `history_days` and `history_max_messages`,
    /// except messages still waiting for a recipient.
    fn prune(&mut self) {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let conn = &self.conn;
        let result = self.lock.with(|| -> Result<usize, rusqlite::Error> {
            let mut bound: Option<i64> = None;
            if settings.history_days > 0 {
                let cutoff = now_ms() - i64::from(settings.history_days) * 86_400_000;
                let first_kept: Option<i64> = conn
                    .query_row(
                        "SELECT id FROM messages WHERE ts >= ?1 ORDER BY id LIMIT 1",
                        [cutoff],
                        |r| r.get(0),
                    )
                    .optional()?;
                let newest: Option<i64> =
                    conn.query_row("SELECT max(id) FROM messages", [], |r| r.get(0))?;
                bound = first_kept.or(newest.map(|n| n + 1));
            }
            if settings.history_max_messages > 0 {
                let keep = i64::try_from(settings.history_max_messages).unwrap_or(i64::MAX);
                let newest: Option<i64> =
                    conn.query_row("SELECT max(id) FROM messages", [], |r| r.get(0))?;
                if let Some(newest) = newest {
                    let by_count = newest.saturating_sub(keep) + 1;
                    bound = Some(bound.map_or(by_count, |b| b.max(by_count)));
                }
            }
            let Some(bound) = bound else { return Ok(0) };
            let deleted = conn.execute(
                "DELETE FROM messages WHERE id IN (
                    SELECT id FROM messages m WHERE id < ?1
                    AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.msg = m.id)
                    ORDER BY id LIMIT ?2)",
                params![bound, PRUNE_CHUNK],
            )?;
            Ok(deleted)
        });
        match result {
            Ok(Ok(n)) if n > 0 => {
                self.host
                    .info(&format!("chat history: pruned {n} old message(s)"));
                // More may be due; the next prune comes soon.
                if n as i64 == PRUNE_CHUNK {
                    self.last_prune -= PRUNE_EVERY;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.host.warn(&format!("chat history prune failed: {e}")),
            Err(e) => self.host.warn(&e),
        }
    }
}

/// A user's delivery counters, loaded once per batch.
struct Seqs {
    next_seq: i64,
    dirty: bool,
}

/// What a job sees: the batch's transaction and helpers.
pub struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    host: Host,
    pub settings: &'a Settings,
    seqs: HashMap<String, Seqs>,
    pushes: Vec<Push>,
    /// A database error: the whole batch is rolled back.
    failed: Option<Failure>,
}

/// A user's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxState {
    /// The highest delivery number acknowledged.
    pub acked: i64,
    /// The highest delivery number assigned.
    pub head: i64,
}

/// What a listener's replay found.
pub struct Replay {
    pub lines: Vec<Vec<u8>>,
    pub last: i64,
    /// Acknowledged deliveries (by any session of the user), not replayed.
    pub acked: i64,
}

/// A room as `rooms` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub room: String,
    pub members: i64,
    pub member: bool,
}

impl Tx<'_> {
    /// Records a database error (failing the batch) and returns it.
    fn db(&mut self, e: rusqlite::Error) -> Failure {
        let failure = db_error(e);
        self.failed.get_or_insert_with(|| failure.clone());
        failure
    }

    /// Makes `user` known to chat (a valid recipient from now on).
    pub fn register(&mut self, user: &str) -> Result<(), Failure> {
        let r = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO users(name, next_seq, acked, first_seen) VALUES (?1, 1, 0, ?2)")
            .and_then(|mut s| s.execute(params![user, now_ms()]));
        r.map(drop).map_err(|e| self.db(e))
    }

    fn user_known(&mut self, user: &str) -> Result<bool, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT 1 FROM users WHERE name = ?1")
            .and_then(|mut s| s.exists([user]));
        r.map_err(|e| self.db(e))
    }

    /// Checks that `user` may receive messages: known to chat, or online
    /// now (then registered).
    pub fn check_recipient(&mut self, user: &str) -> Result<(), Failure> {
        if self.user_known(user)? {
            return Ok(());
        }
        if self.host.user_online(user) {
            return self.register(user);
        }
        Err(Failure::new(
            Code::NotFound,
            format!("no such user: {user} (a user can be written to once they have logged in)"),
        ))
    }

    pub fn room_exists(&mut self, room: &str) -> Result<bool, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT 1 FROM rooms WHERE name = ?1")
            .and_then(|mut s| s.exists([room]));
        r.map_err(|e| self.db(e))
    }

    pub fn is_member(&mut self, room: &str, user: &str) -> Result<bool, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT 1 FROM members WHERE room = ?1 AND user = ?2")
            .and_then(|mut s| s.exists([room, user]));
        r.map_err(|e| self.db(e))
    }

    pub fn members(&mut self, room: &str) -> Result<Vec<String>, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT user FROM members WHERE room = ?1 ORDER BY user")
            .and_then(|mut s| {
                s.query_map([room], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            });
        r.map_err(|e| self.db(e))
    }

    /// Every user known to chat.
    pub fn known_users(&mut self) -> Result<Vec<String>, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT name FROM users ORDER BY name")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            });
        r.map_err(|e| self.db(e))
    }

    /// Checks that `from` may send to `to`.
    pub fn check_target(&mut self, from: &str, to: &Target) -> Result<(), Failure> {
        match to {
            Target::User(user) => self.check_recipient(user),
            Target::Room(room) => {
                if !self.room_exists(room)? {
                    return Err(Failure::new(
                        Code::NotFound,
                        format!("no such room: {room}"),
                    ));
                }
                if !self.is_member(room, from)? {
                    return Err(Failure::new(
                        Code::PermissionDenied,
                        format!("you are not in {room}: join it first (/join {room})"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Stores a message from `from` to `to` and queues a delivery for each
    /// recipient (a user; or every member of a room but the sender).
    /// Checks the target first, so a refused message writes nothing.
    pub fn send(
        &mut self,
        from: &str,
        to: &Target,
        kind: &str,
        text: &str,
    ) -> Result<Message, Failure> {
        self.register(from)?;
        if kind == "msg" {
            self.check_target(from, to)?;
        }
        let recipients = match to {
            Target::User(user) => vec![user.clone()],
            Target::Room(room) => {
                let mut members = self.members(room)?;
                members.retain(|m| m != from);
                members
            }
        };
        let conv = match to {
            Target::Room(room) => room.clone(),
            Target::User(user) if user.as_str() < from => format!("{user} {from}"),
            Target::User(user) => format!("{from} {user}"),
        };
        let ts = now_ms();
        let r = self
            .tx
            .prepare_cached(
                "INSERT INTO messages(ts, kind, sender, target, conv, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![ts, kind, from, to.as_str(), conv, text]));
        if let Err(e) = r {
            return Err(self.db(e));
        }
        let message = Message {
            id: self.tx.last_insert_rowid(),
            ts,
            kind: kind.to_string(),
            from: from.to_string(),
            to: to.as_str().to_string(),
            text: text.to_string(),
        };
        for user in recipients {
            let seq = self.next_seq(&user)?;
            let r = self
                .tx
                .prepare_cached("INSERT INTO inbox(user, seq, msg) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![user, seq, message.id]));
            if let Err(e) = r {
                return Err(self.db(e));
            }
            let line = message.delivery_line(seq)?;
            self.pushes.push(Push { user, seq, line });
        }
        Ok(message)
    }

    /// Assigns the next delivery number of `user`.
    fn next_seq(&mut self, user: &str) -> Result<i64, Failure> {
        if !self.seqs.contains_key(user) {
            let r = self
                .tx
                .prepare_cached("SELECT next_seq FROM users WHERE name = ?1")
                .and_then(|mut s| s.query_row([user], |r| r.get::<_, i64>(0)).optional());
            let next_seq = match r {
                Ok(Some(n)) => n,
                Ok(None) => {
                    self.register(user)?;
                    1
                }
                Err(e) => return Err(self.db(e)),
            };
            self.seqs.insert(
                user.to_string(),
                Seqs {
                    next_seq,
                    dirty: false,
                },
            );
        }
        let entry = self
            .seqs
            .get_mut(user)
            .ok_or_else(|| Failure::internal("delivery counter vanished"))?;
        let seq = entry.next_seq;
        entry.next_seq += 1;
        entry.dirty = true;
        Ok(seq)
    }

    /// Writes back the delivery counters this batch advanced.
    fn flush_seqs(&mut self) -> Result<(), Failure> {
        let dirty: Vec<(String, i64)> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(u, s)| (u.clone(), s.next_seq))
            .collect();
        for (user, next_seq) in dirty {
            let r = self
                .tx
                .prepare_cached("UPDATE users SET next_seq = ?2 WHERE name = ?1")
                .and_then(|mut s| s.execute(params![user, next_seq]));
            if let Err(e) = r {
                return Err(self.db(e));
            }
        }
        Ok(())
    }

    /// `user`'s acknowledged and latest delivery numbers.
    pub fn inbox_state(&mut self, user: &str) -> Result<InboxState, Failure> {
        if let Some(next_seq) = self.seqs.get(user).map(|s| s.next_seq) {
            let acked = self.acked(user)?;
            return Ok(InboxState {
                acked,
                head: next_seq - 1,
            });
        }
        let r = self
            .tx
            .prepare_cached("SELECT acked, next_seq FROM users WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row([user], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .optional()
            });
        match r {
            Ok(Some((acked, next_seq))) => Ok(InboxState {
                acked,
                head: next_seq - 1,
            }),
            Ok(None) => Ok(InboxState { acked: 0, head: 0 }),
            Err(e) => Err(self.db(e)),
        }
    }

    fn acked(&mut self, user: &str) -> Result<i64, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT acked FROM users WHERE name = ?1")
            .and_then(|mut s| s.query_row([user], |r| r.get::<_, i64>(0)).optional());
        r.map(|a| a.unwrap_or(0)).map_err(|e| self.db(e))
    }

    /// Records that `user` has shown every delivery up to `seq`: they are
    /// never delivered again.
    pub fn ack(&mut self, user: &str, seq: i64) -> Result<(), Failure> {
        let state = self.inbox_state(user)?;
        if seq > state.head || seq < 0 {
            return Err(Failure::bad_request(format!(
                "ack {seq} is beyond the last delivery ({})",
                state.head
            )));
        }
        if seq <= state.acked {
            return Ok(());
        }
        let r = self
            .tx
            .prepare_cached("UPDATE users SET acked = ?2 WHERE name = ?1")
            .and_then(|mut s| s.execute(params![user, seq]))
            .and_then(|_| {
                self.tx
                    .prepare_cached("DELETE FROM inbox WHERE user = ?1 AND seq <= ?2")
            })
            .and_then(|mut s| s.execute(params![user, seq]));
        r.map(drop).map_err(|e| self.db(e))
    }

    /// Up to `limit` waiting deliveries of `user` from `from` on, as lines.
    pub fn replay(&mut self, user: &str, from: i64, limit: u32) -> Result<Replay, Failure> {
        let r = self
            .tx
            .prepare_cached(
                "SELECT i.seq, m.id, m.ts, m.kind, m.sender, m.target, m.body
                 FROM inbox i JOIN messages m ON m.id = i.msg
                 WHERE i.user = ?1 AND i.seq >= ?2 ORDER BY i.seq LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![user, from, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, message_row(r, 1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            });
        let rows = r.map_err(|e| self.db(e))?;
        let acked = self.acked(user)?;
        let mut replay = Replay {
            lines: Vec::with_capacity(rows.len()),
            last: from - 1,
            acked,
        };
        for (seq, message) in rows {
            replay.lines.push(message.delivery_line(seq)?);
            replay.last = seq;
        }
        Ok(replay)
    }

    /// The last `limit` messages of a conversation before message `before`,
    /// oldest first. `viewer` is the user asking.
    pub fn history(
        &mut self,
        viewer: &str,
        with: &Target,
        limit: u32,
        before: i64,
    ) -> Result<Vec<Message>, Failure> {
        let conv = match with {
            Target::Room(room) => {
                if !self.room_exists(room)? && !self.has_history(room)? {
                    return Err(Failure::new(
                        Code::NotFound,
                        format!("no such room: {room}"),
                    ));
                }
                room.clone()
            }
            Target::User(user) => {
                self.check_recipient(user)?;
                if user.as_str() < viewer {
                    format!("{user} {viewer}")
                } else {
                    format!("{viewer} {user}")
                }
            }
        };
        let r = self
            .tx
            .prepare_cached(
                "SELECT id, ts, kind, sender, target, body FROM messages
                 WHERE conv = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![conv, before, limit], |r| message_row(r, 0))?
                    .collect::<Result<Vec<_>, _>>()
            });
        let mut messages = r.map_err(|e| self.db(e))?;
        messages.reverse();
        Ok(messages)
    }

    fn has_history(&mut self, conv: &str) -> Result<bool, Failure> {
        let r = self
            .tx
            .prepare_cached("SELECT 1 FROM messages WHERE conv = ?1 LIMIT 1")
            .and_then(|mut s| s.exists([conv]));
        r.map_err(|e| self.db(e))
    }

    /// Adds `user` to `room`, creating it if needed; tells the other
    /// members. Returns the member list.
    pub fn join(&mut self, user: &str, room: &str) -> Result<Vec<String>, Failure> {
        if !self.room_exists(room)? {
            let count = self.count("SELECT count(*) FROM rooms")?;
            let max = self.settings.max_rooms;
            if usize::try_from(count).unwrap_or(usize::MAX) >= max {
                return Err(Failure::new(
                    Code::QuotaExceeded,
                    format!(
                        "cannot create {room}: the server already has {count} rooms (max_rooms = {max})"
                    ),
                ));
            }
            let r = self
                .tx
                .prepare_cached("INSERT INTO rooms(name, created) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![room, now_ms()]));
            if let Err(e) = r {
                return Err(self.db(e));
            }
        }
        if !self.is_member(room, user)? {
            self.register(user)?;
            let r = self
                .tx
                .prepare_cached("INSERT INTO members(room, user) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![room, user]));
            if let Err(e) = r {
                return Err(self.db(e));
            }
            self.send(user, &Target::Room(room.to_string()), "join", "")?;
        }
        self.members(room)
    }

    /// Removes `user` from `room`; tells the remaining members; deletes
    /// the room when it is empty (its history stays).
    pub fn leave(&mut self, user: &str, room: &str) -> Result<(), Failure> {
        if !self.room_exists(room)? {
            return Err(Failure::new(
                Code::NotFound,
                format!("no such room: {room}"),
            ));
        }
        if !self.is_member(room, user)? {
            return Err(Failure::new(
                Code::NotFound,
                format!("you are not in {room}"),
            ));
        }
        let r = self
            .tx
            .prepare_cached("DELETE FROM members WHERE room = ?1 AND user = ?2")
            .and_then(|mut s| s.execute(params![room, user]));
        if let Err(e) = r {
            return Err(self.db(e));
        }
        self.send(user, &Target::Room(room.to_string()), "leave", "")?;
        if self.members(room)?.is_empty() {
            let r = self
                .tx
                .prepare_cached("DELETE FROM rooms WHERE name = ?1")
                .and_then(|mut s| s.execute([room]));
            if let Err(e) = r {
                return Err(self.db(e));
            }
        }
        Ok(())
    }

    /// Every room with its member count, and whether `user` is in it.
    pub fn rooms(&mut self, user: &str) -> Result<Vec<RoomInfo>, Failure> {
        let r = self
            .tx
            .prepare_cached(
                "SELECT r.name, (SELECT count(*) FROM members m WHERE m.room = r.name),
                        EXISTS (SELECT 1 FROM members m WHERE m.room = r.name AND m.user = ?1)
                 FROM rooms r ORDER BY r.name",
            )
            .and_then(|mut s| {
                s.query_map([user], |r| {
                    Ok(RoomInfo {
                        room: r.get(0)?,
                        members: r.get(1)?,
                        member: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
            });
        r.map_err(|e| self.db(e))
    }

    fn count(&mut self, sql: &str) -> Result<i64, Failure> {
        let r = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)));
        r.map_err(|e| self.db(e))
    }
}

fn message_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        id: r.get(at)?,
        ts: r.get(at + 1)?,
        kind: r.get(at + 2)?,
        from: r.get(at + 3)?,
        to: r.get(at + 4)?,
        text: r.get(at + 5)?,
    })
}
