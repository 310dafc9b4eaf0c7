//! The plugin's settings (`[plugins.exec]` in sockd.toml) and the policy
//! they give each user.
//!
//! ```toml
//! [plugins.exec]
//! kill_grace_ms = 2000
//! env = { EDITOR = "vi" }
//! [plugins.exec.users.demo]
//! allow = "any"            # "any" | "none" | ["ls", "/usr/bin/git"]
//! timeout_secs = 0
//! max_concurrent = 8
//! rlimits = { cpu_secs = 60, nofile = 1024, fsize_bytes = 1073741824, nproc = 256 }
//! [plugins.exec.default]   # users not listed; allow defaults to "none"
//! ```
//!
//! A field missing from a user's table is taken from `[default]`, then from
//! the built-in default. Unknown keys are errors, so a typo cannot silently
//! widen or drop a restriction.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_KILL_GRACE_MS: u64 = 2000;
pub const DEFAULT_MAX_CONCURRENT: u32 = 8;
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
pub const DEFAULT_LANG: &str = "C.UTF-8";

/// Which programs a user may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Any,
    None,
    /// Program names (matched against the resolved program's file name) or
    /// absolute paths (matched against the resolved path).
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Allow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        let bad = || {
            D::Error::custom(
                "allow must be \"any\", \"none\" or a list of programs such as [\"ls\", \"/usr/bin/git\"]",
            )
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Word(w) if w == "any" => Ok(Allow::Any),
            Raw::Word(w) if w == "none" => Ok(Allow::None),
            Raw::Word(_) => Err(bad()),
            Raw::List(list) => {
                for p in &list {
                    if p.is_empty() || p.contains('\0') || (p.contains('/') && !p.starts_with('/'))
                    {
                        return Err(D::Error::custom(format!(
                            "allow: {p:?} must be a program name (\"ls\") or an absolute path (\"/usr/bin/git\")"
                        )));
                    }
                }
                Ok(Allow::List(list))
            }
        }
    }
}

/// Resource limits applied to the command (setrlimit before exec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    pub cpu_secs: Option<u64>,
    pub nofile: Option<u64>,
    pub fsize_bytes: Option<u64>,
    pub nproc: Option<u64>,
}

impl Rlimits {
    fn or(self, other: Rlimits) -> Rlimits {
        Rlimits {
            cpu_secs: self.cpu_secs.or(other.cpu_secs),
            nofile: self.nofile.or(other.nofile),
            fsize_bytes: self.fsize_bytes.or(other.fsize_bytes),
            nproc: self.nproc.or(other.nproc),
        }
    }
}

/// One `[users.NAME]` or `[default]` table; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allow: Option<Allow>,
    timeout_secs: Option<u64>,
    max_concurrent: Option<u32>,
    rlimits: Option<Rlimits>,
    env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kill_grace_ms: Option<u64>,
    env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    users: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    default: RawPolicy,
}

/// What one user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allow: Allow,
    /// Wall-clock limit; `None`: none.
    pub timeout: Option<Duration>,
    /// Commands at once; 0: no limit.
    pub max_concurrent: u32,
    pub rlimits: Rlimits,
    /// Extra environment (the global `env`, then the policy's own).
    pub env: BTreeMap<String, String>,
}

/// The parsed settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub kill_grace: Duration,
    env: BTreeMap<String, String>,
    users: BTreeMap<String, RawPolicy>,
    default: RawPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse("").expect("empty settings are valid")
    }
}

fn check_env(where_: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in env {
        let name_ok = !k.is_empty() && !k.contains(['=', '\0']);
        if !name_ok || v.contains('\0') {
            return Err(format!("{where_}: invalid environment variable {k:?}"));
        }
    }
    Ok(())
}

impl Config {
    /// Parses the plugin's table (the daemon hands it over as TOML text,
    /// without `file`).
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| format!("[plugins.exec]: {}", e.message()))?;
        let kill_grace_ms = raw.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS);
        if kill_grace_ms > 600_000 {
            return Err("[plugins.exec]: kill_grace_ms must be at most 600000 (10 minutes)".into());
        }
        let env = raw.env.unwrap_or_default();
        check_env("[plugins.exec] env", &env)?;
        check_env(
            "[plugins.exec.default] env",
            raw.default.env.as_ref().unwrap_or(&BTreeMap::new()),
        )?;
        for (name, p) in &raw.users {
            check_env(
                &format!("[plugins.exec.users.{name}] env"),
                p.env.as_ref().unwrap_or(&BTreeMap::new()),
            )?;
        }
        Ok(Config {
            kill_grace: Duration::from_millis(kill_grace_ms),
            env,
            users: raw.users,
            default: raw.default,
        })
    }

    /// The effective policy for `user`.
    pub fn policy(&self, user: &str) -> Policy {
        let d = &self.default;
        let u = self.users.get(user).cloned().unwrap_or_default();
        let mut env = self.env.clone();
        env.extend(d.env.clone().unwrap_or_default());
        if self.users.contains_key(user) {
            env.extend(u.env.clone().unwrap_or_default());
        }
        Policy {
            allow: u.allow.or_else(|| d.allow.clone()).unwrap_or(Allow::None),
            timeout: u
                .timeout_secs
                .or(d.timeout_secs)
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            max_concurrent: u
                .max_concurrent
                .or(d.max_concurrent)
                .unwrap_or(DEFAULT_MAX_CONCURRENT),
            rlimits: u
                .rlimits
                .unwrap_or_default()
                .or(d.rlimits.unwrap_or_default()),
            env,
        }
    }
}

