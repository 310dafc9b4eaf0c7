//! A channel: one operation on a connection, as seen from both sides.
//!
//! The connection's async reader feeds client input in with the `on_*`
//! methods, which never block. A plugin thread consumes it with blocking
//! [`Channel::read`] and answers with [`Channel::write`], which blocks while
//! the client's credit is used up or the connection's outbound backlog is
//! full ([`crate::outbound`]), so a slow client stalls its plugin, never the
//! daemon, and memory is bounded whatever window the client grants.
//!
//! Plugins name channels by a process-wide `u64` handle (never reused)
//! looked up in [`ChannelTable`], so a stale handle from a buggy plugin
//! finds nothing instead of freed memory.
//!
//! An **inline** call (ABI 1.1) runs on the connection's own task, which
//! must never block: on an inline channel ([`Channel::set_inline`]), and on
//! any channel from a thread inside an inline call ([`InlineScope`]),
//! `read` only polls and `write` is `try_write`; both answer
//! [`ChannelError::WouldBlock`] where they would otherwise wait.
//!
//! A **pending** inline call (ABI 1.2) stays open after its handler
//! returned: the channel then holds an [`InputHook`], which the `on_*`
//! methods run right there, on the connection's task, whenever something
//! arrives for the call (input, EOF, cancellation, credit). Runs of one
//! channel's hook never overlap: a trigger that comes while the hook runs
//! makes it run once more instead of waiting.

use bytes::Bytes;
use sockd_proto::{ErrorCode, Message};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub use crate::outbound::Outbound;

/// Why a channel operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    Cancelled,
    Closed,
    Timeout,
    WouldBlock,
}

/// What a read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    Data { stream: u8, len: usize },
    Eof { stream: u8 },
}

enum Inbound {
    Data { stream: u8, data: Bytes },
    Eof { stream: u8 },
}

struct State {
    inbound: VecDeque<Inbound>,
    /// Credit the client may still use before we grant more.
    recv_credit: u64,
    /// Bytes the plugin consumed that we have not yet credited back.
    consumed: u64,
    /// Bytes we may still send to the client.
    send_credit: u64,
    cancelled: bool,
    finished: bool,
    result_value: i64,
    result_message: String,
    subscribed: bool,
    /// Run inline: reads and writes never wait.
    inline: bool,
    /// Plugin threads waiting on `changed`: nobody to wake when zero (a
    /// notify is a syscall even with no waiter).
    waiters: u32,
    /// Plugin threads waiting for room in the connection's backlog.
    room_waiters: u32,
    /// A pending call's input hook (ABI 1.2); dropped when the call ends.
    hook: Option<Arc<dyn InputHook>>,
    /// The hook is running; `hook_again`: run it once more when it returns.
    hook_running: bool,
    hook_again: bool,
    /// Status of a `finish` that came while the inline handler still ran.
    early_end: Option<i32>,
    /// The client's input on stream 0 ended with its OPEN (a CALL): an EOF
    /// to read after whatever is queued, not queued itself.
    eof_at_open: bool,
    /// The inline handler runs and the client takes REPLY: its last DATA
    /// is held back to leave in one frame with the CLOSE.
    holding: bool,
    held: Option<(u8, Bytes)>,
}

/// What [`Channel::request_end`] found.
pub enum EndRequest {
    /// The call is pending: end it through its hook.
    Hook(Arc<dyn InputHook>),
    /// The inline handler is still running: the end is applied if it
    /// leaves the call pending.
    Deferred,
    /// The call has ended already (or another end was requested first).
    Closed,
    /// Not an inline call.
    NotPending,
}

/// Serves a pending call (ABI 1.2) on the thread that feeds its channel.
pub trait InputHook: Send + Sync {
    /// Something arrived for the call: input, EOF, cancellation or credit.
    /// Never runs concurrently with itself for one channel.
    fn on_input(&self, channel: &Channel);
    /// Ends the call with a plugin status (as `handle` returns it); false
    /// if it had already ended. Exactly once, from any thread.
    fn end(&self, channel: &Channel, status: i32) -> bool;
}

