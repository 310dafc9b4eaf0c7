//! The Debian package: packaging/build-deb.sh builds it with cargo-deb
//! (which must be installed: `cargo install cargo-deb --locked`), then
//! `dpkg-deb` shows what is in it — every path with its mode and owner,
//! the conffiles, the control fields (Depends from dpkg-shlibdeps) and the
//! maintainer scripts (`sh -n`) — and the files extracted from it run
//! together: the packaged sockd with the packaged config (its paths
//! pointed at a temporary directory) loads the packaged plugins and serves
//! the packaged sockctl. tests/tests/nspawn.rs installs it on a real
//! systemd.

use sockd_e2e::{OutputExt, bin, wait_until};
use sockd_proto::control::StatusInfo;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the package once per test binary; returns its path.
fn built_deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(sockd_e2e::build_deb)
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(built_deb())
        .output()
        .expect("dpkg-deb (package dpkg) is needed");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        out.stderr_text()
    );
    out.stdout_text()
}

/// Every file the package must ship, with its mode, besides the Markdown
/// documentation in /usr/share/doc/sockd/.
const FILES: &[(&str, &str)] = &[
    ("/usr/bin/sockd", "-rwxr-xr-x"),
    ("/usr/bin/sockctl", "-rwxr-xr-x"),
    ("/usr/lib/sockd/plugins/libsockd_exec.so", "-rw-r--r--"),
    ("/usr/lib/sockd/plugins/libsockd_files.so", "-rw-r--r--"),
    ("/usr/lib/sockd/plugins/libsockd_chat.so", "-rw-r--r--"),
    ("/etc/sockd/sockd.toml", "-rw-r--r--"),
    ("/usr/lib/systemd/system/sockd.service", "-rw-r--r--"),
    ("/usr/lib/systemd/system/sockd.socket", "-rw-r--r--"),
    ("/usr/lib/systemd/system/sockd-control.socket", "-rw-r--r--"),
    ("/usr/lib/sysusers.d/sockd.conf", "-rw-r--r--"),
    ("/usr/lib/tmpfiles.d/sockd.conf", "-rw-r--r--"),
    ("/usr/share/man/man8/sockd.8.gz", "-rw-r--r--"),
    ("/usr/share/man/man1/sockctl.1.gz", "-rw-r--r--"),
    ("/usr/share/man/man5/sockd.toml.5.gz", "-rw-r--r--"),
    (
        "/usr/share/bash-completion/completions/sockctl",
        "-rw-r--r--",
    ),
    ("/usr/share/zsh/vendor-completions/_sockctl", "-rw-r--r--"),
    (
        "/usr/share/fish/vendor_completions.d/sockctl.fish",
        "-rw-r--r--",
    ),
    ("/usr/share/doc/sockd/copyright", "-rw-r--r--"),
    ("/usr/share/doc/sockd/README.md", "-rw-r--r--"),
    ("/usr/share/doc/sockd/OPERATIONS.md", "-rw-r--r--"),
    (
        "/usr/share/doc/sockd/examples/no-socket-activation.conf",
        "-rw-r--r--",
    ),
];

#[test]
fn package_ships_every_file_with_its_mode_and_nothing_else() {
    let listing = dpkg_deb(&["--contents"]);
    let mut files = Vec::new();
    for line in listing.lines() {
        // -rw-r--r-- 0/0   5496 2026-01-01 00:00 ./etc/sockd/sockd.toml
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() == 6, "unexpected entry: {line}");
        let (mode, owner, path) = (fields[0], fields[1], &fields[5][1..]);
        assert_eq!(owner, "0/0", "{path} is not owned by root: {line}");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "{line}");
        } else {
            files.push((path.to_string(), mode.to_string()));
        }
    }
    for (path, mode) in FILES {
        let found = files.iter().find(|(p, _)| p == path);
        assert_eq!(
            found.map(|(_, m)| m.as_str()),
            Some(*mode),
            "{path} missing or with another mode in:\n{listing}"
        );
    }
    for (path, mode) in &files {
        let documentation = path.starts_with("/usr/share/doc/sockd/") && path.ends_with(".md");
        assert!(
            documentation || FILES.iter().any(|(p, _)| p == path),
            "unexpected file in the package: {path} {mode}"
        );
        assert!(
            !path.contains("debug-hooks") && !path.ends_with(".pem"),
            "{path} must never be packaged"
        );
    }
}

