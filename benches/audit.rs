//! `calmplane audit` at the size the issue asks for: 10,000 pods and 2,000
//! Deployments (with their ReplicaSets, Leases for every fifth pod and a
//! PodDisruptionBudget for every third Deployment) over 20 namespaces, built
//! from the microservices-demo manifests in tests/fixtures/upstream.
//!
//! ```text
//! audit/parse   Inventory::from_bytes on the JSON dump (~the kubectl output)
//! audit/run     audit::audit on a parsed inventory (pipeline, hot, PDBs, leases)
//! audit/total   both, then the table: what `calmplane audit -f dump.json` does
//! ```
//!
//! `cargo bench --bench audit`. The budget is 10 s on one core for `total`.
//! With `CALMPLANE_AUDIT_DUMP=path` the dump is also written there, to time
//! the binary itself.

#[path = "../tests/support/cluster.rs"]
mod cluster;

use calmplane::audit::{self, input::Inventory, Options};
use calmplane::config::Config;
use criterion::{BatchSize, Criterion};
use std::hint::black_box;
use std::time::Duration;

const NAMESPACES: usize = 20;
const DEPLOYMENTS: usize = 2_000;
const PODS: usize = 10_000;

fn bench(c: &mut Criterion) {
    let dump = cluster::generated(NAMESPACES, DEPLOYMENTS, PODS);
    let bytes = dump.bytes();
    let config = Config::default();
    let opts = Options {
        now: cluster::NOW,
        ..Options::default()
    };
    // For timing the binary: `calmplane audit -f $CALMPLANE_AUDIT_DUMP`.
    if let Ok(path) = std::env::var("CALMPLANE_AUDIT_DUMP") {
        std::fs::write(&path, &bytes).expect("write the dump");
    }
    eprintln!(
        "dump: {} objects, {:.1} MiB of JSON",
        dump.items.len(),
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
    let mut group = c.benchmark_group("audit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("parse", |b| {
        b.iter(|| black_box(Inventory::from_bytes(black_box(&bytes)).unwrap()))
    });
    group.bench_function("run", |b| {
        b.iter_batched(
            || Inventory::from_bytes(&bytes).unwrap(),
            |inv| black_box(audit::audit(inv, &config, &opts).unwrap()),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("total", |b| {
        b.iter(|| {
            let inv = Inventory::from_bytes(black_box(&bytes)).unwrap();
            let report = audit::audit(inv, &config, &opts).unwrap();
            black_box(audit::render::table(&report))
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