thread_local! {
    /// Set while this thread runs an inline call.
    static IN_INLINE_CALL: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as running an inline call until dropped: every
/// channel operation made meanwhile, on whatever channel, is non-blocking.
pub struct InlineScope {
    outer: bool,
}

impl InlineScope {
    pub fn enter() -> Self {
        InlineScope {
            outer: IN_INLINE_CALL.with(|c| c.replace(true)),
        }
    }
}

impl Drop for InlineScope {
    fn drop(&mut self) {
        IN_INLINE_CALL.with(|c| c.set(self.outer));
    }
}

fn in_inline_call() -> bool {
    IN_INLINE_CALL.with(Cell::get)
}

/// What a one-shot call (capability `oneshot`) changes for a channel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Oneshot {
    /// Opened by a CALL: the input on stream 0 has ended.
    pub input_ended: bool,
    /// The client takes REPLY frames.
    pub replies: bool,
}

/// The next channel's handle: handles are never reused.
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

/// How many channels this process has made: it grows with every OPEN and
/// CALL, so an unchanged value means none since.
pub fn made() -> u64 {
    NEXT_HANDLE.load(Ordering::Relaxed) - 1
}

/// Owner details a plugin host needs for routing and reporting.
#[derive(Debug, Clone)]
pub struct Owner {
    pub session_id: u64,
    pub user: Arc<str>,
    pub plugin: Arc<str>,
}

pub struct Channel {
    /// Channel number on the wire.
    pub wire_id: u32,
    /// Process-wide handle given to plugins.
    pub handle: u64,
    pub owner: Owner,
    /// The command it was opened with (`sockctl sessions` lists them).
    pub command: Box<str>,
    /// `State::finished`, readable without the lock: the connection
    /// frees finished channels' numbers by it.
    finished: AtomicBool,
    /// The client takes REPLY frames (capability `oneshot`).
    replies: bool,
    out: Outbound,
    window: u64,
    max_chunk: usize,
    state: Mutex<State>,
    changed: Condvar,
}

/// A client sent more than its credit allowed.
#[derive(Debug)]
pub struct CreditViolation {
    pub sent: usize,
    pub allowed: u64,
}

