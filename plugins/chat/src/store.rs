//! The chat store: one SQLite database, written by one thread per loaded
//! build with group commit.
//!
//! Call threads hand the store thread closures ([`Store::submit`]). The
//! store thread takes every job waiting, runs them all in ONE transaction,
//! commits (fsync), and only then answers each job. So a sender is told
//! "accepted" only once its message is on disk.
//!
//! Messages are numbered and pushed in one of two [`Mode`]s. While this
//! build is the only one with the database open, the sender's call thread
//! numbers a message from the in-memory roster ([`crate::live`]), queues
//! it and pushes it to the listening recipients at once: live delivery
//! does not wait for the disk. Otherwise (two builds during a hot reload)
//! the store thread numbers it from the database inside the transaction
//! and pushes after the commit, under the lock below. Which build may
//! number in memory is decided with two more flock files, `chat.db.live`
//! (held exclusively by the live build) and `chat.db.shared` (held shared
//! by every other build); a live build that sees another connection
//! commit hands over: it commits what it numbered and falls back.
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
use crate::live::{Accepted, ID_RESERVATION, Membership, Mode, Roster};
use crate::wire::{Message, Target};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sockd_plugin::{Code, Failure, Host, stream};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Jobs run in one transaction at most; more wait for the next batch.
const MAX_BATCH: usize = 8192;
/// How often a lagging listener is reminded of what it missed, and how
/// often the numbering mode is checked (another build's commits; whether
/// this build is alone again).
const TICK: Duration = Duration::from_millis(200);
/// How long a batch of nothing but acknowledgements waits for other work to
/// share its commit (the next message, usually): one round of fsyncs for
/// both instead of two.
const ACK_WAIT: Duration = Duration::from_millis(5);
/// Lines of one sender's messages pushed to one recipient at once at most
/// (one line may be longer).
const PUSH_BYTES: usize = 32 * 1024;
/// Reminders of its latest delivery a lagging user's listeners all take.
const REMINDERS: u8 = 3;
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
CREATE TABLE IF NOT EXISTS meta(
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
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
    /// `live`: writes a message numbered from the roster (dropped unrun if
    /// an earlier live batch failed to commit).
    /// `lazy`: its commit may wait [`ACK_WAIT`] for company.
    Job {
        job: Job,
        live: bool,
        lazy: bool,
    },
    Stop,
}

/// What call threads and the store thread share.
struct Shared {
    host: Host,
    /// How messages are numbered now. Held while a change to numbering
    /// (send, join, leave, a new user) is decided AND queued, so the store
    /// thread sees them in roster order.
    mode: Mutex<Mode>,
    /// Ids below this are durably reserved (live mode).
    reserved: AtomicI64,
    /// A reservation further ahead is queued.
    reserving: AtomicBool,
    /// Users with a listener that missed a push (its window was full),
    /// with their latest delivery number and how many more reminders to
    /// send once every listener took one (a client that is replaying
    /// ignores a reminder, so one is not enough).
    lagging: Mutex<HashMap<String, (i64, u8)>>,
    /// Counts the commits that failed after their messages were pushed
    /// live: listeners end, so their clients start again from the database.
    lost: AtomicU64,
}

impl Shared {
    fn mode(&self) -> MutexGuard<'_, Mode> {
        self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes each (user, seq, line) and notes the listeners that missed one.
    fn push(&self, pushes: impl IntoIterator<Item = (String, i64, Vec<u8>)>) {
        let mut full_users: Vec<(String, i64)> = Vec::new();
        let mut caught_up: Vec<String> = Vec::new();
        for (user, seq, line) in pushes {
            let pushed = self.host.push_user(&user, stream::MAIN, &line);
            if pushed.full > 0 {
                full_users.push((user, seq));
            } else if pushed.delivered > 0 {
                // A later delivery that every listener took reveals any
                // earlier gap by itself.
                full_users.retain(|(u, _)| *u != user);
                caught_up.push(user);
            }
        }
        if full_users.is_empty() && caught_up.is_empty() {
            return;
        }
        let mut lagging = self.lagging.lock().unwrap_or_else(PoisonError::into_inner);
        if lagging.is_empty() && full_users.is_empty() {
            return;
        }
        for user in caught_up {
            lagging.remove(&user);
        }
        lagging.extend(
            full_users
                .into_iter()
                .map(|(user, seq)| (user, (seq, REMINDERS))),
        );
    }
}

/// The store of one loaded build.
pub struct Store {
    queue: Mutex<mpsc::Sender<Work>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    settings: Arc<Mutex<Settings>>,
    pub path: PathBuf,
}

