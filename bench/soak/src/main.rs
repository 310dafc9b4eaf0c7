//! sockd-soak: a soak test for a running sockd. N clients, each with a
//! user of its own, run a random mix of checked operations at once for a
//! bounded time on one or more connections:
//!
//! - [`files`]: puts of random data of random sizes and gets of them back,
//!   every transfer checked by its BLAKE3 hash;
//! - [`exec`]: `echo`, `cat` of random stdin and `false`, output and exit
//!   status checked;
//! - [`chat`]: direct messages around a ring of clients, every delivery
//!   checked for sender, order, loss and duplicates.
//!
//! It reports operations/s and p50/p99 latency per kind, every error (the
//! first few verbatim) and, with `--pid`, the daemon's resident memory at
//! the start, after a warm-up, at its maximum and at the end. The exit
//! status is 0 only with no error and the memory growth within
//! `--max-growth`. `bench/soak.sh` starts a daemon configured for it;
//! tests/tests/soak.rs runs a short version in CI.

mod chat;
mod exec;
mod files;
mod process;
mod setup;
mod stats;
mod worker;

use clap::Parser;
use process::{Sampler, mib};
use sockctl::client::ClientError;
use stats::{Errors, Stats};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use worker::{Mix, Shared, Worker};

/// Exit status for a failed soak (errors, memory growth).
const FAILED: u8 = 1;

#[derive(Parser)]
#[command(
    about = "Soak test for a running sockd: N clients run a checked mix of file transfers, \
             exec and chat for a bounded time",
    after_help = "The daemon must allow the soak users to run echo, cat and false \
                  ([plugins.exec.default] allow = [\"echo\", \"cat\", \"false\"]), accept as many \
                  connections from one address as there are clients \
                  ([server] max_connections_per_source), and let each send more than 20 chat \
                  messages/s ([plugins.chat] rate_per_sec, burst). bench/soak.sh writes such a config."
)]
struct Args {
    /// sockctl client config with the server, its pin and the control socket (`sockd --dev DIR` writes DIR/client.toml)
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Connect to HOST:PORT instead of the config's server
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// The daemon's control socket, to create the users (default: the config's `socket`)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Clients at once, each with its own user and connection
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// How long the load runs: 90, 90s, 10m, 1h
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of every random choice and byte (default: from the clock; printed either way)
    #[arg(long)]
    seed: Option<u64>,
    /// The daemon's process id: report its resident memory (VmRSS) and check its growth
    #[arg(long)]
    pid: Option<u32>,
    /// Fail if the daemon's RSS at the end of the load exceeds its RSS after the warm-up by more than this (MiB)
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    max_growth: u64,
    /// Load before the memory baseline is taken (default: a tenth of --duration, at most 60 s)
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Largest upload in bytes; sizes spread evenly over the orders of magnitude from 0
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    max_size: u64,
    /// Relative weights of the operations
    #[arg(long, default_value = "put=2,get=2,exec=3,chat=3")]
    mix: Mix,
    /// The users are PREFIX0, PREFIX1, ...: created, or replaced with new keys
    #[arg(long, value_name = "PREFIX", default_value = "soak")]
    user_prefix: String,
    /// Logins in flight at once while the clients connect
    #[arg(long, value_name = "N", default_value_t = 16)]
    connect_at_once: usize,
    /// After the clients have gone, wait this long and read the daemon's RSS once more (idle plugin-call threads exit after 30 s)
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    settle: Duration,
    /// Seconds between progress lines on stderr (0: none)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    progress: u64,
}

/// `90`, `90s`, `10m`, `1h`, `1.5m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90s, 10m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{s:?}: not a valid duration"))
}

