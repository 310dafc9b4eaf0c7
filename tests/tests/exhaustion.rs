//! Resource exhaustion against the real daemon: its open-file limit, slow
//! clients holding connections (slowloris), a flood of handshakes, and
//! clients that never read what they asked for. In each case the daemon
//! says what happened, the clients at fault are dropped or stalled, and
//! authenticated users go on being served.
//!
//! Limits that exist already (connection counts, idle and login timeouts,
//! a client granting no credit) are tested in core.rs, auth_protocol.rs
//! and plugins.rs.

use bytes::BytesMut;
use sockd_e2e::raw::{RawClient, demo_secret};
use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, wait_until};
use sockd_proto::frame::DEFAULT_MAX_FRAME;
use sockd_proto::message::PROTOCOL_VERSION;
use sockd_proto::{FrameCodec, Hello, Message};
use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

/// Generous bound for anything that should happen "soon".
const LIMIT: Duration = Duration::from_secs(30);
/// How much the daemon may grow while a client does not read (its
/// outbound queue is bounded at 4 MiB per connection; the rest is slack
/// for buffers and the allocator).
const GROWTH_BOUND_KIB: u64 = 48 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The harness config with room for many connections from 127.0.0.1
/// (all test clients come from there) and `extra` appended.
fn config(extra: &str) -> String {
    let server = TEST_CONFIG.replace(
        "shutdown_grace_secs = 10",
        "shutdown_grace_secs = 10\nmax_connections_per_source = 1024",
    );
    format!("{server}\n{extra}\n")
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn open_descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("daemon descriptors")
        .count()
}

/// A raw client logged in as demo.
async fn logged_in(d: &Daemon) -> RawClient {
    let mut c = RawClient::connect_hello(d.addr).await;
    match c.login("demo", &demo_secret(d.dir.path())).await {
        Some(Message::AuthOk { .. }) => c,
        other => panic!("login refused: {other:?}"),
    }
}

/// A logged-in raw client, or `None` if the daemon would not have it
/// (the raw client panics on failure: that panic stays in its task).
async fn try_logged_in(addr: std::net::SocketAddr, dir: std::path::PathBuf) -> Option<RawClient> {
    let attempt = tokio::spawn(async move {
        let mut c = RawClient::connect_hello(addr).await;
        match c.login("demo", &demo_secret(&dir)).await {
            Some(Message::AuthOk { .. }) => Some(c),
            _ => None,
        }
    });
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(c)) => c,
        _ => None,
    }
}

async fn assert_ping(c: &mut RawClient, what: &str) {
    let payload = bytes::Bytes::from(what.to_string());
    c.send(Message::Ping {
        payload: payload.clone(),
    })
    .await;
    match tokio::time::timeout(LIMIT, c.recv()).await {
        Ok(Some(Message::Pong { payload: p })) if p == payload => {}
        other => panic!("{what}: no PONG: {other:?}"),
    }
}

fn log_lines(d: &Daemon, needle: &str) -> usize {
    d.log_text().lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn at_the_open_file_limit_new_connections_are_refused_and_sessions_go_on() {
    let d = Daemon::start();
    let pid = d.pid();
    rt().block_on(async {
        let mut session = logged_in(&d).await;
        // A few descriptors to spare, then none.
        let limit = open_descriptors(pid) + 4;
        let set = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                &format!("--nofile={limit}:{limit}"),
            ])
            .output()
            .expect("run prlimit (util-linux)");
        assert!(set.status.success(), "prlimit: {}", set.stderr_text());

        let mut held = Vec::new();
        let mut refused = 0;
        while refused < 10 {
            match try_logged_in(d.addr, d.dir.path().to_path_buf()).await {
                Some(c) => held.push(c),
                None => refused += 1,
            }
            assert!(
                held.len() < 50,
                "{limit} descriptors, yet {} sessions",
                held.len()
            );
        }
        let refusal = d.run(&["ping"]);
        assert_ne!(refusal.code(), 0, "a new login at the limit worked");
        assert!(
            refusal.stderr_text().contains("the server refused it"),
            "the refusal does not say what happened: {}",
            refusal.stderr_text()
        );

        let needle = format!("too many open files (limit {limit}): refusing new connections");
        assert!(
            wait_until(LIMIT, || log_lines(&d, &needle) > 0),
            "no clear log line {needle:?}:\n{}",
            d.log_text()
        );
        // Once, not once per refused connection.
        let reports = log_lines(&d, "too many open files");
        assert!(
            reports < refused,
            "{reports} lines for {refused} refusals:\n{}",
            d.log_text()
        );
        // The sessions that were there are served.
        assert_ping(&mut session, "the first session").await;
        if let Some(c) = held.last_mut() {
            assert_ping(c, "the last session admitted").await;
        }

        drop(held);
        assert!(
            wait_until(LIMIT, || d.run(&["ping"]).code() == 0),
            "logins did not work again once descriptors were free:\n{}",
            d.log_text()
        );
        assert!(
            log_lines(&d, "accepting connections again") > 0,
            "{}",
            d.log_text()
        );
        assert_ping(&mut session, "the first session, after").await;
    });
}

