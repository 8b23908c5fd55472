//! The AdmissionReview v1 envelope: request bytes in, response bytes out.
//!
//! ```text
//! body bytes ─ decode::parse ─ RequestIn (uid, kind, operation, the view of object and oldObject)
//!            ─ admit::admit  ─ Admission (the pipeline's Outcome, and a Summary to count and log)
//!            ─ encode::response_body ─ AdmissionReview v1 bytes, patch = base64(JSON Patch)
//! ```
//!
//! The envelope is read in one pass. The apiserver sends the request's `kind`
//! before `object` and `oldObject`, so by the time the objects come the shape
//! to read them with is known, and only the members the policies read become
//! a `serde_json::Value` ([`crate::view`]); the rest is skipped, never
//! copied. (A body with the objects first keeps them as borrowed text,
//! `&RawValue`, and builds them once the kind is read.) We reuse kube's
//! `Operation` and `GroupVersionKind`, but not its `AdmissionRequest<T>`:
//! that forces the object through a typed `ObjectMeta` (dropping fields it
//! does not know), and its `AdmissionResponse.patch` serialises as an array
//! of numbers, while the apiserver expects the documented base64 string.
//!
//! | file | holds |
//! |---|---|
//! | `decode.rs` | reading the envelope and its objects: [`parse`], [`RequestIn`], [`ReviewError`] |
//! | `admit.rs` | running the pipeline on a request: [`admit`], [`Admission`], [`Summary`] |
//! | `encode.rs` | writing the response: [`response_body`] |

mod admit;
mod decode;
mod encode;

pub use admit::{admit, Admission, Summary, Verdict};
pub use decode::{parse, parse_with, Extent, RequestIn, ReviewError};
pub use encode::response_body;

use kube::core::admission::Operation;

/// The only AdmissionReview version calmplane speaks, and the only one the
/// webhook configuration asks the apiserver for.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// The wire name of a kube `Operation`, e.g. `CREATE`.
pub fn operation_str(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The wire name of an operation, as kube's `Operation`.
pub fn parse_operation(op: &str) -> Option<Operation> {
    match op {
        "CREATE" => Some(Operation::Create),
        "UPDATE" => Some(Operation::Update),
        "DELETE" => Some(Operation::Delete),
        "CONNECT" => Some(Operation::Connect),
        _ => None,
    }
}

/// A bounded label for metrics and logs: the operation comes from the client.
pub fn operation_label(op: &str) -> &'static str {
    parse_operation(op).as_ref().map_or("other", operation_str)
}
