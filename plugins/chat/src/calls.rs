//! The `chat` command: one subcommand per call (`send`, `who`, `history`,
//! ...), and `listen`, the long-lived channel of a chat client that
//! receives deliveries and carries the same operations as JSON requests.
//!
//! Every operation is a job of the store thread (see [`Store`]); a call
//! thread submits all the requests it has read before waiting for the
//! answers, so a client that pipelines requests gets them committed in a
//! few large transactions instead of one fsync each. Sends, joins and
//! leaves go through [`Store::send`] and its siblings, which push a message
//! to listening recipients as soon as it is accepted.

use crate::Chat;
use crate::config::Settings;
use crate::rate::RateLimiter;
use crate::store::{InboxState, Pending, Store};
use crate::wire::{self, Message, Request, Target};
use serde_json::{Value, json};
use sockd_plugin::{Call, Channel, ChannelError, Code, Failure, Input, stream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

const USAGE: &str = "usage: chat listen [--no-live] | send TARGET [TEXT] | send-lines TARGET | who [#ROOM] \
                     | join #ROOM | leave #ROOM | rooms | history TARGET [LIMIT [BEFORE_ID]]";
/// Deliveries per replay query. Each query waits for a batch of the store
/// thread (and its commit), so a listener that fell behind catches up in
/// large steps.
const REPLAY_CHUNK: u32 = 4096;
/// Default and largest number of messages `history` returns.
const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 10_000;
/// Input gathered before the requests read so far are submitted.
const GATHER_BYTES: usize = 256 * 1024;
/// Results a `send-lines` call may owe at once (its reading waits beyond).
const IN_FLIGHT: usize = 2 * 1024;
/// How often an idle listener checks [`Store::lost_epoch`].
const LOST_CHECK: Duration = Duration::from_secs(10);

pub fn handle(chat: &Chat, call: &Call<'_>) -> Result<(), Failure> {
    let args = call.str_args()?;
    let arg = |i: usize| args.get(i).copied();
    match (arg(0), args.len()) {
        (Some("listen"), 1) => listen(chat, call, true),
        (Some("listen"), 2) if arg(1) == Some("--no-live") => listen(chat, call, false),
        (Some("send"), 2) => {
            let text = read_text(call.channel(), chat.settings().max_message_bytes)?;
            send_one(chat, call, arg(1).unwrap_or_default(), text)
        }
        (Some("send"), 3) => send_one(
            chat,
            call,
            arg(1).unwrap_or_default(),
            arg(2).unwrap_or_default().to_string(),
        ),
        (Some("send-lines"), 2) => send_lines(chat, call, arg(1).unwrap_or_default()),
        (Some("who"), 1 | 2) => {
            let store = chat.store(call)?;
            answer(call, who(chat, &store, call.user(), arg(1))?)
        }
        (Some("join"), 2) => {
            let store = chat.store(call)?;
            answer(
                call,
                join(&store, call.user(), arg(1).unwrap_or_default())?.wait()?,
            )
        }
        (Some("leave"), 2) => {
            let store = chat.store(call)?;
            answer(
                call,
                leave(&store, call.user(), arg(1).unwrap_or_default())?.wait()?,
            )
        }
        (Some("rooms"), 1) => {
            let store = chat.store(call)?;
            answer(call, rooms(&store, call.user()).wait()?)
        }
        (Some("history"), 2..=4) => {
            let store = chat.store(call)?;
            let number = |i: usize, what: &str| -> Result<Option<i64>, Failure> {
                arg(i)
                    .map(|a| {
                        a.parse::<i64>().map_err(|_| {
                            Failure::bad_request(format!("{what} must be a number, not {a:?}"))
                        })
                    })
                    .transpose()
            };
            let limit = number(2, "LIMIT")?;
            let before = number(3, "BEFORE_ID")?;
            let messages = history(
                &store,
                call.user(),
                arg(1).unwrap_or_default(),
                limit,
                before,
            )?
            .wait()?;
            let ch = call.channel();
            let mut out = Vec::new();
            for m in messages {
                out.extend(wire::json_line(&json!(m)));
            }
            ch.write(stream::MAIN, &out)?;
            Ok(())
        }
        _ => Err(Failure::bad_request(USAGE)),
    }
}

/// Writes a one-shot result as one JSON line on stream 0.
fn answer(call: &Call<'_>, value: Value) -> Result<(), Failure> {
    call.channel()
        .write(stream::MAIN, &wire::json_line(&value))?;
    Ok(())
}

/// Reads stream 0 to EOF as one message text.
fn read_text(ch: Channel, max: usize) -> Result<String, Failure> {
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match ch.read(&mut buf, None)? {
            Input::Data {
                stream: stream::MAIN,
                len,
            } => {
                text.extend_from_slice(&buf[..len]);
                if text.len() > max + 2 {
                    return Err(too_large(text.len(), max));
                }
            }
            Input::Data { .. } => {}
            Input::Eof {
                stream: stream::MAIN,
            } => break,
            Input::Eof { .. } => {}
        }
    }
    // `echo hi | sockctl chat send bob -` means "hi".
    if text.ends_with(b"\n") {
        text.pop();
        if text.ends_with(b"\r") {
            text.pop();
        }
    }
    String::from_utf8(text).map_err(|_| Failure::bad_request("the message text must be UTF-8"))
}

