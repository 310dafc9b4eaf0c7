//! The server: shared state, listeners, connection limits, signals,
//! reload and graceful shutdown.
//!
//! SIGTERM/SIGINT: stop accepting, tell sessions to go away, let in-flight
//! operations finish for up to `shutdown_grace_secs`, then exit. SIGHUP (or
//! `sockctl reload`): re-read config, users and certificates; live sessions
//! keep going.

use crate::config::Config;
use crate::penalty::Penalties;
use crate::plugin::PluginHost;
use crate::session::Sessions;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::users::Users;
use crate::{control, notify};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

/// Why `sockd reload` did not apply all of a new configuration.
#[derive(Debug)]
pub enum ReloadError {
    /// The new configuration is unusable; the running one is kept whole.
    Refused(String),
    /// The core settings, users and certificates were applied; some
    /// plugins refused their new settings and keep their previous ones.
    Partial(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Refused(e) => write!(f, "reload failed, running configuration kept: {e}"),
            ReloadError::Partial(e) => write!(f, "reload incomplete: {e}"),
        }
    }
}

/// State every connection and the control socket share.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    users: RwLock<Arc<Users>>,
    tls: RwLock<Arc<ServerConfig>>,
    plugins: Arc<PluginHost>,
    pub config_path: PathBuf,
    pub penalties: Penalties,
    /// Stable fake parameters for unknown users.
    pub fake_credentials: sockd_proto::auth::FakeCredentials,
    pub started: Instant,
    pub listen: Vec<SocketAddr>,
    /// The control socket's path: the inherited socket's own under socket
    /// activation, else the configured one.
    pub control_socket: PathBuf,
    pub connections: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    /// Serialises writers of the users file.
    pub users_write: tokio::sync::Mutex<()>,
    /// Serialises reloads.
    reload_lock: tokio::sync::Mutex<()>,
    pub dev_overrides: DevOverrides,
}

/// Settings `--dev` and `--listen` impose over the config file, kept so a
/// reload applies them again.
#[derive(Debug, Clone, Default)]
pub struct DevOverrides {
    pub listen: Option<SocketAddr>,
    pub plugin_dir: Option<PathBuf>,
}

impl DevOverrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.listen {
            config.server.listen = vec![addr];
        }
        if let Some(dir) = &self.plugin_dir
            && !config.plugins.dir_explicit
        {
            config.plugins.dir = dir.clone();
        }
    }
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_users(&self, users: Users) {
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
    }

    pub fn tls(&self) -> Arc<ServerConfig> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn plugins(&self) -> Arc<PluginHost> {
        self.plugins.clone()
    }

    /// One-line live state for `STATUS=` and logs.
    pub fn status_line(&self) -> String {
        let plugins = self.plugins.list();
        let loaded = plugins.iter().filter(|p| p.state == "loaded").count();
        format!(
            "{loaded} plugins, {} sessions, {} connections",
            Sessions::global().len(),
            self.connections.load(Ordering::Relaxed)
        )
    }

    /// Re-reads config, users and certificates. On any error nothing changes.
    pub async fn reload(&self) -> Result<String, ReloadError> {
        let _guard = self.reload_lock.lock().await;
        notify::reloading();
        let result = self.reload_inner();
        notify::ready(&self.status_line());
        match &result {
            Ok(summary) => tracing::info!("reloaded: {summary}"),
            Err(e) => tracing::error!("{e}"),
        }
        result
    }

    /// Applies a new configuration: everything or nothing of the core
    /// (settings, users, certificates), then each plugin's own settings,
    /// which a plugin may refuse on its own without undoing the rest.
    fn reload_inner(&self) -> Result<String, ReloadError> {
        let mut config =
            Config::load(&self.config_path).map_err(|e| ReloadError::Refused(e.to_string()))?;
        self.dev_overrides.apply(&mut config);
        let users = Users::load(&config.server.users_file()).map_err(ReloadError::Refused)?;
        let tls = crate::tls::server_config(&config.tls.certificate, &config.tls.private_key)
            .map_err(ReloadError::Refused)?;
        let old = self.config();
        let mut notes = Vec::new();
        if old.server.listen != config.server.listen {
            notes.push("server.listen changed: restart sockd to apply it".to_string());
        }
        if old.control.socket != config.control.socket {
            notes.push("control.socket changed: restart sockd to apply it".to_string());
        }
        self.penalties.set_limits(
            Duration::from_millis(config.auth.penalty_base_ms),
            Duration::from_millis(config.auth.penalty_max_ms),
        );
        let user_count = users.list().len();
        let plugins = self.plugins.reconfigure(&config.plugins);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.set_users(users);
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        let mut summary = format!("{user_count} users, certificates and settings reloaded");
        for n in notes {
            tracing::warn!("{n}");
            summary.push_str("; ");
            summary.push_str(&n);
        }
        match plugins {
            Ok(()) => Ok(summary),
            Err(e) => Err(ReloadError::Partial(format!("{summary}, but {e}"))),
        }
    }

    fn admit(&self, ip: IpAddr, max_total: usize, max_per_source: usize) -> Result<(), String> {
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let total = self.connections.load(Ordering::Relaxed);
        if total >= max_total {
            return Err(format!("connection limit reached ({max_total})"));
        }
        let count = per.entry(ip).or_insert(0);
        if *count >= max_per_source {
            return Err(format!(
                "per-source connection limit reached ({max_per_source})"
            ));
        }
        *count += 1;
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per.remove(&ip);
            }
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Called once listeners are bound, with the TLS addresses and the control
/// socket's path.
pub type OnBound = Box<dyn FnOnce(&[SocketAddr], &Path) -> Result<(), String> + Send>;

