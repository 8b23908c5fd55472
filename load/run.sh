#!/usr/bin/env bash
# `make load`: the release server under a real HTTP load generator, over TLS
# with keep-alive, next to the transport floor (load/transport_floor.rs).
#
#   start calmplane and the floor, both pinned to CPU 0 (taskset); warm up 1 s each;
#   LOAD_REPEAT rounds of: for each of LOAD_RATES, oha at that constant rate
#     with --latency-correction (no coordinated omission), pinned to CPU 1,
#     LOAD_DURATION against calmplane, then the same against the floor;
#   oha closed-loop with LOAD_CONNECTIONS connections (max throughput), each;
#   peak RSS = VmHWM from /proc/PID/status; stop both.
#   load/report.py prints the table and writes $LOAD_OUT/report.md.
#
# Knobs (environment): LOAD_DURATION (5s), LOAD_RATES ("500 2000 5000"),
# LOAD_REPEAT (3 rounds; the report gives the median of each percentile),
# LOAD_CONNECTIONS (16), LOAD_FIXTURE (typical-pod), LOAD_OUT (load-report),
# LOAD_PORT (18443), LOAD_FLOOR_PORT (18444), LOAD_METRICS_PORT (19090),
# LOAD_SERVER_CPUS / LOAD_CLIENT_CPUS (taskset lists; default 0 and 1..n-1),
# LOAD_NICE (e.g. -20: run server and oha at that nice level, for a machine
# where other work competes for the CPUs; needs root; off by default),
# LOAD_SPIN (1: keep every CPU busy with a SCHED_IDLE spin loop during the runs,
# so that an idle vCPU is never halted: on a VM, waking a halted vCPU costs
# milliseconds and shows up in the tails of whichever server idles most).
# Only loopback is ever targeted; every run is bounded by LOAD_DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${LOAD_DURATION:-5s}
RATES=${LOAD_RATES:-"500 2000 5000"}
REPEAT=${LOAD_REPEAT:-3}
CONNECTIONS=${LOAD_CONNECTIONS:-16}
FIXTURE=${LOAD_FIXTURE:-typical-pod}
OUT=${LOAD_OUT:-load-report}
PORT=${LOAD_PORT:-18443}
FLOOR_PORT=${LOAD_FLOOR_PORT:-18444}
METRICS_PORT=${LOAD_METRICS_PORT:-19090}
OHA_VERSION=1.16.0
CARGO=${CARGO:-cargo}
TARGET=${CARGO_TARGET_DIR:-target}/release

# --- tools ---------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha >/dev/null || [[ "$(oha --version)" != *"$OHA_VERSION"* ]]; then
    echo "load: installing oha $OHA_VERSION (cargo install --locked)"
    "$CARGO" install --locked "oha@$OHA_VERSION"
fi
if ! command -v taskset >/dev/null; then
    echo "load: installing util-linux for taskset"
    apt-get install -y util-linux >/dev/null
fi

PRIO=()
if [[ -n "${LOAD_NICE:-}" ]]; then
    PRIO=(nice -n "$LOAD_NICE")
fi

NPROC=$(nproc)
if [[ -n "${LOAD_SERVER_CPUS:-}" ]]; then
    SERVER_CPUS=$LOAD_SERVER_CPUS
    CLIENT_CPUS=${LOAD_CLIENT_CPUS:?set LOAD_CLIENT_CPUS too}
elif ((NPROC >= 2)); then
    SERVER_CPUS=0
    CLIENT_CPUS=1-$((NPROC - 1))
else
    SERVER_CPUS=0
    CLIENT_CPUS=0
    echo "load: only one CPU: generator and server share it" >&2
fi

# --- build ---------------------------------------------------------------
"$CARGO" build --release --bin calmplane --example transport_floor --example load_fixture

rm -rf "$OUT"
mkdir -p "$OUT/certs"
"$TARGET/calmplane" certs --out "$OUT/certs" >/dev/null
"$TARGET/examples/load_fixture" request "$FIXTURE" >"$OUT/request.json"
"$TARGET/examples/load_fixture" response "$FIXTURE" >"$OUT/response.json"

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
    echo "load: WARNING: load average is $LOADAVG_START before the run: other work shares these CPUs and will show in the tails" >&2
fi

