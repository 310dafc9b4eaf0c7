//! The authentication exchange: SCRAM-SHA-256 key derivation (RFC 5802 /
//! RFC 7677) bound to the TLS channel with the RFC 9266 `tls-exporter`.
//!
//! The server stores only salt, iteration count, StoredKey and ServerKey:
//! none of them lets anyone compute a client proof. The proof signs an
//! "auth message" that includes both nonces and the channel binding, so it
//! is useless on any other attempt or any other TLS connection.
//!
//! Key credentials are salted with the server's *realm* (one random value
//! per users file) rather than a per-user salt, so that the server can send
//! a key challenge before it knows who is logging in and a key login takes
//! one flight from the client (docs/PROTOCOL.md, "One-flight key login").

use crate::message::{CredentialKind, NONCE_LEN};
use ring::{digest, hmac, pbkdf2};
use std::fmt;
use std::num::NonZeroU32;

/// RFC 9266 exporter label and length.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
pub const CHANNEL_BINDING_LEN: usize = 32;
/// Domain separator at the start of every auth message.
pub const AUTH_MESSAGE_PREFIX: &[u8] = b"sockd-auth-v1";
/// PBKDF2 iteration count for new password users (OWASP 2023 figure).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// A client refuses a password challenge below this (a cheap proof to crack)...
pub const MIN_ITERATIONS: u32 = 10_000;
/// ...or above this (a fake server burning the client's CPU).
pub const MAX_ITERATIONS: u32 = 5_000_000;
/// Length of salts the server creates.
pub const SALT_LEN: usize = 16;
/// Length of a server's realm: the salt of every key credential it stores.
pub const REALM_LEN: usize = 16;
/// Salts longer than this are refused by the client.
pub const MAX_SALT_LEN: usize = 64;
/// Length of a key credential.
pub const KEY_LEN: usize = 32;

/// A client's secret.
#[derive(Clone)]
pub enum Secret {
    Password(String),
    Key([u8; KEY_LEN]),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Password(_) => "Secret::Password(..)",
            Secret::Key(_) => "Secret::Key(..)",
        })
    }
}

impl Secret {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Secret::Password(_) => CredentialKind::Password,
            Secret::Key(_) => CredentialKind::Key,
        }
    }
}

/// What the server stores for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub kind: CredentialKind,
    pub salt: Vec<u8>,
    /// PBKDF2 iterations; 0 for keys, which need no stretching.
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

/// Derives SaltedPassword: PBKDF2-HMAC-SHA256 for passwords, one
/// HMAC-SHA256(key, salt) for 256-bit keys.
pub fn salted_secret(secret: &Secret, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    match secret {
        Secret::Password(p) => {
            let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                iterations,
                salt,
                p.as_bytes(),
                &mut out,
            );
        }
        Secret::Key(k) => {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), salt);
            out.copy_from_slice(tag.as_ref());
        }
    }
    out
}

fn hmac32(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The client and server keys derived from SaltedPassword.
pub struct DerivedKeys {
    pub client_key: [u8; 32],
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

pub fn derive_keys(salted: &[u8; 32]) -> DerivedKeys {
    let client_key = hmac32(salted, b"Client Key");
    DerivedKeys {
        stored_key: sha256(&client_key),
        server_key: hmac32(salted, b"Server Key"),
        client_key,
    }
}

impl StoredCredential {
    /// Builds the record the server stores for `secret`.
    pub fn new(secret: &Secret, salt: Vec<u8>, iterations: u32) -> Self {
        let iterations = match secret {
            Secret::Password(_) => iterations,
            Secret::Key(_) => 0,
        };
        let keys = derive_keys(&salted_secret(secret, &salt, iterations));
        Self {
            kind: secret.kind(),
            salt,
            iterations,
            stored_key: keys.stored_key,
            server_key: keys.server_key,
        }
    }
}

/// What the server stores for a key: salted with the server's realm, so
/// that ClientKey differs between servers (a server that learns ClientKey
/// from a proof cannot use it at another) while the server can challenge a
/// key client before it names its user.
pub fn key_credential(key: &[u8; KEY_LEN], realm: &[u8]) -> StoredCredential {
    StoredCredential::new(&Secret::Key(*key), realm.to_vec(), 0)
}

/// The inputs every proof and signature covers.
pub struct AuthTranscript<'a> {
    pub user: &'a str,
    pub kind: CredentialKind,
    pub client_nonce: &'a [u8; NONCE_LEN],
    pub server_nonce: &'a [u8; NONCE_LEN],
    pub salt: &'a [u8],
    pub iterations: u32,
    pub channel_binding: &'a [u8; CHANNEL_BINDING_LEN],
}

impl AuthTranscript<'_> {
    /// The auth message: prefix, then each field in wire encoding.
    pub fn message(&self) -> Vec<u8> {
        let mut w = crate::wire::Writer::new();
        w.raw(AUTH_MESSAGE_PREFIX)
            .str(self.user)
            .u8(self.kind as u8)
            .raw(self.client_nonce)
            .raw(self.server_nonce)
            .bytes(self.salt)
            .u32(self.iterations)
            .raw(self.channel_binding);
        w.finish().to_vec()
    }
}

