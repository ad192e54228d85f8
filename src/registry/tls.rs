//! TLS client settings per endpoint, from `hosts.toml` (`ca`, `client`, `skip_verify`), on
//! rustls with the aws-lc-rs provider (already in pullgate for the Sigstore crates).
//!
//! Like containerd: `ca` files are added to the system roots, not instead of them; `client`
//! pairs are certificate + key (the key may be in the certificate file); `skip_verify` accepts
//! any server certificate (the handshake signature is still checked).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::hosts::TlsSettings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {0}: {1}")]
    ReadCa(PathBuf, std::io::Error),
    #[error("CA file {0} holds no PEM certificate")]
    NoCa(PathBuf),
    #[error("CA file {0}: {1}")]
    BadCa(PathBuf, String),
    #[error("client certificate {0}: {1}")]
    Client(PathBuf, String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static P: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// The system's trusted roots, read once (reading them takes milliseconds).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "problem reading system CA certificates");
        }
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system CA certificates loaded");
        store
    })
}

/// The rustls client configuration for an endpoint's TLS settings.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = if settings.skip_verify == Some(true) {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
    } else {
        let mut roots = system_roots().clone();
        for file in &settings.ca_files {
            add_ca_file(&mut roots, file)?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match settings.client_pairs.first() {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            if settings.client_pairs.len() > 1 {
                tracing::warn!(used = %cert.display(), "several client certificates configured; pullgate presents only the first");
            }
            let chain = read_certs(cert).map_err(|e| TlsError::Client(cert.clone(), e))?;
            let key_file = key.as_deref().unwrap_or(cert);
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| TlsError::Client(key_file.to_owned(), format!("no usable private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::Client(cert.clone(), e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn add_ca_file(roots: &mut RootCertStore, file: &Path) -> Result<(), TlsError> {
    let bytes = std::fs::read(file).map_err(|e| TlsError::ReadCa(file.to_owned(), e))?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| TlsError::BadCa(file.to_owned(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCa(file.to_owned()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::BadCa(file.to_owned(), e.to_string()))?;
    }
    Ok(())
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// `skip_verify = true`: any certificate is accepted for any name, as containerd's
/// `InsecureSkipVerify`; handshake signatures are still verified so the session is sound.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let s = TlsSettings { ca_files: vec![missing.clone()], ..Default::default() };
        let e = client_config(&s).unwrap_err().to_string();
        assert!(e.contains("missing.pem") && e.contains("cannot read"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = client_config(&TlsSettings { ca_files: vec![empty], ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = client_config(&TlsSettings { client_pairs: vec![(missing, None)], ..Default::default() }).unwrap_err().to_string();
        assert!(e.contains("client certificate") && e.contains("cannot read"), "{e}");
        assert!(client_config(&TlsSettings::default()).is_ok());
        assert!(client_config(&TlsSettings { skip_verify: Some(true), ..Default::default() }).is_ok());
    }
}
