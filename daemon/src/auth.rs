//! The server side of authentication (docs/PROTOCOL.md, "Authentication").
//!
//! Every attempt gets a fresh 32-byte challenge from `SystemRandom`. An
//! unknown user, or a known one asking with the wrong kind of credential,
//! runs the same exchange against stable fake parameters, so the reply and
//! its timing are the same as for a wrong secret: every attempt derives
//! the fake parameters, and uses them only if the user is unknown.
//! Failures are penalised per user name and per source address before the
//! next attempt.
//!
//! A key login takes one flight: the server's first flight carries an
//! [`AdvanceChallenge`] (fresh nonce, the realm as salt, 0 iterations), so
//! a key client sends AUTH_START and AUTH_PROOF together and the first key
//! attempt gets no AUTH_CHALLENGE of its own. Password attempts and every
//! later attempt get a fresh AUTH_CHALLENGE as before.

use crate::connection::{Link, LinkError};
use crate::server::Shared;
use crate::users::Users;
use ring::rand::{SecureRandom, SystemRandom};
use sockd_proto::auth::{self, AuthTranscript, CHANNEL_BINDING_LEN, REALM_LEN};
use sockd_proto::message::NONCE_LEN;
use sockd_proto::{CredentialKind, ErrorCode, Message};
use std::net::SocketAddr;
use std::sync::Arc;

/// How authentication ended without success.
pub enum AuthEnd {
    /// The link failed or the peer misbehaved; already reported.
    Link(LinkError),
    /// Too many failed attempts.
    TooManyAttempts,
}

impl From<LinkError> for AuthEnd {
    fn from(e: LinkError) -> Self {
        AuthEnd::Link(e)
    }
}

/// A successful proof: the caller registers the session and sends AUTH_OK
/// with its id and this signature.
pub struct Authenticated {
    pub user: String,
    pub server_signature: [u8; 32],
}

/// The key challenge of the server's first flight, sent with the TLS
/// handshake before the client has named its user: valid for the first
/// key attempt of the connection only.
pub struct AdvanceChallenge {
    server_nonce: [u8; NONCE_LEN],
    realm: [u8; REALM_LEN],
}

impl AdvanceChallenge {
    /// A fresh nonce, and the realm of `users` as the salt.
    pub fn new(users: &Users) -> Result<Self, String> {
        let mut server_nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut server_nonce)
            .map_err(|_| "no randomness available".to_string())?;
        Ok(Self {
            server_nonce,
            realm: *users.realm(),
        })
    }

    /// The AUTH_CHALLENGE to send.
    pub fn message(&self) -> Message {
        Message::AuthChallenge {
            server_nonce: self.server_nonce,
            salt: self.realm.to_vec().into(),
            iterations: 0,
        }
    }
}

/// Runs attempts until one succeeds. The first key attempt answers
/// `advance`, which the server's first flight carried.
pub async fn authenticate(
    link: &mut Link,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    channel_binding: &[u8; CHANNEL_BINDING_LEN],
    mut advance: Option<AdvanceChallenge>,
) -> Result<Authenticated, AuthEnd> {
    let rng = SystemRandom::new();
    let max_attempts = shared.config().auth.max_attempts;
    for _ in 0..max_attempts {
        let (user, kind, client_nonce) = match link.recv().await? {
            Message::AuthStart {
                user,
                kind,
                client_nonce,
            } => (user, kind, client_nonce),
            other => return Err(link.refuse_before_auth(&other).await.into()),
        };

        let wait = shared.penalties.wait_for(&user, peer.ip());
        if !wait.is_zero() {
            tracing::info!(%peer, user = %user, wait_ms = wait.as_millis() as u64, "penalised login attempt waits");
            tokio::time::sleep(wait).await;
        }

        let config = shared.config();
        let users = shared.users();
        let known = users
            .get(&user)
            .filter(|c| c.kind == kind && crate::users::valid_user_name(&user));
        // Derived for known users too, so that both paths do the same work.
        let fake = std::hint::black_box(shared.fake_credentials.derive(
            &user,
            kind,
            config.auth.fake_iterations,
        ));
        let credential = known.unwrap_or(&fake);

        // Every key credential is salted with the realm, so a key
        // challenge names it whoever asks: an unknown user's looks the same.
        let answered = advance.take().filter(|_| kind == CredentialKind::Key);
        let (server_nonce, salt): (_, &[u8]) = match &answered {
            Some(a) => {
                tracing::debug!(%peer, user = %user, "key attempt answers the advance challenge (one flight)");
                (a.server_nonce, &a.realm)
            }
            None => {
                let mut server_nonce = [0u8; NONCE_LEN];
                if rng.fill(&mut server_nonce).is_err() {
                    return Err(link
                        .fail(ErrorCode::Internal, "no randomness available")
                        .await
                        .into());
                }
                let salt: &[u8] = match kind {
                    CredentialKind::Key => users.realm(),
                    CredentialKind::Password => &credential.salt,
                };
                link.send(Message::AuthChallenge {
                    server_nonce,
                    salt: salt.to_vec().into(),
                    iterations: credential.iterations,
                })
                .await?;
                (server_nonce, salt)
            }
        };

        let proof = match link.recv().await? {
            Message::AuthProof { proof } => proof,
            other => return Err(link.refuse_before_auth(&other).await.into()),
        };
        let transcript = AuthTranscript {
            user: &user,
            kind,
            client_nonce: &client_nonce,
            server_nonce: &server_nonce,
            salt,
            iterations: credential.iterations,
            channel_binding,
        };
        let verified = auth::verify_client_proof(credential, &transcript, &proof);
        match verified {
            Some(server_signature) if known.is_some() => {
                shared.penalties.succeeded(&user);
                return Ok(Authenticated {
                    user,
                    server_signature,
                });
            }
            _ => {
                let penalty = shared.penalties.failed(&user, peer.ip());
                tracing::warn!(%peer, user = %user, known = known.is_some(), penalty_ms = penalty.as_millis() as u64,
                    "authentication failed");
                link.send(Message::AuthFail {
                    code: ErrorCode::AuthFailed,
                    retry_after_ms: penalty.as_millis().min(u32::MAX as u128) as u32,
                    message: "authentication failed: unknown user or wrong credential".into(),
                })
                .await?;
            }
        }
    }
    let _ = link
        .fail(
            ErrorCode::AuthFailed,
            "too many failed authentication attempts",
        )
        .await;
    Err(AuthEnd::TooManyAttempts)
}
