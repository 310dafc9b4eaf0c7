//! The files plugin: each user's home as a jailed file store, served to
//! `sockctl put/get/ls/mkdir/rm/mv/quota` and the `sockctl files` shell.
//!
//! - [`jail`]: resolving client paths inside the home (`openat2` with
//!   `RESOLVE_BENEATH`), names refused, fd-relative operations;
//! - [`transfer`]: `put` and `get`, hashed with BLAKE3, written to hidden
//!   partial files, renamed into place once verified and fsynced, and
//!   resumable after any interruption;
//! - [`quota`]: per-user limits with reservations, recounts and the sweep
//!   of expired partial files;
//! - [`ops`]: `ls`, `stat`, `mkdir`, `rm`, `mv`, `cd`, `pwd`, `quota`;
//! - [`protocol`]: the control messages; [`config`]: the settings.
//!
//! The working directory of `cd` is kept per session and dropped when the
//! session closes. The protocol is documented under `### files` in
//! docs/PROTOCOL.md, the use in docs/FILES.md.

// Public only for the fuzz targets (fuzz/); not an API.
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod jail;
mod ops;
#[doc(hidden)]
pub mod protocol;
mod quota;
mod transfer;

use config::{Limits, Settings};
use jail::{Jail, JailPath};
use quota::{Quotas, UserQuota};
use sockd_plugin::{Call, Failure, Host, Plugin};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The plugin: settings, the sessions' working directories and the quotas.
struct Files {
    settings: RwLock<Arc<Settings>>,
    cwds: Mutex<HashMap<u64, JailPath>>,
    quotas: Quotas,
}

/// What every command handler gets.
pub(crate) struct Ctx<'a> {
    pub call: &'a Call<'a>,
    pub jail: Jail,
    pub cwd: JailPath,
    pub settings: Arc<Settings>,
    pub quota: Arc<UserQuota>,
    pub limits: Limits,
}

impl Ctx<'_> {
    /// A client path resolved against the session's working directory.
    pub fn resolve(&self, path: &str) -> Result<JailPath, Failure> {
        JailPath::resolve(&self.cwd, path)
    }
}

impl Files {
    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn cwd(&self, session: u64) -> JailPath {
        let cwds = self.cwds.lock().unwrap_or_else(|p| p.into_inner());
        cwds.get(&session).cloned().unwrap_or_default()
    }

    fn set_cwd(&self, session: u64, cwd: JailPath) {
        let mut cwds = self.cwds.lock().unwrap_or_else(|p| p.into_inner());
        cwds.insert(session, cwd);
    }
}

impl Plugin for Files {
    fn init(_host: Host, config: &str) -> Result<Self, String> {
        Ok(Files {
            settings: RwLock::new(Arc::new(Settings::parse(config)?)),
            cwds: Mutex::default(),
            quotas: Quotas::default(),
        })
    }

    fn configure(&self, config: &str) -> Result<(), String> {
        let settings = Settings::parse(config)?;
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
        Ok(())
    }

    fn handle(&self, call: &Call<'_>) -> Result<(), Failure> {
        let args = call.str_args()?;
        let settings = self.settings();
        let jail = Jail::open(call.home())?;
        let quota = self.quotas.user(call.user(), call.home());
        quota.prepare(jail.fd(), settings.partial_ttl())?;
        let ctx = Ctx {
            call,
            jail,
            cwd: self.cwd(call.session_id()),
            limits: settings.limits(call.user()),
            settings,
            quota,
        };
        match call.command() {
            "put" => transfer::put(&ctx, &args),
            "get" => transfer::get(&ctx, &args),
            "ls" => ops::ls(&ctx, &args),
            "stat" => ops::stat(&ctx, &args),
            "mkdir" => ops::mkdir(&ctx, &args),
            "rm" => ops::rm(&ctx, &args),
            "mv" => ops::mv(&ctx, &args),
            "cd" => {
                let cwd = ops::cd(&ctx, &args)?;
                self.set_cwd(call.session_id(), cwd);
                Ok(())
            }
            "pwd" => ops::pwd(&ctx, &args),
            "quota" => ops::quota(&ctx, &args),
            other => Err(Failure::bad_request(format!(
                "files: unknown command {other}"
            ))),
        }
    }

    fn session_closed(&self, session_id: u64) {
        let mut cwds = self.cwds.lock().unwrap_or_else(|p| p.into_inner());
        cwds.remove(&session_id);
    }
}

sockd_plugin::export_plugin!(
    name: "files",
    version: env!("CARGO_PKG_VERSION"),
    commands: ["put", "get", "ls", "stat", "mkdir", "rm", "mv", "cd", "pwd", "quota"],
    plugin: Files,
);
