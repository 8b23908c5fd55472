//! What a client can make calmplane spend, and the arithmetic that keeps all
//! of it under the memory limit the manifests ship.
//!
//! calmplane runs with `failurePolicy: Ignore`: while it is down, the
//! apiserver admits every Pod and Deployment unmutated, and says so only in
//! `apiserver_admission_webhook_fail_open_count`. So an OOM kill is a silent
//! outage. Every byte a client can make the server hold is bounded here, and
//! the bounds add up to less than the container's limit.
//!
//! ```text
//!  manifests/base/deployment.yaml: limits.memory           128 MiB   CONTAINER_MEMORY_LIMIT
//!
//!  the process at rest: runtime threads, allocator caches,
//!  metrics, TLS config (measured, see BASELINE)              32 MiB
//!  TLS connections: 512 x 32 KiB (TLS_CONNECTION)            16 MiB   --max-connections
//!  admin-port connections: 64 x 24 KiB (ADMIN_CONNECTION)   1.5 MiB   ADMIN_MAX_CONNECTIONS
//!  review bodies in flight: small pool + large pool        20.5 MiB   BODY_POOLS
//!  views of those reviews, drawn as they are built           16 MiB   VIEW_POOL
//!  one /preview at a time: body, documents, answer           14 MiB   PREVIEW_CHARGE
//!  log lines not yet written: two buffers of 4 MiB            8 MiB   LOG_BUFFER
//!                                                          --------
//!                                                          ~108 MiB  (WORST_CASE; a check
//!                                                                     below keeps it under 90%)
//! ```
//!
//! The allocator is part of the model. mimalloc keeps freed memory resident
//! for a while before giving it back (a second, by default), and a client
//! that sends large bodies frees memory as fast as it can send them: with
//! the default, the peak under `cargo run --release --example hostile` was
//! 105 to 145 MiB, with [`ALLOCATOR_ENV`] it was 61 MiB. The image and the
//! manifests set it, and `calmplane serve` warns when it is not set.
//!
//! A review's body is charged *before* it is read, from its Content-Length
//! (or the endpoint's cap when it has none). A burst of large bodies waits
//! for the pool, up to [`POOL_WAIT`], and then gets a 503; the heap never
//! grows past the pool. Small reviews, the apiserver's everyday traffic,
//! draw from a pool of their own, so a burst of large ones never makes them
//! queue. The view of a review ([`crate::view`]) is counted as it is built
//! and drawn from [`VIEW_POOL`], so a request pays for the memory its view
//! really takes, and a view that would take more than the pool has left
//! ends its request with a 503.
//!
//! The figures for a connection and for the process at rest were measured
//! on the release binary by `cargo test --release --test hostile` (peak RSS
//! under each attack; see that file) and are rounded up.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The environment variable, and its value, that make mimalloc give freed
/// memory back to the OS at once (see the module docs).
pub const ALLOCATOR_ENV: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "0");

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// `resources.limits.memory` of the calmplane container in
/// `manifests/base/deployment.yaml` (a test reads it from there). Every
/// bound below is derived from it.
pub const CONTAINER_MEMORY_LIMIT: usize = 128 * MIB;

/// RSS of the release binary at rest after it has served requests on every
/// runtime thread (mimalloc keeps a cache per thread): 25 MiB measured
/// under a connection flood (`cargo run --release --example hostile`),
/// rounded up.
pub const BASELINE: usize = 32 * MIB;

/// The largest JSON object the apiserver can send in a review: etcd stores
/// at most 1.5 MiB per object (`--max-request-bytes`), and the JSON of an
/// object is at most about twice its stored protobuf; the apiserver itself
/// refuses write bodies over 3 MiB.
pub const MAX_OBJECT_JSON: usize = 3 * MIB;

/// The largest body `/mutate` and `/report` accept: an UPDATE carries
/// `object` and `oldObject`, plus an envelope (userInfo, options) that is a
/// few KiB even with many groups.
pub const MAX_REVIEW_BODY: usize = 2 * MAX_OBJECT_JSON + 256 * KIB;

/// The largest body `/preview` accepts: a manifest or a few, not a cluster
/// dump (that is `calmplane audit -f`, which runs offline).
pub const MAX_PREVIEW_BODY: usize = 512 * KIB;

/// How much the view of one object ([`crate::view`]) may cost per byte of
/// body. A `serde_json::Value` is 72 bytes, so `["", "", ...]` would cost
/// 24 times its text (48 while its array doubles); real objects cost a
/// fraction of it, because the view keeps only what the policies read.
pub const VIEW_FACTOR: usize = 2;

