//! TLS for the api: a certificate chain and its private key from PEM files, read again when
//! either changes (a renewed certificate is served to new connections without a restart).
//!
//! The crypto provider is named here (aws-lc-rs) rather than taken from the process default:
//! with the AWS SDK, lapin and sqlx in one build, rustls has two providers compiled in and
//! would panic on first use without one installed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{Error, Result};
use crate::reload::Stamp;

/// Where the api's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate being served, swapped when the files change.
#[derive(Debug)]
pub(crate) struct Certificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: std::sync::Mutex<Stamp>,
}

impl Certificate {
    pub fn open(files: &TlsFiles) -> Result<Arc<Certificate>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamp = Stamp::of(&[&files.cert, &files.key]);
        let key = load(files, &provider)?;
        Ok(Arc::new(Certificate {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// The server configuration that serves this certificate (HTTP/1.1 only).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files again if they changed. Files that do not read (half written, a key that
    /// does not match) leave the served certificate as it was, and say why.
    pub fn reload_if_changed(&self) -> Option<Result<()>> {
        let stamp = Stamp::of(&[&self.files.cert, &self.files.key]);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == stamp {
                return None;
            }
            *last = stamp;
        }
        Some(load(&self.files, &self.provider).map(|key| {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        }))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let bad = |path: &Path, what: String| Error::Config(format!("TLS {}: {what}", path.display()));
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad(&files.cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            &files.cert,
            "no certificate in the file (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        bad(
            &files.key,
            format!("{e} (expected a PEM private key: PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        Error::Config(format!(
            "TLS: the key {} does not go with the certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })
}
