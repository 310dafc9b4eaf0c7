//! The authentication exchange and protocol hygiene against the real
//! daemon, using the raw client for what sockctl will not do: replayed and
//! relayed proofs, silent clients, oversized frames and garbage. After each
//! bad client, a good one is still served.
//!
//! The server's first flight (its HELLO and the advance key challenge)
//! comes with the TLS handshake, before the client says anything; a key
//! login answers it in one flight (docs/PROTOCOL.md, "One-flight key login").

use bytes::Bytes;
use futures_util::SinkExt;
use sockd_e2e::raw::{RawClient, demo_secret};
use sockd_e2e::{Daemon, Options, OutputExt, TEST_CONFIG};
use sockd_proto::auth::{self, AuthTranscript, ClientProof, REALM_LEN, Secret};
use sockd_proto::message::PROTOCOL_VERSION;
use sockd_proto::{CredentialKind, ErrorCode, Message};
use std::io::{BufRead, Write};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A good login still works and answers a ping.
async fn assert_serving(d: &Daemon) {
    let mut c = RawClient::connect_hello(d.addr).await;
    match c.login("demo", &demo_secret(d.dir.path())).await {
        Some(Message::AuthOk { .. }) => {}
        other => panic!("good login refused: {other:?}"),
    }
    c.send(Message::Ping {
        payload: bytes::Bytes::from_static(b"still-up"),
    })
    .await;
    assert_eq!(
        c.recv().await,
        Some(Message::Pong {
            payload: bytes::Bytes::from_static(b"still-up")
        })
    );
}

/// Reads the advance key challenge that follows the server's HELLO:
/// (server_nonce, realm).
async fn advance_challenge(c: &mut RawClient) -> ([u8; 32], Bytes) {
    match c.recv().await {
        Some(Message::AuthChallenge {
            server_nonce,
            salt,
            iterations: 0,
        }) => (server_nonce, salt),
        other => panic!("expected the advance key challenge, got {other:?}"),
    }
}

/// Reads the server's first flight, sent whatever the client says.
async fn server_flight(c: &mut RawClient) -> ([u8; 32], Bytes) {
    match c.recv().await {
        Some(Message::Hello(h)) => assert_eq!(h.version, PROTOCOL_VERSION),
        other => panic!("expected the server's HELLO, got {other:?}"),
    }
    advance_challenge(c).await
}

/// The proof of a key login answering the advance challenge.
fn one_flight_proof(
    c: &RawClient,
    user: &str,
    key: &Secret,
    client_nonce: &[u8; 32],
    server_nonce: &[u8; 32],
    realm: &[u8],
) -> ClientProof {
    let t = AuthTranscript {
        user,
        kind: CredentialKind::Key,
        client_nonce,
        server_nonce,
        salt: realm,
        iterations: 0,
        channel_binding: &c.channel_binding,
    };
    ClientProof::new(&auth::salted_secret(key, realm, 0), &t)
}

/// HELLO, AUTH_START (key) and AUTH_PROOF in one write, as sockctl does.
async fn send_one_flight(c: &mut RawClient, user: &str, client_nonce: [u8; 32], proof: [u8; 32]) {
    let start = Message::AuthStart {
        user: user.into(),
        kind: CredentialKind::Key,
        client_nonce,
    };
    for m in [sockd_e2e::raw::hello(), start, Message::AuthProof { proof }] {
        c.framed.feed(m.encode()).await.expect("queue");
    }
    SinkExt::<sockd_proto::Frame>::flush(&mut c.framed)
        .await
        .expect("send");
}

/// One request line to the control socket; the response.
fn control(d: &Daemon, request: &str) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(d.path("control.sock")).expect("control");
    s.write_all(format!("{request}\n").as_bytes())
        .expect("write");
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .expect("read");
    serde_json::from_str(&line).expect("JSON response")
}

fn expect_auth_fail(m: Option<Message>) -> u32 {
    match m {
        Some(Message::AuthFail {
            code: ErrorCode::AuthFailed,
            retry_after_ms,
            message,
        }) => {
            assert!(message.contains("authentication failed"), "{message}");
            retry_after_ms
        }
        other => panic!("expected AUTH_FAIL, got {other:?}"),
    }
}