pub(crate) fn too_large(len: usize, max: usize) -> Failure {
    Failure::new(
        Code::TooLarge,
        format!("message too large: {len} bytes; the limit is {max} (max_message_bytes)"),
    )
}

/// Checks a message against the size and rate limits and queues it.
fn submit_send(
    chat: &Chat,
    store: &Store,
    from: &str,
    to: &str,
    text: String,
) -> Result<Pending<Message>, Failure> {
    let target = Target::parse(to)?;
    let text = check_message(chat, from, text)?;
    store.send(from, target, text)
}

/// Checks a message text against the size and rate limits.
fn check_message(chat: &Chat, from: &str, text: String) -> Result<String, Failure> {
    check_limits(&chat.settings, &chat.limiter, from, text)
}

/// [`check_message`] with the parts of [`Chat`] it needs.
pub(crate) fn check_limits(
    settings: &Mutex<Settings>,
    limiter: &RateLimiter,
    from: &str,
    text: String,
) -> Result<String, Failure> {
    // Only the limits: a full copy of the settings allocates.
    let (max_message_bytes, rate_per_sec, burst) = {
        let s = settings.lock().unwrap_or_else(PoisonError::into_inner);
        (s.max_message_bytes, s.rate_per_sec, s.burst)
    };
    if text.is_empty() {
        return Err(Failure::bad_request("empty message"));
    }
    if text.len() > max_message_bytes {
        return Err(too_large(text.len(), max_message_bytes));
    }
    if !limiter.allow(from, rate_per_sec, burst) {
        return Err(Failure::new(
            Code::RateLimited,
            format!(
                "rate limited: at most {rate_per_sec} messages per second (burst {burst}); slow down"
            ),
        ));
    }
    Ok(text)
}

pub(crate) fn accepted(m: &Message) -> Value {
    json!({ "id": m.id, "ts": m.ts, "to": m.to })
}

fn send_one(chat: &Chat, call: &Call<'_>, to: &str, text: String) -> Result<(), Failure> {
    let store = chat.store(call)?;
    let message = submit_send(chat, &store, call.user(), to, text)?.wait()?;
    answer(call, accepted(&message))
}

