"""Metrics sinks (rank 0 only): ``<run.dir>/metrics.jsonl`` always, wandb with ``logger=wandb``; plus the
throughput / MFU / memory arithmetic.

Every row of metrics.jsonl is one JSON object with a ``kind`` (typed in ``llama_jreg/rows.py``: ``TrainRow``,
``JumpRow``, ``EvalRow``, ``TaskRow``, which the readers use too):

* ``train`` (every ``trainer.log_every`` steps): ``step, tokens, loss, lm_loss, jreg_loss, jreg_weight, lr,
  grad_norm, tokens_per_s, step_time_s, tflops, mfu, memory, memory_kind, data_wait_frac, nonfinite_skipped``;
  ``tflops`` is the achieved model TFLOP/s per device (the FLOPs formula below, any device and precision);
  ``tokens_per_s``/``step_time_s``/``data_wait_frac`` are averages over the steps since the previous row,
  ``data_wait_frac`` the fraction of that time spent waiting for the loader; ``memory`` is in GiB
  (``memory_kind``: ``cuda_max_allocated`` or ``cpu_rss``); ``lr`` is the rate the step's update used; a
  skipped non-finite step logs ``loss: null`` (the file is strict JSON); with ``data.mixture``,
  ``tokens_by_source`` (``{name: tokens}``, all ranks; wandb ``train/tokens_by_source/<name>``);
* ``jump``  (every ``trainer.jump_every`` steps): ``step, tokens, psi`` (list, one per layer, on the training
  batch of that step), ``zeta_L, psi_post_norm_L``; ``val_psi, val_zeta_L, val_psi_post_norm_L`` (the same on
  a fixed validation batch; ``*_post_norm_L`` is Psi_L with the final norm applied to h_L);
* ``eval``  (every ``trainer.eval_every`` steps and at the end): ``step, tokens, val_loss, val_ppl``; with
  ``data.mixture`` also ``val_loss/<name>`` per source (``val_loss`` is then their weighted mean).
* ``task``  (with ``tasks=[...]``: every ``trainer.task_every`` steps, at the end, at step 0 of an init_from
  run): ``step, tokens, task, accuracy, n, seconds`` plus the task's own keys (``acc_norm``, ``loglik``, ...;
  llama_jreg/tasks/); to wandb as ``task/NAME/accuracy``.

``step`` counts optimizer steps taken (1 after the first update). ``tokens`` counts input tokens seen, over
all ranks. ``loss = lm_loss + jreg_weight * jreg_loss``; ``lm_loss`` is the mean cross-entropy over all
target tokens of the step (all micro-batches, all ranks); ``jreg_loss`` is the mean of R over micro-batches.

MFU (model FLOPs utilisation) = achieved model FLOP/s / (world size * device peak), with

    FLOPs per token = 6 * N_matmul + 12 * L * T * d_attn

where N_matmul counts every weight that takes part in a matmul (all Linear layers *including* the LM head,
even when it is tied to the embedding; the embedding lookup itself is no matmul and is excluded), L the number
of layers, T the sequence length and d_attn = n_heads * head_dim: the 12*L*T*d_attn term is the forward +
backward cost of QK^T and attention*V (PaLM appendix B; no discount for the causal mask, no recompute from
activation checkpointing). The peak is the dense bf16 tensor-core peak of the device (H100 SXM 989 TFLOP/s,
...); MFU is reported only for bf16 on a known CUDA device, else ``null``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

import torch

from llama_jreg import UserError
from llama_jreg.model import Llama
from llama_jreg.rows import EvalRow, JumpRow, Row, TaskRow, TrainRow, kind_of
from llama_jreg.train.step import StepLosses

# dense bf16 peak FLOP/s per device, by a substring of torch.cuda.get_device_name()
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS:
        if key in name:
            return peak
    return None


def flops_per_token(model: Llama, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token; see the module docstring."""
    cfg = model.cfg
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    d_attn = cfg.n_heads * cfg.hd
    return 6.0 * n_matmul + 12.0 * cfg.n_layers * seq_len * d_attn


