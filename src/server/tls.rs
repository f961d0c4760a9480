//! TLS on the main listener (rustls): HTTP/2 or HTTP/1.1 by ALPN, the
//! certificate and key read from PEM files and read again on SIGHUP or
//! when either file changes, without dropping a connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are checked for changes.
const POLL: Duration = Duration::from_secs(5);

/// The server's TLS settings, replaceable while serving.
#[derive(Clone)]
pub struct Tls {
    config: Arc<RwLock<Arc<ServerConfig>>>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

fn build(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("TLS_CERT {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("TLS_CERT {} holds no certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("TLS_KEY {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("TLS_CERT and TLS_KEY do not make a pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Tls {
    /// Reads the certificate chain and private key (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Ok(Self { config: Arc::new(RwLock::new(build(cert, key)?)), cert: cert.to_owned(), key: key.to_owned() })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; on failure the current settings stay.
    pub fn reload(&self) {
        match build(&self.cert, &self.key) {
            Ok(config) => {
                *self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = config;
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %e, "cannot reload the TLS certificate; the previous one stays"),
        }
    }

    /// Reloads on SIGHUP, or when either file's modification time changes.
    pub async fn watch(self) {
        #[cfg(unix)]
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = (modified(&self.cert), modified(&self.key));
        let mut ticks = tokio::time::interval(POLL);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = hangup => self.reload(),
                _ = ticks.tick() => {
                    let now = (modified(&self.cert), modified(&self.key));
                    if now != seen {
                        seen = now;
                        self.reload();
                    }
                }
            }
        }
    }
}