/// `send-lines TARGET`: every line of stream 0 is a message; one result
/// line per message on stream 0. Stops at the first refused message.
///
/// Lines are read and submitted (and so pushed to listening recipients)
/// while earlier ones are still being committed: a second thread waits
/// for the commits and writes the results, in order.
fn send_lines(chat: &Chat, call: &Call<'_>, to: &str) -> Result<(), Failure> {
    let store = chat.store(call)?;
    let ch = call.channel();
    let limit = chat.settings().max_message_bytes;
    let user = call.user();
    // Check the target once, before reading anything.
    let target = Target::parse(to)?;
    {
        let (user, target) = (user.to_string(), target.clone());
        store.run(move |t| t.check_target(&user, &target))?;
    }
    let mut input = LineReader::new(ch, stream::MAIN, limit + 2);
    let (owed, owed_rx) = mpsc::sync_channel::<Result<Pending<Message>, Failure>>(IN_FLIGHT);
    let refused = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let confirmer = scope.spawn(|| confirm(ch, owed_rx, &refused));
        let read = (|| -> Result<(), Failure> {
            loop {
                let (lines, eof) = input.next_lines()?;
                if refused.load(Ordering::Acquire) {
                    return Ok(());
                }
                let mut texts = Vec::with_capacity(lines.len());
                let mut refusal = None;
                for line in lines {
                    match String::from_utf8(line) {
                        Ok(text) if text.trim_end_matches('\r').is_empty() => {}
                        Ok(mut text) => {
                            text.truncate(text.trim_end_matches('\r').len());
                            match check_message(chat, user, text) {
                                Ok(text) => texts.push(text),
                                Err(e) => {
                                    refusal = Some(e);
                                    break;
                                }
                            }
                        }
                        Err(_) => {
                            refusal = Some(Failure::bad_request("the message text must be UTF-8"));
                            break;
                        }
                    }
                }
                // All that was read at once is pushed in as few pushes as
                // possible.
                let (sent, store_refusal) = store.send_all(user, &target, texts);
                for pending in sent {
                    if owed.send(Ok(pending)).is_err() {
                        return Ok(());
                    }
                }
                if let Some(e) = store_refusal.or(refusal) {
                    let _ = owed.send(Err(e));
                    return Ok(());
                }
                if eof {
                    return Ok(());
                }
            }
        })();
        drop(owed);
        let confirmed = confirmer
            .join()
            .unwrap_or_else(|_| Err(Failure::internal("the send-lines results thread failed")));
        // A refusal came first in the input; a read error after it.
        confirmed.and(read)
    })
}

