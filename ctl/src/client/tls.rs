//! TLS trust: the rustls client configuration (TLS 1.3 only, ALPN
//! `sockd/1`, ring), certificate pinning, CA bundles, and turning handshake
//! failures into clear errors.
//!
//! No option disables verification: a connection needs either a pin (the
//! SHA-256 of the server certificate's DER) or a CA file.
//!
//! A key login sends its Finished, HELLO, AUTH_START and AUTH_PROOF in one
//! TCP segment: [`handshake`] has the kernel hold (TCP_CORK) what the
//! client writes after its ClientHello until [`release_held_writes`].

use super::config::{Pin, Trust};
use super::error::ClientError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use sockd_proto::code::exit;
use sockd_proto::message::ALPN;
use std::fmt;
use std::future::Future;
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::Connect;
use tokio_rustls::client::TlsStream;

/// SHA-256 of a certificate's DER encoding, as pinned.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The ring provider, preferring AES-128-GCM with SHA-256: its key
/// schedule uses the SHA extensions most CPUs have, and its bulk cipher is
/// the fastest for large transfers.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Builds the client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::failure(format!("cannot set up TLS: {e}")))?;
    let mut config = match trust {
        Trust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: *pin,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::Ca(path) => {
            let roots = load_roots(path)?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ClientError::config(format!("CA file {}: {e}", path.display())))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS name to send and, with a CA, to check the certificate against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        ClientError::config(format!(
            "{name:?} is not a valid TLS server name; fix `server_name` in the config"
        ))
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, ClientError> {
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
        ClientError::config(format!(
            "cannot read CA file {}: {e}; check `ca` in the config or --ca",
            path.display()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        let cert =
            cert.map_err(|e| ClientError::config(format!("CA file {}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            ClientError::config(format!(
                "CA file {}: unusable certificate: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(ClientError::config(format!(
            "CA file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(roots)
}

/// Accepts exactly the end-entity certificate with the pinned SHA-256,
/// whatever its issuer, names or dates (like an SSH host key), and still
/// checks that the server holds its private key.
#[derive(Debug)]
struct PinVerifier {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The pin did not match; carried inside the rustls error to the caller.
#[derive(Debug)]
struct PinMismatch {
    expected: Pin,
    found: Pin,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server certificate does not match the pinned fingerprint {} (found {}); \
             if the server's certificate was replaced on purpose, update `pin` in the config",
            self.expected, self.found
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = fingerprint(end_entity.as_ref());
        if sockd_proto::auth::constant_time_eq(&found, &self.pin.0) {
            Ok(ServerCertVerified::assertion())
        } else {
            let mismatch = PinMismatch {
                expected: self.pin,
                found: Pin(found),
            };
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(mismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with TLS 1.3 only, but correct if it ever is reached.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Runs the TLS handshake. With `hold`, once the ClientHello has left (the
/// handshake first waits for the server), the socket is corked: the
/// client's Finished and what follows stay in the kernel until
/// [`release_held_writes`], so that the server reads them in one segment.
pub(crate) async fn handshake(
    mut connect: Connect<TcpStream>,
    hold: bool,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut corked = !hold;
    std::future::poll_fn(|cx| {
        let polled = std::pin::Pin::new(&mut connect).poll(cx);
        if polled.is_pending() && !corked {
            corked = true;
            if let Some(tcp) = connect.get_ref() {
                // Without the cork the login works the same, in two segments.
                let _ = set_cork(tcp, true);
            }
        }
        polled
    })
    .await
}

/// Whether the server's first application data (its HELLO and the advance
/// key challenge, sent with its handshake flight) is already here. A
/// server from before one-flight logins sends nothing until it has the
/// client's HELLO: holding that back would only delay the login.
pub(crate) fn server_flight_arrived(tls: &mut TlsStream<TcpStream>) -> bool {
    // Decrypts what was read with the handshake; an error here is
    // reported again by the next read.
    tls.get_mut()
        .1
        .process_new_packets()
        .is_ok_and(|state| state.plaintext_bytes_to_read() > 0)
}

/// Sends what [`handshake`] held, now.
pub(crate) fn release_held_writes(tls: &TlsStream<TcpStream>) {
    let _ = set_cork(tls.get_ref().0, false);
}

/// TCP_CORK: while set, the kernel sends only full segments (or what has
/// waited 200 ms); clearing it sends what is pending at once.
#[cfg(target_os = "linux")]
fn set_cork(socket: &impl AsFd, on: bool) -> std::io::Result<()> {
    use nix::libc;
    let value = libc::c_int::from(on);
    // SAFETY: the descriptor is borrowed from an open socket for the whole
    // call; `value` is a c_int that outlives the call and its size is
    // passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&raw const value).cast(),
            std::mem::size_of_val(&value) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_cork(_socket: &impl AsFd, _on: bool) -> std::io::Result<()> {
    Ok(())
}

/// Turns a failed TLS handshake into an error with the right exit status.
pub(crate) fn handshake_error(e: std::io::Error, server: &str, server_name: &str) -> ClientError {
    let tls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))))
            if other.downcast_ref::<PinMismatch>().is_some() =>
        {
            ClientError::new(exit::UNTRUSTED_SERVER, other.to_string())
        }
        Some(err @ rustls::Error::InvalidCertificate(_)) => ClientError::new(
            exit::UNTRUSTED_SERVER,
            format!(
                "the certificate of {server} is not trusted for the name {server_name:?} ({err}); \
                 check `ca` and `server_name` in the config"
            ),
        ),
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            ClientError::protocol(format!(
                "{server} refused the sockd/1 protocol (ALPN); is it a sockd server?"
            ))
        }
        Some(err) => ClientError::connect(format!("TLS handshake with {server} failed: {err}")),
        // A sockd that refuses a connection (at its connection limits or
        // out of file descriptors) closes it before the handshake: the
        // client sees the connection end, not a TLS error.
        None if matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ) =>
        {
            ClientError::connect(format!(
                "{server} closed the connection before the TLS handshake finished ({e}): \
                 the server refused it (at its connection or open-file limit: its log says which) \
                 or it is not a sockd server"
            ))
        }
        None => ClientError::connect(format!(
            "TLS handshake with {server} failed: {e}; is it a sockd server?"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_mismatch_is_reported_with_both_fingerprints() {
        let expected = Pin([0x11; 32]);
        let verifier = PinVerifier {
            pin: expected,
            algorithms: provider().signature_verification_algorithms,
        };
        let cert = CertificateDer::from(vec![1u8, 2, 3]);
        let name = ServerName::try_from("localhost").unwrap();
        let err = verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        let e = handshake_error(io, "127.0.0.1:7443", "localhost");
        assert_eq!(e.status(), exit::UNTRUSTED_SERVER);
        let found = Pin(fingerprint(&[1, 2, 3]));
        assert!(
            e.message().starts_with(&format!(
                "server certificate does not match the pinned fingerprint {expected} (found {found})"
            )),
            "{e}"
        );
        // The matching pin is accepted.
        let ok = PinVerifier {
            pin: found,
            algorithms: provider().signature_verification_algorithms,
        };
        assert!(
            ok.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(&Trust::Ca(missing.clone())).unwrap_err();
        assert_eq!(e.status(), exit::CONFIG);
        assert!(e.message().contains(&missing.display().to_string()), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&Trust::Ca(empty)).unwrap_err();
        assert!(e.message().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn pinned_config_offers_the_sockd_alpn() {
        let config = client_config(&Trust::Pin(Pin([0; 32]))).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"sockd/1".to_vec()]);
    }
}
