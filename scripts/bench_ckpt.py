"""Benchmark checkpoint save and load: full (gathered on rank 0) vs sharded (every rank its shards, DCP), and
the training stall of a sharded save written synchronously vs in the background (``trainer.async_checkpoint``).

    torchrun --standalone --nproc_per_node 2 scripts/bench_ckpt.py [--model medium] [--parallel fsdp]
    python scripts/bench_ckpt.py --model tiny                    # one process
    torchrun --standalone --nproc_per_node 2 scripts/bench_ckpt.py --formats sharded,async,async --train-seq 16

The model (``configs/model/<name>.yaml`` plus ``--set key=value`` model overrides) is built and wrapped as the
trainer does (``parallel.parallelize``), AdamW's state is created by one optimizer step on zero gradients, and
then ``CheckpointManager.save`` / ``CheckpointManager.restore`` (the trainer's own calls) run once per
format into a temporary run dir. Per rank and phase: wall seconds (each phase starts after a barrier) and the
peak resident memory of the phase (Linux: VmHWM, reset before each phase through /proc/self/clear_refs; the
rise over the RSS at the phase start is printed too). Rank 0 prints one table row per format; the
checkpoint's size on disk is the manifest's sum.

The training stall is the time the training thread cannot take a step because of the save: for ``full`` and
``sharded`` the whole save; for ``async`` (sharded, ``background=AsyncCheckpointer()``) the save that stages
the state and starts the write, plus the later ``wait()`` that writes the manifest and renames (called once
every rank's background write is done, as the next save usually finds it). The first asynchronous save of
a run allocates the CPU buffers it copies the state into; later ones reuse them (list ``async`` twice to see
both; the second prints as ``async#2``). Meanwhile the benchmark keeps
training: with ``--train-seq S`` real optimizer steps (batch 1 x S random tokens) run while the shards are
written, and their mean time is printed next to that of the same steps before any save; without it the
training thread polls. The background seconds are from the start of the save to the end of the slowest
rank's write and hashing.
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
    from llama_jreg.distributed import barrier

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


def _async_phase(save, train_step, bg) -> tuple[dict, dict]:
    """An asynchronous save with ``bg`` (an ``AsyncCheckpointer``): the blocking start, training steps (or
    polling) until every rank's background write is done, then the blocking commit. Returns (phase dict as
    ``_phase``, stall figures)."""
    import torch.distributed as dist

    from llama_jreg.distributed import all_reduce_sum, barrier, is_distributed

    barrier()
    resettable = _reset_peak()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    save()
    start_s = time.perf_counter() - t0
    done_at: list[float] = []
    bg.pending.future.add_done_callback(lambda _f: done_at.append(time.perf_counter()))
    steps: list[float] = []
    while True:  # the ranks agree when all are done (FSDP2 steps are collective)
        flag = torch.tensor([0.0 if bg.pending.future.done() else 1.0], dtype=torch.float64)
        if is_distributed():
            all_reduce_sum(flag)
        if flag.item() == 0:
            break
        if train_step is not None:
            steps.append(train_step())
        else:
            time.sleep(0.05)
    t1 = time.perf_counter()
    bg.wait()
    commit_s = time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    background = torch.tensor([done_at[0] - t0 if done_at else seconds], dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(background, op=dist.ReduceOp.MAX)
    barrier()
    gib = 1024 * 1024
    phase = {"s": seconds, "peak_gib": peak / gib, "rise_gib": (peak - rss0) / gib if resettable else None}
    return phase, {"stall_s": start_s + commit_s, "start_s": start_s, "commit_s": commit_s,
                   "background_s": float(background.item()), "steps_during": steps}


def _peak(d: dict) -> str:
    return f"{d['peak_gib']:.2f}" + (f" (+{d['rise_gib']:.2f})" if d["rise_gib"] is not None else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="medium")
    p.add_argument("--set", action="append", default=[], help="a model override, e.g. --set n_layers=2")
    p.add_argument("--parallel", default="fsdp", choices=("fsdp", "ddp"))
    p.add_argument("--formats", default="full,sharded", help="any of full, sharded, async (comma-separated)")
    p.add_argument("--train-seq", type=int, default=0,
                   help="async: train with batch 1 x this many tokens while the shards are written (0 = poll)")
    p.add_argument("--dir", help="where to write (default: a temporary dir, deleted at the end)")
    p.add_argument("--json", help="write the per-rank results here (rank 0)")
    a = p.parse_args(argv)

    from llama_jreg import checkpoint as ckpt
    from llama_jreg.config import load_config
    from llama_jreg.distributed import broadcast_object
    from llama_jreg.model import Llama
    from llama_jreg.train.optim import Schedule, build_optimizer
    from llama_jreg.train.parallel import parallelize, unwrap
    from llama_jreg.train.state import TrainState

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

    def train_step() -> float:
        """One real optimizer step (batch 1 x --train-seq random tokens); its seconds."""
        t0 = time.perf_counter()
        x = torch.randint(0, cfg.model.vocab_size, (1, a.train_seq + 1))
        model(x[:, :-1], labels=x[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    base_steps: list[float] = []
    if a.train_seq and "async" in a.formats.split(","):
        train_step()  # warm-up
        base_steps = [train_step() for _ in range(2)]

    root = Path(broadcast_object(a.dir or (tempfile.mkdtemp(prefix="bench_ckpt_") if rank == 0 else None)))
    results = []
    bg = ckpt.AsyncCheckpointer()  # one per run, as in training: its staging buffers are reused by later saves
    for index, fmt in enumerate(a.formats.split(",")):
        run = root / f"{index}-{fmt}"
        states = {"model": ckpt.ModelPart(llama), "optim": ckpt.OptimizerPart(llama, opt),
                  "scheduler": ckpt.JsonPart(sched), "loader": ckpt.RankPart(_Cursor()),
                  "trainer_state": ckpt.JsonPart(TrainState(step=1, world_size=world, wandb_run_id="bench",
                                                            data_fingerprint="bench"))}
        extra: dict = {}
        if fmt == "async":
            extra = {"async_save": sum(f == "async" for f in a.formats.split(",")[:index]) + 1}
            mgr = ckpt.CheckpointManager(run, states, fmt="sharded", keep_last=1, background=bg)
            save, more = _async_phase(lambda mgr=mgr: mgr.save(1), train_step if a.train_seq else None, bg)
            extra.update(more)
        else:
            mgr = ckpt.CheckpointManager(run, states, fmt=fmt, keep_last=1)
            save = _phase(lambda mgr=mgr: mgr.save(1))
            extra = {"stall_s": save["s"]}
        path = ckpt.list_checkpoints(run)[-1]
        load = _phase(lambda mgr=mgr, path=path: mgr.restore(path))
        size = sum(m["bytes"] for m in json.loads((path / "manifest.json").read_text())["files"].values())
        row = {"format": fmt, "rank": rank, "save": save, "load": load, "bytes": size, **extra}
        if fmt == "async" and extra["async_save"] > 1:
            fmt = f"async#{extra['async_save']}"  # a later save: the staging buffers exist already
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
                      f"on disk | training stall {r['stall_s']:7.2f} s", flush=True)
                if fmt.startswith("async"):
                    steps = r["steps_during"]
                    print(f"{'':8s}         stall = start {r['start_s']:.2f} s + commit {r['commit_s']:.2f} s; "
                          f"background write + hash {r['background_s']:.2f} s; {len(steps)} training steps meanwhile"
                          + (f", {sum(steps) / len(steps):.2f} s each" if steps else "")
                          + (f" (before any save: {sum(base_steps) / len(base_steps):.2f} s each)" if base_steps
                             else ""), flush=True)
    bg.close()
    if rank == 0:
        print(f"model={a.model} ({n_params / 1e6:.0f}M parameters), parallel={a.parallel}, {world} process(es), "
              f"torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"model": a.model, "world": world, "params": n_params,
                                                "base_steps": base_steps, "rows": results}, indent=1))
        if not a.dir:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