/// What a slow client saw.
#[derive(Debug, PartialEq, Eq)]
enum Slow {
    Dropped,
    StillOpen,
}

/// Writes `bytes` one at a time, `every` apart, until the daemon closes
/// the connection (or `LIMIT` passes).
async fn drip<S>(stream: S, bytes: Vec<u8>, every: Duration) -> Slow
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(every);
    let mut next = bytes.into_iter();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = read.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Slow::Dropped,
                // An alert or an ERROR frame: the close follows.
                Ok(_) => {}
            },
            _ = tick.tick() => {
                let Some(b) = next.next() else { return Slow::StillOpen };
                if write.write_all(&[b]).await.is_err() || write.flush().await.is_err() {
                    return Slow::Dropped;
                }
            }
            () = tokio::time::sleep_until(deadline) => return Slow::StillOpen,
        }
    }
}

/// The start of a TLS ClientHello record announcing 512 bytes.
fn client_hello_start() -> Vec<u8> {
    let mut bytes = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    bytes.resize(400, 0x2a);
    bytes
}

/// A HELLO frame, as bytes on the wire.
fn hello_frame() -> Vec<u8> {
    let mut buf = BytesMut::new();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        max_frame: DEFAULT_MAX_FRAME,
        window: 1 << 20,
        software: "slowloris".repeat(20),
        identity: String::new(),
        capabilities: vec![],
    });
    FrameCodec::new(DEFAULT_MAX_FRAME)
        .encode(hello.encode(), &mut buf)
        .expect("encode HELLO");
    buf.to_vec()
}

