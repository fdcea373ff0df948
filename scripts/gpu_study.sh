#!/usr/bin/env bash
# The gpu-scale study on a GPU machine without network, from the repository root there:
#   bash scripts/gpu_study.sh [BUNDLE] [DEST]
# BUNDLE (default .gpu) was made here by `python scripts/reproduce.py --scale gpu --bundle .gpu` (the wheels the
# GPU image lacks + $LLAMA_JREG_CACHE with the corpus and token shards prepared); DEST (default $OUT, else
# runs/reproduce) receives gpu_study.tar.gz: every run's config, metrics and evaluation, results.json, report.md
# and the figures, without checkpoints. The study itself goes to $STUDY (default runs/reproduce/gpu; a rerun
# resumes it).
# Extra arguments after DEST go to reproduce.py (e.g. --lanes 8, --max-hours 0.1). The v2 gpu design (--scale gpu)
# is a plan not yet run: its E1 and E4 load SmolLM2, which this machine cannot fetch.
set -euo pipefail
BUNDLE=${1:-.gpu}
case "$BUNDLE" in /*) ;; *) BUNDLE=$PWD/$BUNDLE ;; esac  # absolute: the cache below must not land under the repo
DEST=${2:-${OUT:-runs/reproduce}}
shift $(( $# < 2 ? $# : 2 ))
PY=${PYTHON:-python3}
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/llama_jreg_site \
        "$BUNDLE"/*.whl
    export PYTHONPATH=/tmp/llama_jreg_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} LLAMA_JREG_CACHE=$BUNDLE/cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    WANDB_MODE=disabled PYTHONUNBUFFERED=1
STUDY=${STUDY:-runs/reproduce/gpu}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
start=$(date +%s)
"$PY" scripts/reproduce.py --scale gpu --out "$STUDY" "$@"
echo "gpu study: $(( $(date +%s) - start )) s"
mkdir -p "$DEST"
tar czf "$DEST/gpu_study.tar.gz" --exclude=checkpoints --exclude='*.pt' --exclude='*.safetensors' "$STUDY"
ls -la "$DEST/gpu_study.tar.gz"
