//! The core daemon driven by the real sockctl: logins with keys and
//! passwords, the errors users see, the control socket and its peer check,
//! reload on SIGHUP, graceful SIGTERM, kick, config errors.

use sockd_e2e::raw::{RawClient, demo_secret};
use sockd_e2e::{Daemon, OutputExt, TEST_CONFIG, bin, wait_until};
use sockd_proto::auth::{Secret, StoredCredential};
use sockd_proto::{ErrorCode, Message};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn write_key(path: &Path, key: [u8; 32]) {
    std::fs::write(path, sockd_proto::auth::encode_key(&key)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The realm in the users file (the salt of every key credential).
fn realm_of(d: &Daemon) -> Vec<u8> {
    let users = std::fs::read_to_string(d.path("state/users.toml")).unwrap();
    users
        .lines()
        .find_map(|l| l.strip_prefix("realm = \""))
        .and_then(|l| l.strip_suffix('"'))
        .and_then(sockd_proto::hex::decode)
        .expect("a realm in users.toml")
}

/// A users table as the operator or an older sockd wrote it.
fn users_entry(name: &str, cred: &StoredCredential) -> String {
    format!(
        "\n[users.{name}]\nkind = \"{}\"\nsalt = \"{}\"\niterations = {}\nstored_key = \"{}\"\nserver_key = \"{}\"\n",
        cred.kind.name(),
        sockd_proto::hex::encode(&cred.salt),
        cred.iterations,
        sockd_proto::hex::encode(&cred.stored_key),
        sockd_proto::hex::encode(&cred.server_key)
    )
}

#[test]
fn ping_with_the_demo_key() {
    let d = Daemon::start();
    let out = d.run(&["ping"]);
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr_text());
    let text = out.stdout_text();
    assert!(text.contains("sockd-test"), "names the server: {text}");
    assert!(text.contains("sha256:"), "shows the certificate: {text}");
}

#[test]
fn password_user_added_over_the_control_socket_can_log_in() {
    let d = Daemon::start();
    let out = d.add_password_user("alice", "correct horse");
    assert_eq!(out.code(), 0, "user add: {}", out.stderr_text());
    let users = std::fs::read_to_string(d.path("state/users.toml")).unwrap();
    assert!(
        users.contains("[users.alice]") && !users.contains("correct horse"),
        "no secret stored:\n{users}"
    );

    let ok = d.password_ping("alice", "correct horse");
    assert_eq!(ok.code(), 0, "password login: {}", ok.stderr_text());
    let bad = d.password_ping("alice", "wrong horse");
    assert_eq!(bad.code(), 5, "{}", bad.stderr_text());

    let again = d.add_password_user("alice", "x");
    assert_eq!(again.code(), 13, "exists: {}", again.stderr_text());
    assert!(
        again.stderr_text().contains("already exists"),
        "{}",
        again.stderr_text()
    );
}

#[test]
fn key_file_user_and_cli_overrides() {
    let d = Daemon::start();
    let key = d.path("bob.key");
    let out = d.run(&["user", "add", "bob", "--key-file", key.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Refuses to overwrite an existing key file.
    let out = d.run(&["user", "add", "carol", "--key-file", key.to_str().unwrap()]);
    assert_ne!(out.code(), 0);
    // A key the daemon refused is removed; with no daemon to ask for its
    // realm, none is written. (One whose fate is unknown, the daemon gone
    // between the two requests, is kept, with what to do next.)
    let refused = d.path("bob2.key");
    let out = d.run(&[
        "user",
        "add",
        "bob",
        "--key-file",
        refused.to_str().unwrap(),
    ]);
    assert_ne!(out.code(), 0);
    assert!(!refused.exists(), "{}", out.stderr_text());
    let unanswered = d.path("erin.key");
    let nowhere = d.path("no-such.sock");
    let out = d.run(&[
        "--socket",
        nowhere.to_str().unwrap(),
        "user",
        "add",
        "erin",
        "--key-file",
        unanswered.to_str().unwrap(),
    ]);
    assert_ne!(out.code(), 0);
    assert!(!unanswered.exists());
    assert!(
        out.stderr_text()
            .contains("cannot reach the control socket"),
        "{}",
        out.stderr_text()
    );
    let out = d.key_ping("bob", &key);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let list = d.run(&["user", "list", "--json"]);
    let users: serde_json::Value = serde_json::from_str(&list.stdout_text()).unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "demo"]);
}

#[test]
fn wrong_key_and_unknown_user_give_the_same_error() {
    let d = Daemon::start();
    let wrong = d.path("wrong.key");
    write_key(&wrong, [9; 32]);
    let a = d.run(&["--key-file", wrong.to_str().unwrap(), "ping"]);
    let b = d.key_ping("mallory", &wrong);
    assert_eq!(a.code(), 5);
    assert_eq!(b.code(), 5);
    assert_eq!(a.stderr_text(), b.stderr_text(), "indistinguishable");
    assert_eq!(
        a.stderr_text().lines().count(),
        1,
        "one clear line: {}",
        a.stderr_text()
    );
    // A key file others can read is refused before connecting, like ssh does.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = d.run(&["--key-file", wrong.to_str().unwrap(), "ping"]);
    assert_ne!(c.code(), 0);
    assert!(c.stderr_text().contains("chmod 600"), "{}", c.stderr_text());
    assert_eq!(d.run(&["ping"]).code(), 0);
}

#[test]
fn connection_refused_and_certificate_mismatch_are_distinct() {
    let d = Daemon::start();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = d.run(&["--server", &format!("127.0.0.1:{port}"), "ping"]);
    assert_eq!(out.code(), 3, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains(&port.to_string()),
        "{}",
        out.stderr_text()
    );
    let pin = format!("sha256:{}", "ab".repeat(32));
    let out = d.run(&["--pin", &pin, "ping"]);
    assert_eq!(out.code(), 4, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("does not match"),
        "{}",
        out.stderr_text()
    );
}

/// An impostor holding the server's certificate and key (stolen, say) but
/// not the user's ServerKey: sockctl must refuse it.
#[test]
fn server_that_cannot_prove_server_key_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use rustls_pki_types::pem::PemObject;
    let d = Daemon::start();
    let certs = vec![rustls_pki_types::CertificateDer::from_pem_file(d.path("cert.pem")).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(d.path("key.pem")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![sockd_proto::message::ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut framed = tokio_util::codec::Framed::new(tls, sockd_proto::FrameCodec::new(1 << 20));
        let first = framed.next().await.unwrap().unwrap();
        assert!(matches!(Message::decode(first), Ok(Message::Hello(_))));
        framed
            .send(
                Message::Hello(sockd_proto::Hello {
                    version: 1,
                    max_frame: 1 << 20,
                    window: 1 << 20,
                    software: "impostor".into(),
                    identity: "sockd-test".into(),
                    capabilities: vec![],
                })
                .encode(),
            )
            .await
            .unwrap();
        let _start = framed.next().await;
        let challenge = Message::AuthChallenge {
            server_nonce: [5; 32],
            salt: vec![1u8; 16].into(),
            iterations: 0,
        };
        framed.send(challenge.encode()).await.unwrap();
        let _proof = framed.next().await;
        // It cannot compute the signature, so it guesses.
        framed
            .send(
                Message::AuthOk {
                    server_signature: [0; 32],
                    session_id: 1,
                }
                .encode(),
            )
            .await
            .unwrap();
        let _ = framed.next().await;
    });
    let out = d.run(&["--server", &addr.to_string(), "ping"]);
    assert_eq!(out.code(), 6, "{}", out.stderr_text());
    assert!(out.stderr_text().contains("prove"), "{}", out.stderr_text());
}

#[test]
fn admin_commands_status_sessions_kick() {
    let d = Daemon::start();
    let status = d.run(&["status", "--json"]);
    assert_eq!(status.code(), 0, "{}", status.stderr_text());
    let s: serde_json::Value = serde_json::from_str(&status.stdout_text()).unwrap();
    assert_eq!(s["listen"][0].as_str().unwrap(), d.addr.to_string());
    assert!(
        s["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "testkit")
    );

    rt().block_on(async {
        let mut c = RawClient::connect_hello(d.addr).await;
        let Some(Message::AuthOk { session_id, .. }) =
            c.login("demo", &demo_secret(d.dir.path())).await
        else {
            panic!("login")
        };
        let sessions = d.run(&["sessions", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&sessions.stdout_text()).unwrap();
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == session_id && s["user"] == "demo")
        );
        let kicked = d.run(&["kick", &session_id.to_string()]);
        assert_eq!(kicked.code(), 0, "{}", kicked.stderr_text());
        assert!(matches!(
            c.recv().await,
            Some(Message::Error {
                code: ErrorCode::Kicked,
                ..
            })
        ));
        let missing = d.run(&["kick", "999999"]);
        assert_eq!(missing.code(), 12, "{}", missing.stderr_text());
    });
}

#[test]
fn sighup_adds_a_user_without_dropping_a_live_session() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut live = RawClient::connect_hello(d.addr).await;
        assert!(matches!(
            live.login("demo", &demo_secret(d.dir.path())).await,
            Some(Message::AuthOk { .. })
        ));

        // An operator edits the users file by hand, then reloads.
        let key = [4u8; 32];
        let cred = sockd_proto::auth::key_credential(&key, &realm_of(&d));
        let entry = users_entry("erin", &cred);
        let users = d.path("state/users.toml");
        let text = std::fs::read_to_string(&users).unwrap() + &entry;
        std::fs::write(&users, text).unwrap();
        let key_path = d.path("erin.key");
        write_key(&key_path, key);
        d.signal(nix::sys::signal::Signal::SIGHUP);
        let erin = || d.key_ping("erin", &key_path).code() == 0;
        assert!(
            wait_until(Duration::from_secs(20), erin),
            "erin can log in after SIGHUP"
        );

        live.send(Message::Ping {
            payload: bytes::Bytes::from_static(b"alive"),
        })
        .await;
        assert_eq!(
            live.recv().await,
            Some(Message::Pong {
                payload: bytes::Bytes::from_static(b"alive")
            })
        );
    });
    // `sockctl reload` does the same and answers when done.
    let out = d.run(&["reload"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
}

#[test]
fn reload_with_a_broken_config_keeps_the_running_one() {
    let d = Daemon::start();
    std::fs::write(
        d.path("sockd.toml"),
        format!("{TEST_CONFIG}\n[server]\nbogus = 1\n"),
    )
    .unwrap();
    let out = d.run(&["reload"]);
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr_text().contains("reload failed"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(d.run(&["ping"]).code(), 0);
}

#[test]
fn sigterm_lets_in_flight_operations_finish_then_exits_zero() {
    let mut d = Daemon::start();
    let call = d
        .sockctl()
        .args(["call", "sleep", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let busy = || {
        let out = d.run(&["sessions", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout_text())
            .map(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|s| s["active_operations"] == 1))
            })
            .unwrap_or(false)
    };
    assert!(
        wait_until(Duration::from_secs(20), busy),
        "the call is running"
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let out = call.wait_with_output().unwrap();
    assert_eq!(out.code(), 0, "the in-flight call completed");
    assert!(out.stdout_text().contains("slept"));
    let status = d
        .wait_exit(Duration::from_secs(15))
        .expect("sockd exits within the grace period");
    assert!(status.success(), "exit status {status}");
    assert!(d.log_text().contains("sockd stopped"));
}

#[test]
fn control_socket_refuses_a_uid_that_is_not_admin() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run sockctl as another uid");
        return;
    }
    let public = tempfile::Builder::new()
        .prefix("sockd-ctl-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = public.path().join("control.sock");
    let config = TEST_CONFIG.replace(
        "socket = \"control.sock\"",
        &format!("socket = \"{}\"", socket.display()),
    );
    let d = Daemon::start_with(sockd_e2e::Options {
        config: Some(config),
        ..Default::default()
    });
    let as_nobody = || {
        let mut cmd = Command::new(bin("sockctl"));
        cmd.args(["--socket", socket.to_str().unwrap(), "status"])
            .env_remove("SOCKCTL_CONFIG");
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        cmd.output().unwrap()
    };
    // Mode 0660: the kernel refuses the connection.
    let out = as_nobody();
    assert_eq!(out.code(), 7, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("permission denied"),
        "{}",
        out.stderr_text()
    );
    // Even with the file mode opened up, the daemon's SO_PEERCRED check refuses.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert_eq!(out.code(), 7, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("uid 65534"),
        "{}",
        out.stderr_text()
    );
    assert!(d.log_text().contains("may not use the control socket"));
    // Root still gets in.
    assert_eq!(d.run(&["status"]).code(), 0);
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sockd.toml");
    std::fs::write(&path, "[tls]\ncertificate = \"c\"\nprivate_key = \"k\"\n[server]\nlisten = [\"127.0.0.1:1\"]\nmax_conections = 5\n").unwrap();
    let out = Command::new(bin("sockd"))
        .args(["--config", path.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.code(), 1);
    let err = out.stderr_text();
    assert!(
        err.contains(path.to_str().unwrap())
            && err.contains("line 6")
            && err.contains("max_conections"),
        "{err}"
    );
}

#[test]
fn dev_directory_is_reused_across_restarts() {
    let mut d = Daemon::start();
    let pin = std::fs::read_to_string(d.path("client.toml")).unwrap();
    let pin_line = pin
        .lines()
        .find(|l| l.starts_with("pin"))
        .unwrap()
        .to_string();
    d.restart_after_kill();
    let again = std::fs::read_to_string(d.path("client.toml")).unwrap();
    assert!(again.contains(&pin_line), "same certificate after restart");
    assert_eq!(d.run(&["ping"]).code(), 0);
}

/// A users file written before realms: key users salted per user, no
/// `realm`. The dev demo user is re-derived from DIR/demo.key; another key
/// user cannot log in (the same error as a wrong key), the log says what to
/// do, and doing it works. Password users are unaffected.
#[test]
fn key_users_from_before_realms_are_reported_and_replaced() {
    let mut d = Daemon::start();
    let Secret::Key(demo_key) = demo_secret(d.dir.path()) else {
        unreachable!("the demo user has a key")
    };
    let erin_key = [4u8; 32];
    let key_path = d.path("erin.key");
    write_key(&key_path, erin_key);
    let old = [
        (
            "demo",
            StoredCredential::new(&Secret::Key(demo_key), vec![1; 16], 0),
        ),
        (
            "erin",
            StoredCredential::new(&Secret::Key(erin_key), vec![2; 16], 0),
        ),
        (
            "fred",
            StoredCredential::new(&Secret::Password("pencil".into()), vec![3; 16], 10_000),
        ),
    ];
    let text: String = old.iter().map(|(n, c)| users_entry(n, c)).collect();
    std::fs::write(d.path("state/users.toml"), text).unwrap();
    d.restart_after_kill();

    assert_eq!(
        d.run(&["ping"]).code(),
        0,
        "the dev demo user is re-derived"
    );
    let erin = || d.key_ping("erin", &key_path);
    let refused = erin();
    assert_eq!(refused.code(), 5, "{}", refused.stderr_text());
    let wrong = d.key_ping("nobody", &key_path);
    assert_eq!(
        refused.stderr_text(),
        wrong.stderr_text(),
        "indistinguishable"
    );
    let log = d.log_text();
    assert!(
        log.contains("users.erin: this key credential was not derived with the file's realm")
            && log.contains("sockctl user add erin --replace --key-file NEW.key"),
        "{log}"
    );
    let fred = d.password_ping("fred", "pencil");
    assert_eq!(fred.code(), 0, "{}", fred.stderr_text());

    let new_key = d.path("erin-new.key");
    let added = d.run(&[
        "--key-file",
        new_key.to_str().unwrap(),
        "user",
        "add",
        "erin",
        "--replace",
    ]);
    assert_eq!(added.code(), 0, "{}", added.stderr_text());
    let ok = d.key_ping("erin", &new_key);
    assert_eq!(ok.code(), 0, "{}", ok.stderr_text());
    assert!(!realm_of(&d).is_empty());
}

/// etc/sockd.toml, with only paths and the port changed, is accepted by
/// the daemon and by every plugin it lists (refusing on any error).
#[test]
fn shipped_reference_config_loads_every_plugin() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("etc/sockd.toml")).unwrap();
    let config = text
        .replace("listen = [\"0.0.0.0:7443\"]", "listen = [\"127.0.0.1:0\"]")
        .replace("state_dir = \"/var/lib/sockd\"", "state_dir = \"state\"")
        .replace(
            "certificate = \"/etc/sockd/cert.pem\"",
            "certificate = \"cert.pem\"",
        )
        .replace(
            "private_key = \"/run/credentials/sockd.service/tls-key\"",
            "private_key = \"key.pem\"",
        )
        .replace(
            "socket = \"/run/sockd-control/control.sock\"",
            "socket = \"control.sock\"",
        )
        .replace("admin_group = \"sockctl\"", "admin_group = \"\"")
        .replace(
            "dir = \"/usr/lib/sockd/plugins\"",
            &format!("dir = \"{}\"", sockd_e2e::target_dir().display()),
        );
    assert!(config.contains("on_error = \"refuse\""));
    let d = sockd_e2e::Daemon::start_with(sockd_e2e::Options {
        config: Some(config),
        ..Default::default()
    });
    let out = d.run(&["plugins", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    let mut loaded: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "loaded")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    loaded.sort();
    assert_eq!(loaded, ["chat", "exec", "files"], "{list}");
}

/// The README's quickstart names a relative directory (`./sockd-dev`): the
/// client.toml it writes must work from anywhere.
#[test]
fn dev_mode_with_a_relative_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let mut daemon = Command::new(bin("sockd"))
        .current_dir(cwd.path())
        .args(["--dev", "./sockd-dev", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = cwd.path().join("sockd-dev/client.toml");
    let ready = wait_until(Duration::from_secs(30), || client.exists());
    let status = Command::new(bin("sockctl"))
        .env("SOCKCTL_CONFIG", &client)
        .arg("status")
        .output()
        .unwrap();
    let ping = Command::new(bin("sockctl"))
        .env("SOCKCTL_CONFIG", &client)
        .arg("ping")
        .output()
        .unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(ready, "sockd --dev ./sockd-dev did not start");
    assert_eq!(status.code(), 0, "{}", status.stderr_text());
    assert_eq!(ping.code(), 0, "{}", ping.stderr_text());
}

/// A session with no open channel and no frame for `idle_timeout_secs` is
/// closed with `idle_timeout`; one that keeps pinging stays open well past
/// that.
#[test]
fn idle_sessions_are_closed_and_activity_keeps_them_open() {
    let config = TEST_CONFIG.replace(
        "shutdown_grace_secs = 10",
        "shutdown_grace_secs = 10\nidle_timeout_secs = 1",
    );
    let d = Daemon::start_with(sockd_e2e::Options {
        config: Some(config),
        ..Default::default()
    });
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        let mut quiet = RawClient::connect_hello(d.addr).await;
        let mut busy = RawClient::connect_hello(d.addr).await;
        for c in [&mut quiet, &mut busy] {
            assert!(matches!(
                c.login("demo", &secret).await,
                Some(Message::AuthOk { .. })
            ));
        }
        let idle_out = async {
            match tokio::time::timeout(Duration::from_secs(20), quiet.recv()).await {
                Ok(Some(Message::Error { code, .. })) => assert_eq!(code, ErrorCode::IdleTimeout),
                other => panic!("expected ERROR idle_timeout, got {other:?}"),
            }
            assert!(quiet.recv().await.is_none(), "closed after the ERROR");
        };
        let keep_busy = async {
            // Three idle periods' worth of pings, one every 300 ms.
            for i in 0..10u8 {
                busy.send(Message::Ping {
                    payload: vec![i].into(),
                })
                .await;
                match busy.recv().await {
                    Some(Message::Pong { payload }) => assert_eq!(&payload[..], &[i]),
                    other => panic!("ping {i}: expected PONG, got {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        tokio::join!(idle_out, keep_busy);
    });
}
