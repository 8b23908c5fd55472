//! TLS configuration that follows the files on disk.
//!
//! Kubernetes updates a mounted Secret in one of two ways: the kubelet swaps
//! the `..data` symlink atomically (Secret volumes), or a tool rewrites the
//! files in place (hostPath, some CSI drivers). Both are seen by re-reading
//! the files through their paths every `interval` and comparing the bytes.
//!
//! A new pair is only taken when it is complete and valid: the chain parses,
//! the key parses and matches the leaf. Anything else (a half-written file, a
//! key from the next rotation next to the old certificate) keeps the current
//! config, is logged, and is counted in `calmplane_tls_reloads_total{result="error"}`.
//! The same bytes are not retried until they change again.
//!
//! Each accepted connection takes the config current at that moment, so new
//! handshakes get the new certificate and open connections keep theirs.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the files on disk are not a usable TLS config. At start this stops the
/// server; on reload the current config stays.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read; during a rotation often only for a moment.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` block (empty or half-written).
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// A PEM file (certificate or key) does not parse.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// The parser's complaint.
        message: String,
    },
    /// Both files parse but rustls refuses them together, e.g. a key from the
    /// next rotation next to the old certificate.
    #[error("certificate and key do not form a valid pair: {0}")]
    Pair(rustls::Error),
    /// The client CA file does not make a usable trust root for mTLS.
    #[error("client CA {path}: {message}")]
    ClientCa {
        /// The file.
        path: String,
        /// What rustls or the parser said.
        message: String,
    },
}

/// Where the serving certificate, its key and the optional client CA live.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsPaths {
    /// PEM certificate chain (leaf first).
    #[arg(long, env = "CALMPLANE_CERT", default_value = "certs/tls.crt")]
    pub cert: PathBuf,
    /// PEM private key.
    #[arg(long, env = "CALMPLANE_KEY", default_value = "certs/tls.key")]
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS). When set,
    /// clients must present a certificate signed by it.
    #[arg(long, env = "CALMPLANE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
}

/// The current TLS config, swapped atomically when the files change, so a
/// handshake never waits on a reload.
pub struct TlsStore {
    paths: TlsPaths,
    current: ArcSwap<ServerConfig>,
    /// The bytes behind the last load attempt, good or bad.
    seen: Mutex<Vec<Vec<u8>>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl TlsStore {
    /// Load the files once; fails when they are not a valid pair.
    pub fn load(paths: TlsPaths) -> Result<TlsStore, TlsError> {
        let files = read_all(&paths)?;
        let config = build(&paths, &files)?;
        Ok(TlsStore {
            paths,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(files),
        })
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-read the files; swap in a new config if they changed and are valid.
    /// Returns `None` when nothing changed.
    pub fn reload(&self) -> Option<Result<(), TlsError>> {
        let files = match read_all(&self.paths) {
            Ok(files) => files,
            // A file missing for a moment during a swap: try again next tick.
            Err(e) => return Some(Err(e)),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == files {
            return None;
        }
        *seen = files;
        match build(&self.paths, &seen) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Poll the files every `interval` until the task is dropped.
    pub fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                let store = self.clone();
                let result = tokio::task::spawn_blocking(move || store.reload())
                    .await
                    .ok()
                    .flatten();
                match result {
                    // The files are readable and unchanged.
                    None => last_error = None,
                    Some(Ok(())) => {
                        last_error = None;
                        metrics.tls_reloads.with_label_values(&["success"]).inc();
                        tracing::info!(cert = %self.paths.cert.display(), "reloaded TLS certificate");
                    }
                    Some(Err(e)) => {
                        let message = e.to_string();
                        // A missing file during a swap repeats every tick; say it once.
                        // Any other error comes from bytes not tried before: a new
                        // attempt, counted even when its message matches the last one.
                        let repeated = matches!(e, TlsError::Read { .. })
                            && last_error.as_deref() == Some(&message);
                        if !repeated {
                            metrics.tls_reloads.with_label_values(&["error"]).inc();
                            tracing::warn!(error = %message, "TLS reload failed; still serving the previous certificate");
                        }
                        last_error = Some(message);
                    }
                }
            }
        })
    }
}

fn read_all(paths: &TlsPaths) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut files = vec![read(&paths.cert)?, read(&paths.key)?];
    if let Some(ca) = &paths.client_ca {
        files.push(read(ca)?);
    }
    Ok(files)
}

fn build(paths: &TlsPaths, files: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
    let cert_path = paths.cert.display().to_string();
    let chain = parse_certs(&files[0], &cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| TlsError::Pem {
        path: paths.key.display().to_string(),
        message: format!("no usable private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Pair)?;
    let builder = match (&paths.client_ca, files.get(2)) {
        (Some(ca_path), Some(ca_bytes)) => {
            let ca_shown = ca_path.display().to_string();
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(ca_bytes, &ca_shown)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca_shown.clone(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca_shown,
                    message: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn parse_certs(bytes: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_string(),
        });
    }
    Ok(certs)
}
