//! The files plugin end to end: the real sockd with the files plugin, the
//! real sockctl `put`, `get`, `ls`, `mkdir`, `rm`, `mv`, `quota` and the
//! `files` shell. Covers verified and atomic transfers, every way out of
//! the home jail (`..`, absolute paths, planted and swapped symlinks, hard
//! links, bad names), quotas (concurrent uploads, restarts, recounts, a
//! client that lies about its size), resuming after a killed client or a
//! killed daemon, disk full on both sides, files beyond 4 GiB, several
//! users at once, the shell's per-session working directory, the sweep of
//! expired partial files and progress bars.
//!
//! Build first: `cargo build -p sockd -p sockctl -p sockd-files`.
//! The disk-full tests mount small tmpfs filesystems and so need root.

use sockd_e2e::raw::{RawClient, demo_secret};
use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG, wait_until};
use sockd_proto::{ErrorCode, Message};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const MIB: usize = 1 << 20;
/// Big enough that an upload in a debug build takes a good second, so a
/// test can interrupt it halfway.
const BIG: usize = 128 * MIB;

fn config(extra: &str) -> String {
    format!("{TEST_CONFIG}\n[plugins.files]\nfile = \"libsockd_files.so\"\n{extra}\n")
}

fn start(extra: &str) -> Daemon {
    let d = Daemon::start_with(Options {
        config: Some(config(extra)),
        ..Options::default()
    });
    // The first call creates the home.
    let out = d.run(&["ls"]);
    assert_eq!(
        out.code(),
        0,
        "ls failed: {}\n{}",
        out.stderr_text(),
        d.log_text()
    );
    d
}

