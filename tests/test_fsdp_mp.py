"""FSDP2 mixed precision (``parallel=fsdp trainer.precision=bf16``): a MixedPrecisionPolicy instead of autocast.

Real 2-process runs on CPU (torchrun, gloo). Run as a script (under torchrun) this file is the driver: it
trains with hooks that record the dtypes seen inside the forward and writes them, with the dtypes of the
sharded parameters and the optimizer state after training, to ``<run.dir>/dtypes_rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.test_train_helpers import REPO, by_step, env_for_subprocess, run_torchrun, tiny

STEPS = 6
COMMON = ["trainer.global_batch_size=8", f"trainer.max_steps={STEPS}", "trainer.ckpt_every=100",
          "trainer.precision=bf16", "trainer.jump_every=2"]


def driver(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    from llama_jreg.config import load_config
    from llama_jreg.train.trainer import Trainer

    trainer = Trainer(load_config(argv))
    seen: dict = {}
    llama = trainer.llama
    attn = llama.layers[0].attn  # inside the first FSDP2 block: runs while its parameters are all-gathered

    def attn_hook(module, args, out):
        seen.setdefault("weight_in_forward", f"{type(module.wq.weight).__name__}:{module.wq.weight.dtype}")
        seen.setdefault("activation_in_forward", str(out.dtype))

    def root_hook(module, args, kwargs, out):
        if out.cos is not None:
            seen.setdefault("jreg_cos", str(out.cos.dtype))
        if out.loss is not None:
            seen.setdefault("loss", str(out.loss.dtype))

    attn.register_forward_hook(attn_hook)
    llama.register_forward_hook(root_hook, with_kwargs=True)
    seen["autocast_in_loop"] = type(trainer._autocast()).__name__
    try:
        trainer.fit()
    finally:
        trainer.close()
    seen["params_after_step"] = sorted({f"{type(p).__name__}:{p.dtype}" for p in llama.parameters()})
    seen["optimizer_state"] = sorted({str(v.dtype) for s in trainer.optimizer.state.values() for k, v in s.items()
                                      if k in ("exp_avg", "exp_avg_sq")})
    (Path(trainer.run_dir) / f"dtypes_rank{trainer.rank}.json").write_text(json.dumps(seen))
    return 0


def _run(run_dir, *extra):
    return run_torchrun(2, tiny(run_dir, *COMMON, *extra))


@pytest.mark.slow
def test_fsdp_bf16_uses_a_mixed_precision_policy(tmp_path):
    """bf16 weights and activations inside the forward, fp32 JREG cosines and loss, fp32 sharded master
    weights and AdamW state after the steps; losses within 2e-2 of the autocast path (DDP + autocast, the
    same global batch): bf16 rounding differs between the two (autocast keeps e.g. the norms' weights fp32)."""
    import subprocess

    mp, ref = tmp_path / "mp", tmp_path / "autocast"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           *tiny(mp, *COMMON, "parallel=fsdp", "jreg=jump", "jreg.weight=0.1")]
    proc = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _run(ref, "parallel=ddp", "jreg=jump", "jreg.weight=0.1")
    for r in (0, 1):
        seen = json.loads((mp / f"dtypes_rank{r}.json").read_text())
        assert seen["autocast_in_loop"] == "nullcontext"
        assert seen["weight_in_forward"] == "Parameter:torch.bfloat16" and seen["activation_in_forward"] == "torch.bfloat16"
        assert seen["jreg_cos"] == "torch.float32" and seen["loss"] == "torch.float32"
        assert seen["params_after_step"] == ["DTensor:torch.float32"]
        assert seen["optimizer_state"] == ["torch.float32"]
    a, b = by_step(mp, "loss"), by_step(ref, "loss")
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert max(abs(a[k] - b[k]) for k in a) < 2e-2, (a, b)
    assert a[STEPS] < a[1] - 0.03  # it trains (6 steps of warm-up and decay: a loss drop of ~0.07)
    za, zb = by_step(mp, "zeta_L", "jump"), by_step(ref, "zeta_L", "jump")
    assert max(abs(za[k] - zb[k]) for k in za) < 2e-2, (za, zb)


if __name__ == "__main__":  # under torchrun, with PYTHONPATH set to the checkout (env_for_subprocess)
    sys.exit(driver(sys.argv[1:]))