/// Everything `run` needs, prepared by main.
pub struct Startup {
    pub config: Config,
    pub config_path: PathBuf,
    pub dev_overrides: DevOverrides,
    /// Called once listeners are bound, with their addresses (dev mode
    /// writes client.toml here).
    pub on_bound: Option<OnBound>,
    /// From [`take_inherited_listeners`], called before the runtime starts.
    pub inherited: Inherited,
    /// From `sd_notify::watchdog_enabled_and_unset_env`, likewise.
    pub watchdog: Option<Duration>,
}

/// Listeners handed over by systemd socket activation, by name.
#[derive(Default)]
pub struct Inherited {
    tls: Vec<std::net::TcpListener>,
    control: Option<std::os::unix::net::UnixListener>,
}

/// Takes the sockets systemd passed (LISTEN_FDS/LISTEN_FDNAMES) and removes
/// LISTEN_* from the environment so they never reach child processes.
///
/// # Safety
/// Must run before any other thread exists (it modifies the environment).
pub unsafe fn take_inherited_listeners() -> Result<Inherited, String> {
    use std::os::fd::FromRawFd;
    let mut out = Inherited {
        tls: Vec::new(),
        control: None,
    };
    // SAFETY: the caller guarantees no other thread exists yet.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| format!("socket activation: {e}"))?;
    for (fd, name) in fds {
        match name.as_str() {
            // SAFETY: systemd passed us this descriptor; we take sole ownership.
            "tls" => out
                .tls
                .push(unsafe { std::net::TcpListener::from_raw_fd(fd) }),
            // SAFETY: as above.
            "control" => {
                out.control = Some(unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) })
            }
            other => {
                return Err(format!(
                    "socket activation: unexpected socket name {other:?} (use FileDescriptorName=tls or control)"
                ));
            }
        }
    }
    Ok(out)
}

