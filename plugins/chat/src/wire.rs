//! What the chat plugin exchanges with clients: the JSON shapes, the rules
//! for user and room names, and the error codes as slugs.
//!
//! Every message a client receives is one JSON line (see docs/PROTOCOL.md,
//! "chat"). Names are checked here, once, so that the store only ever sees
//! valid ones.

use serde::{Deserialize, Serialize};
use sockd_plugin::{Code, Failure};

/// A chat message as stored and shown: a text, or a room notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Server-assigned, increasing over the whole server.
    pub id: i64,
    /// Milliseconds since the Unix epoch, server clock.
    pub ts: i64,
    /// `msg`, or the notices `join` and `leave`.
    pub kind: String,
    pub from: String,
    /// A user name, or a room (`#name`).
    pub to: String,
    pub text: String,
}

impl Message {
    /// The line pushed to a recipient: the message plus the recipient's
    /// delivery number `seq`.
    pub fn delivery_line(&self, seq: i64) -> Result<Vec<u8>, Failure> {
        /// The message with `seq` first, written in one go.
        #[derive(Serialize)]
        struct Line<'a> {
            seq: i64,
            id: i64,
            ts: i64,
            kind: &'a str,
            from: &'a str,
            to: &'a str,
            text: &'a str,
        }
        let mut line = Vec::with_capacity(
            96 + self.kind.len() + self.from.len() + self.to.len() + self.text.len() * 6 / 5,
        );
        serde_json::to_writer(
            &mut line,
            &Line {
                seq,
                id: self.id,
                ts: self.ts,
                kind: &self.kind,
                from: &self.from,
                to: &self.to,
                text: &self.text,
            },
        )
        .map_err(|e| Failure::internal(format!("cannot encode a message: {e}")))?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Room(String),
}

impl Target {
    /// Parses `USER` or `#ROOM`.
    pub fn parse(text: &str) -> Result<Target, Failure> {
        if text.starts_with('#') {
            room_name(text).map(Target::Room)
        } else {
            user_name(text).map(Target::User)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Target::User(u) | Target::Room(u) => u,
        }
    }
}

/// Checks a user name with the daemon's rule: 1 to 32 of `A-Z a-z 0-9 _ - .`,
/// not starting with `-` or `.`.
pub fn user_name(name: &str) -> Result<String, Failure> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(name.to_string())
    } else {
        Err(Failure::new(
            Code::NotFound,
            format!("no such user: {name:?} is not a valid user name"),
        ))
    }
}

/// Checks a room name: `#` then 1 to 32 of `a-z 0-9 _ - .`; upper case is
/// folded to lower case so `#Ops` and `#ops` are one room.
pub fn room_name(name: &str) -> Result<String, Failure> {
    let bad = || {
        Failure::bad_request(format!(
            "invalid room name {name:?}: use # followed by 1 to 32 letters, digits, '_', '-' or '.'"
        ))
    };
    let rest = name.strip_prefix('#').ok_or_else(bad)?;
    let ok = (1..=32).contains(&rest.len())
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

/// The protocol slug of a code, as `sockd_proto::ErrorCode::slug` spells it.
pub fn slug(code: Code) -> &'static str {
    match code {
        Code::RateLimited => "rate_limited",
        Code::Unavailable => "unavailable",
        Code::BadRequest => "bad_request",
        Code::PermissionDenied => "permission_denied",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::NotADirectory => "not_a_directory",
        Code::IsADirectory => "is_a_directory",
        Code::QuotaExceeded => "quota_exceeded",
        Code::NoSpace => "no_space",
        Code::NameTooLong => "name_too_long",
        Code::TooLarge => "too_large",
        Code::Timeout => "timeout",
        Code::Cancelled => "cancelled",
        Code::Busy => "busy",
        Code::Internal => "internal",
        Code::Conflict => "conflict",
        Code::DirectoryNotEmpty => "directory_not_empty",
    }
}

/// One line a client sends on stream 2 of a `chat listen` channel. Either
/// `ack` or `resync`, or an operation `op` with its reference `ref`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Every delivery up to this `seq` has been shown.
    pub ack: Option<i64>,
    /// Send the waiting deliveries again from this `seq` on.
    pub resync: Option<i64>,
    /// Echoed in the reply so the client can match it.
    #[serde(rename = "ref")]
    pub reference: Option<u64>,
    /// `send`, `who`, `join`, `leave`, `rooms`, `history`.
    pub op: Option<String>,
    pub to: Option<String>,
    pub text: Option<String>,
    pub room: Option<String>,
    pub with: Option<String>,
    pub limit: Option<u32>,
    pub before: Option<i64>,
}

/// The reply to a request with `ref`: `{"ref":R,"ok":V}` or
/// `{"ref":R,"error":{"code":SLUG,"message":TEXT}}`, as one line.
pub fn reply_line(reference: Option<u64>, result: Result<serde_json::Value, Failure>) -> Vec<u8> {
    let value = match result {
        Ok(ok) => serde_json::json!({ "ref": reference, "ok": ok }),
        Err(f) => serde_json::json!({
            "ref": reference,
            "error": { "code": slug(f.code), "message": f.message },
        }),
    };
    json_line(&value)
}

/// A JSON value as one line with its newline.
pub fn json_line(value: &serde_json::Value) -> Vec<u8> {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Target::parse("bob").unwrap(), Target::User("bob".into()));
        assert_eq!(Target::parse("#Ops").unwrap(), Target::Room("#ops".into()));
        assert_eq!(Target::parse("-x").unwrap_err().code, Code::NotFound);
        assert_eq!(Target::parse("#").unwrap_err().code, Code::BadRequest);
        assert_eq!(Target::parse("#a b").unwrap_err().code, Code::BadRequest);
        assert!(user_name(&"a".repeat(33)).is_err());
    }

    #[test]
    fn delivery_line_adds_seq() {
        let m = Message {
            id: 7,
            ts: 9,
            kind: "msg".into(),
            from: "a".into(),
            to: "b".into(),
            text: "hi \"x\"".into(),
        };
        let line = m.delivery_line(3).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["seq"], 3);
        assert_eq!(v["id"], 7);
        assert_eq!(v["text"], "hi \"x\"");
        assert!(line.ends_with(b"\n"));
    }

    #[test]
    fn replies() {
        let ok: serde_json::Value =
            serde_json::from_slice(&reply_line(Some(4), Ok(serde_json::json!({"id": 1})))).unwrap();
        assert_eq!(ok["ref"], 4);
        assert_eq!(ok["ok"]["id"], 1);
        let err: serde_json::Value = serde_json::from_slice(&reply_line(
            None,
            Err(Failure::new(Code::RateLimited, "slow down")),
        ))
        .unwrap();
        assert_eq!(err["error"]["code"], "rate_limited");
        assert!(err["ref"].is_null());
    }
}
