//! The plugin host: loads plugins through the handler ABI and runs calls.
//!
//! - [`loader`]: permission check, private copy, `dlopen`, descriptor
//!   validation and `init` of one build;
//! - [`host_api`]: the `sockd_host` functions plugins call back into.
//!
//! Every configured plugin has a slot holding its current build (or why it
//! failed). A call runs on its own thread ([`workers`]) — or, for the
//! commands a plugin declares inline (ABI 1.1), right on the connection's
//! task, with no thread hand-off — and holds an `Arc` to the build it
//! started on, so after `sockctl plugin reload` in-flight calls finish on
//! the old code while new calls reach the new build; the old build's
//! `shutdown` runs when its last call ends. A build whose calls panic
//! `quarantine_after` times is quarantined: its commands are refused until
//! the plugin is reloaded.
//!
//! An inline handler may also leave its call **pending** (ABI 1.2): the
//! call then stays open on its build, its channel runs the plugin's
//! `on_input` on the connection's task whenever something arrives for it
//! ([`PendingCall`]), and it ends when `on_input` says so, when any thread
//! calls the host's `finish`, or when the client cancels — exactly once.
//! Or it may ask to run on a call thread after all (`SOCKD_RUN_ON_THREAD`).
//!
//! Locks guard only the slot table and are never held while plugin code
//! runs: a plugin that blocks in `init`, `configure` or `handle` stalls
//! itself, not the daemon.

pub mod host_api;
pub mod loader;
pub mod workers;

use crate::channel::{Channel, InlineScope, InputHook};
use crate::config::{OnPluginError, PluginEntry, PluginsConfig};
use crate::session::Session;
use bytes::Bytes;
use loader::{Build, LoadContext, LoadError};
use sockd_plugin::sys::{self, SockdCall, SockdStr};
use sockd_proto::ErrorCode;
use sockd_proto::control::PluginInfo;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Stack size of a call thread. Plugins that need more spawn their own.
const CALL_STACK: usize = 2 << 20;

/// One command invocation handed to a plugin.
pub struct CallRequest {
    pub channel: Arc<Channel>,
    pub session: Arc<Session>,
    pub args: Vec<Bytes>,
}

/// Call counters of one plugin, over all its builds.
#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
}

/// One configured plugin.
struct Slot {
    /// The configured name (the `[plugins.NAME]` key), shared with every
    /// channel of the plugin.
    name: Arc<str>,
    entry: PluginEntry,
    /// `dir/file`, as reported by `list`.
    path: PathBuf,
    /// The build new calls go to; `None` if the plugin failed to load.
    current: Option<Arc<Build>>,
    /// Replaced builds, kept until they are shut down so `session_closed`
    /// and daemon shutdown still reach them.
    old: Vec<Arc<Build>>,
    /// Why the plugin is not loaded.
    error: Option<String>,
    stats: Arc<Stats>,
    /// Successful loads, the first one included.
    builds: u32,
    /// A reload of this plugin is running.
    reloading: bool,
}

impl Slot {
    fn new(name: &str, entry: PluginEntry, path: PathBuf) -> Self {
        Slot {
            name: name.into(),
            entry,
            path,
            current: None,
            old: Vec::new(),
            error: None,
            stats: Arc::default(),
            builds: 0,
            reloading: false,
        }
    }

    fn quarantined(&self, after: u32) -> Option<u32> {
        let panics = self.current.as_ref()?.panics.load(Ordering::SeqCst);
        (panics >= after).then_some(panics)
    }

    fn info(&self, name: &str, quarantine_after: u32) -> PluginInfo {
        let (state, error) = match (&self.current, self.quarantined(quarantine_after)) {
            (None, _) => ("failed", self.error.clone()),
            (Some(_), Some(n)) => ("quarantined", Some(format!("quarantined after {n} panics"))),
            (Some(_), None) => ("loaded", None),
        };
        let build = self.current.as_deref();
        PluginInfo {
            name: name.to_string(),
            version: build.map(|b| b.version.clone()).unwrap_or_default(),
            abi: build.map_or_else(
                || format!("{}.{}", sys::SOCKD_ABI_MAJOR, sys::SOCKD_ABI_MINOR),
                |b| b.abi.clone(),
            ),
            file: self.path.display().to_string(),
            commands: build.map(|b| b.commands.clone()).unwrap_or_default(),
            state: state.to_string(),
            calls: self.stats.calls.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            panics: self.stats.panics.load(Ordering::Relaxed),
            builds: self.builds,
            error,
        }
    }