#[test]
fn control_fields_conffiles_and_maintainer_scripts() {
    let fields = dpkg_deb(&["--field"]);
    let field = |name: &str| {
        fields.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
                .map(str::to_string)
        })
    };
    assert_eq!(field("Package").as_deref(), Some("sockd"));
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Version"), Some(version));
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .expect("dpkg");
    assert_eq!(
        field("Architecture"),
        Some(arch.stdout_text().trim().into())
    );
    let depends = field("Depends").unwrap_or_default();
    assert!(
        depends.contains("libc6 (>= ") && depends.contains("systemd | adduser"),
        "Depends needs libc6 from dpkg-shlibdeps (apt-get install dpkg-dev) and the postinst's systemd | adduser: {depends}"
    );
    assert!(!field("Maintainer").unwrap_or_default().is_empty());

    let control = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("--control")
        .arg(built_deb())
        .arg(control.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out.stderr_text());
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert_eq!(conffiles, "/etc/sockd/sockd.toml\n");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.path().join(script);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("maintainer script {script}: {e}"));
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: not a sh script");
        assert!(text.contains("\nset -e\n"), "{script}: no set -e");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{script} mode");
        let check = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            check.status.success(),
            "sh -n {script}: {}",
            check.stderr_text()
        );
    }
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    for needed in [
        "systemd-sysusers sockd.conf",
        "adduser",
        "systemd-tmpfiles --create sockd.conf",
        "sockd gen-cert --dir /etc/sockd",
        "sockd.socket sockd-control.socket",
        "try-restart sockd.service",
    ] {
        assert!(postinst.contains(needed), "postinst lacks `{needed}`");
    }
    let postrm = std::fs::read_to_string(control.path().join("postrm")).unwrap();
    assert!(
        postrm.contains("rm -rf /var/lib/sockd"),
        "purge keeps state"
    );
}

/// Extracts the package's files into a temporary directory.
fn extracted() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("--extract")
        .arg(built_deb())
        .arg(dir.path())
        .output()
        .expect("dpkg-deb");
    assert!(out.status.success(), "{}", out.stderr_text());
    dir
}

fn unit_line<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in unit"))
}

#[test]
fn packaged_config_units_and_scripts_agree_on_paths() {
    let root = extracted();
    let read = |p: &str| std::fs::read_to_string(root.path().join(&p[1..])).unwrap();
    let config = read("/etc/sockd/sockd.toml");
    assert_eq!(
        config,
        std::fs::read_to_string(workspace().join("etc/sockd.toml")).unwrap()
    );
    let service = read("/usr/lib/systemd/system/sockd.service");
    let control = read("/usr/lib/systemd/system/sockd-control.socket");
    let value = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix("= "))
            .unwrap_or_else(|| panic!("no {key} in sockd.toml"))
            .trim_matches('"')
            .to_string()
    };
    // The binaries the units run are in the package.
    let exec_start = unit_line(&service, "ExecStart");
    assert_eq!(exec_start, "/usr/bin/sockd --config /etc/sockd/sockd.toml");
    assert!(unit_line(&service, "ExecReload").starts_with("/usr/bin/sockctl --socket "));
    // Every configured plugin is in the configured directory.
    let dir = value("dir");
    let plugins: Vec<String> = config
        .lines()
        .filter_map(|l| l.strip_prefix("file = "))
        .map(|f| f.trim_matches('"').to_string())
        .collect();
    assert_eq!(plugins.len(), 3, "{plugins:?}");
    for file in &plugins {
        assert!(
            root.path().join(&dir[1..]).join(file).is_file(),
            "{dir}/{file} is configured but not packaged"
        );
    }
    // The key reaches sockd as a credential; the certificate is read as is;
    // postinst's gen-cert writes both where the unit and config expect.
    assert_eq!(
        unit_line(&service, "LoadCredential"),
        "tls-key:/etc/sockd/key.pem"
    );
    assert_eq!(
        value("private_key"),
        "/run/credentials/sockd.service/tls-key"
    );
    assert_eq!(value("certificate"), "/etc/sockd/cert.pem");
    // Control socket and admin group, as the socket unit and sysusers make them.
    assert_eq!(value("socket"), unit_line(&control, "ListenStream"));
    assert_eq!(value("admin_group"), unit_line(&control, "SocketGroup"));
    let sysusers = read("/usr/lib/sysusers.d/sockd.conf");
    assert!(sysusers.contains(&format!("\ng {} -", value("admin_group"))));
    assert!(sysusers.contains(&format!(
        "\nu sockd - \"sockd remote-access daemon\" {} ",
        value("state_dir")
    )));
    assert_eq!(unit_line(&service, "User"), "sockd");
}

