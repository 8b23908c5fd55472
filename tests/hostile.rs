//! Hostile clients against the release binary, over real sockets, with the
//! server's memory read from `/proc` throughout (issue 18): many concurrent
//! maximum-size bodies, bodies that expand when parsed, slow and unfinished
//! headers on both ports, the worst `/preview` YAML, connection floods, and
//! all of them at once. The attacks and the probes are
//! `calmplane_testkit::hostile`'s; this file holds the server to:
//!
//! * peak RSS under three quarters of the memory limit the manifests ship
//!   (`calmplane::budget::CONTAINER_MEMORY_LIMIT`, checked against
//!   `manifests/base/deployment.yaml` by the budget's own test);
//! * every kubelet-like `/healthz` probe answered 200 within its 2 s timeout;
//! * every apiserver-like `/mutate` answered 200 within the webhook's 2 s;
//! * every Prometheus-like scrape of the admin port answered.
//!
//! Memory and CPU are only meaningful for the build that ships, so this runs
//! the release binary (`make test` builds it first; `CALMPLANE_RELEASE_BIN`
//! names another). It prints the table the note reports.

use calmplane_testkit::hostile::{self, Attack, Outcome, Target};
use calmplane_testkit::process::Process;
use std::path::PathBuf;
use std::time::Duration;

/// How long each attack runs: long enough for several rounds of every
/// timeout the attacks provoke (header 5 s, pool wait 1 s, handshake 5 s).
const ATTACK: Duration = Duration::from_secs(8);

fn release_binary() -> Option<PathBuf> {
    let path = std::env::var_os("CALMPLANE_RELEASE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/calmplane"),
        PathBuf::from,
    );
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} is missing: build it with `cargo build --release --bin calmplane` (make test does)",
        path.display()
    );
    assert!(!calmplane_testkit::tools::in_ci(), "{why}");
    eprintln!("SKIPPED hostile clients: {why}");
    None
}

fn check(outcome: &Outcome, failures: &mut Vec<String>) {
    let limit = calmplane::budget::CONTAINER_MEMORY_LIMIT as u64;
    let name = outcome.attack.name();
    let mut fail = |what: String| failures.push(format!("{name}: {what}"));
    if outcome.peak_rss * 4 > limit * 3 {
        fail(format!(
            "peak RSS {} MiB is over three quarters of the {} MiB limit",
            outcome.peak_rss >> 20,
            limit >> 20
        ));
    }
    if outcome.healthz_failures > 0 || outcome.healthz_probes < 10 {
        fail(format!(
            "{} of {} /healthz probes failed or took over {:?}",
            outcome.healthz_failures,
            outcome.healthz_probes,
            hostile::PROBE_TIMEOUT
        ));
    }
    // The admin port's 64 slots are shared with whoever reaches the port
    // (docs/src/limits.md; the NetworkPolicy keeps others out), first come
    // first served: behind hundreds of attackers' connections, a scrape can
    // wait past the probe's 2 s now and then. Prometheus alerts only after
    // 5 minutes of failed scrapes (CalmplaneWebhookDown). So a quarter of
    // the scrapes may fail then, none otherwise; the kubelet's probes (the
    // TLS port, above) never.
    let allowed = if outcome.attack.reaches_the_admin_port() {
        outcome.scrape_probes / 4
    } else {
        0
    };
    if outcome.scrape_failures > allowed || outcome.scrape_probes < 10 {
        fail(format!(
            "{} of {} scrapes failed ({allowed} may)",
            outcome.scrape_failures, outcome.scrape_probes
        ));
    }
    let answered: usize = outcome.mutate_statuses.values().sum();
    let ok = outcome.mutate_statuses.get(&200).copied().unwrap_or(0);
    if ok != answered || answered < 20 || outcome.mutate_worst >= hostile::WEBHOOK_TIMEOUT {
        fail(format!(
            "the well-behaved /mutate client got {:?} (worst {:?})",
            outcome.mutate_statuses, outcome.mutate_worst
        ));
    }
    // The attack reached the server, and was answered as designed.
    let got = |status: u16| outcome.attack_statuses.get(&status).copied().unwrap_or(0);
    let expected: &[u16] = match outcome.attack {
        // Large as real objects are: served, at most a few at a time.
        Attack::BigBodies => &[200],
        // Refused for what the view would cost, or for the pool being full.
        Attack::ExpandingBodies => &[400],
        // Refused for the header's size.
        Attack::SlowHeaders => &[431],
        // Refused for the body's size (413) or the preview's cost (400).
        Attack::WorstPreview => &[400, 413],
        // Nothing to answer: the connections never send a request.
        Attack::ConnectionFlood => &[],
        Attack::Everything => &[200, 400, 431],
    };
    for status in expected {
        if got(*status) == 0 {
            fail(format!(
                "no attacker got a {status}: {:?}",
                outcome.attack_statuses
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_takes_the_server_down() {
    let Some(bin) = release_binary() else { return };
    let mut failures = Vec::new();
    let mut table = vec![Outcome::header().to_string()];
    for attack in Attack::ALL {
        // A fresh server for each attack, so none pays for the one before.
        let server = Process::start(&bin, "json", &[]).await;
        let outcome = hostile::run(&Target::of(&server), attack, ATTACK).await;
        table.push(outcome.row());
        check(&outcome, &mut failures);
        drop(server);
    }
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "{}\n\n{}",
        failures.join("\n"),
        table.join("\n")
    );
}
