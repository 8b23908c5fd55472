//! The overlays render with `kubectl kustomize`.

use super::*;

/// `kubectl kustomize dir`, parsed.
pub(crate) fn kustomize(kubectl: &Path, dir: &Path) -> (String, Vec<Value>) {
    let out = run(Command::new(kubectl).arg("kustomize").arg(dir));
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let docs = yaml_docs(&text);
    (text, docs)
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Generated inputs of the static overlay, as the README has them made.
pub(crate) struct StaticCerts {
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) tls_crt: Vec<u8>,
    pub(crate) tls_key: Vec<u8>,
}

/// A temp copy of manifests/ whose static overlay has its generated files,
/// made with the CLI exactly as the README says.
pub(crate) fn static_overlay_copy() -> (tempfile::TempDir, PathBuf, StaticCerts) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("manifests");
    copy_dir(&manifests_dir(), &root);
    let overlay = root.join("overlays/static");
    let certs = overlay.join("certs");
    let _ = std::fs::remove_dir_all(&certs);
    run(calmplane().arg("certs").arg("--out").arg(&certs));
    let out = run(calmplane()
        .arg("manifests")
        .arg("--ca-bundle")
        .arg(certs.join("ca.crt")));
    std::fs::write(overlay.join("webhook.generated.yaml"), out.stdout).expect("write patch");
    let read = |f: &str| std::fs::read(certs.join(f)).expect("generated cert file");
    let generated = StaticCerts {
        ca_pem: read("ca.crt"),
        tls_crt: read("tls.crt"),
        tls_key: read("tls.key"),
    };
    (tmp, overlay, generated)
}

/// The base and both overlays rendered, or `None` without kubectl.
pub(crate) struct Rendered {
    pub(crate) base: Vec<Value>,
    pub(crate) cert_manager: Vec<Value>,
    pub(crate) static_: Vec<Value>,
    pub(crate) static_certs: StaticCerts,
    pub(crate) texts: Vec<(&'static str, String)>,
}

pub(crate) fn render_all(test: &str) -> Option<Rendered> {
    let kubectl = kubectl(test)?;
    let (base_text, base) = kustomize(&kubectl, &manifests_dir().join("base"));
    let (cm_text, cert_manager) =
        kustomize(&kubectl, &manifests_dir().join("overlays/cert-manager"));
    let (_tmp, overlay, static_certs) = static_overlay_copy();
    let (static_text, static_) = kustomize(&kubectl, &overlay);
    Some(Rendered {
        base,
        cert_manager,
        static_,
        static_certs,
        texts: vec![
            ("base", base_text),
            ("cert-manager", cm_text),
            ("static", static_text),
        ],
    })
}

pub(crate) fn base_file(name: &str) -> Vec<Value> {
    read_docs(&manifests_dir().join("base").join(name))
}
