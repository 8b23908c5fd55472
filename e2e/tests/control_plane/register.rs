//! `calmplane register --url` against the real apiserver (c8): the
//! configuration it applies is the one the apiserver calls calmplane
//! through, `--dry-run` stores nothing and a second run writes nothing.

use crate::Env;
use anyhow::{ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED};
use kube::Api;

/// `calmplane register --url` against the real apiserver: it creates the
/// configuration by server-side apply (field manager `calmplane`), the
/// apiserver then calls calmplane through it; `--dry-run` with another CA
/// stores nothing, and a second run changes nothing.
pub(crate) async fn c8_register(env: &Env) -> Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: Api<MutatingWebhookConfiguration> = Api::all(env.client());
    api.delete("calmplane", &Default::default()).await?;
    let (url, ca_bundle, other_ca) = {
        let calmplane = env.calmplane.lock().await;
        let other = calmplane.generate("gen-register-dry-run")?;
        (calmplane.url(), calmplane.ca_bundle(), other.join("ca.crt"))
    };
    env.register(&ca_bundle, &[]).await?;
    let stored = api.get("calmplane").await?;
    let v = serde_json::to_value(&stored)?;
    use base64::Engine as _;
    let want_ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&ca_bundle)?);
    for w in v["webhooks"].as_array().context("webhooks")? {
        // Each webhook keeps its own path: /mutate, or /report for report mode.
        let path = if w["name"].as_str().unwrap_or_default().contains("-report.") {
            "/report"
        } else {
            "/mutate"
        };
        ensure!(
            w["clientConfig"]["url"] == format!("{url}{path}"),
            "clientConfig {}",
            w["clientConfig"]
        );
        ensure!(w["clientConfig"].get("service").is_none());
        ensure!(
            w["clientConfig"]["caBundle"] == want_ca.as_str(),
            "caBundle is not calmplane's CA"
        );
    }
    let managers: Vec<(&str, &str)> = v["metadata"]["managedFields"]
        .as_array()
        .context("managedFields")?
        .iter()
        .filter_map(|m| Some((m["manager"].as_str()?, m["operation"].as_str()?)))
        .collect();
    ensure!(
        managers == [("calmplane", "Apply")],
        "managers {managers:?}"
    );
    let version = stored.metadata.resource_version.clone();
    let ns = env.namespace("c8", &[(ENABLED, enabled::WEBHOOK)]).await?;
    env.wait_mutating(&ns)
        .await
        .context("through the registered configuration")?;

    let said = env.register(&other_ca, &["--dry-run".as_ref()]).await?;
    ensure!(said.contains("dry run"), "--dry-run said: {said}");
    let after = api.get("calmplane").await?;
    ensure!(
        after.metadata.resource_version == version,
        "--dry-run stored a change"
    );
    let v = serde_json::to_value(&after)?;
    ensure!(
        v["webhooks"][0]["clientConfig"]["caBundle"] == want_ca.as_str(),
        "--dry-run changed the caBundle"
    );

    env.register(&ca_bundle, &[]).await?;
    let again = api.get("calmplane").await?;
    ensure!(
        again.metadata.resource_version == version,
        "a second run wrote the configuration again"
    );
    Ok(())
}