    /// Every build that may still need `session_closed` or `shutdown`.
    fn live_builds(&self) -> impl Iterator<Item = &Arc<Build>> {
        self.current
            .iter()
            .chain(self.old.iter())
            .filter(|b| !b.is_shut_down())
    }
}

struct Inner {
    dir: PathBuf,
    plugins: BTreeMap<String, Slot>,
}

impl Inner {
    /// Commands served by loaded plugins other than `except`.
    fn taken(&self, except: &str) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (name, slot) in self.plugins.iter().filter(|(n, _)| *n != except) {
            for command in slot.current.iter().flat_map(|b| b.commands.iter()) {
                out.insert(command.clone(), name.clone());
            }
        }
        out
    }

    fn serving(&self, command: &str) -> Option<(&Slot, &Arc<Build>)> {
        self.plugins.values().find_map(|slot| {
            let build = slot.current.as_ref()?;
            build
                .commands
                .iter()
                .any(|c| c == command)
                .then_some((slot, build))
        })
    }
}

pub struct PluginHost {
    state_dir: PathBuf,
    inner: Mutex<Inner>,
    /// Shared with call threads, which decide on quarantine.
    quarantine_after: Arc<AtomicU32>,
    stopped: AtomicBool,
}

impl PluginHost {
    /// Loads every plugin in `config`. With `on_error = "refuse"` the first
    /// failure is returned; with `skip` it is recorded and reported by `list`.
    pub fn load(config: &PluginsConfig, state_dir: &Path) -> Result<Arc<Self>, String> {
        let host = PluginHost {
            state_dir: state_dir.to_path_buf(),
            inner: Mutex::new(Inner {
                dir: config.dir.clone(),
                plugins: BTreeMap::new(),
            }),
            quarantine_after: Arc::new(AtomicU32::new(config.quarantine_after)),
            stopped: AtomicBool::new(false),
        };
        for (name, entry) in &config.entries {
            match host.load_new(name, entry) {
                Ok(()) => {}
                Err(e) if config.on_error == OnPluginError::Skip => {
                    tracing::error!("{e}");
                    tracing::warn!(plugin = %name, "continuing without it (plugins.on_error = \"skip\")");
                }
                Err(e) => {
                    host.shutdown();
                    return Err(e.to_string());
                }
            }
        }
        Ok(Arc::new(host))
    }

