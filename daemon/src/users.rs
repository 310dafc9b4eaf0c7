//! The users file: the server's realm (`realm = "HEX"`, the salt of every
//! key credential) and one `[users.NAME]` table per user holding the stored
//! credential (salt, iterations, StoredKey, ServerKey in hex). No password
//! or key is ever stored. Written atomically (temp file, fsync, rename).
//!
//! The realm lives in the users file so that moving the file moves it: key
//! credentials are only valid with the realm they were derived for. A file
//! without one (written before realms, or not yet written) gets a random
//! realm that is the same for the life of the process and is written with
//! the file's next save.

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sockd_proto::auth::{REALM_LEN, StoredCredential};
use sockd_proto::control::{CredentialRecord, UserInfo};
use sockd_proto::{CredentialKind, hex};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    realm: Option<String>,
    #[serde(default)]
    users: BTreeMap<String, CredentialRecord>,
}

/// The users known to the daemon.
#[derive(Debug, Clone)]
pub struct Users {
    map: BTreeMap<String, StoredCredential>,
    realm: [u8; REALM_LEN],
    /// Whether the file holds `realm` (else the next save writes it).
    realm_saved: bool,
}

/// The realm of a users file that has none yet: random, and the same for
/// every load in this process, so that a reload does not change it before
/// the file is written.
fn unsaved_realm() -> Result<[u8; REALM_LEN], String> {
    static REALM: OnceLock<[u8; REALM_LEN]> = OnceLock::new();
    if let Some(realm) = REALM.get() {
        return Ok(*realm);
    }
    let mut realm = [0u8; REALM_LEN];
    SystemRandom::new()
        .fill(&mut realm)
        .map_err(|_| "no randomness available for the users file's realm".to_string())?;
    Ok(*REALM.get_or_init(|| realm))
}

/// User names: what a home directory and a log line can safely carry.
pub fn valid_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

pub fn record_to_credential(r: &CredentialRecord) -> Result<StoredCredential, String> {
    let kind = match r.kind.as_str() {
        "password" => CredentialKind::Password,
        "key" => CredentialKind::Key,
        other => {
            return Err(format!(
                "kind must be \"password\" or \"key\", not {other:?}"
            ));
        }
    };
    let key32 = |field: &str, text: &str| -> Result<[u8; 32], String> {
        hex::decode(text)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{field} must be 64 hex digits"))
    };
    let salt = hex::decode(&r.salt)
        .filter(|s| (8..=64).contains(&s.len()))
        .ok_or("salt must be 8 to 64 bytes of hex")?;
    let iterations_ok = match kind {
        CredentialKind::Password => (sockd_proto::auth::MIN_ITERATIONS
            ..=sockd_proto::auth::MAX_ITERATIONS)
            .contains(&r.iterations),
        CredentialKind::Key => r.iterations == 0,
    };
    if !iterations_ok {
        return Err(format!(
            "iterations {} is not valid for a {} credential",
            r.iterations, r.kind
        ));
    }
    Ok(StoredCredential {
        kind,
        salt,
        iterations: r.iterations,
        stored_key: key32("stored_key", &r.stored_key)?,
        server_key: key32("server_key", &r.server_key)?,
    })
}

/// The users file is written to `.users.toml.PID`, then renamed.
const TEMP_PREFIX: &str = ".users.toml.";

