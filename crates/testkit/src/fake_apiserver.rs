//! A fake kube-apiserver over real HTTPS, for tests that run real clients
//! (kube-rs, the `calmplane` binary) against scripted objects.
//!
//! It serves list and watch for any namespaced resource the test creates
//! objects of (`/api/v1/...` and `/apis/<group>/<version>/...`, all
//! namespaces or one), the way the apiserver does:
//!
//! * every write gets the next `resourceVersion`; lists carry the current one;
//! * `?watch=true&resourceVersion=N` replays the events after `N` (without
//!   `N`, or with `0`, the current objects as `ADDED`), then streams live
//!   `ADDED`, `MODIFIED` and `DELETED` events, one JSON object per line, until
//!   `timeoutSeconds`;
//! * [`FakeApiServer::bookmark`] sends a `BOOKMARK` to open watches that asked
//!   for them (`allowWatchBookmarks=true`);
//! * [`FakeApiServer::close_watches`] ends open watches cleanly (a watch
//!   timeout), so clients must watch again from their last resourceVersion;
//! * [`FakeApiServer::expire_history`] sends an `ERROR` event with a 410
//!   `Expired` Status to open watches and forgets the history, so a client
//!   watching from an older resourceVersion must relist, as after an etcd
//!   compaction;
//! * equality label selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`) filter lists
//!   and watches; anything else is answered 400;
//! * a bearer token is required (401 without it), so a client that reaches
//!   it went through the kubeconfig it was given.
//!
//! The certificate (for `127.0.0.1` and `localhost`) is signed by a fresh CA
//! that [`FakeApiServer::kubeconfig`] embeds as `certificate-authority-data`.
//! Lease helpers ([`FakeApiServer::create_lease`],
//! [`FakeApiServer::renew_lease`], [`FakeApiServer::renew_every`]) script the
//! lease traffic of the lease monitor's tests.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// What can go wrong starting or scripting the fake apiserver.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Certs(#[from] rcgen::Error),
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the listener or writing the kubeconfig failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// An object could not be (de)serialized.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The object to create has no name or no namespace.
    #[error("object has no {0}")]
    Incomplete(&'static str),
    /// The object to create exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The object to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
}

/// The kind of a watch event, as the apiserver spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was deleted (the event carries its last state).
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// The collection an object belongs to: the URL prefix (`api/v1` or
/// `apis/<group>/<version>`) and the plural resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Collection {
    prefix: String,
    plural: String,
}

impl Collection {
    fn of<K: k8s_openapi::Resource>() -> Collection {
        let prefix = if K::GROUP.is_empty() {
            format!("api/{}", K::VERSION)
        } else {
            format!("apis/{}/{}", K::GROUP, K::VERSION)
        };
        Collection {
            prefix,
            plural: K::URL_PATH_SEGMENT.to_string(),
        }
    }
}

/// One recorded write, replayed to watches that start before it.
#[derive(Clone)]
struct Change {
    collection: Collection,
    namespace: String,
    event: EventType,
    object: Value,
    rv: u64,
}

/// What open watches are sent.
#[derive(Clone)]
enum Broadcast {
    Change(Arc<Change>),
    Bookmark(u64),
    Gone(u64),
    Close,
}

#[derive(Default)]
struct Store {
    /// The last resourceVersion handed out.
    rv: u64,
    /// Watches from a resourceVersion older than this get 410.
    oldest_rv: u64,
    objects: BTreeMap<(Collection, String, String), Value>,
    /// Kind and apiVersion per collection, for list responses.
    kinds: HashMap<Collection, (String, String)>,
    history: Vec<Arc<Change>>,
}

