"""Time checkpoint save and resume of one small training run: local disk vs ``trainer.ckpt_dir=s3://...`` on
moto's standalone S3 server on 127.0.0.1 (``moto[server]`` and s3fs: the dev extra).

    OMP_NUM_THREADS=1 python scripts/bench_ckpt_s3.py [--model tiny] [--steps 8]

Per mode, a run of ``--steps - 2`` steps saves every 2 steps (``CheckpointManager.save`` timed: the local
write, plus the upload with the manifest last in the S3 mode), then ``resume=auto`` continues it (timed:
``resolve_resume`` + ``CheckpointManager.restore``; in the S3 mode from an empty run.dir, as on another
machine: download of the newest checkpoint, sha256 verification, restore). The timers wrap the trainer's own
calls. Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_jreg.checkpoint import manager  # noqa: E402 - after the path of this checkout
from llama_jreg.train import setup, trainer  # noqa: E402
from tests.s3_server import start_server, stop_server  # noqa: E402

TIMES: dict[str, list[float]] = {"save": [], "resume": []}


def timed(key: str, fn, add: bool = False):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if add:
            TIMES[key][-1] += time.perf_counter() - t
        else:
            TIMES[key].append(time.perf_counter() - t)
        return out

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    proc, server = start_server()  # the tests' moto server, its endpoint and credentials in the environment
    os.environ.update(server.env)
    server.fs().mkdir("bench")
    manager.CheckpointManager.save = timed("save", manager.CheckpointManager.save)
    manager.CheckpointManager.restore = timed("resume", manager.CheckpointManager.restore, add=True)
    trainer.ckpt.resolve_resume = timed("resume", trainer.ckpt.resolve_resume)
    base = [f"model={args.model}", "data=induction", "data.seq_len=64", "data.micro_batch_size=2",
            f"trainer.max_steps={args.steps}", "trainer.ckpt_every=2", "trainer.keep_last=2", "trainer.log_every=4",
            "trainer.eval_every=1000", "trainer.jump_every=1000", "trainer.device=cpu"]
    try:
        for mode in ("local", "s3"):
            d = Path(tempfile.mkdtemp(prefix="bench_ckpt_s3_"))
            extra = ["trainer.ckpt_dir=s3://bench/ckpt"] if mode == "s3" else []
            TIMES["save"].clear()
            trainer.train(setup.build_config([*base, f"run.dir={d}/a", *extra, f"trainer.steps_per_run={args.steps - 2}"]))
            saves = list(TIMES["save"])
            TIMES["resume"].clear()
            resume_dir = d / ("b" if mode == "s3" else "a")  # s3: an empty run.dir, as on another machine
            trainer.train(setup.build_config([*base, f"run.dir={resume_dir}", *extra, "resume=auto"]))
            last = max((d / "a" / "checkpoints").iterdir())
            size = sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
            print(json.dumps({"mode": mode, "checkpoint_MiB": round(size / 2**20, 1),
                              "save_s": [round(x, 2) for x in saves],
                              "resume_s": round(TIMES["resume"][0], 2)}), flush=True)
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
