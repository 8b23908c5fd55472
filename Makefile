# calmplane: two commands matter.
#   make run   - generate dev certificates if missing, then serve on https://127.0.0.1:8443
#   make test  - the whole test suite (installs its Python checkers into .venv first)

CARGO  ?= cargo
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export CALMPLANE_PYTHON := $(abspath $(PY))
# As the image and the manifests run calmplane: mimalloc gives freed memory
# back at once (src/budget.rs, ALLOCATOR_ENV), for `make run`, load and soak.
export MIMALLOC_PURGE_DELAY := 0

.PHONY: run test prometheus-tools venv certs build release lint fmt deny clean bench bench-gate bench-baseline bench-measure load overload helm

run: certs/tls.crt
	$(CARGO) run --release -- serve --log-format text

certs: certs/tls.crt

certs/tls.crt:
	$(CARGO) run --release -- certs --out certs

release:
	$(CARGO) build --release --bin calmplane

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

# promtool and prometheus (Debian's `prometheus` package) for tests/monitoring.rs.
# The tests run the binaries on their own ports and never use the package's service.
# tests/hostile.rs runs the release binary: memory and CPU bounds hold for the
# build that ships.
test: venv prometheus-tools release helm
	CALMPLANE_RELEASE_BIN=$(abspath target/release/calmplane) CALMPLANE_HELM=$(HELM) $(CARGO) test

# helm from the pinned module helm.sh/helm/v4 (e2e/helm/go.mod) into e2e/bin,
# only when the pins changed: for tests/helm and e2e/tests/helm.rs.
HELM := $(abspath e2e/bin/helm)
helm:
	bash e2e/helm/build.sh

prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

# Licences, bans and sources of every dependency of every workspace member
# (--workspace: the testkit and e2e crates too), and of the fuzz crate (a
# workspace of its own), against deny.toml. Installs the
# pinned cargo-deny on first use (about 3 CPU-minutes of compiling: 7 min wall on
# a busy 2-core machine).
# Advisories are not checked here: they need the RustSec database from GitHub,
# and CI has no network beyond the package registries (see deny.toml).
CARGO_DENY_VERSION ?= 0.20.2
deny:
	@command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked --version $(CARGO_DENY_VERSION)
	$(CARGO) deny --workspace check licenses bans sources
	$(CARGO) deny --manifest-path fuzz/Cargo.toml --config deny.toml check licenses bans sources

clean:
	rm -rf target $(VENV)

# --- performance (benches/, load/; see docs/src/contributing/performance.md) -
#   make bench           full criterion run + instruction counts, then the gate's report
#   make bench-gate      CI: a short criterion run + instruction counts; fails on a
#                        5 ms budget breach or a pipeline/floor ratio >25% over
#                        benches/baseline.json (benches/gate.py)
#   make bench-baseline  re-measure and rewrite benches/baseline.json
#   make load            release server under oha over TLS vs the transport floor
#   make overload        /mutate offered 3x one core's throughput for 10 s, then normal load
#                        (load/overload.sh; figures in load/OVERLOAD.md)
BENCH_DIR        ?= target/bench-gate
BENCH_GATE_ARGS  ?= --warm-up-time 0.5 --measurement-time 1.5 --sample-size 20

bench:
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	$(CARGO) bench --bench pipeline
	$(CARGO) bench --bench icount
	$(PYTHON) benches/gate.py

bench-measure:
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	rm -rf $(BENCH_DIR)
	mkdir -p $(BENCH_DIR)
	CRITERION_HOME=$(abspath $(BENCH_DIR))/criterion $(CARGO) bench --bench pipeline -- $(BENCH_GATE_ARGS)
	CALMPLANE_ICOUNT_OUT=$(abspath $(BENCH_DIR))/icount.json $(CARGO) bench --bench icount

bench-gate: bench-measure
	$(PYTHON) benches/gate.py --criterion $(BENCH_DIR)/criterion --icount $(BENCH_DIR)/icount.json

bench-baseline: bench-measure
	$(PYTHON) benches/gate.py --criterion $(BENCH_DIR)/criterion --icount $(BENCH_DIR)/icount.json --update-baseline

load:
	bash load/run.sh

overload:
	bash load/overload.sh

# --- resilience (soak/, fuzz/; see docs/src/contributing/resilience.md) ----
#   make soak        release server over TLS on 127.0.0.1 for SOAK_SECONDS (180): 90% valid
#                    reviews from tests/fixtures/upstream, 10% bad inputs; fails on any valid error,
#                    a bad input without its 4xx, RSS +10% first->last minute, or exit != 0
#   make fuzz        cargo-fuzz (nightly) on /mutate body bytes for FUZZ_SECONDS (300),
#                    seeded from tests/fixtures/upstream by fuzz/seed.sh (into git-ignored fuzz/corpus);
#                    on stable: cargo test --test properties fuzz_seed_corpus_replay
.PHONY: soak fuzz fuzz-seed
SOAK_SECONDS ?= 180
FUZZ_SECONDS ?= 300

soak:
	SOAK_SECONDS=$(SOAK_SECONDS) bash soak/soak.sh

fuzz-seed:
	bash fuzz/seed.sh

fuzz: fuzz-seed
	@rustup toolchain list | grep -q '^nightly' || { echo "make fuzz needs a nightly toolchain (cargo-fuzz); on stable run: cargo test --test properties fuzz_seed_corpus_replay"; exit 1; }
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	$(CARGO) +nightly fuzz run mutate fuzz/corpus/mutate -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096

# --- against a real control plane (e2e/; see e2e/README.md) -----------------
#   make e2e-build   build etcd, kube-apiserver, kube-controller-manager and kubectl from the
#                    pinned Go modules into e2e/bin (only when the pins changed)
#   make e2e         e2e-build and helm, then every case of e2e/tests/control_plane/
#                    and e2e/tests/helm.rs
#   make e2e E2E_ARGS=c5_    one case (libtest filter)
.PHONY: e2e e2e-build
E2E_ARGS ?=

e2e-build:
	bash e2e/build.sh

e2e: e2e-build helm
	CALMPLANE_HELM=$(HELM) $(CARGO) test -p calmplane-e2e -- $(E2E_ARGS)

# --- the book (docs/; see docs/src/contributing/testing.md) -----------------
#   make docs   regenerate the reference pages from the code (the policy file,
#               the metrics, the CLI), build the book into docs/book with the
#               pinned mdBook (installed on first use), and check the heading
#               ids tests/docs/ computes against the ones mdBook wrote
.PHONY: docs
MDBOOK_VERSION ?= 0.5.4

docs:
	CALMPLANE_UPDATE_DOCS=1 $(CARGO) test --test docs
	@mdbook --version 2>/dev/null | grep -qx 'mdbook v$(MDBOOK_VERSION)' || $(CARGO) install mdbook --locked --version $(MDBOOK_VERSION)
	mdbook build docs
	$(CARGO) test --test docs heading_ids_match_the_built_book -- --ignored