/// Client side: the proof to send and the signature to expect back.
pub struct ClientProof {
    pub proof: [u8; 32],
    server_key: [u8; 32],
    auth_message: Vec<u8>,
}

impl ClientProof {
    pub fn new(salted: &[u8; 32], transcript: &AuthTranscript<'_>) -> Self {
        let keys = derive_keys(salted);
        let auth_message = transcript.message();
        let signature = hmac32(&keys.stored_key, &auth_message);
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        Self {
            proof,
            server_key: keys.server_key,
            auth_message,
        }
    }

    /// True if the server proved it holds ServerKey (constant time).
    pub fn verify_server(&self, server_signature: &[u8]) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.server_key);
        hmac::verify(&key, &self.auth_message, server_signature).is_ok()
    }
}

/// Server side: checks a proof; on success returns the server signature.
pub fn verify_client_proof(
    stored: &StoredCredential,
    transcript: &AuthTranscript<'_>,
    proof: &[u8; 32],
) -> Option<[u8; 32]> {
    let auth_message = transcript.message();
    let signature = hmac32(&stored.stored_key, &auth_message);
    let mut client_key = *proof;
    for (c, s) in client_key.iter_mut().zip(signature) {
        *c ^= s;
    }
    if constant_time_eq(&sha256(&client_key), &stored.stored_key) {
        Some(hmac32(&stored.server_key, &auth_message))
    } else {
        None
    }
}

/// Compares without an early exit, so timing does not reveal where two
/// secrets first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Login parameters for users that do not exist, derived from a server
/// secret so that they are stable across attempts and restarts, like a
/// real user's. The HMAC key is prepared once, so a derivation is two short
/// HMACs; the server derives them on every attempt, for known users too,
/// so that both paths do the same work (docs/SECURITY.md).
pub struct FakeCredentials {
    key: hmac::Key,
}

impl FakeCredentials {
    pub fn new(server_secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, server_secret),
        }
    }

    /// The parameters an unknown `user` logs in against.
    pub fn derive(&self, user: &str, kind: CredentialKind, iterations: u32) -> StoredCredential {
        let salt = self.mac(b"salt\0", user)[..SALT_LEN].to_vec();
        let stored_key = self.mac(b"keys\0", user);
        let iterations = match kind {
            CredentialKind::Password => iterations,
            CredentialKind::Key => 0,
        };
        StoredCredential {
            kind,
            salt,
            iterations,
            stored_key,
            // No proof verifies against a StoredKey nobody derived from a
            // secret, so no server signature is ever made with this.
            server_key: stored_key,
        }
    }

    fn mac(&self, label: &[u8], user: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(label);
        context.update(user.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }
}

/// Why a challenge was refused by the client before any proof was computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeError {
    IterationsOutOfRange { found: u32 },
    KeyWithIterations { found: u32 },
    BadSalt { len: usize },
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IterationsOutOfRange { found } => write!(
                f,
                "server asked for {found} PBKDF2 iterations; sockctl accepts {MIN_ITERATIONS} to {MAX_ITERATIONS}"
            ),
            Self::KeyWithIterations { found } => {
                write!(
                    f,
                    "server asked for {found} iterations for a key credential (expected 0)"
                )
            }
            Self::BadSalt { len } => write!(
                f,
                "server sent a {len}-byte salt (expected 8 to {MAX_SALT_LEN})"
            ),
        }
    }
}

