//! calmplane: a Kubernetes mutating admission webhook that keeps clusters calm at scale.
//!
//! # The data path
//!
//! ```text
//!  kube-apiserver ──TLS──▶ server::listener   accept, limits, handshake
//!                            │
//!                            ▼
//!                        server (axum)         POST /mutate, timing, metrics, logs
//!                            │
//!                            ▼
//!                        review::parse         AdmissionReview v1 envelope; object and oldObject stay JSON text
//!                            │
//!                            ▼
//!                        view::parse           only the members the policies read become a serde_json::Value
//!                            │
//!                            ▼
//!                        pipeline::Pipeline    for each policy: policy.apply(ctx, &mut Mutation)
//!                            │                 policy::{lease, rollout_history, dns, prestop, rollout}
//!                            ▼
//!                        patch::Mutation       edits in place and records RFC 6902 ops as it goes
//!                            │
//!                            ▼
//!                        review::response_body AdmissionReview v1 in one buffer, patch = base64(JSON Patch)
//! ```
//!
//! `preview` runs the same pipeline for `POST /preview` and `calmplane
//! preview`, on manifests instead of AdmissionReviews; `audit` runs it over a
//! whole cluster dump, and `POST /report` runs it without patching.

pub mod annotations;
pub mod audit;
pub mod budget;
pub mod certs;
pub mod clip;
pub mod config;
pub mod lease_monitor;
pub mod manifests;
pub mod metrics;
pub mod patch;
pub mod pipeline;
pub mod policy;
pub mod preview;
pub mod process;
pub mod register;
pub mod review;
pub mod selector;
pub mod server;
pub mod view;
pub mod yaml;
