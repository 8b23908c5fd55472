#!/usr/bin/env python3
"""Summarise a `make load` run (load/run.sh): oha JSON files -> a Markdown table.

    load/report.py DIR     # prints the table, writes DIR/report.md

Standard library only. Latencies are oha's, with --latency-correction for the
fixed-rate runs (measured from when each request was due, not when it was sent).
"""

from __future__ import annotations

import json
import sys
from statistics import median
from pathlib import Path


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def errors(run: dict) -> int:
    codes = run.get("statusCodeDistribution") or {}
    bad = sum(n for code, n in codes.items() if code != "200")
    # oha counts requests cut off by -z as "aborted due to deadline"; not a server error.
    errs = sum(n for e, n in (run.get("errorDistribution") or {}).items() if "deadline" not in e)
    return bad + errs


def rss_kib(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, value = line.split(":", 1)
        out[key.strip()] = int(value.split()[0])
    return out


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "load-report")
    machine = dict(
        line.split("=", 1) for line in (out / "machine.txt").read_text().splitlines() if "=" in line
    )
    rates = machine["rates"].split()
    servers = ["calmplane", "floor"]
    lines = [
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}); server pinned to CPU {machine['server_cpus']}, "
        f"oha pinned to CPU {machine['client_cpus']}. Fixture `{machine['fixture']}` "
        f"({machine['request_bytes']} bytes), {machine['connections']} kept-alive TLS connections, "
        f"{machine['duration']} per run, {machine['oha']}. Load average before/after: "
        f"{machine.get('loadavg_start', '?')} / {machine.get('loadavg_end', '?')}; nice {machine.get('nice', '0')}; spin loops {machine.get('spin', '0')}.",
        "",
        "| load | calmplane p50 / p99 / p99.9 (ms) | floor p50 / p99 / p99.9 (ms) | p99 calmplane/floor | errors |",
        "|---|---|---|---|---|",
    ]
    for rate in rates:
        rounds = {s: sorted(out.glob(f"{s}-rate-{rate}-*.json")) for s in servers}
        runs = {s: [load(f) for f in rounds[s]] for s in servers}
        pct = {s: {k: median([r["latencyPercentiles"][k] for r in runs[s]]) for k in ("p50", "p99", "p99.9")} for s in servers}
        p99s = {s: sorted(r["latencyPercentiles"]["p99"] for r in runs[s]) for s in servers}
        achieved = {s: median([r["summary"]["requestsPerSec"] for r in runs[s]]) for s in servers}
        cells = [
            f"{ms(pct[s]['p50'])} / **{ms(pct[s]['p99'])}** / {ms(pct[s]['p99.9'])} "
            f"(p99 range {ms(p99s[s][0])}–{ms(p99s[s][-1])}; {achieved[s]:.0f} req/s)"
            for s in servers
        ]
        ratio = pct["calmplane"]["p99"] / pct["floor"]["p99"]
        errs = " / ".join(str(sum(errors(r) for r in runs[s])) for s in servers)
        n = len(runs["calmplane"])
        lines.append(f"| {rate} req/s constant, median of {n} | {cells[0]} | {cells[1]} | {ratio:.2f} | {errs} |")
    maxes = {s: load(out / f"{s}-max.json") for s in servers}
    rps = {s: maxes[s]["summary"]["requestsPerSec"] for s in servers}
    p99 = {s: maxes[s]["latencyPercentiles"]["p99"] for s in servers}
    errs = " / ".join(str(errors(maxes[s])) for s in servers)
    lines.append(
        f"| max throughput, closed loop | {rps['calmplane']:.0f} req/s (p99 {ms(p99['calmplane'])} ms) "
        f"| {rps['floor']:.0f} req/s (p99 {ms(p99['floor'])} ms) | throughput {rps['calmplane'] / rps['floor']:.2f} | {errs} |"
    )
    rss = {s: rss_kib(out / f"{s}-rss.txt") for s in servers}
    lines.append(
        f"| peak RSS (VmHWM) | {rss['calmplane']['VmHWM'] / 1024:.1f} MiB | {rss['floor']['VmHWM'] / 1024:.1f} MiB "
        f"| {rss['calmplane']['VmHWM'] / rss['floor']['VmHWM']:.2f} | |"
    )
    if "majflt" in rss["calmplane"]:
        lines.append(
            f"| major page faults (server) | {rss['calmplane']['majflt']} | {rss['floor']['majflt']} | | |"
        )
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
