//! The connection: TCP, TLS, HELLO and login, then two background tasks.
//! The writer task sends queued frames in order; the reader task answers
//! pings and hands each frame to its channel.

use super::auth;
use super::channel::{ChannelHandle, ChannelShared};
use super::config::Settings;
use super::error::ClientError;
use super::tls;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sockd_proto::auth::CHANNEL_BINDING_LABEL;
use sockd_proto::frame::{
    BATCH_LIMIT, DEFAULT_MAX_FRAME, DIRECT_DATA, FRAME_OVERHEAD, FrameError, MIN_MAX_FRAME,
};
use sockd_proto::message::{MAX_ARGS, ONESHOT, PROTOCOL_VERSION};
use sockd_proto::{ErrorCode, Frame, FrameCodec, Hello, Message};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Encoder, Framed, FramedRead};

/// The credit sockctl grants the server on each channel.
pub const WINDOW: u32 = 1 << 20;

type Transport = Framed<TlsStream<TcpStream>, FrameCodec>;

/// What the client learned while connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The address connected to.
    pub address: SocketAddr,
    /// The server's configured name (HELLO `identity`).
    pub identity: String,
    /// Software name and version, e.g. `sockd 0.1.0`.
    pub software: String,
    pub capabilities: Vec<String>,
    /// The largest frame the server accepts.
    pub max_frame: u32,
    /// The credit the server grants on each new channel.
    pub window: u32,
    /// The user logged in as.
    pub user: String,
    pub session_id: u64,
    /// SHA-256 of the server certificate (DER), the value to pin.
    pub certificate_sha256: [u8; 32],
}

/// An authenticated connection to sockd.
///
/// ```no_run
/// # async fn demo(settings: &sockctl::client::Settings) -> Result<(), sockctl::client::ClientError> {
/// use sockctl::client::{Client, Event};
/// let client = Client::connect(settings).await?;
/// let mut ch = client.open("echo", [&b"hello"[..]]).await?;
/// ch.send_eof(0).await?;
/// while let Some(event) = ch.recv().await {
///     if let Event::Closed { code, .. } = event {
///         println!("done: {code}");
///     }
/// }
/// client.close().await;
/// # Ok(()) }
/// ```
///
/// Dropping the client closes the connection; open channels then see
/// [`Event::Closed`](super::Event::Closed). Call [`Client::close`] to let queued frames (such as a
/// cancel) reach the server first.
pub struct Client {
    conn: Arc<Conn>,
    info: ServerInfo,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

/// State shared by the client, its channels and the two tasks.
pub(crate) struct Conn {
    out: mpsc::UnboundedSender<Out>,
    state: Mutex<ConnState>,
    /// Largest DATA payload the server accepts.
    pub(crate) max_chunk: usize,
    /// The server's maximum frame.
    max_frame: u32,
    /// Credit we grant per channel (our HELLO window).
    pub(crate) recv_window: u32,
    /// Credit the server grants per channel (its HELLO window).
    send_window: u32,
    /// The server takes CALL (capability `oneshot`).
    oneshot: bool,
}

pub(crate) enum Out {
    /// Encoded by the writer (DATA straight into the TLS buffer).
    Message(Message),
    /// Messages that must leave in the same write (an OPEN and its EOF).
    Batch(Vec<Message>),
    Shutdown,
}

struct ConnState {
    channels: HashMap<u32, Arc<ChannelShared>>,
    next_channel: u32,
    pings: Vec<(Bytes, oneshot::Sender<()>)>,
    ping_seq: u64,
    /// Why the connection ended, once it has.
    ended: Option<ClientError>,
    /// GOAWAY received: no new channels.
    going_away: Option<ClientError>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the connection ended, if it has.
    pub(crate) fn ended(&self) -> Option<ClientError> {
        self.lock().ended.clone()
    }

    fn ended_or(&self, fallback: &str) -> ClientError {
        self.ended()
            .unwrap_or_else(|| ClientError::remote(ErrorCode::Unavailable, fallback))
    }

