#!/usr/bin/env bash
# Write the seed corpus of the `mutate` fuzz target into fuzz/corpus/mutate
# (git-ignored) from the upstream fixtures in tests/fixtures/upstream. The
# generated seeds are never committed; the fixtures they come from are.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-fuzz/corpus/mutate}"
cargo run --quiet --manifest-path fuzz/Cargo.toml --example seed_corpus -- "$OUT"
