//! `sockd --dev DIR`: a ready-to-use daemon for trying sockd out.
//!
//! Creates what is missing in DIR — a self-signed certificate, a demo user
//! with a key file, a config — and reuses what is there. After the
//! listeners are bound it writes `DIR/client.toml`, so that
//! `SOCKCTL_CONFIG=DIR/client.toml sockctl ping` just works.

use crate::users::Users;
use ring::rand::{SecureRandom, SystemRandom};
use sockd_proto::CredentialKind;
use sockd_proto::auth::{self, Secret, StoredCredential};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where `--dev` listens unless `--listen` says otherwise.
pub const DEFAULT_DEV_LISTEN: &str = "127.0.0.1:7443";
pub const DEMO_USER: &str = "demo";

const CONFIG_TEMPLATE: &str = r#"# sockd development config, written by `sockd --dev`. Edit freely: it is
# reused on the next start. Relative paths are relative to this directory.
# The full commented reference is etc/sockd.toml in the source tree.

[server]
listen = ["127.0.0.1:7443"]
name = "sockd-dev"
state_dir = "state"

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[auth]
# Short penalties keep experiments quick.
penalty_base_ms = 200
penalty_max_ms = 5000

[control]
socket = "control.sock"
admin_group = ""

[plugins]
# The plugin directory defaults to the one holding the sockd binary.
# Plugins that are not built yet are reported by `sockctl status`.
on_error = "skip"

[plugins.exec]
file = "libsockd_exec.so"
# The demo user may run anything.
[plugins.exec.users.demo]
allow = "any"

[plugins.files]
file = "libsockd_files.so"

[plugins.chat]
file = "libsockd_chat.so"
"#;

/// Creates `path` with `mode`; fails if it exists.
pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The config file of a dev directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("sockd.toml")
}

/// Creates whatever is missing in `dir`; returns the config path.
pub fn prepare(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !cert.exists() || !key.exists() {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        crate::gen_cert::write_self_signed(&cert, &key, names)?;
    }
    let state = dir.join("state");
    std::fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    let users_path = state.join("users.toml");
    let key_file = dir.join("demo.key");
    let mut users = Users::load_quietly(&users_path)?;
    let realm = users.realm().to_vec();
    let changed = match users.get(DEMO_USER).cloned() {
        Some(demo) if key_file.exists() => {
            // A dev directory from before realms: the demo key is salted
            // per user; re-derive it with the realm (if it is still the
            // key in demo.key, not one an operator put there since).
            let key = std::fs::read_to_string(&key_file)
                .ok()
                .and_then(|text| auth::decode_key(&text).ok());
            match key {
                Some(key)
                    if demo.kind == CredentialKind::Key
                        && demo.salt != realm
                        && StoredCredential::new(&Secret::Key(key), demo.salt.clone(), 0)
                            == demo =>
                {
                    users.insert(DEMO_USER, auth::key_credential(&key, &realm));
                    true
                }
                _ => false,
            }
        }
        _ => {
            let mut demo_key = [0u8; auth::KEY_LEN];
            SystemRandom::new()
                .fill(&mut demo_key)
                .map_err(|_| "no randomness available")?;
            let _ = std::fs::remove_file(&key_file);
            write_new(&key_file, auth::encode_key(&demo_key).as_bytes(), 0o600)?;
            users.insert(DEMO_USER, auth::key_credential(&demo_key, &realm));
            true
        }
    };
    if changed || !users.realm_saved() {
        users
            .save(&users_path)
            .map_err(|e| format!("{}: {e}", users_path.display()))?;
    }
    let config = config_path(dir);
    if !config.exists() {
        write_new(&config, CONFIG_TEMPLATE.as_bytes(), 0o644)?;
    }
    Ok(config)
}

/// Writes `DIR/client.toml` for the address actually bound.
pub fn write_client_config(
    dir: &Path,
    bound: &[SocketAddr],
    cert: &Path,
    socket: &Path,
) -> Result<(), String> {
    let addr = bound.first().ok_or("no listener bound")?;
    let connect = if addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), addr.port())
    } else {
        *addr
    };
    let pin = crate::tls::fingerprint(cert)?;
    let text = format!(
        "# Written by `sockd --dev` at each start. Use: SOCKCTL_CONFIG={dir}/client.toml sockctl ping\n\
         server = \"{connect}\"\n\
         user = \"{DEMO_USER}\"\n\
         key_file = \"demo.key\"\n\
         pin = \"{pin}\"\n\
         socket = \"{socket}\"\n",
        dir = dir.display(),
        socket = socket.display(),
    );
    let path = dir.join("client.toml");
    let tmp = dir.join(".client.toml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}
