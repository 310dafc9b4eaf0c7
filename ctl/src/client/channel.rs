//! Channels: one operation (OPEN ... CLOSE) on a connection, with its
//! events and its flow control.
//!
//! Sending waits for credit the server granted and cuts data into chunks
//! that fit the server's frame size. Receiving returns credit to the server
//! automatically once the caller has taken half a window of data out of
//! [`ChannelHandle::recv`].

use super::connection::Conn;
use super::error::ClientError;
use bytes::Bytes;
use sockd_proto::{ErrorCode, Message};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;

/// What happens on a channel, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bytes on a stream (`sockd_proto::message::stream::{MAIN, DIAG, CONTROL}`).
    Data { stream: u8, bytes: Bytes },
    /// The server will send no more on this stream.
    Eof { stream: u8 },
    /// The operation ended; always the last event. `code` is
    /// [`ErrorCode::Ok`] on success and `value` the command's result (such
    /// as an exit status). If the connection is lost first, this carries the
    /// connection's error (e.g. [`ErrorCode::Unavailable`]) and `value` 0.
    Closed {
        code: ErrorCode,
        value: i64,
        message: String,
    },
}

/// Per-channel state shared by the connection's reader task and the handle.
pub(crate) struct ChannelShared {
    id: u32,
    state: Mutex<ChannelState>,
    credit_changed: Notify,
    /// An event was queued for the handle (its only reader). A plain queue
    /// and a `Notify` rather than a channel: a call is often a handful of
    /// events, and a new channel's allocations would cost more than them.
    event_queued: Notify,
}

struct ChannelState {
    /// Bytes we may still send.
    send_credit: u64,
    /// Bytes the server may still send us.
    recv_credit: u64,
    /// CLOSE received or connection lost.
    closed: bool,
    /// We sent a cancel (or dropped the handle): send nothing more.
    cancelled: bool,
    /// The handle is gone: discard incoming data.
    abandoned: bool,
    /// Events not yet taken by the handle, oldest first.
    events: VecDeque<Event>,
}

fn lock(m: &Mutex<ChannelState>) -> MutexGuard<'_, ChannelState> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChannelShared {
    pub(crate) fn new(id: u32, send_window: u32, recv_window: u32) -> Arc<Self> {
        let state = ChannelState {
            send_credit: send_window.into(),
            recv_credit: recv_window.into(),
            closed: false,
            cancelled: false,
            abandoned: false,
            events: VecDeque::new(),
        };
        Arc::new(Self {
            id,
            state: Mutex::new(state),
            credit_changed: Notify::new(),
            event_queued: Notify::new(),
        })
    }

    /// Queues `event` for the handle and wakes it.
    fn queue(&self, mut st: MutexGuard<'_, ChannelState>, event: Event) {
        st.events.push_back(event);
        drop(st);
        self.event_queued.notify_one();
    }

    /// The oldest queued event, waiting for one if there is none.
    async fn next_event(&self) -> Event {
        loop {
            if let Some(event) = lock(&self.state).events.pop_front() {
                return event;
            }
            // A permit left by `queue` since the check makes this return
            // at once: no event is missed.
            self.event_queued.notified().await;
        }
    }

    /// DATA from the server. `Err` is a flow-control violation.
    pub(crate) fn on_data(&self, stream: u8, bytes: Bytes) -> Result<(), String> {
        let mut st = lock(&self.state);
        let len = bytes.len() as u64;
        if len > st.recv_credit {
            return Err(format!(
                "sockd sent {len} bytes on channel {} with only {} bytes of credit",
                self.id, st.recv_credit
            ));
        }
        st.recv_credit -= len;
        if !st.abandoned {
            self.queue(st, Event::Data { stream, bytes });
        }
        Ok(())
    }

    pub(crate) fn on_eof(&self, stream: u8) {
        self.queue(lock(&self.state), Event::Eof { stream });
    }

    pub(crate) fn on_credit(&self, bytes: u32) {
        let mut st = lock(&self.state);
        st.send_credit = st.send_credit.saturating_add(bytes.into());
        drop(st);
        self.credit_changed.notify_waiters();
    }

    /// CLOSE from the server, or the connection's end.
    pub(crate) fn on_close(&self, code: ErrorCode, value: i64, message: String) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        st.closed = true;
        self.queue(
            st,
            Event::Closed {
                code,
                value,
                message,
            },
        );
        self.credit_changed.notify_waiters();
    }

    /// Waits for send credit; takes at most `want` bytes of it.
    async fn take_credit(&self, conn: &Conn, want: usize) -> Result<usize, ClientError> {
        loop {
            let notified = self.credit_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if st.closed || st.cancelled {
                    return Err(self.ended_error(conn, &st));
                }
                if st.send_credit > 0 {
                    let n = st.send_credit.min(want as u64);
                    st.send_credit -= n;
                    return Ok(n as usize);
                }
            }
            notified.await;
        }
    }

    fn ended_error(&self, conn: &Conn, st: &ChannelState) -> ClientError {
        if let Some(e) = conn.ended() {
            e
        } else if st.cancelled {
            ClientError::failure(format!("channel {} was cancelled", self.id))
        } else {
            ClientError::failure(format!(
                "the operation on channel {} has already ended",
                self.id
            ))
        }
    }

    /// Queues a message unless the channel is closed or cancelled.
    fn send_if_open(&self, conn: &Conn, msg: Message) -> Result<(), ClientError> {
        let st = lock(&self.state);
        if st.closed || st.cancelled {
            return Err(self.ended_error(conn, &st));
        }
        // Queued while holding the lock, so nothing is sent after a CLOSE.
        conn.send(msg)
    }

    /// Gives the server `bytes` more credit.
    fn grant(&self, conn: &Conn, bytes: u32) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        // Count it before the server can use it.
        st.recv_credit += u64::from(bytes);
        let _ = conn.send(Message::Credit {
            channel: self.id,
            bytes,
        });
    }

    /// Marks the channel cancelled; true if a CLOSE must be sent.
    fn mark_cancelled(&self, abandon: bool) -> bool {
        let mut st = lock(&self.state);
        st.abandoned |= abandon;
        if st.closed || st.cancelled {
            return false;
        }
        st.cancelled = true;
        true
    }
}

