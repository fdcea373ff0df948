"""Reproduce the paper's claims with our own runs: ``python scripts/reproduce.py --scale quick|cpu|gpu --out DIR``.

Drives the public CLI only (``llama-jreg train -m ...``, ``jump``, ``eval``, ``sweep-report``), so every
step below is also how a user does it by hand. Reruns resume: a sweep is launched with ``resume=auto`` (a
finished run is only re-opened, an interrupted one continues from its last checkpoint).

Experiments (``PLANS[scale]`` says which runs each scale makes):

* E2/E3 ``text``: from scratch on Shakespeare, ``jreg=jump`` at several lambda (lambda = 0 is E2, the jump
  emerging unsuppressed), plus ``final`` and ``weighted`` at one lambda; every cell at every seed.
* E3 ``induction``: the same lambda sweep on synthetic bigram-with-trigger data (induction accuracy).

Run names are Hydra sweep job names (``<i>_seed=S_jreg.weight=W``); they must not change between versions of
this script, or a rerun starts the runs again instead of resuming them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sweep:
    """One ``llama-jreg train -m`` invocation: ``overrides`` (with comma lists) into ``OUT/<name>``."""

    name: str
    overrides: list[str]


@dataclass
class Plan:
    sweeps: list[Sweep] = field(default_factory=list)


def _text(steps: int, seeds: str, weights: str, extra_modes: str | None, lam_modes: float) -> list[Sweep]:
    common = ["model=tiny", "data=shakespeare", "data.seq_len=256", "data.micro_batch_size=8",
              f"trainer.max_steps={steps}", "optim.lr=1e-3", f"schedule.warmup_steps={max(10, steps // 10)}",
              "trainer.jump_every=25", f"trainer.eval_every={max(25, steps // 5)}", "trainer.eval_batches=8",
              f"trainer.ckpt_every={max(25, steps // 5)}", "trainer.keep_last=1", "trainer.progress=false"]
    sweeps = [Sweep("text_jump", common + ["jreg=jump", f"seed={seeds}", f"jreg.weight={weights}"])]
    if extra_modes:
        sweeps.append(Sweep("text_modes", common + [f"jreg={extra_modes}", f"seed={seeds}",
                                                    f"jreg.weight={lam_modes}"]))
    return sweeps


def _induction(steps: int, seeds: str, weights: str) -> list[Sweep]:
    common = ["model=tiny", "model.vocab_size=128", "data=induction", "data.seq_len=256", "data.micro_batch_size=8",
              f"trainer.max_steps={steps}", "optim.lr=1e-3", f"schedule.warmup_steps={max(10, steps // 10)}",
              "trainer.jump_every=25", f"trainer.eval_every={max(25, steps // 5)}", "trainer.eval_batches=8",
              f"trainer.ckpt_every={max(25, steps // 5)}", "trainer.keep_last=1", "trainer.progress=false"]
    return [Sweep("induction_jump", common + ["jreg=jump", f"seed={seeds}", f"jreg.weight={weights}"])]


PLANS: dict[str, Plan] = {
    "quick": Plan(_text(120, "1", "0,1", None, 0.1) + _induction(120, "1", "0,1")),
    "cpu": Plan(_text(500, "1,2", "0,0.01,0.1,1", "final,weighted", 0.1) + _induction(400, "1,2", "0,0.1,1")),
}


def run_sweeps(plan: Plan, out: Path, log) -> None:
    for sw in plan.sweeps:
        sweep_dir = out / sw.name
        cmd = [sys.executable, "-m", "llama_jreg", "train", "-m", *sw.overrides, "resume=auto",
               f"hydra.sweep.dir={sweep_dir}"]
        log(f"$ {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        log(f"  {sw.name}: {time.perf_counter() - t0:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(PLANS), default="quick")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(out / "reproduce.log", "a") as f:
            f.write(msg + "\n")

    run_sweeps(PLANS[args.scale], out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