def memory_usage(device: torch.device) -> tuple[float, str]:
    """(GiB, kind): CUDA max allocated since the last reset, or the process's current CPU RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda_max_allocated"
    try:
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        return rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**30, "cpu_rss"
    except (OSError, ValueError):  # not Linux: peak RSS (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_max_rss"


class Throughput:
    """Builds the ``kind=train`` rows: counts the steps, tokens and data-wait time since the last row, and turns
    them and a step's losses into the row (tokens/s, step time, TFLOP/s, MFU, memory, data-wait share).

    The trainer calls ``add(data_wait_s)`` after every optimizer step and ``row(...)`` on logging steps; the
    clock restarts at each row (and at ``restart()``, e.g. after a step-0 evaluation)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, world: int, peak_flops: float | None,
                 device: torch.device):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.world, self.peak_flops, self.device = world, peak_flops, device
        self.restart()

    def restart(self) -> None:
        self.start, self.tokens, self.wait = time.perf_counter(), 0, 0.0

    def add(self, data_wait_s: float) -> None:
        self.tokens += self.tokens_per_step
        self.wait += data_wait_s

    def row(self, step: int, tokens: int, out: StepLosses, nonfinite_skipped: int) -> TrainRow:
        """The train row of ``step`` from the step's floats ``out`` (``Trainer.train_step``); restarts the clock."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tps = self.tokens / elapsed
        mem, mem_kind = memory_usage(self.device)
        model_flops = tps * self.flops_per_token / self.world
        row = TrainRow(step=step, tokens=tokens, loss=out.loss, lm_loss=out.lm_loss, z_loss=out.z_loss,
                       jreg_loss=out.jreg_loss, jreg_weight=out.jreg_weight, lr=out.lr, grad_norm=out.grad_norm,
                       tokens_per_s=tps, step_time_s=elapsed * self.tokens_per_step / max(self.tokens, 1),
                       tflops=model_flops / 1e12, mfu=model_flops / self.peak_flops if self.peak_flops else None,
                       memory=mem, memory_kind=mem_kind, data_wait_frac=self.wait / elapsed,
                       nonfinite_skipped=nonfinite_skipped)
        self.restart()
        return row


def _finite_or_none(v):
    """Strict JSON: a non-finite float (a skipped step's loss) is written as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


class MetricsLogger:
    """Writes rows to metrics.jsonl and (optionally) wandb. Construct on every rank; only the main process
    writes. ``truncate_after(step)`` on resume drops rows a crashed run logged after its last checkpoint."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a row cut short by a crash
                continue
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        try:  # atomic: a crash here leaves the old file, never a half-written one
            tmp.write_text("".join(k + "\n" for k in kept))
            os.replace(tmp, self.path)
        except OSError as e:
            raise UserError(f"cannot write metrics to {self.path}: {e.strerror or e}; check run.dir and free disk") from None

    def last_values(self) -> dict:
        """The latest final_loss / final_lm_loss / zeta_L / val_zeta_L / val_loss in metrics.jsonl (for a
        resumed run's summary before it logs anything new: the same summary as when it trained)."""
        out: dict = {}
        if not self.enabled or not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = kind_of(r)
            if kind == TrainRow.KIND:
                t = TrainRow.from_dict(r)
                out.update(final_loss=t.loss, final_lm_loss=t.lm_loss)
            elif kind == JumpRow.KIND:
                j = JumpRow.from_dict(r)
                out.update(zeta_L=j.zeta_L, val_zeta_L=j.val_zeta_L)
            elif kind == EvalRow.KIND:
                out["val_loss"] = EvalRow.from_dict(r).val_loss
            elif kind == TaskRow.KIND and isinstance(r.get("task"), str):
                out.setdefault("tasks", {})[r["task"]] = r
        return out

    def _write_text(self, text: str, mode: str = "w") -> None:
        try:
            with open(self.path, mode) as f:
                f.write(text)
                f.flush()
        except OSError as e:
            raise UserError(f"cannot write metrics to {self.path}: {e.strerror or e}; check run.dir and free disk") from None

    def start_wandb(self, logger_cfg, run_dir: Path, run_id: str, config: dict) -> None:
        """``wandb.init`` with the stored run id (``resume="allow"``: a resumed run continues the same run)."""
        if not self.enabled or logger_cfg.name != "wandb":
            return
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs the wandb package: pip install wandb") from None
        wandb_dir = Path(run_dir)  # wandb creates <run_dir>/wandb/
        self.wandb = wandb.init(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            group=logger_cfg.group,
            tags=list(logger_cfg.tags) or None,
            name=logger_cfg.run_name or Path(run_dir).name,
            mode=logger_cfg.mode or os.environ.get("WANDB_MODE") or "online",
            dir=str(wandb_dir),
            id=run_id,
            resume="allow",
            config=config,
        )

    def log(self, row: Row) -> None:
        if not self.enabled:
            return
        row = {k: _finite_or_none(v) for k, v in row.to_dict().items()}
        self._write_text(json.dumps(row, allow_nan=False) + "\n", mode="a")
        if self.wandb is not None:
            self._log_wandb(row)

    def _log_wandb(self, row: dict) -> None:
        import wandb  # deferred: ~0.4 s to import (scripts/bench_imports.py)

        kind, step = row["kind"], row["step"]
        prefix = f"task/{row['task']}" if kind == "task" else kind  # task/NAME/accuracy, task/NAME/n, ...
        data = {}
        for k, v in row.items():
            if k in ("kind", "step") or v is None or isinstance(v, str):
                continue
            if isinstance(v, list):
                for i, x in enumerate(v):
                    data[f"{prefix}/{k}/layer_{i + 1:02d}"] = x
            elif isinstance(v, dict):  # tokens_by_source
                data.update({f"{prefix}/{k}/{name}": x for name, x in v.items()})
            else:
                data[f"{prefix}/{k}"] = v
        if kind == "jump" and row.get("psi"):
            table = wandb.Table(columns=["layer", "psi"], data=[[i + 1, p] for i, p in enumerate(row["psi"])])
            data["jump/psi_per_layer"] = wandb.plot.line(table, "layer", "psi", title=f"Psi per layer (step {step})")
        self.wandb.log(data, step=step)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