    /// The plugin table, for any use that may change it: every thread's
    /// copy of the routes is stale from now on (see `prepare_call`).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let inner = self.read();
        ROUTES_GENERATION.fetch_add(1, Ordering::SeqCst);
        inner
    }

    /// The plugin table, to read it only.
    fn read(&self) -> MutexGuard<'_, Inner> {
        // Every update of Inner is a single insert or assignment, so a
        // panic elsewhere cannot leave it half-changed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This thread's copy of the routes, made anew if the table changed
    /// since it was made; `f` looks in it.
    fn with_routes<T>(&self, generation: u64, f: impl FnOnce(&Routes) -> T) -> T {
        let host = self as *const PluginHost as usize;
        ROUTES.with_borrow_mut(|routes| {
            if routes.host != host || routes.generation != generation {
                *routes = Routes::of(host, generation, &self.read(), &self.quarantine_after);
            }
            f(routes)
        })
    }

    /// Loads a plugin that has no slot yet and records the outcome in a
    /// new slot (failed or loaded).
    fn load_new(&self, name: &str, entry: &PluginEntry) -> Result<(), LoadError> {
        let (dir, taken) = {
            let inner = self.lock();
            (inner.dir.clone(), inner.taken(name))
        };
        let cx = LoadContext {
            dir: &dir,
            state_dir: &self.state_dir,
            taken: &taken,
        };
        let result = loader::load(name, entry, &cx);
        let mut slot = Slot::new(name, entry.clone(), loader::plugin_path(&dir, entry));
        let outcome = match result {
            Ok(build) => {
                tracing::info!(
                    plugin = %name, version = %build.version, file = %slot.path.display(),
                    "plugin loaded; commands: {}", build.commands.join(", ")
                );
                slot.current = Some(Arc::new(build));
                slot.builds = 1;
                Ok(())
            }
            Err(e) => {
                slot.error = Some(e.to_string());
                Err(e)
            }
        };
        self.lock().plugins.insert(name.to_string(), slot);
        outcome
    }

    /// The plugin serving `command`, if any. A quarantined plugin is still
    /// named here so that [`start_call`](Self::start_call) can say why it
    /// refuses the call.
    pub fn plugin_for(&self, command: &str) -> Option<Arc<str>> {
        self.read()
            .serving(command)
            .map(|(slot, _)| slot.name.clone())
    }

    /// Runs the call on its own thread, which finishes the channel; or, if
    /// the plugin declared the command inline, runs it to the end right
    /// here (the caller is the connection's task: the handler must not
    /// block, and the channel's operations are made non-blocking).
    pub fn start_call(&self, req: CallRequest) -> Result<(), (ErrorCode, String)> {
        self.prepare_call(&req.channel.command)?.start(req)
    }

    /// Finds the plugin for `command` and counts a call to it, or says why
    /// there is none (unknown, quarantined, shutting down), before the
    /// caller makes a channel for it. [`PreparedCall::start`] then runs it.
    pub fn prepare_call(&self, command: &str) -> Result<PreparedCall, (ErrorCode, String)> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err((
                ErrorCode::ShuttingDown,
                "the server is shutting down".into(),
            ));
        }
        let after = self.quarantine_after.load(Ordering::SeqCst);
        // Every call looks its command up here: in this thread's copy of
        // the routes, not under the table's lock, which both cores would
        // take turns at.
        loop {
            let generation = ROUTES_GENERATION.load(Ordering::SeqCst);
            let Some((route, inline)) = self.with_routes(generation, |r| r.find(command)) else {
                return Err((
                    ErrorCode::UnknownCommand,
                    format!("no plugin serves the command `{command}`"),
                ));
            };
            let panics = route.build.panics.load(Ordering::SeqCst);
            if panics >= after {
                let name = &route.name;
                return Err((
                    ErrorCode::Unavailable,
                    format!(
                        "plugin {name} is quarantined after {panics} panics; fix it and run `sockctl plugin reload {name}`"
                    ),
                ));
            }
            route.build.call_started();
            // A reload retires the old build only after it changed the
            // generation (both sequentially consistent): either it sees
            // this call counted, or this call sees the new generation and
            // looks again.
            if ROUTES_GENERATION.load(Ordering::SeqCst) != generation {
                route.build.call_ended();
                continue;
            }
            route.stats.calls.fetch_add(1, Ordering::Relaxed);
            return Ok(PreparedCall(Some(RunningCall { route, inline })));
        }
    }

    /// A session ended: every live build may drop what it kept for it.
    pub fn session_closed(&self, session_id: u64) {
        let builds: Vec<Arc<Build>> = self
            .read()
            .plugins
            .values()
            .flat_map(|s| s.live_builds().cloned())
            .collect();
        for build in builds {
            build.session_closed(session_id);
        }
    }

    /// SIGHUP / `sockctl reload`: new config for every plugin.
    ///
    /// Loaded plugins get their new settings through `configure` (a new
    /// `file` takes effect at the next `sockctl plugin reload NAME`). Newly
    /// listed plugins are loaded; plugins no longer listed are retired. The
    /// error, if any, lists every plugin that failed; the others are
    /// reconfigured regardless.
    pub fn reconfigure(&self, config: &PluginsConfig) -> Result<(), String> {
        self.quarantine_after
            .store(config.quarantine_after, Ordering::SeqCst);
        let mut to_configure = Vec::new();
        let mut removed = Vec::new();
        let mut added = Vec::new();
        {
            let mut inner = self.lock();
            inner.dir = config.dir.clone();
            let dir = inner.dir.clone();
            for (name, entry) in &config.entries {
                match inner.plugins.get_mut(name) {
                    Some(slot) => {
                        slot.entry = entry.clone();
                        slot.path = loader::plugin_path(&dir, entry);
                        if let Some(build) = &slot.current {
                            to_configure.push((name.clone(), build.clone()));
                        }
                    }
                    None => added.push((name.clone(), entry.clone())),
                }
            }
            let gone: Vec<String> = inner
                .plugins
                .keys()
                .filter(|n| !config.entries.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(slot) = inner.plugins.remove(&name) {
                    removed.push((name, slot));
                }
            }
        }

        let mut errors = Vec::new();
        for (name, build) in to_configure {
            let Some(entry) = config.entries.get(&name) else {
                continue;
            };
            let text = match toml::to_string(&entry.settings) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!(
                        "plugin \"{name}\": cannot render its settings as TOML: {e}"
                    ));
                    continue;
                }
            };
            if let Err(why) = build.configure(&text) {
                errors.push(format!(
                    "plugin \"{name}\" rejected its new settings and keeps its previous ones: {why}"
                ));
            }
        }
        for (name, slot) in removed {
            tracing::info!(plugin = %name, "plugin no longer configured; retiring it");
            for build in slot.live_builds() {
                build.retire();
            }
        }
        for (name, entry) in added {
            match self.load_new(&name, &entry) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!("{e}");
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// `sockctl plugin reload NAME`: loads the plugin's file again into a
    /// new build. On success new calls go to it and the old build is shut
    /// down once its last call ends; on failure the old build stays.
    pub fn reload(&self, name: &str) -> Result<PluginInfo, (ErrorCode, String)> {
        let (entry, dir, taken) = {
            let mut inner = self.lock();
            let taken = inner.taken(name);
            let dir = inner.dir.clone();
            let Some(slot) = inner.plugins.get_mut(name) else {
                return Err((ErrorCode::NotFound, format!("no plugin named `{name}`")));
            };
            if slot.reloading {
                return Err((
                    ErrorCode::Busy,
                    format!("a reload of plugin {name} is already running"),
                ));
            }
            slot.reloading = true;
            (slot.entry.clone(), dir, taken)
        };
        let cx = LoadContext {
            dir: &dir,
            state_dir: &self.state_dir,
            taken: &taken,
        };
        let result = loader::load(name, &entry, &cx);

        let after = self.quarantine_after.load(Ordering::SeqCst);
        let mut inner = self.lock();
        // Another plugin may have claimed one of the commands meanwhile.
        let clash = result.as_ref().ok().and_then(|build| {
            let taken = inner.taken(name);
            build
                .commands
                .iter()
                .find_map(|c| taken.get(c).map(|owner| (c.clone(), owner.clone())))
        });
        let Some(slot) = inner.plugins.get_mut(name) else {
            drop(inner);
            if let Ok(build) = result {
                build.retire();
            }
            return Err((
                ErrorCode::NotFound,
                format!("plugin {name} was removed from the configuration during the reload"),
            ));
        };
        slot.reloading = false;
        let build = match (result, clash) {
            (Ok(build), None) => build,
            (Ok(build), Some((command, owner))) => {
                drop(inner);
                build.retire();
                return Err((
                    ErrorCode::BadRequest,
                    format!(
                        "plugin \"{name}\" refused: command `{command}` is already served by plugin \"{owner}\""
                    ),
                ));
            }
            (Err(e), _) => {
                let message = e.to_string();
                if slot.current.is_none() {
                    slot.error = Some(message.clone());
                }
                drop(inner);
                tracing::error!("reload failed, keeping the running build: {message}");
                return Err((ErrorCode::BadRequest, message));
            }
        };
        let version = build.version.clone();
        let old = slot.current.replace(Arc::new(build));
        slot.error = None;
        slot.builds += 1;
        slot.old.retain(|b| !b.is_shut_down());
        if let Some(old) = &old {
            slot.old.push(old.clone());
        }
        let info = slot.info(name, after);
        drop(inner);
        match old {
            Some(old) => {
                tracing::info!(
                    plugin = %name, "reloaded: {} -> {version}; {} call(s) finish on the old build",
                    old.version, old.in_flight()
                );
                old.retire();
            }
            None => tracing::info!(plugin = %name, "loaded {version}"),
        }
        Ok(info)
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        let after = self.quarantine_after.load(Ordering::SeqCst);
        self.read()
            .plugins
            .iter()
            .map(|(name, slot)| slot.info(name, after))
            .collect()
    }

    /// Daemon shutdown: tell every build it is no longer used. New calls
    /// are refused from now on.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let builds: Vec<Arc<Build>> = self
            .lock()
            .plugins
            .values()
            .flat_map(|s| s.live_builds().cloned())
            .collect();
        for build in builds {
            build.shutdown_once();
        }
    }
}

