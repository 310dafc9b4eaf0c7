//! Client configuration: the TOML file, command-line overrides, and the
//! resolved [`Settings`] a connection needs.
//!
//! ```toml
//! server = "127.0.0.1:7443"        # HOST:PORT of sockd
//! server_name = "sockd.example"    # optional: TLS name checked with `ca`; default: the host part
//! user = "alice"
//! key_file = "alice.key"           # optional; without it sockctl asks for a password
//! pin = "sha256:<64 hex digits>"   # SHA-256 of the server certificate (DER) ...
//! # ca = "ca.pem"                  # ... or a CA bundle (PEM) that issued it
//! socket = "/run/sockd-control/control.sock"  # control socket (admin commands); this is the default
//! connect_timeout_secs = 10        # optional
//! [colors]                         # optional, reserved for chat
//! alice = "green"
//! ```
//! Relative paths are relative to the directory of the config file.

use super::auth;
use super::error::ClientError;
use serde::Deserialize;
use sockd_proto::auth::Secret;
use sockd_proto::hex;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Connect timeout when the config sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The daemon's default control socket (sockd.toml `[control] socket`).
pub const DEFAULT_SOCKET: &str = "/run/sockd-control/control.sock";
/// Environment variable holding the password when there is no key file.
pub const PASSWORD_ENV: &str = "SOCKCTL_PASSWORD";

/// A certificate pin: SHA-256 of the server certificate's DER encoding,
/// written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl FromStr for Pin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hex_part = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("expected sha256:<64 hex digits>, found {s:?}"))?;
        let bytes = hex::decode(hex_part).ok_or_else(|| {
            format!("expected sha256:<64 hex digits>, found {s:?} (not hexadecimal)")
        })?;
        let found = bytes.len() * 2;
        bytes
            .try_into()
            .map(Pin)
            .map_err(|_| format!("expected sha256:<64 hex digits>, found {found} hex digits"))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(&self.0))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How the server certificate is verified. There is no "don't verify".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Accept exactly the certificate with this fingerprint.
    Pin(Pin),
    /// Accept certificates for the server name issued by a CA in this PEM file.
    Ca(PathBuf),
}

/// The config file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<String>,
    server_name: Option<String>,
    user: Option<String>,
    key_file: Option<PathBuf>,
    pin: Option<String>,
    ca: Option<PathBuf>,
    socket: Option<PathBuf>,
    connect_timeout_secs: Option<u64>,
    #[serde(default)]
    colors: BTreeMap<String, String>,
}

/// The merged configuration: file values, then command-line overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    /// `HOST:PORT`.
    pub server: Option<String>,
    pub server_name: Option<String>,
    pub user: Option<String>,
    pub key_file: Option<PathBuf>,
    pub trust: Option<Trust>,
    pub socket: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The `[colors]` table, reserved for chat.
    pub colors: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            file: None,
            server: None,
            server_name: None,
            user: None,
            key_file: None,
            trust: None,
            socket: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            colors: BTreeMap::new(),
        }
    }
}

/// Values given on the command line; each replaces the config file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub server: Option<String>,
    pub server_name: Option<String>,
    pub user: Option<String>,
    pub key_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub pin: Option<Pin>,
    pub ca: Option<PathBuf>,
    /// Log in with a password even if the file names a key file.
    pub password: bool,
}

/// Everything [`crate::client::Client::connect`] needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST:PORT` to connect to.
    pub server: String,
    /// The TLS server name (checked against the certificate with [`Trust::Ca`]).
    pub server_name: String,
    pub user: String,
    pub secret: Secret,
    pub trust: Trust,
    /// Limit for the TCP connect, the TLS handshake and each login step.
    pub connect_timeout: Duration,
}