/// A client error as the soak reports it.
pub fn fail(e: ClientError) -> String {
    e.message().to_string()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sockd-soak: cannot start the async runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(soak(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(FAILED),
        Err(e) => {
            eprintln!("sockd-soak: {e}");
            ExitCode::from(FAILED)
        }
    }
}

/// Memory at the moments the report names, in KiB.
#[derive(Default)]
struct Memory {
    start: u64,
    baseline: u64,
    end: u64,
    after: u64,
    /// After --settle, if given.
    settled: Option<u64>,
    max: u64,
}

/// CPU seconds used during the load by the daemon (with --pid) and by
/// the soak itself.
#[derive(Default)]
struct Cpu {
    daemon: Option<f64>,
    soak: f64,
}

/// CPU seconds so far of the daemon and of this process.
fn cpu_now(pid: Option<u32>) -> Result<(Option<f64>, f64), String> {
    let daemon = pid.map(|p| process::cpu_seconds(Some(p))).transpose()?;
    Ok((daemon, process::cpu_seconds(None)?))
}

/// Runs the soak; Ok(true) if it passed.
async fn soak(args: Args) -> Result<bool, String> {
    let endpoint = setup::Endpoint::load(&args.config, args.addr.clone(), args.socket.clone())?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.duration / 10).min(Duration::from_secs(60)))
        .min(args.duration);
    let token = format!("{seed:x}-{}", std::process::id());
    println!(
        "sockd-soak: {} clients against {} for {} s (warm-up {} s), mix {}, uploads up to {} bytes, seed {seed}",
        args.clients,
        endpoint.server(),
        args.duration.as_secs_f64(),
        warmup.as_secs_f64(),
        args.mix,
        args.max_size,
    );
    if args.clients < 2 && args.mix.chat > 0 {
        println!("(chat needs two clients: with one, it is left out)");
    }

    let users: Vec<String> = (0..args.clients)
        .map(|i| format!("{}{i}", args.user_prefix))
        .collect();
    let mut settings = Vec::with_capacity(users.len());
    for user in &users {
        let key = setup::add_user(&endpoint.socket, user).await?;
        settings.push(Arc::new(endpoint.settings(user, key)));
    }

    let sampler = args.pid.map(Sampler::start);
    let read = |sampler: &Option<Sampler>| sampler.as_ref().map_or(Ok(0), Sampler::now);
    let mut memory = Memory {
        start: read(&sampler)?,
        ..Memory::default()
    };

    let connect_started = Instant::now();
    let connected = setup::connect_all(settings, &users, &token, args.connect_at_once).await?;
    println!(
        "{} clients logged in in {:.1} s",
        connected.len(),
        connect_started.elapsed().as_secs_f64()
    );

    let shared = Arc::new(Shared {
        token,
        sent: users.iter().map(|_| AtomicU64::new(0)).collect(),
        users,
        errors: Errors::default(),
        ops: AtomicU64::new(0),
        mix: args.mix,
        max_size: args.max_size,
    });
    let (over_tx, over_rx) = tokio::sync::watch::channel(false);
    let cpu_before = cpu_now(args.pid)?;
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    let mut listeners = Vec::new();
    for c in connected {
        // A client with a live listener reads chat only through it.
        let reads = match (c.live, c.receiver) {
            (Some(session), Some(receiver)) => {
                let shared = shared.clone();
                let over = over_rx.clone();
                listeners.push(tokio::spawn(async move {
                    chat::follow(session, receiver, &shared.sent, &shared.errors, over).await
                }));
                None
            }
            (_, receiver) => receiver,
        };
        let worker = Worker::new(
            c.index,
            shared.clone(),
            c.settings,
            c.client,
            seed ^ (c.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            reads,
        );
        workers.push(tokio::spawn(worker.run(deadline)));
    }
    let progress = (args.progress > 0).then(|| {
        let shared = shared.clone();
        let pid = args.pid;
        let every = Duration::from_secs(args.progress);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(every).await;
                let ops = shared.ops.load(Ordering::Relaxed);
                let daemon = pid
                    .and_then(|p| Some((process::rss_kib(p).ok()?, process::threads(p).ok()?)))
                    .map_or(String::new(), |(kib, threads)| {
                        format!(", daemon RSS {} with {threads} threads", mib(kib))
                    });
                eprintln!(
                    "[{:>5.0} s] {ops} operations ({:.1}/s), {} errors{daemon}",
                    started.elapsed().as_secs_f64(),
                    (ops - last) as f64 / every.as_secs_f64(),
                    shared.errors.count(),
                );
                last = ops;
            }
        })
    });

    tokio::time::sleep_until(started + warmup).await;
    memory.baseline = read(&sampler)?;
    tokio::time::sleep_until(deadline).await;
    memory.end = read(&sampler)?;
    let mut finished = Vec::new();
    for w in workers {
        finished.push(w.await.map_err(|e| format!("a client task failed: {e}"))?);
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_now(args.pid)?;
    let cpu = Cpu {
        daemon: cpu_after.0.zip(cpu_before.0).map(|(a, b)| a - b),
        soak: cpu_after.1 - cpu_before.1,
    };
    if let Some(p) = progress {
        p.abort();
    }

    // Every sender has stopped: each receiver must now get the rest.
    let _ = over_tx.send(true);
    let mut stats = Stats::default();
    futures_util::future::join_all(finished.iter_mut().map(Worker::final_read)).await;
    for l in listeners {
        let (listened, _) = l
            .await
            .map_err(|e| format!("a chat listener failed: {e}"))?;
        stats.merge(listened);
    }
    for mut w in finished {
        stats.merge(std::mem::take(&mut w.stats));
        w.close().await;
    }
    if let Some(s) = &sampler {
        // Let the daemon finish closing the sessions.
        tokio::time::sleep(Duration::from_secs(1)).await;
        memory.after = s.now()?;
        memory.max = s.max();
        if !args.settle.is_zero() {
            tokio::time::sleep(args.settle).await;
            memory.settled = Some(s.now()?);
        }
    }
    Ok(report(
        &args,
        &shared,
        &mut stats,
        load_seconds,
        &memory,
        &cpu,
    ))
}

