//! The transport floor for `make load`: a bare tokio-rustls + hyper server
//! that answers every request with a canned AdmissionReview response.
//!
//! ```text
//! transport_floor --listen 127.0.0.1:9443 --cert tls.crt --key tls.key --response response.json
//! ```
//!
//! Same TLS stack, HTTP/1.1 keep-alive and tokio runtime as `calmplane serve`,
//! none of its routing, JSON, policies, metrics or logging: what is left is
//! the cost of the transport. The server code is `calmplane_testkit::floor`,
//! shared with the in-process e2e bench.

use calmplane_testkit::floor;
use std::net::SocketAddr;

fn main() {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 9443).into();
    let (mut cert, mut key, mut response) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => listen = value().parse().expect("--listen ADDR:PORT"),
            "--cert" => cert = Some(value()),
            "--key" => key = Some(value()),
            "--response" => response = Some(value()),
            other => panic!("unknown argument {other:?}; usage: --listen ADDR --cert PEM --key PEM --response FILE"),
        }
    }
    let read = |what: &str, path: Option<String>| {
        let path = path.unwrap_or_else(|| panic!("--{what} is required"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let config = floor::server_config(&read("cert", cert), &read("key", key));
    let canned = bytes::Bytes::from(read("response", response));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .unwrap_or_else(|e| panic!("cannot listen on {listen}: {e}"));
            eprintln!("transport floor serving on {listen}");
            floor::serve(listener, config, canned).await;
        });
}
