# llama-jreg: `make demo` runs a small real pre-training run on CPU; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# a system torch with CUDA (GPU images) is seen through --system-site-packages and kept
SYSTEM_SITE := $(shell python3 -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && echo --system-site-packages)
TEST_ENV := WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
            HF_HOME=$(CURDIR)/.cache/hf_home TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?=

.PHONY: setup demo reproduce test test-slow test-all bench bench-gpu lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	python3 -m venv $(SYSTEM_SITE) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(VENV)
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	WANDB_MODE=offline $(VENV)/bin/llama-jreg train experiment=continued jreg=jump jreg.weight=1 logger=wandb run.dir=runs/demo resume=auto
	$(VENV)/bin/llama-jreg generate runs/demo --prompt 'ROMEO:' --max-new-tokens 60 --seed 0

# the v2 study (docs/preregistration.md) at the cpu scale, ~6 h on 2 cores in chunks: no run starts after
# MAX_HOURS (a rerun continues); every evaluated run is kept in docs/study/v2 (ARCHIVE=DIR for another)
MAX_HOURS ?= 2.2
reproduce: setup
	$(PY) scripts/reproduce.py --scale cpu --out runs/reproduce/v2 --lanes 2 --max-hours $(MAX_HOURS) $(if $(ARCHIVE),--archive $(ARCHIVE))

test: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "slow" $(PYTEST_ARGS)

test-all: setup
	$(TEST_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) scripts/bench_cpu.py --compile
	$(PY) scripts/bench_data.py
	$(PY) scripts/bench_ops.py

# one CUDA GPU: small, medium, large in bf16 (sdpa / flash x compile off / on, largest micro-batch, transformers)
bench-gpu: setup
	mkdir -p runs
	$(PY) scripts/bench_gpu.py --seq 2048 --out runs/bench_gpu.jsonl

lint: setup
	$(VENV)/bin/ruff check llama_jreg tests scripts

clean:
	rm -rf $(VENV) .cache runs outputs multirun