    /// Queues a message for the writer task.
    pub(crate) fn send(&self, msg: Message) -> Result<(), ClientError> {
        if let Some(e) = self.ended() {
            return Err(e);
        }
        self.out
            .send(Out::Message(msg))
            .map_err(|_| self.ended_or("the connection to sockd is closed"))
    }

    /// Ends the connection: every open channel sees `Closed`, pending pings
    /// fail, the writer flushes and closes TLS.
    fn fail(&self, error: ClientError) {
        let (channels, code) = {
            let mut st = self.lock();
            if st.ended.is_some() {
                return;
            }
            let code = error.code().unwrap_or(ErrorCode::Unavailable);
            st.ended = Some(error.clone());
            st.pings.clear();
            (std::mem::take(&mut st.channels), code)
        };
        for ch in channels.values() {
            ch.on_close(code, 0, error.message().to_string());
        }
        let _ = self.out.send(Out::Shutdown);
    }

    /// The peer broke the protocol: tell it why and hang up.
    fn violation(&self, what: String) {
        let _ = self.out.send(Out::Message(Message::Error {
            code: ErrorCode::Protocol,
            message: what.clone(),
        }));
        self.fail(ClientError::remote(
            ErrorCode::Protocol,
            format!("sockd broke the protocol: {what}"),
        ));
    }

