"""AdamW with the usual weight-decay split, and the learning-rate schedules (cosine, WSD, constant).

Weight decay applies to matrices (every parameter with ``ndim >= 2``) except the token embedding; RMSNorm
weights (1-D) and the embedding (and a head tied to it) are not decayed unless
``optim.decay_norms_and_embeddings=true``. ``optim.fused=null`` picks the fused AdamW kernel on CUDA and CPU
(on the 2-core CPU it steps ``tiny`` in ~6 ms vs ~22 ms for foreach or torch's CPU default, the per-tensor
loop: ``scripts/bench_ops.py --only adamw``) and the foreach one elsewhere.

The schedule is a tiny Stateful object rather than ``torch.optim.lr_scheduler.LambdaLR``: its whole state is
one integer, it round-trips through JSON (no pickled lambdas), and ``lr_factor(step)`` is a pure function
that tests and plots can call directly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llama_jreg import UserError
from llama_jreg.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two groups: decayed matrices and non-decayed norms/embeddings. ``model`` is the unwrapped Llama
    (after ``fully_shard`` its parameters are DTensors with unchanged names)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_norm_or_emb = p.ndim < 2 or id(p) in embedding_ids
        (no_decay if is_norm_or_emb and not cfg.decay_norms_and_embeddings else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    if cfg.name != "adamw":
        raise UserError(f"unknown optim.name={cfg.name!r}; only adamw is implemented")
    fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if fused:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(param_groups(model, cfg), **kwargs)


def lr_factor(step: int, cfg: ScheduleConfig, max_steps: int) -> float:
    """Multiplier of ``optim.lr`` for optimizer step ``step`` (0-indexed: the lr used by the update that
    takes the model from ``step`` to ``step + 1`` updates).

    * warm-up (all schedules): linear from 1/warmup to 1 over ``warmup_steps``;
    * ``constant``: 1 after warm-up;
    * ``cosine``: cosine from 1 to ``min_lr_ratio`` between the end of warm-up and ``max_steps``;
    * ``wsd`` (warmup-stable-decay): 1 until the last ``decay_fraction`` of the steps, then linear down
      to ``min_lr_ratio`` at ``max_steps``.
    """
    warmup = cfg.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    lo = cfg.min_lr_ratio
    if cfg.name == "cosine":
        span = max(1, max_steps - warmup)
        t = min(1.0, (step - warmup) / span)
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.name == "wsd":
        decay_steps = round(cfg.decay_fraction * max_steps)
        start = max_steps - decay_steps
        if decay_steps <= 0 or step < start:
            return 1.0
        t = min(1.0, (step - start + 1) / decay_steps)
        return 1.0 + (lo - 1.0) * t
    raise UserError(f"unknown schedule {cfg.name!r}; choose schedule=cosine|wsd|constant")


class Schedule:
    """Sets ``group["lr"] = base_lr * lr_factor(step)`` on every param group. Stateful (``{"step": n}``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, base_lr: float, max_steps: int):
        self.optimizer, self.cfg, self.base_lr, self.max_steps = optimizer, cfg, base_lr, max_steps
        self.step_count = 0
        self._apply()

    def lr(self) -> float:
        return self.base_lr * lr_factor(self.step_count, self.cfg, self.max_steps)

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"step": self.step_count, "name": self.cfg.name}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self._apply()
