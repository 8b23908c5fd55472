//! Test code shared by calmplane's integration tests (`tests/`), benches
//! (`benches/`), load fixtures (`load/`), soak driver (`soak/`) and fuzz
//! crate (`fuzz/`), as one workspace member instead of source files included
//! by path: harnesses, fixtures and checkers, and test doubles (real servers
//! on loopback sockets that real clients, kube-rs or the `calmplane` binary,
//! talk to). Not published.
//!
//! Everything here reads only from the repository: the upstream fixtures in
//! `tests/fixtures/upstream` ([`corpus`]) and the Python checker in
//! `tests/pycheck.py` ([`pychecks`]).

pub mod cluster;
pub mod corpus;
pub mod fake_apiserver;
pub mod fixtures;
pub mod floor;
pub mod fuzz_check;
pub mod harness;
pub mod hostile;
pub mod lease_monitor;
pub mod process;
pub mod prom;
pub mod pychecks;
pub mod review;
pub mod runbook;
pub mod seeds;
pub mod tools;