/// A job's result, once its batch is committed.
pub struct Pending<T> {
    rx: mpsc::Receiver<Result<T, Failure>>,
}

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T, Failure> {
        self.rx.recv().map_err(|_| not_completed())?
    }

    /// The result if it is there already.
    pub fn try_wait(&self) -> Option<Result<T, Failure>> {
        match self.rx.try_recv() {
            Ok(result) => Some(result),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(not_completed())),
        }
    }
}

fn not_completed() -> Failure {
    Failure::new(
        Code::Unavailable,
        "the chat store did not complete the request (it stopped, or a commit failed)",
    )
}

impl Store {
    /// Opens (creating if needed) the database at `path`, chooses the
    /// numbering mode (waiting for a live build to hand over) and starts
    /// the store thread.
    pub fn open(host: Host, path: &Path, settings: Arc<Mutex<Settings>>) -> Result<Store, String> {
        let dir = path
            .parent()
            .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
        create_private_dir(dir)?;
        let mut lock = CrossBuildLock::open(path)?;
        let modes = ModeLocks::open(path)?;
        let sync = settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .synchronous;
        let conn = lock.with(|| open_connection(path, sync))??;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            host,
            mode: Mutex::new(Mode::Committed),
            reserved: AtomicI64::new(0),
            reserving: AtomicBool::new(false),
            lagging: Mutex::new(HashMap::new()),
            lost: AtomicU64::new(0),
        });
        let mut worker = Worker {
            host,
            conn,
            lock,
            modes,
            live: false,
            data_version: 0,
            shared: shared.clone(),
            settings: settings.clone(),
            last_prune: Instant::now(),
            last_mode_check: Instant::now(),
            last_remind: Instant::now(),
        };
        worker.choose_mode_at_open()?;
        let thread = std::thread::Builder::new()
            .name("chat-store".into())
            .spawn(move || {
                yield_to_delivery();
                worker.run(rx)
            })
            .map_err(|e| format!("cannot start the chat store thread: {e}"))?;
        Ok(Store {
            queue: Mutex::new(tx),
            thread: Mutex::new(Some(thread)),
            shared,
            settings,
            path: path.to_path_buf(),
        })
    }

    /// Queues `f` to run in the next batch's transaction; `done` gets its
    /// result once the batch is committed (or the failure). `f` must not
    /// write anything before it has decided to succeed: a failing job
    /// leaves the transaction as it found it.
    fn submit_then<T: Send + 'static>(
        &self,
        live: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
        done: impl FnOnce(Result<T, Failure>) + Send + 'static,
    ) {
        self.enqueue(live, false, f, done);
    }

    fn enqueue<T: Send + 'static>(
        &self,
        live: bool,
        lazy: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
        done: impl FnOnce(Result<T, Failure>) + Send + 'static,
    ) {
        let job: Job = Box::new(move |t: &mut Tx<'_>| {
            let result = f(t);
            Box::new(move |committed: Result<(), Failure>| done(committed.and(result)))
        });
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // If the thread is gone the job (and `done`) is dropped, and a
        // waiter sees the store as stopped.
        let _ = queue.send(Work::Job { job, live, lazy });
    }

    fn submit_as<T: Send + 'static>(
        &self,
        lazy: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(false, lazy, f, move |result| {
            let _ = tx.send(result);
        });
        Pending { rx }
    }

    /// As [`Store::submit`], for an acknowledgement: its commit may wait a
    /// few milliseconds to share the next message's (see [`ACK_WAIT`]).
    pub fn submit_lazy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Pending<T> {
        self.submit_as(true, f)
    }

    /// Queues `f` to run in the next batch's transaction; its result is
    /// delivered once the batch is committed. `f` must not write anything
    /// before it has decided to succeed. Not for changes to numbering
    /// (sending, joining, leaving): see [`Store::send`] and the others.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Pending<T> {
        self.submit_as(false, f)
    }

    /// Submits and waits.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        self.submit(f).wait()
    }

    /// The mode, in live mode with at least one id left in the durable
    /// reservation (waiting for a reservation if not), and a reservation
    /// further ahead queued when half of it is used.
    fn numbering(&self) -> Result<MutexGuard<'_, Mode>, Failure> {
        loop {
            let mode = self.shared.mode();
            let Mode::Live(roster) = &*mode else {
                return Ok(mode);
            };
            let next_id = roster.next_id;
            let reserved = self.shared.reserved.load(Ordering::Acquire);
            if next_id + ID_RESERVATION / 2 >= reserved
                && !self.shared.reserving.swap(true, Ordering::AcqRel)
            {
                let upto = next_id + ID_RESERVATION;
                let shared = self.shared.clone();
                self.submit_then(
                    false,
                    move |t| t.reserve_ids(upto),
                    move |r| {
                        if r.is_ok() {
                            shared.reserved.fetch_max(upto, Ordering::AcqRel);
                        }
                        shared.reserving.store(false, Ordering::Release);
                    },
                );
            }
            if next_id < reserved {
                return Ok(mode);
            }
            // Rare: the reservation ahead has not been committed yet.
            drop(mode);
            self.run(move |t| t.reserve_ids(next_id + ID_RESERVATION))?;
            self.shared
                .reserved
                .fetch_max(next_id + ID_RESERVATION, Ordering::AcqRel);
        }
    }

    /// Queues the writes of a message numbered from the roster, then pushes
    /// it to the recipients' live sessions. Called with the mode locked.
    fn queue_live<T: Send + 'static>(
        &self,
        accepted: Option<Accepted>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
    ) -> Result<Pending<T>, Failure> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.queue_live_then(accepted, f, move |result| {
            let _ = tx.send(result);
        })?;
        Ok(Pending { rx })
    }

    /// [`Store::queue_live`], with `done` called on the store thread once
    /// committed instead of a [`Pending`].
    fn queue_live_then<T: Send + 'static>(
        &self,
        accepted: Option<Accepted>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, Failure> + Send + 'static,
        done: impl FnOnce(Result<T, Failure>) + Send + 'static,
    ) -> Result<(), Failure> {
        let mut pushes = Vec::new();
        if let Some(a) = &accepted {
            pushes.reserve(a.deliveries.len());
            for (user, seq) in &a.deliveries {
                pushes.push((user.clone(), *seq, a.message.delivery_line(*seq)?));
            }
        }
        // Queued before the push: a listener that subscribes after the push
        // reads its inbox after these writes.
        self.submit_then(
            true,
            move |t| {
                if let Some(a) = &accepted {
                    t.record(a)?;
                }
                f(t)
            },
            done,
        );
        self.shared.push(pushes);
        Ok(())
    }

    /// Sends a message; the result comes once it is committed. In live mode
    /// the recipients' listening sessions get it before that.
    pub fn send(&self, from: &str, to: Target, text: String) -> Result<Pending<Message>, Failure> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send_then(from, to, text, || {
            move |result| {
                let _ = tx.send(result);
            }
        })?;
        Ok(Pending { rx })
    }

    /// [`Store::send`], with the completion made by `done` once the message
    /// is accepted (not if it is refused) and called on the store thread
    /// once it is committed.
    fn send_then<D: FnOnce(Result<Message, Failure>) + Send + 'static>(
        &self,
        from: &str,
        to: Target,
        text: String,
        done: impl FnOnce() -> D,
    ) -> Result<(), Failure> {
        let mut mode = self.numbering()?;
        match &mut *mode {
            Mode::Live(roster) => {
                let accepted = roster.accept(self.shared.host, from, &to, text, now_ms())?;
                let message = accepted.message.clone();
                self.queue_live_then(Some(accepted), move |_| Ok(message), done())
            }
            Mode::Committed => {
                let from = from.to_string();
                self.submit_then(false, move |t| t.send(&from, &to, "msg", &text), done());
                Ok(())
            }
        }
    }

    /// Whether `from` may send to `to`, decided without waiting: `None`
    /// unless the roster numbers messages (then ask the database).
    pub fn try_check_target(&self, from: &str, to: &Target) -> Option<Result<(), Failure>> {
        match &*self.shared.mode() {
            Mode::Live(roster) => Some(roster.check_target(self.shared.host, from, to).map(|_| ())),
            Mode::Committed => None,
        }
    }

    /// Sends `texts` from `from` to `to`, in order, like [`Store::send`]
    /// each, but in live mode pushes what one recipient gets in as few
    /// pushes as possible. Stops at the first refused message: the results
    /// of those before it, and the refusal.
    pub fn send_all(
        &self,
        from: &str,
        to: &Target,
        texts: Vec<String>,
    ) -> (Vec<Pending<Message>>, Option<Failure>) {
        let mut sent = Vec::with_capacity(texts.len());
        let refused = self.send_all_then(from, to, texts, || {
            let (tx, rx) = mpsc::sync_channel(1);
            sent.push(Pending { rx });
            move |result| {
                let _ = tx.send(result);
            }
        });
        (sent, refused)
    }

    /// [`Store::send_all`] with completions: `done` makes one for each
    /// message accepted, in order, called on the store thread once that
    /// message is committed. Returns the refusal that stopped it, if any.
    ///
    /// Never waits, but for the rare case where numbering has run through
    /// the durable id reservation before its extension was committed.
    pub fn send_all_then<D: FnOnce(Result<Message, Failure>) + Send + 'static>(
        &self,
        from: &str,
        to: &Target,
        texts: Vec<String>,
        mut done: impl FnMut() -> D,
    ) -> Option<Failure> {
        let mut texts = texts.into_iter();
        let mut mode = match self.numbering() {
            Ok(mode) => mode,
            Err(e) => return Some(e),
        };
        let Mode::Live(roster) = &mut *mode else {
            drop(mode);
            for text in texts {
                if let Err(e) = self.send_then(from, to.clone(), text, &mut done) {
                    return Some(e);
                }
            }
            return None;
        };
        // (user, last seq, lines), at most PUSH_BYTES each but for one line.
        let mut pushes: Vec<(String, i64, Vec<u8>)> = Vec::new();
        let mut open: HashMap<String, usize> = HashMap::new();
        let mut refused = None;
        let reserved = self.shared.reserved.load(Ordering::Acquire);
        while roster.next_id < reserved {
            let Some(text) = texts.next() else { break };
            let accepted = match roster.accept(self.shared.host, from, to, text, now_ms()) {
                Ok(accepted) => accepted,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            for (user, seq) in &accepted.deliveries {
                let line = match accepted.message.delivery_line(*seq) {
                    Ok(line) => line,
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                };
                match open.get(user).copied() {
                    Some(at) if pushes[at].2.len() + line.len() <= PUSH_BYTES => {
                        pushes[at].1 = *seq;
                        pushes[at].2.extend_from_slice(&line);
                    }
                    _ => {
                        open.insert(user.clone(), pushes.len());
                        pushes.push((user.clone(), *seq, line));
                    }
                }
            }
            let message = accepted.message.clone();
            self.submit_then(
                true,
                move |t| {
                    t.record(&accepted)?;
                    Ok(message)
                },
                done(),
            );
            if refused.is_some() {
                break;
            }
        }
        // Queued before the pushes, as in queue_live.
        self.shared.push(pushes);
        drop(mode);
        if refused.is_none() {
            // Only past the reservation: the rest one by one.
            for text in texts {
                if let Err(e) = self.send_then(from, to.clone(), text, &mut done) {
                    return Some(e);
                }
            }
        }
        refused
    }

    /// Adds `user` to `room` (a valid room name); the result is the member
    /// list, once committed.
    pub fn join(&self, user: &str, room: String) -> Result<Pending<Vec<String>>, Failure> {
        let mut mode = self.numbering()?;
        match &mut *mode {
            Mode::Live(roster) => {
                let max_rooms = self.max_rooms();
                let mut change = roster.join(user, &room, max_rooms, now_ms())?;
                let notice = change.notice.take();
                self.queue_live(notice, move |t| {
                    t.apply_join(&change)?;
                    Ok(change.members)
                })
            }
            Mode::Committed => {
                let user = user.to_string();
                Ok(self.submit(move |t| t.join(&user, &room)))
            }
        }
    }

    /// Removes `user` from `room` (a valid room name), once committed.
    pub fn leave(&self, user: &str, room: String) -> Result<Pending<()>, Failure> {
        let mut mode = self.numbering()?;
        match &mut *mode {
            Mode::Live(roster) => {
                let mut change = roster.leave(user, &room, now_ms())?;
                let notice = change.notice.take();
                self.queue_live(notice, move |t| t.apply_leave(&change))
            }
            Mode::Committed => {
                let user = user.to_string();
                Ok(self.submit(move |t| t.leave(&user, &room)))
            }
        }
    }

    /// Makes `user` known to chat (a valid recipient from now on).
    pub fn register(&self, user: &str) {
        let mut mode = self.shared.mode();
        if let Mode::Live(roster) = &mut *mode
            && roster.know(user)
        {
            let user = user.to_string();
            // Nothing to wait for: later jobs are queued behind it.
            self.submit_then(true, move |t| t.register(&user), |_| {});
        }
    }

    /// Changes each time live-numbered messages were lost by a failed
    /// commit; a listener that sees it change ends.
    pub fn lost_epoch(&self) -> u64 {
        self.shared.lost.load(Ordering::Acquire)
    }

    fn max_rooms(&self) -> usize {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max_rooms
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

/// How much lower than the daemon's threads the store thread runs (its
/// nice value, relative). Committing is background work: a delivery, whose
/// latency the users see, should win a core over it.
const STORE_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`STORE_NICE`] (Linux
/// applies a nice value per thread). Failure only costs latency.
fn yield_to_delivery() {
    // SAFETY: gettid, getpriority and setpriority take and return plain
    // integers; `tid` is this thread's own id, so only its priority changes.
    unsafe {
        let tid = nix::libc::gettid();
        let current = nix::libc::getpriority(nix::libc::PRIO_PROCESS, tid as nix::libc::id_t);
        nix::libc::setpriority(
            nix::libc::PRIO_PROCESS,
            tid as nix::libc::id_t,
            (current + STORE_NICE).min(19),
        );
    }
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
        open_lock_file(&self.path)
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

/// The flock files that decide which build may number messages in memory
/// (see the module comment). Every decision is taken holding the
/// [`CrossBuildLock`], so two builds never decide at once.
struct ModeLocks {
    /// Held exclusively by the live build.
    live: File,
    /// Held shared by every other build.
    shared: File,
}

/// Opens (creating it, owner-only) a file used only for its flock.
fn open_lock_file(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))
}

impl ModeLocks {
    fn open(db: &Path) -> Result<Self, String> {
        let open = |suffix: &str| {
            let mut path = db.as_os_str().to_owned();
            path.push(suffix);
            open_lock_file(Path::new(&path))
        };
        Ok(ModeLocks {
            live: open(".live")?,
            shared: open(".shared")?,
        })
    }

    /// Becomes the live build if no other build has the database open:
    /// none is live and none holds `shared`. `shared` must not be held by
    /// this build.
    fn try_live(&self) -> bool {
        if self.live.try_lock().is_err() {
            return false;
        }
        if self.shared.try_lock().is_err() {
            let _ = self.live.unlock();
            return false;
        }
        let _ = self.shared.unlock();
        true
    }

    /// Holds `shared` (only a decision, under the cross-build lock, holds
    /// it exclusively, so this does not wait).
    fn share(&self) -> Result<(), String> {
        self.shared
            .lock_shared()
            .map_err(|e| format!("cannot lock chat.db.shared: {e}"))
    }
}

/// How [`Worker::choose_mode_at_open`] decided.
enum Opening {
    Live,
    Committed,
    /// Another build is live: wait for it to hand over.
    AfterHandover,
}

/// The store thread's state.
struct Worker {
    host: Host,
    conn: Connection,
    lock: CrossBuildLock,
    modes: ModeLocks,
    /// This build numbers from the roster.
    live: bool,
    /// `PRAGMA data_version` when this build became live: it changes when
    /// another connection commits.
    data_version: i64,
    shared: Arc<Shared>,
    settings: Arc<Mutex<Settings>>,
    last_prune: Instant,
    last_mode_check: Instant,
    last_remind: Instant,
}

/// How a batch ended, for the mode.
#[derive(Default)]
struct BatchEnd {
    /// Another connection committed since this build became live.
    other_writer: bool,
    /// The batch was not committed.
    failed: bool,
}

impl Worker {
    fn choose_mode_at_open(&mut self) -> Result<(), String> {
        let (conn, modes) = (&self.conn, &self.modes);
        let opening = self.lock.with(|| -> Result<Opening, String> {
            if modes.try_live() {
                return Ok(Opening::Live);
            }
            modes.share()?;
            if modes.live.try_lock_shared().is_ok() {
                let _ = modes.live.unlock();
                return Ok(Opening::Committed);
            }
            // Another build is live. Above its reservation, ids stay unique
            // when this build numbers from the database; this commit also
            // tells it (its data_version changes) to hand over.
            raise_id_floor(conn).map_err(|e| format!("chat database: {e}"))?;
            Ok(Opening::AfterHandover)
        })??;
        match opening {
            Opening::Live => {
                let shared = self.shared.clone();
                let mut mode = shared.mode();
                self.become_live(&mut mode)
            }
            Opening::Committed => {
                self.lock
                    .with(|| raise_id_floor(conn))?
                    .map_err(|e| format!("chat database: {e}"))?;
                Ok(())
            }
            Opening::AfterHandover => {
                self.host
                    .info("chat: another build is live; waiting for it to hand over");
                // It releases `live` once it has committed all it numbered.
                self.modes
                    .live
                    .lock_shared()
                    .map_err(|e| format!("cannot lock chat.db.live: {e}"))?;
                let _ = self.modes.live.unlock();
                Ok(())
            }
        }
    }

    /// Loads the roster (this build holds `live`) and installs it in `mode`.
    fn become_live(&mut self, mode: &mut Mode) -> Result<(), String> {
        let conn = &mut self.conn;
        let loaded = self.lock.with(|| -> rusqlite::Result<(Roster, i64, i64)> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let roster = load_roster(&tx)?;
            let reserved = roster.next_id + ID_RESERVATION;
            set_reserved(&tx, reserved)?;
            tx.commit()?;
            let data_version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
            Ok((roster, reserved, data_version))
        })?;
        match loaded {
            Ok((roster, reserved, data_version)) => {
                self.shared.reserved.store(reserved, Ordering::Release);
                // A reservation dropped unrun (a failed batch) left this set.
                self.shared.reserving.store(false, Ordering::Release);
                self.data_version = data_version;
                *mode = Mode::Live(roster);
                self.live = true;
                Ok(())
            }
            Err(e) => {
                let _ = self.modes.live.unlock();
                let _ = self.modes.share();
                Err(format!("chat database: cannot load the roster: {e}"))
            }
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Work>) {
        let mut stopping = false;
        while !stopping {
            let (first, mut lazy) = match rx.recv_timeout(TICK) {
                Ok(Work::Job { job, live, lazy }) => ((job, live), lazy),
                Ok(Work::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    stopping = self.check_mode(&rx);
                    self.remind_lagging();
                    continue;
                }
            };
            let mut batch = vec![first];
            stopping = take_queued(&rx, &mut batch, MAX_BATCH, &mut lazy);
            if lazy && !stopping {
                stopping = wait_for_company(&rx, &mut batch, &mut lazy);
            }
            let end = self.run_batch(batch);
            if self.live && (end.other_writer || end.failed) {
                stopping |= self.leave_live(&rx, end.failed);
            }
            self.remind_lagging();
            if self.last_mode_check.elapsed() >= TICK {
                stopping |= self.check_mode(&rx);
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

    /// Live: hands over if another connection committed. Otherwise:
    /// becomes live if this build is alone again. True if a Stop was seen.
    fn check_mode(&mut self, rx: &mpsc::Receiver<Work>) -> bool {
        self.last_mode_check = Instant::now();
        if self.live {
            let conn = &self.conn;
            let version = self
                .lock
                .with(|| conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)));
            return match version {
                Ok(Ok(v)) if v == self.data_version => false,
                _ => self.leave_live(rx, false),
            };
        }
        let shared = self.shared.clone();
        // Held throughout: nothing is numbered while the roster is loaded.
        let mut mode = shared.mode();
        let mut batch = Vec::new();
        let stopping = take_queued(rx, &mut batch, usize::MAX, &mut false);
        if !batch.is_empty() {
            self.run_batch(batch);
        }
        if stopping {
            return true;
        }
        let modes = &self.modes;
        let alone = self.lock.with(|| {
            // Give up `shared` to test whether any other build holds it.
            let _ = modes.shared.unlock();
            let alone = modes.try_live();
            if !alone {
                let _ = modes.share();
            }
            alone
        });
        if alone == Ok(true) {
            match self.become_live(&mut mode) {
                Ok(()) => self
                    .host
                    .info("chat: this build is alone again: live delivery before commit"),
                Err(e) => self.host.warn(&e),
            }
        }
        false
    }

    /// Stops numbering from the roster: commits what it numbered (or, if a
    /// commit failed, refuses it: those messages were pushed but are
    /// lost), then lets other builds go on. True if a Stop was seen.
    fn leave_live(&mut self, rx: &mpsc::Receiver<Work>, lost: bool) -> bool {
        *self.shared.mode() = Mode::Committed;
        self.live = false;
        // Everything numbered from the roster is queued by now.
        let mut batch = Vec::new();
        let stopping = take_queued(rx, &mut batch, usize::MAX, &mut false);
        if lost {
            // Numbered after the lost ones: refused too (their waiters see
            // the store as unavailable). Listeners start again.
            batch.retain(|(_, live)| !live);
            self.shared.lost.fetch_add(1, Ordering::AcqRel);
            self.host.error(
                "chat: a commit failed after its messages were delivered live; they are lost, their senders were told, listeners reconnect",
            );
        } else {
            self.host
                .info("chat: another build uses the database: delivery after commit");
        }
        if !batch.is_empty() {
            self.run_batch(batch);
        }
        let (conn, modes) = (&self.conn, &self.modes);
        let _ = self.lock.with(|| {
            if lost {
                // Ids numbered in memory were pushed: the database goes on
                // above the reservation that covered them.
                if let Err(e) = raise_id_floor(conn) {
                    self.host.error(&format!("chat database: {e}"));
                }
            }
            let _ = modes.share();
            let _ = modes.live.unlock();
        });
        stopping
    }

    fn run_batch(&mut self, batch: Vec<(Job, bool)>) -> BatchEnd {
        let host = self.host;
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let conn = &mut self.conn;
        let (live, data_version) = (self.live, self.data_version);
        let mut end = BatchEnd::default();
        let outcome = self.lock.with(|| {
            if live {
                let version = conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
                end.other_writer = version != Ok(data_version);
            }
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
            let dones: Vec<Done> = batch.into_iter().map(|(job, _)| job(&mut t)).collect();
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
            self.shared
                .push(pushes.into_iter().map(|p| (p.user, p.seq, p.line)));
            Ok(dones)
        });
        match outcome {
            Ok(Ok(dones)) => dones.into_iter().for_each(|done| done(Ok(()))),
            Ok(Err((e, dones))) => {
                end.failed = true;
                host.error(&format!(
                    "a chat batch failed and was rolled back: {}",
                    e.message
                ));
                dones.into_iter().for_each(|done| done(Err(e.clone())));
            }
            Err(lock_error) => {
                end.failed = true;
                host.error(&lock_error);
                // The jobs were dropped unrun; their waiters see the store
                // as unavailable.
            }
        }
        end
    }

    /// Tells the listeners of lagging users their latest delivery number
    /// on stream 2, so one that missed a push asks for it again.
    fn remind_lagging(&mut self) {
        // Spaced out, so that the reminders span a client's replay.
        if self.last_remind.elapsed() < TICK / 2 {
            return;
        }
        self.last_remind = Instant::now();
        let host = self.host;
        let mut lagging = self
            .shared
            .lagging
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lagging.retain(|user, (seq, left)| {
            let line = format!("{{\"head\":{seq}}}\n");
            if host.push_user(user, stream::CONTROL, line.as_bytes()).full == 0 {
                *left = left.saturating_sub(1);
            }
            *left > 0
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

/// Takes the jobs already queued, up to `max` in `batch`; true if a Stop
/// was among them.
/// Adds what is queued to `batch`; `lazy` stays true only while every job
/// is. True if a Stop was seen.
fn take_queued(
    rx: &mpsc::Receiver<Work>,
    batch: &mut Vec<(Job, bool)>,
    max: usize,
    lazy: &mut bool,
) -> bool {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(Work::Job { job, live, lazy: l }) => {
                *lazy &= l;
                batch.push((job, live));
            }
            Ok(Work::Stop) => return true,
            Err(_) => break,
        }
    }
    false
}

/// A batch of acknowledgements only: waits up to [`ACK_WAIT`] for a job
/// that is not, then takes what else is queued. True if a Stop was seen.
fn wait_for_company(
    rx: &mpsc::Receiver<Work>,
    batch: &mut Vec<(Job, bool)>,
    lazy: &mut bool,
) -> bool {
    let deadline = Instant::now() + ACK_WAIT;
    while *lazy && batch.len() < MAX_BATCH {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Work::Job { job, live, lazy: l }) => {
                *lazy &= l;
                batch.push((job, live));
            }
            Ok(Work::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
    take_queued(rx, batch, MAX_BATCH, lazy)
}

/// The durable id reservation: every id handed out from memory is below
/// it.
fn reserved_ids(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'reserved_id'",
        [],
        |r| r.get(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0))
}

fn set_reserved(conn: &Connection, reserved: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta(key, value) VALUES ('reserved_id', ?1)
         ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute([reserved])
    .map(drop)
}

/// Makes SQLite's own numbering (AUTOINCREMENT, used when numbering from
/// the database) continue above every id reserved for live numbering, and
/// counts the opening: the commit changes the data_version a live build
/// watches, which tells it to hand over.
fn raise_id_floor(conn: &Connection) -> rusqlite::Result<()> {
    let floor = reserved_ids(conn)? - 1;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        if floor > 0 {
            let updated = conn.execute(
                "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'messages'",
                [floor],
            )?;
            if updated == 0 {
                conn.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES ('messages', ?1)",
                    [floor],
                )?;
            }
        }
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('opened', 1)
             ON CONFLICT(key) DO UPDATE SET value = value + 1",
            [],
        )
        .map(drop)
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Reads what live numbering needs: every user with their next delivery
/// number, every room with its members, and the next id, above every id
/// used or reserved before (a crash may have lost pushed messages).
fn load_roster(conn: &Connection) -> rusqlite::Result<Roster> {
    let reserved = reserved_ids(conn)?;
    let sequence: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let newest: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    let mut roster = Roster::new(reserved.max(sequence + 1).max(newest + 1).max(1));
    let mut users = conn.prepare("SELECT name, next_seq FROM users")?;
    let mut rows = users.query([])?;
    while let Some(row) = rows.next()? {
        roster.load_user(row.get(0)?, row.get(1)?);
    }
    let mut rooms =
        conn.prepare("SELECT r.name, m.user FROM rooms r LEFT JOIN members m ON m.room = r.name")?;
    let mut rows = rooms.query([])?;
    while let Some(row) = rows.next()? {
        roster.load_member(row.get(0)?, row.get(1)?);
    }
    Ok(roster)
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

    /// Runs one statement of the batch; an error fails the batch.
    fn execute(&mut self, sql: &str, params: impl rusqlite::Params) -> Result<usize, Failure> {
        let r = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params));
        r.map_err(|e| self.db(e))
    }

    /// Makes `user` known to chat (a valid recipient from now on).
    pub fn register(&mut self, user: &str) -> Result<(), Failure> {
        self.execute(
            "INSERT OR IGNORE INTO users(name, next_seq, acked, first_seen) VALUES (?1, 1, 0, ?2)",
            params![user, now_ms()],
        )
        .map(drop)
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
            self.execute(
                "INSERT INTO inbox(user, seq, msg) VALUES (?1, ?2, ?3)",
                params![user, seq, message.id],
            )?;
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

    /// Reserves ids below `upto` for live numbering, durably.
    pub fn reserve_ids(&mut self, upto: i64) -> Result<(), Failure> {
        let r = set_reserved(self.tx, upto);
        r.map_err(|e| self.db(e))
    }

    /// Writes a message numbered from the roster: the message, each
    /// recipient's delivery, the users it made known.
    pub fn record(&mut self, a: &Accepted) -> Result<(), Failure> {
        for user in &a.new_users {
            self.register(user)?;
        }
        let m = &a.message;
        let r = self
            .tx
            .prepare_cached(
                "INSERT INTO messages(id, ts, kind, sender, target, conv, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| s.execute(params![m.id, m.ts, m.kind, m.from, m.to, a.conv, m.text]));
        if let Err(e) = r {
            return Err(self.db(e));
        }
        for (user, seq) in &a.deliveries {
            self.execute(
                "INSERT INTO inbox(user, seq, msg) VALUES (?1, ?2, ?3)",
                params![user, seq, m.id],
            )?;
            self.advance_seq(user, seq + 1);
        }
        Ok(())
    }

    /// Notes that `user`'s next delivery number is at least `next`.
    fn advance_seq(&mut self, user: &str, next: i64) {
        match self.seqs.get_mut(user) {
            Some(s) => {
                s.next_seq = s.next_seq.max(next);
                s.dirty = true;
            }
            None => {
                self.seqs.insert(
                    user.to_string(),
                    Seqs {
                        next_seq: next,
                        dirty: true,
                    },
                );
            }
        }
    }

    /// Writes a join decided by the roster (its notice is recorded apart).
    pub fn apply_join(&mut self, m: &Membership) -> Result<(), Failure> {
        self.register(&m.user)?;
        if m.room_changed {
            self.execute(
                "INSERT OR IGNORE INTO rooms(name, created) VALUES (?1, ?2)",
                params![m.room, now_ms()],
            )?;
        }
        if m.changed {
            self.execute(
                "INSERT OR IGNORE INTO members(room, user) VALUES (?1, ?2)",
                params![m.room, m.user],
            )?;
        }
        Ok(())
    }

    /// Writes a leave decided by the roster (its notice is recorded apart).
    pub fn apply_leave(&mut self, m: &Membership) -> Result<(), Failure> {
        self.execute(
            "DELETE FROM members WHERE room = ?1 AND user = ?2",
            params![m.room, m.user],
        )?;
        if m.room_changed {
            self.execute("DELETE FROM rooms WHERE name = ?1", [&m.room])?;
        }
        Ok(())
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
            self.execute(
                "UPDATE users SET next_seq = max(next_seq, ?2) WHERE name = ?1",
                params![user, next_seq],
            )?;
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
                // Only a check: users are made known through the store
                // (Store::register), which live numbering follows.
                if !self.user_known(user)? && !self.host.user_online(user) {
                    return Err(Failure::new(
                        Code::NotFound,
                        format!("no such user: {user}"),
                    ));
                }
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
            self.execute(
                "INSERT INTO rooms(name, created) VALUES (?1, ?2)",
                params![room, now_ms()],
            )?;
        }
        if !self.is_member(room, user)? {
            self.register(user)?;
            self.execute(
                "INSERT INTO members(room, user) VALUES (?1, ?2)",
                params![room, user],
            )?;
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
        self.execute(
            "DELETE FROM members WHERE room = ?1 AND user = ?2",
            params![room, user],
        )?;
        self.send(user, &Target::Room(room.to_string()), "leave", "")?;
        if self.members(room)?.is_empty() {
            self.execute("DELETE FROM rooms WHERE name = ?1", [room])?;
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
