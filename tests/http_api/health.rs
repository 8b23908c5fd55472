//! `/healthz`, `/readyz` and the metrics port.

use super::*;

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    for path in ["/healthz", "/readyz"] {
        let reply = c.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    // Metrics live on the plaintext port only.
    assert_eq!(c.get("/metrics").await.status, 404);

    // One of each result.
    let p = pod("p", Some("ns"));
    let (_, patch) = decode_response(&c.mutate(&review("m", "CREATE", "ns", &p, None)).await);
    let patched = apply_patch(&p, &patch.unwrap());
    let (_, patch) = decode_response(&c.mutate(&review("u", "CREATE", "ns", &patched, None)).await);
    assert!(patch.is_none());
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    decode_response(&c.mutate(&review("s", "CREATE", "ns", &cm, None)).await);
    let mut del = review("d", "DELETE", "ns", &p, Some(&p));
    del["request"]["object"] = Value::Null;
    decode_response(&c.mutate(&del).await);
    let d = deployment(json!({}));
    decode_response(&c.mutate(&review("dep", "CREATE", "shop", &d, None)).await);
    expect_error(
        &c.request("POST", "/mutate", "application/json", "nope")
            .await,
        400,
    );

    let text = server.metrics().await;
    let m = text.as_str();
    let req = |kind, op, result| {
        prom::exact(
            m,
            "calmplane_admission_requests_total",
            &[("kind", kind), ("operation", op), ("result", result)],
        )
    };
    assert_eq!(req("Pod", "CREATE", "mutated"), Some(1.0), "{text}");
    assert_eq!(req("Pod", "CREATE", "unchanged"), Some(1.0), "{text}");
    assert_eq!(req("Pod", "DELETE", "skipped"), Some(1.0), "{text}");
    assert_eq!(req("Deployment", "CREATE", "mutated"), Some(1.0), "{text}");
    let by_result = |result: &str| -> f64 {
        prom::sum(
            m,
            "calmplane_admission_requests_total",
            &[("result", result)],
        )
    };
    assert_eq!(by_result("skipped"), 2.0, "{text}"); // the ConfigMap and the DELETE
    assert_eq!(by_result("error"), 1.0, "{text}");
    assert_eq!(by_result("mutated"), 2.0, "{text}");
    let all = prom::sum(m, "calmplane_admission_requests_total", &[]);
    let known: f64 = ["mutated", "unchanged", "skipped", "error"]
        .iter()
        .map(|r| by_result(r))
        .sum();
    assert_eq!(all, known, "every result is one of the four: {text}");

    // Duration histogram: buckets from 50 µs to 1 s, cumulative, counting every admission.
    let buckets = prom::buckets(m, "calmplane_admission_duration_seconds", &[]);
    let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert!(les.contains(&5e-05), "{les:?}");
    assert!(les.contains(&1.0), "{les:?}");
    assert_eq!(les[0], 5e-05, "{les:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let count = prom::exact(m, "calmplane_admission_duration_seconds_count", &[]).unwrap();
    // Five reviews were answered (the unparsable body may or may not be timed).
    assert!((5.0..=6.0).contains(&count), "{text}");
    assert_eq!(buckets.last().unwrap().1, count);
    let one_second = buckets.iter().find(|b| b.0 == 1.0).unwrap().1;
    assert_eq!(one_second, count, "every test request takes less than 1 s");
    assert!(prom::exact(m, "calmplane_admission_duration_seconds_sum", &[]).unwrap() > 0.0);

    // Policy changes: the Pod by dns and prestop, the Deployment by rollout.
    let changes = |p| prom::exact(m, "calmplane_policy_changes_total", &[("policy", p)]);
    assert_eq!(changes("dns"), Some(1.0), "{text}");
    assert_eq!(changes("prestop"), Some(1.0), "{text}");
    assert_eq!(changes("rollout"), Some(1.0), "{text}");
    assert_eq!(changes("lease").unwrap_or(0.0), 0.0, "{text}");

    assert_eq!(
        prom::exact(
            m,
            "calmplane_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("# TYPE calmplane_admission_duration_seconds histogram"));
    assert!(text.contains("# TYPE calmplane_admission_requests_total counter"));
    assert!(server.stop().await);
}