impl Policy {
    /// Whether the program `resolved` (found for the name `asked`) may run.
    pub fn allows(&self, resolved: &Path) -> bool {
        match &self.allow {
            Allow::Any => true,
            Allow::None => false,
            Allow::List(list) => list.iter().any(|entry| entry_matches(entry, resolved)),
        }
    }

    /// Whether a name that was not found could have been allowed (then the
    /// client may learn that it does not exist; otherwise it is denied).
    pub fn may_name(&self, asked: &OsStr) -> bool {
        match &self.allow {
            Allow::Any => true,
            Allow::None => false,
            Allow::List(list) => {
                let base = Path::new(asked).file_name().unwrap_or(asked);
                list.iter()
                    .any(|e| e.as_bytes() == asked.as_bytes() || e.as_bytes() == base.as_bytes())
            }
        }
    }
}

/// `ls` matches any resolved program whose file name is `ls`; `/usr/bin/git`
/// matches that path, also when reached through a symlinked directory
/// (`/bin/sh` and `/usr/bin/sh` on merged-/usr systems). The file itself is
/// never resolved through symlinks: on a multi-call binary (busybox)
/// allowing `/bin/ls` must not allow `/bin/rm`.
fn entry_matches(entry: &str, resolved: &Path) -> bool {
    if !entry.contains('/') {
        return resolved
            .file_name()
            .is_some_and(|n| n.as_bytes() == entry.as_bytes());
    }
    let entry = Path::new(entry);
    if entry == resolved {
        return true;
    }
    match (
        entry.file_name(),
        resolved.file_name(),
        entry.parent(),
        resolved.parent(),
    ) {
        (Some(a), Some(b), Some(pa), Some(pb)) if a == b => {
            matches!((pa.canonicalize(), pb.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIEF: &str = r#"
kill_grace_ms = 2000
env = { EDITOR = "vi" }
[users.demo]
allow = "any"
timeout_secs = 0
max_concurrent = 8
rlimits = { cpu_secs = 60, nofile = 1024, fsize_bytes = 1073741824, nproc = 256 }
[users.ci]
allow = ["ls", "/usr/bin/git", "sh"]
timeout_secs = 30
[default]
max_concurrent = 2
"#;

    /// The `[plugins.exec]` table of the shipped etc/sockd.toml, as the
    /// daemon hands it over (without `file`), is valid.
    #[test]
    fn accepts_the_shipped_reference_config() {
        let full: toml::Table = toml::from_str(include_str!("../../../etc/sockd.toml")).unwrap();
        let mut exec = full["plugins"]["exec"].as_table().unwrap().clone();
        exec.remove("file");
        let c = Config::parse(&toml::to_string(&exec).unwrap()).unwrap();
        assert!(
            !c.policy("anyone").allows(Path::new("/bin/ls")),
            "denied by default"
        );
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(BRIEF).unwrap();
        assert_eq!(c.kill_grace, Duration::from_secs(2));
        let demo = c.policy("demo");
        assert_eq!(demo.allow, Allow::Any);
        assert_eq!(demo.timeout, None);
        assert_eq!(demo.max_concurrent, 8);
        assert_eq!(demo.rlimits.nofile, Some(1024));
        assert_eq!(demo.env.get("EDITOR").map(String::as_str), Some("vi"));
        let ci = c.policy("ci");
        assert_eq!(ci.timeout, Some(Duration::from_secs(30)));
        assert_eq!(ci.max_concurrent, 2, "inherited from [default]");
        let other = c.policy("mallory");
        assert_eq!(other.allow, Allow::None, "denied by default");
    }

    #[test]
    fn empty_and_dev_settings_are_valid() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.policy("demo").allow, Allow::None);
        assert_eq!(c.kill_grace, Duration::from_millis(DEFAULT_KILL_GRACE_MS));
        let dev = Config::parse("[users.demo]\nallow = \"any\"\n").unwrap();
        assert_eq!(dev.policy("demo").allow, Allow::Any);
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(
            Config::parse("kill_grace = 5")
                .unwrap_err()
                .contains("kill_grace")
        );
        assert!(
            Config::parse("[users.x]\nallow = \"all\"")
                .unwrap_err()
                .contains("allow")
        );
        assert!(Config::parse("[users.x]\nalow = \"any\"").is_err());
        assert!(Config::parse("[users.x]\nallow = [\"bin/ls\"]").is_err());
        assert!(Config::parse("[users.x]\nrlimits = { cpu = 1 }").is_err());
        assert!(Config::parse("env = { \"A=B\" = \"x\" }").is_err());
        assert!(Config::parse("kill_grace_ms = 9999999").is_err());
    }

    #[test]
    fn program_lists_match_names_and_paths() {
        let c = Config::parse(BRIEF).unwrap();
        let ci = c.policy("ci");
        assert!(ci.allows(Path::new("/usr/bin/ls")));
        assert!(ci.allows(Path::new("/usr/local/bin/ls")));
        assert!(ci.allows(Path::new("/usr/bin/git")));
        assert!(!ci.allows(Path::new("/usr/local/bin/git")));
        assert!(!ci.allows(Path::new("/usr/bin/rm")));
        assert!(ci.allows(Path::new("/bin/sh")));
        assert!(ci.may_name(OsStr::new("ls")));
        assert!(!ci.may_name(OsStr::new("nope")));
        // A path entry also matches through a symlinked directory.
        let dir = std::env::temp_dir().join(format!("sockd-exec-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let entry = dir.join("link/tool");
        assert!(entry_matches(
            entry.to_str().unwrap(),
            &dir.join("real/tool")
        ));
        assert!(!entry_matches(
            entry.to_str().unwrap(),
            &dir.join("real/other")
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
