//! A panic in a policy fails its request, not the server.

use super::*;

/// Panics on pods named `boom`; does nothing otherwise.
struct PanickingPolicy;

impl Policy for PanickingPolicy {
    fn name(&self) -> &'static str {
        "panicking"
    }

    fn handles(&self, kind: Kind, operation: &Operation) -> bool {
        kind == Kind::Pod && *operation == Operation::Create
    }

    fn reads(&self, _: &mut Reads) {}

    fn in_apiserver(&self) -> calmplane::policy::apiserver::InApiserver {
        calmplane::policy::apiserver::InApiserver::Stays("it exists to panic")
    }

    fn apply(&self, _ctx: &Context<'_>, m: &mut Mutation) {
        if m.get(&["metadata", "name"]).and_then(Value::as_str) == Some("boom") {
            panic!("PanickingPolicy: deliberate panic for the test");
        }
    }
}

#[tokio::test]
async fn a_panic_in_a_policy_is_a_500_for_that_request_only() {
    let clock = Arc::new(FixedClock(1_767_000_000));
    let pipeline = Pipeline::from_policies(
        vec![
            Box::new(PanickingPolicy),
            Box::new(Dns::new(Default::default())),
            Box::new(Prestop::new(Default::default())),
        ],
        clock.clone(),
    );
    let s = TestServer::start().await;
    s.state.pipeline.store(Arc::new(pipeline));
    let mut c = s.client().await;

    for round in 0..2 {
        let uid = format!("boom-{round}");
        let reply = c.mutate(&pod_review(&uid, "boom")).await;
        let message = expect_error(&reply, 500);
        assert!(message.contains(&uid), "{message}");
        // The next good request on the same connection succeeds.
        let reply = c.mutate(&pod_review("fine", "fine")).await;
        let (response, patch) = decode_response(&reply);
        assert_eq!(response["uid"], "fine");
        let patched = apply_patch(&pod("fine", Some("ns")), &patch.unwrap());
        assert_eq!(
            patched["spec"]["dnsConfig"]["options"][0],
            json!({"name": "ndots", "value": "2"})
        );
    }
    // /preview too.
    let pod_json = |name| serde_json::to_vec(&pod(name, Some("ns"))).unwrap();
    let reply = c
        .preview("/preview", "application/json", pod_json("boom"))
        .await;
    expect_error(&reply, 500);
    let reply = c
        .preview("/preview", "application/json", pod_json("fine"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Counted as errors, by kind and operation.
    let (status, metrics) = s.metrics_get("/metrics").await;
    assert_eq!(status, 200);
    let m = metrics.as_str();
    let pod_creates = |result| {
        prom::exact(
            m,
            "calmplane_admission_requests_total",
            &[("kind", "Pod"), ("operation", "CREATE"), ("result", result)],
        )
    };
    assert_eq!(pod_creates("error"), Some(2.0), "{metrics}");
    assert_eq!(pod_creates("mutated"), Some(2.0), "{metrics}");

    // Swapping the pipeline back to the defaults takes effect at once.
    s.state.pipeline.store(Arc::new(
        Pipeline::new(&calmplane::config::Config::default(), clock).unwrap(),
    ));
    let (_, patch) = decode_response(&c.mutate(&pod_review("b", "boom")).await);
    assert!(patch.is_some());
    assert!(s.stop().await);
}
