#!/usr/bin/env bash
# `make overload`: /mutate offered about 3x what one server core sustains, for
# OVERLOAD_DURATION, then normal load again; see load/OVERLOAD.md.
#
#   start the release calmplane pinned to CPU 0 (taskset), oha pinned to the others;
#   calibrate: oha closed loop, 16 connections, 3 s -> T req/s (one core's throughput);
#   before:    OVERLOAD_NORMAL req/s, 16 connections, 5 s, --latency-correction;
#   overload:  3T req/s over OVERLOAD_CONNECTIONS connections for OVERLOAD_DURATION,
#              while VmRSS is sampled every 100 ms;
#   after:     at once, 3 runs of 1 s at OVERLOAD_NORMAL req/s (the first second
#              after the overload, the second, the third), --latency-correction;
#   load/overload.py prints the table and writes $OVERLOAD_OUT/report.md.
#
# The overload run measures latency from when oha sends each request, without
# --latency-correction. oha keeps a fixed set of connections and queues what
# it cannot send on its side; the apiserver instead sends each admission call
# at once, on a new connection when every open one is busy. What the server
# makes a request wait is the time from send to answer; oha's own queue
# belongs to neither.
#
# Knobs (environment): OVERLOAD_DURATION (10s), OVERLOAD_FACTOR (3),
# OVERLOAD_CONNECTIONS (500: just under calmplane's default cap of 512,
# budget::MAX_CONNECTIONS, as many as the apiserver could have open), OVERLOAD_NORMAL (2000 req/s),
# OVERLOAD_FIXTURE (typical-pod), OVERLOAD_OUT (overload-report),
# OVERLOAD_PORT (18453), OVERLOAD_METRICS_PORT (19093), OVERLOAD_SERVER_ARGS
# (extra `calmplane serve` flags), LOAD_NICE as in load/run.sh.
# Only loopback is ever targeted; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${OVERLOAD_DURATION:-10s}
FACTOR=${OVERLOAD_FACTOR:-3}
CONNECTIONS=${OVERLOAD_CONNECTIONS:-500}
NORMAL=${OVERLOAD_NORMAL:-2000}
FIXTURE=${OVERLOAD_FIXTURE:-typical-pod}
OUT=${OVERLOAD_OUT:-overload-report}
PORT=${OVERLOAD_PORT:-18453}
METRICS_PORT=${OVERLOAD_METRICS_PORT:-19093}
OHA_VERSION=1.16.0
CARGO=${CARGO:-cargo}
TARGET=${CARGO_TARGET_DIR:-target}/release

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null || [[ "$(oha --version)" != *"$OHA_VERSION"* ]]; then
    echo "overload: installing oha $OHA_VERSION (cargo install --locked)"
    "$CARGO" install --locked "oha@$OHA_VERSION"
fi
command -v taskset >/dev/null || apt-get install -y util-linux >/dev/null
# oha opens OVERLOAD_CONNECTIONS sockets; calmplane as many.
ulimit -n 8192 2>/dev/null || true

PRIO=()
[[ -n "${LOAD_NICE:-}" ]] && PRIO=(nice -n "$LOAD_NICE")
NPROC=$(nproc)
SERVER_CPUS=0
CLIENT_CPUS=$((NPROC >= 2 ? 1 : 0))-$((NPROC - 1))

"$CARGO" build --release --bin calmplane --example load_fixture
rm -rf "$OUT"
mkdir -p "$OUT/certs"
"$TARGET/calmplane" certs --out "$OUT/certs" >/dev/null
"$TARGET/examples/load_fixture" request "$FIXTURE" >"$OUT/request.json"

PID=
SAMPLER=
cleanup() {
    for p in $SAMPLER $PID; do
        if kill -0 "$p" 2>/dev/null; then
            kill "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

# shellcheck disable=SC2086 # OVERLOAD_SERVER_ARGS is a list of flags
"${PRIO[@]}" taskset -c "$SERVER_CPUS" "$TARGET/calmplane" serve \
    --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --cert "$OUT/certs/tls.crt" --key "$OUT/certs/tls.key" \
    --shutdown-delay 0s ${OVERLOAD_SERVER_ARGS:-} 2>"$OUT/calmplane.log" &
PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { echo "overload: calmplane exited" >&2; exit 1; }
    sleep 0.1
done

oha_run() { # oha_run OUTFILE [oha args...]
    local out=$1
    shift
    "${PRIO[@]}" taskset -c "$CLIENT_CPUS" oha --no-tui --output-format json \
        -m POST -T application/json -D "$OUT/request.json" \
        --cacert "$OUT/certs/ca.crt" "$@" "https://127.0.0.1:$PORT/mutate" >"$out"
}
rps() { python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["summary"]["requestsPerSec"]))' "$1"; }

echo "overload: calmplane pid $PID on CPU $SERVER_CPUS; oha on CPUs $CLIENT_CPUS"
oha_run "$OUT/warmup.json" -z 1s -c 16
oha_run "$OUT/calibrate.json" -z 3s -c 16
T=$(rps "$OUT/calibrate.json")
OFFER=$((T * FACTOR))
echo "overload: one core sustains $T req/s; offering $OFFER req/s"
echo "overload: before: $NORMAL req/s for 5 s"
oha_run "$OUT/before.json" -z 5s -c 16 -q "$NORMAL" --latency-correction

grep VmRSS "/proc/$PID/status" | awk '{print $2}' >"$OUT/rss-before.txt"
(while kill -0 "$PID" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$PID/status"
    sleep 0.1
done) >"$OUT/rss-samples.txt" 2>/dev/null &
SAMPLER=$!
echo "overload: $OFFER req/s over $CONNECTIONS connections for $DURATION"
oha_run "$OUT/overload.json" -z "$DURATION" -c "$CONNECTIONS" -q "$OFFER"
for second in 1 2 3; do
    oha_run "$OUT/after-$second.json" -z 1s -c 16 -q "$NORMAL" --latency-correction
done
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=
grep -E '^(VmHWM|VmRSS)' "/proc/$PID/status" >"$OUT/rss.txt"
curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/metrics.txt" 2>/dev/null ||
    python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
        "http://127.0.0.1:$METRICS_PORT/metrics" >"$OUT/metrics.txt"

{
    echo "nproc=$NPROC"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "fixture=$FIXTURE"
    echo "calibrated=$T"
    echo "offered=$OFFER"
    echo "connections=$CONNECTIONS"
    echo "duration=$DURATION"
    echo "normal=$NORMAL"
    echo "server_args=${OVERLOAD_SERVER_ARGS:-}"
    echo "oha=$(oha --version)"
    echo "nice=${LOAD_NICE:-0}"
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"
python3 load/overload.py "$OUT"
