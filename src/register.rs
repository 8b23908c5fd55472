//! `calmplane register`: apply the webhook configuration to the current
//! cluster with server-side apply; with `--admission-policies`, the exported
//! MutatingAdmissionPolicies and their bindings too
//! ([`register_admission_policies`]).
//!
//! Server-side apply (field manager `calmplane`) rather than create-or-replace:
//! the apiserver merges our fields with everyone else's, so running it again
//! after a certificate rotation changes exactly the caBundle, and fields other
//! managers own (cert-manager's cainjector writing caBundle, an operator's
//! labels) are left alone. Fields we set that another manager owns with a
//! different value are a conflict, reported as such unless `force` is set.
//!
//! The body is the untyped [`crate::manifests`] value, sent as is: a typed
//! round-trip could drop fields the generated types do not know.

use crate::admission_policy::{self, Export};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

/// The field manager calmplane applies as.
pub const FIELD_MANAGER: &str = "calmplane";

/// How `register` applies; the default is a plain apply that reports conflicts.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterOptions {
    /// Take over fields another field manager owns (`force=true`).
    pub force: bool,
    /// Validate and admit on the server, persist nothing (`dryRun=All`).
    pub dry_run: bool,
}

/// Why `register` did not apply the configuration.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// An object has no name, and server-side apply needs one.
    #[error("the {kind} has no metadata.name")]
    NoName {
        /// The object's kind.
        kind: String,
    },
    /// The apiserver answered 409: another field manager owns some of our
    /// fields with different values. Kept apart from [`Self::Apply`] so the
    /// message can say how to look and how to force.
    #[error("{kind} {name}: {message}; another field manager owns these fields with different values (see `kubectl get {kind} {name} --show-managed-fields -o yaml`); re-run with --force to take them over")]
    Conflict {
        /// The object's kind, for the `kubectl` hint.
        kind: String,
        /// The object's name, for the `kubectl` hint.
        name: String,
        /// The apiserver's message, which lists the conflicting fields and managers.
        message: String,
    },
    /// Any other failure: no cluster, no permission, a rejected field, a
    /// cluster older than 1.36 that has no MutatingAdmissionPolicy.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// kube's error, with the apiserver's status when there is one.
        source: kube::Error,
    },
}

/// The patch parameters `register` sends.
pub fn patch_params(opts: RegisterOptions) -> PatchParams {
    // Strict: a field the apiserver does not know is an error, not silently
    // dropped from a safety-relevant object.
    let mut params = PatchParams::apply(FIELD_MANAGER).validation_strict();
    params.force = opts.force;
    params.dry_run = opts.dry_run;
    params
}

/// Server-side apply `config` (a MutatingWebhookConfiguration, normally from
/// [`crate::manifests::webhook_configuration`]) and return what the
/// apiserver stored.
pub async fn register(
    client: kube::Client,
    config: &Value,
    opts: RegisterOptions,
) -> Result<MutatingWebhookConfiguration, RegisterError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    apply(&api, "MutatingWebhookConfiguration", config, opts).await
}

/// What [`register_admission_policies`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// The names of the policies and bindings applied.
    pub applied: Vec<String>,
    /// The names of the ones deleted: exported by an earlier `register`, no
    /// longer by this policy file (a policy disabled or put in report mode).
    pub deleted: Vec<String>,
}

/// The API resource of an exported object's kind.
fn admission_resource(kind: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    ApiResource::from_gvk(&gvk)
}

/// Server-side apply the exported policies and bindings, then delete the
/// ones an earlier `register` applied that `export` no longer holds, so
/// that a policy taken out of the file stops running in the apiserver too.
/// Bindings are deleted before their policies: a binding without its policy
/// is ignored, a policy without a binding does nothing.
pub async fn register_admission_policies(
    client: kube::Client,
    export: &Export,
    opts: RegisterOptions,
) -> Result<Applied, RegisterError> {
    let mut applied = Applied::default();
    for object in &export.objects {
        let kind = object["kind"].as_str().unwrap_or("?");
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &admission_resource(kind));
        let stored = apply(&api, kind, object, opts).await?;
        applied.applied.push(format!(
            "{kind}/{}",
            stored.metadata.name.unwrap_or_default()
        ));
    }
    let selector = format!(
        "app.kubernetes.io/name=calmplane,app.kubernetes.io/component={}",
        admission_policy::COMPONENT
    );
    for kind in ["MutatingAdmissionPolicyBinding", "MutatingAdmissionPolicy"] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &admission_resource(kind));
        let failed = |source| RegisterError::Apply {
            kind: kind.to_string(),
            name: selector.clone(),
            source,
        };
        let listed = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(failed)?;
        for stale in listed.items {
            let name = stale.metadata.name.unwrap_or_default();
            let current = export
                .objects
                .iter()
                .any(|o| o["kind"] == kind && o["metadata"]["name"] == name.as_str());
            if current {
                continue;
            }
            let params = DeleteParams {
                dry_run: opts.dry_run,
                ..DeleteParams::default()
            };
            api.delete(&name, &params).await.map_err(failed)?;
            applied.deleted.push(format!("{kind}/{name}"));
        }
    }
    Ok(applied)
}

async fn apply<K>(
    api: &Api<K>,
    kind: &str,
    object: &Value,
    opts: RegisterOptions,
) -> Result<K, RegisterError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| RegisterError::NoName {
            kind: kind.to_string(),
        })?;
    api.patch(name, &patch_params(opts), &Patch::Apply(object))
        .await
        .map_err(|source| match source {
            kube::Error::Api(status) if status.code == 409 => RegisterError::Conflict {
                kind: kind.to_string(),
                name: name.to_string(),
                message: status.message,
            },
            source => RegisterError::Apply {
                kind: kind.to_string(),
                name: name.to_string(),
                source,
            },
        })
}
