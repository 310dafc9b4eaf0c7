//! `[plugins.files]` settings: quotas (global and per user) and how long
//! the partial files of abandoned uploads are kept.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Seven days: long enough to resume after a weekend.
pub const DEFAULT_PARTIAL_TTL_SECS: u64 = 7 * 24 * 3600;

/// The plugin's settings, as parsed from its config table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Bytes a user may store; 0 is unlimited.
    pub quota_bytes: u64,
    /// Files and directories a user may have; 0 is unlimited.
    pub quota_files: u64,
    /// Partial files untouched for this long are deleted.
    pub partial_ttl_secs: u64,
    /// Per-user overrides of the quotas.
    pub users: BTreeMap<String, UserSettings>,
}

/// `[plugins.files.users.NAME]`: what differs for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    pub quota_bytes: Option<u64>,
    pub quota_files: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            quota_bytes: 0,
            quota_files: 0,
            partial_ttl_secs: DEFAULT_PARTIAL_TTL_SECS,
            users: BTreeMap::new(),
        }
    }
}

/// One user's limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub bytes: u64,
    pub files: u64,
}

impl Settings {
    /// Parses the plugin's config table (TOML text, without `file`).
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings =
            toml::from_str(text).map_err(|e| format!("[plugins.files]: {}", e.message()))?;
        if settings.partial_ttl_secs == 0 {
            return Err("[plugins.files]: partial_ttl_secs must be at least 1".into());
        }
        Ok(settings)
    }

    pub fn limits(&self, user: &str) -> Limits {
        let over = self.users.get(user);
        Limits {
            bytes: over.and_then(|u| u.quota_bytes).unwrap_or(self.quota_bytes),
            files: over.and_then(|u| u.quota_files).unwrap_or(self.quota_files),
        }
    }

    pub fn partial_ttl(&self) -> Duration {
        Duration::from_secs(self.partial_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_means_no_limits() {
        let s = Settings::parse("").unwrap();
        assert_eq!(s.limits("anyone"), Limits { bytes: 0, files: 0 });
        assert_eq!(
            s.partial_ttl(),
            Duration::from_secs(DEFAULT_PARTIAL_TTL_SECS)
        );
    }

    #[test]
    fn users_override_the_defaults() {
        let s =
            Settings::parse("quota_bytes = 100\nquota_files = 5\n[users.alice]\nquota_bytes = 7\n")
                .unwrap();
        assert_eq!(s.limits("alice"), Limits { bytes: 7, files: 5 });
        assert_eq!(
            s.limits("bob"),
            Limits {
                bytes: 100,
                files: 5
            }
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Settings::parse("quota = 1").unwrap_err();
        assert!(e.contains("unknown field `quota`"), "{e}");
        let e = Settings::parse("quota_bytes = -1").unwrap_err();
        assert!(
            e.contains("quota_bytes") || e.contains("invalid value"),
            "{e}"
        );
        let e = Settings::parse("[users.a]\nquota_byte = 1").unwrap_err();
        assert!(e.contains("quota_byte"), "{e}");
        assert!(Settings::parse("partial_ttl_secs = 0").is_err());
    }
}
