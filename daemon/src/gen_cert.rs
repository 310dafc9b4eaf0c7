//! `sockd gen-cert`: a self-signed TLS certificate and its private key.
//!
//! The Debian package's postinst runs it on first install; operators run it
//! to rotate (into another directory, then move the files in place). It
//! never replaces an existing file, and prints the certificate's pin in the
//! form sockctl's client.toml takes.

use crate::dev::write_new;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct GenCertArgs {
    /// Directory to create cert.pem (mode 0644) and key.pem (mode 0600) in
    #[arg(long, value_name = "DIR", default_value = "/etc/sockd")]
    pub dir: PathBuf,
    /// A DNS name or IP address for the certificate (repeatable); default:
    /// this machine's host name and localhost
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
}

/// Writes `key` (mode 0600) and then `cert` (mode 0644); fails if either
/// exists.
pub fn write_self_signed(cert: &Path, key: &Path, names: Vec<String>) -> Result<(), String> {
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot create a certificate: {e}"))?;
    write_new(key, generated.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, generated.cert.pem().as_bytes(), 0o644)
}

fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    names.push("localhost".to_string());
    names
}

/// Runs `sockd gen-cert`; returns what to print.
pub fn run(args: GenCertArgs) -> Result<String, String> {
    let cert = args.dir.join("cert.pem");
    let key = args.dir.join("key.pem");
    for path in [&cert, &key] {
        if path.exists() {
            return Err(format!(
                "{} already exists and is never replaced: pass another --dir, or remove {} and {} first",
                path.display(),
                cert.display(),
                key.display()
            ));
        }
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("{}: cannot create: {e}", args.dir.display()))?;
    let names = if args.names.is_empty() {
        default_names()
    } else {
        args.names
    };
    write_self_signed(&cert, &key, names.clone())?;
    let pin = crate::tls::fingerprint(&cert)?;
    Ok(format!(
        "wrote {} (self-signed for {}) and {} (mode 0600)\n\
         clients pin it with this line in sockctl's client.toml:\n\
         pin = \"{pin}\"\n",
        cert.display(),
        names.join(", "),
        key.display(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_a_usable_pair_with_private_key_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("new");
        let printed = run(GenCertArgs {
            dir: out_dir.clone(),
            names: vec!["sockd.example".into(), "127.0.0.1".into()],
        })
        .unwrap();
        let (cert, key) = (out_dir.join("cert.pem"), out_dir.join("key.pem"));
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        crate::tls::server_config(&cert, &key).unwrap();
        let pin = crate::tls::fingerprint(&cert).unwrap();
        assert!(printed.contains(&format!("pin = \"{pin}\"")), "{printed}");
        assert!(printed.contains("sockd.example, 127.0.0.1"), "{printed}");

        let before = std::fs::read(&key).unwrap();
        let e = run(GenCertArgs {
            dir: out_dir.clone(),
            names: vec![],
        })
        .unwrap_err();
        assert!(e.contains("never replaced"), "{e}");
        assert_eq!(std::fs::read(&key).unwrap(), before);
    }
}
