//! sockbench: measures a running sockd through the real client library.
//!
//! - `logins`: bare TLS handshakes/s and full logins/s (TCP + TLS + HELLO +
//!   authentication) against the same server and certificate, in one run;
//! - `idle`: the daemon's resident memory per idle authenticated connection;
//! - `calls`: plugin calls/s beside pings/s (the no-plugin path) on 1 and
//!   more connections.
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
        /// The command and its arguments.
        #[arg(long, default_value = "whoami")]
        command: String,
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
        } => logins(&settings, seconds, concurrency, pid).await,
        What::Idle { count, pid } => idle(&settings, count, pid).await,
        What::Calls {
            seconds,
            connections,
            command,
        } => calls(&settings, seconds, connections, &command).await,
    }
}

/// CPU time (user + system) a process has used, in microseconds.
fn cpu_micros(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("pid {pid}: {e}"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .ok_or("short /proc stat")?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux architecture sockd supports.
    let hz = 100u64;
    Ok(ticks * 1_000_000 / hz)
}

/// Like [`rate`], also returning the daemon's CPU microseconds per operation.
async fn rate_with_cpu<F, Fut>(
    seconds: u64,
    concurrency: usize,
    pid: Option<u32>,
    f: F,
) -> Result<(f64, Option<f64>), String>
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let before = pid.map(cpu_micros).transpose()?;
    let start = Instant::now();
    let per_sec = rate(seconds, concurrency, f).await?;
    let ops = per_sec * start.elapsed().as_secs_f64();
    let after = pid.map(cpu_micros).transpose()?;
    let cpu = before.zip(after).map(|(b, a)| (a - b) as f64 / ops);
    Ok((per_sec, cpu))
}

/// Runs `f` from `concurrency` tasks for `seconds`; returns operations/s.
async fn rate<F, Fut>(seconds: u64, concurrency: usize, f: F) -> Result<f64, String>
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let f = f.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                f().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
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
) -> Result<(), String> {
    let s = settings.clone();
    let (tls, tls_cpu) = rate_with_cpu(seconds, concurrency, pid, move || {
        let s = s.clone();
        async move { bare_tls(&s).await }
    })
    .await?;
    let s = settings.clone();
    let (login, login_cpu) = rate_with_cpu(seconds, concurrency, pid, move || {
        let s = s.clone();
        async move {
            let client = Client::connect(&s)
                .await
                .map_err(|e| e.message().to_string())?;
            client.close().await;
            Ok(())
        }
    })
    .await?;
    println!(
        "bare TLS 1.3 handshakes: {tls:>8.0}/s  ({concurrency} concurrent, {seconds} s; client and daemon share the machine)"
    );
    println!("TLS + HELLO + login:     {login:>8.0}/s");
    println!(
        "end to end, authentication adds {:.1}% to a handshake",
        (tls / login - 1.0) * 100.0
    );
    if let (Some(t), Some(l)) = (tls_cpu, login_cpu) {
        println!(
            "daemon CPU per connection: {t:.0} us bare TLS, {l:.0} us with login: authentication adds {:.1}%",
            (l / t - 1.0) * 100.0
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

async fn calls(
    settings: &Arc<Settings>,
    seconds: u64,
    connections: usize,
    command: &str,
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
    let pings = rate(seconds, connections, move || {
        let c = p();
        async move {
            c.ping()
                .await
                .map(|_| ())
                .map_err(|e| e.message().to_string())
        }
    })
    .await?;
    let command = command.to_string();
    let p = pick.clone();
    let calls = rate(seconds, connections, move || {
        let c = p();
        let command = command.clone();
        async move {
            let mut ch = c
                .open(&command, Vec::<bytes::Bytes>::new())
                .await
                .map_err(|e| e.message().to_string())?;
            ch.send_eof(0).await.map_err(|e| e.message().to_string())?;
            while let Some(event) = ch.recv().await {
                if let Event::Closed { code, message, .. } = event {
                    if code != sockd_proto::ErrorCode::Ok {
                        return Err(format!("call failed: {message}"));
                    }
                    return Ok(());
                }
            }
            Err("connection lost".into())
        }
    })
    .await?;
    println!(
        "{connections} connection(s): pings {pings:>8.0}/s   plugin calls {calls:>8.0}/s   plugin path costs {:.1}% more",
        (pings / calls - 1.0) * 100.0
    );
    Ok(())
}
