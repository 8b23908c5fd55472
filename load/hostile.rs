//! `cargo run --release --example hostile -- BIN [SECONDS [ATTACK]]`: every attack of
//! `calmplane_testkit::hostile` against `calmplane serve` from the binary
//! BIN, one after another, and a table of what each did to the server's
//! memory and to its well-behaved clients. Run it against two builds to
//! compare them; `tests/hostile.rs` holds the release binary to limits with
//! the same attacks.

use calmplane_testkit::hostile::{self, Attack, Outcome, Target};
use calmplane_testkit::process::Process;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(bin) = args.next().map(PathBuf::from) else {
        eprintln!("usage: hostile BIN [SECONDS [ATTACK]]");
        std::process::exit(2);
    };
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
    // One attack by (part of) its name, or all of them.
    let only = args.next();
    println!("{}", Outcome::header());
    for attack in Attack::ALL
        .into_iter()
        .filter(|a| only.as_deref().is_none_or(|o| a.name().contains(o)))
    {
        // A fresh server per attack, so one attack's leftovers (a preview
        // still running, connections still draining) do not count against
        // the next.
        let server = Process::start(&bin, "json", &[]).await;
        let outcome =
            hostile::run(&Target::of(&server), attack, Duration::from_secs(seconds)).await;
        println!("{}", outcome.row());
        drop(server);
    }
}