#[test]
fn key_login_succeeds_and_server_proves_itself() {
    let d = Daemon::start();
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        let mut c = RawClient::connect_hello(d.addr).await;
        let ch = c.start_auth("demo", CredentialKind::Key).await;
        assert_eq!(ch.iterations, 0);
        let salted = sockd_proto::auth::salted_secret(&secret, &ch.salt, 0);
        let t = sockd_proto::auth::AuthTranscript {
            user: "demo",
            kind: CredentialKind::Key,
            client_nonce: &ch.client_nonce,
            server_nonce: &ch.server_nonce,
            salt: &ch.salt,
            iterations: 0,
            channel_binding: &c.channel_binding,
        };
        let proof = sockd_proto::auth::ClientProof::new(&salted, &t);
        c.send(Message::AuthProof { proof: proof.proof }).await;
        match c.recv().await {
            Some(Message::AuthOk {
                server_signature, ..
            }) => assert!(proof.verify_server(&server_signature)),
            other => panic!("expected AUTH_OK, got {other:?}"),
        }
    });
}

#[test]
fn wrong_secret_and_unknown_user_fail_the_same_way() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = RawClient::connect_hello(d.addr).await;
        expect_auth_fail(c.login("demo", &Secret::Key([7; 32])).await);
        let mut c = RawClient::connect_hello(d.addr).await;
        let wrong = c.start_auth("demo", CredentialKind::Key).await;
        let mut c2 = RawClient::connect_hello(d.addr).await;
        let unknown = c2.start_auth("nobody-here", CredentialKind::Key).await;
        assert_eq!(wrong.salt.len(), unknown.salt.len(), "fake salt looks real");
        assert_eq!(wrong.iterations, unknown.iterations);
        let proof = unknown.proof(&Secret::Key([7; 32]), &c2.channel_binding);
        c2.send(Message::AuthProof { proof }).await;
        expect_auth_fail(c2.recv().await);
        // The unknown user's parameters are stable, like a real user's.
        let mut c3 = RawClient::connect_hello(d.addr).await;
        assert_eq!(
            c3.start_auth("nobody-here", CredentialKind::Key).await.salt,
            unknown.salt
        );
        // Password attempts for unknown users get sane fake iterations.
        let mut c4 = RawClient::connect_hello(d.addr).await;
        advance_challenge(&mut c4).await;
        let pw = c4.start_auth("nobody-here", CredentialKind::Password).await;
        assert!(pw.iterations >= sockd_proto::auth::MIN_ITERATIONS);
        assert_serving(&d).await;
    });
}

#[test]
fn replayed_proof_fails() {
    let d = Daemon::start();
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        let mut first = RawClient::connect_hello(d.addr).await;
        let ch = first.start_auth("demo", CredentialKind::Key).await;
        let proof = ch.proof(&secret, &first.channel_binding);
        first.send(Message::AuthProof { proof }).await;
        assert!(matches!(first.recv().await, Some(Message::AuthOk { .. })));
        // The same proof on a new attempt (fresh challenge) is refused, on
        // the same connection or another.
        let mut second = RawClient::connect_hello(d.addr).await;
        second.start_auth("demo", CredentialKind::Key).await;
        second.send(Message::AuthProof { proof }).await;
        expect_auth_fail(second.recv().await);
        assert_serving(&d).await;
    });
}

#[test]
fn proof_relayed_to_another_tls_connection_fails() {
    let d = Daemon::start();
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        // A man in the middle holds TLS connection A with the victim and
        // B with the server; he relays B's challenge to the victim, who
        // answers bound to A. The server sees B's binding and refuses.
        let victim_side = RawClient::connect(d.addr).await;
        let mut attacker = RawClient::connect_hello(d.addr).await;
        let ch = attacker.start_auth("demo", CredentialKind::Key).await;
        let relayed = ch.proof(&secret, &victim_side.channel_binding);
        attacker.send(Message::AuthProof { proof: relayed }).await;
        expect_auth_fail(attacker.recv().await);
        assert_serving(&d).await;
    });
}

