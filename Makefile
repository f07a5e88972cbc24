# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch that lies on disk here. A plain `torch` requirement on a machine without
# torch pulls several GB of CUDA wheels, so machines without a GPU get this pin first.
TORCH_CPU ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# Plugin packages of their own that the recipes and tests use.
EXTRA_PLUGINS := docs/examples/finetune-adapters

# Nothing in the demo or the tests may wait on the network.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint format clean bench

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(EXTRA_PLUGINS))
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default torch build"; $(BIN)/pip install -q torch; \
	else \
		echo "no GPU: installing the CPU build $(TORCH_CPU)"; $(BIN)/pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-build-isolation $(addprefix -e ,$(EXTRA_PLUGINS))
	touch $@

demo: $(STAMP)
	$(BIN)/finetune run recipes/quickstart.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/padding.py

clean:
	rm -rf $(VENV) runs .pytest_cache
