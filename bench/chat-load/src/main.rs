//! chat-load: the load generator of bench/chat.sh. It drives either sockd's
//! chat plugin (through the `sockctl` client library) or an MQTT broker
//! (a minimal MQTT 3.1.1 client, QoS 0, optionally over TLS) through the
//! same three measurements and prints one result line per measurement:
//!
//! - `one2one N`: N messages from one sender to one receiver, as fast as
//!   the sender can push them; messages/s counted at the receiver;
//! - `fanout N MEMBERS`: N messages into a room (MQTT: a topic) with
//!   MEMBERS receivers; deliveries/s summed over the receivers;
//! - `latency N IDLE`: IDLE extra clients connected and listening, then N
//!   messages one at a time, each sent when the previous one arrived;
//!   p50/p99 of send-to-receive time.
//!
//! Usage:
//!   chat-load sockd CLIENT_TOML KEY_DIR TEST ARGS...   (users demo, r0.., idle; keys KEY_DIR/NAME.key)
//!   chat-load mqtt HOST:PORT tls|plain TEST ARGS...

use bytes::{Buf, BufMut, BytesMut};
use sockctl::client::{ChannelHandle, Client, Config, Event, Overrides};
use sockctl::cmd::chat::session::{Incoming, Session};
use sockd_proto::message::stream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Nanoseconds since the process started: the clock in every message.
fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Latency is measured one message at a time: a one-thread client adds
    // no cross-thread wake-ups of its own to either server's figures. The
    // throughput tests spread their receivers over both cores.
    let runtime = if args.get(4).map(String::as_str) == Some("latency") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("sockd") if args.len() >= 5 => sockd_main(&args[2..]).await,
            Some("mqtt") if args.len() >= 5 => mqtt_main(&args[2..]).await,
            _ => Err("usage: chat-load sockd CLIENT_TOML KEY_DIR TEST ARGS... | mqtt HOST:PORT tls|plain TEST ARGS...".into()),
        }
    });
    if let Err(e) = result {
        eprintln!("chat-load: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], i: usize, default: u64) -> Result<u64, Error> {
    match args.get(i) {
        Some(a) => Ok(a.parse()?),
        None => Ok(default),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report_latency(label: &str, mut samples: Vec<f64>, idle: u64) {
    samples.sort_by(f64::total_cmp);
    println!(
        "{label} latency: {} samples with {idle} idle clients: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}

// ---------------------------------------------------------------- sockd

struct Sockd {
    config: PathBuf,
    keys: PathBuf,
}

impl Sockd {
    async fn connect(&self, user: &str) -> Result<Client, Error> {
        let mut config = Config::load(Some(&self.config))?;
        config.apply(Overrides {
            user: Some(user.to_string()),
            key_file: Some(self.keys.join(format!("{user}.key"))),
            ..Overrides::default()
        });
        Ok(Client::connect(&config.settings()?).await?)
    }
}

/// Runs a one-shot `chat ARGS` and waits for its end.
async fn chat_call(client: &Client, args: &[&str]) -> Result<(), Error> {
    let mut ch = client
        .open_without_input("chat", args.iter().map(|a| a.as_bytes().to_vec()))
        .await?;
    while let Some(event) = ch.recv().await {
        if let Event::Closed { code, message, .. } = event {
            if code != sockd_proto::ErrorCode::Ok {
                return Err(format!("chat {args:?}: {message}").into());
            }
            break;
        }
    }
    Ok(())
}

/// A listening receiver (sockctl's own chat session: it orders, drops
/// duplicates and asks for skipped deliveries again), caught up.
async fn listen(client: &Client) -> Result<Session, Error> {
    let mut session = Session::open(client, true).await?;
    loop {
        match session.next().await {
            Some(Incoming::CaughtUp) => return Ok(session),
            Some(Incoming::Message(d)) => session.shown(&d),
            Some(Incoming::Closed(r)) => return Err(format!("listen: {r:?}").into()),
            None => return Err("listen: channel ended".into()),
            Some(_) => {}
        }
    }
}

/// Reads deliveries until `count` messages arrived; calls `each(text)`;
/// acknowledges every 1000 and at the end.
async fn receive(
    session: &mut Session,
    count: u64,
    mut each: impl FnMut(&str),
) -> Result<(), Error> {
    let mut got = 0;
    while got < count {
        match session.next().await {
            Some(Incoming::Message(d)) => {
                session.shown(&d);
                if d.kind == "msg" {
                    got += 1;
                    each(&d.text);
                    if got % 1000 == 0 {
                        session.ack().await?;
                    }
                }
            }
            Some(Incoming::Closed(r)) => return Err(format!("receiver: {r:?}").into()),
            None => return Err("receiver: channel ended".into()),
            Some(_) => {}
        }
    }
    session.ack().await?;
    Ok(())
}

/// A `send-lines TARGET` channel: messages go out as lines on stream 0.
async fn sender(client: &Client, target: &str) -> Result<ChannelHandle, Error> {
    Ok(client
        .open("chat", [b"send-lines".to_vec(), target.as_bytes().to_vec()])
        .await?)
}

/// Drains the sender's result lines in the background (else its window fills).
fn drain(mut ch: ChannelHandle) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        while let Some(event) = ch.recv().await {
            if let Event::Closed { code, message, .. } = event {
                if code != sockd_proto::ErrorCode::Ok {
                    return Err(format!("sender: {message}").into());
                }
                break;
            }
        }
        Ok(())
    })
}

async fn sockd_main(args: &[String]) -> Result<(), Error> {
    let s = Sockd {
        config: PathBuf::from(&args[0]),
        keys: PathBuf::from(&args[1]),
    };
    let test = args[2].as_str();
    let rest = &args[3..];
    let start = Instant::now();
    match test {
        "one2one" => {
            let n = arg(rest, 0, 100_000)?;
            let (tx_client, rx_client) = (s.connect("demo").await?, s.connect("r0").await?);
            let mut rx = listen(&rx_client).await?;
            let tx = sender(&tx_client, "r0").await?;
            let t0 = Instant::now();
            let feeder = {
                let sender = tx.sender();
                tokio::spawn(async move {
                    let mut batch = String::new();
                    for i in 0..n {
                        batch.push_str(&format!("m{i}\n"));
                        if batch.len() > 32 * 1024 {
                            sender
                                .send(stream::MAIN, std::mem::take(&mut batch).into_bytes())
                                .await?;
                        }
                    }
                    sender.send(stream::MAIN, batch.into_bytes()).await?;
                    sender.send_eof(stream::MAIN).await?;
                    Ok::<(), Error>(())
                })
            };
            let drained = drain(tx);
            receive(&mut rx, n, |_| {}).await?;
            let secs = t0.elapsed().as_secs_f64();
            feeder.await??;
            drained.await??;
            println!(
                "sockd one2one: {n} messages in {secs:.2} s = {:.0} msg/s",
                n as f64 / secs
            );
        }
        "fanout" => {
            let n = arg(rest, 0, 10_000)?;
            let members = arg(rest, 1, 100)?;
            let tx_client = s.connect("demo").await?;
            chat_call(&tx_client, &["join", "#bench"]).await?;
            let mut receivers = Vec::new();
            let mut clients = Vec::new();
            for i in 0..members {
                let c = s.connect(&format!("r{i}")).await?;
                chat_call(&c, &["join", "#bench"]).await?;
                receivers.push(listen(&c).await?);
                clients.push(c);
            }
            let tx = sender(&tx_client, "#bench").await?;
            let t0 = Instant::now();
            let tasks: Vec<_> = receivers
                .into_iter()
                .map(|mut rx| tokio::spawn(async move { receive(&mut rx, n, |_| {}).await }))
                .collect();
            let mut batch = String::new();
            for i in 0..n {
                batch.push_str(&format!("f{i}\n"));
                if batch.len() > 32 * 1024 {
                    tx.send(stream::MAIN, std::mem::take(&mut batch).into_bytes())
                        .await?;
                }
            }
            tx.send(stream::MAIN, batch.into_bytes()).await?;
            tx.send_eof(stream::MAIN).await?;
            let drained = drain(tx);
            for t in tasks {
                t.await??;
            }
            let secs = t0.elapsed().as_secs_f64();
            drained.await??;
            let total = n * members;
            println!(
                "sockd fanout: {n} messages x {members} members = {total} deliveries in {secs:.2} s = {:.0} deliveries/s",
                total as f64 / secs
            );
        }
        "latency" => {
            let n = arg(rest, 0, 2000)?;
            let idle = arg(rest, 1, 1000)?;
            let mut idle_clients = Vec::new();
            for _ in 0..idle {
                let c = s.connect("idle").await?;
                let ch = listen(&c).await?;
                idle_clients.push((c, ch));
            }
            let (tx_client, rx_client) = (s.connect("demo").await?, s.connect("r0").await?);
            let mut rx = listen(&rx_client).await?;
            // Its result lines (each confirms a commit) are drained in the
            // background: unread, they would fill the channel's window.
            let channel = sender(&tx_client, "r0").await?;
            let tx = channel.sender();
            let drained = drain(channel);
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let sent = now_ns(start);
                tx.send(stream::MAIN, format!("{sent}\n").into_bytes())
                    .await?;
                // Timed on arrival, before the acknowledgement goes out.
                let mut latency = f64::NAN;
                receive(&mut rx, 1, |text| {
                    let sent: u64 = text.parse().unwrap_or(0);
                    latency = (now_ns(start) - sent) as f64 / 1e6;
                })
                .await?;
                samples.push(latency);
            }
            tx.send_eof(stream::MAIN).await?;
            drained.await??;
            report_latency("sockd", samples, idle);
            drop(idle_clients);
        }
        other => return Err(format!("unknown test {other}").into()),
    }
    Ok(())
}

// ---------------------------------------------------------------- MQTT

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Mqtt {
    addr: String,
    tls: bool,
}

static CLIENT_ID: AtomicU64 = AtomicU64::new(0);

/// An MQTT connection split into a buffered writer and a packet reader.
struct MqttConn {
    reader: tokio::io::ReadHalf<Box<dyn Io>>,
    writer: BufWriter<tokio::io::WriteHalf<Box<dyn Io>>>,
    buf: BytesMut,
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn packet(kind: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(kind);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_slice(body);
    out
}

impl Mqtt {
    async fn connect(&self) -> Result<MqttConn, Error> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = if self.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny))
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            Box::new(
                connector
                    .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
                    .await?,
            )
        } else {
            Box::new(tcp)
        };
        let (reader, writer) = tokio::io::split(io);
        let mut conn = MqttConn {
            reader,
            writer: BufWriter::with_capacity(64 * 1024, writer),
            buf: BytesMut::new(),
        };
        let id = format!(
            "chat-load-{}-{}",
            std::process::id(),
            CLIENT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let mut body = BytesMut::new();
        put_str(&mut body, b"MQTT");
        body.put_u8(4); // protocol level 3.1.1
        body.put_u8(0x02); // clean session
        body.put_u16(0); // no keep-alive
        put_str(&mut body, id.as_bytes());
        conn.writer.write_all(&packet(0x10, &body)).await?;
        conn.writer.flush().await?;
        let (kind, _) = conn.next_packet().await?;
        if kind >> 4 != 2 {
            return Err(format!("expected CONNACK, got packet type {}", kind >> 4).into());
        }
        Ok(conn)
    }
}