#[test]
fn failures_are_penalised_with_growing_delays() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = RawClient::connect_hello(d.addr).await;
        let first = expect_auth_fail(c.login("demo", &Secret::Key([1; 32])).await);
        let second = expect_auth_fail(c.login("demo", &Secret::Key([1; 32])).await);
        assert_eq!(
            (first, second),
            (10, 20),
            "penalty doubles from penalty_base_ms"
        );
        let third = expect_auth_fail(c.login("demo", &Secret::Key([1; 32])).await);
        assert_eq!(third, 40, "capped at penalty_max_ms");
        // max_attempts (3) reached: the server ends the connection.
        match c.recv().await {
            Some(Message::Error {
                code: ErrorCode::AuthFailed,
                ..
            })
            | None => {}
            other => panic!("expected the connection to end, got {other:?}"),
        }
        assert_serving(&d).await;
    });
}

#[test]
fn client_that_never_authenticates_is_dropped() {
    let config = TEST_CONFIG.replace("timeout_secs = 10", "timeout_secs = 1");
    let d = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    rt().block_on(async {
        let mut idle = RawClient::connect_hello(d.addr).await;
        advance_challenge(&mut idle).await;
        let got = tokio::time::timeout(Duration::from_secs(20), idle.recv())
            .await
            .expect("dropped in time");
        assert!(
            matches!(
                got,
                Some(Message::Error {
                    code: ErrorCode::AuthTimeout,
                    ..
                })
            ),
            "expected AUTH_TIMEOUT, got {got:?}"
        );
        assert_eq!(idle.recv().await, None, "connection closed after the error");
        assert_serving(&d).await;
    });
}

#[test]
fn nothing_but_auth_before_login() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = RawClient::connect_hello(d.addr).await;
        advance_challenge(&mut c).await;
        c.send(Message::Open {
            channel: 1,
            command: "echo".into(),
            args: vec![],
        })
        .await;
        assert!(matches!(
            c.recv().await,
            Some(Message::Error {
                code: ErrorCode::NotAuthenticated,
                ..
            })
        ));
        let mut c = RawClient::connect_hello(d.addr).await;
        advance_challenge(&mut c).await;
        c.send(Message::Ping {
            payload: bytes::Bytes::new(),
        })
        .await;
        assert!(matches!(
            c.recv().await,
            Some(Message::Error {
                code: ErrorCode::NotAuthenticated,
                ..
            })
        ));
        assert_serving(&d).await;
    });
}

#[test]
fn oversized_frame_is_refused_without_allocation() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = RawClient::connect_hello(d.addr).await;
        advance_challenge(&mut c).await;
        // Announce a 2 GiB frame and send nothing more.
        c.send_raw(&[0x7f, 0xff, 0xff, 0xff]).await;
        match c.recv().await {
            Some(Message::Error {
                code: ErrorCode::FrameTooLarge,
                message,
            }) => {
                assert!(message.contains("2147483647"), "{message}")
            }
            other => panic!("expected FRAME_TOO_LARGE, got {other:?}"),
        }
        assert_eq!(c.recv().await, None);
        // Also after login.
        let mut c = RawClient::connect_hello(d.addr).await;
        assert!(matches!(
            c.login("demo", &demo_secret(d.dir.path())).await,
            Some(Message::AuthOk { .. })
        ));
        c.send_raw(&[0xff, 0xff, 0xff, 0xff]).await;
        assert!(matches!(
            c.recv().await,
            Some(Message::Error {
                code: ErrorCode::FrameTooLarge,
                ..
            })
        ));
        assert_serving(&d).await;
    });
}

