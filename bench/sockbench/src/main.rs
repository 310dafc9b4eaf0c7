//! sockbench: measures a running sockd through the real client library.
//!
//! - `logins`: bare TLS handshakes/s and full logins/s (TCP + TLS + HELLO +
//!   authentication) against the same server and certificate, in one run;
//! - `idle`: the daemon's resident memory per idle authenticated connection;
//! - `calls`: plugin calls/s beside pings/s (the no-plugin path) on 1 and
//!   more connections: an inline command (run on the connection's task)
//!   and a blocking one (run on a call thread), and an OPEN of a command
//!   no plugin serves (the same exchange of frames with no plugin at all).
//!
//! `bench/core.sh` runs them all against a release `sockd --dev`.

use clap::{Parser, Subcommand};
use sockctl::client::{Client, Config, Event, Overrides, Settings};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// sockctl client config (e.g. sockd-dev/client.toml).
    #[arg(long)]
    config: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Bare TLS handshakes/s versus full logins/s.
    Logins {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The daemon's PID: also report its own CPU time per operation.
        #[arg(long)]
        pid: Option<u32>,
        /// Run only this kind of connection (bare or login), for profiling
        /// the daemon's side of one of them with `perf`.
        #[arg(long)]
        only: Option<String>,
    },
    /// Resident memory of the daemon per idle authenticated connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// The daemon's PID (its VmRSS is read from /proc).
        #[arg(long)]
        pid: u32,
    },
    /// Plugin calls/s and pings/s over N connections.
    Calls {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// A trivial command the plugin runs inline (testkit `pong` writes
        /// its argument back, as the daemon answers a PING).
        #[arg(long, default_value = "pong")]
        command: String,
        /// A trivial command on the blocking path (a call thread); "" to skip.
        #[arg(long, default_value = "whoami-blocking")]
        blocking_command: String,
        /// A command no plugin serves: its refusal is a call's OPEN/CLOSE
        /// exchange without any plugin; "" to skip.
        #[arg(long, default_value = "no-such-command")]
        refused_command: String,
        /// The daemon's PID: also report its own CPU time per operation
        /// (steadier than rates when the machine is shared).
        #[arg(long)]
        pid: Option<u32>,
        /// Run only this operation (ping, inline, blocking or refused), for
        /// profiling the daemon's side of one of them with `perf`.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("sockbench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let mut config = Config::load(Some(&args.config)).map_err(|e| e.message().to_string())?;
    config.apply(Overrides::default());
    let settings = Arc::new(config.settings().map_err(|e| e.message().to_string())?);
    match args.what {
        What::Logins {
            seconds,
            concurrency,
            pid,
            only,
        } => logins(&settings, seconds, concurrency, pid, only.as_deref()).await,
        What::Idle { count, pid } => idle(&settings, count, pid).await,
        What::Calls {
            seconds,
            connections,
            command,
            blocking_command,
            refused_command,
            pid,
            only,
        } => {
            calls(
                &settings,
                seconds,
                connections,
                [&command, &blocking_command, &refused_command],
                pid,
                only.as_deref(),
            )
            .await
        }
    }
}

/// CPU time a process has used, in microseconds: the sum of its threads'
/// run times from /proc (nanosecond counters; /proc/PID/stat counts in
/// 10 ms ticks, a few percent of a half-second slice).
fn cpu_micros(pid: u32) -> Result<u64, String> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| format!("pid {pid}: {e}"))?;
    let mut nanos = 0u64;
    for task in tasks.flatten() {
        // A thread that ended since the listing is skipped: its time is
        // lost to the slice, which only idle blocking-pool threads do.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or("bad /proc schedstat")?;
        }
    }
    Ok(nanos / 1000)
}

async fn bare_tls(settings: &Settings) -> Result<(), String> {
    let tls =
        sockctl::client::client_config(&settings.trust).map_err(|e| e.message().to_string())?;
    let name =
        sockctl::client::server_name(&settings.server_name).map_err(|e| e.message().to_string())?;
    let tcp = tokio::net::TcpStream::connect(&settings.server)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 completes the client's side before the server's last flight
    // is processed; a write-and-flush makes the server finish too.
    tokio::io::AsyncWriteExt::shutdown(&mut stream)
        .await
        .map_err(|e| e.to_string())
}

