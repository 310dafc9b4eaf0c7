//! Credentials and login: loading the key file or password, and the
//! client side of the channel-bound SCRAM exchange (AUTH_START,
//! AUTH_CHALLENGE, AUTH_PROOF, AUTH_OK / AUTH_FAIL; a key login answers
//! the challenge that came with the server's TLS flight).

use super::config::PASSWORD_ENV;
use super::connection::{describe, next_message};
use super::error::ClientError;
use futures_util::{Sink, SinkExt, Stream};
use ring::rand::{SecureRandom, SystemRandom};
use sockd_proto::auth::{self, AuthTranscript, ClientProof, KEY_LEN, Secret};
use sockd_proto::code::exit;
use sockd_proto::frame::FrameError;
use sockd_proto::message::{CredentialKind, NONCE_LEN};
use sockd_proto::{ErrorCode, Frame, Message};
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Loads the secret to log in with: the key file if there is one, else the
/// password from `$SOCKCTL_PASSWORD`, else a password typed on the terminal.
pub fn load_secret(
    key_file: Option<&Path>,
    user: &str,
    server: &str,
) -> Result<Secret, ClientError> {
    if let Some(path) = key_file {
        return read_key_file(path).map(Secret::Key);
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => return Ok(Secret::Password(p)),
        Ok(_) | Err(std::env::VarError::NotPresent) => {}
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ClientError::config(format!(
                "${PASSWORD_ENV} is not valid UTF-8"
            )));
        }
    }
    prompt_password(&format!("password for {user} at {server}: ")).map(Secret::Password)
}

/// Reads a key file (64 hex digits), refusing one that group or others
/// can access, as ssh does.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], ClientError> {
    let shown = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| {
        ClientError::config(format!(
            "cannot open key file {shown}: {e}; check `key_file` in the config or --key-file"
        ))
    })?;
    let meta = file
        .metadata()
        .map_err(|e| ClientError::config(format!("cannot read key file {shown}: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ClientError::config(format!(
            "key file {shown} is accessible by others; run chmod 600 {shown}"
        )));
    }
    let mut text = String::new();
    // A key file is 65 bytes; anything far larger is not one.
    Read::by_ref(&mut file)
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| ClientError::config(format!("cannot read key file {shown}: {e}")))?;
    auth::decode_key(&text).map_err(|m| ClientError::config(format!("{m}: {shown}")))
}

/// Asks for a password on the controlling terminal with echo off.
fn prompt_password(prompt: &str) -> Result<String, ClientError> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let no_terminal = || {
        ClientError::config(format!(
            "no credential: set `key_file` in the config (or --key-file), set ${PASSWORD_ENV}, \
             or run sockctl in a terminal to type the password"
        ))
    };
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| no_terminal())?;
    let saved = tcgetattr(&tty).map_err(|_| no_terminal())?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).map_err(|_| no_terminal())?;
    let result = (|| {
        (&tty).write_all(prompt.as_bytes())?;
        (&tty).flush()?;
        let mut line = Vec::new();
        std::io::BufReader::new(&tty)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)?;
        Ok::<_, std::io::Error>(line)
    })();
    // Restore echo whatever happened.
    let _ = tcsetattr(&tty, SetArg::TCSANOW, &saved);
    let mut line = result.map_err(|e| {
        ClientError::config(format!("cannot read the password from the terminal: {e}"))
    })?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    let password = String::from_utf8(line)
        .map_err(|_| ClientError::config("the password is not valid UTF-8".to_string()))?;
    if password.is_empty() {
        return Err(ClientError::config(
            "empty password; nothing to log in with".to_string(),
        ));
    }
    Ok(password)
}

/// Fills `buf` from the system's secure random generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), ClientError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| ClientError::failure("cannot get random bytes from the operating system"))
}

/// The AUTH_START message and its client nonce. The client sends it right
/// behind its HELLO, without waiting for the server's (one round trip less).
pub(crate) fn auth_start(
    user: &str,
    secret: &Secret,
) -> Result<(Message, [u8; NONCE_LEN]), ClientError> {
    let mut client_nonce = [0u8; NONCE_LEN];
    random_bytes(&mut client_nonce)?;
    let start = Message::AuthStart {
        user: user.to_string(),
        kind: secret.kind(),
        client_nonce,
    };
    Ok((start, client_nonce))
}

