//! `calmplane register`: apply the webhook configuration to the current
//! cluster with server-side apply.
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

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
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
    /// The configuration has no name, and server-side apply needs one.
    #[error("the webhook configuration has no metadata.name")]
    NoName,
    /// The apiserver answered 409: another field manager owns some of our
    /// fields with different values. Kept apart from [`Self::Apply`] so the
    /// message can say how to look and how to force.
    #[error("MutatingWebhookConfiguration {name}: {message}; another field manager owns these fields with different values (see `kubectl get mutatingwebhookconfiguration {name} --show-managed-fields -o yaml`); re-run with --force to take them over")]
    Conflict {
        /// The configuration's name, for the `kubectl` hint.
        name: String,
        /// The apiserver's message, which lists the conflicting fields and managers.
        message: String,
    },
    /// Any other failure: no cluster, no permission, a rejected field.
    #[error("applying MutatingWebhookConfiguration {name}: {source}")]
    Apply {
        /// The configuration's name.
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
    let name = config
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or(RegisterError::NoName)?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    api.patch(name, &patch_params(opts), &Patch::Apply(config))
        .await
        .map_err(|source| match source {
            kube::Error::Api(status) if status.code == 409 => RegisterError::Conflict {
                name: name.to_string(),
                message: status.message,
            },
            source => RegisterError::Apply {
                name: name.to_string(),
                source,
            },
        })
}