/// Runs the daemon until it is told to stop.
pub async fn run(startup: Startup) -> Result<(), String> {
    let Startup {
        config,
        config_path,
        dev_overrides,
        on_bound,
        inherited,
        watchdog,
    } = startup;

    let users = Users::load(&config.server.users_file())?;
    let tls = crate::tls::server_config(&config.tls.certificate, &config.tls.private_key)?;
    std::fs::create_dir_all(&config.server.state_dir).map_err(|e| {
        format!(
            "{}: cannot create state directory: {e}",
            config.server.state_dir.display()
        )
    })?;
    let fake_secret = load_or_create_secret(&config.server.state_dir.join("auth-secret"))?;
    let plugins = PluginHost::load(&config.plugins, &config.server.state_dir)?;

    let mut listeners = Vec::new();
    if inherited.tls.is_empty() {
        for addr in &config.server.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            listeners.push(l);
        }
    } else {
        for l in inherited.tls {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            listeners.push(TcpListener::from_std(l).map_err(|e| e.to_string())?);
        }
    }
    let listen: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    // An inherited control socket belongs to its socket unit: report its
    // own path, and leave the file in place at exit so that the unit can
    // start us again.
    let (control_listener, control_socket, control_bound_here) = match inherited.control {
        Some(l) => {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_else(|| config.control.socket.clone());
            (
                UnixListener::from_std(l).map_err(|e| e.to_string())?,
                path,
                false,
            )
        }
        None => (
            control::bind(&config.control)?,
            config.control.socket.clone(),
            true,
        ),
    };

    let shared = Arc::new(Shared {
        penalties: Penalties::new(
            Duration::from_millis(config.auth.penalty_base_ms),
            Duration::from_millis(config.auth.penalty_max_ms),
        ),
        config: RwLock::new(Arc::new(config)),
        users: RwLock::new(Arc::new(users)),
        tls: RwLock::new(tls),
        plugins,
        config_path,
        fake_credentials: sockd_proto::auth::FakeCredentials::new(&fake_secret),
        started: Instant::now(),
        listen: listen.clone(),
        control_socket: control_socket.clone(),
        connections: AtomicUsize::new(0),
        per_source: Mutex::new(HashMap::new()),
        users_write: tokio::sync::Mutex::new(()),
        reload_lock: tokio::sync::Mutex::new(()),
        dev_overrides,
    });

    let (trigger, shutdown) = shutdown::channel();
    for l in listeners {
        tokio::spawn(accept_loop(l, shared.clone(), shutdown.clone()));
    }
    tokio::spawn(control::serve(
        control_listener,
        shared.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(notify::watchdog(watchdog, shutdown.clone()));
    tokio::spawn(crate::release::when_quiet(shared.clone(), shutdown.clone()));

    if let Some(f) = on_bound {
        f(&listen, &control_socket)?;
    }
    let addrs: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    tracing::info!(listen = %addrs.join(", "), "sockd {} ready: {}", env!("CARGO_PKG_VERSION"), shared.status_line());
    notify::ready(&shared.status_line());

    wait_for_stop(&shared).await;
    drain(&shared, &trigger).await;
    shared.plugins().shutdown();
    if control_bound_here {
        let _ = std::fs::remove_file(&control_socket);
    }
    tracing::info!("sockd stopped");
    Ok(())
}

/// Handles SIGHUP until SIGTERM or SIGINT arrives.
async fn wait_for_stop(shared: &Arc<Shared>) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let _ = shared.reload().await;
            }
            _ = status_tick.tick() => notify::status(&shared.status_line()),
        }
    }
}

/// Stops accepting, lets sessions finish up to the grace period.
async fn drain(shared: &Arc<Shared>, trigger: &Trigger) {
    let grace = shared.config().server.shutdown_grace();
    notify::stopping(grace);
    trigger.fire();
    let deadline = Instant::now() + grace;
    let mut last_extend = Instant::now();
    while shared.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        if last_extend.elapsed() > Duration::from_secs(5) {
            notify::extend_timeout(
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5),
            );
            last_extend = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.connections.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            "grace period of {} s over; closing {left} connections",
            grace.as_secs()
        );
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(5);
    let mut spare = SpareDescriptor::open();
    let mut failures = AcceptFailures::default();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    failures.recovered();
                    x
                }
                Err(e) => {
                    // Out of descriptors, the waiting client would hang in
                    // the backlog: refuse it at once with the spare
                    // descriptor. Existing connections are served on.
                    let refused = is_out_of_descriptors(&e) && spare.refuse_one(&listener);
                    failures.failed(&e, refused);
                    if !refused {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let config = shared.config();
        if let Err(why) = shared.admit(
            peer.ip(),
            config.server.max_connections,
            config.server.max_connections_per_source,
        ) {
            tracing::warn!(%peer, "refusing connection: {why}");
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            crate::connection::serve(tcp, peer, shared.clone(), shutdown).await;
            shared.release(peer.ip());
        });
    }
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    )
}