/// Requests served, by verb, for tests that assert a relist happened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    /// List requests answered 200.
    pub lists: u64,
    /// Watch requests answered 200 (a 410 watch counts here too: it is a
    /// 200 with an ERROR event, as on the real apiserver).
    pub watches: u64,
    /// List requests received, answered or held by [`FakeApiServer::hold_lists`].
    pub lists_received: u64,
    /// Requests refused for a missing or wrong bearer token.
    pub unauthorized: u64,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Broadcast>,
    token: String,
    requests: Mutex<RequestCounts>,
    /// Flips to true on drop: open watch streams end.
    closing: watch::Sender<bool>,
    /// While true, list requests wait (to observe a client before its first list).
    hold_lists: watch::Sender<bool>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a write under the next resourceVersion, keep it in the
    /// history and send it to open watches; returns the stored object.
    fn record(
        &self,
        store: &mut Store,
        key: (Collection, String, String),
        event: EventType,
        mut value: Value,
    ) -> Value {
        store.rv += 1;
        let rv = store.rv;
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        if event == EventType::Deleted {
            store.objects.remove(&key);
        } else {
            store.objects.insert(key.clone(), value.clone());
        }
        let change = Arc::new(Change {
            collection: key.0,
            namespace: key.1,
            event,
            object: value.clone(),
            rv,
        });
        store.history.push(change.clone());
        // No receiver is fine: nobody is watching yet.
        let _ = self.events.send(Broadcast::Change(change));
        value
    }

    /// Change a stored object's JSON in place (MODIFIED).
    fn modify_value(
        &self,
        key: (Collection, String, String),
        edit: impl FnOnce(&mut Value) -> Result<(), FakeError>,
    ) -> Result<Value, FakeError> {
        let mut store = self.store();
        let mut value = store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| FakeError::NotFound(format!("{}/{}", key.1, key.2)))?;
        edit(&mut value)?;
        Ok(self.record(&mut store, key, EventType::Modified, value))
    }

    fn renew_lease_at(
        &self,
        namespace: &str,
        name: &str,
        at: Timestamp,
    ) -> Result<Value, FakeError> {
        let key = (
            Collection::of::<Lease>(),
            namespace.to_string(),
            name.to_string(),
        );
        self.modify_value(key, |value| {
            value["spec"]["renewTime"] = serde_json::to_value(MicroTime(at))?;
            Ok(())
        })
    }

    fn count(&self, f: impl FnOnce(&mut RequestCounts)) {
        f(&mut self.requests.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A running fake apiserver; stops (and ends its watches) on drop.
pub struct FakeApiServer {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        let _ = self.shared.closing.send(true);
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Start on an ephemeral loopback port, inside the current tokio runtime.
    pub async fn start() -> Result<FakeApiServer, FakeError> {
        let (ca_pem, cert_pem, key_pem) = certificates()?;
        let certs = rustls_pemfile_certs(&cert_pem)?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(
            rcgen::KeyPair::from_pem(&key_pem)?.serialize_der(),
        )
        .map_err(|e| FakeError::Tls(rustls::Error::General(e.to_string())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(65_536);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            token: format!("fake-token-{}", addr.port()),
            requests: Mutex::new(RequestCounts::default()),
            closing: watch::channel(false).0,
            hold_lists: watch::channel(false).0,
        });
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(FakeApiServer {
            addr,
            ca_pem,
            shared,
            task,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the serving certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token clients must send.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A kubeconfig (YAML) for this server: its CA and token, context `fake`.
    pub fn kubeconfig(&self) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: fake\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
            url = self.url(),
            token = self.token(),
        )
    }

    /// Write [`FakeApiServer::kubeconfig`] to `dir/kubeconfig` and return its path.
    pub fn write_kubeconfig(&self, dir: &FsPath) -> Result<PathBuf, FakeError> {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig())?;
        Ok(path)
    }

    /// While `hold` is true, list requests are accepted but not answered, so
    /// a test can look at a client that has not finished its first list.
    pub fn hold_lists(&self, hold: bool) {
        self.shared.hold_lists.send_replace(hold);
    }

    /// Requests served so far.
    pub fn requests(&self) -> RequestCounts {
        *self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// Create `object` (ADDED); sets its resourceVersion, uid and, when
    /// absent, its creationTimestamp. Returns the stored object.
    pub fn create<K>(&self, object: &K) -> Result<K, FakeError>
    where
        K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
    {
        let collection = Collection::of::<K>();
        let mut value = serde_json::to_value(object)?;
        value["apiVersion"] = json!(K::API_VERSION);
        value["kind"] = json!(K::KIND);
        let ns = str_at(&value, "namespace").ok_or(FakeError::Incomplete("namespace"))?;
        let name = str_at(&value, "name").ok_or(FakeError::Incomplete("name"))?;
        let mut store = self.shared.store();
        store
            .kinds
            .entry(collection.clone())
            .or_insert_with(|| (K::API_VERSION.to_string(), K::KIND.to_string()));
        let key = (collection.clone(), ns.clone(), name.clone());
        if store.objects.contains_key(&key) {
            return Err(FakeError::Exists(format!("{ns}/{name}")));
        }
        if value["metadata"]["creationTimestamp"].is_null() {
            value["metadata"]["creationTimestamp"] = serde_json::to_value(Time(now_seconds()))?;
        }
        value["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", ns, name, store.rv + 1));
        let stored = self.shared.record(&mut store, key, EventType::Added, value);
        Ok(serde_json::from_value(stored)?)
    }

    /// Change an object (MODIFIED) with `edit`; returns the stored object.
    pub fn modify<K>(
        &self,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut K),
    ) -> Result<K, FakeError>
    where
        K: k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
    {
        let key = (
            Collection::of::<K>(),
            namespace.to_string(),
            name.to_string(),
        );
        let stored = self.shared.modify_value(key, |value| {
            let mut typed: K = serde_json::from_value(value.clone())?;
            edit(&mut typed);
            let uid = value["metadata"]["uid"].clone();
            *value = serde_json::to_value(&typed)?;
            value["apiVersion"] = json!(K::API_VERSION);
            value["kind"] = json!(K::KIND);
            value["metadata"]["uid"] = uid;
            Ok(())
        })?;
        Ok(serde_json::from_value(stored)?)
    }

    /// Delete an object (DELETED).
    pub fn delete<K>(&self, namespace: &str, name: &str) -> Result<(), FakeError>
    where
        K: k8s_openapi::Resource,
    {
        let key = (
            Collection::of::<K>(),
            namespace.to_string(),
            name.to_string(),
        );
        let mut store = self.shared.store();
        let value = store
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| FakeError::NotFound(format!("{namespace}/{name}")))?;
        self.shared
            .record(&mut store, key, EventType::Deleted, value);
        Ok(())
    }

    /// The stored object, if any.
    pub fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + serde::de::DeserializeOwned,
    {
        let key = (
            Collection::of::<K>(),
            namespace.to_string(),
            name.to_string(),
        );
        let value = self.shared.store().objects.get(&key).cloned()?;
        serde_json::from_value(value).ok()
    }

    /// Send a BOOKMARK at the current resourceVersion to every open watch
    /// that allowed bookmarks.
    pub fn bookmark(&self) {
        let rv = self.shared.store().rv;
        let _ = self.shared.events.send(Broadcast::Bookmark(rv));
    }

    /// End every open watch normally, as the apiserver does at
    /// `timeoutSeconds` or a load balancer at its idle timeout. Clients
    /// watch again from the last resourceVersion they saw, without a relist.
    pub fn close_watches(&self) {
        let _ = self.shared.events.send(Broadcast::Close);
    }

    /// Compact: forget the history, end every open watch with a 410 `Expired`
    /// ERROR event, and answer 410 to any watch from an older
    /// resourceVersion. Clients must relist.
    pub fn expire_history(&self) {
        let mut store = self.shared.store();
        store.oldest_rv = store.rv;
        store.history.clear();
        let _ = self.shared.events.send(Broadcast::Gone(store.rv));
    }

    // ------------------------------------------------------------ leases

    /// A Lease as a node or leader-election client writes it: holder,
    /// duration, renewTime and acquireTime now, with `labels`.
    pub fn lease(
        namespace: &str,
        name: &str,
        holder: &str,
        duration_seconds: i32,
        labels: &[(&str, &str)],
    ) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_string()),
                name: Some(name.to_string()),
                labels: (!labels.is_empty()).then(|| {
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Create a Lease ([`FakeApiServer::lease`]) with no labels.
    pub fn create_lease(
        &self,
        namespace: &str,
        name: &str,
        holder: &str,
        duration_seconds: i32,
    ) -> Result<Lease, FakeError> {
        self.create(&Self::lease(namespace, name, holder, duration_seconds, &[]))
    }

    /// Set a Lease's renewTime to now (one MODIFIED event, one lease write).
    pub fn renew_lease(&self, namespace: &str, name: &str) -> Result<Lease, FakeError> {
        self.renew_lease_at(namespace, name, Timestamp::now())
    }

    /// Set a Lease's renewTime to `at`, e.g. in the past to script a holder
    /// that stopped long ago.
    pub fn renew_lease_at(
        &self,
        namespace: &str,
        name: &str,
        at: Timestamp,
    ) -> Result<Lease, FakeError> {
        let stored = self.shared.renew_lease_at(namespace, name, at)?;
        Ok(serde_json::from_value(stored)?)
    }

    /// Renew a Lease every `period` until the returned handle is stopped or
    /// dropped. Missed ticks are made up, so `n` periods give `n` renewals
    /// even on a busy machine.
    pub fn renew_every(&self, namespace: &str, name: &str, period: Duration) -> Renewer {
        let shared = self.shared.clone();
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let (stop, mut stopped) = watch::channel(false);
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let renewed = count.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if shared.renew_lease_at(&namespace, &name, Timestamp::now()).is_ok() {
                            renewed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        Renewer {
            stop,
            task: Some(task),
            count,
        }
    }
}

/// A background renewal loop from [`FakeApiServer::renew_every`].
pub struct Renewer {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl Renewer {
    /// Stop renewing; returns the number of renewals written.
    pub async fn stop(mut self) -> u64 {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Renewals written so far.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

// --------------------------------------------------------------- HTTP

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/{version}/{plural}", get(core_all))
        .route(
            "/api/{version}/namespaces/{ns}/{plural}",
            get(core_namespaced),
        )
        .route("/apis/{group}/{version}/{plural}", get(group_all))
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}",
            get(group_namespaced),
        )
        .with_state(shared)
}

type Params = Query<HashMap<String, String>>;

async fn core_all(
    State(s): State<Arc<Shared>>,
    Path((version, plural)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    serve(s, format!("api/{version}"), plural, None, headers, q).await
}

async fn core_namespaced(
    State(s): State<Arc<Shared>>,
    Path((version, ns, plural)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    serve(s, format!("api/{version}"), plural, Some(ns), headers, q).await
}

async fn group_all(
    State(s): State<Arc<Shared>>,
    Path((group, version, plural)): Path<(String, String, String)>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    serve(
        s,
        format!("apis/{group}/{version}"),
        plural,
        None,
        headers,
        q,
    )
    .await
}

async fn group_namespaced(
    State(s): State<Arc<Shared>>,
    Path((group, version, ns, plural)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    serve(
        s,
        format!("apis/{group}/{version}"),
        plural,
        Some(ns),
        headers,
        q,
    )
    .await
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        status(code.as_u16(), reason, message).to_string(),
    )
        .into_response()
}

async fn serve(
    shared: Arc<Shared>,
    prefix: String,
    plural: String,
    namespace: Option<String>,
    headers: HeaderMap,
    query: HashMap<String, String>,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(shared.token.as_str());
    if !authorized {
        shared.count(|c| c.unauthorized += 1);
        return status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(message) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    let collection = Collection { prefix, plural };
    let scope = Scope {
        collection,
        namespace,
        selector,
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        shared.count(|c| c.watches += 1);
        watch(shared, scope, &query)
    } else {
        shared.count(|c| c.lists_received += 1);
        let mut held = shared.hold_lists.subscribe();
        // Only fails when the server is gone, and then nobody waits.
        let _ = held.wait_for(|hold| !hold).await;
        shared.count(|c| c.lists += 1);
        list(&shared, &scope)
    }
}

/// Which objects a request is about.
struct Scope {
    collection: Collection,
    namespace: Option<String>,
    selector: Selector,
}

impl Scope {
    fn matches(&self, collection: &Collection, namespace: &str, object: &Value) -> bool {
        *collection == self.collection
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.selector.matches(&object["metadata"]["labels"])
    }
}

fn list(shared: &Shared, scope: &Scope) -> Response {
    let store = shared.store();
    let items: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((c, ns, _), v)| scope.matches(c, ns, v))
        .map(|(_, v)| v)
        .collect();
    let (api_version, kind) = store
        .kinds
        .get(&scope.collection)
        .cloned()
        .unwrap_or_else(|| ("v1".to_string(), "Unknown".to_string()));
    let body = json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn gone_event(since: u64, oldest: u64) -> Bytes {
    line(&json!({
        "type": "ERROR",
        "object": status(410, "Expired", &format!("too old resource version: {since} ({oldest})")),
    }))
}

fn watch(shared: Arc<Shared>, scope: Scope, query: &HashMap<String, String>) -> Response {
    // Without a resourceVersion (or with "0"), the apiserver starts from its
    // current state, sent as synthetic ADDED events.
    let from_state = query
        .get("resourceVersion")
        .is_none_or(|v| v.is_empty() || v == "0");
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (api_version, kind);
    let mut backlog = Vec::new();
    let live;
    {
        // Subscribe and read the history under one lock, so that no change
        // falls between the two.
        let store = shared.store();
        live = shared.events.subscribe();
        (api_version, kind) = store
            .kinds
            .get(&scope.collection)
            .cloned()
            .unwrap_or_else(|| ("v1".to_string(), "Unknown".to_string()));
        if from_state {
            for ((collection, ns, _), object) in &store.objects {
                if scope.matches(collection, ns, object) {
                    backlog.push(line(&json!({"type": "ADDED", "object": object})));
                }
            }
        } else if since < store.oldest_rv {
            let body = gone_event(since, store.oldest_rv);
            return watch_response(Body::from(body));
        }
        for change in store.history.iter().filter(|c| !from_state && c.rv > since) {
            if scope.matches(&change.collection, &change.namespace, &change.object) {
                backlog.push(event_line(change));
            }
        }
    }
    let state = WatchStream {
        backlog: backlog.into_iter(),
        live,
        closing: shared.closing.subscribe(),
        scope,
        deadline: tokio::time::Instant::now() + timeout,
        done: false,
        bookmarks,
        since,
        api_version,
        kind,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let line = st.next_line().await?;
        Some((Ok::<_, std::io::Error>(line), st))
    });
    watch_response(Body::from_stream(stream))
}

/// One open watch: the replayed history, then live changes until the
/// timeout, a 410, or the server stops.
struct WatchStream {
    backlog: std::vec::IntoIter<Bytes>,
    live: broadcast::Receiver<Broadcast>,
    closing: watch::Receiver<bool>,
    scope: Scope,
    deadline: tokio::time::Instant,
    done: bool,
    bookmarks: bool,
    since: u64,
    api_version: String,
    kind: String,
}

impl WatchStream {
    async fn next_line(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(line) = self.backlog.next() {
            return Some(line);
        }
        loop {
            let next = tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => return None,
                _ = self.closing.changed() => return None,
                next = self.live.recv() => next,
            };
            match next {
                Ok(Broadcast::Change(change)) => {
                    if self
                        .scope
                        .matches(&change.collection, &change.namespace, &change.object)
                    {
                        return Some(event_line(&change));
                    }
                }
                Ok(Broadcast::Bookmark(rv)) => {
                    if self.bookmarks {
                        return Some(line(&json!({
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": self.api_version,
                                "kind": self.kind,
                                "metadata": {"resourceVersion": rv.to_string()},
                            },
                        })));
                    }
                }
                Ok(Broadcast::Close) => return None,
                Ok(Broadcast::Gone(oldest)) => {
                    self.done = true;
                    return Some(gone_event(self.since, oldest));
                }
                // A watcher this far behind has lost events: as on the
                // apiserver, it must relist.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.done = true;
                    return Some(gone_event(self.since, self.since + 1));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn watch_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn event_line(change: &Change) -> Bytes {
    line(&json!({"type": change.event.as_str(), "object": change.object}))
}

fn str_at(value: &Value, field: &str) -> Option<String> {
    value["metadata"][field]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Now, at the whole-second precision of `metav1.Time`.
fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

// ---------------------------------------------------------- selectors

/// An equality-based label selector.
#[derive(Debug, Default)]
struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let term = if let Some((k, v)) = raw.split_once("!=") {
                Term::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = raw.split_once("==") {
                Term::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = raw.split_once('=') {
                Term::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = raw.strip_prefix('!') {
                Term::Absent(k.trim().into())
            } else if raw.contains([' ', '(']) {
                return Err(format!(
                    "unsupported label selector {raw:?}: the fake apiserver knows equality selectors only"
                ));
            } else {
                Term::Exists(raw.into())
            };
            terms.push(term);
        }
        Ok(Selector { terms })
    }

    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.terms.iter().all(|t| match t {
            Term::Equals(k, v) => get(k) == Some(v.as_str()),
            Term::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
        })
    }
}

// -------------------------------------------------------- certificates

/// (CA PEM, certificate PEM, key PEM) for 127.0.0.1 and localhost.
fn certificates() -> Result<(String, String, String), FakeError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake apiserver CA");
    let now = time::OffsetDateTime::now_utc();
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(2);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fake apiserver");
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(2);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

fn rustls_pemfile_certs(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, FakeError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FakeError::Tls(rustls::Error::General(e.to_string())))
}