/// What any view may cost regardless of its body: room for what a policy
/// reads in a small object (a Pod with three thousand short `args` fits).
/// Not set aside per request: a view draws from [`VIEW_POOL`] only what it
/// takes.
pub const VIEW_SLACK: usize = 256 * KIB;

/// The most any view may cost, whatever its body. A large object is large
/// for what no policy reads (a big annotation, `managedFields`, a config in
/// an env var); a view this large is a hostile object, and building it only
/// to refuse it would churn the allocator.
pub const VIEW_MAX: usize = 4 * MIB;

/// The most a parsed view of a `len`-byte body may cost, in bytes: the
/// parser refuses to build more.
pub const fn view_limit(len: usize) -> usize {
    let limit = VIEW_FACTOR * len + VIEW_SLACK;
    if limit < VIEW_MAX {
        limit
    } else {
        VIEW_MAX
    }
}

/// What the views of all the reviews in flight may take together. Real
/// views are small (a typical Pod's draws one 64 KiB share); only a hostile
/// object comes near its [`view_limit`], and the pool has room for one of
/// the largest beside a few hundred ordinary ones.
pub const VIEW_POOL: usize = 16 * MIB;

/// Bodies up to this size draw from the small pool.
pub const SMALL_BODY: usize = 256 * KIB;

/// The small pool: the apiserver's everyday reviews (a typical Pod is 5 to
/// 20 KiB), hundreds at once.
pub const SMALL_POOL: usize = 8 * MIB;

/// The large pool: two reviews of the largest size ([`MAX_REVIEW_BODY`]) at once.
pub const LARGE_POOL: usize = 2 * MAX_REVIEW_BODY;

/// Both body pools.
pub const BODY_POOLS: usize = SMALL_POOL + LARGE_POOL;

/// How long a request waits for room in its pool before it gets a 503.
/// Half the webhook's 2 s `timeoutSeconds`: an answer later than that is
/// likely to arrive after the apiserver has given up.
pub const POOL_WAIT: Duration = Duration::from_secs(1);

/// How much the parsed documents of one `/preview` may cost per byte of
/// body: a YAML line such as `name: web` becomes a map entry of about 120
/// bytes, 8 times its text.
pub const PREVIEW_TREE_FACTOR: usize = 10;

/// How long a preview's answer may be per byte of body: the patched object
/// and the preview of its pods' template, pretty-printed.
pub const PREVIEW_OUTPUT_FACTOR: usize = 4;

/// What any preview may use beyond the factors, for small bodies.
pub const PREVIEW_SLACK: usize = 256 * KIB;

/// The most the documents of a `len`-byte preview may cost.
pub const fn preview_tree_limit(len: usize) -> usize {
    PREVIEW_TREE_FACTOR * len + PREVIEW_SLACK
}

/// The longest answer to a `len`-byte preview.
pub const fn preview_output_limit(len: usize) -> usize {
    PREVIEW_OUTPUT_FACTOR * len + PREVIEW_SLACK
}

/// What the largest `/preview` may hold: the body; its documents (YAML
/// scalars are bounded apart from the nodes, by twice the body, see
/// [`crate::yaml::bounded_documents`]); the pod a workload's template
/// becomes, a copy of part of the documents; and the answer.
pub const PREVIEW_CHARGE: usize = MAX_PREVIEW_BODY
    + (preview_tree_limit(MAX_PREVIEW_BODY) + 2 * MAX_PREVIEW_BODY)
    + preview_tree_limit(MAX_PREVIEW_BODY)
    + preview_output_limit(MAX_PREVIEW_BODY);

/// Most `/preview` requests worked on at once; more wait for the one
/// running, up to [`POOL_WAIT`]. Previews are a person's tool, not the
/// apiserver's: one at a time keeps their CPU and memory off the path of
/// admission requests.
pub const PREVIEW_CONCURRENCY: usize = 1;

/// Default of `--max-connections`: open TLS connections.
pub const MAX_CONNECTIONS: usize = 512;

/// Memory of one open TLS connection at its worst: rustls's buffers,
/// hyper's read buffer ([`MAX_HEADER_BYTES`]) and the connection's task.
/// 400 connections holding an unfinished 300 KiB header line added 5 MiB
/// (13 KiB each, `cargo run --release --example hostile`); counted at more
/// than twice that.
pub const TLS_CONNECTION: usize = 32 * KIB;

