//! calmplane's latency as the apiserver sees it (c9): 1,000 Pods, the
//! apiserver's own histogram of the webhook call beside calmplane's and the
//! client's round trip; reported, not asserted. What is asserted: every Pod
//! is mutated, none fails open, and the apiserver keeps its connections.

use crate::{fail_open, is_mutated, pod_object, Env, PODS_WEBHOOK};
use anyhow::{ensure, Context as _, Result};
use calmplane::annotations::{enabled, ENABLED};
use calmplane_testkit::prom;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many Pods a latency measurement creates.
pub(crate) const LATENCY_PODS: usize = 1000;

/// 1,000 Pods: p50 and p99 of the apiserver's own
/// `apiserver_admission_webhook_admission_duration_seconds` for calmplane's
/// Pod webhook (reported, not asserted: performance is measured, and the
/// histogram's buckets are 5 ms, 25 ms, 100 ms...).
pub(crate) async fn c9_latency(env: &Env) -> Result<()> {
    let ns = env.namespace("c9", &[(ENABLED, enabled::WEBHOOK)]).await?;
    let name = "apiserver_admission_webhook_admission_duration_seconds";
    let labels = [
        ("name", PODS_WEBHOOK),
        ("operation", "CREATE"),
        ("type", "admit"),
    ];
    let before = prom::buckets(&env.metrics().await?, name, &labels);
    let own = "calmplane_admission_duration_seconds";
    let own_metrics = env.calmplane.lock().await.metrics().await?;
    let own_before = prom::buckets(&own_metrics, own, &[]);
    // The apiserver keeps its connections to calmplane open (HTTP/1.1
    // keep-alive): the handshakes calmplane counts must be a handful, not one
    // per admission.
    let handshakes = "calmplane_tls_handshakes_total";
    let ok = [("outcome", "success")];
    let handshakes_before = prom::sum(&own_metrics, handshakes, &ok);
    let fails_before = fail_open(&env.metrics().await?);
    // Every worker alternates between the opted-in namespace and one that
    // calmplane never sees, so both sets of creates share the same load:
    // the difference of their round trips is what the webhook adds.
    let off = env.namespace("c9-off", &[]).await?;
    let on_api: Api<Pod> = Api::namespaced(env.client(), &ns);
    let off_api: Api<Pod> = Api::namespaced(env.client(), &off);
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (on_api, off_api) = (on_api.clone(), off_api.clone());
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let (mut mutated, mut on, mut off) = (0, Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= LATENCY_PODS {
                    return anyhow::Ok((mutated, on, off));
                }
                let pod = pod_object(&format!("p{i}"), &[]);
                let t = Instant::now();
                let stored = on_api.create(&PostParams::default(), &pod).await?;
                on.push(t.elapsed());
                mutated += usize::from(is_mutated(&serde_json::to_value(stored)?));
                let t = Instant::now();
                off_api.create(&PostParams::default(), &pod).await?;
                off.push(t.elapsed());
            }
        }));
    }
    let (mut mutated, mut on, mut off) = (0, Vec::new(), Vec::new());
    for w in workers {
        let (m, a, b) = w.await??;
        mutated += m;
        on.extend(a);
        off.extend(b);
    }
    let q = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    eprintln!(
        "c9: create round trip, opted-in namespace p50 {:.2} ms p99 {:.2} ms; unlabelled namespace p50 {:.2} ms p99 {:.2} ms",
        q(&mut on, 0.5), q(&mut on, 0.99), q(&mut off, 0.5), q(&mut off, 0.99)
    );
    let elapsed = start.elapsed();
    let metrics = env.metrics().await?;
    let delta = prom::delta(&before, &prom::buckets(&metrics, name, &labels));
    let total = delta.last().map_or(0.0, |(_, c)| *c);
    let within_5ms = delta
        .iter()
        .find(|(le, _)| *le == 0.005)
        .map_or(0.0, |(_, c)| *c);
    let p50 = prom::quantile(0.5, &delta).context("no webhook calls observed")?;
    let p99 = prom::quantile(0.99, &delta).context("no webhook calls observed")?;
    eprintln!(
        "c9: {LATENCY_PODS} Pods (and as many unmutated) in {:.1} s; apiserver_admission_webhook_admission_duration_seconds{{name=\"{PODS_WEBHOOK}\"}}: {total} calls, p50 {:.2} ms, p99 {:.2} ms (bucket estimates), {:.1}% within 5 ms",
        elapsed.as_secs_f64(),
        p50 * 1e3,
        p99 * 1e3,
        100.0 * within_5ms / total
    );
    let own_metrics = env.calmplane.lock().await.metrics().await?;
    let own_delta = prom::delta(&own_before, &prom::buckets(&own_metrics, own, &[]));
    let new_handshakes = prom::sum(&own_metrics, handshakes, &ok) - handshakes_before;
    eprintln!("c9: {total} admissions over {new_handshakes} new TLS handshakes ({handshakes})");
    eprintln!(
        "c9: calmplane's own {own} over the same requests: p50 {:.3} ms, p99 {:.3} ms",
        prom::quantile(0.5, &own_delta).context("calmplane observed no admissions")? * 1e3,
        prom::quantile(0.99, &own_delta).context("calmplane observed no admissions")? * 1e3
    );
    ensure!(
        mutated == LATENCY_PODS,
        "{} of {LATENCY_PODS} Pods stored unmutated",
        LATENCY_PODS - mutated
    );
    ensure!(
        total >= LATENCY_PODS as f64,
        "the apiserver counted {total} calls"
    );
    ensure!(
        fail_open(&metrics) == fails_before,
        "admissions failed open"
    );
    // 4 concurrent clients: the apiserver needs a few connections, never one
    // per call.
    ensure!(
        new_handshakes <= 16.0,
        "{new_handshakes} TLS handshakes for {total} admissions: the apiserver's connections are not kept alive"
    );
    Ok(())
}