/// An open channel. Dropping it before the operation ended cancels it.
pub struct ChannelHandle {
    sender: ChannelSender,
    /// Bytes taken out of `recv` since credit was last returned.
    consumed: u32,
    finished: bool,
}

/// The sending half of a channel; clone it to send from another task while
/// the [`ChannelHandle`] receives.
#[derive(Clone)]
pub struct ChannelSender {
    shared: Arc<ChannelShared>,
    conn: Arc<Conn>,
}

impl ChannelHandle {
    pub(crate) fn new(shared: Arc<ChannelShared>, conn: Arc<Conn>) -> Self {
        Self {
            sender: ChannelSender { shared, conn },
            consumed: 0,
            finished: false,
        }
    }

    /// The channel id on the wire.
    pub fn id(&self) -> u32 {
        self.sender.shared.id
    }

    /// The next event; `None` after [`Event::Closed`] has been returned.
    /// Taking data out returns credit to the server, so not calling this
    /// eventually pauses the server's sending.
    pub async fn recv(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let event = self.sender.shared.next_event().await;
        match &event {
            Event::Data { bytes, .. } => {
                self.consumed = self.consumed.saturating_add(bytes.len() as u32);
                let threshold = (self.sender.conn.recv_window / 2).max(1);
                if self.consumed >= threshold {
                    self.sender.shared.grant(&self.sender.conn, self.consumed);
                    self.consumed = 0;
                }
            }
            Event::Closed { .. } => self.finished = true,
            Event::Eof { .. } => {}
        }
        Some(event)
    }

    /// Sends `data` on `stream`; see [`ChannelSender::send`].
    pub async fn send(&self, stream: u8, data: impl Into<Bytes>) -> Result<(), ClientError> {
        self.sender.send(stream, data).await
    }

    /// Tells the server nothing more comes on `stream`.
    pub async fn send_eof(&self, stream: u8) -> Result<(), ClientError> {
        self.sender.send_eof(stream).await
    }

    /// Asks the server to stop the operation; its CLOSE still follows.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.sender.cancel().await
    }

    /// A clonable sender for this channel.
    pub fn sender(&self) -> ChannelSender {
        self.sender.clone()
    }
}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        let shared = &self.sender.shared;
        if shared.mark_cancelled(true) {
            let _ = self.sender.conn.send(cancel_message(shared.id));
        }
    }
}

fn cancel_message(channel: u32) -> Message {
    Message::Close {
        channel,
        code: ErrorCode::Cancelled,
        value: 0,
        message: String::new(),
    }
}

impl ChannelSender {
    /// The channel id on the wire.
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Sends `data` on `stream`, waiting for credit as needed and cutting it
    /// into frames the server accepts. Fails once the operation has ended,
    /// been cancelled, or the connection is lost.
    pub async fn send(&self, stream: u8, data: impl Into<Bytes>) -> Result<(), ClientError> {
        let mut data = data.into();
        while !data.is_empty() {
            let n = self
                .shared
                .take_credit(&self.conn, data.len().min(self.conn.max_chunk))
                .await?;
            let chunk = data.split_to(n);
            self.shared.send_if_open(
                &self.conn,
                Message::Data {
                    channel: self.shared.id,
                    stream,
                    data: chunk,
                },
            )?;
        }
        Ok(())
    }

    /// Tells the server nothing more comes on `stream`.
    pub async fn send_eof(&self, stream: u8) -> Result<(), ClientError> {
        self.shared.send_if_open(
            &self.conn,
            Message::Eof {
                channel: self.shared.id,
                stream,
            },
        )
    }

    /// Asks the server to stop the operation (CLOSE with `cancelled`). The
    /// server's CLOSE still arrives through [`ChannelHandle::recv`]. Does
    /// nothing if the operation already ended.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        if self.shared.mark_cancelled(false) {
            self.conn.send(cancel_message(self.shared.id))?;
        }
        Ok(())
    }
}
