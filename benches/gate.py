#!/usr/bin/env python3
"""The latency regression gate (`make bench-gate`). Standard library only.

Reads
  * criterion's results: <criterion dir>/**/new/benchmark.json + estimates.json
    (written by `cargo bench --bench pipeline`);
  * instruction counts: target/icount.json (written by `cargo bench --bench icount`);
  * the committed baseline: benches/baseline.json.

Fails (exit 1) when
  1. any in-process fixture's mean (`inprocess/calmplane/*`) is above the budget
     (5 ms), or any end-to-end TLS round trip (`e2e/*`) is;
  2. any fixture's pipeline/floor instruction-count ratio is more than
     `tolerance` (25%) above its baseline ratio.

The wall-clock pipeline/floor ratios are printed next to the baseline too, and
fail the gate only when `--gate-time-ratios` is given: on a shared 2-core
machine they move by more than the counts do (see docs/src/contributing/performance.md).

    gate.py [--criterion DIR] [--icount FILE] [--baseline FILE] [--update-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_NS = 5_000_000  # 5 ms per admission
FIXTURES = ["small-pod", "typical-pod", "all-fields-pod", "deployment-update", "lease-pod"]
E2E = [
    ("calmplane", "typical-pod"),
    ("floor", "typical-pod"),
    ("calmplane", "all-fields-pod"),
    ("floor", "all-fields-pod"),
]


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def load_criterion(directory: Path) -> dict[str, float]:
    """Mean time in ns of every bench, keyed by its full id ("inprocess/floor/small-pod")."""
    means: dict[str, float] = {}
    for bench in directory.glob("**/new/benchmark.json"):
        info = json.loads(bench.read_text())
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        means[info["full_id"]] = estimates["mean"]["point_estimate"]
    return means


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criterion", type=Path, default=Path(os.environ.get("CRITERION_HOME", target_dir() / "criterion")))
    ap.add_argument("--icount", type=Path, default=target_dir() / "icount.json")
    ap.add_argument("--baseline", type=Path, default=ROOT / "benches" / "baseline.json")
    ap.add_argument("--update-baseline", action="store_true", help="write the current ratios as the new baseline")
    ap.add_argument("--gate-time-ratios", action="store_true", help="also fail on wall-clock ratio regressions")
    args = ap.parse_args()

    failures: list[str] = []
    checks = 0
    means = load_criterion(args.criterion)
    if not means:
        print(f"gate: no criterion results under {args.criterion}", file=sys.stderr)
        return 2
    icount = json.loads(args.icount.read_text())
    if icount.get("planted_slowdown"):
        print("gate: NOTE: these counts were taken with CALMPLANE_BENCH_PLANT_SLOWDOWN set")
    baseline = json.loads(args.baseline.read_text()) if args.baseline.exists() else None
    tolerance = baseline["tolerance"] if baseline else 0.25

    # 1. The absolute budget.
    print(f"\nBudget: every mean under {fmt_ns(BUDGET_NS)}")
    print(f"{'bench':<36} {'mean':>12}")
    wanted = [f"inprocess/{m}/{f}" for f in FIXTURES for m in ("calmplane", "floor")]
    wanted += [f"e2e/{m}/{f}" for m, f in E2E]
    for bench_id in wanted:
        checks += 1
        if bench_id not in means:
            failures.append(f"{bench_id}: no result (did the bench run?)")
            continue
        mean = means[bench_id]
        over = mean > BUDGET_NS and not bench_id.startswith("inprocess/floor/")
        print(f"{bench_id:<36} {fmt_ns(mean):>12}{'  OVER BUDGET' if over else ''}")
        if over:
            failures.append(f"{bench_id}: mean {fmt_ns(mean)} is above the {fmt_ns(BUDGET_NS)} budget")

    # 2. Ratios against the baseline.
    time_ratios: dict[str, float] = {}
    icount_ratios: dict[str, float] = {}
    print(f"\nRatios pipeline/floor (gate: instruction counts, at most {tolerance:.0%} above baseline)")
    print(f"{'fixture':<20} {'Ir ratio':>9} {'base':>7} {'change':>8}   {'time ratio':>10} {'base':>7} {'change':>8}")
    for f in FIXTURES:
        checks += 1
        row = icount["fixtures"].get(f)
        if row is None:
            failures.append(f"{f}: no instruction count")
            continue
        ir = row["calmplane"] / row["floor"]
        icount_ratios[f] = round(ir, 4)
        pm, fm = means.get(f"inprocess/calmplane/{f}"), means.get(f"inprocess/floor/{f}")
        tr = pm / fm if pm and fm else float("nan")
        time_ratios[f] = round(tr, 4)
        base_ir = baseline["icount_ratio"].get(f) if baseline else None
        base_tr = baseline["time_ratio"].get(f) if baseline else None
        d_ir = ir / base_ir - 1 if base_ir else float("nan")
        d_tr = tr / base_tr - 1 if base_tr else float("nan")
        flag = ""
        if base_ir is None:
            failures.append(f"{f}: no baseline instruction-count ratio in {args.baseline}")
        elif d_ir > tolerance:
            flag = "  REGRESSED"
            failures.append(
                f"{f}: pipeline/floor instruction ratio {ir:.3f} is {d_ir:+.1%} vs baseline {base_ir:.3f} (limit +{tolerance:.0%})"
            )
        if args.gate_time_ratios and base_tr and d_tr > tolerance:
            flag += "  TIME REGRESSED"
            failures.append(
                f"{f}: pipeline/floor time ratio {tr:.3f} is {d_tr:+.1%} vs baseline {base_tr:.3f} (limit +{tolerance:.0%})"
            )
        print(
            f"{f:<20} {ir:>9.3f} {base_ir or float('nan'):>7.3f} {d_ir:>+8.1%}   {tr:>10.3f} {base_tr or float('nan'):>7.3f} {d_tr:>+8.1%}{flag}"
        )

    for target in ("typical-pod", "all-fields-pod"):
        c, fl = means.get(f"e2e/calmplane/{target}"), means.get(f"e2e/floor/{target}")
        if c and fl:
            print(f"e2e {target}: calmplane {fmt_ns(c)}, floor {fmt_ns(fl)}, ratio {c / fl:.2f}")

    if args.update_baseline:
        if icount.get("planted_slowdown"):
            print("gate: refusing to write a baseline from planted-slowdown counts", file=sys.stderr)
            return 2
        new = {
            "_comment": "pipeline/floor ratios per fixture; written by `make bench-baseline` (benches/gate.py --update-baseline). The gate fails when an instruction-count ratio rises more than `tolerance` above these.",
            "tolerance": tolerance,
            "icount_ratio": icount_ratios,
            "time_ratio": time_ratios,
        }
        args.baseline.write_text(json.dumps(new, indent=2) + "\n")
        print(f"\ngate: wrote {args.baseline}")
        return 0

    failed = len(failures)
    if failures:
        print("\nbench-gate: FAILED")
        for f in failures:
            print(f"  - {f}")
    print(f"\nbench-gate: {max(checks - failed, 0)} passed, {failed} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
