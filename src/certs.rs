//! Development certificates: a throwaway CA and a serving certificate it signs.
//!
//! The apiserver verifies the webhook's certificate against the `caBundle` of
//! the webhook configuration and the DNS name `<service>.<namespace>.svc`, so
//! the serving certificate carries that name as well as `localhost` and
//! `127.0.0.1` for local use. Generated with rcgen: no openssl CLI needed.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::Path;

/// Why `calmplane certs` could not produce its files.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or failed to make a key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file or the output directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory, so the user knows which one to fix.
        path: String,
        /// The OS error (permissions, missing parent, full disk).
        source: std::io::Error,
    },
}

/// PEM-encoded dev certificates.
pub struct DevCerts {
    /// The CA certificate: goes into the webhook configuration's `caBundle`
    /// so the apiserver trusts the serving certificate.
    pub ca_pem: String,
    /// The serving certificate the webhook presents (`tls.crt`).
    pub cert_pem: String,
    /// The serving certificate's private key (`tls.key`); written mode 0600.
    pub key_pem: String,
}

/// The names a serving certificate for `service` in `namespace` needs.
pub fn serving_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A fresh CA and a serving certificate for `names`, valid for a year.
pub fn generate(names: &[String]) -> Result<DevCerts, CertError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = name("calmplane dev CA");
    set_validity(&mut ca_params);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = name(names.first().map_or("calmplane", String::as_str));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(DevCerts {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clock skew between this machine and the apiserver.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
}

/// Write `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
pub fn write(dir: &Path, certs: &DevCerts) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    for (file, contents, private) in [
        ("ca.crt", &certs.ca_pem, false),
        ("tls.crt", &certs.cert_pem, false),
        ("tls.key", &certs.key_pem, true),
    ] {
        let path = dir.join(file);
        write_file(&path, contents, private).map_err(|source| CertError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path)?.write_all(contents.as_bytes())
}
