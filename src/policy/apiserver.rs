//! What a policy is as a MutatingAdmissionPolicy: the CEL the apiserver runs
//! in-process (Kubernetes 1.36+) instead of calling calmplane.
//!
//! Each policy module answers [`super::Policy::in_apiserver`] with
//! [`InApiserver::Runs`] and its mutation, or [`InApiserver::Stays`] and
//! the reason it cannot be written in CEL. [`crate::admission_policy`] turns
//! the answers into `MutatingAdmissionPolicy` and
//! `MutatingAdmissionPolicyBinding` objects: names, selectors, failure and
//! reinvocation policies are the same for every policy, and live there.
//!
//! The expressions are built from the policy's checked settings, which are
//! numbers and enums: no text from the policy file is ever spliced into CEL.
//!
//! Two constraints of the apiserver shape what is written here (read in the
//! 1.36 sources and held by the e2e suite against a real apiserver):
//! * an `ApplyConfiguration` may not write an atomic list or struct, so a
//!   list like `dnsConfig.options` or `exec.command` is written with a
//!   `JSONPatch`;
//! * the expressions see the object as the earlier mutations left it, so a
//!   decision that depends on the object as it came in (the grace period is
//!   raised only if a hook was added) is made in the same expression.

use super::Kind;
use crate::annotations;

/// How the apiserver can run a policy.
#[derive(Debug, Clone, PartialEq)]
pub enum InApiserver {
    /// As this mutation.
    Runs(Mutation),
    /// It cannot: why, for `calmplane export`'s stderr and the docs.
    Stays(&'static str),
}

/// One policy's part of a MutatingAdmissionPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// The kind the policy mutates: the policy's `matchConstraints`.
    pub kind: Kind,
    /// The operations it handles, as the API spells them (`CREATE`, `UPDATE`).
    pub operations: &'static [&'static str],
    /// Conditions beyond the ones every policy has (the skip annotation,
    /// the webhook's own matchConditions for the kind): `(name, expression)`.
    pub conditions: Vec<(&'static str, String)>,
    /// Named CEL expressions the patch refers to as `variables.<name>`,
    /// in order: each may use the ones before it.
    pub variables: Vec<(&'static str, String)>,
    /// The patch.
    pub patch: Patch,
}

/// A mutation's patch, one of the two kinds the API has.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// A CEL expression that yields a list of `JSONPatch` operations: for
    /// atomic lists, and where list indexes matter.
    JsonPatch(String),
    /// A CEL expression that yields an `Object{...}` merged with structured
    /// merge: for granular structs.
    ApplyConfiguration(String),
}

impl Patch {
    /// The API's `patchType`.
    pub fn patch_type(&self) -> &'static str {
        match self {
            Patch::JsonPatch(_) => "JSONPatch",
            Patch::ApplyConfiguration(_) => "ApplyConfiguration",
        }
    }

    /// The expression.
    pub fn expression(&self) -> &str {
        match self {
            Patch::JsonPatch(e) | Patch::ApplyConfiguration(e) => e,
        }
    }
}

/// CEL: whether `object` turns off the policy `name` with `calmplane.dev/skip`
/// (`all`, or `name` in its comma list), as [`annotations::Skip`] reads it.
pub fn skipped(name: &str) -> String {
    format!(
        "has(object.metadata.annotations) && '{key}' in object.metadata.annotations && \
         object.metadata.annotations['{key}'].split(',').exists(p, p.trim() == 'all' || p.trim() == '{name}')",
        key = annotations::SKIP,
    )
}

/// CEL: whether a Pod will run on Windows, as [`super::is_windows`] decides.
pub fn windows() -> &'static str {
    "(has(object.spec.os) && object.spec.os.name == 'windows') || \
     (has(object.spec.nodeSelector) && object.spec.nodeSelector[?'kubernetes.io/os'].orValue('') == 'windows')"
}

/// CEL: whether an `IntOrString` value `v` is zero in any of the forms the
/// Deployment controller reads as zero (`0`, `"0"`, `"0%"`, `"00%"`), as the
/// `rollout` policy decides.
pub fn is_zero(v: &str) -> String {
    format!("((type({v}) == int && {v} == 0) || (type({v}) == string && string({v}).matches('^0+%?$')))")
}

impl Kind {
    /// The resource rule that matches this kind: `(apiGroup, version, resource)`.
    pub fn resource(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Pod => ("", "v1", "pods"),
            Kind::Deployment => ("apps", "v1", "deployments"),
        }
    }
}