impl MqttConn {
    async fn next_packet(&mut self) -> Result<(u8, BytesMut), Error> {
        loop {
            if let Some((kind, len, header)) = parse_header(&self.buf)
                && self.buf.len() >= header + len
            {
                self.buf.advance(header);
                return Ok((kind, self.buf.split_to(len)));
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Err("MQTT connection closed".into());
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), Error> {
        let mut body = BytesMut::new();
        body.put_u16(1);
        put_str(&mut body, topic.as_bytes());
        body.put_u8(0);
        self.writer.write_all(&packet(0x82, &body)).await?;
        self.writer.flush().await?;
        let (kind, _) = self.next_packet().await?;
        if kind >> 4 != 9 {
            return Err("expected SUBACK".into());
        }
        Ok(())
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], flush: bool) -> Result<(), Error> {
        let mut body = BytesMut::with_capacity(topic.len() + payload.len() + 2);
        put_str(&mut body, topic.as_bytes());
        body.put_slice(payload);
        self.writer.write_all(&packet(0x30, &body)).await?;
        if flush {
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// The payload of the next PUBLISH.
    async fn next_message(&mut self) -> Result<BytesMut, Error> {
        loop {
            let (kind, mut body) = self.next_packet().await?;
            if kind >> 4 == 3 {
                let topic_len = body.get_u16() as usize;
                body.advance(topic_len);
                return Ok(body);
            }
        }
    }
}

/// (first byte, remaining length, header length) once complete.
fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let kind = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((kind, len, 2 + i));
        }
    }
    None
}

