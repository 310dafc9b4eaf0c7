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

use bytes::Bytes;
use sockd_proto::{ErrorCode, Message};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Owner details a plugin host needs for routing and reporting.
#[derive(Debug, Clone)]
pub struct Owner {
    pub session_id: u64,
    pub user: String,
    pub plugin: String,
}

pub struct Channel {
    /// Channel number on the wire.
    pub wire_id: u32,
    /// Process-wide handle given to plugins.
    pub handle: u64,
    pub owner: Owner,
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
    /// granted us in its HELLO; `max_chunk`: largest DATA payload we may send.
    pub fn new(
        wire_id: u32,
        owner: Owner,
        out: Outbound,
        window: u32,
        send_credit: u32,
        max_chunk: usize,
    ) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Channel {
            wire_id,
            handle: NEXT.fetch_add(1, Ordering::Relaxed),
            owner,
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
        self.lock().inline = true;
    }

    /// Whether operations on this channel, from this thread, must not wait.
    fn nonblocking(s: &State) -> bool {
        s.inline || in_inline_call()
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
            s.inbound.push_back(Inbound::Data { stream, data });
            self.wake_waiters(&s);
        }
        Ok(())
    }

    pub fn on_eof(&self, stream: u8) {
        let mut s = self.lock();
        if !s.finished {
            s.inbound.push_back(Inbound::Eof { stream });
            self.wake_waiters(&s);
        }
    }

    pub fn on_credit(&self, bytes: u32) {
        let mut s = self.lock();
        s.send_credit = s.send_credit.saturating_add(bytes.into());
        self.wake_waiters(&s);
    }

    /// The client cancelled, or the connection is gone.
    pub fn cancel(&self) {
        let mut s = self.lock();
        s.cancelled = true;
        s.inbound.clear();
        self.wake_waiters(&s);
        let room_waiters = s.room_waiters > 0;
        drop(s);
        if room_waiters {
            self.out.backlog().wake();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
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
                None => {}
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
            let _ = self.out.send(Message::Credit {
                channel: self.wire_id,
                bytes: grant as u32,
            });
        }
    }

    fn send_chunk(&self, stream: u8, data: &[u8]) {
        let _ = self.out.send(Message::Data {
            channel: self.wire_id,
            stream,
            data: Bytes::copy_from_slice(data),
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
            self.send_chunk(stream, &rest[..n]);
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
            self.send_chunk(stream, chunk);
        }
        Ok(())
    }

    pub fn write_eof(&self, stream: u8) -> Result<(), ChannelError> {
        let s = self.lock();
        if s.finished {
            return Err(ChannelError::Closed);
        }
        if s.cancelled {
            return Err(ChannelError::Cancelled);
        }
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
        let subscribed = s.subscribed;
        let text = if s.result_message.is_empty() {
            message.to_string()
        } else {
            std::mem::take(&mut s.result_message)
        };
        let _ = self.out.send(Message::Close {
            channel: self.wire_id,
            code,
            value: s.result_value,
            message: text,
        });
        self.wake_waiters(&s);
        let room_waiters = s.room_waiters > 0;
        drop(s);
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

/// Subscribed channels by plugin, then user.
type Subscribers = HashMap<String, HashMap<String, Vec<Arc<Channel>>>>;

/// All live channels by handle, for the plugin ABI, and the subscribed
/// ones by plugin and user, so that a push looks at its recipient's
/// channels only, however many other sessions listen.
pub struct ChannelTable {
    shards: [RwLock<HashMap<u64, Arc<Channel>>>; SHARDS],
    subscribers: RwLock<Subscribers>,
}

impl ChannelTable {
    pub fn global() -> &'static ChannelTable {
        static TABLE: OnceLock<ChannelTable> = OnceLock::new();
        TABLE.get_or_init(|| ChannelTable {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            subscribers: RwLock::default(),
        })
    }

    fn shard(&self, handle: u64) -> &RwLock<HashMap<u64, Arc<Channel>>> {
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
        (Channel::new(1, owner, tx, window, credit, 4), rx)
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

    #[test]
    fn read_times_out() {
        let (ch, _rx) = channel(8, 0);
        assert_eq!(
            ch.read(&mut 0, &mut [0u8; 1], Some(Duration::from_millis(10))),
            Err(ChannelError::Timeout)
        );
    }
}
