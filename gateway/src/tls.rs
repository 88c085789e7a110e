//! TLS termination on the data plane (rustls, ring): TLS 1.2 and 1.3 only, ALPN `h2` and
//! `http/1.1`. The certificate and key files are re-read when they change (and on reload); new
//! connections get the new certificate, open ones keep theirs — nothing is dropped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

pub struct Tls {
    paths: Mutex<TlsConfig>,
    /// The files' bytes the current config was built from.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
    current: ArcSwap<ServerConfig>,
}

/// Builds a rustls server config from PEM bytes.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the cert file (expected PEM)".into());
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("cannot read the private key: {e}"))?
        .ok_or("no private key in the key file (expected PEM)")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn read(paths: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = std::fs::read(&paths.cert)
        .map_err(|e| format!("cannot read {}: {e}", paths.cert.display()))?;
    let key = std::fs::read(&paths.key)
        .map_err(|e| format!("cannot read {}: {e}", paths.key.display()))?;
    Ok((cert, key))
}

impl Tls {
    pub fn load(paths: &TlsConfig) -> Result<Self, String> {
        let (cert, key) = read(paths)?;
        let cfg = server_config(&cert, &key)?;
        Ok(Self {
            paths: Mutex::new(paths.clone()),
            loaded: Mutex::new((cert, key)),
            current: ArcSwap::from_pointee(cfg),
        })
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files (from new paths, after a reload); swaps in a new certificate when they
    /// changed and are valid. Returns whether it changed; a bad file keeps the old certificate.
    pub fn refresh(&self, new_paths: Option<&TlsConfig>) -> Result<bool, String> {
        let paths = {
            let mut p = self.paths.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = new_paths {
                *p = n.clone();
            }
            p.clone()
        };
        let (cert, key) = read(&paths)?;
        {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            if loaded.0 == cert && loaded.1 == key {
                return Ok(false);
            }
        }
        let cfg = server_config(&cert, &key)?;
        self.current.store(Arc::new(cfg));
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = (cert, key);
        tracing::info!(cert = %paths.cert.display(), "TLS certificate reloaded");
        Ok(true)
    }
}

/// Checks the files at config time, so `check-config` and reloads report a bad certificate.
pub fn check(paths: &TlsConfig) -> Result<(), String> {
    let (cert, key) = read(paths)?;
    server_config(&cert, &key).map(|_| ())
}

pub fn paths(cert: &str, key: &str) -> TlsConfig {
    TlsConfig {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    }
}