/// A call counted to its plugin's current build by
/// [`PluginHost::prepare_call`], not yet started.
pub struct PreparedCall(Option<RunningCall>);

impl PreparedCall {
    /// The configured name of the plugin that will serve the call.
    pub fn plugin(&self) -> Arc<str> {
        self.0
            .as_ref()
            .map(|c| c.route.name.clone())
            .unwrap_or_default()
    }

    /// Runs the call: inline (to its end, or until it is pending) if the
    /// plugin declared the command so, else on a call thread. The error is
    /// the CLOSE to answer with when no call thread can be had.
    pub fn start(mut self, req: CallRequest) -> Result<(), (ErrorCode, String)> {
        let Some(call) = self.0.take() else {
            return Ok(());
        };
        if call.inline {
            let Some((call, req)) = call.run_inline(req) else {
                return Ok(());
            };
            // The handler asked for a call thread after all.
            return call.run_on_thread(req);
        }
        call.run_on_thread(req)
    }
}

impl Drop for PreparedCall {
    fn drop(&mut self) {
        // Never started: the build must not wait for it.
        if let Some(call) = self.0.take() {
            call.build.call_ended();
        }
    }
}

/// Bumped by every change of any host's plugin table (and, to be safe,
/// every other use of its lock but the routes' own reads).
static ROUTES_GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of the command routes (see `prepare_call`).
    static ROUTES: std::cell::RefCell<Routes> = const { std::cell::RefCell::new(Routes::EMPTY) };
}