    fn channel(&self, id: u32) -> Option<Arc<ChannelShared>> {
        self.lock().channels.get(&id).cloned()
    }
}

impl Client {
    /// Connects, verifies the server certificate, exchanges HELLO and logs in.
    pub async fn connect(settings: &Settings) -> Result<Client, ClientError> {
        let limit = settings.connect_timeout;
        let tls_config = tls::client_config(&settings.trust)?;
        let server_name = tls::server_name(&settings.server_name)?;
        let tcp = tcp_connect(&settings.server, limit).await?;
        let address = tcp
            .peer_addr()
            .map_err(|e| connect_error(&settings.server, &e))?;
        let _ = tcp.set_nodelay(true);

        // HELLO and AUTH_START are queued before the handshake, so that
        // rustls sends them in the same write as the client's Finished
        // (never before: it holds application data until the server's
        // certificate is verified and the traffic keys exist). AUTH_START
        // is far below the minimum frame size every server accepts, so it
        // needs nothing from the server's HELLO. A key client's AUTH_PROOF
        // follows in the same segment (docs/PROTOCOL.md, "One-flight key
        // login").
        let hello = Hello {
            version: PROTOCOL_VERSION,
            max_frame: DEFAULT_MAX_FRAME,
            window: WINDOW,
            software: format!("sockctl {}", env!("CARGO_PKG_VERSION")),
            identity: String::new(),
            // We take REPLY: a one-shot call's answer and end in one frame.
            capabilities: vec![ONESHOT.to_string()],
        };
        let (start, client_nonce) = auth::auth_start(&settings.user, &settings.secret)?;
        let mut first_flight = BytesMut::new();
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        for message in [Message::Hello(hello), start] {
            codec
                .encode(message, &mut first_flight)
                .map_err(|e| ClientError::failure(format!("cannot encode {e}")))?;
        }
        let queue_first_flight = move |conn: &mut tokio_rustls::rustls::ClientConnection| {
            // Buffered in memory, within rustls' default 64 KiB limit.
            let _ = conn.writer().write_all(&first_flight);
        };

        // A key login answers the challenge that comes with the server's
        // handshake flight: its Finished is held until the proof joins it.
        let one_flight = matches!(settings.secret, sockd_proto::auth::Secret::Key(_));
        let mut tls = match tokio::time::timeout(
            limit,
            tls::handshake(
                TlsConnector::from(tls_config).connect_with(server_name, tcp, queue_first_flight),
                one_flight,
            ),
        )
        .await
        {
            Err(_) => {
                return Err(ClientError::connect(format!(
                    "TLS handshake with {} timed out after {} s; is it a sockd server?",
                    settings.server,
                    limit.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(tls::handshake_error(
                    e,
                    &settings.server,
                    &settings.server_name,
                ));
            }
            Ok(Ok(tls)) => tls,
        };
        if one_flight && !tls::server_flight_arrived(&mut tls) {
            // A server from before one-flight logins waits for our HELLO.
            tls::release_held_writes(&tls);
        }
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(sockd_proto::message::ALPN) {
            return Err(ClientError::protocol(format!(
                "{} did not agree to the sockd/1 protocol (ALPN); is it a sockd server?",
                settings.server
            )));
        }
        let certificate_sha256 = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| tls::fingerprint(c.as_ref()))
            .ok_or_else(|| ClientError::protocol("the server sent no certificate"))?;
        let channel_binding = session
            .export_keying_material(
                [0u8; sockd_proto::auth::CHANNEL_BINDING_LEN],
                CHANNEL_BINDING_LABEL,
                None,
            )
            .map_err(|e| {
                ClientError::failure(format!("cannot derive the TLS channel binding: {e}"))
            })?;

        let mut io: Transport = Framed::new(tls, codec);
        let server = match next_message(&mut io, limit, "the server's HELLO").await? {
            Message::Hello(h) => h,
            other => {
                return Err(ClientError::protocol(format!(
                    "sockd sent {} instead of HELLO",
                    describe(&other)
                )));
            }
        };
        if server.version != PROTOCOL_VERSION {
            return Err(ClientError::remote(
                ErrorCode::VersionMismatch,
                format!(
                    "the server speaks protocol version {}, this sockctl speaks {PROTOCOL_VERSION}; \
                     use a matching sockctl",
                    server.version
                ),
            ));
        }
        if server.max_frame < MIN_MAX_FRAME {
            return Err(ClientError::protocol(format!(
                "the server announced a maximum frame of {} bytes (the minimum is {MIN_MAX_FRAME})",
                server.max_frame
            )));
        }
        io.codec_mut().set_max_send(server.max_frame);

        let session_id = auth::authenticate(
            &mut io,
            &settings.user,
            &settings.secret,
            client_nonce,
            &channel_binding,
            limit,
            |io: &mut Transport| tls::release_held_writes(io.get_ref()),
        )
        .await?;

        let info = ServerInfo {
            address,
            identity: server.identity,
            software: server.software,
            capabilities: server.capabilities,
            max_frame: server.max_frame,
            window: server.window,
            user: settings.user.clone(),
            session_id,
            certificate_sha256,
        };
        Ok(Self::start(io, info))
    }

    /// Spawns the reader and writer tasks on an authenticated transport.
    fn start(io: Transport, info: ServerInfo) -> Client {
        let (out, out_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            out,
            state: Mutex::new(ConnState {
                channels: HashMap::new(),
                next_channel: 1,
                pings: Vec::new(),
                ping_seq: 0,
                ended: None,
                going_away: None,
            }),
            max_chunk: FrameCodec::max_data_chunk(info.max_frame),
            max_frame: info.max_frame,
            recv_window: WINDOW,
            send_window: info.window,
            oneshot: info.capabilities.iter().any(|c| c == ONESHOT),
        });
        // Separate halves of the TLS stream, so that the writer can send
        // bulk DATA from the caller's buffers (see `write_loop`); frames the
        // server already sent stay in the reader's buffer.
        let parts = io.into_parts();
        let (read_half, write_half) = tokio::io::split(parts.io);
        let mut stream = FramedRead::new(read_half, parts.codec.clone());
        *stream.read_buffer_mut() = parts.read_buf;
        let writer = tokio::spawn(write_loop(
            write_half,
            parts.codec,
            parts.write_buf,
            out_rx,
            conn.clone(),
        ));
        let reader = tokio::spawn(read_loop(stream, conn.clone()));
        Client {
            conn,
            info,
            reader,
            writer: Some(writer),
        }
    }

    /// What the server said about itself, and the session.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Sends an 8-byte PING and waits for the PONG; returns the round trip.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (tx, rx) = oneshot::channel();
        let payload = {
            let mut st = self.conn.lock();
            if let Some(e) = &st.ended {
                return Err(e.clone());
            }
            st.ping_seq += 1;
            let payload = Bytes::copy_from_slice(&st.ping_seq.to_be_bytes());
            st.pings.push((payload.clone(), tx));
            payload
        };
        let start = Instant::now();
        self.conn.send(Message::Ping { payload })?;
        rx.await.map_err(|_| {
            self.conn
                .ended_or("the connection to sockd closed before the PONG")
        })?;
        Ok(start.elapsed())
    }

