//! The chat plugin's settings: the `[plugins.chat]` table of sockd.toml
//! (minus `file`), parsed strictly so that a typo is an error, not a
//! silently ignored key.

use serde::Deserialize;
use std::path::PathBuf;

/// How hard SQLite pushes each commit to the disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// fsync the journal and the database at every commit: a message the
    /// sender saw accepted survives a power cut.
    Full,
    /// Fewer fsyncs; survives a crash of sockd, maybe not a power cut.
    Normal,
    /// No fsync at all; for benchmarks and throw-away servers.
    Off,
}

impl Sync {
    pub fn pragma(self) -> &'static str {
        match self {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
            Sync::Off => "OFF",
        }
    }
}

/// The settings, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The database file; absolute. Default: `<state_dir>/chat/chat.db`.
    pub db_path: Option<PathBuf>,
    /// Largest message text, in bytes of UTF-8.
    pub max_message_bytes: usize,
    /// Messages a user may send per second, sustained.
    pub rate_per_sec: f64,
    /// Messages a user may send at once before the rate applies.
    pub burst: u32,
    /// Rooms that may exist at once.
    pub max_rooms: usize,
    /// Messages older than this are deleted from the history (0: never).
    pub history_days: u32,
    /// The history keeps at most this many messages (0: no limit).
    pub history_max_messages: u64,
    pub synchronous: Sync,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            db_path: None,
            max_message_bytes: 4096,
            rate_per_sec: 20.0,
            burst: 100,
            max_rooms: 1000,
            history_days: 90,
            history_max_messages: 1_000_000,
            synchronous: Sync::Full,
        }
    }
}

/// Largest `max_message_bytes` accepted: a message must fit a frame.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 * 1024;

impl Settings {
    /// Parses the plugin's TOML table; errors name the key and the fix.
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings =
            toml::from_str(text).map_err(|e| format!("[plugins.chat]: {}", e.message().trim()))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), String> {
        if let Some(path) = &self.db_path
            && !path.is_absolute()
        {
            return Err(format!(
                "[plugins.chat] db_path = {:?}: must be an absolute path (leave it out for <state_dir>/chat/chat.db)",
                path.display()
            ));
        }
        if !(1..=MAX_MESSAGE_BYTES_LIMIT).contains(&self.max_message_bytes) {
            return Err(format!(
                "[plugins.chat] max_message_bytes = {}: must be from 1 to {MAX_MESSAGE_BYTES_LIMIT}",
                self.max_message_bytes
            ));
        }
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return Err(format!(
                "[plugins.chat] rate_per_sec = {}: must be a number above 0",
                self.rate_per_sec
            ));
        }
        if self.burst == 0 {
            return Err("[plugins.chat] burst = 0: must be at least 1".into());
        }
        if self.max_rooms == 0 {
            return Err("[plugins.chat] max_rooms = 0: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_gives_defaults() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
    }

    #[test]
    fn keys_are_read_and_checked() {
        let s = Settings::parse(
            "db_path = \"/var/lib/x.db\"\nmax_message_bytes = 10\nrate_per_sec = 2.5\nburst = 3\n\
             max_rooms = 4\nhistory_days = 0\nhistory_max_messages = 7\nsynchronous = \"normal\"\n",
        )
        .unwrap();
        assert_eq!(s.db_path, Some(PathBuf::from("/var/lib/x.db")));
        assert_eq!((s.max_message_bytes, s.burst, s.max_rooms), (10, 3, 4));
        assert_eq!((s.history_days, s.history_max_messages), (0, 7));
        assert_eq!(s.synchronous, Sync::Normal);
        assert!(
            Settings::parse("max_mesage_bytes = 1")
                .unwrap_err()
                .contains("max_mesage_bytes")
        );
        assert!(
            Settings::parse("db_path = \"rel.db\"")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(Settings::parse("burst = 0").unwrap_err().contains("burst"));
        assert!(
            Settings::parse("rate_per_sec = -1")
                .unwrap_err()
                .contains("rate_per_sec")
        );
        assert!(Settings::parse("max_message_bytes = 0").is_err());
        assert!(Settings::parse("synchronous = \"maybe\"").is_err());
    }
}