/// Writes `send-lines` results in order as their commits complete; at the
/// first refusal sets `refused` and returns it, saying how many were sent.
fn confirm(
    ch: Channel,
    owed: mpsc::Receiver<Result<Pending<Message>, Failure>>,
    refused: &AtomicBool,
) -> Result<(), Failure> {
    let mut out = Vec::new();
    let mut sent = 0u64;
    let flush = |out: &mut Vec<u8>| -> Result<(), Failure> {
        if !out.is_empty() {
            ch.write(stream::MAIN, out)?;
            out.clear();
        }
        Ok(())
    };
    loop {
        let item = match owed.try_recv() {
            Ok(item) => item,
            Err(mpsc::TryRecvError::Empty) => {
                flush(&mut out)?;
                match owed.recv() {
                    Ok(item) => item,
                    Err(_) => break,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        let result = item.and_then(|p| match p.try_wait() {
            Some(result) => result,
            None => {
                // Say what is confirmed before waiting for the next commit.
                flush(&mut out)?;
                p.wait()
            }
        });
        match result {
            Ok(m) => {
                out.extend(wire::json_line(&accepted(&m)));
                sent += 1;
                if out.len() >= GATHER_BYTES {
                    flush(&mut out)?;
                }
            }
            Err(mut e) => {
                refused.store(true, Ordering::Release);
                flush(&mut out)?;
                e.message = format!("{} ({sent} message(s) sent before)", e.message);
                return Err(e);
            }
        }
    }
    flush(&mut out)
}

/// Cuts a byte stream into lines (without their newline) of at most
/// `max_line` bytes; the start of a line waits for the rest of it.
pub(crate) struct LineSplitter {
    max_line: usize,
    partial: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line,
            partial: Vec::new(),
        }
    }

    /// Appends the lines `data` completes to `lines`.
    pub(crate) fn split(
        &mut self,
        mut data: &[u8],
        lines: &mut Vec<Vec<u8>>,
    ) -> Result<(), Failure> {
        while let Some(at) = data.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&data[..at]);
            lines.push(std::mem::take(&mut self.partial));
            data = &data[at + 1..];
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() > self.max_line {
            return Err(Failure::new(
                Code::TooLarge,
                format!(
                    "line too long: more than {} bytes without a newline",
                    self.max_line
                ),
            ));
        }
        Ok(())
    }

    /// The stream ended: its last line, if that had no newline.
    pub(crate) fn last_line(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

/// Splits a stream's input into lines, gathering what is already there.
struct LineReader {
    ch: Channel,
    stream: u8,
    lines: LineSplitter,
    buf: Vec<u8>,
    eof: bool,
    /// Give up waiting for the first input after this long (no lines).
    idle: Option<Duration>,
}

impl LineReader {
    fn new(ch: Channel, stream: u8, max_line: usize) -> Self {
        LineReader {
            ch,
            stream,
            lines: LineSplitter::new(max_line),
            buf: vec![0; 64 * 1024],
            eof: false,
            idle: None,
        }
    }

    /// Waits for input, then takes whatever else is already queued; returns
    /// the complete lines and whether the stream ended.
    fn next_lines(&mut self) -> Result<(Vec<Vec<u8>>, bool), Failure> {
        let mut lines = Vec::new();
        let mut gathered = 0;
        let mut timeout = self.idle;
        while !self.eof && gathered < GATHER_BYTES {
            match self.ch.read(&mut self.buf, timeout) {
                Ok(Input::Data { stream, len }) if stream == self.stream => {
                    gathered += len;
                    self.lines.split(&self.buf[..len], &mut lines)?;
                }
                Ok(Input::Data { .. }) => {}
                Ok(Input::Eof { stream }) if stream == self.stream => self.eof = true,
                Ok(Input::Eof { .. }) => {}
                Err(ChannelError::Timeout) => break,
                Err(e) => return Err(e.into()),
            }
            // Something arrived: from now on take only what is queued.
            if !lines.is_empty() {
                timeout = Some(Duration::ZERO);
            }
        }
        if self.eof {
            lines.extend(self.lines.last_line());
        }
        Ok((lines, self.eof))
    }
}

fn who(chat: &Chat, store: &Store, user: &str, room: Option<&str>) -> Result<Value, Failure> {
    let host = chat.host;
    match room {
        None => {
            store.register(user);
            let user = user.to_string();
            let users = store.run(move |t| {
                t.register(&user)?;
                t.known_users()
            })?;
            let online: Vec<String> = users.into_iter().filter(|u| host.user_online(u)).collect();
            Ok(json!({ "online": online }))
        }
        Some(room) => {
            let room = wire::room_name(room)?;
            let r = room.clone();
            let members = store.run(move |t| {
                if !t.room_exists(&r)? {
                    return Err(Failure::new(Code::NotFound, format!("no such room: {r}")));
                }
                t.members(&r)
            })?;
            let members: Vec<Value> = members
                .into_iter()
                .map(|u| json!({ "user": u, "online": host.user_online(&u) }))
                .collect();
            Ok(json!({ "room": room, "members": members }))
        }
    }
}

/// A join's answer once committed: the room and its members.
fn join(store: &Store, user: &str, room: &str) -> Result<Owed<'static>, Failure> {
    let room = wire::room_name(room)?;
    let members = store.join(user, room.clone())?;
    Ok(Owed::reply(None, move || {
        let members = members.wait()?;
        Ok(json!({ "room": room, "members": members }))
    }))
}

/// A leave's answer once committed.
fn leave(store: &Store, user: &str, room: &str) -> Result<Owed<'static>, Failure> {
    let room = wire::room_name(room)?;
    let left = store.leave(user, room.clone())?;
    Ok(Owed::reply(None, move || {
        left.wait()?;
        Ok(json!({ "room": room }))
    }))
}