/// The client's sanity check of the server's challenge.
pub fn check_challenge(
    kind: CredentialKind,
    salt: &[u8],
    iterations: u32,
) -> Result<(), ChallengeError> {
    if !(8..=MAX_SALT_LEN).contains(&salt.len()) {
        return Err(ChallengeError::BadSalt { len: salt.len() });
    }
    match kind {
        CredentialKind::Password if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) => {
            Err(ChallengeError::IterationsOutOfRange { found: iterations })
        }
        CredentialKind::Key if iterations != 0 => {
            Err(ChallengeError::KeyWithIterations { found: iterations })
        }
        _ => Ok(()),
    }
}

/// Key files hold 64 lowercase hex digits and a newline.
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    let mut s = crate::hex::encode(key);
    s.push('\n');
    s
}

/// Parses a key file's contents.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let text = text.trim();
    let bytes = crate::hex::decode(text).ok_or("key file is not hexadecimal")?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "key file holds {} bytes; a key is {KEY_LEN} bytes (64 hex digits)",
            b.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    fn transcript<'a>(
        user: &'a str,
        kind: CredentialKind,
        cn: &'a [u8; 32],
        sn: &'a [u8; 32],
        salt: &'a [u8],
        it: u32,
        cb: &'a [u8; 32],
    ) -> AuthTranscript<'a> {
        AuthTranscript {
            user,
            kind,
            client_nonce: cn,
            server_nonce: sn,
            salt,
            iterations: it,
            channel_binding: cb,
        }
    }

    #[test]
    fn good_proof_verifies_and_server_proves_itself() {
        let secret = Secret::Password("correct horse".into());
        let stored = StoredCredential::new(&secret, b"0123456789abcdef".to_vec(), 10_000);
        let (cn, sn, cb) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let t = transcript(
            "alice",
            CredentialKind::Password,
            &cn,
            &sn,
            &stored.salt,
            stored.iterations,
            &cb,
        );
        let client = ClientProof::new(&salted_secret(&secret, &stored.salt, stored.iterations), &t);
        let sig = verify_client_proof(&stored, &t, &client.proof).expect("proof accepted");
        assert!(client.verify_server(&sig));
        assert!(!client.verify_server(&[0u8; 32]));
    }

    #[test]
    fn proof_is_bound_to_nonce_and_channel() {
        let secret = Secret::Key([9; 32]);
        let stored = StoredCredential::new(&secret, vec![5; 16], 0);
        let (cn, sn, cb) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let t = transcript("bob", CredentialKind::Key, &cn, &sn, &stored.salt, 0, &cb);
        let proof = ClientProof::new(&salted_secret(&secret, &stored.salt, 0), &t).proof;
        let other_nonce = [4u8; 32];
        let replay = transcript(
            "bob",
            CredentialKind::Key,
            &cn,
            &other_nonce,
            &stored.salt,
            0,
            &cb,
        );
        assert!(verify_client_proof(&stored, &replay, &proof).is_none());
        let other_tls = [6u8; 32];
        let relayed = transcript(
            "bob",
            CredentialKind::Key,
            &cn,
            &sn,
            &stored.salt,
            0,
            &other_tls,
        );
        assert!(verify_client_proof(&stored, &relayed, &proof).is_none());
        let wrong = Secret::Key([8; 32]);
        let bad = ClientProof::new(&salted_secret(&wrong, &stored.salt, 0), &t).proof;
        assert!(verify_client_proof(&stored, &t, &bad).is_none());
    }

    #[test]
    fn fake_credentials_are_stable_and_user_specific() {
        let fakes = FakeCredentials::new(b"secret");
        let a = fakes.derive("mallory", CredentialKind::Password, DEFAULT_ITERATIONS);
        let b = FakeCredentials::new(b"secret").derive(
            "mallory",
            CredentialKind::Password,
            DEFAULT_ITERATIONS,
        );
        let c = fakes.derive("trudy", CredentialKind::Password, DEFAULT_ITERATIONS);
        assert_eq!(a, b, "the same after a restart");
        assert_ne!(a.salt, c.salt);
        assert_ne!(a.stored_key, c.stored_key);
        assert_eq!(a.salt.len(), SALT_LEN);
        let other_secret = FakeCredentials::new(b"other").derive(
            "mallory",
            CredentialKind::Password,
            DEFAULT_ITERATIONS,
        );
        assert_ne!(a.salt, other_secret.salt);
        let key = fakes.derive("mallory", CredentialKind::Key, DEFAULT_ITERATIONS);
        assert_eq!(key.iterations, 0);
        assert!(check_challenge(CredentialKind::Password, &a.salt, a.iterations).is_ok());
    }

    #[test]
    fn challenge_bounds() {
        let salt = [0u8; 16];
        assert!(check_challenge(CredentialKind::Password, &salt, 1).is_err());
        assert!(check_challenge(CredentialKind::Password, &salt, MAX_ITERATIONS + 1).is_err());
        assert!(check_challenge(CredentialKind::Password, &salt, DEFAULT_ITERATIONS).is_ok());
        assert!(check_challenge(CredentialKind::Key, &salt, 0).is_ok());
        assert!(check_challenge(CredentialKind::Key, &salt, 5).is_err());
        assert!(check_challenge(CredentialKind::Key, &[0u8; 4], 0).is_err());
    }

    #[test]
    fn key_file_round_trip() {
        let key = [0xabu8; 32];
        let text = encode_key(&key);
        assert_eq!(text.len(), 65);
        assert_eq!(decode_key(&text).unwrap(), key);
        assert!(decode_key("abcd").unwrap_err().contains("2 bytes"));
        assert!(decode_key("zz").is_err());
    }

    #[test]
    fn a_key_proof_for_another_realm_fails() {
        let key = [7u8; KEY_LEN];
        let here = key_credential(&key, &[1; REALM_LEN]);
        let elsewhere = key_credential(&key, &[2; REALM_LEN]);
        assert_ne!(here.stored_key, elsewhere.stored_key);
        let (cn, sn, cb) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        // The client answers a challenge carrying the other server's realm.
        let t_other = transcript("k", CredentialKind::Key, &cn, &sn, &elsewhere.salt, 0, &cb);
        let proof = ClientProof::new(
            &salted_secret(&Secret::Key(key), &elsewhere.salt, 0),
            &t_other,
        )
        .proof;
        assert!(verify_client_proof(&elsewhere, &t_other, &proof).is_some());
        let t_here = transcript("k", CredentialKind::Key, &cn, &sn, &here.salt, 0, &cb);
        assert!(verify_client_proof(&here, &t_here, &proof).is_none());
        assert!(verify_client_proof(&here, &t_other, &proof).is_none());
    }

    /// The worked example in docs/PROTOCOL.md: if this changes, so must the docs.
    #[test]
    fn protocol_md_test_vector() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let secret = Secret::Key(key);
        let salt = b"sockd-test-salt!".to_vec();
        let stored = StoredCredential::new(&secret, salt.clone(), 0);
        let cn = [0x11u8; 32];
        let sn = [0x22u8; 32];
        let cb = [0x33u8; 32];
        let t = transcript("demo", CredentialKind::Key, &cn, &sn, &salt, 0, &cb);
        let salted = salted_secret(&secret, &salt, 0);
        let client = ClientProof::new(&salted, &t);
        let sig = verify_client_proof(&stored, &t, &client.proof).unwrap();
        let vectors = [
            ("salted", hex::encode(&salted)),
            ("stored_key", hex::encode(&stored.stored_key)),
            ("server_key", hex::encode(&stored.server_key)),
            ("proof", hex::encode(&client.proof)),
            ("server_signature", hex::encode(&sig)),
        ];
        let expected = include_str!("../testdata/auth-vector.txt");
        let got: String = vectors
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect();
        assert_eq!(
            got, expected,
            "update docs/PROTOCOL.md and testdata/auth-vector.txt together"
        );

        let pw = Secret::Password("pencil".into());
        let salted_pw = salted_secret(&pw, &salt, 10_000);
        assert_eq!(hex::encode(&salted_pw).len(), 64);
    }
}