#[test]
fn garbage_instead_of_hello_gets_a_clear_error() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut c = RawClient::connect(d.addr).await;
        server_flight(&mut c).await;
        c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        match c.recv().await {
            Some(Message::Error {
                code: ErrorCode::FrameTooLarge | ErrorCode::Protocol,
                message,
            }) => {
                assert!(!message.is_empty())
            }
            other => panic!("expected an ERROR, got {other:?}"),
        }
        let mut c = RawClient::connect(d.addr).await;
        server_flight(&mut c).await;
        c.send_raw(&[0, 0, 0, 5, 0, 0, 0, 0, 0x55]).await;
        assert!(matches!(
            c.recv().await,
            Some(Message::Error {
                code: ErrorCode::Protocol,
                ..
            })
        ));
        let mut c = RawClient::connect(d.addr).await;
        server_flight(&mut c).await;
        c.send(Message::Hello(sockd_proto::Hello {
            version: 99,
            max_frame: 1 << 20,
            window: 1 << 20,
            software: "future".into(),
            identity: String::new(),
            capabilities: vec![],
        }))
        .await;
        assert!(matches!(
            c.recv().await,
            Some(Message::Error {
                code: ErrorCode::VersionMismatch,
                ..
            })
        ));
        // Plain TCP garbage never even completes TLS.
        let mut tcp = tokio::net::TcpStream::connect(d.addr).await.expect("tcp");
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"\x00garbage garbage garbage\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
        )
        .await;
        assert!(
            matches!(n, Ok(Ok(_)) | Ok(Err(_))),
            "server closes a non-TLS peer"
        );
        assert_serving(&d).await;
    });
}

#[test]
fn many_bad_clients_at_once_do_not_stop_good_ones() {
    let d = Daemon::start();
    rt().block_on(async {
        let mut bad = Vec::new();
        for _ in 0..20 {
            // Connected, TLS done, never says anything.
            bad.push(RawClient::connect(d.addr).await);
        }
        assert_serving(&d).await;
        drop(bad);
    });
}

#[test]
fn key_login_takes_one_flight() {
    let d = Daemon::start();
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        let mut c = RawClient::connect(d.addr).await;
        // Before the client has said anything: HELLO and a key challenge
        // naming the realm of the users file.
        let (server_nonce, realm) = server_flight(&mut c).await;
        assert_eq!(realm.len(), REALM_LEN);
        let users = std::fs::read_to_string(d.path("state/users.toml")).unwrap();
        let realm_line = format!("realm = \"{}\"", sockd_proto::hex::encode(&realm));
        assert!(users.contains(&realm_line), "{users}");

        let client_nonce = [0x42; 32];
        let proof = one_flight_proof(&c, "demo", &secret, &client_nonce, &server_nonce, &realm);
        send_one_flight(&mut c, "demo", client_nonce, proof.proof).await;
        // The answer to the proof comes next: no challenge of its own.
        match c.recv().await {
            Some(Message::AuthOk {
                server_signature, ..
            }) => assert!(proof.verify_server(&server_signature)),
            other => panic!("expected AUTH_OK, got {other:?}"),
        }
        c.send(Message::Ping {
            payload: Bytes::from_static(b"one"),
        })
        .await;
        assert_eq!(
            c.recv().await,
            Some(Message::Pong {
                payload: Bytes::from_static(b"one")
            })
        );
    });
    // sockctl logs in the same way.
    let out = d.run(&["ping"]);
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    let log = d.log_text();
    assert!(
        log.matches("key attempt answers the advance challenge (one flight)")
            .count()
            >= 2,
        "{log}"
    );
}

#[test]
fn a_key_proof_for_another_realm_fails() {
    let d = Daemon::start();
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        let mut c = RawClient::connect(d.addr).await;
        let (server_nonce, realm) = server_flight(&mut c).await;
        // The key is right, but derived for another server's realm (as a
        // malicious server would replay a ClientKey learned elsewhere).
        let mut other = realm.to_vec();
        other[0] ^= 1;
        let client_nonce = [0x43; 32];
        let t = AuthTranscript {
            user: "demo",
            kind: CredentialKind::Key,
            client_nonce: &client_nonce,
            server_nonce: &server_nonce,
            salt: &realm,
            iterations: 0,
            channel_binding: &c.channel_binding,
        };
        let proof = ClientProof::new(&auth::salted_secret(&secret, &other, 0), &t);
        send_one_flight(&mut c, "demo", client_nonce, proof.proof).await;
        expect_auth_fail(c.recv().await);
        assert_serving(&d).await;
    });
    // The daemon refuses to store a key credential salted otherwise.
    let cred = auth::key_credential(&[5; 32], &[6; REALM_LEN]);
    let record = sockd_proto::control::CredentialRecord::from(&cred);
    let request = serde_json::json!({"cmd": "user_add", "name": "eve", "credential": record});
    let reply = control(&d, &request.to_string());
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("realm"),
        "{reply}"
    );
}