fn rooms(store: &Store, user: &str) -> Pending<Value> {
    let user = user.to_string();
    store.submit(move |t| Ok(json!({ "rooms": t.rooms(&user)? })))
}

fn history(
    store: &Store,
    viewer: &str,
    with: &str,
    limit: Option<i64>,
    before: Option<i64>,
) -> Result<Pending<Vec<Message>>, Failure> {
    let target = Target::parse(with)?;
    let limit = u32::try_from(
        limit
            .unwrap_or(HISTORY_DEFAULT.into())
            .clamp(1, HISTORY_MAX.into()),
    )
    .unwrap_or(HISTORY_DEFAULT);
    let before = before.unwrap_or(i64::MAX);
    let viewer = viewer.to_string();
    Ok(store.submit(move |t| t.history(&viewer, &target, limit, before)))
}

/// An answer the listen loop owes, in request order: a reference and how
/// to get the result (usually waiting for the store).
struct Owed<'a> {
    reference: Option<u64>,
    /// Acks say nothing on success.
    quiet: bool,
    result: Box<dyn FnOnce() -> Result<Value, Failure> + 'a>,
}

impl<'a> Owed<'a> {
    fn reply(reference: Option<u64>, result: impl FnOnce() -> Result<Value, Failure> + 'a) -> Self {
        Owed {
            reference,
            quiet: false,
            result: Box::new(result),
        }
    }

    fn refused(reference: Option<u64>, failure: Failure) -> Self {
        Owed::reply(reference, move || Err(failure))
    }

    fn with(self, reference: Option<u64>) -> Self {
        Owed { reference, ..self }
    }

    fn wait(self) -> Result<Value, Failure> {
        (self.result)()
    }
}

/// `chat listen`: the channel of a chat client. Deliveries go out on
/// stream 0 (live pushes and replays, each with its `seq`); requests come
/// in on stream 2 and are answered there.
fn listen(chat: &Chat, call: &Call<'_>, live: bool) -> Result<(), Failure> {
    let ch = call.channel();
    let user = call.user().to_string();
    let store = chat.store(call)?;
    // Subscribe before reading the inbox: every later commit is pushed, every
    // earlier one is in the replay; the client drops what it gets twice.
    if live {
        ch.subscribe()?;
    }
    store.register(&user);
    let lost = store.lost_epoch();
    let u = user.clone();
    let state: InboxState = store.run(move |t| {
        t.register(&u)?;
        t.inbox_state(&u)
    })?;
    let hello = json!({ "hello": { "user": user, "acked": state.acked, "head": state.head, "live": live } });
    ch.write(stream::CONTROL, &wire::json_line(&hello))?;
    replay(&store, ch, &user, state.acked + 1)?;

    let mut input = LineReader::new(
        ch,
        stream::CONTROL,
        4 * chat.settings().max_message_bytes + 4096,
    );
    // Wakes up now and then to see whether live messages were lost.
    input.idle = Some(LOST_CHECK);
    loop {
        let (lines, eof) = match input.next_lines() {
            Ok(read) => read,
            // The client went away: nothing to answer.
            Err(f) if f.code == Code::Cancelled => return Ok(()),
            Err(f) => return Err(f),
        };
        if store.lost_epoch() != lost {
            // Deliveries this client saw were lost with a failed commit
            // and their numbers given again: it must start afresh.
            return Err(Failure::new(
                Code::Unavailable,
                "the chat store failed to commit messages already delivered; reconnect",
            ));
        }
        let mut owed = Vec::with_capacity(lines.len());
        for line in lines {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request: Request = match serde_json::from_slice(&line) {
                Ok(r) => r,
                Err(e) => {
                    owed.push(Owed::refused(
                        None,
                        Failure::bad_request(format!("bad request line: {e}")),
                    ));
                    continue;
                }
            };
            if let Some(from) = request.resync {
                // Answer what is owed first: the replay must follow earlier acks.
                settle(ch, &mut owed)?;
                replay(&store, ch, &user, from.max(1))?;
                continue;
            }
            owed.push(dispatch(chat, &store, &user, request));
        }
        settle(ch, &mut owed)?;
        if eof {
            return Ok(());
        }
    }
}

