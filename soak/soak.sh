#!/usr/bin/env bash
# make soak: build the release server and the soak driver, then drive the
# server over TLS on 127.0.0.1 for SOAK_SECONDS (default 180) with 90% valid
# reviews built from tests/fixtures/upstream and 10% bad inputs. Exits non-zero when a
# valid request failed, a bad input got no 4xx, RSS grew more than 10%
# between the first and the last minute, or the server did not exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS="${SOAK_SECONDS:-180}"
SOAK_CONCURRENCY="${SOAK_CONCURRENCY:-4}"
cargo build --release --bin calmplane --example soak
exec target/release/examples/soak \
    --server target/release/calmplane \
    --seconds "$SOAK_SECONDS" \
    --concurrency "$SOAK_CONCURRENCY"