/// Runs the rest of the login exchange once AUTH_START is sent and the
/// server's HELLO is read. Returns the session id.
///
/// The first AUTH_CHALLENGE is the server's advance key challenge, which
/// came with its TLS handshake: a key client answers it at once (one
/// flight), a password client skips it and answers the next one. `sent`
/// runs when the proof has been written (the caller lets held writes go).
pub(crate) async fn authenticate<S>(
    io: &mut S,
    user: &str,
    secret: &Secret,
    client_nonce: [u8; NONCE_LEN],
    channel_binding: &[u8; auth::CHANNEL_BINDING_LEN],
    timeout: Duration,
    sent: impl FnOnce(&mut S),
) -> Result<u64, ClientError>
where
    S: Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Unpin,
{
    let kind = secret.kind();
    let mut skipped_advance = false;
    let (server_nonce, salt, iterations) = loop {
        match next_message(io, timeout, "the login challenge").await? {
            // A password challenge never has 0 iterations: this is the
            // key challenge every server flight carries. Only one is skipped.
            Message::AuthChallenge { iterations: 0, .. }
                if kind == CredentialKind::Password && !skipped_advance =>
            {
                skipped_advance = true;
            }
            Message::AuthChallenge {
                server_nonce,
                salt,
                iterations,
            } => break (server_nonce, salt, iterations),
            Message::AuthFail {
                code,
                retry_after_ms,
                ..
            } => return Err(auth_failed(code, retry_after_ms)),
            other => {
                return Err(ClientError::protocol(format!(
                    "sockd sent {} instead of the login challenge",
                    describe(&other)
                )));
            }
        }
    };
    auth::check_challenge(kind, &salt, iterations).map_err(|e| {
        ClientError::protocol(format!(
            "refusing the server's login challenge: {e}; the server is misconfigured or not genuine"
        ))
    })?;

    // PBKDF2 takes a noticeable time: keep it off the async thread. A key
    // needs one HMAC, cheaper than the hand-off.
    let salted = if let Secret::Key(_) = secret {
        auth::salted_secret(secret, &salt, iterations)
    } else {
        let (secret, salt) = (secret.clone(), salt.clone());
        tokio::task::spawn_blocking(move || auth::salted_secret(&secret, &salt, iterations))
            .await
            .map_err(|e| ClientError::failure(format!("key derivation failed: {e}")))?
    };
    let transcript = AuthTranscript {
        user,
        kind,
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        salt: &salt,
        iterations,
        channel_binding,
    };
    let client = ClientProof::new(&salted, &transcript);
    send(
        io,
        Message::AuthProof {
            proof: client.proof,
        },
    )
    .await?;
    sent(io);

    match next_message(io, timeout, "the login result").await? {
        Message::AuthOk {
            server_signature,
            session_id,
        } => {
            if client.verify_server(&server_signature) {
                Ok(session_id)
            } else {
                Err(ClientError::new(
                    exit::SERVER_UNPROVEN,
                    "server failed to prove it knows your credential (possible impostor); \
                     check `server` and the certificate pin before logging in again",
                ))
            }
        }
        Message::AuthFail {
            code,
            retry_after_ms,
            ..
        } => Err(auth_failed(code, retry_after_ms)),
        other => Err(ClientError::protocol(format!(
            "sockd sent {} instead of the login result",
            describe(&other)
        ))),
    }
}

async fn send<S>(io: &mut S, msg: Message) -> Result<(), ClientError>
where
    S: Sink<Frame, Error = FrameError> + Unpin,
{
    io.send(msg.encode())
        .await
        .map_err(|e| ClientError::connect(format!("connection to sockd lost during login: {e}")))
}

/// AUTH_FAIL: the same words whether or not the user exists.
fn auth_failed(code: ErrorCode, retry_after_ms: u32) -> ClientError {
    let wait = if retry_after_ms > 0 {
        format!("; try again in {} s", retry_after_ms.div_ceil(1000))
    } else {
        String::new()
    };
    match code {
        ErrorCode::RateLimited => ClientError::remote(
            code,
            format!("authentication failed: too many attempts{wait}"),
        ),
        ErrorCode::AuthTimeout => {
            ClientError::remote(code, "authentication failed: the login took too long")
        }
        _ => ClientError::new(
            exit::AUTH_FAILED,
            format!(
                "authentication failed: check the user name and the password or key file{wait}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn key_files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = [7u8; 32];
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .unwrap()
            .write_all(auth::encode_key(&key).as_bytes())
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&path).unwrap_err();
        let shown = path.display().to_string();
        assert_eq!(
            e.message(),
            format!("key file {shown} is accessible by others; run chmod 600 {shown}")
        );
        assert_eq!(e.status(), exit::CONFIG);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), key);
        std::fs::write(&path, "abcd\n").unwrap();
        assert!(
            read_key_file(&path)
                .unwrap_err()
                .message()
                .contains("2 bytes")
        );
        assert!(
            read_key_file(&dir.path().join("none"))
                .unwrap_err()
                .message()
                .contains("--key-file")
        );
    }

    #[test]
    fn auth_failures_do_not_reveal_the_user() {
        let a = auth_failed(ErrorCode::AuthFailed, 0);
        assert_eq!(a.status(), exit::AUTH_FAILED);
        assert!(a.message().starts_with("authentication failed"));
        assert_eq!(auth_failed(ErrorCode::NotFound, 0).message(), a.message());
        assert!(
            auth_failed(ErrorCode::RateLimited, 1500)
                .message()
                .contains("2 s")
        );
    }
}
