"""Benchmark checkpoint save and load: full (gathered on rank 0) vs sharded (every rank its shards, DCP).

    torchrun --standalone --nproc_per_node 2 scripts/bench_ckpt.py [--model medium] [--parallel fsdp]
    python scripts/bench_ckpt.py --model tiny                    # one process

The model (``configs/model/<name>.yaml`` plus ``--set key=value`` model overrides) is built and wrapped as the
trainer does (``parallel.parallelize``), AdamW's state is created by one optimizer step on zero gradients, and
then ``checkpoint.save_checkpoint`` / ``checkpoint.load_checkpoint`` (the trainer's own calls) run once per
format into a temporary run dir. Per rank and phase: wall seconds (each phase starts after a barrier) and the
peak resident memory of the phase (Linux: VmHWM, reset before each phase through /proc/self/clear_refs; the
rise over the RSS at the phase start is printed too). Rank 0 prints one table row per format; the
checkpoint's size on disk is the manifest's sum.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class _Cursor:
    """The smallest loader state the checkpoint needs (the benchmark reads no data)."""

    def __init__(self):
        self.cursor = 0

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = state["cursor"]


def _phase(fn) -> dict:
    """Run ``fn`` after a barrier; its wall seconds, peak RSS (GiB) and peak rise over the RSS at the start."""
    from llama_jreg.train.distributed import barrier

    barrier()
    resettable = _reset_peak()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    barrier()
    gib = 1024 * 1024
    return {"s": seconds, "peak_gib": peak / gib, "rise_gib": (peak - rss0) / gib if resettable else None}


def _peak(d: dict) -> str:
    return f"{d['peak_gib']:.2f}" + (f" (+{d['rise_gib']:.2f})" if d["rise_gib"] is not None else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="medium")
    p.add_argument("--set", action="append", default=[], help="a model override, e.g. --set n_layers=2")
    p.add_argument("--parallel", default="fsdp", choices=("fsdp", "ddp"))
    p.add_argument("--formats", default="full,sharded")
    p.add_argument("--dir", help="where to write (default: a temporary dir, deleted at the end)")
    p.add_argument("--json", help="write the per-rank results here (rank 0)")
    a = p.parse_args(argv)

    from llama_jreg.config import load_config
    from llama_jreg.model import Llama
    from llama_jreg.train import checkpoint as ckpt
    from llama_jreg.train.distributed import broadcast_object
    from llama_jreg.train.optim import Schedule, build_optimizer
    from llama_jreg.train.parallel import parallelize, unwrap

    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cfg = load_config([f"model={a.model}", *(f"model.{s}" for s in a.set), f"parallel={a.parallel}",
                       "trainer.device=cpu"])
    torch.manual_seed(0)
    model = parallelize(Llama(cfg.model), cfg, torch.device("cpu"))
    llama = unwrap(model)
    n_params = sum(p.numel() for p in llama.parameters())  # a DTensor's numel() is its global size
    opt = build_optimizer(llama, cfg.optim, torch.device("cpu"))
    for q in llama.parameters():
        q.grad = torch.zeros_like(q)
    opt.step()  # AdamW state (exp_avg, exp_avg_sq) exists, as in a checkpoint of a real run
    opt.zero_grad(set_to_none=True)
    sched = Schedule(opt, cfg.schedule, cfg.optim.lr, 100)

    root = Path(broadcast_object(a.dir or (tempfile.mkdtemp(prefix="bench_ckpt_") if rank == 0 else None)))
    results = []
    for fmt in a.formats.split(","):
        run = root / fmt
        kw = dict(model=llama, optimizer=opt, schedule=sched, loader=_Cursor())
        save = _phase(lambda run=run, fmt=fmt, kw=kw: ckpt.save_checkpoint(
            run, 1, **kw, trainer_state={"step": 1, "tokens": 0, "world_size": world}, config_yaml="{}\n",
            tokenizer_path=None, wandb_run_id="bench", fingerprint="bench", keep_last=1, fmt=fmt))
        path = ckpt.list_checkpoints(run)[-1]
        load = _phase(lambda path=path, kw=kw: ckpt.load_checkpoint(path, **kw, fingerprint="bench"))
        size = sum(m["bytes"] for m in json.loads((path / "manifest.json").read_text())["files"].values())
        row = {"format": fmt, "rank": rank, "save": save, "load": load, "bytes": size}
        rows = [None] * world
        if world > 1:
            dist.all_gather_object(rows, row)
        else:
            rows = [row]
        results.extend(rows)
        if rank == 0:
            for r in rows:
                print(f"{fmt:8s} rank {r['rank']}: save {r['save']['s']:7.2f} s  peak RSS {_peak(r['save'])} GiB | "
                      f"load {r['load']['s']:7.2f} s  peak RSS {_peak(r['load'])} GiB | {r['bytes'] / 2**30:.2f} GiB "
                      "on disk", flush=True)
    if rank == 0:
        print(f"model={a.model} ({n_params / 1e6:.0f}M parameters), parallel={a.parallel}, {world} process(es), "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"model": a.model, "world": world, "params": n_params,
                                                "rows": results}, indent=1))
        if not a.dir:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
