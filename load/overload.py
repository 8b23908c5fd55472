#!/usr/bin/env python3
"""Summarise a `make overload` run (load/overload.sh): oha JSON -> a Markdown table.

    load/overload.py DIR     # prints the table, writes DIR/report.md

Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def row(name: str, run: dict) -> str:
    s = run["summary"]
    p = run.get("latencyPercentiles") or {}
    codes = run.get("statusCodeDistribution") or {}
    answered = sum(codes.values())
    errs = {e: n for e, n in (run.get("errorDistribution") or {}).items() if "deadline" not in e}
    cut = sum(n for e, n in (run.get("errorDistribution") or {}).items() if "deadline" in e)
    status = ", ".join(f"{n} × {c}" for c, n in sorted(codes.items()))
    errors = "; ".join(f"{n} × {e}" for e, n in errs.items()) or "none"
    return (
        f"| {name} | {s['requestsPerSec']:.0f} | {answered} ({status}) | {ms(p.get('p50'))} | "
        f"{ms(p.get('p99'))} | {ms(s.get('slowest'))} | {errors} | {cut} |"
    )


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "overload-report")
    m = dict(l.split("=", 1) for l in (out / "machine.txt").read_text().splitlines() if "=" in l)
    runs = [("before", "before.json"), ("overload", "overload.json")] + [
        (f"after: second {i}", f"after-{i}.json") for i in (1, 2, 3)
    ]
    samples = [int(x) for x in (out / "rss-samples.txt").read_text().split() if x.isdigit()]
    rss = dict(
        (k.strip(), int(v.split()[0]))
        for k, v in (l.split(":", 1) for l in (out / "rss.txt").read_text().splitlines())
    )
    before = int((out / "rss-before.txt").read_text().split()[0])
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}); calmplane pinned to CPU 0, oha ({m['oha']}) "
        f"to the other. Fixture `{m['fixture']}`. One server core sustained {m['calibrated']} req/s "
        f"(closed loop, 16 connections); the overload offered {m['offered']} req/s over "
        f"{m['connections']} connections for {m['duration']}; normal load is {m['normal']} req/s "
        f"over 16 connections with --latency-correction. Server flags: `{m['server_args'] or '(defaults)'}`. "
        f"nice {m['nice']}; load average after: {m['loadavg_end']}.",
        "",
        "| phase | achieved req/s | answered (by status) | p50 ms | p99 ms | max ms | errors | cut at the end of the run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in runs:
        lines.append(row(name, json.loads((out / f).read_text())))
    lines += [
        "",
        f"RSS: {before / 1024:.1f} MiB before the overload, peak sampled during it "
        f"{max(samples, default=0) / 1024:.1f} MiB, VmHWM {rss.get('VmHWM', 0) / 1024:.1f} MiB, "
        f"{rss.get('VmRSS', 0) / 1024:.1f} MiB after.",
    ]
    metrics = (out / "metrics.txt").read_text() if (out / "metrics.txt").exists() else ""
    kept = [l for l in metrics.splitlines() if l.startswith(("calmplane_admission_requests_total", "calmplane_tls_handshakes_total", "calmplane_overload"))]
    if kept:
        lines += ["", "```text", *kept, "```"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
