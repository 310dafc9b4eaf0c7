//! A bare protocol client for adversarial tests. It trusts any server
//! certificate: tests point it only at the daemon they started.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sockd_proto::auth::{self, AuthTranscript, Secret};
use sockd_proto::frame::DEFAULT_MAX_FRAME;
use sockd_proto::message::{ALPN, PROTOCOL_VERSION};
use sockd_proto::{FrameCodec, Hello, Message};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens a TLS connection to the daemon.
pub async fn tls_connect(addr: SocketAddr) -> TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls handshake")
}

pub struct RawClient {
    pub framed: Framed<TlsStream<TcpStream>, FrameCodec>,
    pub channel_binding: [u8; 32],
}

/// The state of one auth attempt after the challenge.
pub struct Challenge {
    pub user: String,
    pub kind: sockd_proto::CredentialKind,
    pub client_nonce: [u8; 32],
    pub server_nonce: [u8; 32],
    pub salt: Bytes,
    pub iterations: u32,
}

impl Challenge {
    /// The proof `secret` gives for this challenge over `channel_binding`.
    pub fn proof(&self, secret: &Secret, channel_binding: &[u8; 32]) -> [u8; 32] {
        let salted = auth::salted_secret(secret, &self.salt, self.iterations);
        let t = AuthTranscript {
            user: &self.user,
            kind: self.kind,
            client_nonce: &self.client_nonce,
            server_nonce: &self.server_nonce,
            salt: &self.salt,
            iterations: self.iterations,
            channel_binding,
        };
        auth::ClientProof::new(&salted, &t).proof
    }
}

/// The HELLO a raw test client sends.
pub fn hello() -> Message {
    hello_with(&[])
}

/// A raw test client's HELLO listing `capabilities`.
pub fn hello_with(capabilities: &[&str]) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        max_frame: DEFAULT_MAX_FRAME,
        window: 1 << 20,
        software: "raw-test".into(),
        identity: String::new(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
    })
}

impl RawClient {
    /// TLS connection without HELLO.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let tls = tls_connect(addr).await;
        let mut channel_binding = [0u8; 32];
        tls.get_ref()
            .1
            .export_keying_material(&mut channel_binding, auth::CHANNEL_BINDING_LABEL, None)
            .expect("exporter");
        RawClient {
            framed: Framed::new(tls, FrameCodec::new(DEFAULT_MAX_FRAME)),
            channel_binding,
        }
    }

    /// TLS plus the HELLO exchange.
    pub async fn connect_hello(addr: SocketAddr) -> RawClient {
        Self::connect_with_hello(addr, hello()).await.0
    }

    /// TLS plus the exchange of `hello` for the server's HELLO.
    pub async fn connect_with_hello(addr: SocketAddr, hello: Message) -> (RawClient, Hello) {
        let mut c = Self::connect(addr).await;
        c.send(hello).await;
        match c.recv().await {
            Some(Message::Hello(h)) => (c, h),
            other => panic!("expected HELLO, got {other:?}"),
        }
    }

    pub async fn send(&mut self, m: Message) {
        self.framed.send(m.encode()).await.expect("send");
    }

    /// Writes bytes straight into the TLS stream, bypassing framing.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.framed.get_mut();
        io.write_all(bytes).await.expect("write");
        io.flush().await.expect("flush");
    }

    /// The next message, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Message> {
        match self.framed.next().await {
            Some(Ok(f)) => Some(Message::decode(f).expect("server sent a valid message")),
            _ => None,
        }
    }

    /// Sends AUTH_START and returns the server's challenge.
    pub async fn start_auth(&mut self, user: &str, kind: sockd_proto::CredentialKind) -> Challenge {
        let mut client_nonce = [0u8; 32];
        SystemRandom::new().fill(&mut client_nonce).expect("random");
        self.send(Message::AuthStart {
            user: user.into(),
            kind,
            client_nonce,
        })
        .await;
        let mut reply = self.recv().await;
        // The server's first flight ends with the advance key challenge
        // (0 iterations); a password attempt gets its own after it.
        if kind == sockd_proto::CredentialKind::Password
            && matches!(reply, Some(Message::AuthChallenge { iterations: 0, .. }))
        {
            reply = self.recv().await;
        }
        match reply {
            Some(Message::AuthChallenge {
                server_nonce,
                salt,
                iterations,
            }) => Challenge {
                user: user.into(),
                kind,
                client_nonce,
                server_nonce,
                salt,
                iterations,
            },
            other => panic!("expected AUTH_CHALLENGE, got {other:?}"),
        }
    }

    /// A full login; returns the server's reply to the proof.
    pub async fn login(&mut self, user: &str, secret: &Secret) -> Option<Message> {
        let challenge = self.start_auth(user, secret.kind()).await;
        let proof = challenge.proof(secret, &self.channel_binding);
        self.send(Message::AuthProof { proof }).await;
        self.recv().await
    }
}

/// Reads the demo key written by `sockd --dev`.
pub fn demo_secret(dir: &std::path::Path) -> Secret {
    let text = std::fs::read_to_string(dir.join("demo.key")).expect("demo.key");
    Secret::Key(auth::decode_key(&text).expect("demo key"))
}