impl Config {
    /// Reads the config file at `path`, or returns the defaults if `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ClientError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::config(format!(
                "cannot read config file {}: {e}; pass --config with an existing file or fix $SOCKCTL_CONFIG",
                path.display()
            ))
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` names the file in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ClientError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
        let err = |key: &str, msg: String| {
            ClientError::config(format!(
                "config file {}: key `{key}`: {msg}",
                path.display()
            ))
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                dir.join(p)
            } else {
                p
            }
        };

        if let Some(server) = &file.server {
            split_host_port(server).map_err(|m| err("server", m))?;
        }
        let trust = match (file.pin, file.ca) {
            (Some(_), Some(_)) => {
                return Err(ClientError::config(format!(
                    "config file {}: set either `pin` or `ca`, not both",
                    path.display()
                )));
            }
            (Some(pin), None) => Some(Trust::Pin(pin.parse().map_err(|m| err("pin", m))?)),
            (None, Some(ca)) => Some(Trust::Ca(resolve(ca))),
            (None, None) => None,
        };
        let connect_timeout = match file.connect_timeout_secs {
            None => DEFAULT_CONNECT_TIMEOUT,
            Some(s @ 1..=3600) => Duration::from_secs(s),
            Some(s) => {
                return Err(err(
                    "connect_timeout_secs",
                    format!("{s} is out of range; use 1 to 3600 seconds"),
                ));
            }
        };
        if let Some(user) = &file.user
            && user.is_empty()
        {
            return Err(err("user", "must not be empty".into()));
        }
        Ok(Config {
            file: Some(path.to_path_buf()),
            server: file.server,
            server_name: file.server_name,
            user: file.user,
            key_file: file.key_file.map(resolve),
            trust,
            socket: file.socket.map(resolve),
            connect_timeout,
            colors: file.colors,
        })
    }

    /// Applies command-line values over the file's.
    pub fn apply(&mut self, o: Overrides) {
        if o.server.is_some() {
            self.server = o.server;
        }
        if o.server_name.is_some() {
            self.server_name = o.server_name;
        }
        if o.user.is_some() {
            self.user = o.user;
        }
        if o.key_file.is_some() {
            self.key_file = o.key_file;
        }
        if o.password {
            self.key_file = None;
        }
        if o.socket.is_some() {
            self.socket = o.socket;
        }
        if let Some(pin) = o.pin {
            self.trust = Some(Trust::Pin(pin));
        }
        if let Some(ca) = o.ca {
            self.trust = Some(Trust::Ca(ca));
        }
    }

    /// The control socket: as configured, else [`DEFAULT_SOCKET`].
    pub fn socket(&self) -> &Path {
        self.socket.as_deref().unwrap_or(Path::new(DEFAULT_SOCKET))
    }

    /// Resolves the connection settings, loading the credential: the key
    /// file if one is configured, else the password from `$SOCKCTL_PASSWORD`
    /// or the terminal.
    pub fn settings(&self) -> Result<Settings, ClientError> {
        let (server, server_name, user, trust) = self.connection_parts()?;
        let secret = auth::load_secret(self.key_file.as_deref(), &user, &server)?;
        Ok(Settings {
            server,
            server_name,
            user,
            secret,
            trust,
            connect_timeout: self.connect_timeout,
        })
    }

    /// Everything but the secret (so errors show before any password prompt).
    fn connection_parts(&self) -> Result<(String, String, String, Trust), ClientError> {
        let server = self.server.clone().ok_or_else(|| {
            ClientError::config(format!(
                "no server configured: pass --server HOST:PORT or set `server` in {}",
                self.where_()
            ))
        })?;
        let (host, _) =
            split_host_port(&server).map_err(|m| ClientError::config(format!("server: {m}")))?;
        let server_name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        let user = self.user.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
            ClientError::config(format!(
                "no user configured: pass --user NAME or set `user` in {}",
                self.where_()
            ))
        })?;
        let trust = self.trust.clone().ok_or_else(|| {
            ClientError::config(format!(
                "no way to verify the server: set `pin = \"sha256:...\"` or `ca = \"ca.pem\"` in {} \
                 (or pass --pin / --ca); the daemon prints its certificate fingerprint at startup",
                self.where_()
            ))
        })?;
        Ok((server, server_name, user, trust))
    }

    fn where_(&self) -> String {
        match &self.file {
            Some(f) => format!("the config file {}", f.display()),
            None => "a config file (--config FILE or $SOCKCTL_CONFIG)".to_string(),
        }
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6 literals).
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("expected HOST:PORT (e.g. 127.0.0.1:7443 or [::1]:7443), found {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host, port))
}

