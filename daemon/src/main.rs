//! `sockd`: the daemon's command line. See `sockd --help` and sockd(8).

use clap::Parser;
use sockd::config::Config;
use sockd::server::{DevOverrides, Startup};
use sockd::{dev, logging, server};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sockd",
    version,
    about = "TLS remote-access daemon with authenticated plugins",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration file.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/sockd/sockd.toml",
        conflicts_with = "dev"
    )]
    config: PathBuf,

    /// Development mode: create (or reuse) DIR with a self-signed certificate,
    /// a demo user and a config, and run in the foreground.
    #[arg(long, value_name = "DIR")]
    dev: Option<PathBuf>,

    /// Listen on ADDR instead of the configured addresses (port 0 picks a
    /// free port; with --dev, client.toml records the port bound).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Check the configuration, users file and certificates, then exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create a self-signed TLS certificate and key (never replaces files)
    GenCert(sockd::gen_cert::GenCertArgs),
}

/// Frames are copied into fresh buffers of up to 256 KiB, freed on another
/// thread. Above glibc's default mmap threshold each one would be an mmap
/// and munmap, and trimming would return freed memory only to fault it in
/// again; fixed thresholds keep it in the heap (measured ~10-15% on bulk
/// output). Memory stays bounded by the flow-control windows either way.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

// `pub`: the sockd-debug-hooks binary (src/bin/) is this file as a module.
pub fn main() -> ExitCode {
    keep_freed_memory();
    let mut args = Args::parse();
    let result = match args.command.take() {
        Some(Command::GenCert(gen_args)) => {
            sockd::gen_cert::run(gen_args).map(|text| print!("{text}"))
        }
        None => start(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(mut args: Args) -> Result<(), String> {
    let mut overrides = DevOverrides {
        listen: args.listen,
        plugin_dir: None,
    };
    // The dev directory is made absolute first: client.toml and the banner
    // must not depend on the directory sockd was started from.
    if let Some(dir) = args.dev.take() {
        dev::prepare(&dir)?;
        args.dev =
            Some(std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?);
    }
    let config_path = match &args.dev {
        Some(dir) => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot locate the sockd binary: {e}"))?;
            overrides.plugin_dir = exe.parent().map(|p| p.to_path_buf());
            dev::config_path(dir)
        }
        None => args.config.clone(),
    };
    let mut config = Config::load(&config_path).map_err(|e| e.to_string())?;
    overrides.apply(&mut config);

    if args.check_config {
        sockd::users::Users::load(&config.server.users_file())?;
        sockd::tls::server_config(&config.tls.certificate, &config.tls.private_key)?;
        println!("{}: configuration is valid", config_path.display());
        return Ok(());
    }

    logging::init(&config.log);
    // SAFETY: no other thread exists yet (the runtime is built below).
    let inherited = unsafe { server::take_inherited_listeners()? };
    // SAFETY: as above.
    let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() };

    let on_bound: Option<server::OnBound> = match &args.dev {
        Some(dir) => {
            let dir = dir.clone();
            let cert = config.tls.certificate.clone();
            Some(Box::new(move |bound: &[SocketAddr], socket: &Path| {
                dev::write_client_config(&dir, bound, &cert, socket)?;
                let port = bound.first().map(|a| a.port()).unwrap_or_default();
                eprintln!(
                    "sockd --dev: listening on 127.0.0.1:{port}\n  try: SOCKCTL_CONFIG={}/client.toml sockctl ping",
                    dir.display()
                );
                Ok(())
            }))
        }
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sockd-rt")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    #[cfg(feature = "debug-hooks")]
    sockd::debug_hooks::install(&runtime)?;
    runtime.block_on(server::run(Startup {
        config,
        config_path,
        dev_overrides: overrides,
        on_bound,
        inherited,
        watchdog,
    }))?;
    // Plugin threads still blocked in a call must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}