impl Channel {
    /// `window`: credit we grant the client; `send_credit`: what the client
    /// granted us in its HELLO; `max_chunk`: largest DATA payload we may
    /// send; `oneshot`: the client's input on stream 0 ended with the OPEN
    /// (a CALL), and whether it takes REPLY frames.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        wire_id: u32,
        owner: Owner,
        command: Box<str>,
        out: Outbound,
        window: u32,
        send_credit: u32,
        max_chunk: usize,
        oneshot: Oneshot,
    ) -> Arc<Self> {
        Arc::new(Channel {
            wire_id,
            handle: NEXT_HANDLE.fetch_add(1, Ordering::Relaxed),
            owner,
            command,
            finished: AtomicBool::new(false),
            replies: oneshot.replies,
            out,
            window: window.into(),
            max_chunk,
            state: Mutex::new(State {
                inbound: VecDeque::new(),
                recv_credit: window.into(),
                consumed: 0,
                send_credit: send_credit.into(),
                cancelled: false,
                finished: false,
                result_value: 0,
                result_message: String::new(),
                subscribed: false,
                inline: false,
                waiters: 0,
                room_waiters: 0,
                hook: None,
                hook_running: false,
                hook_again: false,
                early_end: None,
                eof_at_open: oneshot.input_ended,
                holding: false,
                held: None,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent
        // (every update is a single assignment), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the plugin threads blocked in `read` or `write`, if any.
    fn wake_waiters(&self, s: &State) {
        if s.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Blocks on `changed` (counted, so wakers know someone waits).
    fn wait<'a>(
        &self,
        mut s: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        s.waiters += 1;
        let mut s = match timeout {
            None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.changed
                    .wait_timeout(s, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        s.waiters -= 1;
        s
    }

    /// Makes this channel's call inline: from now on its reads only poll
    /// and its writes never wait (see the module docs).
    pub fn set_inline(&self) {
        let mut s = self.lock();
        s.inline = true;
        s.holding = self.replies;
    }

    /// The call leaves the connection's task (it goes to a call thread).
    pub fn clear_inline(&self) {
        let mut s = self.lock();
        s.inline = false;
        self.release_held(&mut s);
    }

    /// Sends the DATA held for a REPLY on its own: the call goes on after
    /// its inline handler (pending, or on a call thread).
    fn release_held(&self, s: &mut State) {
        s.holding = false;
        self.send_held(s);
    }

    fn send_held(&self, s: &mut State) {
        if let Some((stream, data)) = s.held.take() {
            let _ = self.out.send(Message::Data {
                channel: self.wire_id,
                stream,
                data,
            });
        }
    }

    /// Makes the call pending: `hook` serves its input from now on, until
    /// the call finishes, and runs at once if input is already queued.
    /// Only the thread running the hook (inside an [`InlineScope`]) is held
    /// to non-blocking operations from now on; other threads may wait for
    /// credit. Returns the status of a `finish` that came while the handler
    /// ran instead (the hook is not installed then).
    pub fn set_hook(&self, hook: Arc<dyn InputHook>) -> Option<i32> {
        let mut s = self.lock();
        s.inline = false;
        if let Some(status) = s.early_end.take() {
            return Some(status);
        }
        if s.finished {
            return Some(sockd_plugin::sys::SOCKD_E_CLOSED);
        }
        self.release_held(&mut s);
        s.hook = Some(hook);
        if !s.inbound.is_empty() || s.eof_at_open || s.cancelled {
            self.run_hook(s);
        }
        None
    }

    /// Runs the pending call's hook now on this thread (or once more after
    /// its current run); false if the call is not pending.
    pub fn wake(&self) -> bool {
        let s = self.lock();
        if s.hook.is_none() {
            return false;
        }
        self.run_hook(s);
        true
    }

    /// The host's `finish` for this call: see [`EndRequest`].
    pub fn request_end(&self, status: i32) -> EndRequest {
        let mut s = self.lock();
        if s.finished {
            return EndRequest::Closed;
        }
        if let Some(hook) = &s.hook {
            return EndRequest::Hook(hook.clone());
        }
        if !s.inline {
            return EndRequest::NotPending;
        }
        if s.early_end.is_some() {
            return EndRequest::Closed;
        }
        s.early_end = Some(status);
        EndRequest::Deferred
    }

    /// The pending call's hook, while the call lasts.
    pub fn hook(&self) -> Option<Arc<dyn InputHook>> {
        self.lock().hook.clone()
    }

    /// Runs the hook (if any) on this thread, or, if it is running
    /// already, asks that run to go round once more.
    fn run_hook(&self, mut s: MutexGuard<'_, State>) {
        let Some(hook) = s.hook.clone() else {
            return;
        };
        if s.hook_running {
            s.hook_again = true;
            return;
        }
        s.hook_running = true;
        drop(s);
        loop {
            hook.on_input(self);
            let mut s = self.lock();
            if s.hook_again && s.hook.is_some() {
                s.hook_again = false;
                continue;
            }
            s.hook_running = false;
            s.hook_again = false;
            return;
        }
    }

    /// Whether operations on this channel, from this thread, must not wait.
    fn nonblocking(s: &State) -> bool {
        s.inline || in_inline_call()
    }

    /// Input after a CALL's OPEN comes after its EOF on stream 0.
    fn queue_eof_at_open(s: &mut State) {
        if std::mem::take(&mut s.eof_at_open) {
            s.inbound.push_back(Inbound::Eof {
                stream: sockd_plugin::stream::MAIN,
            });
        }
    }

    // ---- connection side: never blocks ----

    pub fn on_data(&self, stream: u8, data: Bytes) -> Result<(), CreditViolation> {
        let mut s = self.lock();
        let len = data.len() as u64;
        if len > s.recv_credit {
            return Err(CreditViolation {
                sent: data.len(),
                allowed: s.recv_credit,
            });
        }
        s.recv_credit -= len;
        // Nobody reads a finished call's input (an inline call ends before
        // its first DATA arrives): count it against the credit, drop it.
        if !s.cancelled && !s.finished && !data.is_empty() {
            Self::queue_eof_at_open(&mut s);
            s.inbound.push_back(Inbound::Data { stream, data });
            self.wake_waiters(&s);
            self.run_hook(s);
        }
        Ok(())
    }

    pub fn on_eof(&self, stream: u8) {
        let mut s = self.lock();
        if !s.finished {
            Self::queue_eof_at_open(&mut s);
            s.inbound.push_back(Inbound::Eof { stream });
            self.wake_waiters(&s);
            self.run_hook(s);
        }
    }

    pub fn on_credit(&self, bytes: u32) {
        let mut s = self.lock();
        s.send_credit = s.send_credit.saturating_add(bytes.into());
        self.wake_waiters(&s);
        self.run_hook(s);
    }

    /// The client cancelled, or the connection is gone.
    pub fn cancel(&self) {
        let mut s = self.lock();
        s.cancelled = true;
        s.inbound.clear();
        self.wake_waiters(&s);
        let room_waiters = s.room_waiters > 0;
        self.run_hook(s);
        if room_waiters {
            self.out.backlog().wake();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    // ---- plugin side: may block ----

    pub fn read(
        &self,
        stream_out: &mut u8,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<ReadOutcome, ChannelError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        loop {
            if s.finished {
                return Err(ChannelError::Closed);
            }
            if s.cancelled {
                return Err(ChannelError::Cancelled);
            }
            // Refused whether or not input is there, so that a handler
            // that would block fails every time, not only when unlucky.
            if Self::nonblocking(&s) && timeout != Some(Duration::ZERO) {
                return Err(ChannelError::WouldBlock);
            }
            match s.inbound.front_mut() {
                Some(Inbound::Eof { stream }) => {
                    let stream = *stream;
                    s.inbound.pop_front();
                    *stream_out = stream;
                    return Ok(ReadOutcome::Eof { stream });
                }
                Some(Inbound::Data { stream, data }) => {
                    let stream = *stream;
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    if n == data.len() {
                        s.inbound.pop_front();
                    } else {
                        let rest = data.slice(n..);
                        *data = rest;
                    }
                    self.consumed(&mut s, n as u64);
                    *stream_out = stream;
                    return Ok(ReadOutcome::Data { stream, len: n });
                }
                None => {
                    if std::mem::take(&mut s.eof_at_open) {
                        let stream = sockd_plugin::stream::MAIN;
                        *stream_out = stream;
                        return Ok(ReadOutcome::Eof { stream });
                    }
                }
            }
            s = match deadline {
                None => self.wait(s, None),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(ChannelError::Timeout);
                    }
                    self.wait(s, Some(deadline - now))
                }
            };
        }
    }

    /// Returns credit to the client once half the window is consumed, so
    /// credit frames stay rare.
    fn consumed(&self, s: &mut State, n: u64) {
        s.consumed += n;
        if s.consumed >= self.window / 2 {
            let grant = s.consumed.min(u32::MAX as u64);
            s.consumed -= grant;
            s.recv_credit += grant;
            self.send_held(s);
            let _ = self.out.send(Message::Credit {
                channel: self.wire_id,
                bytes: grant as u32,
            });
        }
    }

    fn send_chunk(&self, s: &mut State, stream: u8, data: &[u8]) {
        let data = Bytes::copy_from_slice(data);
        if s.holding {
            // Only the last DATA can go out with the CLOSE.
            self.send_held(s);
            s.held = Some((stream, data));
            return;
        }
        let _ = self.out.send(Message::Data {
            channel: self.wire_id,
            stream,
            data,
        });
    }

    /// Writes all of `data`, waiting for credit as needed (on an inline
    /// call: now or never, as [`Channel::try_write`]).
    pub fn write(&self, stream: u8, data: &[u8]) -> Result<(), ChannelError> {
        let mut rest = data;
        let mut s = self.lock();
        if Self::nonblocking(&s) {
            return self.try_write_locked(s, stream, data);
        }
        loop {
            if s.finished {
                return Err(ChannelError::Closed);
            }
            if s.cancelled {
                return Err(ChannelError::Cancelled);
            }
            if rest.is_empty() {
                return Ok(());
            }
            if s.send_credit == 0 {
                s = self.wait(s, None);
                continue;
            }
            if self.out.backlog().is_full() {
                // The client is not reading: wait for the writer, not
                // queue more (the backlog's lock is never taken under ours).
                // Counted so that cancel and finish know to wake us.
                s.room_waiters += 1;
                drop(s);
                self.out
                    .backlog()
                    .wait_for_room_blocking(|| self.is_cancelled() || self.is_finished());
                s = self.lock();
                s.room_waiters -= 1;
                continue;
            }
            let n = rest.len().min(self.max_chunk).min(s.send_credit as usize);
            s.send_credit -= n as u64;
            self.send_chunk(&mut s, stream, &rest[..n]);
            rest = &rest[n..];
        }
    }

    /// Writes all of `data` now, or nothing.
    pub fn try_write(&self, stream: u8, data: &[u8]) -> Result<(), ChannelError> {
        self.try_write_locked(self.lock(), stream, data)
    }

    fn try_write_locked(
        &self,
        mut s: MutexGuard<'_, State>,
        stream: u8,
        data: &[u8],
    ) -> Result<(), ChannelError> {
        if s.finished {
            return Err(ChannelError::Closed);
        }
        if s.cancelled {
            return Err(ChannelError::Cancelled);
        }
        if (data.len() as u64) > s.send_credit || self.out.backlog().is_full() {
            return Err(ChannelError::WouldBlock);
        }
        s.send_credit -= data.len() as u64;
        for chunk in data.chunks(self.max_chunk.max(1)) {
            self.send_chunk(&mut s, stream, chunk);
        }
        Ok(())
    }

    pub fn write_eof(&self, stream: u8) -> Result<(), ChannelError> {
        let mut s = self.lock();
        if s.finished {
            return Err(ChannelError::Closed);
        }
        if s.cancelled {
            return Err(ChannelError::Cancelled);
        }
        self.send_held(&mut s);
        let _ = self.out.send(Message::Eof {
            channel: self.wire_id,
            stream,
        });
        Ok(())
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    pub fn set_result(&self, value: i64, message: &str) -> Result<(), ChannelError> {
        let mut s = self.lock();
        if s.finished {
            return Err(ChannelError::Closed);
        }
        s.result_value = value;
        s.result_message = message.to_string();
        Ok(())
    }

    /// Marks the channel as a push target; [`ChannelTable::subscribe`]
    /// also indexes it.
    fn subscribe(&self) -> Result<(), ChannelError> {
        let mut s = self.lock();
        if s.finished {
            return Err(ChannelError::Closed);
        }
        s.subscribed = true;
        Ok(())
    }

    pub fn is_subscribed(&self) -> bool {
        let s = self.lock();
        s.subscribed && !s.finished && !s.cancelled
    }

    /// Ends the call: sends CLOSE with `code` (and the result set by the
    /// plugin, or `message` if it set none) and wakes any blocked thread.
    pub fn finish(&self, code: ErrorCode, message: &str) {
        let mut s = self.lock();
        if s.finished {
            return;
        }
        s.finished = true;
        self.finished.store(true, Ordering::Release);
        let subscribed = s.subscribed;
        let text = if s.result_message.is_empty() {
            message.to_string()
        } else {
            std::mem::take(&mut s.result_message)
        };
        // A REPLY carries both if they fit in one frame of the client's
        // size (its fields take 12 bytes more than a DATA's).
        if s.held
            .as_ref()
            .is_some_and(|(_, data)| data.len() + text.len() + 12 > self.max_chunk)
        {
            self.send_held(&mut s);
        }
        let close = match s.held.take() {
            Some((stream, data)) => Message::Reply {
                channel: self.wire_id,
                stream,
                data,
                code,
                value: s.result_value,
                message: text,
            },
            None => Message::Close {
                channel: self.wire_id,
                code,
                value: s.result_value,
                message: text,
            },
        };
        let _ = self.out.send(close);
        self.wake_waiters(&s);
        let room_waiters = s.room_waiters > 0;
        // Dropped outside the lock: it may hold the last reference to the
        // build's call state.
        let hook = s.hook.take();
        drop(s);
        drop(hook);
        if room_waiters {
            self.out.backlog().wake();
        }
        let table = ChannelTable::global();
        table.remove(self.handle);
        if subscribed {
            table.unsubscribe(self);
        }
    }
}

/// Shards of the channel table: every call inserts and removes its channel,
/// so one lock for all connections would be a point of contention.
const SHARDS: usize = 16;

/// Channels by handle. Handles are sequential numbers the daemon assigns,
/// so a multiplicative hash spreads them well and no peer can choose them
/// to collide: SipHash's protection is not needed on every call.
type ByHandle = HashMap<u64, Arc<Channel>, BuildHasherDefault<HandleHasher>>;

#[derive(Default)]
struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing: the high bits (hashbrown's tag) vary too.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Subscribed channels by plugin, then user.
type Subscribers = HashMap<Arc<str>, HashMap<Arc<str>, Vec<Arc<Channel>>>>;

/// All live channels by handle, for the plugin ABI, and the subscribed
/// ones by plugin and user, so that a push looks at its recipient's
/// channels only, however many other sessions listen.
pub struct ChannelTable {
    shards: [RwLock<ByHandle>; SHARDS],
    subscribers: RwLock<Subscribers>,
}

impl ChannelTable {
    pub fn global() -> &'static ChannelTable {
        static TABLE: OnceLock<ChannelTable> = OnceLock::new();
        TABLE.get_or_init(|| ChannelTable {
            shards: std::array::from_fn(|_| RwLock::new(ByHandle::default())),
            subscribers: RwLock::default(),
        })
    }

    fn shard(&self, handle: u64) -> &RwLock<ByHandle> {
        // Handles are sequential, so the low bits spread them evenly.
        &self.shards[(handle % SHARDS as u64) as usize]
    }

    pub fn insert(&self, channel: Arc<Channel>) {
        self.shard(channel.handle)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.handle, channel);
    }

    pub fn get(&self, handle: u64) -> Option<Arc<Channel>> {
        self.shard(handle)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle)
            .cloned()
    }

    pub fn remove(&self, handle: u64) {
        self.shard(handle)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
    }

    /// The commands of `session_id`'s unfinished channels, sorted.
    pub fn commands_of(&self, session_id: u64) -> Vec<String> {
        let mut commands = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            commands.extend(
                shard
                    .values()
                    .filter(|c| c.owner.session_id == session_id)
                    .map(|c| c.command.to_string()),
            );
        }
        commands.sort();
        commands
    }

    /// Makes `channel` a target of pushes to its user by its plugin, until
    /// it finishes.
    pub fn subscribe(&self, channel: &Arc<Channel>) -> Result<(), ChannelError> {
        channel.subscribe()?;
        {
            let mut subs = self.subscribers.write().unwrap_or_else(|p| p.into_inner());
            let list = subs
                .entry(channel.owner.plugin.clone())
                .or_default()
                .entry(channel.owner.user.clone())
                .or_default();
            if !list.iter().any(|c| Arc::ptr_eq(c, channel)) {
                list.push(channel.clone());
            }
        }
        // It may have finished since it was marked, before it was indexed.
        if channel.is_finished() {
            self.unsubscribe(channel);
        }
        Ok(())
    }

    fn unsubscribe(&self, channel: &Channel) {
        let mut subs = self.subscribers.write().unwrap_or_else(|p| p.into_inner());
        let Some(users) = subs.get_mut(&channel.owner.plugin) else {
            return;
        };
        if let Some(list) = users.get_mut(&channel.owner.user) {
            list.retain(|c| c.handle != channel.handle);
            if list.is_empty() {
                users.remove(&channel.owner.user);
            }
        }
        if users.is_empty() {
            subs.remove(&channel.owner.plugin);
        }
    }

    /// The channels of `user` subscribed by `plugin` (push delivery).
    pub fn subscribers(&self, plugin: &str, user: &str) -> Vec<Arc<Channel>> {
        let subs = self.subscribers.read().unwrap_or_else(|p| p.into_inner());
        subs.get(plugin)
            .and_then(|users| users.get(user))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn channel(window: u32, credit: u32) -> (Arc<Channel>, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = crate::outbound::channel();
        let owner = Owner {
            session_id: 1,
            user: "u".into(),
            plugin: "p".into(),
        };
        (
            Channel::new(
                1,
                owner,
                "test".into(),
                tx,
                window,
                credit,
                4,
                Oneshot::default(),
            ),
            rx,
        )
    }

    fn inline_reply_channel(max_chunk: usize) -> (Arc<Channel>, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = crate::outbound::channel();
        let owner = Owner {
            session_id: 1,
            user: "u".into(),
            plugin: "p".into(),
        };
        let oneshot = Oneshot {
            input_ended: true,
            replies: true,
        };
        let ch = Channel::new(1, owner, "t".into(), tx, 64, 1 << 20, max_chunk, oneshot);
        ch.set_inline();
        (ch, rx)
    }

    #[test]
    fn an_inline_calls_last_write_leaves_with_its_close_when_it_fits() {
        let (ch, mut rx) = inline_reply_channel(64);
        ch.write(0, b"first").unwrap();
        ch.write(0, b"last").unwrap();
        ch.finish(ErrorCode::Ok, "");
        assert!(matches!(rx.try_recv(), Ok(Message::Data { data, .. }) if &data[..] == b"first"));
        assert!(matches!(rx.try_recv(), Ok(Message::Reply { data, .. }) if &data[..] == b"last"));
        assert!(rx.try_recv().is_err());
        // After its end the call reads nothing.
        let mut stream = 9;
        assert_eq!(
            ch.read(&mut stream, &mut [0u8; 4], Some(Duration::ZERO)),
            Err(ChannelError::Closed)
        );

        // The input ended with the OPEN (a CALL): a poll finds the end of
        // stream 0. Too large for one frame of the client's size: DATA,
        // then CLOSE.
        let (ch, mut rx) = inline_reply_channel(64);
        let mut stream = 9;
        assert!(matches!(
            ch.read(&mut stream, &mut [0u8; 4], Some(Duration::ZERO)),
            Ok(ReadOutcome::Eof { stream: 0 })
        ));
        ch.write(0, &[7u8; 60]).unwrap();
        ch.finish(ErrorCode::Internal, "a message that does not fit");
        assert!(matches!(rx.try_recv(), Ok(Message::Data { data, .. }) if data.len() == 60));
        assert!(matches!(rx.try_recv(), Ok(Message::Close { .. })));

        // Left pending (or sent to a thread): what was held goes out now.
        let (ch, mut rx) = inline_reply_channel(64);
        ch.write(0, b"early").unwrap();
        ch.clear_inline();
        assert!(matches!(rx.try_recv(), Ok(Message::Data { data, .. }) if &data[..] == b"early"));
    }

    #[test]
    fn reads_split_large_frames_and_return_credit() {
        let (ch, mut rx) = channel(8, 100);
        ch.on_data(0, Bytes::from_static(b"abcdef")).unwrap();
        let mut buf = [0u8; 4];
        let mut stream = 9;
        assert_eq!(
            ch.read(&mut stream, &mut buf, None),
            Ok(ReadOutcome::Data { stream: 0, len: 4 })
        );
        assert_eq!(&buf, b"abcd");
        assert_eq!(
            rx.try_recv().unwrap(),
            Message::Credit {
                channel: 1,
                bytes: 4
            }
        );
        assert_eq!(
            ch.read(&mut stream, &mut buf, None),
            Ok(ReadOutcome::Data { stream: 0, len: 2 })
        );
        assert!(
            ch.on_data(0, Bytes::from_static(b"123456789")).is_err(),
            "over credit"
        );
    }

    #[test]
    fn write_waits_for_credit() {
        let (ch, mut rx) = channel(8, 3);
        assert_eq!(ch.try_write(0, b"abcd"), Err(ChannelError::WouldBlock));
        let writer = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.write(0, b"abcdefgh"))
        };
        // The writer sends 3 bytes, then blocks until more credit arrives.
        let first = rx.blocking_recv().unwrap();
        assert!(matches!(first, Message::Data { ref data, .. } if &data[..] == b"abc"));
        ch.on_credit(100);
        assert_eq!(writer.join().unwrap(), Ok(()));
    }

    #[test]
    fn write_waits_while_the_connection_backlog_is_full() {
        // The client granted plenty of credit but its writer queue is full.
        let (ch, mut rx) = channel(8, u32::MAX);
        let (backlog, limit) = (ch.out.backlog().clone(), crate::outbound::LIMIT);
        let filler = Message::Ping {
            payload: Bytes::from(vec![0u8; limit as usize]),
        };
        ch.out.send(filler).unwrap();
        assert_eq!(ch.try_write(0, b"x"), Err(ChannelError::WouldBlock));
        let writer = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.write(0, b"abcd"))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!writer.is_finished(), "queues nothing while full");
        let queued = rx.try_recv().unwrap();
        assert!(matches!(queued, Message::Ping { .. }));
        assert!(rx.try_recv().is_err());
        backlog.written(crate::outbound::weight(&queued));
        assert_eq!(writer.join().unwrap(), Ok(()));
        assert!(
            matches!(rx.try_recv().unwrap(), Message::Data { ref data, .. } if &data[..] == b"abcd")
        );
        // Cancelling wakes a writer that waits for room.
        ch.out
            .send(Message::Ping {
                payload: Bytes::from(vec![0u8; limit as usize]),
            })
            .unwrap();
        let writer = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.write(0, b"efgh"))
        };
        ch.cancel();
        assert_eq!(writer.join().unwrap(), Err(ChannelError::Cancelled));
    }

    #[test]
    fn cancel_wakes_readers_and_writers() {
        let (ch, _rx) = channel(8, 0);
        let reader = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.read(&mut 0, &mut [0u8; 4], None))
        };
        let writer = {
            let ch = ch.clone();
            std::thread::spawn(move || ch.write(0, b"x"))
        };
        ch.cancel();
        assert_eq!(reader.join().unwrap(), Err(ChannelError::Cancelled));
        assert_eq!(writer.join().unwrap(), Err(ChannelError::Cancelled));
        assert_eq!(
            ch.read(&mut 0, &mut [0u8; 1], Some(Duration::ZERO)),
            Err(ChannelError::Cancelled)
        );
    }

    #[test]
    fn inline_channels_never_wait() {
        let (ch, mut rx) = channel(8, 6);
        ch.set_inline();
        let mut buf = [0u8; 4];
        for timeout in [None, Some(Duration::from_secs(60))] {
            assert_eq!(
                ch.read(&mut 0, &mut buf, timeout),
                Err(ChannelError::WouldBlock)
            );
        }
        assert_eq!(
            ch.read(&mut 0, &mut buf, Some(Duration::ZERO)),
            Err(ChannelError::Timeout)
        );
        // write is all or nothing within the client's credit.
        assert_eq!(ch.write(0, b"abcd"), Ok(()));
        assert_eq!(ch.write(0, b"efg"), Err(ChannelError::WouldBlock));
        assert!(
            matches!(rx.try_recv(), Ok(Message::Data { ref data, .. }) if &data[..] == b"abcd")
        );
        assert!(rx.try_recv().is_err());
        // Input for a finished call is dropped, not kept.
        ch.finish(ErrorCode::Ok, "");
        ch.on_data(0, Bytes::from_static(b"late")).unwrap();
        ch.on_eof(0);
        assert!(ch.lock().inbound.is_empty());
    }

    #[test]
    fn an_inline_scope_makes_every_channel_non_blocking() {
        let (ch, _rx) = channel(8, 0);
        {
            let _scope = InlineScope::enter();
            assert_eq!(ch.write(0, b"x"), Err(ChannelError::WouldBlock));
            assert_eq!(
                ch.read(&mut 0, &mut [0u8; 1], None),
                Err(ChannelError::WouldBlock)
            );
        }
        // Outside the scope the same read waits (here: until its timeout).
        assert_eq!(
            ch.read(&mut 0, &mut [0u8; 1], Some(Duration::from_millis(1))),
            Err(ChannelError::Timeout)
        );
    }

    /// Counts its runs; the first run wakes the channel again from inside.
    #[derive(Default)]
    struct CountingHook {
        runs: std::sync::atomic::AtomicU32,
        depth: std::sync::atomic::AtomicU32,
        deepest: std::sync::atomic::AtomicU32,
    }

    impl InputHook for CountingHook {
        fn on_input(&self, channel: &Channel) {
            let depth = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
            self.deepest.fetch_max(depth, Ordering::SeqCst);
            if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
                assert!(channel.wake(), "pending");
            }
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }

        fn end(&self, channel: &Channel, _status: i32) -> bool {
            channel.finish(ErrorCode::Ok, "");
            true
        }
    }

    #[test]
    fn a_pending_hook_runs_per_input_and_never_inside_itself() {
        let (ch, _rx) = channel(8, 8);
        ch.set_inline();
        let hook = Arc::new(CountingHook::default());
        assert_eq!(ch.set_hook(hook.clone()), None);
        assert!(!ch.lock().inline, "other threads may wait from now on");
        assert_eq!(hook.runs.load(Ordering::SeqCst), 0, "nothing queued yet");
        // A wake from inside the hook makes it run once more, after it
        // returned, not within itself.
        ch.on_data(0, Bytes::from_static(b"x")).unwrap();
        assert_eq!(hook.runs.load(Ordering::SeqCst), 2);
        assert_eq!(hook.deepest.load(Ordering::SeqCst), 1);
        ch.on_credit(4);
        ch.on_eof(0);
        assert_eq!(hook.runs.load(Ordering::SeqCst), 4);
        // Finishing drops the hook: no more runs, no more wakes.
        ch.finish(ErrorCode::Ok, "");
        ch.cancel();
        assert!(!ch.wake());
        assert_eq!(hook.runs.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn an_end_requested_while_the_inline_handler_runs_waits_for_it() {
        let (ch, _rx) = channel(8, 8);
        assert!(matches!(ch.request_end(0), EndRequest::NotPending));
        ch.set_inline();
        assert!(matches!(ch.request_end(21), EndRequest::Deferred));
        assert!(matches!(ch.request_end(0), EndRequest::Closed), "once");
        // The handler leaves the call pending: the end comes instead.
        let hook = Arc::new(CountingHook::default());
        assert_eq!(ch.set_hook(hook.clone()), Some(21));
        assert!(ch.hook().is_none());
        // A pending call's end goes through its hook.
        let (ch, _rx) = channel(8, 8);
        ch.set_inline();
        assert_eq!(ch.set_hook(hook), None);
        assert!(matches!(ch.request_end(0), EndRequest::Hook(_)));
        ch.finish(ErrorCode::Ok, "");
        assert!(matches!(ch.request_end(0), EndRequest::Closed));
    }

    #[test]
    fn read_times_out() {
        let (ch, _rx) = channel(8, 0);
        assert_eq!(
            ch.read(&mut 0, &mut [0u8; 1], Some(Duration::from_millis(10))),
            Err(ChannelError::Timeout)
        );
    }
}
