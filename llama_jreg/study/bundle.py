"""``--bundle DIR`` of ``scripts/reproduce.py``: what the GPU machine needs where there is no network (the
wheels it lacks, the corpus and its token shards), for ``scripts/gpu_study.sh``."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from llama_jreg.study.plan import SMOLLM2, Plan, data_configs

REPO = Path(__file__).resolve().parents[2]  # the source checkout (scripts/prepare_gpu_carry.sh)


def bundle(plan: Plan, dest: Path, dry: bool) -> int:
    """``--bundle DIR``: ``scripts/prepare_gpu_carry.sh DIR`` with the plan's data configs: the wheels the GPU
    image lacks and ``DIR/cache`` ($LLAMA_JREG_CACHE there) with the corpus and the token shards prepared."""
    if any(SMOLLM2 in " ".join(sw.overrides) for sw in plan.sweeps):
        raise SystemExit("error: this scale's plan loads SmolLM2-135M (538 MB), which a bundle cannot carry; "
                         "bundle --scale gpu")
    sets = data_configs(plan)
    cmd = ["bash", str(REPO / "scripts" / "prepare_gpu_carry.sh"), str(dest)]
    print(f"$ PREPARE={shlex.quote(';'.join(sets))} {' '.join(cmd)}")
    if dry:
        return 0
    env = dict(os.environ, PREPARE=";".join(sets), PYTHON=sys.executable)
    subprocess.run(cmd, env=env, check=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    print(f"bundle {dest}: {size:.1f} MiB (a device call carries 64 MiB with the working tree); there, from the "
          f"repository root: bash scripts/gpu_study.sh {dest}")
    return 0
