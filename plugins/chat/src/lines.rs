//! `chat send-lines TARGET` served on the connection's task: an inline
//! call left pending (ABI 1.2).
//!
//! Every time input arrives, [`SendLines::on_input`] runs on the connection's
//! task that read it: the new lines are checked (size, rate), numbered from
//! the roster and pushed to the recipients' listening sessions right there —
//! no thread hand-off between the sender's frame and the recipient's queue —
//! and their writes are queued to the store thread. The store thread, once
//! the batch is committed, writes each line's result ("accepted", in order)
//! and, after the last one, ends the call ([`Results`]). Results the
//! client's window cannot take now go to a thread of their own, which may
//! wait for credit; while they pile up no more input is read, so a client
//! that does not read its results is slowed down by its own window.
//!
//! Whatever cannot be decided without waiting — opening the store, or
//! checking the target while the database numbers messages (during a hot
//! reload) — sends the call to a call thread instead ([`crate::calls`]).

use crate::Chat;
use crate::calls::{LineSplitter, accepted, check_limits};
use crate::config::Settings;
use crate::rate::RateLimiter;
use crate::store::Store;
use crate::wire::{self, Message, Target};
use sockd_plugin::{
    Call, Channel, ChannelError, Failure, Inline, Input, PendingCall, Progress, stream,
};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Unwritten results beyond which no more input is read.
const RESULTS_BACKLOG: usize = 256 * 1024;
/// Results are written in pieces of whole lines of about this size, so that
/// a piece fits in the client's window.
const WRITE_PIECE: usize = 16 * 1024;

/// The `chat` command on the connection's task: `send-lines` is served
/// there when it can be; everything else runs on a call thread.
pub fn handle_inline(chat: &Chat, call: &Call<'_>) -> Result<Inline, Failure> {
    let args = call.args();
    let [command, to] = args.as_slice() else {
        return Ok(Inline::OnThread);
    };
    if *command != b"send-lines" {
        return Ok(Inline::OnThread);
    }
    // Opening the store may wait: the first call does it on a thread.
    let Some(store) = chat.opened_store() else {
        return Ok(Inline::OnThread);
    };
    let to =
        std::str::from_utf8(to).map_err(|_| Failure::bad_request("arguments must be UTF-8"))?;
    let target = Target::parse(to)?;
    // Checked once, before reading anything, as on the thread.
    match store.try_check_target(call.user(), &target) {
        Some(checked) => checked?,
        None => return Ok(Inline::OnThread),
    }
    let max_line = chat
        .settings
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .max_message_bytes
        + 2;
    Ok(Inline::Pending(Box::new(SendLines {
        store,
        settings: chat.settings.clone(),
        limiter: chat.limiter.clone(),
        user: call.user().to_string(),
        target,
        lines: LineSplitter::new(max_line),
        buf: vec![0; 64 * 1024],
        stopped: false,
        results: Arc::new(Results {
            ch: call.channel(),
            state: Mutex::default(),
        }),
    })))
}

/// One `send-lines` call's input side.
struct SendLines {
    store: Arc<Store>,
    settings: Arc<Mutex<Settings>>,
    limiter: Arc<RateLimiter>,
    user: String,
    target: Target,
    lines: LineSplitter,
    buf: Vec<u8>,
    /// EOF or a refusal came: no more input is taken.
    stopped: bool,
    results: Arc<Results>,
}

