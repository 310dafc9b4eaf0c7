//! `sockd.toml`: the daemon's configuration, parsed with unknown keys
//! rejected. Errors name the file, the line and the key. Relative paths are
//! resolved against the directory of the config file.

use serde::Deserialize;
use sockd_proto::frame::{DEFAULT_MAX_FRAME, MIN_MAX_FRAME};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub name: String,
    pub state_dir: PathBuf,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub max_channels_per_connection: usize,
    pub idle_timeout_secs: u64,
    pub max_frame_size: u32,
    pub window: u32,
    pub shutdown_grace_secs: u64,
    /// Seconds without a new channel, after some opened, before freed
    /// memory is given back to the system (crate::release); 0 never.
    pub release_memory_after_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 7443))],
            name: "sockd".into(),
            state_dir: "/var/lib/sockd".into(),
            max_connections: 4096,
            max_connections_per_source: 64,
            max_channels_per_connection: 64,
            idle_timeout_secs: 900,
            max_frame_size: DEFAULT_MAX_FRAME,
            window: 1 << 20,
            shutdown_grace_secs: 30,
            release_memory_after_secs: 10,
        }
    }
}

impl ServerConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn release_memory_after(&self) -> Duration {
        Duration::from_secs(self.release_memory_after_secs)
    }

    pub fn users_file(&self) -> PathBuf {
        self.state_dir.join("users.toml")
    }

    pub fn home_root(&self) -> PathBuf {
        self.state_dir.join("home")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub timeout_secs: u64,
    pub max_attempts: u32,
    pub penalty_base_ms: u64,
    pub penalty_max_ms: u64,
    /// Iterations announced for unknown users who try a password.
    pub fake_iterations: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 10,
            max_attempts: 3,
            penalty_base_ms: 1000,
            penalty_max_ms: 60_000,
            fake_iterations: sockd_proto::auth::DEFAULT_ITERATIONS,
        }
    }
}

impl AuthConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// Members of this group may use the control socket (besides root and
    /// the daemon's own user). Empty: nobody else.
    pub admin_group: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: "/run/sockd-control/control.sock".into(),
            admin_group: "sockctl".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Journal-style lines under systemd, plain lines on a terminal.
    #[default]
    Auto,
    Plain,
    Journal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `sockd=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnPluginError {
    /// Refuse to start when a listed plugin cannot be loaded.
    #[default]
    Refuse,
    /// Start without it and report it in `sockctl status`.
    Skip,
}

/// `[plugins]`: host keys plus one `[plugins.NAME]` table per plugin.
#[derive(Debug, Clone)]
pub struct PluginsConfig {
    pub dir: PathBuf,
    /// Whether `dir` was set in the file (dev mode supplies its own otherwise).
    pub dir_explicit: bool,
    pub on_error: OnPluginError,
    /// Panics after which a plugin is quarantined.
    pub quarantine_after: u32,
    pub entries: BTreeMap<String, PluginEntry>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: "/usr/lib/sockd/plugins".into(),
            dir_explicit: false,
            on_error: OnPluginError::Refuse,
            quarantine_after: 3,
            entries: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PluginEntry {
    /// File name inside `dir` (or an absolute path).
    pub file: PathBuf,
    /// The rest of the table, handed to the plugin as TOML text.
    pub settings: toml::Table,
}

impl<'de> Deserialize<'de> for PluginsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let mut out = PluginsConfig::default();
        if let Some(v) = table.remove("dir") {
            out.dir = v
                .as_str()
                .ok_or_else(|| D::Error::custom("plugins.dir must be a string"))?
                .into();
            out.dir_explicit = true;
        }
        if let Some(v) = table.remove("on_error") {
            out.on_error = v
                .try_into()
                .map_err(|_| D::Error::custom("plugins.on_error must be \"refuse\" or \"skip\""))?;
        }
        if let Some(v) = table.remove("quarantine_after") {
            let n = v.as_integer().filter(|n| (1..=1000).contains(n));
            out.quarantine_after = n.ok_or_else(|| {
                D::Error::custom("plugins.quarantine_after must be an integer from 1 to 1000")
            })? as u32;
        }
        for (name, value) in table {
            let toml::Value::Table(mut settings) = value else {
                return Err(D::Error::custom(format!(
                    "unknown key plugins.{name}: expected dir, on_error, quarantine_after or a [plugins.{name}] table"
                )));
            };
            if !valid_plugin_name(&name) {
                return Err(D::Error::custom(format!(
                    "plugin name `{name}` must match [a-z0-9_-]{{1,32}}"
                )));
            }
            let file = match settings.remove("file") {
                Some(toml::Value::String(f)) => PathBuf::from(f),
                Some(_) => {
                    return Err(D::Error::custom(format!(
                        "plugins.{name}.file must be a string"
                    )));
                }
                None => {
                    return Err(D::Error::custom(format!(
                        "plugins.{name} needs `file = \"lib....so\"`"
                    )));
                }
            };
            out.entries.insert(name, PluginEntry { file, settings });
        }
        Ok(out)
    }
}