    /// Starts `command` with `args` on a new channel. The server answers
    /// with events on the returned handle, ending with [`Event::Closed`](super::Event::Closed)
    /// (also if the command does not exist).
    pub async fn open<I, A>(&self, command: &str, args: I) -> Result<ChannelHandle, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: Into<Bytes>,
    {
        self.open_channel(command, args, true)
    }

    /// Like [`Client::open`] for a command that gets no input: its `EOF`
    /// on stream 0 leaves in the same write as the `OPEN`, so the server
    /// reads both at once, and a command that answers at once cannot end
    /// before its input has (which [`ChannelHandle::send_eof`] after
    /// `open` would then report as an error).
    pub async fn open_without_input<I, A>(
        &self,
        command: &str,
        args: I,
    ) -> Result<ChannelHandle, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: Into<Bytes>,
    {
        self.open_channel(command, args, false)
    }

    fn open_channel<I, A>(
        &self,
        command: &str,
        args: I,
        with_input: bool,
    ) -> Result<ChannelHandle, ClientError>
    where
        I: IntoIterator<Item = A>,
        A: Into<Bytes>,
    {
        let args: Vec<Bytes> = args.into_iter().map(Into::into).collect();
        if command.is_empty() || command.len() > usize::from(u16::MAX) {
            return Err(ClientError::usage(format!(
                "invalid command name {command:?}"
            )));
        }
        if args.len() > MAX_ARGS {
            return Err(ClientError::usage(format!(
                "{} arguments; at most {MAX_ARGS} are allowed",
                args.len()
            )));
        }
        let size = FRAME_OVERHEAD
            + 2
            + command.len()
            + 2
            + args.iter().map(|a| 4 + a.len()).sum::<usize>();
        if size > self.conn.max_frame as usize {
            return Err(ClientError::usage(format!(
                "the command and its arguments take {size} bytes; the server accepts at most {}",
                self.conn.max_frame
            )));
        }

        let mut st = self.conn.lock();
        if let Some(e) = st.ended.as_ref().or(st.going_away.as_ref()) {
            return Err(e.clone());
        }
        // Odd ids, counting up, so an id is not reused soon after its CLOSE.
        let id = loop {
            let id = st.next_channel;
            st.next_channel = st.next_channel.wrapping_add(2);
            if !st.channels.contains_key(&id) {
                break id;
            }
        };
        let shared = ChannelShared::new(id, self.conn.send_window, self.conn.recv_window);
        st.channels.insert(id, shared.clone());
        let command = command.to_string();
        let out = if with_input {
            Out::Message(Message::Open {
                channel: id,
                command,
                args,
            })
        } else if self.conn.oneshot {
            Out::Message(Message::Call {
                channel: id,
                command,
                args,
            })
        } else {
            Out::Batch(vec![
                Message::Open {
                    channel: id,
                    command,
                    args,
                },
                Message::Eof {
                    channel: id,
                    stream: sockd_proto::message::stream::MAIN,
                },
            ])
        };
        if self.conn.out.send(out).is_err() {
            st.channels.remove(&id);
            drop(st);
            return Err(self.conn.ended_or("the connection to sockd is closed"));
        }
        drop(st);
        Ok(ChannelHandle::new(shared, self.conn.clone()))
    }

    /// Sends what is queued, closes TLS and waits (briefly) for that to finish.
    pub async fn close(mut self) {
        self.conn
            .fail(ClientError::failure("the connection was closed by sockctl"));
        if let Some(writer) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn
            .fail(ClientError::failure("the connection was closed by sockctl"));
        self.reader.abort();
    }
}

async fn tcp_connect(server: &str, limit: Duration) -> Result<TcpStream, ClientError> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
            .await
            .map_err(|e| {
                ClientError::connect(format!(
                    "cannot resolve {server}: {e}; check `server` in the config or --server"
                ))
            })?
            .collect();
        let mut last = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => connect_error(server, &e),
            None => ClientError::connect(format!("{server} resolves to no address")),
        })
    };
    tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
        Err(ClientError::connect(format!(
            "cannot connect to {server}: timed out after {} s; check the address and the network",
            limit.as_secs()
        )))
    })
}