impl PendingCall for SendLines {
    fn on_input(&mut self, ch: Channel) -> Result<Progress, Failure> {
        if self.stopped || self.results.backlogged() {
            // Input waits (and with it the client's credit); a cancel does not.
            if ch.is_cancelled() {
                return Err(ChannelError::Cancelled.into());
            }
            return Ok(Progress::Pending);
        }
        let mut lines = Vec::new();
        let mut eof = false;
        let mut too_long = None;
        loop {
            match ch.read(&mut self.buf, Some(Duration::ZERO)) {
                Ok(Input::Data {
                    stream: stream::MAIN,
                    len,
                }) => {
                    if let Err(f) = self.lines.split(&self.buf[..len], &mut lines) {
                        too_long = Some(f);
                        break;
                    }
                }
                Ok(Input::Eof {
                    stream: stream::MAIN,
                }) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                // Everything queued is read.
                Err(ChannelError::Timeout) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if eof {
            lines.extend(self.lines.last_line());
        }
        let mut texts = Vec::with_capacity(lines.len());
        let mut refused = None;
        for line in lines {
            match String::from_utf8(line) {
                Ok(text) if text.trim_end_matches('\r').is_empty() => {}
                Ok(mut text) => {
                    text.truncate(text.trim_end_matches('\r').len());
                    match check_limits(&self.settings, &self.limiter, &self.user, text) {
                        Ok(text) => texts.push(text),
                        Err(e) => {
                            refused = Some(e);
                            break;
                        }
                    }
                }
                Err(_) => {
                    refused = Some(Failure::bad_request("the message text must be UTF-8"));
                    break;
                }
            }
        }
        let store_refusal = if texts.is_empty() {
            None
        } else {
            let results = &self.results;
            self.store
                .send_all_then(&self.user, &self.target, texts, || {
                    results.owe_one();
                    let results = results.clone();
                    move |outcome| results.committed(outcome)
                })
        };
        // In input order: a refusal by the store came before one by the
        // checks, and both before a line that was too long.
        let end = match (store_refusal.or(refused), too_long) {
            (Some(refusal), _) => Some(Some((refusal, true))),
            (None, Some(too_long)) => Some(Some((too_long, false))),
            (None, None) if eof => Some(None),
            (None, None) => None,
        };
        if let Some(end) = end {
            self.stopped = true;
            self.results.input_ended(end);
        }
        Ok(Progress::Pending)
    }
}

/// One `send-lines` call's output side: the results, written in order as
/// commits complete, and the call's end once all is said.
struct Results {
    ch: Channel,
    state: Mutex<ResultsState>,
}

#[derive(Default)]
struct ResultsState {
    /// Result lines not written yet.
    out: Vec<u8>,
    /// Messages submitted whose commit has not been reported.
    owed: usize,
    sent: u64,
    /// The input ended, with the refusal that ended it (and whether its
    /// message says how many were sent before).
    input_end: Option<Option<(Failure, bool)>>,
    /// A commit failed: the call's outcome.
    failed: Option<Failure>,
    /// A thread of its own writes `out` (the client's window was full).
    flusher: bool,
    ended: bool,
}

impl Results {
    fn lock(&self) -> MutexGuard<'_, ResultsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn backlogged(&self) -> bool {
        self.lock().out.len() >= RESULTS_BACKLOG
    }

    /// A message was accepted: its commit is owed (counted before it is
    /// queued, so its report cannot come first).
    fn owe_one(&self) {
        self.lock().owed += 1;
    }

    /// On the store thread: a message's commit completed (or failed).
    fn committed(self: &Arc<Self>, outcome: Result<Message, Failure>) {
        let mut st = self.lock();
        st.owed -= 1;
        if st.ended || st.failed.is_some() {
            return;
        }
        match outcome {
            Ok(m) => {
                st.out.extend(wire::json_line(&accepted(&m)));
                st.sent += 1;
            }
            Err(mut e) => {
                e.message = format!("{} ({} message(s) sent before)", e.message, st.sent);
                st.failed = Some(e);
            }
        }
        self.progress(st);
    }

    fn input_ended(self: &Arc<Self>, end: Option<(Failure, bool)>) {
        let mut st = self.lock();
        st.input_end = Some(end);
        self.progress(st);
    }

    /// Writes what the client can take now and ends the call once every
    /// result is written.
    fn progress(self: &Arc<Self>, mut st: MutexGuard<'_, ResultsState>) {
        if st.ended {
            return;
        }
        // While commits are owed, results are written a piece at a time,
        // not one frame per message.
        let worth_writing = st.owed == 0 || st.out.len() >= WRITE_PIECE || st.failed.is_some();
        if !st.flusher && !st.out.is_empty() && worth_writing {
            match write_now(self.ch, &mut st.out) {
                Ok(()) => {}
                Err(ChannelError::WouldBlock) => {
                    st.flusher = true;
                    drop(st);
                    self.flush_on_a_thread();
                    return;
                }
                // The client went away: the host ends the call.
                Err(_) => {
                    st.ended = true;
                    return;
                }
            }
        }
        if st.flusher || !st.out.is_empty() {
            return;
        }
        let outcome = if let Some(failure) = st.failed.take() {
            Err(failure)
        } else if st.owed > 0 {
            return;
        } else {
            match st.input_end.take() {
                None => return,
                Some(None) => Ok(()),
                Some(Some((mut refusal, counted))) => {
                    if counted {
                        refusal.message =
                            format!("{} ({} message(s) sent before)", refusal.message, st.sent);
                    }
                    Err(refusal)
                }
            }
        };
        st.ended = true;
        drop(st);
        self.ch.finish(outcome);
    }

    /// Writes the results on a thread that may wait for the client's
    /// window, then lets `on_input` read again.
    fn flush_on_a_thread(self: &Arc<Self>) {
        let results = self.clone();
        let spawned = std::thread::Builder::new()
            .name("chat-results".into())
            .spawn(move || {
                loop {
                    let out = {
                        let mut st = results.lock();
                        if st.out.is_empty() {
                            st.flusher = false;
                            results.progress(st);
                            break;
                        }
                        std::mem::take(&mut st.out)
                    };
                    // Off the connection's task: this waits for credit.
                    if results.ch.write(stream::MAIN, &out).is_err() {
                        results.lock().ended = true;
                        return;
                    }
                }
                results.ch.wake();
            });
        if let Err(e) = spawned {
            self.lock().ended = true;
            self.ch.finish(Err(Failure::internal(format!(
                "cannot start a thread for the results: {e}"
            ))));
        }
    }
}

/// Writes `out` without waiting, in pieces of whole lines; keeps what the
/// client cannot take now.
fn write_now(ch: Channel, out: &mut Vec<u8>) -> Result<(), ChannelError> {
    let mut start = 0;
    while start < out.len() {
        let rest = &out[start..];
        let end = if rest.len() <= WRITE_PIECE {
            rest.len()
        } else {
            rest[..WRITE_PIECE]
                .iter()
                .rposition(|&b| b == b'\n')
                .or_else(|| rest.iter().position(|&b| b == b'\n'))
                .map_or(rest.len(), |at| at + 1)
        };
        if let Err(e) = ch.try_write(stream::MAIN, &rest[..end]) {
            out.drain(..start);
            return Err(e);
        }
        start += end;
    }
    out.clear();
    Ok(())
}
