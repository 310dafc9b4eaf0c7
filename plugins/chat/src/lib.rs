//! The sockd chat plugin: direct messages and rooms, presence, history,
//! and durable exactly-once delivery to users who are offline.
//!
//! - [`config`]: the `[plugins.chat]` settings;
//! - [`store`]: the SQLite database and its group-committing thread;
//! - [`live`]: the in-memory roster that numbers messages so they are
//!   pushed before their commit;
//! - [`calls`]: the `chat` command's subcommands, including the long-lived
//!   `chat listen` channel of interactive clients;
//! - [`lines`]: `chat send-lines` served on the connection's task (ABI 1.2
//!   pending inline call): no thread hand-off between a line and its push;
//! - [`wire`]: JSON shapes and name rules; [`rate`]: flood protection.
//!
//! The protocol is in docs/PROTOCOL.md ("chat"), the user and operator
//! guide in docs/CHAT.md.

mod calls;
mod lines;
mod live;
// Public only for the fuzz targets (fuzz/); not an API.
#[doc(hidden)]
pub mod config;
mod rate;
mod store;
#[doc(hidden)]
pub mod wire;

use config::Settings;
use rate::RateLimiter;
use sockd_plugin::{Call, Code, Failure, Host, Inline, Plugin};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use store::Store;

/// One loaded build of the plugin.
pub struct Chat {
    host: Host,
    settings: Arc<Mutex<Settings>>,
    /// Opened on the first call, which tells where the state directory is.
    store: Mutex<Option<Arc<Store>>>,
    limiter: Arc<RateLimiter>,
}

impl Chat {
    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The store if it is open already (opening it may wait).
    fn opened_store(&self) -> Option<Arc<Store>> {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The store, opened on first use at `db_path` or
    /// `<state_dir>/chat/chat.db`, where state_dir holds `home/USER`.
    fn store(&self, call: &Call<'_>) -> Result<Arc<Store>, Failure> {
        let mut slot = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let path = match self.settings().db_path {
            Some(path) => path,
            None => default_db_path(call.home())?,
        };
        let store = Store::open(self.host, &path, self.settings.clone()).map_err(|e| {
            self.host.error(&e);
            Failure::new(Code::Unavailable, e)
        })?;
        self.host.info(&format!("chat database {}", path.display()));
        let store = Arc::new(store);
        *slot = Some(store.clone());
        Ok(store)
    }
}

/// `<state_dir>/chat/chat.db` from a user's home, `<state_dir>/home/USER`.
fn default_db_path(home: &Path) -> Result<PathBuf, Failure> {
    home.parent()
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .map(|state| state.join("chat").join("chat.db"))
        .ok_or_else(|| {
            Failure::internal(format!(
                "cannot find the state directory from the home directory {:?}; set db_path in [plugins.chat]",
                home.display()
            ))
        })
}

impl Plugin for Chat {
    fn init(host: Host, config: &str) -> Result<Self, String> {
        let settings = Settings::parse(config)?;
        Ok(Chat {
            host,
            settings: Arc::new(Mutex::new(settings)),
            store: Mutex::new(None),
            limiter: Arc::new(RateLimiter::new()),
        })
    }

    fn configure(&self, config: &str) -> Result<(), String> {
        let new = Settings::parse(config)?;
        let opened = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.path.clone());
        if let (Some(opened), Some(wanted)) = (opened, &new.db_path)
            && &opened != wanted
        {
            self.host.warn(&format!(
                "db_path changed to {}; the open database {} stays in use until `sockctl plugin reload chat`",
                wanted.display(),
                opened.display()
            ));
        }
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }

    fn handle(&self, call: &Call<'_>) -> Result<(), Failure> {
        calls::handle(self, call)
    }

    /// `chat` is inline: `send-lines` is served on the connection's task,
    /// the other subcommands (which wait for the store) on a call thread.
    fn handle_inline(&self, call: &Call<'_>) -> Result<Inline, Failure> {
        lines::handle_inline(self, call)
    }

    fn shutdown(&self) {
        if let Some(store) = self
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            store.stop();
        }
    }
}

sockd_plugin::export_plugin!(
    name: "chat",
    version: env!("CARGO_PKG_VERSION"),
    commands: ["chat"],
    inline: ["chat"],
    plugin: Chat,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_db_path_is_under_the_state_dir() {
        assert_eq!(
            default_db_path(Path::new("/var/lib/sockd/home/alice")).unwrap(),
            PathBuf::from("/var/lib/sockd/chat/chat.db")
        );
        assert!(default_db_path(Path::new("alice")).is_err());
    }
}