fn connect_error(server: &str, e: &std::io::Error) -> ClientError {
    ClientError::connect(format!(
        "cannot connect to {server}: {e}; is sockd running and listening there?"
    ))
}

/// Reads the next message during the handshake, turning ERROR, timeouts
/// and malformed frames into errors.
pub(crate) async fn next_message<S>(
    io: &mut S,
    limit: Duration,
    waiting_for: &str,
) -> Result<Message, ClientError>
where
    S: Stream<Item = Result<Frame, FrameError>> + Unpin,
{
    let frame = match tokio::time::timeout(limit, io.next()).await {
        Err(_) => {
            return Err(ClientError::connect(format!(
                "timed out after {} s waiting for {waiting_for}",
                limit.as_secs()
            )));
        }
        Ok(None) => {
            return Err(ClientError::connect(format!(
                "sockd closed the connection while sockctl waited for {waiting_for}"
            )));
        }
        Ok(Some(Err(FrameError::Io(e)))) => {
            return Err(ClientError::connect(format!(
                "connection to sockd lost while waiting for {waiting_for}: {e}"
            )));
        }
        Ok(Some(Err(e))) => {
            return Err(ClientError::protocol(format!(
                "sockd sent a bad frame: {e}"
            )));
        }
        Ok(Some(Ok(frame))) => frame,
    };
    match Message::decode(frame) {
        Ok(Message::Error { code, message }) => Err(ClientError::remote(
            code,
            format!("sockd refused the connection: {}", text_or(&message, code)),
        )),
        Ok(msg) => Ok(msg),
        Err(e) => Err(ClientError::protocol(format!(
            "sockd sent a malformed message: {e}"
        ))),
    }
}

/// The message's kind, for error messages.
pub(crate) fn describe(msg: &Message) -> String {
    format!("{:?}", msg.encode().kind).to_uppercase()
}

fn text_or(message: &str, code: ErrorCode) -> String {
    if message.trim().is_empty() {
        code.description().to_string()
    } else {
        message.to_string()
    }
}

/// Sends queued messages in order, batching what is queued at once into
/// one flush; bulk DATA goes to TLS without a copy into an output buffer.
async fn write_loop(
    mut io: WriteHalf<TlsStream<TcpStream>>,
    mut codec: FrameCodec,
    mut pending: BytesMut,
    mut rx: mpsc::UnboundedReceiver<Out>,
    conn: Arc<Conn>,
) {
    let result: std::io::Result<()> = async {
        let mut shutdown = false;
        while !shutdown {
            let Some(mut next) = rx.recv().await else {
                break;
            };
            loop {
                match next {
                    Out::Message(Message::Data {
                        channel,
                        stream,
                        data,
                    }) if data.len() >= DIRECT_DATA => {
                        let header = codec
                            .data_header(channel, stream, data.len())
                            .map_err(std::io::Error::other)?;
                        pending.extend_from_slice(&header);
                        io.write_all_buf(&mut (&mut pending).chain(data)).await?;
                    }
                    Out::Message(message) => {
                        codec
                            .encode(message, &mut pending)
                            .map_err(std::io::Error::other)?;
                        if pending.len() >= BATCH_LIMIT {
                            io.write_all_buf(&mut pending).await?;
                        }
                    }
                    Out::Batch(messages) => {
                        for message in messages {
                            codec
                                .encode(message, &mut pending)
                                .map_err(std::io::Error::other)?;
                        }
                    }
                    Out::Shutdown => {
                        shutdown = true;
                        break;
                    }
                }
                match rx.try_recv() {
                    Ok(out) => next = out,
                    Err(_) => break,
                }
            }
            io.write_all_buf(&mut pending).await?;
            io.flush().await?;
        }
        io.shutdown().await
    }
    .await;
    if let Err(e) = result {
        conn.fail(ClientError::remote(
            ErrorCode::Unavailable,
            format!("connection to sockd lost: {e}"),
        ));
    }
}

