//! TLS for the server: the certificate (PEM files or a self-signed one made at start) and the
//! two rustls configurations built from it, one for TCP (HTTP/2 and HTTP/1.1 offered by ALPN,
//! in that order) and one for QUIC (TLS 1.3 only, ALPN `h3`).
//!
//! rustls with its `ring` provider: memory-safe, no system OpenSSL, and the provider builds
//! with a C compiler alone.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::TlsSource;
use crate::error::ServerError;

/// The ALPN protocols offered on the TCP port, preferred first.
const TCP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server's certificate chain and private key.
#[derive(Debug)]
pub(crate) struct Certificate {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn tls_error(what: impl std::fmt::Display) -> ServerError {
    ServerError::Config(format!("TLS: {what}"))
}

impl Certificate {
    /// Loads or makes the certificate `source` names; `host` is the listening address (a
    /// self-signed certificate names it besides the loopback names).
    pub fn load(source: &TlsSource, host: IpAddr) -> Result<Self, ServerError> {
        match source {
            TlsSource::Files { cert, key } => Self::from_files(cert, key),
            TlsSource::SelfSigned => Self::self_signed(host),
        }
    }

    fn from_files(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| tls_error(format!("cannot read {}: {e}", p.display())))
        };
        let chain = CertificateDer::pem_slice_iter(&read(cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error(format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(tls_error(format!(
                "{} holds no PEM certificate",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| {
            tls_error(format!(
                "{}: no usable PEM private key ({e})",
                key.display()
            ))
        })?;
        Ok(Self { chain, key })
    }

    fn self_signed(host: IpAddr) -> Result<Self, ServerError> {
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        if !host.is_unspecified() && !host.is_loopback() {
            names.push(host.to_string());
        }
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| tls_error(format!("making a self-signed certificate: {e}")))?;
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        Ok(Self {
            chain: vec![made.cert.der().clone()],
            key,
        })
    }

    /// The leaf certificate in PEM.
    pub fn leaf_pem(&self) -> String {
        pem_of(&self.chain[0])
    }

    /// The rustls configuration of the TCP port (TLS 1.2 and 1.3; ALPN `h2`, `http/1.1`).
    pub fn tcp_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let mut config = self.builder(rustls::DEFAULT_VERSIONS)?;
        config.alpn_protocols = TCP_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The rustls configuration of the QUIC endpoint (TLS 1.3, ALPN `h3`).
    pub fn quic_config(&self) -> Result<rustls::ServerConfig, ServerError> {
        let mut config = self.builder(&[&rustls::version::TLS13])?;
        config.alpn_protocols = vec![b"h3".to_vec()];
        Ok(config)
    }

    fn builder(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<rustls::ServerConfig, ServerError> {
        rustls::ServerConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_protocol_versions(versions)
            .map_err(tls_error)?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| tls_error(format!("the certificate and key do not fit: {e}")))
    }
}

/// One certificate in PEM (64-column base64 lines).
fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// rustls' `ring` provider (deprecated in 0.23.48 only for lacking post-quantum key exchange,
/// which would need aws-lc-rs and cmake; classical key exchange is what this server offers).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_round_trips_through_pem_files() {
        let made = Certificate::load(&TlsSource::SelfSigned, IpAddr::from([127, 0, 0, 1]))
            .expect("self-signed");
        assert!(made.tcp_config().is_ok());
        assert!(made.quic_config().is_ok());
        let dir = std::env::temp_dir().join(format!("fac-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.leaf_pem()).unwrap();
        let pem_key = {
            use base64::Engine;
            let der = made.key.secret_der();
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                lines.join("\n")
            )
        };
        std::fs::write(&key, pem_key).unwrap();
        let files = TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        let loaded = Certificate::load(&files, IpAddr::from([127, 0, 0, 1])).expect("files");
        assert_eq!(loaded.chain, made.chain);
        assert!(loaded.tcp_config().is_ok());
        // Bad input is a typed configuration error, never a panic.
        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(
            Certificate::load(&files, IpAddr::from([127, 0, 0, 1])),
            Err(ServerError::Config(_))
        ));
        std::fs::write(&cert, "").unwrap();
        assert!(matches!(
            Certificate::load(&files, IpAddr::from([127, 0, 0, 1])),
            Err(ServerError::Config(_))
        ));
        let missing = TlsSource::Files {
            cert: dir.join("missing.pem"),
            key,
        };
        assert!(matches!(
            Certificate::load(&missing, IpAddr::from([127, 0, 0, 1])),
            Err(ServerError::Config(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