/// The largest request head (request line and headers) on the TLS port,
/// also hyper's read buffer: the apiserver sends well under 1 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * KIB;

/// Open connections on the plaintext admin port (`/metrics`, `/healthz`,
/// `/readyz`): Prometheus and the kubelet need a few.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The largest request head on the admin port, and its read buffer: the
/// smallest hyper allows.
pub const ADMIN_MAX_HEADER_BYTES: usize = 8 * KIB;

/// Worst-case memory of one admin connection.
pub const ADMIN_CONNECTION: usize = 24 * KIB;

/// Work whose cost grows with the body runs off the runtime's workers once
/// the body is larger than this: large enough that parsing it would hold a
/// worker, and the probes queued behind it, for a few hundred microseconds
/// (the parse rates of `stage/*/parse` in `cargo bench --bench pipeline`).
pub const INLINE_BODY: usize = 256 * KIB;

/// Admission requests above [`INLINE_BODY`] being worked on at once, off the
/// runtime's workers.
pub const HEAVY_CONCURRENCY: usize = 2;

/// Threads the runtime may start for blocking work: the heavy admissions and
/// previews above, certificate and policy file reads, with room to spare.
/// (Tokio's default is 512, each with its own stack and allocator cache.)
pub const MAX_BLOCKING_THREADS: usize = 8;

/// Unwritten log lines kept per buffer when stderr is slow; two buffers
/// alternate (`server::batch_log`). At 2,000 admissions a second this is
/// several seconds of a stalled log collector; past it, lines are dropped
/// and the drop is logged.
pub const LOG_BUFFER: usize = 4 * MIB;

/// The worst case of the table in the module docs.
pub const WORST_CASE: usize = BASELINE
    + MAX_CONNECTIONS * TLS_CONNECTION
    + ADMIN_MAX_CONNECTIONS * ADMIN_CONNECTION
    + BODY_POOLS
    + VIEW_POOL
    + PREVIEW_CONCURRENCY * PREVIEW_CHARGE
    + 2 * LOG_BUFFER;

// The bounds must leave headroom under the limit, or the kubelet kills the
// pod the first time every one of them is reached together.
const _: () = assert!(WORST_CASE < CONTAINER_MEMORY_LIMIT / 100 * 90);
// An UPDATE of an object at etcd's limit, in JSON, with its old copy.
const _: () = assert!(MAX_REVIEW_BODY >= 2 * 3 * MIB);
// The largest review, and its view, must fit their pools, or they could
// never be served.
const _: () = assert!(MAX_REVIEW_BODY <= LARGE_POOL);
const _: () = assert!(view_limit(MAX_REVIEW_BODY) <= VIEW_POOL);
const _: () = assert!(2 * MAX_REVIEW_BODY <= LARGE_POOL);
const _: () = assert!(SMALL_BODY <= SMALL_POOL);

/// Why a request got no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// What the request asked for, in bytes.
    pub wanted: usize,
    /// The size of the pool it waited on.
    pub pool: usize,
}

/// A share of a pool, given back when dropped.
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
}

/// The pools and the preview slot, shared by every request.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Bodies up to [`SMALL_BODY`], in bytes.
    small: Arc<Semaphore>,
    /// Larger bodies, in bytes.
    large: Arc<Semaphore>,
    /// The views being built and used, in bytes ([`crate::view::Budget`]).
    pub views: Arc<Semaphore>,
    /// [`PREVIEW_CONCURRENCY`] slots.
    preview: Arc<Semaphore>,
    /// Heavy admissions running off the workers.
    heavy: Arc<Semaphore>,
}

impl Default for Pools {
    fn default() -> Self {
        Pools::new()
    }
}

impl Pools {
    /// Pools of the sizes above.
    pub fn new() -> Pools {
        Pools {
            small: Arc::new(Semaphore::new(SMALL_POOL)),
            large: Arc::new(Semaphore::new(LARGE_POOL)),
            views: Arc::new(Semaphore::new(VIEW_POOL)),
            preview: Arc::new(Semaphore::new(PREVIEW_CONCURRENCY)),
            heavy: Arc::new(Semaphore::new(HEAVY_CONCURRENCY)),
        }
    }

    /// Room for a review body of `len` bytes, waiting at most [`POOL_WAIT`].
    pub async fn body(&self, len: usize) -> Result<Held, Busy> {
        if len <= SMALL_BODY {
            acquire(&self.small, len, SMALL_POOL).await
        } else {
            acquire(&self.large, len, LARGE_POOL).await
        }
    }

