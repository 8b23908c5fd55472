#!/usr/bin/env bash
# Write the seed corpus of the `mutate` fuzz target into fuzz/corpus/mutate
# (git-ignored) from ../shared/corpus. The corpus itself is never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS="${CORPUS:-../shared/corpus}"
OUT="${OUT:-fuzz/corpus/mutate}"
cargo run --quiet --manifest-path fuzz/Cargo.toml --example seed_corpus -- "$CORPUS" "$OUT"
