//! Fuzz target `auth`: the authentication helpers that read the peer's
//! bytes (proto/src/auth.rs), on both sides of the exchange.
//!
//! Input: byte 0 picks the case (modulo 3), the rest is:
//! - 0: a key file's text (`decode_key`, `hex::decode`);
//! - 1: what sockctl reads: credential kind (u8, 1 or 2), the server
//!   signature of AUTH_OK (32 bytes), then an AUTH_CHALLENGE payload;
//!   `check_challenge`, then for keys the proof and `verify_server`;
//! - 2: what sockd reads: an AUTH_PROOF (32 bytes), then an AUTH_START
//!   payload; the user-name rule, the unknown-user credential and
//!   `verify_client_proof`.
//!
//! Checks: no panic; a decoded key re-encodes to the same key; hex
//! decoding agrees with encoding; no proof or signature made up by the
//! fuzzer is accepted.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sockd_proto::auth::{self, AuthTranscript, ClientProof, Secret};
use sockd_proto::{CredentialKind, Frame, Kind, Message, hex};

const CHANNEL_BINDING: [u8; 32] = [0x33; 32];
const CLIENT_KEY: [u8; 32] = [0x42; 32];

fn control_frame(kind: Kind, payload: &[u8]) -> Frame {
    Frame {
        channel: 0,
        kind,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn key_file(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(key) = auth::decode_key(text) {
        assert_eq!(auth::decode_key(&auth::encode_key(&key)), Ok(key));
    }
    if let Some(decoded) = hex::decode(text) {
        assert!(hex::encode(&decoded).eq_ignore_ascii_case(text));
    }
}

fn client_reads_challenge(bytes: &[u8]) {
    let Some((&raw_kind, rest)) = bytes.split_first() else {
        return;
    };
    let Some((signature, payload)) = rest.split_first_chunk::<32>() else {
        return;
    };
    let Some(kind) = CredentialKind::from_u8(raw_kind) else {
        return;
    };
    let Ok(Message::AuthChallenge {
        server_nonce,
        salt,
        iterations,
    }) = Message::decode(control_frame(Kind::AuthChallenge, payload))
    else {
        return;
    };
    if let Err(e) = auth::check_challenge(kind, &salt, iterations) {
        let _ = e.to_string();
        return;
    }
    // A password would cost >= 10 000 PBKDF2 rounds per input: keys only.
    if kind == CredentialKind::Key {
        let secret = Secret::Key(CLIENT_KEY);
        let transcript = AuthTranscript {
            user: "demo",
            kind,
            client_nonce: &[0x11; 32],
            server_nonce: &server_nonce,
            salt: &salt,
            iterations,
            channel_binding: &CHANNEL_BINDING,
        };
        let client = ClientProof::new(&auth::salted_secret(&secret, &salt, 0), &transcript);
        assert!(!client.verify_server(signature), "forged server signature");
    }
}

fn server_reads_start(bytes: &[u8]) {
    let Some((proof, payload)) = bytes.split_first_chunk::<32>() else {
        return;
    };
    let Ok(Message::AuthStart {
        user,
        kind,
        client_nonce,
    }) = Message::decode(control_frame(Kind::AuthStart, payload))
    else {
        return;
    };
    let _ = sockd::users::valid_user_name(&user);
    let stored = auth::FakeCredentials::new(b"server secret").derive(&user, kind, auth::MIN_ITERATIONS);
    assert_eq!(
        auth::check_challenge(kind, &stored.salt, stored.iterations),
        Ok(()),
        "sockctl must accept the challenge sent for an unknown user"
    );
    let transcript = AuthTranscript {
        user: &user,
        kind,
        client_nonce: &client_nonce,
        server_nonce: &[0x22; 32],
        salt: &stored.salt,
        iterations: stored.iterations,
        channel_binding: &CHANNEL_BINDING,
    };
    assert!(
        auth::verify_client_proof(&stored, &transcript, proof).is_none(),
        "forged client proof accepted"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = sockd_fuzz::selector(data) else {
        return;
    };
    match selector % 3 {
        0 => key_file(rest),
        1 => client_reads_challenge(rest),
        _ => server_reads_start(rest),
    }
});
