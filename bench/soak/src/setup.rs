//! Before the load: where the daemon is (from a sockctl client config),
//! one user per client created through the control socket, as `sockctl
//! user add --key-file` would, and each client logged in with its own key.
//!
//! One user per client keeps the clients independent: each has its own
//! home (files), its own exec concurrency count, and its own chat inbox,
//! which the sequence checks need (sessions of one user share an inbox).

use crate::chat::{self, Receiver};
use crate::fail;
use futures_util::StreamExt;
use sockctl::client::control;
use sockctl::client::{Client, Config, Overrides, Settings, random_bytes, split_host_port};
use sockctl::cmd::chat::session::Session;
use sockd_proto::auth::{KEY_LEN, Secret};
use sockd_proto::control::Request;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where and how to connect, for any user.
pub struct Endpoint {
    template: Settings,
    pub socket: PathBuf,
}

impl Endpoint {
    /// Reads the client config; `addr` and `socket` override its values.
    pub fn load(
        config: &Path,
        addr: Option<String>,
        socket: Option<PathBuf>,
    ) -> Result<Endpoint, String> {
        let mut config = Config::load(Some(config)).map_err(fail)?;
        config.apply(Overrides {
            server: addr,
            ..Overrides::default()
        });
        let server = config.server.clone().ok_or(
            "the client config names no server: set `server` in it or pass --addr HOST:PORT",
        )?;
        let (host, _) = split_host_port(&server).map_err(|e| format!("server: {e}"))?;
        let trust = config.trust.clone().ok_or(
            "the client config has no `pin` or `ca`: use the client.toml that `sockd --dev DIR` writes",
        )?;
        let template = Settings {
            server_name: config
                .server_name
                .clone()
                .unwrap_or_else(|| host.to_string()),
            server,
            user: String::new(),
            secret: Secret::Key([0; KEY_LEN]),
            trust,
            connect_timeout: config.connect_timeout,
        };
        let socket = socket.unwrap_or_else(|| config.socket().to_path_buf());
        Ok(Endpoint { template, socket })
    }

    pub fn server(&self) -> &str {
        &self.template.server
    }

    /// Settings to log in as `user` with `key`.
    pub fn settings(&self, user: &str, key: [u8; KEY_LEN]) -> Settings {
        Settings {
            user: user.to_string(),
            secret: Secret::Key(key),
            ..self.template.clone()
        }
    }
}

/// Creates (or replaces) `user` with a new random key; returns the key.
pub async fn add_user(socket: &Path, user: &str) -> Result<[u8; KEY_LEN], String> {
    let mut key = [0u8; KEY_LEN];
    random_bytes(&mut key).map_err(fail)?;
    // Keys are salted with the daemon's realm, which it hands out.
    let credential = sockctl::cmd::user::key_credential(socket, &key)
        .await
        .map_err(fail)?;
    let request = Request::UserAdd {
        name: user.to_string(),
        credential,
        replace: true,
    };
    control::request(socket, &request)
        .await
        .map_err(|e| format!("cannot create user {user}: {}", e.message()))?;
    Ok(key)
}

/// A client logged in and ready for the load.
pub struct Connected {
    pub index: usize,
    pub settings: Arc<Settings>,
    pub client: Client,
    /// What it has been sent (none with fewer than two clients).
    pub receiver: Option<Receiver>,
    /// Its live listener, for even-numbered clients.
    pub live: Option<Session>,
}

/// Logs every client in, `at_once` at a time. Each reads and
/// acknowledges what waits for it first (left from an earlier run), which
/// also makes it known to chat as a recipient; even-numbered clients then
/// open their live listener.
pub async fn connect_all(
    settings: Vec<Arc<Settings>>,
    users: &[String],
    token: &str,
    at_once: usize,
) -> Result<Vec<Connected>, String> {
    let count = settings.len();
    let mut connected: Vec<Connected> =
        futures_util::stream::iter(settings.into_iter().enumerate())
            .map(|(index, settings)| async move {
                let client = Client::connect(&settings)
                    .await
                    .map_err(|e| format!("client {index} ({}): {}", settings.user, e.message()))?;
                let (receiver, live) = if count < 2 {
                    (None, None)
                } else {
                    let sender = (index + count - 1) % count;
                    let mut receiver = Receiver::new(
                        users[index].clone(),
                        users[sender].clone(),
                        sender,
                        token.to_string(),
                    );
                    chat::read_waiting(&client, &mut receiver)
                        .await
                        .map_err(|e| format!("client {index}: first chat read: {e}"))?;
                    let live = if index % 2 == 0 {
                        let session = Session::open(&client, true)
                            .await
                            .map_err(|e| format!("client {index}: chat listen: {}", e.message()))?;
                        Some(session)
                    } else {
                        None
                    };
                    (Some(receiver), live)
                };
                Ok::<_, String>(Connected {
                    index,
                    settings,
                    client,
                    receiver,
                    live,
                })
            })
            .buffer_unordered(at_once.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    connected.sort_by_key(|c| c.index);
    Ok(connected)
}
