//! What must hold for any `/mutate` body: the function the fuzz target and
//! the stable replay test both call.
#![allow(dead_code)]

use base64::Engine as _;
use calmplane::config::Config;
use calmplane::pipeline::{FixedClock, Pipeline};
use calmplane::review::{self, RequestIn};
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// A fixed "now", so that a second pass sees the same time as the first.
pub const NOW: i64 = 1_800_000_000;

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::new(&Config::default(), Arc::new(FixedClock(NOW))))
}

fn copy(r: &RequestIn, object: Option<Value>) -> RequestIn {
    RequestIn {
        uid: r.uid.clone(),
        kind: r.kind.clone(),
        sub_resource: r.sub_resource.clone(),
        namespace: r.namespace.clone(),
        operation: r.operation.clone(),
        object,
        old_object: r.old_object.clone(),
    }
}

/// Parse and admit `data` as the `/mutate` handler does, then check:
/// * a body that parses gets an AdmissionReview v1 response with its uid,
///   `allowed: true`, and `patch` only with `patchType: JSONPatch`;
/// * the base64 patch is a JSON Patch that applies to the request's object
///   and gives the pipeline's output object;
/// * admitting that output again yields no patch.
///
/// Panics (the fuzzer's finding) when any of these fails.
pub fn check_mutate_body(data: &[u8]) {
    let Ok(request) = review::parse(data) else {
        return;
    };
    let again = copy(&request, None);
    let input = request.object.clone();
    let uid = request.uid.clone();
    let admission = review::admit(pipeline(), request);
    let body = admission.response_body();
    let review::Admission { summary, outcome } = admission;
    assert_eq!(summary.uid, uid);

    let response: Value = serde_json::from_str(&body).expect("response is JSON");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    let response = &response["response"];
    assert_eq!(response["uid"], uid.as_str());
    assert_eq!(response["allowed"], true);

    let Some(patch) = response.get("patch") else {
        assert!(
            response.get("patchType").is_none(),
            "patchType without patch"
        );
        assert!(outcome.patch.is_empty());
        return;
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch.as_str().expect("patch is a string"))
        .expect("patch is base64");
    let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    assert!(!ops.0.is_empty(), "an empty patch must be left out");
    let mut patched = input.expect("a patch needs an object");
    json_patch::patch(&mut patched, &ops).expect("patch applies to the request object");
    assert_eq!(patched, outcome.object, "patched object != pipeline output");

    let second = review::admit(pipeline(), copy(&again, Some(patched))).response_body();
    let second: Value = serde_json::from_str(&second).expect("response is JSON");
    assert!(
        second["response"].get("patch").is_none(),
        "second pass patched again: {second}"
    );
}
