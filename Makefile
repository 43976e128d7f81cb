# The README's two commands: `make demo` and `make test`. Each (re)creates .venv when pyproject.toml or
# requirements.lock changed, so both work from a clean clone and are quick the second time.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export DS_BUILD_OPS := 0
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0
# The venv's bin first for every child (Ray's daemons, workers and jobs included): DeepSpeed JIT-builds its
# CPU shm op with whichever `ninja` PATH finds, and two ninja versions (the venv's, the system's) each
# treat the other's build log as stale and rebuild it (~55 CPU-seconds a time).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint venv clean
venv: $(STAMP)
$(STAMP): pyproject.toml requirements.lock
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python jobs/demo.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
