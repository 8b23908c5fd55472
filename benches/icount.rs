//! Instruction counts of the in-process pipeline and its floor, per fixture,
//! under `valgrind --tool=callgrind`. Deterministic where wall-clock ratios on
//! a shared 2-core machine are not, so this is what `make bench-gate` gates
//! the pipeline/floor ratios on.
//!
//! `cargo bench --bench icount` re-runs its own binary under callgrind once
//! per (fixture, mode), collecting only inside [`calmplane_icount_measure`]
//! (`--toggle-collect`), after a warm-up outside it. It prints a table and
//! writes `$CALMPLANE_ICOUNT_OUT` (default `target/icount.json`):
//!
//! ```json
//! {"iterations": 20, "fixtures": {"typical-pod": {"calmplane": 123456, "floor": 45678, "ratio": 2.7}}}
//! ```
//!
//! Counts are instructions per iteration (Ir). No perf counters are needed
//! (`perf stat -e instructions` reports "not supported" on this machine).

// The allocator the binary ships with (src/main.rs), so that these figures
// are the ones `calmplane serve` gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use calmplane::pipeline::Pipeline;
use calmplane_testkit::fixtures;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;

const CHILD_ENV: &str = "CALMPLANE_ICOUNT_CHILD";
/// callgrind matches this against demangled names, so the function needs no
/// `#[no_mangle]` (which `unsafe_code = "forbid"` refuses).
const MEASURED: &str = "*::calmplane_icount_measure";
const WARMUP: usize = 3;

/// What one child measures.
#[derive(Clone, Copy)]
enum Mode {
    Calmplane,
    Floor,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Calmplane => "calmplane",
            Mode::Floor => "floor",
        }
    }
}

#[inline(never)]
fn work(mode: Mode, pipeline: &Pipeline, body: &[u8]) -> usize {
    match mode {
        Mode::Calmplane => black_box(fixtures::pipeline(pipeline, black_box(body))).len(),
        Mode::Floor => black_box(fixtures::floor(black_box(body))).len(),
    }
}

/// The only function callgrind counts in (`--toggle-collect`).
#[inline(never)]
pub fn calmplane_icount_measure(
    mode: u8,
    pipeline: &Pipeline,
    body: &[u8],
    iterations: usize,
) -> usize {
    let mode = if mode == 0 {
        Mode::Calmplane
    } else {
        Mode::Floor
    };
    let mut total = 0;
    for _ in 0..iterations {
        total += work(mode, pipeline, body);
    }
    total
}

fn child(spec: &str) {
    let mut parts = spec.split(':');
    let (Some(name), Some(mode), Some(iterations)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("{CHILD_ENV}={spec:?}: expected fixture:mode:iterations");
    };
    let mode = match mode {
        "calmplane" => 0u8,
        "floor" => 1u8,
        other => panic!("unknown mode {other:?}"),
    };
    let iterations: usize = iterations.parse().expect("iterations");
    let fixture = fixtures::fixture(name);
    let pipeline = Pipeline::with_defaults();
    fixtures::check_response(&fixture, &fixtures::pipeline(&pipeline, &fixture.body));
    // Warm up allocator and lazy statics outside the counted region.
    let m = if mode == 0 {
        Mode::Calmplane
    } else {
        Mode::Floor
    };
    for _ in 0..WARMUP {
        work(m, &pipeline, &fixture.body);
    }
    black_box(calmplane_icount_measure(
        mode,
        &pipeline,
        &fixture.body,
        iterations,
    ));
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Run one child under callgrind; instructions per iteration.
fn measure(exe: &std::path::Path, fixture: &str, mode: Mode, iterations: usize) -> u64 {
    let dir = target_dir().join("icount");
    std::fs::create_dir_all(&dir).expect("create target/icount");
    let out_file = dir.join(format!("callgrind.{fixture}.{}.out", mode.as_str()));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--toggle-collect={MEASURED}"))
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(exe)
        .env(
            CHILD_ENV,
            format!("{fixture}:{}:{iterations}", mode.as_str()),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run valgrind ({e}); apt-get install valgrind"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "callgrind run of {fixture}/{} failed:\n{stderr}",
        mode.as_str()
    );
    // "==123== Collected : 4567890"
    let collected = stderr
        .lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, n)| n.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no 'Collected' line from callgrind:\n{stderr}"));
    let total: u64 = collected.parse().expect("instruction count");
    total / iterations as u64
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    // `cargo bench` passes `--bench`. Without it (`cargo test --benches`),
    // only check that every fixture still runs, natively and once.
    if !std::env::args().any(|a| a == "--bench") {
        let pipeline = Pipeline::with_defaults();
        for f in fixtures::all() {
            fixtures::check_response(&f, &fixtures::pipeline(&pipeline, &f.body));
            work(Mode::Floor, &pipeline, &f.body);
        }
        println!("icount: fixtures ok (run with `cargo bench --bench icount` to count)");
        return;
    }
    let iterations: usize = std::env::var("CALMPLANE_ICOUNT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let exe = std::env::current_exe().expect("current exe");
    let mut rows = serde_json::Map::new();
    println!(
        "{:<20} {:>14} {:>14} {:>8}",
        "fixture", "calmplane Ir", "floor Ir", "ratio"
    );
    for name in fixtures::NAMES {
        let calmplane = measure(&exe, name, Mode::Calmplane, iterations);
        let floor = measure(&exe, name, Mode::Floor, iterations);
        let ratio = calmplane as f64 / floor as f64;
        println!("{name:<20} {calmplane:>14} {floor:>14} {ratio:>8.3}");
        rows.insert(
            name.to_string(),
            serde_json::json!({"calmplane": calmplane, "floor": floor, "ratio": ratio}),
        );
    }
    let out = std::env::var_os("CALMPLANE_ICOUNT_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("icount.json"));
    let json = serde_json::json!({
        "iterations": iterations,
        "planted_slowdown": fixtures::planted_slowdown(),
        "fixtures": rows,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap() + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    println!("wrote {}", out.display());
}
