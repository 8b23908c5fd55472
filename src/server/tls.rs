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
//!
//! The leaf's validity is read on every load: its expiry is exported as
//! `calmplane_tls_certificate_expiry_timestamp_seconds`, and a certificate
//! that is expired or not yet valid is served (the apiserver decides) but
//! logged at `warn`, since every call the apiserver makes would then fail
//! its handshake and fail open.
//!
//! With `--client-ca`, a client certificate is *asked for* on every
//! connection but not required by TLS: the kubelet's HTTPS probes carry
//! none, and a pod whose probes fail never turns Ready. The admission paths
//! then refuse a connection without one ([`ClientCheck`]), and
//! `--client-subject` narrows which certificates they accept.

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
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
    /// Require client certificates signed by this CA (mTLS) on /mutate,
    /// /report and /preview. /healthz and /readyz stay open, for the
    /// kubelet's probes, which carry no certificate.
    #[arg(long, env = "CALMPLANE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca, accept only client certificates whose subject
    /// common name or a DNS name is one of these (repeat, or comma-separate).
    /// Any certificate the CA signed when empty.
    #[arg(
        long = "client-subject",
        env = "CALMPLANE_CLIENT_SUBJECTS",
        value_delimiter = ',',
        requires = "client_ca"
    )]
    pub client_subjects: Vec<String>,
}

/// The current TLS config, swapped atomically when the files change, so a
/// handshake never waits on a reload.
pub struct TlsStore {
    paths: TlsPaths,
    current: ArcSwap<ServerConfig>,
    /// The bytes behind the last load attempt, good or bad.
    seen: Mutex<Vec<Vec<u8>>>,
    /// notAfter of the leaf being served, Unix seconds: the expiry gauge
    /// reads it, so a rotation moves it.
    not_after: AtomicI64,
}

/// When a certificate is valid, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

impl Validity {
    /// Why this certificate cannot be served successfully at `now`, if it cannot.
    pub fn problem(&self, now: i64) -> Option<&'static str> {
        if now > self.not_after {
            Some("the certificate has expired: every handshake will fail and the apiserver will fail open")
        } else if now < self.not_before {
            Some("the certificate is not valid yet (notBefore is in the future; clock skew?): handshakes will fail")
        } else {
            None
        }
    }
}

/// Why a connection may not use the admission paths, under `--client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCheck {
    /// No client certificate was sent.
    Missing,
    /// A certificate the CA signed, but for a subject not in `--client-subject`.
    Subject(String),
}

impl std::fmt::Display for ClientCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCheck::Missing => f.write_str(
                "this endpoint needs a client certificate signed by calmplane's --client-ca",
            ),
            ClientCheck::Subject(name) => write!(
                f,
                "client certificate {} is not one of --client-subject",
                crate::clip::Clipped(name)
            ),
        }
    }
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
        let (config, validity) = build(&paths, &files)?;
        warn_if_unusable(&paths, validity);
        Ok(TlsStore {
            paths,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(files),
            not_after: AtomicI64::new(validity.not_after),
        })
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// notAfter of the certificate being served, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Whether `--client-ca` is set, so that the admission paths check
    /// every connection with [`TlsStore::check_client`].
    pub fn checks_clients(&self) -> bool {
        self.paths.client_ca.is_some()
    }

    /// Whether a connection whose client sent `peer` (already verified
    /// against the client CA by rustls, or `None`) may use the admission paths.
    pub fn check_client(&self, peer: Option<&[CertificateDer<'_>]>) -> Result<(), ClientCheck> {
        let Some(leaf) = peer.and_then(<[_]>::first) else {
            return Err(ClientCheck::Missing);
        };
        let allowed = &self.paths.client_subjects;
        if allowed.is_empty() {
            return Ok(());
        }
        let names = subject_names(leaf);
        if names.iter().any(|n| allowed.contains(n)) {
            return Ok(());
        }
        Err(ClientCheck::Subject(
            names.into_iter().next().unwrap_or_default(),
        ))
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
            Ok((config, validity)) => {
                warn_if_unusable(&self.paths, validity);
                self.current.store(Arc::new(config));
                self.not_after.store(validity.not_after, Ordering::Relaxed);
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
                        metrics.tls_expiry.set(self.not_after() as f64);
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

/// Seconds since the Unix epoch on the wall clock; 0 before 1970.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn warn_if_unusable(paths: &TlsPaths, validity: Validity) {
    if let Some(problem) = validity.problem(now_unix()) {
        tracing::warn!(
            cert = %paths.cert.display(),
            not_before = validity.not_before,
            not_after = validity.not_after,
            "{problem}"
        );
    }
}

/// The validity period of a certificate, read with x509-parser (rustls does
/// not expose it).
pub fn validity(cert: &CertificateDer<'_>) -> Option<Validity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let v = parsed.validity();
    Some(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// The subject common names, then the DNS names, of a certificate.
fn subject_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        names.extend(san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        }));
    }
    names
}

