//! One client connection: TLS handshake, HELLO, authentication, then the
//! session loop that routes frames to channels until the client leaves, is
//! kicked, idles out, or the daemon shuts down.
//!
//! Peer input never panics anything here: a bad frame becomes an ERROR
//! frame naming the problem, then the connection closes. Other connections
//! are unaffected.

use crate::auth::{self, AuthEnd};
use crate::channel::{Channel, ChannelTable, Oneshot, Owner};
use crate::plugin::CallRequest;
use crate::server::Shared;
use crate::session::{Session, Sessions};
use crate::shutdown::Shutdown;
use bytes::BytesMut;
use futures_util::{FutureExt, SinkExt, StreamExt};
use sockd_proto::auth::{CHANNEL_BINDING_LABEL, CHANNEL_BINDING_LEN};
use sockd_proto::frame::{FrameError, MIN_MAX_FRAME};
use sockd_proto::message::{ONESHOT, PROTOCOL_VERSION};
use sockd_proto::{ErrorCode, FrameCodec, Hello, Message};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::{Encoder, Framed, FramedRead};

type Transport = Framed<TlsStream<TcpStream>, FrameCodec>;

/// Why a link ended; the peer has already been told where possible.
#[derive(Debug)]
pub enum LinkError {
    /// The peer closed the connection.
    Closed,
    /// An I/O or TLS error.
    Io(String),
    /// The peer broke the protocol; an ERROR frame was sent.
    Violation(String),
}

/// Typed message I/O over the framed TLS stream, before the session loop
/// splits it into reader and writer halves.
pub struct Link {
    framed: Transport,
    peer: SocketAddr,
}

impl Link {
    /// The next message. Replies queued by [`Link::send`] are flushed first
    /// unless the next frame has already arrived, so that answers to a
    /// pipelined client (HELLO + AUTH_START) leave in one flight.
    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        if !self.frame_buffered() {
            self.flush().await?;
        }
        match self.framed.next().await {
            None => Err(LinkError::Closed),
            Some(Err(FrameError::Io(e))) => Err(LinkError::Io(e.to_string())),
            Some(Err(e)) => {
                let code = match e {
                    FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                    _ => ErrorCode::Protocol,
                };
                Err(self.fail(code, &e.to_string()).await)
            }
            Some(Ok(frame)) => match Message::decode(frame) {
                Ok(m) => Ok(m),
                Err(e) => Err(self.fail(ErrorCode::Protocol, &e.to_string()).await),
            },
        }
    }

    /// Queues a message; the next `recv` or `flush` writes it.
    pub async fn send(&mut self, m: Message) -> Result<(), LinkError> {
        self.framed
            .feed(m.encode())
            .await
            .map_err(|e| LinkError::Io(e.to_string()))
    }

    pub async fn flush(&mut self) -> Result<(), LinkError> {
        SinkExt::<sockd_proto::Frame>::flush(&mut self.framed)
            .await
            .map_err(|e| LinkError::Io(e.to_string()))
    }

    /// True if a whole frame is already in the read buffer.
    fn frame_buffered(&self) -> bool {
        whole_frame(self.framed.read_buffer())
    }

    /// Sends a fatal ERROR and returns the violation to end the connection with.
    pub async fn fail(&mut self, code: ErrorCode, message: &str) -> LinkError {
        tracing::info!(peer = %self.peer, code = code.slug(), "closing connection: {message}");
        let _ = self
            .send(Message::Error {
                code,
                message: message.to_string(),
            })
            .await;
        let _ = self.flush().await;
        LinkError::Violation(message.to_string())
    }

    /// Anything but HELLO and the auth messages before login.
    pub async fn refuse_before_auth(&mut self, got: &Message) -> LinkError {
        let name = format!("{:?}", got.encode().kind);
        self.fail(
            ErrorCode::NotAuthenticated,
            &format!("{name} is not allowed before authentication"),
        )
        .await
    }
}

