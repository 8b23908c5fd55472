//! `calmplane lease-monitor`, the real binary, against the testkit's fake
//! apiserver over HTTPS with a kubeconfig: list, watch, bookmarks, 410 and
//! relist, as kube-rs's watcher does them against a real apiserver. The
//! scripted traffic is known event by event, so write counts are exact.

use calmplane_testkit::fake_apiserver::FakeApiServer;
use calmplane_testkit::lease_monitor::{eventually_within as eventually, Metrics, Monitor};
use k8s_openapi::api::coordination::v1::Lease;
use std::time::Duration;

/// The binary under test.
const CALMPLANE: &str = env!("CARGO_BIN_EXE_calmplane");

const WAIT: Duration = Duration::from_secs(20);
const WRITES: &str = "calmplane_lease_writes_total";
const LEASES: &str = "calmplane_leases";
const OLDEST: &str = "calmplane_lease_oldest_age_seconds";
const EXPIRED: &str = "calmplane_lease_expired";
const RESTARTS: &str = "calmplane_lease_watch_restarts_total";

fn writes(m: &Metrics, ns: &str) -> f64 {
    m.ns(WRITES, ns).unwrap_or(0.0)
}

/// Let in-flight events land, then return the metrics: a count that is
/// right now and still right a moment later was not caught mid-way.
async fn settled(monitor: &Monitor) -> Metrics {
    tokio::time::sleep(Duration::from_millis(500)).await;
    monitor.metrics().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_ready_after_the_first_complete_list() {
    let server = FakeApiServer::start().await.unwrap();
    server.create_lease("team-a", "shop", "pod-1", 15).unwrap();
    server.create_lease("team-b", "cart", "pod-2", 15).unwrap();
    server.hold_lists(true);
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &[]).await;
    assert!(
        eventually(WAIT, || async { server.requests().lists_received >= 1 }).await,
        "the monitor never listed; log:\n{}",
        monitor.log_text()
    );
    // The list is held: the monitor is up but has not seen every lease.
    for _ in 0..3 {
        let (status, body) = monitor.get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(monitor.get("/healthz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!monitor.metrics().await.has_ns(LEASES, "team-a"));
    server.hold_lists(false);
    assert!(
        eventually(WAIT, || async { monitor.get("/readyz").await.0 == 200 }).await,
        "never ready; log:\n{}",
        monitor.log_text()
    );
    let m = monitor.metrics().await;
    assert_eq!(m.ns(LEASES, "team-a"), Some(1.0), "{}", m.text);
    assert_eq!(m.ns(LEASES, "team-b"), Some(1.0));
    assert_eq!(
        writes(&m, "team-a"),
        0.0,
        "leases found by the first list are not writes we saw"
    );
    assert_eq!(
        server.requests().unauthorized,
        0,
        "the kubeconfig's token was used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_renewals_in_several_namespaces_give_exact_write_counts() {
    let server = FakeApiServer::start().await.unwrap();
    server.create_lease("alpha", "old", "pod-0", 15).unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &[]).await;
    monitor
        .wait_for("ready", WAIT, |m| m.ns(LEASES, "alpha") == Some(1.0))
        .await;

    // alpha: 2 creations + 5 renewals; beta: 1 creation + 3 renewals;
    // gamma: 1 creation + a holder change + a transition bump, and two
    // updates that change neither (labels, leaseDurationSeconds).
    server.create_lease("alpha", "a1", "pod-1", 15).unwrap();
    server.create_lease("alpha", "a2", "pod-2", 15).unwrap();
    server.create_lease("beta", "b1", "pod-3", 15).unwrap();
    server.create_lease("gamma", "g1", "pod-4", 15).unwrap();
    for i in 0..5 {
        server
            .renew_lease("alpha", if i % 2 == 0 { "a1" } else { "old" })
            .unwrap();
    }
    server.bookmark();
    for _ in 0..3 {
        server.renew_lease("beta", "b1").unwrap();
    }
    server
        .modify::<Lease>("gamma", "g1", |l| {
            l.spec.as_mut().unwrap().holder_identity = Some("pod-5".into());
        })
        .unwrap();
    server
        .modify::<Lease>("gamma", "g1", |l| {
            l.spec.as_mut().unwrap().lease_transitions = Some(1);
        })
        .unwrap();
    server
        .modify::<Lease>("gamma", "g1", |l| {
            l.metadata.labels = Some([("team".to_string(), "g".to_string())].into());
        })
        .unwrap();
    server
        .modify::<Lease>("gamma", "g1", |l| {
            l.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
        })
        .unwrap();
    server.bookmark();

    monitor
        .wait_for("all writes", WAIT, |m| {
            writes(m, "alpha") >= 7.0 && writes(m, "beta") >= 4.0 && writes(m, "gamma") >= 3.0
        })
        .await;
    let m = settled(&monitor).await;
    assert_eq!(writes(&m, "alpha"), 7.0, "{}", m.text);
    assert_eq!(writes(&m, "beta"), 4.0, "{}", m.text);
    assert_eq!(writes(&m, "gamma"), 3.0, "{}", m.text);
    assert_eq!(m.ns(LEASES, "alpha"), Some(3.0));
    assert_eq!(
        m.get(RESTARTS, &[]),
        Some(0.0),
        "bookmarks are not restarts"
    );
    // Label cardinality: only namespaces, never lease or holder names.
    for s in &m.samples {
        for key in s.labels.keys() {
            assert!(
                matches!(key.as_str(), "namespace" | "le"),
                "label {key} on {}",
                s.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_lease_stays_in_the_first_bucket_and_a_stopped_one_crosses_two_seconds() {
    let server = FakeApiServer::start().await.unwrap();
    server
        .create_lease("fast", "ns-lease", "pod-1", 15)
        .unwrap();
    server
        .create_lease("stuck", "ns-lease", "pod-2", 1)
        .unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &[]).await;
    monitor
        .wait_for("ready", WAIT, |m| m.has_ns(LEASES, "stuck"))
        .await;
    let fast = server.renew_every("fast", "ns-lease", Duration::from_millis(200));
    let stuck = server.renew_every("stuck", "ns-lease", Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let renewals_before_stop = stuck.stop().await;
    assert!(renewals_before_stop >= 3);

    let m = monitor
        .wait_for("the stopped lease to pass 2 s", WAIT, |m| {
            m.ns(OLDEST, "stuck").is_some_and(|age| age > 2.0)
        })
        .await;
    assert!(
        m.ns(OLDEST, "fast").unwrap() <= 0.25,
        "the renewing lease is young: {}",
        m.text
    );
    assert_eq!(
        m.ns(EXPIRED, "stuck"),
        Some(1.0),
        "older than its 1 s duration"
    );
    assert_eq!(m.ns(EXPIRED, "fast"), Some(0.0));
    let bucket = |ns: &str, le: &str| {
        m.get("lease_age_seconds_bucket", &[("namespace", ns), ("le", le)])
            .unwrap()
    };
    let count = |ns: &str| m.ns("lease_age_seconds_count", ns).unwrap();
    assert!(
        count("fast") >= 20.0,
        "sampled every 100 ms: {}",
        count("fast")
    );
    assert_eq!(
        bucket("fast", "0.25"),
        count("fast"),
        "every sample of a lease renewed every 200 ms is <= 0.25 s"
    );
    assert!(bucket("stuck", "2") < count("stuck"), "{}", m.text);
    let renewals = fast.stop().await;
    assert!(renewals >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_leases_and_emptied_namespaces_leave_the_gauges() {
    let server = FakeApiServer::start().await.unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &["--selector", "app=shop"]).await;
    monitor.wait_ready().await;
    for (ns, name) in [("keep", "l1"), ("keep", "l2"), ("gone", "l3")] {
        server
            .create(&FakeApiServer::lease(
                ns,
                name,
                "pod",
                15,
                &[("app", "shop")],
            ))
            .unwrap();
    }
    // Filtered out by --selector: never counted, never a series.
    server
        .create(&FakeApiServer::lease(
            "other",
            "x",
            "pod",
            15,
            &[("app", "cart")],
        ))
        .unwrap();
    monitor
        .wait_for("three leases", WAIT, |m| {
            m.ns(LEASES, "keep") == Some(2.0) && m.ns(LEASES, "gone") == Some(1.0)
        })
        .await;
    server.delete::<Lease>("keep", "l1").unwrap();
    server.delete::<Lease>("gone", "l3").unwrap();
    let m = monitor
        .wait_for("the deletions", WAIT, |m| {
            m.ns(LEASES, "keep") == Some(1.0) && !m.has_ns(LEASES, "gone")
        })
        .await;
    for gauge in [LEASES, OLDEST, EXPIRED] {
        assert!(
            !m.has_ns(gauge, "gone"),
            "{gauge} kept namespace gone:\n{}",
            m.text
        );
        assert!(m.has_ns(gauge, "keep"), "{gauge}");
    }
    assert!(!m.text.contains("namespace=\"other\""), "{}", m.text);
    assert_eq!(writes(&m, "keep"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_forces_a_relist_that_counts_no_lease_twice() {
    let server = FakeApiServer::start().await.unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &[]).await;
    monitor.wait_ready().await;
    server.create_lease("team", "l1", "pod-1", 15).unwrap();
    server.create_lease("team", "l2", "pod-2", 15).unwrap();
    server.create_lease("team", "l3", "pod-3", 15).unwrap();
    server.renew_lease("team", "l1").unwrap();
    monitor
        .wait_for("4 writes", WAIT, |m| writes(m, "team") == 4.0)
        .await;
    assert_eq!(server.requests().lists, 1);

    // Compaction: the open watch ends with 410 Expired. Until the watcher
    // relists, l1 is renewed, l2 deleted and l4 created: the relist must
    // find exactly one renewal and one creation, and not re-count l3.
    server.expire_history();
    server.renew_lease("team", "l1").unwrap();
    server.delete::<Lease>("team", "l2").unwrap();
    server.create_lease("team", "l4", "pod-4", 15).unwrap();
    assert!(
        eventually(WAIT, || async { server.requests().lists >= 2 }).await,
        "no relist after the 410; log:\n{}",
        monitor.log_text()
    );
    monitor
        .wait_for("the relist's changes", WAIT, |m| writes(m, "team") >= 6.0)
        .await;
    let m = settled(&monitor).await;
    assert_eq!(writes(&m, "team"), 6.0, "{}", m.text);
    assert_eq!(
        m.ns(LEASES, "team"),
        Some(3.0),
        "l2 went while the watch was down"
    );
    assert_eq!(m.get(RESTARTS, &[]), Some(1.0), "{}", m.text);

    // The watch resumed from the relist's resourceVersion.
    server.renew_lease("team", "l3").unwrap();
    monitor
        .wait_for("the renewal after the relist", WAIT, |m| {
            writes(m, "team") >= 7.0
        })
        .await;
    let m = settled(&monitor).await;
    assert_eq!(writes(&m, "team"), 7.0, "{}", m.text);
    assert_eq!(m.get(RESTARTS, &[]), Some(1.0), "one 410, one restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_restricts_the_watch_to_one_namespace() {
    let server = FakeApiServer::start().await.unwrap();
    server.create_lease("mine", "l1", "pod-1", 15).unwrap();
    server.create_lease("theirs", "l2", "pod-2", 15).unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &["--namespace", "mine"]).await;
    monitor.wait_ready().await;
    server.renew_lease("mine", "l1").unwrap();
    server.renew_lease("theirs", "l2").unwrap();
    server.create_lease("theirs", "l3", "pod-3", 15).unwrap();
    monitor
        .wait_for("the renewal in mine", WAIT, |m| writes(m, "mine") >= 1.0)
        .await;
    let m = settled(&monitor).await;
    assert_eq!(writes(&m, "mine"), 1.0, "{}", m.text);
    assert_eq!(m.ns(LEASES, "mine"), Some(1.0));
    assert!(!m.text.contains("namespace=\"theirs\""), "{}", m.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_watch_resumes_from_its_resource_version_without_a_relist() {
    let server = FakeApiServer::start().await.unwrap();
    server.create_lease("team", "l1", "pod-1", 15).unwrap();
    let monitor = Monitor::start(CALMPLANE.as_ref(), &server, &[]).await;
    monitor.wait_ready().await;
    assert!(eventually(WAIT, || async { server.requests().watches >= 1 }).await);
    server.renew_lease("team", "l1").unwrap();
    monitor
        .wait_for("the first renewal", WAIT, |m| writes(m, "team") >= 1.0)
        .await;
    // As at the apiserver's watch timeout: the stream simply ends. Changes
    // made before the watcher is back must arrive once, from the history.
    server.close_watches();
    server.renew_lease("team", "l1").unwrap();
    server.create_lease("team", "l2", "pod-2", 15).unwrap();
    assert!(
        eventually(WAIT, || async { server.requests().watches >= 2 }).await,
        "no new watch; log:\n{}",
        monitor.log_text()
    );
    monitor
        .wait_for("the changes made while it reconnected", WAIT, |m| {
            writes(m, "team") >= 3.0
        })
        .await;
    let m = settled(&monitor).await;
    assert_eq!(writes(&m, "team"), 3.0, "{}", m.text);
    assert_eq!(server.requests().lists, 1, "a closed watch is not a relist");
    assert_eq!(m.get(RESTARTS, &[]), Some(0.0), "nor a restart");
}