fn build(paths: &TlsPaths, files: &[Vec<u8>]) -> Result<(ServerConfig, Validity), TlsError> {
    let cert_path = paths.cert.display().to_string();
    let chain = parse_certs(&files[0], &cert_path)?;
    // parse_certs has checked that every certificate parses as X.509.
    let validity = validity(&chain[0]).ok_or_else(|| TlsError::Pem {
        path: cert_path.clone(),
        message: "the leaf certificate has no readable validity period".into(),
    })?;
    let key_path = paths.key.display().to_string();
    check_pem_framing(&files[1]).map_err(|message| TlsError::Pem {
        path: key_path.clone(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| TlsError::Pem {
        path: key_path,
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
            // Asked for, verified when sent, but not required by TLS: the
            // admission paths require it (see the module docs).
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
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
    Ok((config, validity))
}

fn parse_certs(bytes: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem {
        path: path.to_string(),
        message,
    };
    check_pem_framing(bytes).map_err(pem_error)?;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_string(),
        });
    }
    // rustls only looks inside the leaf (to match it with the key): an
    // intermediate cut short but still valid base64 would be sent to every
    // client as is. Each certificate must at least parse as X.509.
    for (i, cert) in certs.iter().enumerate() {
        webpki::EndEntityCert::try_from(cert).map_err(|e| {
            pem_error(format!(
                "certificate {} of {} is not a valid X.509 certificate ({e:?}); truncated or garbled?",
                i + 1,
                certs.len()
            ))
        })?;
    }
    Ok(certs)
}

enum Marker<'a> {
    Begin(&'a [u8]),
    End(&'a [u8]),
}

/// `-----BEGIN LABEL-----` or `-----END LABEL-----`, whole.
fn pem_marker(line: &[u8]) -> Option<Marker<'_>> {
    let inner = line.strip_prefix(b"-----")?.strip_suffix(b"-----")?;
    if let Some(label) = inner.strip_prefix(b"BEGIN ") {
        Some(Marker::Begin(label))
    } else {
        inner.strip_prefix(b"END ").map(Marker::End)
    }
}

/// Refuse a PEM file whose blocks are not all whole.
///
/// The PEM reader skips any line it does not recognise as a marker, so a file
/// cut off in the middle of a `-----BEGIN` line, or whose `-----END` line is
/// broken, can still yield the blocks before it: a certificate file caught
/// half-written (cut right after the leaf) would be taken as a leaf-only
/// chain. Text outside the blocks (RFC 7468 explanatory text, as `openssl`
/// writes) is allowed, but every line that starts with a dash must be a whole
/// marker, markers must pair up, and a block must end before the file does.
fn check_pem_framing(bytes: &[u8]) -> Result<(), String> {
    let mut open: Option<(&[u8], usize)> = None;
    let mut lines = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        lines = n;
        let line = raw.trim_ascii_end();
        if line.first() == Some(&b'-') {
            match (pem_marker(line), open) {
                (Some(Marker::Begin(label)), None) => open = Some((label, n)),
                (Some(Marker::End(label)), Some((open_label, _))) if label == open_label => {
                    open = None
                }
                (Some(Marker::Begin(_)), Some((_, start))) => {
                    return Err(format!(
                        "line {n}: a new PEM block starts before the one from line {start} ended"
                    ))
                }
                (Some(Marker::End(_)), Some((label, start))) => {
                    return Err(format!(
                        "line {n}: does not end the {} block from line {start}",
                        String::from_utf8_lossy(label)
                    ))
                }
                (Some(Marker::End(_)), None) => {
                    return Err(format!("line {n}: a PEM end marker with no block open"))
                }
                (None, _) => {
                    return Err(format!(
                        "line {n}: broken PEM marker {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(64)])
                    ))
                }
            }
        } else if open.is_some()
            && !line
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        {
            return Err(format!("line {n}: not base64 inside a PEM block"));
        }
    }
    match open {
        Some((label, start)) => Err(format!(
            "the {} block from line {start} is not ended by line {lines}: the file is truncated",
            String::from_utf8_lossy(label)
        )),
        None => Ok(()),
    }
}
