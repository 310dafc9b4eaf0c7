//! The queue of frames waiting for one connection's writer, the bound on
//! how many bytes it may hold, and the writer ([`write_loop`]) that drains
//! it into TLS.
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

use bytes::{Buf, BytesMut};
use sockd_proto::frame::{BATCH_LIMIT, DIRECT_DATA};
use sockd_proto::{FrameCodec, Message};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Encoder;

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
        Message::Reply { data, message, .. } => data.len() + message.len(),
        Message::Close { message, .. }
        | Message::Error { message, .. }
        | Message::GoAway { message, .. } => message.len(),
        _ => 0,
    };
    payload as u64 + OVERHEAD
}

/// The sending side of a connection's writer queue: never blocks, counts
/// what it queues. Every channel holds a clone: one reference count to
/// take per call (the queue ends when the last clone is dropped).
#[derive(Clone)]
pub struct Outbound(Arc<OutboundInner>);

struct OutboundInner {
    tx: mpsc::UnboundedSender<Message>,
    backlog: Arc<Backlog>,
}

/// A new queue; the receiver belongs to the writer, which reports what it
/// wrote with [`Backlog::written`].
pub fn channel() -> (Outbound, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    (Outbound(Arc::new(OutboundInner { tx, backlog })), rx)
}

impl Outbound {
    pub fn send(&self, message: Message) -> Result<(), mpsc::error::SendError<Message>> {
        let bytes = weight(&message);
        self.0.backlog.add(bytes);
        self.0.tx.send(message).inspect_err(|_| {
            // Nobody will write it: the connection is over.
            self.0.backlog.forget(bytes);
        })
    }

    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.0.backlog
    }
}

/// The connection's writer: sends queued messages in order until the queue
/// closes, batching what is queued at once into one flush. Bulk DATA goes
/// to TLS without being copied into an output buffer first. Reports each
/// message to the backlog once it is handed on, and each channel's end
/// (CLOSE or REPLY) to `on_close`, with its channel number.
///
/// At the end it closes the TLS stream (close_notify), unless `peer_closed`
/// says the client ended the connection first: it reads nothing more, and
/// the alert would only cost a write that the client's kernel answers
/// with a reset.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut codec: FrameCodec,
    mut pending: BytesMut,
    mut rx: mpsc::UnboundedReceiver<Message>,
    backlog: Arc<Backlog>,
    mut on_close: impl FnMut(u32),
    peer_closed: Arc<AtomicBool>,
) {
    let result: std::io::Result<()> = async {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            // Reported to the backlog once per batch: one atomic update
            // shared with the queueing side instead of one per message.
            let mut handed_on = 0;
            while let Some(m) = next {
                let closed_id = match &m {
                    Message::Close { channel, .. } | Message::Reply { channel, .. } => {
                        Some(*channel)
                    }
                    _ => None,
                };
                let weight = weight(&m);
                match m {
                    Message::Data {
                        channel,
                        stream,
                        data,
                    } if data.len() >= DIRECT_DATA => {
                        let header = codec
                            .data_header(channel, stream, data.len())
                            .map_err(std::io::Error::other)?;
                        pending.extend_from_slice(&header);
                        let mut out = (&mut pending).chain(data);
                        io.write_all_buf(&mut out).await?;
                        backlog.written(std::mem::take(&mut handed_on) + weight);
                    }
                    m => {
                        codec
                            .encode(m, &mut pending)
                            .map_err(std::io::Error::other)?;
                        handed_on += weight;
                        if pending.len() >= BATCH_LIMIT {
                            io.write_all_buf(&mut pending).await?;
                            backlog.written(std::mem::take(&mut handed_on));
                        }
                    }
                }
                if let Some(id) = closed_id {
                    on_close(id);
                }
                next = rx.try_recv().ok();
                if next.is_none() {
                    // Give a plugin thread that is about to send more (DATA
                    // then CLOSE) a moment, so both leave in one write.
                    tokio::task::yield_now().await;
                    next = rx.try_recv().ok();
                }
            }
            backlog.written(handed_on);
            io.write_all_buf(&mut pending).await?;
            io.flush().await?;
        }
        if peer_closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        io.shutdown().await
    }
    .await;
    if let Err(e) = result {
        tracing::debug!("connection writer stopped: {e}");
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

    /// Big DATA (written from its own buffer) and small frames (batched)
    /// arrive as the same frames, in order; every message is reported to
    /// the backlog and every CLOSE to the reader.
    #[tokio::test]
    async fn the_writer_sends_every_message_in_order() {
        use futures_util::StreamExt;
        use sockd_proto::frame::DEFAULT_MAX_FRAME;
        use sockd_proto::{ErrorCode, FrameCodec};
        use tokio_util::codec::FramedRead;

        let (out, rx) = channel();
        let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let max = FrameCodec::max_data_chunk(DEFAULT_MAX_FRAME);
        let sent = vec![
            data(10),
            data(max),
            Message::Credit {
                channel: 1,
                bytes: 5,
            },
            data(DIRECT_DATA),
            data(DIRECT_DATA - 1),
            Message::Close {
                channel: 1,
                code: ErrorCode::Ok,
                value: 0,
                message: "done".into(),
            },
        ];
        for m in &sent {
            out.send(m.clone()).unwrap();
        }
        let backlog = out.backlog().clone();
        drop(out);
        let writer = tokio::spawn(write_loop(
            server,
            codec.clone(),
            BytesMut::new(),
            rx,
            backlog.clone(),
            move |id| {
                let _ = closed_tx.send(id);
            },
            Arc::new(AtomicBool::new(false)),
        ));
        let frames: Vec<_> = FramedRead::new(client, codec)
            .map(|f| Message::decode(f.unwrap()).unwrap())
            .collect()
            .await;
        writer.await.unwrap();
        assert_eq!(frames, sent);
        assert_eq!(backlog.queued.load(Ordering::Acquire), 0);
        assert_eq!(closed_rx.recv().await, Some(1));
    }

    #[test]
    fn a_message_nobody_will_write_is_not_counted() {
        let (out, rx) = channel();
        drop(rx);
        assert!(out.send(data(LIMIT as usize)).is_err());
        assert!(!out.backlog().is_full());
    }
}
