//! `calmplane lease-monitor` on the real apiserver's watch (c10): Lease
//! writes are counted as the apiserver stores them, and only writes that
//! renew.

use crate::Env;
use anyhow::{ensure, Context as _, Result};
use calmplane_e2e::wait_until;
use calmplane_testkit::prom;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use std::time::Duration;

/// A `coordination.k8s.io/v1` MicroTime (RFC 3339 with microseconds) `offset_ms` from now.
fn micro_time(offset_ms: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(offset_ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// `calmplane lease-monitor` against the real apiserver's watch: a Lease
/// created and renewed five times is six writes, an update that renews
/// nothing (a label) is none, and the Lease is counted once.
pub(crate) async fn c10_lease_monitor(env: &Env) -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let ns = env.namespace("c10", &[]).await?;
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], calmplane_e2e::free_port()?).into();
    let mut cmd = env.calmplane.lock().await.command();
    cmd.env("KUBECONFIG", &env.cluster.kubeconfig)
        .args(["--log-format", "text", "lease-monitor", "--namespace", &ns])
        .arg(format!("--metrics-listen={metrics_addr}"))
        .arg("--sample-interval=200ms");
    let _monitor = calmplane_e2e::Child::spawn("lease-monitor", cmd, &env.cluster.dir)?;
    wait_until(Duration::from_secs(30), || async move {
        Ok(calmplane_e2e::webhook::plain_get(metrics_addr, "/readyz")
            .await
            .is_ok())
    })
    .await
    .context("lease-monitor never became ready")?;
    let writes = || async move {
        let text = calmplane_e2e::webhook::plain_get(metrics_addr, "/metrics").await?;
        anyhow::Ok((
            prom::sum(
                &text,
                "calmplane_lease_writes_total",
                &[("namespace", "c10")],
            ),
            prom::sum(&text, "calmplane_leases", &[("namespace", "c10")]),
        ))
    };
    let wait_for = |want: f64| async move {
        wait_until(Duration::from_secs(30), || async move {
            Ok(writes().await?.0 == want)
        })
        .await
        .with_context(|| format!("calmplane_lease_writes_total never reached {want}"))
    };

    let api: Api<Lease> = Api::namespaced(env.client(), &ns);
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "holder"},
        "spec": {"holderIdentity": "e2e", "leaseDurationSeconds": 10,
                 "acquireTime": micro_time(0), "renewTime": micro_time(0)}
    }))?;
    api.create(&PostParams::default(), &lease).await?;
    wait_for(1.0).await?;
    for i in 1..=5 {
        let renew = json!({"spec": {"renewTime": micro_time(i * 10)}});
        api.patch("holder", &PatchParams::default(), &Patch::Merge(&renew))
            .await?;
    }
    wait_for(6.0).await?;
    let relabel = json!({"metadata": {"labels": {"e2e": "relabelled"}}});
    api.patch("holder", &PatchParams::default(), &Patch::Merge(&relabel))
        .await?;
    let renew = json!({"spec": {"renewTime": micro_time(100)}});
    api.patch("holder", &PatchParams::default(), &Patch::Merge(&renew))
        .await?;
    // One watch delivers events in order: once the monitor has seen a
    // second Lease created after these two updates, it has seen both.
    let mut marker = lease.clone();
    marker.metadata.name = Some("marker".into());
    api.create(&PostParams::default(), &marker).await?;
    wait_until(Duration::from_secs(30), || async move {
        Ok(writes().await?.1 == 2.0)
    })
    .await
    .context("the monitor never counted the second Lease")?;
    let (count, _) = writes().await?;
    // 6, the renewal and the marker's creation; the label change is not a write.
    ensure!(count == 8.0, "calmplane_lease_writes_total {count}, want 8");
    Ok(())
}