async fn logins(
    settings: &Arc<Settings>,
    seconds: u64,
    concurrency: usize,
    pid: Option<u32>,
    only: Option<&str>,
) -> Result<(), String> {
    let s = settings.clone();
    let bare: Op = Arc::new(move || {
        let s = s.clone();
        Box::pin(async move { bare_tls(&s).await })
    });
    let s = settings.clone();
    let login: Op = Arc::new(move || {
        let s = s.clone();
        Box::pin(async move {
            let client = Client::connect(&s)
                .await
                .map_err(|e| e.message().to_string())?;
            client.close().await;
            Ok(())
        })
    });
    if let Some(only) = only {
        let op = match only {
            "bare" => bare,
            "login" => login,
            other => return Err(format!("--only {other}: not one of bare, login")),
        };
        let m = &interleaved(seconds, concurrency, &[op], pid).await?[0];
        let rate = m.per_sec;
        let cpu = m
            .cpu_per_op
            .map(|c| format!("; daemon CPU {c:.1} us/connection"))
            .unwrap_or_default();
        println!("{only}: {rate:>8.0}/s{cpu}");
        return Ok(());
    }
    // Interleaved, so that both see the same machine.
    let measured = interleaved(seconds, concurrency, &[bare, login], pid).await?;
    let (tls, login) = (measured[0].per_sec, measured[1].per_sec);
    println!(
        "bare TLS 1.3 handshakes: {tls:>8.0}/s  ({concurrency} concurrent, {seconds} s each, interleaved; client and daemon share the machine)"
    );
    println!("TLS + HELLO + login:     {login:>8.0}/s");
    println!(
        "end to end, authentication adds {:.1}% to a handshake",
        (tls / login - 1.0) * 100.0
    );
    if let (Some(t), Some(l)) = (measured[0].cpu_per_op, measured[1].cpu_per_op) {
        println!(
            "daemon CPU per connection: {t:.0} us bare TLS, {l:.0} us with login: authentication adds {:.1}%",
            (l / t - 1.0) * 100.0
        );
    }
    if let Some((median, low, high)) = added_by_round(&measured[0], &measured[1]) {
        println!(
            "  round by round ({} rounds): median {median:+.1}%, quartiles {low:+.1}% to {high:+.1}%",
            measured[0].rounds.len()
        );
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".to_string())
}

async fn idle(settings: &Arc<Settings>, count: usize, pid: u32) -> Result<(), String> {
    // Warm up allocator arenas and runtime threads first.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(
            Client::connect(settings)
                .await
                .map_err(|e| e.message().to_string())?,
        );
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let c = Client::connect(settings)
            .await
            .map_err(|e| format!("connection {i}: {}", e.message()))?;
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
    println!(
        "daemon RSS: {before} KiB before, {after} KiB with {count} idle authenticated connections"
    );
    println!("per idle connection: {:.1} KiB", per / 1024.0);
    for c in clients {
        c.close().await;
    }
    Ok(())
}

/// One call of `command` with no arguments and no input, to its CLOSE
/// with the `expected` code.
/// The argument of every benchmarked call.
const PAYLOAD: u64 = 0x736f_636b_6265_6e63;

async fn call_once(
    client: &Client,
    command: &str,
    expected: sockd_proto::ErrorCode,
) -> Result<(), String> {
    // One 8-byte argument, as a ping carries an 8-byte payload: `pong`
    // writes it back as the daemon answers a PING.
    let payload = bytes::Bytes::copy_from_slice(&PAYLOAD.to_be_bytes());
    let mut ch = client
        .open_without_input(command, [payload])
        .await
        .map_err(|e| e.message().to_string())?;
    while let Some(event) = ch.recv().await {
        if let Event::Closed { code, message, .. } = event {
            if code != expected {
                return Err(format!("call failed: {message}"));
            }
            return Ok(());
        }
    }
    Err("connection lost".into())
}

/// A benchmarked operation, boxed so that different ones share a list.
type Op = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// What [`interleaved`] measured of one operation.
struct Measured {
    per_sec: f64,
    /// Daemon CPU microseconds per operation, given its pid.
    cpu_per_op: Option<f64>,
    /// The same for each round's slice, in order.
    rounds: Vec<f64>,
}

/// Runs each of `ops` for `seconds` in total from `concurrency` tasks, in
/// rounds of one half-second slice each, so that all of them see the same
/// load on a shared machine; returns what each measured.
async fn interleaved(
    seconds: u64,
    concurrency: usize,
    ops: &[Op],
    pid: Option<u32>,
) -> Result<Vec<Measured>, String> {
    const SLICE: Duration = Duration::from_millis(500);
    let mut done = vec![0u64; ops.len()];
    let mut spent = vec![Duration::ZERO; ops.len()];
    let mut cpu = vec![0u64; ops.len()];
    let mut rounds = vec![Vec::new(); ops.len()];
    for _ in 0..(seconds * 2).max(1) {
        for (i, op) in ops.iter().enumerate() {
            let count = Arc::new(AtomicU64::new(0));
            let cpu_before = pid.map(cpu_micros).transpose()?;
            let start = Instant::now();
            let deadline = start + SLICE;
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (op, count) = (op.clone(), count.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        op().await?;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, String>(())
                }));
            }
            for t in tasks {
                t.await.map_err(|e| e.to_string())??;
            }
            let count = count.load(Ordering::Relaxed);
            done[i] += count;
            spent[i] += start.elapsed();
            if let (Some(pid), Some(before)) = (pid, cpu_before) {
                let used = cpu_micros(pid)?.saturating_sub(before);
                cpu[i] += used;
                rounds[i].push(used as f64 / count.max(1) as f64);
            }
        }
    }
    Ok(rounds
        .into_iter()
        .enumerate()
        .map(|(i, rounds)| Measured {
            per_sec: done[i] as f64 / spent[i].as_secs_f64(),
            cpu_per_op: pid.map(|_| cpu[i] as f64 / done[i].max(1) as f64),
            rounds,
        })
        .collect())
}