/// What a call needs of its plugin, looked up once per command per thread
/// and shared by every call through it: one reference to take per call.
struct Route {
    name: Arc<str>,
    build: Arc<Build>,
    stats: Arc<Stats>,
    quarantine_after: Arc<AtomicU32>,
}

/// Every command of one host's current builds, with its route and whether
/// it runs inline, as of one generation of the table.
struct Routes {
    /// The host (its address) and generation this copy was made from.
    host: usize,
    generation: u64,
    commands: Vec<(Box<str>, Arc<Route>, bool)>,
}

impl Routes {
    const EMPTY: Routes = Routes {
        host: 0,
        generation: u64::MAX,
        commands: Vec::new(),
    };

    fn of(
        host: usize,
        generation: u64,
        inner: &Inner,
        quarantine_after: &Arc<AtomicU32>,
    ) -> Routes {
        let mut commands = Vec::new();
        for slot in inner.plugins.values() {
            let Some(build) = &slot.current else { continue };
            let route = Arc::new(Route {
                name: slot.name.clone(),
                build: build.clone(),
                stats: slot.stats.clone(),
                quarantine_after: quarantine_after.clone(),
            });
            for command in &build.commands {
                let inline = build.is_inline(command);
                commands.push((command.as_str().into(), route.clone(), inline));
            }
        }
        Routes {
            host,
            generation,
            commands,
        }
    }

