//! Certificates for one run of the control plane: a CA, the apiserver's
//! serving certificate, an admin client certificate (group `system:masters`,
//! so RBAC lets the tests and the controller-manager do anything) and the
//! service-account signing key. Everything is fresh per run and lives in the
//! run's temp dir.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Paths of the files [`write`] created.
pub struct Pki {
    /// CA of the apiserver's serving certificate and of client certificates.
    pub ca: PathBuf,
    /// The apiserver's serving certificate (127.0.0.1, localhost, kubernetes).
    pub apiserver_cert: PathBuf,
    /// Its key.
    pub apiserver_key: PathBuf,
    /// Admin client certificate (O=system:masters).
    pub admin_cert: PathBuf,
    /// Its key.
    pub admin_key: PathBuf,
    /// Service-account token signing key (private).
    pub sa_key: PathBuf,
    /// Service-account token verification key (public).
    pub sa_pub: PathBuf,
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(2);
}

/// Generate and write the run's certificates into `dir`.
pub fn write(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = dn("calmplane-e2e CA", None);
    validity(&mut ca_params);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf = |names: Vec<String>, cn: &str, org: Option<&str>, eku| -> Result<(String, String)> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = dn(cn, org);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![eku];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (apiserver_cert, apiserver_key) = leaf(
        [
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.96.0.1",
        ]
        .map(String::from)
        .to_vec(),
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (admin_cert, admin_key) = leaf(
        Vec::new(),
        "calmplane-e2e-admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let sa = KeyPair::generate()?;

    let pki = Pki {
        ca: dir.join("ca.crt"),
        apiserver_cert: dir.join("apiserver.crt"),
        apiserver_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    for (path, contents) in [
        (&pki.ca, ca.pem()),
        (&pki.apiserver_cert, apiserver_cert),
        (&pki.apiserver_key, apiserver_key),
        (&pki.admin_cert, admin_cert),
        (&pki.admin_key, admin_key),
        (&pki.sa_key, sa.serialize_pem()),
        (&pki.sa_pub, sa.public_key_pem()),
    ] {
        std::fs::write(path, contents)?;
    }
    Ok(pki)
}