#[test]
fn password_login_gets_its_own_challenge() {
    let d = Daemon::start();
    let out = d.add_password_user("alice", "pencil");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    rt().block_on(async {
        let secret = Secret::Password("pencil".into());
        let mut c = RawClient::connect_hello(d.addr).await;
        let (advance, _) = advance_challenge(&mut c).await;
        let ch = c.start_auth("alice", CredentialKind::Password).await;
        assert_eq!(ch.iterations, 10_000);
        assert_ne!(ch.server_nonce, advance, "a fresh nonce for the attempt");
        let proof = ch.proof(&secret, &c.channel_binding);
        c.send(Message::AuthProof { proof }).await;
        assert!(matches!(c.recv().await, Some(Message::AuthOk { .. })));
    });
    let ok = d.password_ping("alice", "pencil");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn a_replayed_one_flight_proof_fails_on_a_new_connection() {
    let d = Daemon::start();
    rt().block_on(async {
        let secret = demo_secret(d.dir.path());
        let mut first = RawClient::connect(d.addr).await;
        let (server_nonce, realm) = server_flight(&mut first).await;
        let client_nonce = [0x44; 32];
        let proof = one_flight_proof(
            &first,
            "demo",
            &secret,
            &client_nonce,
            &server_nonce,
            &realm,
        )
        .proof;
        send_one_flight(&mut first, "demo", client_nonce, proof).await;
        assert!(matches!(first.recv().await, Some(Message::AuthOk { .. })));
        // The same flight, word for word, on another connection: another
        // server nonce and another channel binding.
        let mut second = RawClient::connect(d.addr).await;
        let (second_nonce, _) = server_flight(&mut second).await;
        assert_ne!(second_nonce, server_nonce);
        send_one_flight(&mut second, "demo", client_nonce, proof).await;
        expect_auth_fail(second.recv().await);
        // A second attempt on a connection gets a challenge of its own.
        let ch = second.start_auth("demo", CredentialKind::Key).await;
        assert_ne!(ch.server_nonce, second_nonce);
        assert_eq!(ch.salt, realm);
        let proof = ch.proof(&secret, &second.channel_binding);
        second.send(Message::AuthProof { proof }).await;
        assert!(matches!(second.recv().await, Some(Message::AuthOk { .. })));
    });
}

#[test]
fn unknown_users_and_wrong_kinds_get_the_same_key_challenge() {
    let d = Daemon::start();
    let out = d.add_password_user("alice", "pencil");
    assert_eq!(out.code(), 0, "{}", out.stderr_text());
    rt().block_on(async {
        let mut answers = Vec::new();
        for user in ["demo", "nobody-here", "alice"] {
            let mut c = RawClient::connect(d.addr).await;
            let (server_nonce, realm) = server_flight(&mut c).await;
            let client_nonce = [0x45; 32];
            let proof = one_flight_proof(
                &c,
                user,
                &Secret::Key([7; 32]),
                &client_nonce,
                &server_nonce,
                &realm,
            );
            send_one_flight(&mut c, user, client_nonce, proof.proof).await;
            answers.push(c.recv().await);
            // Later attempts: the realm for every key challenge.
            let ch = c.start_auth(user, CredentialKind::Key).await;
            assert_eq!((ch.salt, ch.iterations), (realm, 0));
        }
        for answer in answers {
            expect_auth_fail(answer);
        }
    });
}