pub fn valid_plugin_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A config error, naming the file.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(err)
    }

    /// Parses config text; `base` resolves relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.server.state_dir);
        fix(&mut self.tls.certificate);
        fix(&mut self.tls.private_key);
        fix(&mut self.control.socket);
        fix(&mut self.plugins.dir);
    }

    fn validate(&self) -> Result<(), String> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err("server.listen: at least one address is needed".into());
        }
        if s.max_frame_size < MIN_MAX_FRAME || s.max_frame_size > 16 << 20 {
            return Err(format!(
                "server.max_frame_size must be from {MIN_MAX_FRAME} to {}",
                16 << 20
            ));
        }
        if s.window < s.max_frame_size {
            return Err("server.window must be at least server.max_frame_size".into());
        }
        if s.max_connections == 0
            || s.max_connections_per_source == 0
            || s.max_channels_per_connection == 0
        {
            return Err("server.max_connections, max_connections_per_source and max_channels_per_connection must be at least 1".into());
        }
        if self.auth.timeout_secs == 0 || self.auth.max_attempts == 0 {
            return Err("auth.timeout_secs and auth.max_attempts must be at least 1".into());
        }
        if self.auth.penalty_base_ms > self.auth.penalty_max_ms {
            return Err("auth.penalty_base_ms must not exceed auth.penalty_max_ms".into());
        }
        let it = self.auth.fake_iterations;
        if !(sockd_proto::auth::MIN_ITERATIONS..=sockd_proto::auth::MAX_ITERATIONS).contains(&it) {
            return Err("auth.fake_iterations must be within the range clients accept".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n";

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/sockd")).unwrap();
        assert_eq!(c.tls.certificate, Path::new("/etc/sockd/c.pem"));
        assert_eq!(c.server.max_frame_size, DEFAULT_MAX_FRAME);
        assert_eq!(c.plugins.on_error, OnPluginError::Refuse);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = format!("{MINIMAL}[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n");
        let e = Config::parse(&text, Path::new("/")).unwrap_err();
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn plugin_tables_are_split_into_file_and_settings() {
        let text = format!(
            "{MINIMAL}[plugins]\non_error = \"skip\"\n[plugins.exec]\nfile = \"libx.so\"\ntimeout = 5\n"
        );
        let c = Config::parse(&text, Path::new("/")).unwrap();
        let e = &c.plugins.entries["exec"];
        assert_eq!(e.file, Path::new("libx.so"));
        assert_eq!(e.settings["timeout"].as_integer(), Some(5));
        assert_eq!(c.plugins.on_error, OnPluginError::Skip);
        let bad = format!("{MINIMAL}[plugins]\nbogus = 1\n");
        assert!(
            Config::parse(&bad, Path::new("/"))
                .unwrap_err()
                .contains("plugins.bogus")
        );
        let nofile = format!("{MINIMAL}[plugins.x]\ny = 1\n");
        assert!(
            Config::parse(&nofile, Path::new("/"))
                .unwrap_err()
                .contains("file")
        );
    }

    #[test]
    fn shipped_reference_config_parses_with_its_documented_defaults() {
        let c = Config::parse(
            include_str!("../../etc/sockd.toml"),
            Path::new("/etc/sockd"),
        )
        .unwrap();
        let d = ServerConfig::default();
        assert_eq!(c.server.listen, d.listen);
        assert_eq!(c.server.max_frame_size, d.max_frame_size);
        assert_eq!(c.server.window, d.window);
        assert_eq!(c.server.idle_timeout_secs, d.idle_timeout_secs);
        assert_eq!(
            c.server.release_memory_after_secs,
            d.release_memory_after_secs
        );
        assert_eq!(c.auth.penalty_max_ms, AuthConfig::default().penalty_max_ms);
        assert_eq!(c.control.socket, ControlConfig::default().socket);
        assert_eq!(c.plugins.dir, PluginsConfig::default().dir);
        assert!(c.plugins.entries.contains_key("exec"));
    }

    #[test]
    fn bad_values_are_refused() {
        let text = format!("{MINIMAL}[server]\nmax_frame_size = 10\n");
        assert!(
            Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .contains("max_frame_size")
        );
    }
}
