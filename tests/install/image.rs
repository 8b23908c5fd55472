//! One image everywhere, and the documented override applies.

use super::*;

/// Every container image in `docs`.
pub(crate) fn images(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["image"].as_str().expect("image is a string").to_string())
        .collect()
}

/// The `images:` example in the README, as a kustomize list.
pub(crate) fn readme_images_example() -> Value {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.trim_start().starts_with("images:"))
        .expect("the README documents a kustomize `images:` override");
    calmplane::yaml::from_str::<Value>(block).expect("the README's images: block is YAML")["images"]
        .clone()
}

#[test]
fn the_image_is_the_same_everywhere_and_the_documented_override_applies() {
    let (name, tag) = calmplane::manifests::IMAGE
        .rsplit_once(':')
        .expect("image has a tag");
    assert_eq!(name, calmplane::manifests::IMAGE_NAME);
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the tag is the release");
    assert!(
        name.split('/')
            .next()
            .is_some_and(|host| host.contains('.')),
        "the image names a registry host: {name}"
    );
    assert_eq!(
        images(&base_file("deployment.yaml")),
        vec![calmplane::manifests::IMAGE.to_string()]
    );
    // Every Deployment in every file under manifests/, the optional
    // monitoring kustomization included: its lease monitor is the same binary
    // (`calmplane lease-monitor`), so an image of its own could only be a
    // name that does not exist or a version that does not match.
    let mut everywhere = Vec::new();
    for file in yaml_files(&manifests_dir()) {
        for image in images(&read_docs(&file)) {
            everywhere.push((file.display().to_string(), image));
        }
    }
    assert!(
        everywhere
            .iter()
            .any(|(f, _)| f.ends_with("monitoring/lease-monitor.yaml")),
        "the lease monitor's Deployment is among the files: {everywhere:?}"
    );
    for (file, image) in &everywhere {
        assert_eq!(image, calmplane::manifests::IMAGE, "{file}");
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!(
            "docker build -t {} .",
            calmplane::manifests::IMAGE
        )),
        "the Dockerfile's build line tags the image the manifests pull"
    );
    let example = readme_images_example();
    assert_eq!(
        example[0]["name"], name,
        "the README's override must match the manifests' image name, or kustomize ignores it"
    );

    let Some(rendered) = render_all("the_image_is_the_same_everywhere") else {
        return;
    };
    let kubectl = kubectl("the_image_is_the_same_everywhere").expect("kubectl");
    let (_, monitoring) = kustomize(&kubectl, &manifests_dir().join("monitoring"));
    for (overlay, docs) in [
        ("base", &rendered.base),
        ("cert-manager", &rendered.cert_manager),
        ("static", &rendered.static_),
        ("monitoring", &monitoring),
    ] {
        assert_eq!(
            images(docs),
            vec![calmplane::manifests::IMAGE.to_string()],
            "{overlay}"
        );
    }
    // The README's override, applied on top of each overlay and of the
    // monitoring kustomization (applied on its own, so it needs the same
    // override), changes the image.
    let (_tmp, static_overlay, _) = static_overlay_copy();
    let manifests = static_overlay
        .parent()
        .and_then(Path::parent)
        .expect("copy root");
    let want = format!(
        "{}:{}",
        example[0]["newName"].as_str().expect("newName"),
        example[0]["newTag"].as_str().expect("newTag")
    );
    for (overlay, resource) in [
        ("cert-manager", "../cert-manager"),
        ("static", "../static"),
        ("monitoring", "../../monitoring"),
    ] {
        let dir = manifests
            .join("overlays")
            .join(format!("{overlay}-custom-image"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [resource],
            "images": example,
        });
        std::fs::write(
            dir.join("kustomization.yaml"),
            calmplane::yaml::to_string(&kustomization).expect("yaml"),
        )
        .expect("write kustomization");
        let (_, docs) = kustomize(&kubectl, &dir);
        assert_eq!(
            images(&docs),
            vec![want.clone()],
            "{overlay} with the README's override"
        );
    }
}