async fn mqtt_main(args: &[String]) -> Result<(), Error> {
    let m = Mqtt {
        addr: args[0].clone(),
        tls: args[1] == "tls",
    };
    let label = if m.tls {
        "mosquitto-tls"
    } else {
        "mosquitto-plain"
    };
    let test = args[2].as_str();
    let rest = &args[3..];
    let start = Instant::now();
    // A missing QoS 0 message would stall a run: give up after this long.
    let limit = Duration::from_secs(120);
    match test {
        "one2one" => {
            let n = arg(rest, 0, 100_000)?;
            let mut rx = m.connect().await?;
            rx.subscribe("bench/one").await?;
            let mut tx = m.connect().await?;
            let t0 = Instant::now();
            let pubber = tokio::spawn(async move {
                for i in 0..n {
                    tx.publish("bench/one", format!("m{i}").as_bytes(), false)
                        .await?;
                }
                tx.writer.flush().await?;
                Ok::<_, Error>(tx)
            });
            let mut got = 0;
            let counted = tokio::time::timeout(limit, async {
                while got < n {
                    rx.next_message().await?;
                    got += 1;
                }
                Ok::<(), Error>(())
            })
            .await;
            let secs = t0.elapsed().as_secs_f64();
            let _tx = pubber.await??;
            if counted.is_err() {
                println!("{label} one2one: only {got} of {n} messages arrived (QoS 0 drops)");
            }
            println!(
                "{label} one2one: {got} messages in {secs:.2} s = {:.0} msg/s",
                got as f64 / secs
            );
        }
        "fanout" => {
            let n = arg(rest, 0, 10_000)?;
            let members = arg(rest, 1, 100)?;
            let mut tasks = Vec::new();
            let got = Arc::new(AtomicU64::new(0));
            let mut subs = Vec::new();
            for _ in 0..members {
                let mut rx = m.connect().await?;
                rx.subscribe("bench/room").await?;
                subs.push(rx);
            }
            let mut tx = m.connect().await?;
            let t0 = Instant::now();
            for mut rx in subs {
                let got = got.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n {
                        rx.next_message().await?;
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), Error>(())
                }));
            }
            for i in 0..n {
                tx.publish("bench/room", format!("f{i}").as_bytes(), false)
                    .await?;
            }
            tx.writer.flush().await?;
            let all = tokio::time::timeout(limit, async {
                for t in tasks {
                    t.await??;
                }
                Ok::<(), Error>(())
            })
            .await;
            let secs = t0.elapsed().as_secs_f64();
            let total = got.load(Ordering::Relaxed);
            if all.is_err() {
                println!(
                    "{label} fanout: only {total} of {} deliveries arrived (QoS 0 drops)",
                    n * members
                );
            }
            println!(
                "{label} fanout: {n} messages x {members} subscribers = {total} deliveries in {secs:.2} s = {:.0} deliveries/s",
                total as f64 / secs
            );
        }
        "latency" => {
            let n = arg(rest, 0, 2000)?;
            let idle = arg(rest, 1, 1000)?;
            let mut idle_clients = Vec::new();
            for i in 0..idle {
                let mut c = m.connect().await?;
                c.subscribe(&format!("bench/idle/{i}")).await?;
                idle_clients.push(c);
            }
            let mut rx = m.connect().await?;
            rx.subscribe("bench/lat").await?;
            let mut tx = m.connect().await?;
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let sent = now_ns(start);
                tx.publish("bench/lat", sent.to_string().as_bytes(), true)
                    .await?;
                let payload =
                    tokio::time::timeout(Duration::from_secs(10), rx.next_message()).await??;
                let got: u64 = std::str::from_utf8(&payload)?.parse()?;
                samples.push((now_ns(start) - got) as f64 / 1e6);
            }
            report_latency(label, samples, idle);
            drop(idle_clients);
        }
        other => return Err(format!("unknown test {other}").into()),
    }
    Ok(())
}