/// A descriptor kept in reserve (`/dev/null`) for the open-file limit:
/// closing it frees one slot, enough to accept the waiting connection
/// and close it, so the client learns at once that it was refused.
struct SpareDescriptor(Option<std::fs::File>);

impl SpareDescriptor {
    fn open() -> SpareDescriptor {
        SpareDescriptor(std::fs::File::open("/dev/null").ok())
    }

    /// Accepts one waiting connection and closes it; false if none could
    /// be (no spare, nothing waiting, or the freed slot was taken).
    fn refuse_one(&mut self, listener: &TcpListener) -> bool {
        use futures_util::FutureExt;
        if self.0.take().is_none() {
            *self = Self::open();
            return false;
        }
        let refused = matches!(listener.accept().now_or_never(), Some(Ok(_)));
        *self = Self::open();
        refused
    }
}

/// How often a listener that keeps failing is reported.
const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Accept failures, logged so that the log says what happened and what
/// to do, but at most once per [`ACCEPT_REPORT_EVERY`]: at the descriptor
/// limit every connection attempt fails.
#[derive(Default)]
struct AcceptFailures {
    last_report: Option<Instant>,
    /// Failures and refused connections since the last report.
    failed: u64,
    refused: u64,
    /// Connections refused since accepting last worked.
    refused_total: u64,
}

impl AcceptFailures {
    fn failed(&mut self, e: &std::io::Error, refused: bool) {
        self.failed += 1;
        if refused {
            self.refused += 1;
            self.refused_total += 1;
        }
        if self
            .last_report
            .is_some_and(|at| at.elapsed() < ACCEPT_REPORT_EVERY)
        {
            return;
        }
        let since_last = match self.last_report {
            None => String::new(),
            Some(at) => format!(
                " ({} failures, {} connections refused in the last {} s)",
                self.failed,
                self.refused,
                at.elapsed().as_secs()
            ),
        };
        match e.raw_os_error() {
            Some(nix::libc::EMFILE) => tracing::error!(
                "too many open files (limit {}): refusing new connections, existing ones are served on{since_last}; \
                 raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower [server] max_connections",
                open_file_limit()
            ),
            Some(nix::libc::ENFILE) => tracing::error!(
                "the system's open file table is full: refusing new connections, existing ones are served on{since_last}; \
                 raise fs.file-max or find what holds the files"
            ),
            _ => tracing::error!("accept failed: {e}; retrying{since_last}"),
        }
        self.last_report = Some(Instant::now());
        self.failed = 0;
        self.refused = 0;
    }

    fn recovered(&mut self) {
        if self.last_report.take().is_some() {
            tracing::warn!(
                "accepting connections again ({} were refused meanwhile)",
                self.refused_total
            );
        }
        *self = Self::default();
    }
}

/// The soft RLIMIT_NOFILE, read without opening a file (at the limit
/// there is none to open).
fn open_file_limit() -> String {
    let mut limit = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid local it is given.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.to_string()
    } else {
        "unknown".into()
    }
}

/// The secret behind unknown users' fake parameters: stable across
/// restarts, or their salts would change while real users' do not.
fn load_or_create_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use ring::rand::SecureRandom;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => return Ok(bytes),
        Ok(_) => {
            return Err(format!(
                "{}: expected 32 bytes; delete it to create a new one",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let mut secret = vec![0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| "no randomness available".to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&secret)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(secret)
}