#[test]
fn slowloris_connections_are_dropped_at_the_login_deadline_and_logins_go_on() {
    // `[auth] timeout_secs` bounds the TLS handshake and the login
    // together, from the accept: a byte now and then does not extend it.
    let d = Daemon::start_with(Options {
        config: Some(config("").replace("timeout_secs = 10", "timeout_secs = 2")),
        ..Options::default()
    });
    let rt = rt();
    let connected = Arc::new(AtomicUsize::new(0));
    let every = Duration::from_millis(250);
    let mut slow = Vec::new();
    for i in 0..60 {
        let (addr, connected) = (d.addr, connected.clone());
        slow.push(rt.spawn(async move {
            if i % 2 == 0 {
                // In the TLS handshake.
                let tcp = TcpStream::connect(addr).await.expect("connect");
                connected.fetch_add(1, Ordering::Relaxed);
                drip(tcp, client_hello_start(), every).await
            } else {
                // TLS done, HELLO one byte at a time.
                let tls = sockd_e2e::raw::tls_connect(addr).await;
                connected.fetch_add(1, Ordering::Relaxed);
                drip(tls, hello_frame(), every).await
            }
        }));
    }
    assert!(
        wait_until(LIMIT, || connected.load(Ordering::Relaxed) == 60),
        "the slow clients could not connect"
    );
    // While they drip, a real user logs in and is served.
    let out = d.run(&["ping"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let out = d.run(&["call", "whoami"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    for (i, task) in slow.into_iter().enumerate() {
        let seen = rt.block_on(task).expect("slow client task");
        assert_eq!(
            seen,
            Slow::Dropped,
            "slow client {i} still holds its connection after {} s",
            LIMIT.as_secs()
        );
    }
    let log = d.log_text();
    assert!(log.contains("TLS handshake timed out"), "{log}");
    assert!(log.contains("not authenticated in time"), "{log}");
    let out = d.run(&["ping"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
}

#[test]
fn a_handshake_flood_does_not_stop_logins() {
    let d = Daemon::start_with(Options {
        config: Some(config("")),
        ..Options::default()
    });
    let rt = rt();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..16u64 {
        let (addr, stop, attempts) = (d.addr, stop.clone(), attempts.clone());
        flood.push(rt.spawn(async move {
            let mut rng = i;
            while !stop.load(Ordering::Relaxed) {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match rng >> 62 {
                    // Connect and go away.
                    0 => drop(TcpStream::connect(addr).await.expect("connect")),
                    // Half a ClientHello, then go away.
                    1 => {
                        let mut tcp = TcpStream::connect(addr).await.expect("connect");
                        let _ = tcp.write_all(&client_hello_start()[..200]).await;
                    }
                    // A full handshake, abandoned before HELLO.
                    _ => drop(sockd_e2e::raw::tls_connect(addr).await),
                }
                attempts.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    assert!(
        wait_until(LIMIT, || attempts.load(Ordering::Relaxed) >= 100),
        "the flood did not get going"
    );
    for _ in 0..5 {
        let out = d.run(&["ping"]);
        assert_eq!(
            out.code(),
            0,
            "login during the flood: {}",
            out.stderr_text()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        rt.block_on(task)
            .expect("a flood task failed: the daemon refused it");
    }
    assert!(attempts.load(Ordering::Relaxed) >= 100);
}

/// Samples the daemon's RSS for a while; fails as soon as it has grown
/// past the bound (so a leak cannot take the machine's memory).
fn assert_flat(d: &Daemon, before: u64, what: &str) {
    let mut peak = before;
    for _ in 0..30 {
        peak = peak.max(rss_kib(d.pid()));
        assert!(
            peak - before < GROWTH_BOUND_KIB,
            "{what}: the daemon grew from {before} KiB to {peak} KiB"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_exec_whose_output_is_never_read_leaves_the_daemon_flat() {
    let d = Daemon::start_with(Options {
        config: Some(config(
            "[plugins.exec]\nfile = \"libsockd_exec.so\"\n[plugins.exec.users.demo]\nallow = [\"yes\"]\n",
        )),
        ..Options::default()
    });
    let before = rss_kib(d.pid());
    // sockctl's stdout is a pipe nobody reads: it fills, sockctl stops
    // reading the channel, the daemon's window fills, `yes` blocks.
    let mut stalled = d
        .sockctl()
        .args(["exec", "--", "yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sockctl exec");
    assert!(
        wait_until(LIMIT, || d.log_text().contains("session started")),
        "the exec did not start"
    );
    assert_flat(&d, before, "sockctl exec -- yes, never read");
    let out = d.run(&["call", "whoami"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(
        stalled.try_wait().expect("sockctl").is_none(),
        "sockctl should be waiting for its reader"
    );
    let _ = stalled.kill();
    let _ = stalled.wait();
    let mut rest = Vec::new();
    let _ = stalled.stdout.take().map(|mut o| o.read_to_end(&mut rest));
}

#[test]
fn a_client_granting_a_huge_window_that_never_reads_leaves_the_daemon_flat() {
    let d = Daemon::start();
    rt().block_on(async {
        // Credit is the client's to give: 4 GiB per channel. Without a
        // bound of its own, the daemon would queue all the floods write.
        let mut c = RawClient::connect(d.addr).await;
        c.send(Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            max_frame: DEFAULT_MAX_FRAME,
            window: u32::MAX,
            software: "never-reads".into(),
            identity: String::new(),
            capabilities: vec![],
        }))
        .await;
        assert!(matches!(c.recv().await, Some(Message::Hello(_))));
        assert!(matches!(
            c.login("demo", &demo_secret(d.dir.path())).await,
            Some(Message::AuthOk { .. })
        ));
        let before = rss_kib(d.pid());
        for channel in 1..=4 {
            c.send(Message::Open {
                channel,
                command: "flood".into(),
                args: vec![],
            })
            .await;
        }
        // And 256 KiB PINGs whose PONGs it never reads: the daemon must
        // stop reading them rather than queue the answers (then sending
        // blocks here, once the TCP buffers are full).
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                c.send(Message::Ping {
                    payload: bytes::Bytes::from(vec![7u8; 256 * 1024]),
                })
                .await;
            }
        })
        .await;
        tokio::task::block_in_place(|| {
            assert_flat(&d, before, "4 floods and PINGs, never read");
            let out = d.run(&["call", "whoami"]);
            assert_eq!(out.code(), 0, "{}", out.stderr_text());
        });
        let started = Instant::now();
        drop(c);
        // The daemon lets go of the session once the client is gone.
        assert!(
            wait_until(LIMIT, || {
                let out = d.run(&["sessions", "--json"]);
                !out.stdout_text().contains("flood")
            }),
            "the flood session outlived its client by {:?}",
            started.elapsed()
        );
    });
}

/// glibc keeps what a busy spell freed in its arenas; once no operation
/// has started for `release_memory_after_secs`, the daemon gives it back,
/// once per quiet spell.
#[test]
fn freed_memory_is_given_back_once_the_daemon_is_quiet() {
    const RELEASED: &str = "freed memory given back to the system";
    let d = Daemon::start_with(Options {
        config: Some(config("").replace(
            "shutdown_grace_secs = 10",
            "shutdown_grace_secs = 10\nrelease_memory_after_secs = 1",
        )),
        ..Default::default()
    });
    // Less than a pipe holds: run_with_input writes it all before reading.
    let input = vec![b'x'; 32 << 10];
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let out = d.run_with_input(&["call", "--stdin", "echo"], &input);
                assert_eq!(out.code(), 0, "{}", out.stderr_text());
                assert_eq!(out.stdout.len(), input.len());
            });
        }
    });
    assert!(
        wait_until(LIMIT, || log_lines(&d, RELEASED) == 1),
        "no release after the calls:\n{}",
        d.log_text()
    );
    let line = d
        .log_text()
        .lines()
        .find(|l| l.contains(RELEASED))
        .map(str::to_string)
        .unwrap_or_default();
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    assert!(field("rss_after_kib") <= field("rss_before_kib"), "{line}");
    assert_eq!(field("operations"), 4, "{line}");
    // Another spell, another release; quiet alone releases nothing more.
    let out = d.run(&["call", "whoami"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    assert!(
        wait_until(LIMIT, || log_lines(&d, RELEASED) == 2),
        "no release after the second spell:\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains("operations=5"), "{}", d.log_text());
}
