//! Certificates for one run of the control plane: a CA, the apiserver's
//! serving certificate, an admin client certificate (group `system:masters`,
//! so RBAC lets the tests and the controller-manager do anything), the
//! service-account signing key, and a second CA with the client certificate
//! the apiserver presents to webhooks (and one it does not). Everything is
//! fresh per run and lives in the run's temp dir.

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
    /// CA of the client certificate the apiserver presents to webhooks: what
    /// calmplane's `--client-ca` names. A CA of its own, not [`Pki::ca`]:
    /// calmplane lets in every certificate its `--client-ca` signed, and the
    /// cluster CA also signs the admin's certificate here (in a real cluster,
    /// every kubelet's and every approved `kube-apiserver-client` CSR's), so
    /// trusting it would leave `--client-subject` as the only filter. This
    /// one signs webhook client certificates and nothing else.
    pub webhook_client_ca: PathBuf,
    /// The apiserver's webhook client certificate, CN [`WEBHOOK_CLIENT_CN`]
    /// (the kubeconfig of its `--admission-control-config-file` presents it).
    pub webhook_client_cert: PathBuf,
    /// Its key.
    pub webhook_client_key: PathBuf,
    /// Another client certificate from [`Pki::webhook_client_ca`], CN
    /// [`OTHER_CLIENT_CN`]: the right CA with the wrong subject, which
    /// `--client-subject` must refuse.
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

/// Subject CN of the apiserver's webhook client certificate: what calmplane's
/// `--client-subject` names.
pub const WEBHOOK_CLIENT_CN: &str = "kube-apiserver-webhook-client";

/// Subject CN of [`Pki::other_client_cert`].
pub const OTHER_CLIENT_CN: &str = "calmplane-e2e-other-client";

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
    let ca = self_signed_ca("calmplane-e2e CA")?;
    let webhook_client_ca = self_signed_ca("calmplane-e2e webhook client CA")?;

    let (apiserver_cert, apiserver_key) = leaf(
        &ca,
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
        &ca,
        Vec::new(),
        "calmplane-e2e-admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let (webhook_client_cert, webhook_client_key) = leaf(
        &webhook_client_ca,
        Vec::new(),
        WEBHOOK_CLIENT_CN,
        None,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let (other_client_cert, other_client_key) = leaf(
        &webhook_client_ca,
        Vec::new(),
        OTHER_CLIENT_CN,
        None,
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
        webhook_client_ca: dir.join("webhook-client-ca.crt"),
        webhook_client_cert: dir.join("webhook-client.crt"),
        webhook_client_key: dir.join("webhook-client.key"),
        other_client_cert: dir.join("other-client.crt"),
        other_client_key: dir.join("other-client.key"),
    };
    for (path, contents) in [
        (&pki.ca, ca.pem()),
        (&pki.apiserver_cert, apiserver_cert),
        (&pki.apiserver_key, apiserver_key),
        (&pki.admin_cert, admin_cert),
        (&pki.admin_key, admin_key),
        (&pki.sa_key, sa.serialize_pem()),
        (&pki.sa_pub, sa.public_key_pem()),
        (&pki.webhook_client_ca, webhook_client_ca.pem()),
        (&pki.webhook_client_cert, webhook_client_cert),
        (&pki.webhook_client_key, webhook_client_key),
        (&pki.other_client_cert, other_client_cert),
        (&pki.other_client_key, other_client_key),
    ] {
        std::fs::write(path, contents)?;
    }
    Ok(pki)
}

fn self_signed_ca(cn: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name = dn(cn, None);
    validity(&mut params);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A leaf certificate for `names` signed by `issuer`, as (certificate PEM, key PEM).
fn leaf(
    issuer: &CertifiedIssuer<'_, KeyPair>,
    names: Vec<String>,
    cn: &str,
    org: Option<&str>,
    eku: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = dn(cn, org);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![eku];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}