    fn find(&self, command: &str) -> Option<(Arc<Route>, bool)> {
        self.commands
            .iter()
            .find(|(c, ..)| **c == *command)
            .map(|(_, route, inline)| (route.clone(), *inline))
    }
}

/// A call counted to its build: what its thread (or the connection's
/// task, inline) needs besides the request.
struct RunningCall {
    route: Arc<Route>,
    /// The command runs on the connection's task.
    inline: bool,
}

impl std::ops::Deref for RunningCall {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.route
    }
}

/// Ends a call however its thread leaves [`RunningCall::run`]: CLOSE (a
/// no-op if already sent) and the build's in-flight count.
struct CallEnd<'a> {
    build: &'a Build,
    channel: &'a Channel,
}

impl Drop for CallEnd<'_> {
    fn drop(&mut self) {
        // Only reached unfinished if the host's own code panicked.
        self.channel
            .finish(ErrorCode::Internal, "the call ended abnormally");
        self.build.call_ended();
    }
}

impl RunningCall {
    /// Runs the call on a call thread, which finishes it.
    fn run_on_thread(self, req: CallRequest) -> Result<(), (ErrorCode, String)> {
        let (name, build) = (self.name.clone(), self.build.clone());
        let spawned = workers::Workers::global(CALL_STACK).run(move || self.run(req));
        if let Err(e) = spawned {
            build.call_ended();
            tracing::error!(plugin = %name, "cannot start a call thread: {e}");
            return Err((
                ErrorCode::Unavailable,
                format!("cannot start a thread for plugin {name}: {e}"),
            ));
        }
        Ok(())
    }

    /// Runs an inline call on the caller's thread (the connection's task).
    /// Returns the call if its handler asked for a call thread instead.
    fn run_inline(self, req: CallRequest) -> Option<(Self, CallRequest)> {
        req.channel.set_inline();
        let scope = InlineScope::enter();
        // A panic in the host's own code must not take the connection's
        // task down: the call is then ended as `internal`.
        let status = catch_unwind(AssertUnwindSafe(|| {
            self.invoke(&req, sys::SOCKD_CALL_INLINE)
        }))
        .unwrap_or(sys::SOCKD_E_INTERNAL);
        drop(scope);
        let channel = req.channel.clone();
        match status {
            sys::SOCKD_RUN_ON_THREAD => {
                channel.clear_inline();
                return Some((self, req));
            }
            sys::SOCKD_PENDING if self.build.serves_pending() => {
                let pending = Arc::new(PendingCall {
                    call: self,
                    ended: AtomicBool::new(false),
                });
                // Another thread may have called `finish` while the handler
                // ran: that is the call's end.
                if let Some(status) = channel.set_hook(pending.clone()) {
                    pending.end(&channel, status);
                }
                return None;
            }
            _ => {}
        }
        let (code, message) = self.outcome(status);
        channel.finish(code, &message);
        self.build.call_ended();
        None
    }

    /// Calls the plugin's `handle` for `req` and returns its status.
    fn invoke(&self, req: &CallRequest, flags: u32) -> i32 {
        let session = &req.session;
        // Everything the call points to lives on this stack frame until
        // handle() returns, as the ABI promises.
        // Up to eight arguments (most calls) are passed without allocating.
        let mut few = [SockdStr::from_slice(&[]); 8];
        let many: Vec<SockdStr>;
        let argv: &[SockdStr] = if req.args.len() <= few.len() {
            for (slot, arg) in few.iter_mut().zip(&req.args) {
                *slot = SockdStr::from_slice(arg);
            }
            &few[..req.args.len()]
        } else {
            many = req.args.iter().map(|a| SockdStr::from_slice(a)).collect();
            &many
        };
        let call = SockdCall {
            size: size_of::<SockdCall>() as u32,
            channel: req.channel.handle,
            session_id: session.id,
            user: SockdStr::from_slice(session.user.as_bytes()),
            home: SockdStr::from_slice(session.home.as_os_str().as_bytes()),
            command: SockdStr::from_slice(req.channel.command.as_bytes()),
            argc: argv.len(),
            argv: argv.as_ptr(),
            peer: SockdStr::from_slice(session.peer_text().as_bytes()),
            flags,
        };
        tracing::debug!(plugin = %self.name, command = %req.channel.command, session = session.id, "call started");
        let status = self.build.handle(&call);
        tracing::debug!(plugin = %self.name, command = %req.channel.command, session = session.id, status, "handle returned");
        status
    }