/// Median and quartiles of what `b` adds to `a`, in percent, round by
/// round: a round that a burst elsewhere on the machine slowed counts once
/// instead of weighing on the total.
fn added_by_round(a: &Measured, b: &Measured) -> Option<(f64, f64, f64)> {
    let mut added: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(a, b)| (b / a - 1.0) * 100.0)
        .collect();
    if added.is_empty() {
        return None;
    }
    added.sort_by(f64::total_cmp);
    let at = |q: f64| added[((added.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.25), at(0.75)))
}

async fn calls(
    settings: &Arc<Settings>,
    seconds: u64,
    connections: usize,
    [command, blocking_command, refused_command]: [&str; 3],
    pid: Option<u32>,
    only: Option<&str>,
) -> Result<(), String> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Arc::new(
            Client::connect(settings)
                .await
                .map_err(|e| e.message().to_string())?,
        ));
    }
    let pool = Arc::new(clients);
    let next = Arc::new(AtomicU64::new(0));
    let pick = {
        let pool = pool.clone();
        move || pool[next.fetch_add(1, Ordering::Relaxed) as usize % pool.len()].clone()
    };
    let p = pick.clone();
    let ping: Op = Arc::new(move || {
        let c = p();
        Box::pin(async move {
            c.ping()
                .await
                .map(|_| ())
                .map_err(|e| e.message().to_string())
        })
    });
    let call_op = |command: &str, expected| -> Op {
        let command: Arc<str> = command.into();
        let p = pick.clone();
        Arc::new(move || {
            let c = p();
            let command = command.clone();
            Box::pin(async move { call_once(&c, &command, expected).await })
        })
    };
    use sockd_proto::ErrorCode as E;
    let mut kinds = vec![("inline", command, E::Ok)];
    if !blocking_command.is_empty() {
        kinds.push(("blocking", blocking_command, E::Ok));
    }
    if !refused_command.is_empty() {
        kinds.push(("refused", refused_command, E::UnknownCommand));
    }
    if let Some(only) = only {
        let op = match kinds.iter().find(|(kind, ..)| *kind == only) {
            Some((_, command, expected)) => call_op(command, *expected),
            None if only == "ping" => ping,
            None => {
                return Err(format!(
                    "--only {only}: not one of ping, inline, blocking, refused (or its command is \"\")"
                ));
            }
        };
        let m = &interleaved(seconds, connections, &[op], pid).await?[0];
        let rate = m.per_sec;
        let cpu = m
            .cpu_per_op
            .map(|c| format!("; daemon CPU {c:.1} us/operation"))
            .unwrap_or_default();
        println!("{connections} connection(s): {only} {rate:>8.0}/s{cpu}");
        return Ok(());
    }
    let mut ops = vec![ping];
    ops.extend(kinds.iter().map(|(_, c, e)| call_op(c, *e)));
    let measured = interleaved(seconds, connections, &ops, pid).await?;
    let (pings, ping_cpu) = (measured[0].per_sec, measured[0].cpu_per_op);
    let lines: Vec<_> = kinds
        .iter()
        .zip(&measured[1..])
        .map(|((kind, command, _), m)| (*kind, *command, (m.per_sec, m.cpu_per_op)))
        .collect();
    for (&(kind, command, (calls, call_cpu)), m) in lines.iter().zip(&measured[1..]) {
        let cpu = match (ping_cpu, call_cpu, added_by_round(&measured[0], m)) {
            (Some(p), Some(c), Some((median, low, high))) => format!(
                "; daemon CPU {p:.1} us/ping, {c:.1} us/call ({:+.1}%; round by round median {median:+.1}%, quartiles {low:+.1}% to {high:+.1}%)",
                (c / p - 1.0) * 100.0
            ),
            _ => String::new(),
        };
        println!(
            "{connections} connection(s): pings {pings:>8.0}/s   {kind} calls ({command}) {calls:>8.0}/s   plugin path costs {:.1}% more{cpu}",
            (pings / calls - 1.0) * 100.0
        );
    }
    // What the plugin itself adds: an inline call beside the same exchange
    // of frames refused before any plugin runs.
    if let (Some(inline), Some(refused)) = (
        lines.iter().find(|l| l.0 == "inline"),
        lines.iter().find(|l| l.0 == "refused"),
    ) {
        let cpu = match (inline.2.1, refused.2.1) {
            (Some(i), Some(r)) => format!(", daemon CPU {:+.1}%", (i / r - 1.0) * 100.0),
            _ => String::new(),
        };
        println!(
            "{connections} connection(s): inline call beside a refused OPEN (no plugin): {:+.1}% time per call{cpu}",
            (refused.2.0 / inline.2.0 - 1.0) * 100.0
        );
    }
    Ok(())
}