/// Prints the figures; true if the soak passed.
fn report(
    args: &Args,
    shared: &Shared,
    stats: &mut Stats,
    seconds: f64,
    m: &Memory,
    cpu: &Cpu,
) -> bool {
    println!("\nload ran {seconds:.1} s with {} clients\n", args.clients);
    print!("{}", stats.table(seconds));
    let share = |s: f64| format!("{s:.1} s, {:.0}% of a core", s / seconds * 100.0);
    let daemon = cpu
        .daemon
        .map_or(String::new(), |d| format!("daemon {}; ", share(d)));
    println!(
        "\nCPU during the load: {daemon}sockd-soak {} ({} cores)",
        share(cpu.soak),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let errors = shared.errors.count();
    println!("errors: {errors}");
    for e in shared.errors.first() {
        println!("  {e}");
    }
    if errors > Errors::KEPT as u64 {
        println!("  ... and {} more", errors - Errors::KEPT as u64);
    }
    let mut passed = errors == 0;
    if stats.operations() == 0 {
        println!("no operation completed");
        passed = false;
    }
    if let Some(pid) = args.pid {
        let growth = m.end.saturating_sub(m.baseline);
        let settled = m.settled.map_or(String::new(), |kib| {
            format!(", {:.0} s later {}", args.settle.as_secs_f64(), mib(kib))
        });
        println!(
            "daemon RSS (pid {pid}): start {}, after warm-up {}, max {}, end of load {}, \
             clients gone {}{settled}; growth after warm-up {} (bound {} MiB)",
            mib(m.start),
            mib(m.baseline),
            mib(m.max),
            mib(m.end),
            mib(m.after),
            mib(growth),
            args.max_growth
        );
        if growth > args.max_growth * 1024 {
            println!(
                "the daemon's memory grew by more than {} MiB under steady load",
                args.max_growth
            );
            passed = false;
        }
    }
    println!("{}", if passed { "PASS" } else { "FAIL" });
    passed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10d").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").is_err());
    }
}
