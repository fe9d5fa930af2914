//! TLS trust for git over HTTPS: the rustls client configuration, with the webpki roots,
//! the system's roots (or the CAs named by `SSL_CERT_FILE` / `SSL_CERT_DIR`, as
//! rustls-native-certs reads them) and an optional extra CA file. Built once per distinct
//! setting and shared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::error::GitError;

/// Bundles read in addition when `SSL_CERT_FILE`/`SSL_CERT_DIR` replace the system store
/// in rustls-native-certs: extra CAs are meant to add to the system's, not replace them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

type Key = (Option<PathBuf>, Option<String>, Option<String>);

/// The client configuration for `extra_ca_file` (plus the environment), cached.
pub(crate) fn client_config(
    extra_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, GitError> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<rustls::ClientConfig>>>> = OnceLock::new();
    let key: Key = (
        extra_ca_file.map(Path::to_path_buf),
        std::env::var("SSL_CERT_FILE").ok(),
        std::env::var("SSL_CERT_DIR").ok(),
    );
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(map) = cache.lock() {
        if let Some(cfg) = map.get(&key) {
            return Ok(cfg.clone());
        }
    }
    let cfg = Arc::new(build(extra_ca_file, key.1.is_some() || key.2.is_some())?);
    if let Ok(mut map) = cache.lock() {
        map.insert(key, cfg.clone());
    }
    Ok(cfg)
}

fn build(extra_ca_file: Option<&Path>, env_set: bool) -> Result<rustls::ClientConfig, GitError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "some system CA certificates could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if env_set {
        for bundle in SYSTEM_BUNDLES {
            if let Ok(certs) = read_pem_certs(Path::new(bundle)) {
                roots.add_parsable_certificates(certs);
            }
        }
    }
    if let Some(path) = extra_ca_file {
        let certs = read_pem_certs(path)?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(GitError::io(
                format!("reading the CA file {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("no usable PEM certificate in it ({ignored} ignored)"),
                ),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GitError::io("setting up TLS", std::io::Error::other(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, GitError> {
    let what = || format!("reading the CA file {}", path.display());
    let data = std::fs::read(path).map_err(|e| GitError::io(what(), e))?;
    CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            GitError::io(
                what(),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            )
        })
}
