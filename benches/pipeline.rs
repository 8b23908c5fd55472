//! Latency benches: how much does calmplane add to an admission, and how far
//! is it from the floor (JSON parse + serialise of the same bytes, TLS + HTTP
//! with a canned answer)?
//!
//! ```text
//! inprocess/calmplane/<fixture>  review::parse + review::admit -> response String
//! inprocess/floor/<fixture>      serde_json::from_slice::<Value> + to_string, same bytes
//! stage/parse/<fixture>          review::parse: envelope, then the view of the object
//! stage/policies/<fixture>       Pipeline::run on the parsed object
//! stage/patch/<fixture>          the JSON Patch alone, serialised (part of the response)
//! stage/response/<fixture>       review::response_body (patch JSON, base64, envelope)
//! e2e/calmplane/<fixture>        POST /mutate on a kept-alive HTTPS connection, in-process server
//! e2e/floor/<fixture>            the same request to a bare rustls+hyper server (canned answer)
//! ```
//!
//! `cargo bench --bench pipeline` runs them all; `make bench-gate` runs a
//! short version and checks the results with `benches/gate.py`.

// The allocator the binary ships with (src/main.rs), so that these figures
// are the ones `calmplane serve` gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use calmplane::pipeline::Pipeline;
use calmplane::policy::{Context, Kind};
use calmplane::review;
use calmplane::server::ServeOptions;
use calmplane_testkit::{fixtures, floor};
use criterion::{BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

fn inprocess(c: &mut Criterion, fixtures: &[fixtures::Fixture], pipeline: &Pipeline) {
    let mut group = c.benchmark_group("inprocess");
    for f in fixtures {
        group.throughput(Throughput::Bytes(f.body.len() as u64));
        // Pipeline and floor back to back, so that their ratio is taken on
        // the same machine state.
        group.bench_with_input(BenchmarkId::new("calmplane", f.name), &f.body, |b, body| {
            b.iter(|| fixtures::pipeline(pipeline, black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("floor", f.name), &f.body, |b, body| {
            b.iter(|| fixtures::floor(black_box(body)))
        });
    }
    group.finish();
}

/// Run the policies of a parsed request (what `review::admit` does, minus the envelope).
fn run_policies(
    pipeline: &Pipeline,
    request: review::RequestIn<'_>,
) -> calmplane::pipeline::Outcome {
    let kind = Kind::from_gvk(
        &request.kind.group,
        &request.kind.version,
        &request.kind.kind,
    )
    .expect("fixtures are Pods and Deployments");
    let operation = review::parse_operation(&request.operation).expect("known operation");
    let ctx = Context::new(kind, operation)
        .in_namespace(request.namespace.as_deref())
        .replacing(request.old_object.as_ref(), request.templates);
    // `/mutate` runs the policies on the view the pipeline's reads build.
    pipeline.run_in_view(&ctx, request.object.expect("fixtures have an object"))
}

fn stages(c: &mut Criterion, fixtures: &[fixtures::Fixture], pipeline: &Pipeline) {
    let mut group = c.benchmark_group("stage");
    for f in fixtures {
        group.bench_with_input(BenchmarkId::new("parse", f.name), &f.body, |b, body| {
            b.iter(|| review::parse(black_box(body), pipeline.reads()).expect("parses"))
        });
        group.bench_with_input(BenchmarkId::new("policies", f.name), &f.body, |b, body| {
            // Parsing is setup here; dropping the outcome happens outside the timing.
            b.iter_batched(
                || review::parse(body, pipeline.reads()).expect("parses"),
                |request| run_policies(pipeline, request),
                criterion::BatchSize::SmallInput,
            )
        });
        let outcome = run_policies(
            pipeline,
            review::parse(&f.body, pipeline.reads()).expect("parses"),
        );
        let uid = review::parse(&f.body, pipeline.reads())
            .expect("parses")
            .uid;
        group.bench_with_input(BenchmarkId::new("patch", f.name), &outcome, |b, o| {
            b.iter(|| serde_json::to_vec(black_box(&o.patch)).expect("serialises"))
        });
        group.bench_with_input(BenchmarkId::new("response", f.name), &outcome, |b, o| {
            b.iter(|| review::response_body(black_box(&uid), black_box(o)))
        });
    }
    group.finish();
}

/// One kept-alive HTTPS connection (hyper client over tokio-rustls).
struct Client {
    send: SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr, ca_pem: &str) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        Client { send }
    }

    /// POST /mutate and read the whole response.
    async fn mutate(&mut self, body: Bytes) -> Bytes {
        let req = hyper::Request::post("/mutate")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        self.send.ready().await.expect("connection ready");
        let resp = self.send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("body").to_bytes()
    }
}

struct Servers {
    calmplane: SocketAddr,
    floor: SocketAddr,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

/// An in-process calmplane (`Server::bind` + `run`, as `calmplane serve`)
/// and a transport floor server answering `canned`, both on loopback.
async fn start_servers(canned: Bytes) -> Servers {
    let dir = tempfile::tempdir().expect("tempdir");
    let names = calmplane::certs::serving_names("calmplane", "calmplane");
    let generated = calmplane::certs::generate(&names).expect("dev certs");
    calmplane::certs::write(dir.path(), &generated).expect("write certs");
    let mut opts = ServeOptions::default();
    opts.tls.cert = dir.path().join("tls.crt");
    opts.tls.key = dir.path().join("tls.key");
    opts.listen = ([127, 0, 0, 1], 0).into();
    opts.metrics_listen = ([127, 0, 0, 1], 0).into();
    opts.shutdown_delay = Duration::ZERO;
    let server = opts.bind().await.expect("calmplane binds");
    let calmplane = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));

    let config = floor::server_config(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind floor");
    let floor_addr = listener.local_addr().expect("floor address");
    tokio::spawn(floor::serve(listener, config, canned));
    Servers {
        calmplane,
        floor: floor_addr,
        ca_pem: generated.ca_pem,
        _dir: dir,
    }
}

fn end_to_end(c: &mut Criterion, fixtures: &[fixtures::Fixture], pipeline: &Pipeline) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("e2e");
    for f in fixtures
        .iter()
        .filter(|f| [fixtures::TYPICAL_POD, fixtures::ALL_FIELDS_POD].contains(&f.name))
    {
        // The floor answers with the very bytes calmplane answers.
        let canned = Bytes::from(fixtures::pipeline(pipeline, &f.body));
        let body = Bytes::from(f.body.clone());
        let servers = rt.block_on(start_servers(canned.clone()));
        for (target, addr) in [("calmplane", servers.calmplane), ("floor", servers.floor)] {
            let mut client = rt.block_on(Client::connect(addr, &servers.ca_pem));
            // Both must answer; calmplane must answer what the floor replays.
            let first = rt.block_on(client.mutate(body.clone()));
            fixtures::check_response(f, std::str::from_utf8(&first).expect("UTF-8"));
            group.bench_function(BenchmarkId::new(target, f.name), |b| {
                b.iter(|| rt.block_on(client.mutate(body.clone())))
            });
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let pipeline = Pipeline::with_defaults();
    let fixtures = fixtures::all();
    for f in &fixtures {
        fixtures::check_response(f, &fixtures::pipeline(&pipeline, &f.body));
    }
    inprocess(&mut c, &fixtures, &pipeline);
    stages(&mut c, &fixtures, &pipeline);
    end_to_end(&mut c, &fixtures, &pipeline);
    c.final_summary();
}