declare -A PIDS=()
SPINNERS=()
stop_servers() {
    local pid
    for pid in "${PIDS[@]}" "${SPINNERS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap stop_servers EXIT

wait_port() { # wait_port NAME PORT
    local name=$1 port=$2
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "${PIDS[$name]}" 2>/dev/null || { echo "load: $name exited" >&2; return 1; }
        sleep 0.1
    done
    echo "load: nothing listening on $port" >&2
    return 1
}

oha_run() { # oha_run OUTFILE PORT [oha args...]
    local out=$1 port=$2
    shift 2
    "${PRIO[@]}" taskset -c "$CLIENT_CPUS" oha --no-tui --output-format json \
        -m POST -T application/json -D "$OUT/request.json" \
        --cacert "$OUT/certs/ca.crt" "$@" "https://127.0.0.1:$port/mutate" >"$out"
}

if [[ "${LOAD_SPIN:-0}" == 1 ]]; then
    for cpu in $(seq 0 $((NPROC - 1))); do
        # Bounded: gone after 15 minutes even if this script is killed hard.
        taskset -c "$cpu" chrt --idle 0 timeout 900 sh -c 'while :; do :; done' &
        SPINNERS+=($!)
    done
    echo "load: SCHED_IDLE spin loops on CPUs 0-$((NPROC - 1)) (LOAD_SPIN=1)"
fi

# Both servers run side by side on the same CPU (the idle one costs nothing);
# their runs alternate, so that both see the same background load.
"${PRIO[@]}" taskset -c "$SERVER_CPUS" "$TARGET/calmplane" serve \
    --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" \
    --cert "$OUT/certs/tls.crt" --key "$OUT/certs/tls.key" \
    --shutdown-delay 0s 2>"$OUT/calmplane.log" &
PIDS[calmplane]=$!
"${PRIO[@]}" taskset -c "$SERVER_CPUS" "$TARGET/examples/transport_floor" \
    --listen "127.0.0.1:$FLOOR_PORT" \
    --cert "$OUT/certs/tls.crt" --key "$OUT/certs/tls.key" \
    --response "$OUT/response.json" 2>"$OUT/floor.log" &
PIDS[floor]=$!
declare -A PORTS=([calmplane]=$PORT [floor]=$FLOOR_PORT)
SERVERS="calmplane floor"
for name in $SERVERS; do
    wait_port "$name" "${PORTS[$name]}"
    echo "load: $name pid ${PIDS[$name]} on CPUs $SERVER_CPUS, https://127.0.0.1:${PORTS[$name]}/mutate"
    oha_run "$OUT/$name-warmup.json" "${PORTS[$name]}" -z 1s -c "$CONNECTIONS"
done
echo "load: oha on CPUs $CLIENT_CPUS; $REPEAT round(s) of $RATES req/s, $DURATION each"
for round in $(seq "$REPEAT"); do
    for rate in $RATES; do
        for name in $SERVERS; do
            echo "load:   round $round: $name at $rate req/s"
            oha_run "$OUT/$name-rate-$rate-$round.json" "${PORTS[$name]}" \
                -z "$DURATION" -c "$CONNECTIONS" -q "$rate" --latency-correction
        done
    done
done
for name in $SERVERS; do
    echo "load:   $name: max throughput, $CONNECTIONS connections, $DURATION"
    oha_run "$OUT/$name-max.json" "${PORTS[$name]}" -z "$DURATION" -c "$CONNECTIONS"
done
for name in $SERVERS; do
    pid=${PIDS[$name]}
    grep -E '^(VmHWM|VmRSS)' "/proc/$pid/status" >"$OUT/$name-rss.txt"
    # Major page faults: on a machine that reclaims file pages (DAMON pageout
    # here), code paged back in from disk would show up as tail latency.
    echo "majflt: $(cut -d' ' -f12 "/proc/$pid/stat")" >>"$OUT/$name-rss.txt"
done
stop_servers

{
    echo "nproc=$NPROC"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "server_cpus=$SERVER_CPUS"
    echo "client_cpus=$CLIENT_CPUS"
    echo "fixture=$FIXTURE"
    echo "request_bytes=$(wc -c <"$OUT/request.json")"
    echo "duration=$DURATION"
    echo "connections=$CONNECTIONS"
    echo "rates=$RATES"
    echo "repeat=$REPEAT"
    echo "oha=$(oha --version)"
    echo "nice=${LOAD_NICE:-0}"
    echo "spin=${LOAD_SPIN:-0}"
    echo "loadavg_start=$LOADAVG_START"
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/machine.txt"

python3 load/report.py "$OUT"
