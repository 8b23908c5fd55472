//! The lease monitor's event-handling path, in watch events per second on
//! one core (the story's cluster streamed 30,000 lease updates a second; the
//! monitor must keep up with 50,000).
//!
//! ```text
//! apply/renewals         LeaseState::apply on watcher events that each renew one
//!                        of 30,000 leases in 300 namespaces (every event a write)
//! decode_apply/renewals  the same events as watch-stream JSON lines: serde_json
//!                        into kube's WatchEvent<Lease>, then apply (what the watcher
//!                        and the monitor do per event, minus TLS and HTTP)
//! sample/30000_leases    one sample: every lease's age into the histogram, gauges
//! ```
//!
//! `cargo bench --bench lease_monitor`; criterion prints the throughput in
//! elements (events) per second.

use calmplane::lease_monitor::metrics::LeaseMetrics;
use calmplane::lease_monitor::state::LeaseState;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::core::WatchEvent;
use kube::runtime::watcher::Event;
use std::hint::black_box;

const NAMESPACES: usize = 300;
const PER_NAMESPACE: usize = 100;
const BASE_US: i64 = 1_800_000_000_000_000;

fn lease(ns: usize, i: usize, renew_us: i64) -> Lease {
    let at = MicroTime(Timestamp::from_microsecond(renew_us).expect("valid time"));
    Lease {
        metadata: ObjectMeta {
            namespace: Some(format!("team-{ns:03}")),
            name: Some(format!("worker-7d9f8c6b5-{i:05}")),
            resource_version: Some(format!("{}", renew_us % 1_000_000_007)),
            uid: Some(format!("6c1f0a2e-0000-4000-8000-{ns:06}{i:06}")),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(format!("worker-7d9f8c6b5-{i:05}")),
            lease_duration_seconds: Some(15),
            acquire_time: Some(at.clone()),
            renew_time: Some(at),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Every lease once at `renew_us`.
fn round(renew_us: i64) -> Vec<Lease> {
    (0..NAMESPACES)
        .flat_map(|ns| (0..PER_NAMESPACE).map(move |i| lease(ns, i, renew_us)))
        .collect()
}

fn listed_state() -> LeaseState {
    let mut state = LeaseState::new(LeaseMetrics::new().expect("metrics"));
    state.apply(&Event::Init);
    for l in round(BASE_US) {
        state.apply(&Event::InitApply(l));
    }
    state.apply(&Event::InitDone);
    state
}

fn bench(c: &mut Criterion) {
    // Two rounds with different renewTimes, applied alternately: every event
    // changes its lease, so every event is counted as a write.
    let rounds: Vec<Vec<Event<Lease>>> = [BASE_US + 200_000, BASE_US + 400_000]
        .iter()
        .map(|&t| round(t).into_iter().map(Event::Apply).collect())
        .collect();
    let events = rounds.iter().map(Vec::len).sum::<usize>() as u64;

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(events));
    let mut state = listed_state();
    group.bench_function("renewals", |b| {
        b.iter(|| {
            for round in &rounds {
                for event in round {
                    state.apply(black_box(event));
                }
            }
        })
    });
    group.finish();

    let lines: Vec<Vec<Vec<u8>>> = [BASE_US + 200_000, BASE_US + 400_000]
        .iter()
        .map(|&t| {
            round(t)
                .into_iter()
                .map(|l| {
                    serde_json::to_vec(&serde_json::json!({"type": "MODIFIED", "object": l}))
                        .expect("JSON")
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("decode_apply");
    group.throughput(Throughput::Elements(events));
    let mut state = listed_state();
    group.bench_function("renewals", |b| {
        b.iter(|| {
            for round in &lines {
                for line in round {
                    match serde_json::from_slice::<WatchEvent<Lease>>(black_box(line)) {
                        Ok(WatchEvent::Modified(lease)) => state.apply(&Event::Apply(lease)),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("sample");
    let mut state = listed_state();
    group.throughput(Throughput::Elements((NAMESPACES * PER_NAMESPACE) as u64));
    group.bench_function("30000_leases", |b| {
        b.iter(|| black_box(state.sample(BASE_US + 1_000_000)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