async fn read_loop(
    mut stream: FramedRead<ReadHalf<TlsStream<TcpStream>>, FrameCodec>,
    conn: Arc<Conn>,
) {
    loop {
        let frame = match stream.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(FrameError::Io(e))) => {
                return conn.fail(ClientError::remote(
                    ErrorCode::Unavailable,
                    format!("connection to sockd lost: {e}"),
                ));
            }
            Some(Err(e)) => return conn.violation(e.to_string()),
            None => {
                return conn.fail(ClientError::remote(
                    ErrorCode::Unavailable,
                    "sockd closed the connection",
                ));
            }
        };
        let msg = match Message::decode(frame) {
            Ok(msg) => msg,
            Err(e) => return conn.violation(e.to_string()),
        };
        if let Err(what) = dispatch(&conn, msg) {
            return conn.violation(what);
        }
        if conn.ended().is_some() {
            return;
        }
    }
}

/// Handles one message from the server. `Err` is a protocol violation.
/// A channel's end, with its last DATA when it came in a REPLY.
fn close(
    conn: &Conn,
    channel: u32,
    last: Option<(u8, Bytes)>,
    code: ErrorCode,
    value: i64,
    message: String,
) -> Result<(), String> {
    let removed = conn.lock().channels.remove(&channel);
    if let Some(ch) = removed {
        if let Some((stream, data)) = last {
            ch.on_data(stream, data)?;
        }
        ch.on_close(code, value, message);
    }
    Ok(())
}

fn dispatch(conn: &Conn, msg: Message) -> Result<(), String> {
    // Frames for a channel that is not open (e.g. crossing our cancel) are
    // ignored, as docs/PROTOCOL.md says.
    match msg {
        Message::Ping { payload } => {
            let _ = conn.send(Message::Pong { payload });
        }
        Message::Pong { payload } => {
            let mut st = conn.lock();
            if let Some(i) = st.pings.iter().position(|(p, _)| *p == payload) {
                let (_, tx) = st.pings.swap_remove(i);
                let _ = tx.send(());
            }
        }
        Message::Error { code, message } => {
            conn.fail(ClientError::remote(
                code,
                format!("sockd closed the connection: {}", text_or(&message, code)),
            ));
        }
        Message::GoAway { code, message } => {
            conn.lock().going_away = Some(ClientError::remote(
                code,
                format!(
                    "sockd accepts no new operations: {}",
                    text_or(&message, code)
                ),
            ));
        }
        Message::Data {
            channel,
            stream,
            data,
        } => {
            if let Some(ch) = conn.channel(channel) {
                ch.on_data(stream, data)?;
            }
        }
        Message::Eof { channel, stream } => {
            if let Some(ch) = conn.channel(channel) {
                ch.on_eof(stream);
            }
        }
        Message::Credit { channel, bytes } => {
            if let Some(ch) = conn.channel(channel) {
                ch.on_credit(bytes);
            }
        }
        Message::Close {
            channel,
            code,
            value,
            message,
        } => close(conn, channel, None, code, value, message)?,
        // DATA and CLOSE in one frame.
        Message::Reply {
            channel,
            stream,
            data,
            code,
            value,
            message,
        } => close(conn, channel, Some((stream, data)), code, value, message)?,
        other => return Err(format!("unexpected {} after login", describe(&other))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_kind() {
        assert_eq!(
            describe(&Message::Ping {
                payload: Bytes::new()
            }),
            "PING"
        );
        assert_eq!(
            describe(&Message::Eof {
                channel: 1,
                stream: 0
            }),
            "EOF"
        );
    }

    #[allow(dead_code)]
    fn assert_send<T: Send>() {}

    #[test]
    fn handles_are_send() {
        assert_send::<Client>();
        assert_send::<ChannelHandle>();
        assert_send::<super::super::channel::ChannelSender>();
        let _ = super::super::channel::Event::Eof { stream: 0 };
    }
}
