//! Writing the AdmissionReview v1 response.

use super::API_VERSION;
use crate::pipeline::Outcome;
use std::io::Write as _;

/// The AdmissionReview v1 response. `allowed` is always true: calmplane only
/// defaults, it never denies.
///
/// Written straight into one buffer: the envelope by hand around
/// serde_json's strings, and the JSON Patch base64-encoded in place, with no
/// envelope struct and no intermediate base64 string.
pub fn response_body(uid: &str, outcome: &Outcome) -> String {
    let mut out = Vec::with_capacity(256 + 96 * outcome.patch.len());
    // Writing to a Vec cannot fail and JSON values and strings always
    // serialise, so the empty fallback is never taken; it only keeps a panic
    // off the request path.
    if write_response(&mut out, uid, outcome).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

fn write_response(out: &mut Vec<u8>, uid: &str, outcome: &Outcome) -> std::io::Result<()> {
    out.extend_from_slice(b"{\"apiVersion\":\"");
    out.extend_from_slice(API_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    serde_json::to_writer(&mut *out, uid)?;
    out.extend_from_slice(b",\"allowed\":true");
    if !outcome.patch.is_empty() {
        out.extend_from_slice(b",\"patchType\":\"JSONPatch\",\"patch\":\"");
        // The patch JSON is written once, then encoded straight into the
        // response. (A streaming base64 writer under serde_json was slower:
        // it pays per token, and serde_json writes many small tokens.)
        let json = serde_json::to_vec(&outcome.patch)?;
        let engine = &base64::engine::general_purpose::STANDARD;
        let start = out.len();
        out.resize(
            start + base64::encoded_len(json.len(), true).unwrap_or(0),
            0,
        );
        let written = base64::Engine::encode_slice(engine, &json, &mut out[start..])
            .map_err(std::io::Error::other)?;
        out.truncate(start + written);
        out.push(b'"');
    }
    if let Some((first, rest)) = outcome.policies.split_first() {
        // Policy names are our own constants: lower-case letters and dashes,
        // nothing to escape.
        out.extend_from_slice(b",\"auditAnnotations\":{\"policies\":\"");
        out.extend_from_slice(first.as_bytes());
        for name in rest {
            out.push(b',');
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(b"\"}");
    }
    if !outcome.warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":");
        serde_json::to_writer(&mut *out, &outcome.warnings)?;
    }
    out.write_all(b"}}")
}

#[cfg(test)]
mod tests {
    use super::super::{admit, parse};
    use crate::pipeline::Pipeline;
    use serde_json::Value;

    fn reads() -> crate::policy::Reads {
        Pipeline::with_defaults().reads().clone()
    }

    #[test]
    fn the_response_is_one_json_document_with_a_base64_patch() {
        use base64::Engine as _;
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a\"b\\c\u00e9","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"ns","object":{"metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]}}}}"#;
        let admission = admit(&Pipeline::with_defaults(), parse(body, &reads()).unwrap());
        let response: Value = serde_json::from_str(&admission.response_body()).unwrap();
        let r = &response["response"];
        assert_eq!(r["uid"], "a\"b\\c\u{e9}");
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: Vec<json_patch::PatchOperation> = serde_json::from_slice(&patch).unwrap();
        assert_eq!(patch, admission.outcome.patch);
        assert_eq!(r["auditAnnotations"]["policies"], "dns,prestop");
        let warnings = r
            .get("warnings")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        assert_eq!(warnings, admission.outcome.warnings.len());
    }

    #[test]
    fn policy_names_need_no_escaping() {
        // The response writes them into a JSON string as they are.
        for name in crate::policy::names() {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
        }
    }
}
