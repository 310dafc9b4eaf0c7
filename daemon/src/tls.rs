//! TLS: loading the certificate chain and key named in config into a
//! rustls server config (ring provider, TLS 1.3 only, ALPN `sockd/1`).

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Builds the server config; errors name the file and what to do.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{}: cannot read certificate: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block found",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{}: cannot read private key: {e}", key_path.display()))?;
    // AES-128-GCM with SHA-256 first: its key schedule uses the SHA
    // extensions most CPUs have, and it is the fastest bulk cipher.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let provider = Arc::new(provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {}: certificate and key do not form a usable pair: {e}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![sockd_proto::message::ALPN.to_vec()];
    config.ignore_client_order = true;
    // sockctl does not resume sessions (every login is fresh and channel-
    // bound), so session tickets would only cost a write and cache memory.
    config.send_tls13_tickets = 0;
    // The server's HELLO and the advance key challenge, written before the
    // handshake (crate::connection::serve), leave right behind the server's
    // Finished, in the same flight: a key client can answer with its own
    // Finished. rustls allows this only without client certificates, which
    // sockd does not use; it is safe here because nothing in that flight is
    // secret or depends on who the client is.
    config.send_half_rtt_data = true;
    Ok(Arc::new(config))
}

/// `sha256:<hex>` of the first certificate in a PEM file: what clients pin.
pub fn fingerprint(cert_path: &Path) -> Result<String, String> {
    let cert = CertificateDer::from_pem_file(cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    Ok(fingerprint_der(&cert))
}

pub fn fingerprint_der(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    format!("sha256:{}", sockd_proto::hex::encode(digest.as_ref()))
}
