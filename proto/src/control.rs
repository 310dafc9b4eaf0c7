//! The control-socket protocol: one JSON object per line each way.
//!
//! A client writes a [`Request`] line and reads one [`Response`] line. The
//! daemon checks the peer's credentials (SO_PEERCRED) before reading.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Sessions {},
    Kick {
        id: u64,
    },
    /// Adds a user. The client derives the stored keys, so the daemon never
    /// sees the password or key.
    UserAdd {
        name: String,
        credential: CredentialRecord,
        #[serde(default)]
        replace: bool,
    },
    UserDel {
        name: String,
    },
    UserList {},
    /// The realm key credentials must be salted with (see
    /// [`crate::auth::key_credential`]); the daemon writes it to the users
    /// file before answering, so it stays the same.
    Realm {},
    /// Re-reads config, users and certificates; answers when done.
    Reload {},
    Plugins {},
    PluginReload {
        name: String,
    },
}

/// A stored credential in hex, as in the users file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRecord {
    /// `password` or `key`.
    pub kind: String,
    pub salt: String,
    pub iterations: u32,
    pub stored_key: String,
    pub server_key: String,
}

impl From<&crate::auth::StoredCredential> for CredentialRecord {
    fn from(c: &crate::auth::StoredCredential) -> Self {
        CredentialRecord {
            kind: c.kind.name().to_string(),
            salt: crate::hex::encode(&c.salt),
            iterations: c.iterations,
            stored_key: crate::hex::encode(&c.stored_key),
            server_key: crate::hex::encode(&c.server_key),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Ok { ok: True, result: serde_json::Value },
    Err { ok: False, error: ControlError },
}

/// `true` that only deserializes from `true` (keeps [`Response`] unambiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "bool", into = "bool")]
pub struct True;
impl TryFrom<bool> for True {
    type Error = &'static str;
    fn try_from(b: bool) -> Result<Self, Self::Error> {
        if b { Ok(True) } else { Err("expected true") }
    }
}
impl From<True> for bool {
    fn from(_: True) -> bool {
        true
    }
}

/// `false` that only deserializes from `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "bool", into = "bool")]
pub struct False;
impl TryFrom<bool> for False {
    type Error = &'static str;
    fn try_from(b: bool) -> Result<Self, Self::Error> {
        if b { Err("expected false") } else { Ok(False) }
    }
}
impl From<False> for bool {
    fn from(_: False) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    /// An [`crate::ErrorCode`] slug such as `not_found`.
    pub code: String,
    pub message: String,
}

impl Response {
    pub fn ok(result: impl Serialize) -> Self {
        Response::Ok {
            ok: True,
            result: serde_json::to_value(result).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn err(code: crate::ErrorCode, message: impl Into<String>) -> Self {
        Response::Err {
            ok: False,
            error: ControlError {
                code: code.slug().into(),
                message: message.into(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub listen: Vec<String>,
    pub control_socket: String,
    pub connections: u64,
    pub sessions: u64,
    pub plugins: Vec<PluginInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: u64,
    pub user: String,
    pub address: String,
    /// Seconds since the Unix epoch.
    pub since: u64,
    pub active_operations: u32,
    pub commands: Vec<String>,
}

/// The answer to [`Request::Realm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmInfo {
    /// Hex.
    pub realm: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub kind: String,
    pub iterations: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub abi: String,
    pub file: String,
    pub commands: Vec<String>,
    /// `loaded`, `failed` or `quarantined`.
    pub state: String,
    pub calls: u64,
    pub errors: u64,
    pub panics: u64,
    /// How many builds have been loaded (1 + successful reloads).
    pub builds: u32,
    /// Why the plugin failed to load or was quarantined.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape() {
        let r: Request = serde_json::from_str(r#"{"cmd":"kick","id":3}"#).unwrap();
        assert_eq!(r, Request::Kick { id: 3 });
        let r: Request = serde_json::from_str(r#"{"cmd":"realm"}"#).unwrap();
        assert_eq!(r, Request::Realm {});
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
    }

    #[test]
    fn response_json_shape() {
        let ok = serde_json::to_string(&Response::ok(5)).unwrap();
        assert_eq!(ok, r#"{"ok":true,"result":5}"#);
        let err = Response::err(crate::ErrorCode::NotFound, "no user x");
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), err);
        assert!(matches!(
            serde_json::from_str::<Response>(&ok).unwrap(),
            Response::Ok { .. }
        ));
    }
}
