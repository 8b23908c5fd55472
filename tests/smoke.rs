//! The shortest path through calmplane: one Pod CREATE over real TLS, patched, and a
//! second pass over the patched Pod that changes nothing.

mod support;
use serde_json::json;
use support::*;

#[tokio::test]
async fn pod_create_over_tls_is_patched_and_second_pass_is_clean() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let reply = client
        .mutate(&review("u-1", "CREATE", "ns", &pod, None))
        .await;
    let (response, patch) = decode_response(&reply);
    assert_eq!(response["uid"], "u-1");
    let patched = apply_patch(&pod, &patch.expect("a patch"));
    assert_eq!(
        patched["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
        5
    );
    let again = client
        .mutate(&review("u-2", "CREATE", "ns", &patched, None))
        .await;
    assert_eq!(decode_response(&again).1, None);
    assert!(server.stop().await);
}
