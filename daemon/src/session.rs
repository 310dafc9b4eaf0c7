//! Authenticated sessions: who is connected, from where, since when, and
//! what they are running. `sockctl sessions` lists them, `sockctl kick`
//! ends one, and plugins ask whether a user is online.

use crate::channel::ChannelTable;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

pub struct Session {
    pub id: u64,
    pub user: Arc<str>,
    pub peer: SocketAddr,
    /// `peer` as text, formatted on first use ([`Session::peer_text`]).
    peer_text: OnceLock<Box<str>>,
    pub since: SystemTime,
    /// The user's home directory (state_dir/home/USER), told to every call.
    pub home: PathBuf,
    /// A channel was opened: plugins may keep something for the session.
    opened_channels: AtomicBool,
    /// Notified once when an administrator kicks the session (a stored
    /// permit if its connection is not waiting yet).
    kick: Notify,
}

impl Session {
    /// `peer` as text, formatted once, for the first call that is told it
    /// (a session that makes no call never formats it).
    pub fn peer_text(&self) -> &str {
        self.peer_text.get_or_init(|| self.peer.to_string().into())
    }

    /// Notes that the session opened a channel (called for each OPEN).
    pub fn opened_channel(&self) {
        if !self.opened_channels.load(Ordering::Relaxed) {
            self.opened_channels.store(true, Ordering::Relaxed);
        }
    }

    /// Whether plugins may have seen the session: only then are they told
    /// it ended.
    pub fn opened_channels(&self) -> bool {
        self.opened_channels.load(Ordering::Relaxed)
    }

    /// Resolves when an administrator kicks this session.
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    pub fn info(&self) -> sockd_proto::control::SessionInfo {
        // Its operations are its channels: listed from the channel table
        // here, rather than kept twice at the cost of every call.
        let commands = ChannelTable::global().commands_of(self.id);
        sockd_proto::control::SessionInfo {
            id: self.id,
            user: self.user.to_string(),
            address: self.peer_text().to_string(),
            since: self
                .since
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            active_operations: commands.len() as u32,
            commands,
        }
    }
}

/// The live sessions of this daemon.
pub struct Sessions {
    map: RwLock<HashMap<u64, Arc<Session>>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// One registry per process: the plugin ABI's `user_online` has no
    /// context argument to find it by.
    pub fn global() -> &'static Sessions {
        static SESSIONS: OnceLock<Sessions> = OnceLock::new();
        SESSIONS.get_or_init(|| Sessions {
            map: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn register(&self, user: &str, peer: SocketAddr, home: PathBuf) -> Arc<Session> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            user: user.into(),
            peer,
            peer_text: OnceLock::new(),
            since: SystemTime::now(),
            home,
            opened_channels: AtomicBool::new(false),
            kick: Notify::new(),
        });
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, session.clone());
        session
    }

    pub fn remove(&self, id: u64) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn list(&self) -> Vec<sockd_proto::control::SessionInfo> {
        let mut out: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.info())
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the session's connection to close; false if there is none.
    pub fn kick(&self, id: u64) -> bool {
        match self.map.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            Some(s) => {
                s.kick.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn user_online(&self, user: &str) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| *s.user == *user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_kick_before_the_session_waits_for_it_is_not_lost() {
        let sessions = Sessions::global();
        let session = sessions.register("kick-early", "127.0.0.1:9".parse().unwrap(), "/h".into());
        assert!(sessions.kick(session.id));
        tokio::time::timeout(Duration::from_secs(5), session.kicked())
            .await
            .expect("the kick is seen");
        assert_eq!(session.peer_text(), "127.0.0.1:9");
        sessions.remove(session.id);
        assert!(!sessions.kick(session.id));
    }
}
