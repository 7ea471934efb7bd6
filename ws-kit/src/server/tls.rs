//! (feature `tls`) [`TlsConfig`]: `wss://` on the server's own port, with rustls.

use crate::error::Error;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The server's TLS: a certificate chain and its key, or a ready `rustls::ServerConfig`. Given to
/// [`ServeOptions::tls`](super::ServeOptions::tls), it makes the server speak `wss://`: each
/// accepted socket first completes a TLS handshake (under `handshake_timeout`, like the upgrade
/// that follows), then the WebSocket upgrade runs inside it.
///
/// ```no_run
/// use ws_kit::{Router, ServeOptions, TlsConfig};
///
/// # fn main() -> Result<(), ws_kit::Error> {
/// let tls = TlsConfig::from_pem_files("certs/chain.pem", "certs/key.pem")?;
/// let options = ServeOptions::<()>::new().port(443).tls(tls);
/// # let _ = options;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    pub(super) acceptor: tokio_rustls::TlsAcceptor,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain (the server's certificate first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1) from files.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let chain = std::fs::read(cert_chain.as_ref()).map_err(Error::Io)?;
        let key = std::fs::read(key.as_ref()).map_err(Error::Io)?;
        Self::from_pem(&chain, &key)
    }

    /// [`TlsConfig::from_pem_files`] from PEM text already in memory.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(tls_error)?;
        if chain.is_empty() {
            return Err(tls_error("no certificate in the PEM chain"));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(tls_error)?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_error)?;
        // A WebSocket upgrade is HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self::from_server_config(Arc::new(config)))
    }

    /// A ready rustls configuration (client certificates, resumption, a certificate resolver...).
    /// Its ALPN list, if any, should offer `http/1.1`.
    pub fn from_server_config(config: Arc<rustls::ServerConfig>) -> Self {
        TlsConfig {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

fn tls_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Tls(e.into())
}
