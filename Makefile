# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Every package but torch comes from this lock, exact versions with hashes; `make lock` refreshes it
# from pyproject.toml's ranges (docs/development.md).
LOCK   := requirements.lock
# torch is pinned here, not in the lock: its build depends on the machine. Where the CPU build lies on
# disk (pip's find-links, as on the machines without a GPU here) pip takes it; a plain `torch`
# requirement there would pull several GB of CUDA wheels. Elsewhere it takes PyPI's default build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# Plugin packages of their own that the recipes and tests use (an adapter strategy, a recipe pack).
EXTRA_PLUGINS := docs/examples/finetune-adapters docs/examples/finetune-recipes-example
# The optional extras (pyproject.toml) that `make` installs: every capability the recipes and tests use.
EXTRAS := quantization tensorboard mlflow sweep preference
empty :=
space := $(empty) $(empty)
comma := ,
# The torch build and what only it needs; never written into the lock.
NOT_LOCKED := torch triton nvidia- cuda-
# `make test-latest`: the newest releases pyproject.toml allows, in an environment of their own.
LATEST := .venv-latest

# DeepSpeed compiles one C++ op, deepspeed_shm_comm (its CPU shared-memory collectives), with g++
# the first time a DeepSpeed engine starts on a machine without a GPU: the first ZeRO test would wait
# minutes for it, unannounced. `make test` builds it once, after the install, into torch's extension
# cache (<venv>/torch_extensions); see docs/development.md. On a machine with a GPU it builds nothing.
DS_OPS := $(VENV)/.deepspeed-ops
# Into the environment's own cache, as tests/conftest.py sets it: the cache is keyed by the op's name
# only, and environments at other paths would rebuild it over each other.
BUILD_DS_OPS := import os, sys; os.environ.setdefault('TORCH_EXTENSIONS_DIR', sys.prefix + '/torch_extensions'); \
  from deepspeed.comm.torch import build_shm_op; build_shm_op()

# Nothing in the demo or the tests may wait on the network.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-latest lock lint format clean bench

$(STAMP): pyproject.toml $(LOCK) $(addsuffix /pyproject.toml,$(EXTRA_PLUGINS))
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip install -q --no-deps --no-build-isolation $(addprefix -e ,$(EXTRA_PLUGINS))
	$(BIN)/pip check
	touch $@

$(DS_OPS): $(STAMP)
	@echo "compiling DeepSpeed's C++ op deepspeed_shm_comm once (about a minute; docs/development.md)"
	$(BIN)/python -c "$(BUILD_DS_OPS)"
	touch $@

demo: $(STAMP)
	$(BIN)/finetune run recipes/quickstart.toml

test: $(STAMP) $(DS_OPS)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The lock of every dependency but torch, resolved by uv for the Python and platform CI runs on.
lock: $(STAMP)
	echo "$(TORCH)" > $(LOCK).torch
	$(BIN)/uv pip compile pyproject.toml --extra dev $(addprefix --extra ,$(EXTRAS)) --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --constraint $(LOCK).torch \
		--custom-compile-command "make lock" --quiet \
		| awk '/^[^ #]/ { skip = 0; n = split("$(NOT_LOCKED)", out, " "); \
			for (i = 1; i <= n; i++) if (index($$0, out[i]) == 1) skip = 1 } !skip' > $(LOCK).tmp
	rm $(LOCK).torch
	@# replaced only when it changed: a new lock makes the next `make` reinstall
	if cmp -s $(LOCK).tmp $(LOCK); then rm $(LOCK).tmp; else mv $(LOCK).tmp $(LOCK); fi

# The suite on the newest releases pyproject.toml allows (torch stays at $(TORCH)), then which
# dependencies have releases beyond their bounds: how a bound is widened, see docs/development.md.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[$(subst $(space),$(comma),dev $(EXTRAS))]" "$(TORCH)"
	$(LATEST)/bin/pip install -q --no-deps --no-build-isolation $(addprefix -e ,$(EXTRA_PLUGINS))
	$(LATEST)/bin/python .ci/releases.py --lock $(LOCK)
	$(LATEST)/bin/python -c "$(BUILD_DS_OPS)"
	$(LATEST)/bin/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/padding.py

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