/// True if `buf` starts with a whole frame.
fn whole_frame(buf: &[u8]) -> bool {
    buf.len() >= 4 && buf.len() >= 4 + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
}

/// Serves one accepted TCP connection to the end.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, shutdown: Shutdown) {
    let config = shared.config();
    let deadline = Instant::now() + config.auth.timeout();
    // Our HELLO and the advance key challenge go out as 0.5-RTT data with
    // the handshake (crate::tls): no need to wait for the client's HELLO.
    let advance = match auth::AdvanceChallenge::new(&shared.users()) {
        Ok(advance) => advance,
        Err(e) => {
            tracing::error!(%peer, "cannot challenge a login: {e}");
            return;
        }
    };
    let mut codec = FrameCodec::new(config.server.max_frame_size);
    let mut first_flight = BytesMut::new();
    for message in [server_hello(&config), advance.message()] {
        if let Err(e) = codec.encode(message, &mut first_flight) {
            tracing::error!(%peer, "cannot encode the first flight: {e}");
            return;
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls());
    let accept = acceptor.accept_with(tcp, |conn| {
        // Held by rustls (far below its 64 KiB limit) until its Finished.
        let _ = std::io::Write::write_all(&mut conn.writer(), &first_flight);
    });
    let tls = match timeout_at(deadline, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut channel_binding = [0u8; CHANNEL_BINDING_LEN];
    if let Err(e) =
        tls.get_ref()
            .1
            .export_keying_material(&mut channel_binding, CHANNEL_BINDING_LABEL, None)
    {
        tracing::error!(%peer, "TLS exporter failed: {e}");
        return;
    }
    let framed = Framed::new(tls, codec);
    let mut link = Link { framed, peer };

    let login = async {
        let client_hello = hello(&mut link, &shared).await?;
        let authenticated =
            auth::authenticate(&mut link, &shared, peer, &channel_binding, Some(advance))
                .await
                .map_err(|e| match e {
                    AuthEnd::Link(e) => e,
                    AuthEnd::TooManyAttempts => {
                        LinkError::Violation("too many failed attempts".into())
                    }
                })?;
        Ok::<_, LinkError>((client_hello, authenticated))
    };
    let (client_hello, authenticated) = match timeout_at(deadline, login).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection ended before login: {e:?}");
            return;
        }
        Err(_) => {
            let _ = link
                .fail(ErrorCode::AuthTimeout, "not authenticated in time")
                .await;
            return;
        }
    };

    // Fixed for the session, like its user: computed once, not per call.
    let home = config.server.home_root().join(&authenticated.user);
    let session = Sessions::global().register(&authenticated.user, peer, home);
    let ok = Message::AuthOk {
        server_signature: authenticated.server_signature,
        session_id: session.id,
    };
    if link.send(ok).await.is_ok() && link.flush().await.is_ok() {
        tracing::info!(%peer, user = %session.user, session = session.id, "session started");
        run_session(link, &session, &client_hello, &shared, shutdown).await;
        tracing::info!(%peer, user = %session.user, session = session.id, "session ended");
    }
    Sessions::global().remove(session.id);
    // A session that opened no channel was never seen by a plugin.
    if session.opened_channels() {
        shared.plugins().session_closed(session.id);
    }
}

/// Our HELLO: sent before the client's arrives, so it says nothing that
/// depends on the client's.
fn server_hello(config: &crate::config::Config) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        max_frame: config.server.max_frame_size,
        window: config.server.window,
        software: format!("sockd {}", env!("CARGO_PKG_VERSION")),
        identity: config.server.name.clone(),
        capabilities: vec![ONESHOT.to_string()],
    })
}

