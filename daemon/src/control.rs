//! The Unix control socket: administration for `sockctl status`,
//! `sessions`, `kick`, `user ...`, `reload` and `plugins`.
//!
//! Mode 0660. Each peer's credentials (SO_PEERCRED) are checked before a
//! request is read: root, the daemon's own uid and members of the admin
//! group are served; anyone else gets a clear refusal. One JSON request
//! line, one JSON response line (docs/PROTOCOL.md, "Control socket").

use crate::config::ControlConfig;
use crate::server::Shared;
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use crate::users::{record_to_credential, valid_user_name};
use sockd_proto::control::{RealmInfo, Request, Response, StatusInfo};
use sockd_proto::{CredentialKind, ErrorCode};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the socket, replacing a stale one, with mode 0660 and the admin
/// group as its group when that group exists.
pub fn bind(config: &ControlConfig) -> Result<UnixListener, String> {
    let path = &config.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create directory: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{}: another sockd is already listening there",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("{}: cannot remove stale socket: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("{}: cannot bind control socket: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("{}: cannot set mode 0660: {e}", path.display()))?;
    if !config.admin_group.is_empty() {
        match nix::unistd::Group::from_name(&config.admin_group) {
            Ok(Some(group)) => {
                if let Err(e) = nix::unistd::chown(path, None, Some(group.gid)) {
                    tracing::warn!(
                        "{}: cannot give the socket to group {}: {e}",
                        path.display(),
                        config.admin_group
                    );
                }
            }
            _ => tracing::debug!("admin group {} does not exist", config.admin_group),
        }
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::error!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.recv() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &shared).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

/// Whether the peer may administer the daemon.
fn authorize(stream: &UnixStream, shared: &Shared) -> Result<u32, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let uid = cred.uid();
    let own = nix::unistd::geteuid().as_raw();
    if uid == 0 || uid == own {
        return Ok(uid);
    }
    let group_name = shared.config().control.admin_group.clone();
    if !group_name.is_empty()
        && let Ok(Some(group)) = nix::unistd::Group::from_name(&group_name)
    {
        let primary = cred.gid() == group.gid.as_raw();
        let member = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .is_some_and(|u| u.gid == group.gid || group.mem.contains(&u.name));
        if primary || member {
            return Ok(uid);
        }
    }
    let group_hint = if group_name.is_empty() {
        String::new()
    } else {
        format!(", or in group {group_name}")
    };
    Err(format!(
        "permission denied: uid {uid} may not use the control socket (allowed: root, uid {own}{group_hint})"
    ))
}

async fn handle(stream: UnixStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    let authorized = authorize(&stream, shared);
    let (read, mut write) = stream.into_split();
    // The request is read even from a peer about to be refused, so that its
    // write succeeds and it reads the refusal instead of a broken pipe.
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await;
    let response = match (authorized, read) {
        (Err(why), _) => {
            tracing::warn!("control socket: {why}");
            Response::err(ErrorCode::PermissionDenied, why)
        }
        (Ok(_), Err(_)) => Response::err(ErrorCode::Timeout, "no request within 30 s"),
        (Ok(_), Ok(Err(e))) => {
            Response::err(ErrorCode::BadRequest, format!("cannot read request: {e}"))
        }
        (Ok(_), Ok(Ok(_))) if !line.ends_with('\n') => Response::err(
            ErrorCode::BadRequest,
            format!("request must be one line of at most {MAX_REQUEST} bytes"),
        ),
        (Ok(uid), Ok(Ok(_))) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::err(ErrorCode::BadRequest, format!("bad request: {e}")),
            Ok(request) => {
                tracing::info!(uid, "control: {}", request_name(&request));
                execute(request, shared).await
            }
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_else(|_| {
        r#"{"ok":false,"error":{"code":"internal","message":"encoding failed"}}"#.into()
    });
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

fn request_name(r: &Request) -> String {
    match r {
        Request::Status {} => "status".into(),
        Request::Sessions {} => "sessions".into(),
        Request::Kick { id } => format!("kick {id}"),
        Request::UserAdd { name, .. } => format!("user add {name}"),
        Request::UserDel { name } => format!("user del {name}"),
        Request::UserList {} => "user list".into(),
        Request::Realm {} => "realm".into(),
        Request::Reload {} => "reload".into(),
        Request::Plugins {} => "plugins".into(),
        Request::PluginReload { name } => format!("plugin reload {name}"),
    }
}

async fn execute(request: Request, shared: &Arc<Shared>) -> Response {
    match request {
        Request::Status {} => Response::ok(StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_secs: shared.started.elapsed().as_secs(),
            listen: shared.listen.iter().map(|a| a.to_string()).collect(),
            control_socket: shared.control_socket.display().to_string(),
            connections: shared
                .connections
                .load(std::sync::atomic::Ordering::Relaxed) as u64,
            sessions: Sessions::global().len() as u64,
            plugins: shared.plugins().list(),
        }),
        Request::Sessions {} => Response::ok(Sessions::global().list()),
        Request::Kick { id } => {
            if Sessions::global().kick(id) {
                Response::ok(serde_json::json!({ "kicked": id }))
            } else {
                Response::err(
                    ErrorCode::NotFound,
                    format!("no session with id {id}; see `sockctl sessions`"),
                )
            }
        }
        Request::UserAdd {
            name,
            credential,
            replace,
        } => {
            if !valid_user_name(&name) {
                return Response::err(
                    ErrorCode::BadRequest,
                    format!(
                        "invalid user name {name:?}: use 1 to 32 of A-Z a-z 0-9 . _ - (not starting with . or -)"
                    ),
                );
            }
            let stored = match record_to_credential(&credential) {
                Ok(c) => c,
                Err(e) => {
                    return Response::err(ErrorCode::BadRequest, format!("bad credential: {e}"));
                }
            };
            update_users(shared, move |users| {
                if stored.kind == CredentialKind::Key && stored.salt != users.realm() {
                    return Err((
                        ErrorCode::BadRequest,
                        "bad credential: a key credential must be salted with this server's \
                         realm (`{\"cmd\":\"realm\"}`); this sockctl may be older than the daemon"
                            .to_string(),
                    ));
                }
                if users.contains(&name) && !replace {
                    return Err((
                        ErrorCode::AlreadyExists,
                        format!(
                            "user {name} already exists; use --replace to change its credential"
                        ),
                    ));
                }
                users.insert(&name, stored);
                Ok(serde_json::json!({ "added": name }))
            })
            .await
        }
        Request::UserDel { name } => {
            let deleted = name.clone();
            let response = update_users(shared, move |users| {
                if users.remove(&name) {
                    Ok(serde_json::json!({ "deleted": name }))
                } else {
                    Err((
                        ErrorCode::NotFound,
                        format!("no user named {name}; see `sockctl user list`"),
                    ))
                }
            })
            .await;
            if matches!(response, Response::Ok { .. }) {
                // A deleted user keeps no live session.
                for s in Sessions::global()
                    .list()
                    .into_iter()
                    .filter(|s| s.user == deleted)
                {
                    Sessions::global().kick(s.id);
                }
            }
            response
        }
        Request::UserList {} => Response::ok(shared.users().list()),
        Request::Realm {} => {
            let users = shared.users();
            let realm = RealmInfo {
                realm: sockd_proto::hex::encode(users.realm()),
            };
            if users.realm_saved() {
                return Response::ok(realm);
            }
            // Written before it is handed out: a key derived with it stays
            // valid across restarts and reloads.
            update_users(shared, |users| {
                let realm = RealmInfo {
                    realm: sockd_proto::hex::encode(users.realm()),
                };
                Ok(serde_json::to_value(realm).unwrap_or_default())
            })
            .await
        }
        Request::Reload {} => match shared.reload().await {
            Ok(summary) => Response::ok(serde_json::json!({ "reloaded": summary })),
            Err(e) => Response::err(ErrorCode::BadRequest, e.to_string()),
        },
        Request::Plugins {} => Response::ok(shared.plugins().list()),
        Request::PluginReload { name } => {
            let plugins = shared.plugins();
            match tokio::task::spawn_blocking(move || plugins.reload(&name)).await {
                Ok(Ok(info)) => Response::ok(info),
                Ok(Err((code, message))) => Response::err(code, message),
                Err(_) => Response::err(ErrorCode::Internal, "plugin reload panicked"),
            }
        }
    }
}

type UserEdit = Result<serde_json::Value, (ErrorCode, String)>;

/// Applies `edit` to a copy of the users, writes the file, then swaps it in:
/// the file and the running daemon never disagree.
async fn update_users(
    shared: &Arc<Shared>,
    edit: impl FnOnce(&mut crate::users::Users) -> UserEdit + Send + 'static,
) -> Response {
    let _guard = shared.users_write.lock().await;
    let mut users = (*shared.users()).clone();
    let path = shared.config().server.users_file();
    let result = tokio::task::spawn_blocking(move || {
        let value = edit(&mut users)?;
        users.save(&path).map_err(|e| {
            (
                ErrorCode::Internal,
                format!("{}: cannot write users file: {e}", path.display()),
            )
        })?;
        Ok((value, users))
    })
    .await;
    match result {
        Ok(Ok((value, users))) => {
            shared.set_users(users);
            Response::ok(value)
        }
        Ok(Err((code, message))) => Response::err(code, message),
        Err(_) => Response::err(ErrorCode::Internal, "users update panicked"),
    }
}
