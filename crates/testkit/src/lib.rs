//! Test doubles shared by calmplane's integration tests, benches and soaks:
//! real servers on loopback sockets that real clients (kube-rs, the
//! `calmplane` binary) talk to. Not published.

pub mod fake_apiserver;
