//! The queue of frames waiting for one connection's writer, and the bound
//! on how many bytes it may hold.
//!
//! Flow control alone does not bound the daemon's memory: the client
//! chooses the window (up to 4 GiB per channel, more with CREDIT), and a
//! client that grants a large window, or sends PINGs, and never reads its
//! socket would have the daemon queue everything its plugins produce.
//! [`Outbound::send`] counts what is queued; past [`LIMIT`] plugin writes
//! wait ([`Backlog::wait_for_room_blocking`]) and the connection stops
//! reading the client's frames ([`Backlog::wait_for_room`]) until the writer
//! has handed enough to TLS. A client that does not read therefore stalls
//! only itself, as a full TCP window would.

use sockd_proto::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{Notify, mpsc};

/// Bytes that may wait for one connection's writer before producers wait.
pub const LIMIT: u64 = 4 << 20;

/// Counted per message on top of its payload, so that floods of small
/// frames are bounded too.
const OVERHEAD: u64 = 32;

/// What a connection's writer has not yet handed to TLS.
#[derive(Default)]
pub struct Backlog {
    queued: AtomicU64,
    /// Held only to wait on or signal `drained`; never taken while a
    /// channel's lock is held (waiters take a channel's lock under it), so
    /// [`Outbound::send`], which callers use under a channel's lock, does
    /// not take it.
    gate: Mutex<()>,
    drained: Condvar,
    room: Notify,
}

impl Backlog {
    pub fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= LIMIT
    }

    fn add(&self, bytes: u64) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Takes back what [`Backlog::add`] counted for a message nobody will
    /// write. Wakes no one: callers may hold a channel's lock, and the
    /// waiters are woken when their channels are cancelled.
    fn forget(&self, bytes: u64) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The writer handed a message of `bytes` (its [`weight`]) to TLS.
    pub fn written(&self, bytes: u64) {
        let before = self.queued.fetch_sub(bytes, Ordering::AcqRel);
        if before >= LIMIT && before - bytes < LIMIT {
            self.wake();
        }
    }

    /// Wakes every waiter to look again (room, or their channel ended).
    pub fn wake(&self) {
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        self.drained.notify_all();
        self.room.notify_waiters();
    }

    /// Blocks a plugin thread until there is room or `stop()` is true.
    pub fn wait_for_room_blocking(&self, stop: impl Fn() -> bool) {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        while self.is_full() && !stop() {
            gate = self.drained.wait(gate).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits (async) until there is room.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }
}

/// What a message counts for in the backlog.
pub fn weight(message: &Message) -> u64 {
    let payload = match message {
        Message::Data { data, .. } => data.len(),
        Message::Pong { payload } | Message::Ping { payload } => payload.len(),
        Message::Close { message, .. }
        | Message::Error { message, .. }
        | Message::GoAway { message, .. } => message.len(),
        _ => 0,
    };
    payload as u64 + OVERHEAD
}

/// The sending side of a connection's writer queue: never blocks, counts
/// what it queues.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Message>,
    backlog: Arc<Backlog>,
}

/// A new queue; the receiver belongs to the writer, which reports what it
/// wrote with [`Backlog::written`].
pub fn channel() -> (Outbound, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    (Outbound { tx, backlog }, rx)
}

impl Outbound {
    pub fn send(&self, message: Message) -> Result<(), mpsc::error::SendError<Message>> {
        let bytes = weight(&message);
        self.backlog.add(bytes);
        self.tx.send(message).inspect_err(|_| {
            // Nobody will write it: the connection is over.
            self.backlog.forget(bytes);
        })
    }

    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn data(len: usize) -> Message {
        Message::Data {
            channel: 1,
            stream: 0,
            data: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn full_past_the_limit_and_room_again_once_written() {
        let (out, mut rx) = channel();
        out.send(data(LIMIT as usize - 1024)).unwrap();
        assert!(!out.backlog().is_full());
        out.send(data(2048)).unwrap();
        assert!(out.backlog().is_full());
        let waiter = {
            let backlog = out.backlog().clone();
            std::thread::spawn(move || backlog.wait_for_room_blocking(|| false))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "waits while full");
        let first = rx.try_recv().unwrap();
        out.backlog().written(weight(&first));
        waiter.join().unwrap();
        assert!(!out.backlog().is_full());
    }

    #[test]
    fn a_stopped_waiter_returns_while_full() {
        let (out, _rx) = channel();
        out.send(data(LIMIT as usize)).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let backlog = out.backlog().clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                backlog.wait_for_room_blocking(|| stop.load(Ordering::Acquire))
            })
        };
        stop.store(true, Ordering::Release);
        out.backlog().wake();
        waiter.join().unwrap();
        assert!(out.backlog().is_full());
    }

    #[test]
    fn a_message_nobody_will_write_is_not_counted() {
        let (out, rx) = channel();
        drop(rx);
        assert!(out.send(data(LIMIT as usize)).is_err());
        assert!(!out.backlog().is_full());
    }
}
