//! What must hold for any `/mutate` body: the function the fuzz target and
//! the stable replay test both call.

use base64::Engine as _;
use calmplane::config::Config;
use calmplane::pipeline::{FixedClock, Pipeline};
use calmplane::review;
use calmplane::review::Extent;
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// A fixed "now", so that a second pass sees the same time as the first.
pub const NOW: i64 = 1_800_000_000;

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        Pipeline::new(&Config::default(), Arc::new(FixedClock(NOW))).expect("the defaults")
    })
}

/// Parse and admit `data` as the `/mutate` handler does, then check:
/// * a body that parses gets an AdmissionReview v1 response with its uid,
///   `allowed: true`, and `patch` only with `patchType: JSONPatch`;
/// * the view (`Extent::Read`, what `/mutate` builds) gives the same patch,
///   changes, warnings and policies as the whole object (`Extent::Whole`);
/// * the base64 patch is a JSON Patch that applies to the whole request
///   object and gives the whole-object pipeline's output;
/// * admitting that output again, as a new request body, yields no patch.
///
/// Panics (the fuzzer's finding) when any of these fails.
pub fn check_mutate_body(data: &[u8]) {
    // What `/mutate` builds, within the budget `/mutate` gives it.
    let Ok(request) = review::parse(data, pipeline().reads()) else {
        return;
    };
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

    // The whole object can fail where the view did not: a number too large
    // for a `Value` in a member the view skips. Nothing to compare then.
    let Ok(whole) = review::parse_with(data, Extent::Whole, &calmplane::view::Budget::unlimited())
    else {
        return;
    };
    let input = whole.object.clone();
    let full = review::admit(pipeline(), whole).outcome;
    assert_eq!(outcome.patch, full.patch, "view and whole object disagree");
    assert_eq!(outcome.changes, full.changes);
    assert_eq!(outcome.warnings, full.warnings);
    assert_eq!(outcome.policies, full.policies);

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
    assert_eq!(patched, full.object, "patched object != pipeline output");

    let Ok(mut again) = serde_json::from_slice::<Value>(data) else {
        return; // a number too large for a `Value` in a member both skip
    };
    again["request"]["object"] = patched;
    let again = serde_json::to_vec(&again).expect("serialises");
    // The patched object is a little larger than the one that fit the
    // budget, and may not fit it: re-read it for its patch, not its cost.
    let unlimited = calmplane::view::Budget::unlimited();
    let request = review::parse_with(&again, Extent::Read(pipeline().reads()), &unlimited)
        .expect("the patched review parses");
    let second = review::admit(pipeline(), request).response_body();
    let second: Value = serde_json::from_str(&second).expect("response is JSON");
    assert!(
        second["response"].get("patch").is_none(),
        "second pass patched again: {second}"
    );
}
