//! `calmplane register` against a mock apiserver.

use super::*;
use calmplane::manifests::{webhook_configuration, WebhookOptions};
use calmplane::register::{register, RegisterError, RegisterOptions};
use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use tower_test::mock;

/// What the mock apiserver saw.
struct Seen {
    method: http::Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

fn config() -> Value {
    let certs = calmplane::certs::generate(&calmplane::certs::serving_names(SERVICE, NAMESPACE))
        .expect("dev certs");
    webhook_configuration(&WebhookOptions {
        ca_bundle_pem: Some(certs.ca_pem.as_bytes()),
        ..WebhookOptions::default()
    })
    .expect("configuration")
}

/// A failed apiserver `Status`.
fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Run `register` against a mock that answers the first request with
/// `status` and `reply(body it received)`.
async fn against_mock(
    config: &Value,
    opts: RegisterOptions,
    status: u16,
    reply: impl FnOnce(&Value) -> Value + Send + 'static,
) -> (
    Result<
        k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration,
        RegisterError,
    >,
    Seen,
) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let (request, send) = handle
            .next_request()
            .await
            .expect("register sent no request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 body");
        // application/apply-patch+yaml: parse as YAML (JSON is YAML).
        let body: Value = calmplane::yaml::from_str(&text).expect("YAML body");
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        let seen = Seen {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body,
        };
        let response = reply(&seen.body);
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&response).expect("json")))
                .expect("response"),
        );
        seen
    });
    let client = kube::Client::new(service, "default");
    let result = register(client, config, opts).await;
    let seen = server.await.expect("mock apiserver task");
    (result, seen)
}

/// What an apiserver returns for a successful apply: the object, stored.
fn stored(body: &Value) -> Value {
    let mut object = body.clone();
    object["metadata"]["resourceVersion"] = json!("4242");
    object["metadata"]["uid"] = json!("0b7f4c4e-8f7a-4a1c-9b1e-2d3c4b5a6f70");
    object
}

#[tokio::test]
async fn register_sends_a_server_side_apply_of_the_exact_configuration() {
    let config = config();
    let (result, seen) = against_mock(&config, RegisterOptions::default(), 200, stored).await;
    assert_eq!(seen.method, http::Method::PATCH);
    assert_eq!(
        seen.path,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/calmplane"
    );
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    assert_eq!(
        seen.query.get("fieldManager").map(String::as_str),
        Some("calmplane")
    );
    assert_eq!(
        seen.query.get("fieldValidation").map(String::as_str),
        Some("Strict")
    );
    assert!(
        !seen.query.contains_key("force"),
        "no force unless asked: {:?}",
        seen.query
    );
    assert!(!seen.query.contains_key("dryRun"), "{:?}", seen.query);
    // Server-side apply needs apiVersion and kind in the body, and every
    // field we own: the body is the configuration, untouched.
    assert_eq!(seen.body, config);
    assert_eq!(seen.body["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(seen.body["kind"], "MutatingWebhookConfiguration");
    let base = only(&base_file("webhook.yaml"), "MutatingWebhookConfiguration").clone();
    for (sent, base) in seen.body["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .zip(base["webhooks"].as_array().unwrap())
    {
        assert!(sent["clientConfig"]["caBundle"].is_string());
        for key in [
            "namespaceSelector",
            "objectSelector",
            "failurePolicy",
            "sideEffects",
            "timeoutSeconds",
            "rules",
        ] {
            assert_eq!(sent[key], base[key], "{key}");
        }
        // Each webhook keeps its own path: /mutate, or /report.
        assert_eq!(
            sent["clientConfig"]["service"]["path"],
            base["clientConfig"]["service"]["path"]
        );
    }

    let stored = result.expect("register succeeds");
    assert_eq!(stored.metadata.resource_version.as_deref(), Some("4242"));
    // Pods and Deployments, each on /mutate and on /report.
    assert_eq!(stored.webhooks.map(|w| w.len()), Some(4));
}

#[tokio::test]
async fn force_and_dry_run_become_query_parameters() {
    let config = config();
    let opts = RegisterOptions {
        force: true,
        dry_run: true,
    };
    let (result, seen) = against_mock(&config, opts, 200, stored).await;
    result.expect("register succeeds");
    assert_eq!(seen.query.get("force").map(String::as_str), Some("true"));
    assert_eq!(seen.query.get("dryRun").map(String::as_str), Some("All"));
    assert_eq!(
        seen.query.get("fieldManager").map(String::as_str),
        Some("calmplane")
    );
    assert_eq!(seen.method, http::Method::PATCH);
}

#[tokio::test]
async fn a_conflict_is_reported_with_the_way_out() {
    let config = config();
    let conflict = |_: &Value| {
        failure(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\": .webhooks[name=\"pods.calmplane.dev\"].timeoutSeconds")
    };
    let (result, _) = against_mock(&config, RegisterOptions::default(), 409, conflict).await;
    let err = result.expect_err("a conflict is an error");
    assert!(matches!(err, RegisterError::Conflict { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("--force"), "{text}");
    assert!(
        text.contains("timeoutSeconds"),
        "the apiserver's message is kept: {text}"
    );
}

#[tokio::test]
async fn other_api_errors_are_not_called_conflicts() {
    let config = config();
    let forbidden = |_: &Value| {
        failure(
            403,
            "Forbidden",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io \"calmplane\" is forbidden",
        )
    };
    let (result, _) = against_mock(&config, RegisterOptions::default(), 403, forbidden).await;
    let err = result.expect_err("forbidden is an error");
    assert!(matches!(err, RegisterError::Apply { .. }), "{err:?}");
    assert!(err.to_string().contains("forbidden"), "{err}");
}

#[tokio::test]
async fn a_configuration_without_a_name_is_refused_before_any_request() {
    let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut config = config();
    config["metadata"].as_object_mut().unwrap().remove("name");
    let err = register(client, &config, RegisterOptions::default())
        .await
        .expect_err("no name");
    assert!(matches!(err, RegisterError::NoName { .. }), "{err:?}");
}
