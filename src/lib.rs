//! calmplane: a Kubernetes mutating admission webhook that keeps clusters calm at scale.
//!
//! This page is the map. The README, the book and `server`'s docs link here
//! rather than copying it.
//!
//! # The data path
//!
//! ```text
//!  kube-apiserver ──TLS──▶ server::listener   accept: connection cap, handshake; phases: header
//!                            │                and idle timers; shed: 503 when the CPU queue is long
//!                            ▼
//!                        server (axum)        the Guard: client certificate, size, memory pools
//!                            │                (budget), body, panic, timeout; count and log
//!              ┌─────────────┼──────────────────────┐
//!         POST /mutate   POST /report          POST /preview
//!              │             │                      │
//!              ▼             ▼                      ▼
//!         review::decode  (same)              preview: JSON or YAML, streams, Lists,
//!              │  the AdmissionReview in one pass;   reviews, workload templates;
//!              │  of the objects, only what the      whole objects, on a blocking thread
//!              │  policies declare they read (view)  │
//!              ▼                                    │
//!         review::admit ─▶ pipeline::Pipeline ◀─────┘
//!              │             for each policy of policy::ALL that the policy file enables,
//!              │             handles (kind, operation) and calmplane.dev/skip allows:
//!              │             policy.apply(ctx, &mut Mutation); report-only ones on a copy
//!              │                 │
//!              │                 ▼
//!              │           patch::Mutation   edits in place, records RFC 6902 ops as it goes,
//!              │                             refuses writes outside the view
//!              ▼
//!         review::encode   AdmissionReview v1, patch = base64(JSON Patch)   (/mutate)
//!         server::report   counted and logged, never patched                (/report)
//! ```
//!
//! `calmplane audit` runs the same pipeline over a cluster dump; `calmplane
//! lease-monitor` watches Leases and exports what the `lease` policy is for;
//! `calmplane export mutating-admission-policy` writes the policies the
//! apiserver can run itself as CEL ([`admission_policy`]).
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`admission_policy`] | the policies the apiserver can run, as MutatingAdmissionPolicies and their bindings |
//! | [`annotations`] | calmplane's annotations and namespace label: each format's one reader and writer |
//! | [`audit`] | `calmplane audit`: what calmplane would change in a cluster, and the Lease writes it would save |
//! | [`budget`] | what a client can make the server spend, and the arithmetic under the container's memory limit |
//! | [`certs`] | dev certificates for `make run` and the static overlay |
//! | [`clip`] | client-chosen text, cut before it is shown or logged |
//! | [`config`] | the policy file's sections, and the two keys every section has |
//! | [`lease_monitor`] | `calmplane lease-monitor`: Lease write rate and age |
//! | [`manifests`] | the webhook configuration `calmplane manifests` and `register` print and apply |
//! | [`metrics`] | the webhook's Prometheus metrics, and the one place requests are counted |
//! | [`patch`] | editing an object while recording the patch |
//! | [`pipeline`] | the enabled policies, run over one object |
//! | [`policy`] | the policies, one module each, and [`policy::ALL`], the one list of them |
//! | [`preview`] | what calmplane would do to a manifest, for `/preview` and `calmplane preview` |
//! | [`process`] | what every long-running process sets up: log, runtime, signals, admin port |
//! | [`reference`] | the book's generated reference pages: the policy file and the metrics |
//! | [`register`] | `calmplane register`: server-side apply of the webhook configuration |
//! | [`review`] | the AdmissionReview envelope: decode, admit, encode |
//! | [`selector`] | the field-selector grammar the `lease` policy rewrites |
//! | [`server`] | the TLS port: listener, routes, the Guard, TLS reload, `/report` |
//! | [`view`] | parsing only what the policies read, and what that may cost |
//! | [`yaml`] | YAML, read and written one way everywhere |

pub mod admission_policy;
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
pub mod reference;
pub mod register;
pub mod review;
pub mod selector;
pub mod server;
pub mod view;
pub mod yaml;