fn home(d: &Daemon) -> PathBuf {
    d.path("state/home/demo")
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for 128 MiB.
fn data(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

fn write_random(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let bytes = data(size, seed);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// sockctl run in `dir`.
fn run_in(d: &Daemon, dir: &Path, args: &[&str]) -> Output {
    d.sockctl()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run sockctl")
}

#[track_caller]
fn ok(out: &Output) {
    assert_eq!(
        out.code(),
        0,
        "expected success; stderr: {}",
        out.stderr_text()
    );
}

#[track_caller]
fn fails(out: &Output, status: i32, text: &str) {
    assert_eq!(out.code(), status, "stderr: {}", out.stderr_text());
    let err = out.stderr_text();
    assert!(err.contains(text), "{err:?} does not contain {text:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("sockctl: "), "{err:?}");
}

/// Partial and metadata files anywhere under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(".sockd-partial") || name.contains(".sockd-meta") {
                found.push(entry.path());
            }
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    found
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The tally as (bytes, files), after a `quota` call as `user` (global
/// options). The saved copy is exact where the output is rounded.
fn usage(d: &Daemon, user: &[&str]) -> (u64, u64) {
    let mut args = user.to_vec();
    args.push("quota");
    ok(&d.run(&args));
    let name = if user.is_empty() { "demo" } else { user[1] };
    let saved = std::fs::read_to_string(d.path(&format!("state/files/quota/{name}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    (v["bytes"].as_u64().unwrap(), v["files"].as_u64().unwrap())
}

/// Flips one byte of `path` in place.
fn corrupt(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
}

#[test]
fn put_and_get_round_trip_verified_and_atomic() {
    let d = start("");
    let local = tempfile::tempdir().unwrap();
    let original = write_random(&local.path().join("a.bin"), 3 * MIB + 17, 1);
    ok(&run_in(&d, local.path(), &["put", "a.bin"]));
    assert_eq!(std::fs::read(home(&d).join("a.bin")).unwrap(), original);
    assert!(
        leftovers(&home(&d)).is_empty(),
        "{:?}",
        leftovers(&home(&d))
    );
    let out = d.run(&["ls"]);
    ok(&out);
    assert_eq!(out.stdout_text(), "a.bin\n");
    let out = d.run(&["ls", "-l", "a.bin"]);
    ok(&out);
    assert!(
        out.stdout_text().contains(&(3 * MIB + 17).to_string()),
        "{}",
        out.stdout_text()
    );

    // The same file again (a re-run after a lost result) is confirmed by
    // its hash, nothing sent; other content is not overwritten without
    // --force, on either side.
    let again = run_in(&d, local.path(), &["put", "a.bin"]);
    ok(&again);
    assert!(
        again.stderr_text().contains("already on the server"),
        "{}",
        again.stderr_text()
    );
    assert_eq!(std::fs::read(home(&d).join("a.bin")).unwrap(), original);
    write_random(&local.path().join("same-size.bin"), 3 * MIB + 17, 3);
    fails(
        &run_in(&d, local.path(), &["put", "same-size.bin", "a.bin"]),
        13,
        "already exists with other content; use --force",
    );
    assert_eq!(std::fs::read(home(&d).join("a.bin")).unwrap(), original);
    let other = write_random(&local.path().join("b.bin"), MIB, 2);
    fails(
        &run_in(&d, local.path(), &["put", "b.bin", "a.bin"]),
        13,
        "already exists; use --force",
    );
    ok(&run_in(
        &d,
        local.path(),
        &["put", "--force", "b.bin", "a.bin"],
    ));
    assert_eq!(std::fs::read(home(&d).join("a.bin")).unwrap(), other);

    let back = tempfile::tempdir().unwrap();
    ok(&run_in(&d, back.path(), &["get", "a.bin"]));
    assert_eq!(std::fs::read(back.path().join("a.bin")).unwrap(), other);
    let again = run_in(&d, back.path(), &["get", "a.bin"]);
    ok(&again);
    assert!(
        again.stderr_text().contains("already here"),
        "{}",
        again.stderr_text()
    );
    let changed = write_random(&back.path().join("a.bin"), MIB, 4);
    fails(
        &run_in(&d, back.path(), &["get", "a.bin"]),
        13,
        "already exists with other content; use --force",
    );
    assert_eq!(std::fs::read(back.path().join("a.bin")).unwrap(), changed);
    std::fs::write(back.path().join("a.bin"), b"short").unwrap();
    fails(
        &run_in(&d, back.path(), &["get", "a.bin"]),
        13,
        "already exists; use --force",
    );
    ok(&run_in(
        &d,
        back.path(),
        &["get", "-f", "a.bin", "copy.bin"],
    ));
    assert_eq!(std::fs::read(back.path().join("copy.bin")).unwrap(), other);
    assert!(leftovers(back.path()).is_empty());

    // Modification times travel both ways.
    let local_mtime = std::fs::metadata(local.path().join("b.bin"))
        .unwrap()
        .mtime();
    assert_eq!(
        std::fs::metadata(home(&d).join("a.bin")).unwrap().mtime(),
        local_mtime
    );
    assert_eq!(
        std::fs::metadata(back.path().join("copy.bin"))
            .unwrap()
            .mtime(),
        local_mtime
    );

    // Empty files too.
    std::fs::write(local.path().join("empty"), b"").unwrap();
    ok(&run_in(&d, local.path(), &["put", "empty"]));
    assert_eq!(size_of(&home(&d).join("empty")), 0);
    assert!(home(&d).join("empty").exists());
}

#[test]
fn directories_and_many_files_go_several_at_a_time() {
    let d = start("");
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("x/y")).unwrap();
    let mut files = Vec::new();
    for i in 0..9 {
        let path = if i % 3 == 0 {
            tree.join(format!("x/y/f{i}"))
        } else {
            tree.join(format!("f{i}"))
        };
        files.push((
            path.clone(),
            write_random(&path, 100_000 * (i + 1), i as u64),
        ));
    }
    fails(
        &run_in(&d, local.path(), &["put", "tree"]),
        14,
        "is a directory; use -r",
    );
    ok(&run_in(&d, local.path(), &["put", "-r", "tree"]));
    for (path, bytes) in &files {
        let rel = path.strip_prefix(local.path()).unwrap();
        assert_eq!(
            &std::fs::read(home(&d).join(rel)).unwrap(),
            bytes,
            "{}",
            rel.display()
        );
    }
    // Several files into one remote directory, and back.
    ok(&d.run(&["mkdir", "flat"]));
    let f1 = tree.join("f1").display().to_string();
    let f2 = tree.join("f2").display().to_string();
    ok(&run_in(&d, local.path(), &["put", &f1, &f2, "flat"]));
    let out = d.run(&["ls", "flat"]);
    assert_eq!(out.stdout_text(), "f1\nf2\n");
    fails(
        &run_in(&d, local.path(), &["put", &f1, &f2, "nowhere"]),
        14,
        "not a directory",
    );

    let back = tempfile::tempdir().unwrap();
    ok(&run_in(&d, back.path(), &["get", "-r", "tree"]));
    for (path, bytes) in &files {
        let rel = path.strip_prefix(local.path()).unwrap();
        assert_eq!(
            &std::fs::read(back.path().join(rel)).unwrap(),
            bytes,
            "{}",
            rel.display()
        );
    }
    ok(&run_in(
        &d,
        back.path(),
        &["get", "flat/f1", "flat/f2", "."],
    ));
    assert_eq!(std::fs::read(back.path().join("f2")).unwrap(), files[2].1);
    assert!(leftovers(back.path()).is_empty());
    assert!(leftovers(&home(&d)).is_empty());
}

#[test]
fn small_commands_work_and_fail_clearly() {
    let d = start("");
    ok(&d.run(&["mkdir", "-p", "a/b/c"]));
    ok(&d.run(&["mkdir", "-p", "a/b/c"]));
    fails(&d.run(&["mkdir", "a"]), 13, "already exists");
    fails(&d.run(&["mkdir", "nope/x"]), 12, "no such file");
    assert!(home(&d).join("a/b/c").is_dir());
    ok(&d.run(&["mv", "a/b", "moved"]));
    assert!(home(&d).join("moved/c").is_dir());
    ok(&d.run(&["mkdir", "target"]));
    ok(&d.run(&["mv", "moved", "target"]));
    assert!(home(&d).join("target/moved/c").is_dir());
    std::fs::write(home(&d).join("f"), b"1").unwrap();
    std::fs::write(home(&d).join("g"), b"2").unwrap();
    fails(&d.run(&["mv", "f", "g"]), 13, "use --force");
    ok(&d.run(&["mv", "-f", "f", "g"]));
    assert_eq!(std::fs::read(home(&d).join("g")).unwrap(), b"1");
    fails(&d.run(&["mv", "target", "target/moved"]), 23, "into itself");
    fails(&d.run(&["rm", "target"]), 14, "is a directory; use -r");
    ok(&d.run(&["rm", "-r", "target"]));
    ok(&d.run(&["rm", "g"]));
    fails(&d.run(&["rm", "g"]), 12, "no such file");
    fails(&d.run(&["rm", "-r", "/"]), 11, "cannot be removed");
    let out = d.run(&["ls"]);
    assert_eq!(out.stdout_text(), "a/\n");
    fails(&d.run(&["ls", "missing"]), 12, "missing: no such file");

    // Not a directory, is a directory.
    let local = tempfile::tempdir().unwrap();
    write_random(&local.path().join("x"), 1000, 50);
    std::fs::write(home(&d).join("plain"), b"p").unwrap();
    fails(
        &run_in(&d, local.path(), &["put", "x", "plain/y"]),
        14,
        "plain/y: not a directory",
    );
    fails(&d.run(&["mkdir", "plain/z"]), 14, "not a directory");
    fails(
        &run_in(&d, local.path(), &["get", "a"]),
        14,
        "a: is a directory; use -r",
    );
    // `/` is the home: into it, like any directory.
    ok(&run_in(&d, local.path(), &["put", "x", "/"]));
    assert!(home(&d).join("x").is_file());
    fails(
        &run_in(&d, local.path(), &["put", "missing-local"]),
        12,
        "missing-local: no such file",
    );
}

#[test]
fn malformed_requests_are_refused() {
    let d = start("");
    let addr = d.addr;
    let secret = demo_secret(d.dir.path());
    let closes = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut c = RawClient::connect_hello(addr).await;
            assert!(matches!(
                c.login("demo", &secret).await,
                Some(Message::AuthOk { .. })
            ));
            let requests: [(&str, Vec<&[u8]>); 5] = [
                ("ls", vec![b"a\0b"]),
                ("get", vec![b"../x\x07"]),
                ("put", vec![b"x", b"not json"]),
                ("put", vec![b"x", br#"{"size":1,"owner":"root"}"#]),
                ("get", vec![]),
            ];
            let mut closes = Vec::new();
            for (i, (command, args)) in requests.into_iter().enumerate() {
                let channel = 2 * i as u32 + 1;
                let args = args
                    .into_iter()
                    .map(bytes::Bytes::copy_from_slice)
                    .collect();
                c.send(Message::Open {
                    channel,
                    command: command.into(),
                    args,
                })
                .await;
                loop {
                    match c.recv().await {
                        Some(Message::Close {
                            channel: ch,
                            code,
                            message,
                            ..
                        }) if ch == channel => {
                            closes.push((code, message));
                            break;
                        }
                        Some(_) => {}
                        None => panic!("connection closed"),
                    }
                }
            }
            closes
        });
    for (code, message) in &closes {
        assert_eq!(*code, ErrorCode::BadRequest, "{message}");
    }
    assert!(
        closes[0].1.contains("control characters"),
        "{:?}",
        closes[0]
    );
    assert!(closes[2].1.contains("bad options"), "{:?}", closes[2]);
    assert!(closes[3].1.contains("owner"), "{:?}", closes[3]);
    assert!(closes[4].1.contains("usage"), "{:?}", closes[4]);
    assert!(
        std::fs::read_dir(home(&d)).unwrap().next().is_none(),
        "nothing was created"
    );
}

#[test]
fn paths_cannot_leave_the_home() {
    let d = start("");
    let outside = d.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let local = tempfile::tempdir().unwrap();
    let payload = write_random(&local.path().join("p.bin"), 300_000, 3);

    // `..` and absolute paths stay inside, like a chroot.
    fails(
        &run_in(&d, local.path(), &["get", "../../outside/secret"]),
        12,
        "no such file",
    );
    fails(
        &run_in(&d, local.path(), &["get", "/etc/passwd"]),
        12,
        "no such file",
    );
    ok(&run_in(
        &d,
        local.path(),
        &["put", "p.bin", "../../../p.bin"],
    ));
    assert_eq!(std::fs::read(home(&d).join("p.bin")).unwrap(), payload);
    assert!(!d.path("state/p.bin").exists() && !d.path("p.bin").exists());
    ok(&d.run(&["mv", "p.bin", "../../escaped"]));
    assert!(home(&d).join("escaped").exists());

    // Symlinks planted in the home (as an exec command could) lead nowhere.
    std::os::unix::fs::symlink(&outside, home(&d).join("out")).unwrap();
    std::os::unix::fs::symlink("../..", home(&d).join("up")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), home(&d).join("pw")).unwrap();
    fails(
        &run_in(&d, local.path(), &["get", "out/secret"]),
        11,
        "outside your home",
    );
    fails(
        &run_in(&d, local.path(), &["get", "pw"]),
        11,
        "outside your home",
    );
    fails(
        &run_in(&d, local.path(), &["put", "p.bin", "out/new"]),
        11,
        "outside your home",
    );
    fails(&d.run(&["ls", "out"]), 11, "outside your home");
    fails(&d.run(&["ls", "up"]), 11, "outside your home");
    fails(&d.run(&["mkdir", "out/d"]), 11, "outside your home");
    fails(&d.run(&["mv", "escaped", "out/x"]), 11, "outside your home");
    fails(&d.run(&["rm", "out/secret"]), 11, "outside your home");
    assert!(
        !outside.join("new").exists() && !outside.join("d").exists() && !outside.join("x").exists()
    );
    assert!(!local.path().join("secret").exists() && !local.path().join("pw").exists());
    // A symlink inside the home is fine.
    std::os::unix::fs::symlink("escaped", home(&d).join("inside")).unwrap();
    ok(&run_in(&d, local.path(), &["get", "inside"]));
    assert_eq!(std::fs::read(local.path().join("inside")).unwrap(), payload);

    // Hard links to outside files are not served, and put replaces the name
    // only, never the linked file.
    std::fs::hard_link(outside.join("secret"), home(&d).join("hard")).unwrap();
    fails(
        &run_in(&d, local.path(), &["get", "hard"]),
        11,
        "hard links",
    );
    ok(&run_in(&d, local.path(), &["put", "-f", "p.bin", "hard"]));
    assert_eq!(std::fs::read(home(&d).join("hard")).unwrap(), payload);

    // rm -r does not follow symlinks either.
    std::fs::create_dir(home(&d).join("dir")).unwrap();
    std::os::unix::fs::symlink(&outside, home(&d).join("dir/link")).unwrap();
    ok(&d.run(&["rm", "-r", "dir"]));
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

    // Names: control characters, reserved names, too long.
    fails(
        &run_in(&d, local.path(), &["put", "p.bin", "bad\nname"]),
        23,
        "control characters",
    );
    fails(&d.run(&["ls", "a\x1b[31m"]), 23, "control characters");
    fails(&d.run(&["get", ".p.bin.sockd-partial"]), 23, "reserved");
    let long = "n".repeat(300);
    fails(
        &run_in(&d, local.path(), &["put", "p.bin", &long]),
        17,
        "name too long",
    );
    fails(
        &d.run(&["mkdir", &format!("ok/{long}")]),
        17,
        "name too long",
    );
}

#[test]
fn a_symlink_swapped_in_during_uploads_cannot_write_outside() {
    let d = start("");
    let outside = d.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let sub = home(&d).join("sub");
    let real = home(&d).join("sub.real");
    std::fs::create_dir(&sub).unwrap();
    let local = tempfile::tempdir().unwrap();
    let payload = write_random(&local.path().join("f.bin"), 16 * MIB, 4);

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps, sub, real, outside) = (
            stop.clone(),
            swaps.clone(),
            sub.clone(),
            real.clone(),
            outside.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&sub, &real).unwrap();
                std::os::unix::fs::symlink(&outside, &sub).unwrap();
                std::thread::yield_now();
                std::fs::remove_file(&sub).unwrap();
                std::fs::rename(&real, &sub).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
                // Pacing, so that some uploads get to start between swaps.
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let (mut succeeded, mut refused) = (0, 0);
    for _ in 0..60 {
        let swaps_before = swaps.load(Ordering::Relaxed);
        let out = run_in(&d, local.path(), &["put", "-q", "-f", "f.bin", "sub/f.bin"]);
        match out.code() {
            0 => {
                // The directory was swapped for a symlink while it uploaded.
                assert!(swaps.load(Ordering::Relaxed) > swaps_before + 10);
                succeeded += 1;
            }
            // The path was a symlink out, or missing, when it was opened.
            11 | 12 => refused += 1,
            other => panic!("unexpected status {other}: {}", out.stderr_text()),
        }
        if succeeded >= 2 && refused >= 2 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(swaps.load(Ordering::Relaxed) > 0);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside"
    );
    assert!(
        succeeded > 0 && refused > 0,
        "{succeeded} uploads done, {refused} refused"
    );
    assert_eq!(std::fs::read(sub.join("f.bin")).unwrap(), payload);
}

#[test]
fn quotas_hold_under_concurrency_restarts_and_lies() {
    let mut d = start(
        "quota_bytes = 1000000\nquota_files = 8\n[plugins.files.users.alice]\nquota_bytes = 3000000\nquota_files = 0\n",
    );
    let local = tempfile::tempdir().unwrap();
    write_random(&local.path().join("600k"), 600_000, 5);
    write_random(&local.path().join("300k"), 300_000, 6);
    ok(&run_in(&d, local.path(), &["put", "600k"]));
    let out = run_in(&d, local.path(), &["put", "600k", "again"]);
    fails(&out, 15, "quota exceeded");
    assert!(!home(&d).join("again").exists());
    assert!(leftovers(&home(&d)).is_empty(), "rejected data left behind");
    assert_eq!(usage(&d, &[]), (600_000, 1));
    let out = d.run(&["quota"]);
    assert!(
        out.stdout_text().contains("585.9 KiB of 976.6 KiB (60%)"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text().contains("1 of 8"),
        "{}",
        out.stdout_text()
    );

    // Four uploads of the same user at once: at most one of them fits.
    let children: Vec<_> = (0..4)
        .map(|i| {
            d.sockctl()
                .current_dir(local.path())
                .args(["put", "-q", "300k", &format!("c{i}")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut fitted = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        match out.code() {
            0 => fitted += 1,
            15 => assert!(out.stderr_text().contains("quota exceeded")),
            other => panic!("status {other}: {}", out.stderr_text()),
        }
    }
    assert_eq!(fitted, 1);
    let on_disk: u64 = std::fs::read_dir(home(&d))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(on_disk, 900_000);
    assert_eq!(usage(&d, &[]), (900_000, 2));

    // A client that announces 10 bytes and sends more is stopped before
    // the extra bytes are written.
    let addr = d.addr;
    let secret = demo_secret(d.dir.path());
    let close = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let mut c = RawClient::connect_hello(addr).await;
            assert!(matches!(
                c.login("demo", &secret).await,
                Some(Message::AuthOk { .. })
            ));
            let options = bytes::Bytes::from_static(br#"{"size":10}"#);
            c.send(Message::Open {
                channel: 1,
                command: "put".into(),
                args: vec![bytes::Bytes::from_static(b"liar"), options],
            })
            .await;
            loop {
                match c.recv().await {
                    Some(Message::Data { stream: 2, .. }) => break,
                    Some(Message::Close { code, message, .. }) => {
                        panic!("closed early: {code} {message}")
                    }
                    Some(_) => {}
                    None => panic!("connection closed"),
                }
            }
            let start = bytes::Bytes::from_static(b"{\"type\":\"start\",\"offset\":0}\n");
            c.send(Message::Data {
                channel: 1,
                stream: 2,
                data: start,
            })
            .await;
            c.send(Message::Data {
                channel: 1,
                stream: 0,
                data: bytes::Bytes::from(vec![7u8; 200_000]),
            })
            .await;
            loop {
                match c.recv().await {
                    Some(Message::Close { code, message, .. }) => break (code, message),
                    Some(_) => {}
                    None => panic!("connection closed"),
                }
            }
        });
    assert_eq!(close.0, ErrorCode::BadRequest, "{close:?}");
    assert!(close.1.contains("more than"), "{close:?}");
    assert!(size_of(&home(&d).join(".liar.sockd-partial")) <= 10);
    assert!(usage(&d, &[]).0 <= 1_000_000);

    // Files count too.
    for i in 0..8 {
        let out = d.run(&["mkdir", &format!("d{i}")]);
        if out.code() != 0 {
            fails(&out, 15, "files");
            break;
        }
    }
    assert!(usage(&d, &[]).1 <= 8);

    // The tally survives a crash, and a recount picks up outside changes.
    let before = usage(&d, &[]);
    d.restart_after_kill();
    assert_eq!(usage(&d, &[]), before);
    std::fs::remove_file(home(&d).join("600k")).unwrap();
    assert_eq!(usage(&d, &[]), before);
    ok(&d.run(&["quota", "--recount"]));
    assert_eq!(usage(&d, &[]).0, before.0 - 600_000);

    // Per-user limits.
    let key = d.path("alice.key").display().to_string();
    ok(&d.run(&["user", "add", "alice", "--key-file", &key]));
    let alice = ["--user", "alice", "--key-file", key.as_str()];
    write_random(&local.path().join("2m"), 2_000_000, 7);
    let mut args = alice.to_vec();
    args.extend(["put", "2m"]);
    ok(&run_in(&d, local.path(), &args));
    assert_eq!(usage(&d, &alice), (2_000_000, 1));
    fails(
        &run_in(&d, local.path(), &["put", "2m"]),
        15,
        "quota exceeded",
    );
}

/// Starts a put of `file` and kills sockctl once the server holds part of
/// it; returns the size of the partial left.
fn interrupted_put(d: &Daemon, dir: &Path, file: &str, partial: &Path) -> u64 {
    let mut child = d
        .sockctl()
        .current_dir(dir)
        .args(["put", "-q", file])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || size_of(partial) > 0),
        "no partial upload appeared"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let left = size_of(partial);
    assert!(left > 0 && left < BIG as u64, "partial of {left} bytes");
    left
}

#[test]
fn interrupted_uploads_resume_verified() {
    let mut d = start("");
    let local = tempfile::tempdir().unwrap();
    let original = write_random(&local.path().join("big.bin"), BIG, 8);
    let partial = home(&d).join(".big.bin.sockd-partial");

    // Killed client: the same put resumes where the server's data ends.
    interrupted_put(&d, local.path(), "big.bin", &partial);
    assert_eq!(d.run(&["ls"]).stdout_text(), "", "the partial is invisible");
    fails(&d.run(&["get", ".big.bin.sockd-partial"]), 23, "reserved");
    let out = run_in(&d, local.path(), &["put", "big.bin"]);
    ok(&out);
    assert!(
        out.stderr_text().contains("resuming big.bin at"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(std::fs::read(home(&d).join("big.bin")).unwrap(), original);
    assert!(leftovers(&home(&d)).is_empty());

    // A partial whose content no longer matches is not trusted by its size.
    std::fs::remove_file(home(&d).join("big.bin")).unwrap();
    let left = interrupted_put(&d, local.path(), "big.bin", &partial);
    corrupt(&partial, left / 2);
    let out = run_in(&d, local.path(), &["put", "big.bin"]);
    ok(&out);
    assert!(
        out.stderr_text().contains("does not match; starting over"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(std::fs::read(home(&d).join("big.bin")).unwrap(), original);

    // A source that changed since restarts from zero.
    std::fs::remove_file(home(&d).join("big.bin")).unwrap();
    interrupted_put(&d, local.path(), "big.bin", &partial);
    let changed = write_random(&local.path().join("big.bin"), BIG, 9);
    let out = run_in(&d, local.path(), &["put", "big.bin"]);
    ok(&out);
    assert!(
        !out.stderr_text().contains("resuming"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(std::fs::read(home(&d).join("big.bin")).unwrap(), changed);

    // The daemon killed mid-upload and restarted: the put resumes.
    std::fs::remove_file(home(&d).join("big.bin")).unwrap();
    let mut child = d
        .sockctl()
        .current_dir(local.path())
        .args(["put", "-q", "big.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || size_of(&partial) > 0));
    d.restart_after_kill();
    assert_ne!(child.wait().unwrap().code(), Some(0));
    assert!(size_of(&partial) > 0);
    let out = run_in(&d, local.path(), &["put", "big.bin"]);
    ok(&out);
    assert!(
        out.stderr_text().contains("resuming big.bin at"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(std::fs::read(home(&d).join("big.bin")).unwrap(), changed);
    assert!(leftovers(&home(&d)).is_empty());
    assert_eq!(usage(&d, &[]), (BIG as u64, 1));
}

#[test]
fn interrupted_downloads_resume_verified() {
    let d = start("");
    let original = write_random(&home(&d).join("big.bin"), BIG, 10);
    let local = tempfile::tempdir().unwrap();
    let partial = local.path().join("big.bin.sockd-partial");
    let interrupt = || {
        let mut child = d
            .sockctl()
            .current_dir(local.path())
            .args(["get", "-q", "big.bin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(60), || size_of(&partial) > 0));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !local.path().join("big.bin").exists(),
            "finished before it was interrupted"
        );
        size_of(&partial)
    };
    interrupt();
    let out = run_in(&d, local.path(), &["get", "big.bin"]);
    ok(&out);
    assert!(
        out.stderr_text().contains("resuming"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        std::fs::read(local.path().join("big.bin")).unwrap(),
        original
    );
    assert!(leftovers(local.path()).is_empty());

    // A corrupted local partial is detected by its hash.
    std::fs::remove_file(local.path().join("big.bin")).unwrap();
    let left = interrupt();
    corrupt(&partial, left / 3);
    let out = run_in(&d, local.path(), &["get", "big.bin"]);
    ok(&out);
    assert!(
        out.stderr_text().contains("starting over"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        std::fs::read(local.path().join("big.bin")).unwrap(),
        original
    );
}

/// A tmpfs mounted for a test, lazily unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (this test fills a disk)"
        );
        Mount(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_keeps_partials_for_resuming_and_corrupts_nothing() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting the small tmpfs this test fills needs root");
        return;
    }
    let mut d = Daemon::start_with(Options {
        config: Some(config("")),
        ..Options::default()
    });
    let disk = Mount::new(&home(&d), "4m");
    let local = tempfile::tempdir().unwrap();
    let small = write_random(&local.path().join("small"), MIB, 11);
    let big = write_random(&local.path().join("big"), 8 * MIB, 12);
    ok(&run_in(&d, local.path(), &["put", "small"]));
    let out = run_in(&d, local.path(), &["put", "big"]);
    fails(&out, 16, "no space left on the server's disk");
    assert!(
        out.stderr_text().contains("resume"),
        "{}",
        out.stderr_text()
    );
    assert!(!home(&d).join("big").exists());
    assert!(
        size_of(&home(&d).join(".big.sockd-partial")) > 0,
        "the partial is kept"
    );
    let back = tempfile::tempdir().unwrap();
    ok(&run_in(&d, back.path(), &["get", "small"]));
    assert_eq!(std::fs::read(back.path().join("small")).unwrap(), small);
    // A new version that does not fit leaves the old one under its name.
    let newer = write_random(&local.path().join("small-v2"), 2 * MIB, 13);
    fails(
        &run_in(&d, local.path(), &["put", "-f", "small-v2", "small"]),
        16,
        "no space left on the server's disk",
    );
    assert_eq!(std::fs::read(home(&d).join("small")).unwrap(), small);
    // Other users, whose homes are elsewhere, are served meanwhile.
    let key = d.path("alice.key").display().to_string();
    ok(&d.run(&["user", "add", "alice", "--key-file", &key]));
    let alice = ["--user", "alice", "--key-file", key.as_str()];
    ok(&run_in(
        &d,
        local.path(),
        &[&alice[..], &["put", "big"]].concat(),
    ));
    ok(&run_in(
        &d,
        back.path(),
        &[&alice[..], &["get", "big"]].concat(),
    ));
    assert_eq!(std::fs::read(back.path().join("big")).unwrap(), big);
    std::fs::remove_file(back.path().join("big")).unwrap();
    // sockd killed while the disk is full starts again with everything kept.
    d.restart_after_kill();
    assert_eq!(d.run(&["ls"]).stdout_text(), "small\n");
    assert!(size_of(&home(&d).join(".big.sockd-partial")) > 0);

    disk.resize("16m");
    let out = run_in(&d, local.path(), &["put", "big"]);
    ok(&out);
    assert!(
        out.stderr_text().contains("resuming big at"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(std::fs::read(home(&d).join("big")).unwrap(), big);
    ok(&run_in(
        &d,
        local.path(),
        &["put", "-f", "small-v2", "small"],
    ));
    assert_eq!(std::fs::read(home(&d).join("small")).unwrap(), newer);
    assert!(
        leftovers(&home(&d)).is_empty(),
        "{:?}",
        leftovers(&home(&d))
    );

    // And on this side: get into a full local disk.
    let full = Mount::new(&back.path().join("full"), "2m");
    let out = run_in(&d, &full.0, &["get", "big"]);
    fails(&out, 16, "no space left");
    assert!(
        size_of(&full.0.join("big.sockd-partial")) > 0,
        "the partial is kept"
    );
    assert!(!full.0.join("big").exists());
    drop(full);
    drop(disk);
}

#[test]
fn files_beyond_4_gib_stream_with_holes_and_u64_offsets() {
    let d = start("");
    let size: u64 = 5 << 30;
    let marker_at: u64 = (4 << 30) + 12345;
    let server_file = home(&d).join("huge.bin");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&server_file).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"beyond four gigabytes", marker_at).unwrap();
        f.write_all_at(b"start", 0).unwrap();
    }
    let local = tempfile::tempdir().unwrap();
    ok(&run_in(&d, local.path(), &["get", "-q", "huge.bin"]));
    let copy = local.path().join("huge.bin");
    assert_eq!(size_of(&copy), size);
    let read_at = |path: &Path, at: u64, len: usize| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, at)
            .unwrap();
        buf
    };
    assert_eq!(read_at(&copy, marker_at, 21), b"beyond four gigabytes");
    assert_eq!(read_at(&copy, 0, 5), b"start");
    assert_eq!(read_at(&copy, size - 4096, 4096), vec![0; 4096]);
    // Holes stayed holes: far less than 5 GiB on disk.
    assert!(std::fs::metadata(&copy).unwrap().blocks() * 512 < 64 << 20);

    // And back up under another name.
    ok(&run_in(
        &d,
        local.path(),
        &["put", "-q", "huge.bin", "again.bin"],
    ));
    let again = home(&d).join("again.bin");
    assert_eq!(size_of(&again), size);
    assert_eq!(read_at(&again, marker_at, 21), b"beyond four gigabytes");
    // huge.bin was made behind the plugin's back: recount.
    ok(&d.run(&["quota", "--recount"]));
    assert_eq!(usage(&d, &[]), (2 * size, 2));
}

#[test]
fn users_are_apart_and_transfer_at_once() {
    let d = start("");
    let local = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for user in ["alice", "bob"] {
        let key = d.path(&format!("{user}.key")).display().to_string();
        ok(&d.run(&["user", "add", user, "--key-file", &key]));
        keys.push((user, key));
    }
    let mut files = Vec::new();
    for i in 0..4 {
        files.push(write_random(
            &local.path().join(format!("f{i}")),
            2 * MIB + i,
            20 + i as u64,
        ));
    }
    let names: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    let children: Vec<_> = [
        ("demo", None),
        ("alice", Some(&keys[0].1)),
        ("bob", Some(&keys[1].1)),
    ]
    .into_iter()
    .map(|(user, key)| {
        let mut cmd = d.sockctl();
        cmd.current_dir(local.path());
        if let Some(key) = key {
            cmd.args(["--user", user, "--key-file", key]);
        }
        cmd.arg("put").args(&names).arg(".");
        (
            user,
            cmd.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    })
    .collect();
    for (user, child) in children {
        let out = child.wait_with_output().unwrap();
        ok(&out);
        for (i, bytes) in files.iter().enumerate() {
            let path = d.path(&format!("state/home/{user}/f{i}"));
            assert_eq!(&std::fs::read(&path).unwrap(), bytes, "{}", path.display());
        }
    }
    // Nobody reaches another's home.
    let alice = ["--user", "alice", "--key-file", keys[0].1.as_str()];
    std::fs::write(home(&d).join("mine"), b"demo's").unwrap();
    let mut args = alice.to_vec();
    args.extend(["get", "../demo/mine"]);
    fails(&run_in(&d, local.path(), &args), 12, "no such file");
    let mut args = alice.to_vec();
    args.extend(["ls", "/"]);
    let out = d.run(&args);
    assert_eq!(out.stdout_text(), "f0\nf1\nf2\nf3\n");
}

#[test]
fn the_shell_keeps_its_working_directory_per_session() {
    let d = start("");
    let local = tempfile::tempdir().unwrap();
    let bytes = write_random(&local.path().join("f.bin"), 200_000, 30);
    let script = "pwd\nmkdir -p d/e\ncd d\npwd\nput f.bin\nls\ncd e\ncd ../..\ncd ..\npwd\nls d\ncd nope\nget d/f.bin copy.bin\nhelp\nexit\nls\n";
    let mut child = d
        .sockctl()
        .current_dir(local.path())
        .arg("files")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = out.stdout_text();
    assert!(
        stdout.starts_with("/\n/d\ne/\nf.bin\n/\ne/\nf.bin\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Commands"), "help: {stdout}");
    assert!(
        out.stderr_text().contains("nope: no such file"),
        "{}",
        out.stderr_text()
    );
    // The status of the last failure; nothing ran after exit.
    assert_eq!(out.code(), 12);
    assert_eq!(std::fs::read(home(&d).join("d/f.bin")).unwrap(), bytes);
    assert_eq!(std::fs::read(local.path().join("copy.bin")).unwrap(), bytes);
    // Each session has its own directory: a new one starts in the home.
    assert_eq!(d.run(&["ls"]).stdout_text(), "d/\n");
}

#[test]
fn expired_partials_are_swept_and_fresh_ones_kept() {
    let d = start("partial_ttl_secs = 3600\n");
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    for (name, age) in [("old", Some(old)), ("new", None)] {
        let partial = home(&d).join(format!(".{name}.sockd-partial"));
        std::fs::write(&partial, vec![1u8; 1000]).unwrap();
        std::fs::write(home(&d).join(format!(".{name}.sockd-meta")), b"{}").unwrap();
        if let Some(at) = age {
            for path in [partial, home(&d).join(format!(".{name}.sockd-meta"))] {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(at)
                    .unwrap();
            }
        }
    }
    ok(&d.run(&["quota", "--recount"]));
    assert!(!home(&d).join(".old.sockd-partial").exists());
    assert!(!home(&d).join(".old.sockd-meta").exists());
    assert!(home(&d).join(".new.sockd-partial").exists());
    assert_eq!(usage(&d, &[]), (1000, 1));
}

#[test]
fn progress_bars_show_on_a_terminal_only() {
    let d = start("");
    let local = tempfile::tempdir().unwrap();
    write_random(&local.path().join("p.bin"), 64 * MIB, 40);
    let sockctl = sockd_e2e::bin("sockctl").display().to_string();
    let in_terminal = |args: &str| {
        // `script` gives sockctl a terminal; its output is what that shows.
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("stty cols 120; {sockctl} {args}"),
                "/dev/null",
            ])
            .current_dir(local.path())
            .env("SOCKCTL_CONFIG", d.path("client.toml"))
            .stdin(Stdio::null())
            .output()
            .expect("run script");
        assert_eq!(out.code(), 0, "{}", out.stdout_text());
        out.stdout_text()
    };
    let shown = in_terminal("put p.bin");
    assert!(
        shown.contains("p.bin") && shown.contains("/s"),
        "no progress bar: {shown:?}"
    );
    let quiet = in_terminal("put -q -f p.bin");
    assert!(!quiet.contains("/s"), "bar despite -q: {quiet:?}");
    let out = run_in(&d, local.path(), &["put", "-f", "p.bin"]);
    ok(&out);
    assert_eq!(out.stderr_text(), "", "no bar without a terminal");
}

#[test]
fn the_shell_completes_remote_names_on_a_terminal() {
    let d = start("");
    ok(&d.run(&["mkdir", "-p", "subdir/inner"]));
    let sockctl = sockd_e2e::bin("sockctl").display().to_string();
    // `script` gives the shell a terminal; Tab completes `subd` to `subdir/`.
    let mut child = Command::new("script")
        .args(["-qec", &format!("{sockctl} files"), "/dev/null"])
        .env("SOCKCTL_CONFIG", d.path("client.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"cd subd\t\nexit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = out.stdout_text();
    assert!(
        screen.contains("files:/subdir> "),
        "not completed: {screen:?}"
    );
}
