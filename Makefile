# calmplane: two commands matter.
#   make run   - generate dev certificates if missing, then serve on https://127.0.0.1:8443
#   make test  - the whole test suite (installs its Python checkers into .venv first)

CARGO  ?= cargo
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export CALMPLANE_PYTHON := $(abspath $(PY))

.PHONY: run test venv certs build release lint fmt clean

run: certs/tls.crt
	$(CARGO) run --release -- serve --log-format text

certs: certs/tls.crt

certs/tls.crt:
	$(CARGO) run --release -- certs --out certs

release:
	$(CARGO) build --release

venv: $(VENV)/.installed

$(VENV)/.installed: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

test: venv
	$(CARGO) test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	rm -rf target $(VENV)
