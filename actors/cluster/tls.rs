//! TLS for the cluster link, from `[node] tls_cert`, `tls_key` and `tls_ca` (PEM files).
//!
//! Every node presents its certificate, as server and as client (mutual TLS), and verifies its
//! peers' against the CA; the cookie still authenticates them on top. With the three keys empty,
//! the link is plain TCP.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::Settings;

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub(crate) struct TlsError(String);

fn certs(settings: &Settings) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = &settings.node.tls_cert;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| TlsError(format!("node.tls_cert {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "node.tls_cert {}: no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn roots(settings: &Settings) -> Result<RootCertStore, TlsError> {
    let path = &settings.node.tls_ca;
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("node.tls_ca {}: {e}", path.display())))?;
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| TlsError(format!("node.tls_ca {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(TlsError(format!(
            "node.tls_ca {}: no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn key(settings: &Settings) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = &settings.node.tls_key;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError(format!("node.tls_key {}: {e}", path.display())))
}

/// The acceptor for incoming cluster connections, when TLS is configured: it asks every peer
/// for a certificate signed by the CA.
pub(crate) fn acceptor(settings: &Settings) -> Result<Option<TlsAcceptor>, TlsError> {
    if !settings.tls() {
        return Ok(None);
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots(settings)?))
        .build()
        .map_err(|e| TlsError(format!("node.tls_ca: {e}")))?;
    let config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(settings)?, key(settings)?)
        .map_err(|e| TlsError(format!("node.tls_cert / node.tls_key: {e}")))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The connector for outgoing cluster connections, when TLS is configured.
pub(crate) fn connector(settings: &Settings) -> Result<Option<TlsConnector>, TlsError> {
    if !settings.tls() {
        return Ok(None);
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots(settings)?)
        .with_client_auth_cert(certs(settings)?, key(settings)?)
        .map_err(|e| TlsError(format!("node.tls_cert / node.tls_key: {e}")))?;
    Ok(Some(TlsConnector::from(Arc::new(config))))
}