/// Reads the client's HELLO and checks it (ours went out with the TLS
/// handshake); from here on no frame we send exceeds its `max_frame`.
async fn hello(link: &mut Link, shared: &Shared) -> Result<Hello, LinkError> {
    let h = match link.recv().await? {
        Message::Hello(h) => h,
        other => return Err(link.refuse_before_auth(&other).await),
    };
    if h.version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
            h.version
        );
        return Err(link.fail(ErrorCode::VersionMismatch, &msg).await);
    }
    if h.max_frame < MIN_MAX_FRAME || h.window == 0 {
        let msg = format!("HELLO needs max_frame >= {MIN_MAX_FRAME} and a nonzero window");
        return Err(link.fail(ErrorCode::Protocol, &msg).await);
    }
    let config = shared.config();
    let send_max = h
        .max_frame
        .min(config.server.max_frame_size.max(MIN_MAX_FRAME));
    link.framed.codec_mut().set_max_send(send_max);
    Ok(h)
}

/// The authenticated part of a connection.
async fn run_session(
    link: Link,
    session: &Arc<Session>,
    client: &Hello,
    shared: &Arc<Shared>,
    mut shutdown: Shutdown,
) {
    let peer = link.peer;
    let max_chunk = FrameCodec::max_data_chunk(link.framed.codec().max_send());
    // Reader and writer get their own halves of the TLS stream: the writer
    // sends bulk DATA straight from the plugin's buffers (see
    // crate::outbound::write_loop); frames the client already pipelined
    // stay in the reader's buffer.
    let parts = link.framed.into_parts();
    let (read_half, write_half) = tokio::io::split(parts.io);
    let mut stream = FramedRead::with_capacity(read_half, parts.codec.clone(), 0);
    *stream.read_buffer_mut() = parts.read_buf;
    let (out_tx, out_rx) = crate::outbound::channel();
    let backlog = out_tx.backlog().clone();
    let closing = Arc::new(Closing::default());
    let peer_closed = Arc::new(AtomicBool::new(false));

    // The writer batches whatever is queued into one flush. A finished
    // channel's number is freed by the reader when it next needs a number
    // (OPEN), without a message per call; only a reader that waits for the
    // last channels to end (shutdown) is woken by the CLOSEs.
    //
    // Its task starts with the first frame the client sends (or the first
    // thing to tell it unasked): a client that logs in and leaves costs no
    // task, no wake-up of another worker, and no abort.
    let mut unstarted = Some(crate::outbound::write_loop(
        write_half,
        parts.codec,
        parts.write_buf,
        out_rx,
        backlog.clone(),
        {
            let closing = closing.clone();
            move |_| closing.closed()
        },
        peer_closed.clone(),
    ));
    let mut writer: Option<tokio::task::JoinHandle<()>> = None;
    let mut start_writer = |writer: &mut Option<tokio::task::JoinHandle<()>>| {
        if let Some(write_loop) = unstarted.take() {
            *writer = Some(tokio::spawn(write_loop));
        }
    };

    let config = shared.config();
    let idle = config.server.idle_timeout();
    let window = config.server.window;
    let max_channels = config.server.max_channels_per_connection;
    let replies = client.capabilities.iter().any(|c| c == ONESHOT);
    let mut channels = OpenChannels::default();
    let mut going_away = false;
    let mut writer_done = false;
    // The waits that outlive a frame are made once, not per loop: each
    // new one would register with its watch or timer wheel again.
    let kicked = session.kicked();
    let stopping = shutdown.recv();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(kicked, stopping, idle_timer);
    let mut last_frame = Instant::now();
    let fatal = |code: ErrorCode, message: String| {
        tracing::info!(%peer, session = session.id, code = code.slug(), "closing session: {message}");
        let _ = out_tx.send(Message::Error { code, message });
    };

    'session: loop {
        // While the client leaves our frames unread, read none of its own:
        // what it asks for would only queue up here (see crate::outbound).
        let backlog_full = backlog.is_full();
        tokio::select! {
            () = backlog.wait_for_room(), if backlog_full => {}
            frame = stream.next(), if !backlog_full => {
                last_frame = Instant::now();
                // Frames that came in the same read (OPEN and EOF of a call,
                // a pipelining client's requests) are handled here, not one
                // pass of this select each.
                let mut read = Some(frame);
                loop {
                    let Some(frame) = read.take().or_else(|| {
                        (!backlog.is_full() && whole_frame(stream.read_buffer()))
                            .then(|| stream.next().now_or_never())
                            .flatten()
                    }) else {
                        break;
                    };
                    let message = match frame {
                        None => {
                            peer_closed.store(true, Ordering::Relaxed);
                            break 'session;
                        }
                        Some(Err(FrameError::Io(e))) => {
                            tracing::debug!(%peer, "read error: {e}");
                            peer_closed.store(true, Ordering::Relaxed);
                            break 'session;
                        }
                        Some(Err(e)) => {
                            let code = if matches!(e, FrameError::TooLarge { .. }) { ErrorCode::FrameTooLarge } else { ErrorCode::Protocol };
                            fatal(code, e.to_string());
                            break 'session;
                        }
                        Some(Ok(frame)) => match Message::decode(frame) {
                            Ok(m) => m,
                            Err(e) => {
                                fatal(ErrorCode::Protocol, e.to_string());
                                break 'session;
                            }
                        },
                    };
                    start_writer(&mut writer);
                    // A CALL is an OPEN whose input has ended.
                    let (message, input_ended) = match message {
                        Message::Call { channel, command, args } => (Message::Open { channel, command, args }, true),
                        message => (message, false),
                    };
                    match message {
                        Message::Ping { payload } => {
                            let _ = out_tx.send(Message::Pong { payload });
                        }
                        Message::Pong { .. } => {}
                        Message::Open { channel: id, command, args } => {
                            session.opened_channel();
                            // Finished channels free their numbers (their CLOSE is
                            // queued ahead of anything this one sends).
                            channels.forget_finished();
                            if channels.get(id).is_some() {
                                fatal(ErrorCode::Protocol, format!("channel {id} is already open"));
                                break 'session;
                            }
                            let refuse = |code: ErrorCode, message: String| {
                                let _ = out_tx.send(Message::Close { channel: id, code, value: 0, message });
                            };
                            if going_away {
                                refuse(ErrorCode::ShuttingDown, "the server is shutting down".into());
                                continue;
                            }
                            if channels.len() >= max_channels {
                                refuse(ErrorCode::Busy, format!("too many open channels on this connection (maximum {max_channels})"));
                                continue;
                            }
                            // Unknown, quarantined or stopping: refused before
                            // a channel is made.
                            let call = match shared.plugins().prepare_call(&command) {
                                Ok(call) => call,
                                Err((code, message)) => {
                                    refuse(code, message);
                                    continue;
                                }
                            };
                            let owner = Owner { session_id: session.id, user: session.user.clone(), plugin: call.plugin() };
                            let oneshot = Oneshot { input_ended, replies };
                            let channel = Channel::new(id, owner, command.into_boxed_str(), out_tx.clone(), window, client.window, max_chunk, oneshot);
                            ChannelTable::global().insert(channel.clone());
                            channels.insert(id, channel.clone());
                            let request = CallRequest { channel: channel.clone(), session: session.clone(), args };
                            if let Err((code, message)) = call.start(request) {
                                channel.finish(code, &message);
                            }
                        }
                        Message::Data { channel: id, stream, data } => {
                            // Data for a channel that already closed is in flight; drop it.
                            if let Some(ch) = channels.get(id)
                                && let Err(v) = ch.on_data(stream, data)
                            {
                                fatal(ErrorCode::Protocol, format!("channel {id}: {} bytes sent with only {} credit", v.sent, v.allowed));
                                break 'session;
                            }
                        }
                        Message::Eof { channel: id, stream } => {
                            if let Some(ch) = channels.get(id) {
                                ch.on_eof(stream);
                            }
                        }
                        Message::Credit { channel: id, bytes } => {
                            if let Some(ch) = channels.get(id) {
                                ch.on_credit(bytes);
                            }
                        }
                        Message::Close { channel: id, .. } => {
                            if let Some(ch) = channels.get(id) {
                                ch.cancel();
                            }
                        }
                        Message::Error { code, message } => {
                            tracing::info!(%peer, code = code.slug(), "client reported an error: {message}");
                            break 'session;
                        }
                        Message::GoAway { .. } => {}
                        other => {
                            let kind = other.encode().kind;
                            fatal(ErrorCode::Protocol, format!("{kind:?} is not allowed after authentication"));
                            break 'session;
                        }
                    }
                }
            }
            () = closing.notify.notified(), if going_away => {
                channels.forget_finished();
                if channels.is_empty() {
                    break;
                }
            }
            () = ended(&mut writer), if !writer_done => {
                // The writer failed: the client can no longer hear us (and
                // a full backlog would never drain).
                writer_done = true;
                break;
            }
            () = &mut idle_timer => {
                let now = Instant::now();
                if last_frame + idle > now {
                    idle_timer.as_mut().reset(last_frame + idle);
                    continue;
                }
                channels.forget_finished();
                if channels.is_empty() {
                    fatal(ErrorCode::IdleTimeout, format!("no activity for {} s", idle.as_secs()));
                    break;
                }
                idle_timer.as_mut().reset(now + idle);
            }
            () = &mut kicked => {
                fatal(ErrorCode::Kicked, "session closed by an administrator".into());
                break;
            }
            () = &mut stopping, if !going_away => {
                going_away = true;
                closing.waiting.store(true, Ordering::SeqCst);
                start_writer(&mut writer);
                let _ = out_tx.send(Message::GoAway { code: ErrorCode::ShuttingDown, message: "the server is shutting down".into() });
                channels.forget_finished();
                if channels.is_empty() {
                    break;
                }
            }
        }
    }

    // Each channel holds a sender to the writer: drop ours, so the writer
    // ends as soon as the plugin threads still running let go of theirs.
    for (_, ch) in channels.0.drain(..) {
        ch.cancel();
    }
    drop(out_tx);
    // Let queued frames (a final ERROR or GOAWAY) reach the client. The
    // writer ends once every channel's plugin thread has dropped its sender;
    // cancelled channels make that prompt, and a stuck plugin cannot hold
    // the connection open past this bound. A client that closed first
    // reads nothing more: no need to wait, nor to start the writer.
    let peer_gone = peer_closed.load(Ordering::Relaxed);
    if !peer_gone {
        start_writer(&mut writer);
    }
    if let Some(mut writer) = writer
        && (writer_done
            || peer_gone
            || tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer)
                .await
                .is_err())
    {
        writer.abort();
    }
}