    /// A budget for the view of a review of `len` body bytes, drawing from
    /// [`VIEW_POOL`]. Keep it as long as the view.
    pub fn view_budget(&self, len: usize) -> crate::view::Budget {
        crate::view::Budget::drawing_from(view_limit(len), self.views.clone())
    }

    /// The preview slot, waiting at most [`POOL_WAIT`].
    pub async fn preview(&self) -> Result<Held, Busy> {
        acquire(&self.preview, 1, PREVIEW_CONCURRENCY).await
    }

    /// A slot for admission work off the runtime's workers, waiting at most
    /// [`POOL_WAIT`].
    pub async fn heavy(&self) -> Result<Held, Busy> {
        acquire(&self.heavy, 1, HEAVY_CONCURRENCY).await
    }
}

async fn acquire(pool: &Arc<Semaphore>, wanted: usize, size: usize) -> Result<Held, Busy> {
    let busy = Busy { wanted, pool: size };
    let permits = u32::try_from(wanted).map_err(|_| busy)?;
    if wanted > size {
        return Err(busy);
    }
    match tokio::time::timeout(POOL_WAIT, pool.clone().acquire_many_owned(permits)).await {
        Ok(Ok(permit)) => Ok(Held { _permit: permit }),
        // Closed (never, the pools live as long as the server) or timed out.
        _ => Err(busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_one_the_manifests_ship() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/deployment.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let deployment: serde_json::Value = crate::yaml::from_str(&text).unwrap();
        let limit = &deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            ["memory"];
        let mib = limit
            .as_str()
            .and_then(|s| s.strip_suffix("Mi"))
            .and_then(|n| n.parse::<usize>().ok())
            .expect("limits.memory in Mi");
        assert_eq!(mib * MIB, CONTAINER_MEMORY_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_makes_requests_wait_then_refuses_them() {
        let pools = Pools::new();
        let first = pools.body(MAX_REVIEW_BODY).await.unwrap();
        let second = pools.body(MAX_REVIEW_BODY).await.unwrap();
        // A third body of the largest size does not fit beside them.
        let third = pools.body(MAX_REVIEW_BODY).await;
        assert_eq!(
            third.unwrap_err(),
            Busy {
                wanted: MAX_REVIEW_BODY,
                pool: LARGE_POOL
            }
        );
        // Small reviews never queue behind large ones.
        assert!(pools.body(10 * KIB).await.is_ok());
        drop((first, second));
        assert!(pools.body(MAX_REVIEW_BODY).await.is_ok());
        // More than a pool can ever hold is refused at once.
        assert!(pools.body(usize::MAX / 4).await.is_err());
    }

    #[test]
    fn views_draw_what_they_take_from_one_pool_and_give_it_back() {
        use serde_json::json;
        let pools = Pools::new();
        let reads = crate::view::Keys::new([], []);
        let pod =
            json!({"spec": {"containers": [{"name": "c", "args": vec!["--a"; 100]}]}}).to_string();
        let shape = crate::view::Shape::at(
            &["spec", "containers", "*", "args"],
            crate::view::Shape::All,
        );
        let parse = |budget: &crate::view::Budget| {
            crate::view::parse(&pod, &shape, &reads, budget).map(|p| p.value)
        };
        let budget = pools.view_budget(pod.len());
        let view = parse(&budget).unwrap();
        let held = VIEW_POOL - pools.views.available_permits();
        // One draw covers a small view, and only while the budget lives.
        assert!(held > 0 && held <= 64 * KIB, "{held}");
        assert!(budget.used() > 100 * 3 && budget.used() <= held);
        drop((view, budget));
        assert_eq!(pools.views.available_permits(), VIEW_POOL);
        // Views that would take more than the pool has left are refused.
        let _hog = pools
            .views
            .clone()
            .try_acquire_many_owned((VIEW_POOL - 10) as u32)
            .unwrap();
        let budget = pools.view_budget(pod.len());
        assert!(parse(&budget).is_err());
        assert_eq!(budget.exceeded(), Some(crate::view::Exceeded::Pool));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_gets_the_room_a_finished_one_gives_back() {
        let pools = Pools::new();
        let first = pools.preview().await.unwrap();
        let waiter = tokio::spawn({
            let pools = pools.clone();
            async move { pools.preview().await.is_ok() }
        });
        tokio::time::sleep(POOL_WAIT / 2).await;
        drop(first);
        assert!(waiter.await.unwrap());
    }
}