/// Starts one request of a listen channel.
fn dispatch<'a>(chat: &'a Chat, store: &'a Store, user: &str, request: Request) -> Owed<'a> {
    let reference = request.reference;
    if let Some(seq) = request.ack {
        let user = user.to_string();
        let pending = store.submit_lazy(move |t| t.ack(&user, seq));
        return Owed {
            reference,
            quiet: true,
            result: Box::new(move || pending.wait().map(|()| Value::Null)),
        };
    }
    let missing = |what: &str| {
        Owed::refused(
            reference,
            Failure::bad_request(format!("`{what}` is missing")),
        )
    };
    match request.op.as_deref() {
        Some("send") => {
            let (Some(to), Some(text)) = (request.to, request.text) else {
                return missing("to` and `text");
            };
            match submit_send(chat, store, user, &to, text) {
                Ok(p) => Owed::reply(reference, move || p.wait().map(|m| accepted(&m))),
                Err(e) => Owed::refused(reference, e),
            }
        }
        Some("who") => {
            let user = user.to_string();
            Owed::reply(reference, move || {
                who(chat, store, &user, request.room.as_deref())
            })
        }
        Some("join") => match request.room {
            Some(room) => join(store, user, &room)
                .map_or_else(|e| Owed::refused(reference, e), |o| o.with(reference)),
            None => missing("room"),
        },
        Some("leave") => match request.room {
            Some(room) => leave(store, user, &room)
                .map_or_else(|e| Owed::refused(reference, e), |o| o.with(reference)),
            None => missing("room"),
        },
        Some("rooms") => {
            let p = rooms(store, user);
            Owed::reply(reference, move || p.wait())
        }
        Some("history") => {
            let Some(with) = request.with else {
                return missing("with");
            };
            match history(
                store,
                user,
                &with,
                request.limit.map(i64::from),
                request.before,
            ) {
                Ok(p) => Owed::reply(reference, move || {
                    p.wait().map(|ms| json!({ "messages": ms }))
                }),
                Err(e) => Owed::refused(reference, e),
            }
        }
        Some(other) => Owed::refused(
            reference,
            Failure::bad_request(format!("unknown op {other:?}")),
        ),
        None => Owed::refused(
            reference,
            Failure::bad_request("a request needs `ack`, `resync` or `op`"),
        ),
    }
}

/// Waits for every owed answer in order and writes the replies.
fn settle(ch: Channel, owed: &mut Vec<Owed<'_>>) -> Result<(), Failure> {
    let mut out = Vec::new();
    for item in owed.drain(..) {
        let result = (item.result)();
        if !(item.quiet && result.is_ok()) {
            out.extend(wire::reply_line(item.reference, result));
        }
    }
    if !out.is_empty() {
        ch.write(stream::CONTROL, &out)?;
    }
    Ok(())
}

/// Sends `user`'s waiting deliveries from `from` on, then
/// `{"replayed": LAST, "acked": A}` on stream 2: deliveries up to `A` were
/// acknowledged (perhaps by another session) and are not sent again.
fn replay(store: &Arc<Store>, ch: Channel, user: &str, from: i64) -> Result<(), Failure> {
    let mut from = from;
    let mut last = from - 1;
    let mut acked = 0;
    loop {
        let u = user.to_string();
        let chunk = store.run(move |t| t.replay(&u, from, REPLAY_CHUNK))?;
        let done = chunk.lines.len() < REPLAY_CHUNK as usize;
        acked = acked.max(chunk.acked);
        if !chunk.lines.is_empty() {
            ch.write(stream::MAIN, &chunk.lines.concat())?;
            last = chunk.last;
            from = chunk.last + 1;
        }
        if done {
            break;
        }
    }
    let marker = json!({ "replayed": last, "acked": acked });
    ch.write(stream::CONTROL, &wire::json_line(&marker))?;
    Ok(())
}