#[test]
fn completions_are_current_and_parse() {
    let root = extracted();
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/sockctl"),
        ("zsh", "usr/share/zsh/vendor-completions/_sockctl"),
        ("fish", "usr/share/fish/vendor_completions.d/sockctl.fish"),
    ] {
        let packaged = std::fs::read_to_string(root.path().join(path)).unwrap();
        let current = Command::new(bin("sockctl"))
            .args(["completions", shell])
            .env_remove("SOCKCTL_CONFIG")
            .output()
            .unwrap();
        assert!(current.status.success(), "{}", current.stderr_text());
        assert_eq!(
            packaged,
            current.stdout_text(),
            "{path} differs from `sockctl completions {shell}`"
        );
    }
    let bash = root
        .path()
        .join("usr/share/bash-completion/completions/sockctl");
    let check = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", check.stderr_text());
}

/// Kills the packaged daemon when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn packaged_daemon_loads_packaged_plugins_and_serves_packaged_sockctl() {
    let root = extracted();
    let run_dir = tempfile::tempdir().unwrap();
    let tmp = run_dir.path();
    let sockd = root.path().join("usr/bin/sockd");
    let sockctl = root.path().join("usr/bin/sockctl");

    let gen_cert = Command::new(&sockd)
        .args(["gen-cert", "--name", "localhost", "--dir"])
        .arg(tmp.join("tls"))
        .output()
        .unwrap();
    assert!(gen_cert.status.success(), "{}", gen_cert.stderr_text());
    let pin = gen_cert
        .stdout_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("pin = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .expect("gen-cert prints the pin line");

    // The shipped config with its paths moved into the temporary directory.
    let shipped = std::fs::read_to_string(root.path().join("etc/sockd/sockd.toml")).unwrap();
    let plugin_dir = root.path().join("usr/lib/sockd/plugins");
    let mut config = shipped.clone();
    for (from, to) in [
        ("\"0.0.0.0:7443\"", "\"127.0.0.1:0\"".to_string()),
        (
            "\"/etc/sockd/cert.pem\"",
            format!("{:?}", tmp.join("tls/cert.pem")),
        ),
        (
            "\"/run/credentials/sockd.service/tls-key\"",
            format!("{:?}", tmp.join("tls/key.pem")),
        ),
        ("\"/var/lib/sockd\"", format!("{:?}", tmp.join("state"))),
        ("\"/usr/lib/sockd/plugins\"", format!("{plugin_dir:?}")),
        (
            "\"/run/sockd-control/control.sock\"",
            format!("{:?}", tmp.join("control.sock")),
        ),
        (
            "admin_group = \"sockctl\"",
            "admin_group = \"\"".to_string(),
        ),
    ] {
        assert!(config.contains(from), "the shipped config lost {from}");
        config = config.replace(from, &to);
    }
    let config_path = tmp.join("sockd.toml");
    std::fs::write(&config_path, config).unwrap();

    let log = std::fs::File::create(tmp.join("sockd.log")).unwrap();
    let daemon = KillOnDrop(
        Command::new(&sockd)
            .arg("--config")
            .arg(&config_path)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let socket = tmp.join("control.sock");
    let sockctl_cmd = || {
        let mut cmd = Command::new(&sockctl);
        cmd.env_remove("SOCKCTL_CONFIG")
            .arg("--socket")
            .arg(&socket);
        cmd
    };
    let mut status = None;
    let ready = wait_until(Duration::from_secs(30), || {
        let out = sockctl_cmd().args(["status", "--json"]).output().unwrap();
        status = out.status.success().then(|| out.stdout_text());
        status.is_some()
    });
    let log_text = || std::fs::read_to_string(tmp.join("sockd.log")).unwrap_or_default();
    assert!(ready, "the packaged sockd did not answer:\n{}", log_text());
    let info: StatusInfo = serde_json::from_str(&status.unwrap()).unwrap();
    let mut loaded: Vec<&str> = info
        .plugins
        .iter()
        .filter(|p| p.state == "loaded")
        .map(|p| p.name.as_str())
        .collect();
    loaded.sort();
    assert_eq!(loaded, ["chat", "exec", "files"], "{:#?}", info.plugins);

    let key = tmp.join("alice.key");
    let add = sockctl_cmd()
        .args(["user", "add", "alice", "--key-file"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", add.stderr_text());
    let ping = sockctl_cmd()
        .args(["ping", "--user", "alice", "--pin", &pin, "--server"])
        .arg(&info.listen[0])
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        ping.status.success() && ping.stdout_text().starts_with("pong from sockd "),
        "{}{}\n{}",
        ping.stdout_text(),
        ping.stderr_text(),
        log_text()
    );
    drop(daemon);
}