/// Resolves when the writer task ends; never if it has not started.
async fn ended(writer: &mut Option<tokio::task::JoinHandle<()>>) {
    match writer {
        Some(task) => {
            let _ = task.await;
        }
        None => std::future::pending().await,
    }
}

/// How the writer tells a reader that waits for its last channels to end
/// (shutdown) that a CLOSE went out; while none waits, nothing to do.
#[derive(Default)]
struct Closing {
    waiting: AtomicBool,
    notify: Notify,
}

impl Closing {
    fn closed(&self) {
        // The channel's finished flag was set before its CLOSE was queued:
        // a reader that starts waiting after this load sees it.
        if self.waiting.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// The connection's open channels by number. At most
/// `max_channels_per_connection` (64 by default), so a linear scan of a
/// vector beats hashing every frame's channel number.
#[derive(Default)]
struct OpenChannels(Vec<(u32, Arc<Channel>)>);

impl OpenChannels {
    fn get(&self, id: u32) -> Option<&Arc<Channel>> {
        self.0.iter().find(|(n, _)| *n == id).map(|(_, ch)| ch)
    }

    fn insert(&mut self, id: u32, channel: Arc<Channel>) {
        self.0.push((id, channel));
    }

    /// Frees the numbers of finished channels: their CLOSE is queued, and
    /// DATA the client sent before it saw the CLOSE finds no channel and is
    /// dropped, as it would be by the finished channel.
    fn forget_finished(&mut self) {
        self.0.retain(|(_, ch)| !ch.is_finished());
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