/// Removes the temporary files of writers that no longer run: a process
/// killed between writing and renaming leaves one, a copy of the stored
/// credentials that nothing would ever remove.
fn remove_stale_temporaries(dir: &Path) {
    // Without /proc, a live writer cannot be told from a dead one.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Users {
    /// No users, and a realm not yet saved.
    pub fn empty() -> Result<Self, String> {
        Ok(Users {
            map: BTreeMap::new(),
            realm: unsaved_realm()?,
            realm_saved: false,
        })
    }

    /// Loads the users file; a missing file means no users. Key users of a
    /// file written before realms (or salted for another realm) are loaded
    /// but cannot log in: each is reported in the log with what to do.
    pub fn load(path: &Path) -> Result<Self, String> {
        let users = Self::load_quietly(path)?;
        for name in users.stale_keys() {
            tracing::warn!(
                "{}: users.{name}: this key credential was not derived with the file's realm \
                 (it was made by an older sockd or for another users file), so it cannot log in; \
                 replace it: `sockctl user add {name} --replace --key-file NEW.key`, then give \
                 the user NEW.key",
                path.display()
            );
        }
        Ok(users)
    }

    /// [`Users::load`] without the log lines.
    pub fn load_quietly(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Users::empty(),
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        let file: UsersFile = toml::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let mut users = Users::empty()?;
        if let Some(text) = &file.realm {
            users.realm = hex::decode(text)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "{}: realm must be {} hex digits ({REALM_LEN} bytes)",
                        path.display(),
                        REALM_LEN * 2
                    )
                })?;
            users.realm_saved = true;
        }
        for (name, record) in &file.users {
            if !valid_user_name(name) {
                return Err(format!("{}: invalid user name {name:?}", path.display()));
            }
            let cred = record_to_credential(record)
                .map_err(|e| format!("{}: users.{name}: {e}", path.display()))?;
            users.map.insert(name.clone(), cred);
        }
        Ok(users)
    }

    /// The salt of every key credential this server accepts.
    pub fn realm(&self) -> &[u8; REALM_LEN] {
        &self.realm
    }

    /// Whether the users file holds the realm.
    pub fn realm_saved(&self) -> bool {
        self.realm_saved
    }

    /// Key users whose credential was derived for another realm: their
    /// logins fail like a wrong key.
    pub fn stale_keys(&self) -> Vec<&str> {
        self.map
            .iter()
            .filter(|(_, c)| c.kind == CredentialKind::Key && c.salt != self.realm)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Writes the users file atomically with mode 0600, with the realm.
    pub fn save(&mut self, path: &Path) -> std::io::Result<()> {
        let file = UsersFile {
            realm: Some(hex::encode(&self.realm)),
            users: self
                .map
                .iter()
                .map(|(n, c)| (n.clone(), CredentialRecord::from(c)))
                .collect(),
        };
        let text = toml::to_string(&file).map_err(std::io::Error::other)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(b"# sockd users: written by `sockctl user add/del`; holds no secrets.\n")?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            // A full disk, say: leave no half-written copy taking its space.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.realm_saved = true;
        std::fs::File::open(dir)?.sync_all()?;
        remove_stale_temporaries(dir);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&StoredCredential> {
        self.map.get(name)
    }

    pub fn insert(&mut self, name: &str, cred: StoredCredential) {
        self.map.insert(name.to_string(), cred);
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.map.remove(name).is_some()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    pub fn list(&self) -> Vec<UserInfo> {
        self.map
            .iter()
            .map(|(n, c)| UserInfo {
                name: n.clone(),
                kind: c.kind.name().into(),
                iterations: c.iterations,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockd_proto::auth::{Secret, key_credential};

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut users = Users::empty().unwrap();
        assert!(!users.realm_saved());
        let realm = *users.realm();
        users.insert("alice", key_credential(&[1; 32], &realm));
        users.insert(
            "bob",
            StoredCredential::new(&Secret::Password("pw".into()), vec![2; 16], 10_000),
        );
        users.save(&path).unwrap();
        assert!(users.realm_saved());
        let back = Users::load(&path).unwrap();
        assert_eq!(back.get("alice"), users.get("alice"));
        assert_eq!(back.get("bob"), users.get("bob"));
        assert_eq!(back.realm(), &realm);
        assert!(back.realm_saved());
        assert!(back.stale_keys().is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("realm = \"{}\"", hex::encode(&realm))),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has an id beyond pid_max (at most 2^22); 1 always runs.
        let dead = dir.path().join(".users.toml.99999999");
        let live = dir.path().join(".users.toml.1");
        std::fs::write(&dead, "left by a killed writer").unwrap();
        std::fs::write(&live, "being written").unwrap();
        Users::empty()
            .unwrap()
            .save(&dir.path().join("users.toml"))
            .unwrap();
        assert!(!dead.exists());
        assert!(live.exists());
    }

    /// A users file from before realms: its key users are loaded, reported
    /// as stale, and keep their records; the next save adds a realm.
    #[test]
    fn files_without_a_realm_load_with_stale_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let old = StoredCredential::new(&Secret::Key([3; 32]), vec![9; 16], 0);
        let record = CredentialRecord::from(&old);
        std::fs::write(
            &path,
            format!(
                "[users.old]\nkind = \"key\"\nsalt = \"{}\"\niterations = 0\nstored_key = \"{}\"\nserver_key = \"{}\"\n",
                record.salt, record.stored_key, record.server_key
            ),
        )
        .unwrap();
        let mut users = Users::load(&path).unwrap();
        assert!(!users.realm_saved());
        assert_eq!(users.stale_keys(), vec!["old"]);
        // The same realm on every load until the file is written.
        assert_eq!(Users::load(&path).unwrap().realm(), users.realm());
        users.save(&path).unwrap();
        let back = Users::load(&path).unwrap();
        assert!(back.realm_saved());
        assert_eq!(back.realm(), users.realm());
        assert_eq!(back.get("old"), Some(&old));
        assert_eq!(back.stale_keys(), vec!["old"]);

        std::fs::write(&path, "realm = \"abcd\"\n").unwrap();
        assert!(
            Users::load(&path)
                .unwrap_err()
                .contains("realm must be 32 hex digits")
        );
    }

    #[test]
    fn names() {
        assert!(valid_user_name("demo"));
        assert!(valid_user_name("a.b-c_1"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("../x"));
        assert!(!valid_user_name("-x"));
        assert!(!valid_user_name(&"a".repeat(33)));
    }
}
