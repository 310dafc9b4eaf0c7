//! The systemd units in packaging/: `systemd-analyze verify` accepts them
//! and `systemd-analyze security` scores the service within the goals
//! recorded in docs/OPERATIONS.md (0.5 socket-activated, 1.5 without).

use sockd_e2e::{OutputExt, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("packaging/systemd")
}

fn have_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Copies the units into a temp dir, pointing /usr/bin at the built binaries.
fn staged_units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = format!("{}/", target_dir().display());
    for unit in ["sockd.service", "sockd.socket", "sockd-control.socket"] {
        let text = std::fs::read_to_string(packaging().join(unit))
            .unwrap()
            .replace("/usr/bin/", &bin);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    dir
}

fn score(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(unit)
        .output()
        .unwrap();
    let text = out.stdout_text();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    line.split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn units_verify_and_score_safe() {
    if !have_systemd_analyze() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = staged_units();
    let units: Vec<PathBuf> = ["sockd.service", "sockd.socket", "sockd-control.socket"]
        .iter()
        .map(|u| dir.path().join(u))
        .collect();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{}{}",
        out.stdout_text(),
        out.stderr_text()
    );

    let activated = score(&units[0]);
    assert!(activated <= 0.5, "socket-activated exposure {activated}");

    // Without socket activation: the example drop-in applied to the unit.
    let mut text = std::fs::read_to_string(&units[0]).unwrap();
    text = text
        .replace("Requires=sockd.socket sockd-control.socket\n", "")
        .replace("PrivateNetwork=yes", "PrivateNetwork=no")
        .replace(
            "RestrictAddressFamilies=AF_UNIX\n",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
        )
        .replace("IPAddressDeny=any\n", "");
    let drop_in =
        std::fs::read_to_string(packaging().join("examples/no-socket-activation.conf")).unwrap();
    assert!(
        drop_in.contains("PrivateNetwork=no") && drop_in.contains("IPAddressDeny=\n"),
        "the drop-in matches this test"
    );
    let plain = tempfile::tempdir().unwrap();
    let unit = plain.path().join("sockd.service");
    std::fs::write(&unit, text).unwrap();
    let bound = score(&unit);
    assert!(bound <= 1.5, "exposure without socket activation {bound}");
}