    /// Runs a call on this (call) thread to its end.
    fn run(self, req: CallRequest) {
        let _end = CallEnd {
            build: &self.build,
            channel: &req.channel,
        };
        let status = self.invoke(&req, 0);
        let (code, message) = self.outcome(status);
        req.channel.finish(code, &message);
        tracing::debug!(plugin = %self.name, command = %req.channel.command, session = req.session.id, status, "call ended");
    }

    /// Maps handle()'s status to the CLOSE code, counting errors and panics.
    fn outcome(&self, status: i32) -> (ErrorCode, String) {
        if status == sys::SOCKD_OK {
            return (ErrorCode::Ok, String::new());
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        // A C plugin may hand back a host function's negated result as is.
        let code = match status.unsigned_abs() as i32 {
            sys::SOCKD_E_PANICKED => return self.panicked(),
            // Only an inline handle may leave its call pending or hand it
            // to a thread, and only a 1.2 plugin with on_input pending.
            sys::SOCKD_PENDING | sys::SOCKD_RUN_ON_THREAD => {
                tracing::error!(plugin = %self.name, status, "a call returned a status not allowed where it ran");
                return (
                    ErrorCode::Internal,
                    format!(
                        "plugin {} returned status {status} where it is not allowed",
                        self.name
                    ),
                );
            }
            sys::SOCKD_E_WOULD_BLOCK => ErrorCode::Busy,
            sys::SOCKD_E_CLOSED => ErrorCode::Cancelled,
            n => match u16::try_from(n) {
                Ok(n) if n != 0 => ErrorCode::from_u16(n),
                _ => ErrorCode::Internal,
            },
        };
        (code, code.description().to_string())
    }

    fn panicked(&self) -> (ErrorCode, String) {
        self.stats.panics.fetch_add(1, Ordering::Relaxed);
        let panics = self.build.panics.fetch_add(1, Ordering::SeqCst) + 1;
        let after = self.quarantine_after.load(Ordering::SeqCst);
        if panics == after && !self.build.is_retired() {
            tracing::error!(
                plugin = %self.name,
                "plugin quarantined after {panics} panics; fix it and run `sockctl plugin reload {}`", self.name
            );
        } else {
            tracing::warn!(plugin = %self.name, "a call panicked ({panics} of {after} before quarantine)");
        }
        (
            ErrorCode::Internal,
            format!("plugin {} panicked", self.name),
        )
    }
}

/// A pending inline call (ABI 1.2): its channel's input hook. Ends once,
/// whoever ends it: `on_input`'s status, the host's `finish`, or a client
/// cancel `on_input` did not answer.
struct PendingCall {
    call: RunningCall,
    ended: AtomicBool,
}

impl InputHook for PendingCall {
    fn on_input(&self, channel: &Channel) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        let scope = InlineScope::enter();
        let status = catch_unwind(AssertUnwindSafe(|| {
            self.call.build.on_input(channel.handle)
        }))
        .unwrap_or(sys::SOCKD_E_INTERNAL);
        drop(scope);
        if status != sys::SOCKD_PENDING {
            self.end(channel, status);
        } else if channel.is_cancelled() {
            // The plugin did not notice: the client is gone all the same.
            self.end(channel, sys::SOCKD_E_CANCELLED);
        }
    }

    fn end(&self, channel: &Channel, status: i32) -> bool {
        if self.ended.swap(true, Ordering::SeqCst) {
            return false;
        }
        let (code, message) = self.call.outcome(status);
        channel.finish(code, &message);
        self.call.build.call_ended();
        true
    }
}