/// Turns a TOML error into one line naming the file, line and key.
fn toml_error(e: &toml::de::Error, text: &str, path: &Path) -> ClientError {
    let mut place = format!("config file {}", path.display());
    if let Some(span) = e.span() {
        let start = span.start.min(text.len());
        let line_no = text[..start].matches('\n').count() + 1;
        place.push_str(&format!(", line {line_no}"));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line = text[line_start..].lines().next().unwrap_or("");
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && !key.starts_with('#') {
                place.push_str(&format!(", key `{key}`"));
            }
        }
    }
    let message = e.message().trim().replace('\n', "; ");
    ClientError::config(format!("{place}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockd_proto::code::exit;

    const PIN: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn parse(text: &str) -> Result<Config, ClientError> {
        Config::parse(text, Path::new("/etc/sockctl/client.toml"))
    }

    #[test]
    fn full_config_parses_and_resolves_paths() {
        let c = parse(&format!(
            "server = \"127.0.0.1:7443\"\nuser = \"alice\"\nkey_file = \"alice.key\"\npin = \"{PIN}\"\n\
             socket = \"/run/sockd/control.sock\"\nconnect_timeout_secs = 3\n[colors]\nalice = \"green\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("127.0.0.1:7443"));
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.key_file, Some(PathBuf::from("/etc/sockctl/alice.key")));
        assert_eq!(c.socket, Some(PathBuf::from("/run/sockd/control.sock")));
        assert_eq!(c.trust, Some(Trust::Pin(PIN.parse().unwrap())));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.colors.get("alice").map(String::as_str), Some("green"));
        let c = parse("ca = \"ca.pem\"").unwrap();
        assert_eq!(
            c.trust,
            Some(Trust::Ca(PathBuf::from("/etc/sockctl/ca.pem")))
        );
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn unknown_key_is_rejected_and_named() {
        let e = parse("server = \"h:1\"\nsevrer_name = \"x\"\n").unwrap_err();
        assert_eq!(e.status(), exit::CONFIG);
        assert!(e.message().contains("sevrer_name"), "{e}");
        assert!(e.message().contains("/etc/sockctl/client.toml"), "{e}");
        assert!(e.message().contains("line 2"), "{e}");
        assert!(!e.message().contains('\n'));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("user = 5\n").unwrap_err();
        assert!(e.message().contains("`user`"), "{e}");
        let e = parse("pin = \"sha1:abcd\"\n").unwrap_err();
        assert!(
            e.message().contains("`pin`") && e.message().contains("sha256:"),
            "{e}"
        );
        let e = parse("server = \"nohostport\"\n").unwrap_err();
        assert!(
            e.message().contains("`server`") && e.message().contains("HOST:PORT"),
            "{e}"
        );
        let e = parse(&format!("pin = \"{PIN}\"\nca = \"ca.pem\"\n")).unwrap_err();
        assert!(e.message().contains("not both"), "{e}");
        let e = parse("[colors]\nalice = 1\n").unwrap_err();
        assert!(e.message().contains("alice"), "{e}");
        let e = parse("connect_timeout_secs = 0\n").unwrap_err();
        assert!(e.message().contains("connect_timeout_secs"), "{e}");
    }

    #[test]
    fn command_line_overrides_the_file() {
        let mut c = parse(&format!(
            "server = \"a:1\"\nuser = \"alice\"\npin = \"{PIN}\"\nsocket = \"s.sock\"\n"
        ))
        .unwrap();
        c.apply(Overrides {
            server: Some("b:2".into()),
            user: Some("bob".into()),
            key_file: Some("bob.key".into()),
            socket: Some("/tmp/c.sock".into()),
            ca: Some("my-ca.pem".into()),
            ..Overrides::default()
        });
        assert_eq!(c.server.as_deref(), Some("b:2"));
        assert_eq!(c.user.as_deref(), Some("bob"));
        // Command-line paths are relative to the working directory.
        assert_eq!(c.key_file, Some(PathBuf::from("bob.key")));
        assert_eq!(c.socket(), Path::new("/tmp/c.sock"));
        assert_eq!(c.trust, Some(Trust::Ca("my-ca.pem".into())));
        c.apply(Overrides {
            password: true,
            ..Overrides::default()
        });
        assert_eq!(c.key_file, None);
        // Values not overridden stay.
        let mut c = parse("server = \"a:1\"\nuser = \"alice\"\n").unwrap();
        c.apply(Overrides::default());
        assert_eq!(c.user.as_deref(), Some("alice"));
    }

    #[test]
    fn missing_trust_or_server_is_a_clear_error() {
        let c = parse("server = \"a:1\"\nuser = \"alice\"\n").unwrap();
        let e = c.connection_parts().unwrap_err();
        assert_eq!(e.status(), exit::CONFIG);
        assert!(
            e.message().contains("pin") && e.message().contains("ca"),
            "{e}"
        );
        let e = Config::default().connection_parts().unwrap_err();
        assert!(e.message().contains("--server"), "{e}");
        assert_eq!(Config::default().socket(), Path::new(DEFAULT_SOCKET));
    }

    #[test]
    fn server_name_defaults_to_the_host() {
        let c = parse(&format!(
            "server = \"[::1]:7443\"\nuser = \"u\"\npin = \"{PIN}\"\n"
        ))
        .unwrap();
        let (server, name, _, _) = c.connection_parts().unwrap();
        assert_eq!((server.as_str(), name.as_str()), ("[::1]:7443", "::1"));
    }

    #[test]
    fn pin_parsing() {
        let pin: Pin = PIN.parse().unwrap();
        assert_eq!(pin.0[0], 0x00);
        assert_eq!(pin.0[1], 0x11);
        assert_eq!(pin.to_string(), PIN);
        assert_eq!(
            PIN.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Pin>(),
            Ok(pin)
        );
        assert!("00112233".parse::<Pin>().is_err());
        assert!(
            "sha256:0011"
                .parse::<Pin>()
                .unwrap_err()
                .contains("4 hex digits")
        );
        assert!("sha256:zz".parse::<Pin>().is_err());
        assert!(format!("{PIN}00").parse::<Pin>().is_err());
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("127.0.0.1:7443"), Ok(("127.0.0.1", 7443)));
        assert_eq!(split_host_port("[::1]:1"), Ok(("::1", 1)));
        assert_eq!(split_host_port("example.org:443"), Ok(("example.org", 443)));
        assert!(split_host_port("example.org").is_err());
        assert!(split_host_port("::1:80").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("h:0").is_err());
        assert!(split_host_port("h:99999").is_err());
    }
}
