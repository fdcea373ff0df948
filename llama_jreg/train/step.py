"""One optimizer step's forward and backward as a function: ``forward_backward(model, batches, cfg, world, ...)``
runs a rank's micro-batches with the step's loss normalisation, leaves the gradients in ``.grad`` and returns
what they add up to as named sums (:class:`StepSums`); :meth:`StepSums.losses` turns those into the step's
floats (:class:`StepLosses`) with one read-back from the device. The trainer (``train/trainer.py``) adds the
clipping, the optimizer update and the non-finite guard around it.

Loss (per optimizer step, over all micro-batches m of all ranks):

    lm_loss   = sum_m CE_sum(m) / N_target          N_target = target tokens (labels != -100) of the step
    jreg_loss = mean_m R(Psi(m))                    Psi(m) from the micro-batch's per-layer token cosines
    z_loss    = optim.z_loss * sum_m LSE2_sum(m) / N_target    LSE2 = logsumexp(logits)^2 per target token
    loss      = lm_loss + z_loss + weight(step) * jreg_loss

Each micro-batch back-propagates ``(CE_sum(m) + z * LSE2_sum(m)) / (N_target / W) + weight * R(m) / n_micro``
(``n_micro`` per rank; the first term is one fused pass of the LM head, ``llama_jreg/loss.py``); DDP /
FSDP2 average gradients over the W ranks, so the update is exactly the gradient of ``loss``, independent of
how the global batch is split into ranks and micro-batches. With ``jreg.weight == 0`` the model runs without
gradient-carrying statistics and no JREG term is built: loss and gradients are bit-identical to plain LM
training (tests/test_train_loss.py); so is ``optim.z_loss == 0``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch

from llama_jreg import UserError
from llama_jreg import jreg as J
from llama_jreg.config import TrainConfig
from llama_jreg.distributed import all_reduce_sum
from llama_jreg.loss import IGNORE_INDEX
from llama_jreg.train.parallel import no_sync


@dataclass(frozen=True)
class World:
    """Where a step runs: the number of ranks, this rank's device, and the forward's autocast dtype (bf16
    autocast, or None: fp32, and FSDP2 whose MixedPrecisionPolicy already runs the forward in bf16)."""

    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def micro_batches_per_rank(cfg: TrainConfig, world_size: int) -> int:
    """Gradient-accumulation steps: ``trainer.global_batch_size`` (default: one micro-batch per rank) over
    ``data.micro_batch_size * world_size``; UserError when it does not divide."""
    B = cfg.data.micro_batch_size
    gbs = cfg.trainer.global_batch_size or B * world_size
    if gbs % (B * world_size) != 0:
        raise UserError(
            f"trainer.global_batch_size={gbs} is not a multiple of data.micro_batch_size * world size = "
            f"{B} * {world_size}; pick a multiple of {B * world_size}"
        )
    return gbs // (B * world_size)


def documents(batch: dict, device: torch.device) -> dict:
    """The model's ``doc_ids`` / ``position_ids`` arguments from a batch (``data.document_mask``; else none)."""
    return {k: batch[k].to(device, non_blocking=True) for k in ("doc_ids", "position_ids") if k in batch}


# the order of StepSums' tensors in the flat form (psi has one entry per layer, the others one)
_FIELDS = ("ce", "jreg", "psi_tokens", "psi", "psi_post_norm", "lse2")


@dataclass
class StepSums:
    """What a step's micro-batches add up to: sums over this rank's micro-batches, over all ranks once
    ``forward_backward`` returns them (one all-reduce of ``flatten()``). The tensor fields are float64 on the
    step's device, or Python floats after ``unflatten`` of a host list."""

    ce: torch.Tensor  # cross-entropy summed over target tokens
    jreg: torch.Tensor  # R(m) summed over micro-batches (0 without JREG)
    psi_tokens: torch.Tensor  # target tokens Psi was measured on (0 unless with_psi)
    psi: torch.Tensor  # (n_layers,) Psi_l times those tokens
    psi_post_norm: torch.Tensor  # Psi_L after the final norm times those tokens
    lse2: torch.Tensor  # logsumexp(logits)^2 summed over target tokens (0 without z-loss)
    n_target: float = 1.0  # target tokens of the step, all ranks (at least 1)
    micro_batches: int = 1  # micro-batches of the step, all ranks
    weight: float = 0.0  # the JREG weight the step used
    with_psi: bool = False  # Psi measured on this step's batches
    stop: bool = False  # some rank received SIGTERM / SIGINT: all stop after this step
    nan: bool = False  # fault injection: the step's loss was made NaN

    @classmethod
    def zeros(cls, n_layers: int, device: torch.device) -> StepSums:
        def z(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=device)
        return cls(ce=z(), jreg=z(), psi_tokens=z(), psi=z(n_layers), psi_post_norm=z(), lse2=z())

    def flatten(self) -> torch.Tensor:
        """The tensor fields stacked into one float64 vector: ``[ce, jreg, psi_tokens, psi (L), psi_post_norm,
        lse2]``."""
        return torch.cat([getattr(self, f).reshape(-1) for f in _FIELDS])

    def unflatten(self, flat) -> StepSums:
        """A copy of these sums whose tensor fields are read from ``flat`` (a vector or a list in ``flatten``'s
        order); the other fields are kept."""
        L = len(flat) - len(_FIELDS) + 1
        return replace(self, ce=flat[0], jreg=flat[1], psi_tokens=flat[2], psi=flat[3:3 + L],
                       psi_post_norm=flat[3 + L], lse2=flat[4 + L])

    def losses(self, cfg: TrainConfig, grad_norm: torch.Tensor | None = None) -> StepLosses:
        """The step's floats (same on every rank), read from the device in one copy together with
        ``grad_norm`` when given."""
        flat = self.flatten()
        if grad_norm is not None:
            flat = torch.cat([flat, grad_norm.detach().reshape(1).to(flat.dtype)])
        v = flat.tolist()
        s = self.unflatten(v[:-1] if grad_norm is not None else v)
        lm_loss = s.ce / self.n_target
        z_loss = cfg.optim.z_loss * s.lse2 / self.n_target
        jreg_loss = s.jreg / self.micro_batches if cfg.jreg.enabled else 0.0
        psi = psi_post = None
        if self.with_psi:
            n = max(s.psi_tokens, 1.0)
            psi = [x / n for x in s.psi]
            psi_post = s.psi_post_norm / n
        loss = float("nan") if self.nan else lm_loss + z_loss + self.weight * jreg_loss
        return StepLosses(loss=loss, lm_loss=lm_loss, z_loss=z_loss, jreg_loss=jreg_loss, jreg_weight=self.weight,
                          n_target=self.n_target, psi=psi, psi_post_norm_L=psi_post,
                          grad_norm=v[-1] if grad_norm is not None else None, stop=self.stop)


@dataclass
class StepLosses:
    """One step's floats, the same on every rank (see the module docstring for the formulas)."""

    loss: float
    lm_loss: float
    z_loss: float
    jreg_loss: float
    jreg_weight: float
    n_target: float
    psi: list[float] | None = None  # Psi per layer on the step's batches (steps that measured it)
    psi_post_norm_L: float | None = None
    grad_norm: float | None = None  # before clipping
    lr: float | None = None  # the rate the step's update used (set by the trainer)
    stop: bool = False


def forward_backward(model: torch.nn.Module, batches: list[dict], cfg: TrainConfig, world: World, *,
                     weight: float, with_psi: bool, stop: bool = False, nan: bool = False) -> StepSums:
    """Forward + backward of this rank's micro-batches with the step's loss normalisation; leaves the
    gradients of the whole global batch in ``.grad`` (synchronised on the last micro-batch only) and returns
    the step's sums over all ranks.

    ``model``: the (DDP / FSDP2-wrapped) Llama; ``weight``: the step's JREG weight (``jreg.weight_at``);
    ``with_psi``: also measure Psi on these batches (detached when JREG is off). With ``jreg.weight == 0``
    the model is called without gradient-carrying statistics and no JREG term exists, so gradients equal
    plain LM training bit for bit. ``stop``: this rank wants to stop (a signal); the result's ``stop`` is
    whether any rank does. ``nan``: fault injection for tests. Collective."""
    model.train()
    device = world.device
    use_jreg = cfg.jreg.enabled
    stats = J.stats_mode(cfg.jreg) if use_jreg else bool(with_psi)
    L = cfg.model.n_layers

    # global target-token count (+ the stop flag, so all ranks stop on the same step)
    n_local = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    if world.size > 1:
        counts = all_reduce_sum(torch.tensor([n_local, 1 if stop else 0], dtype=torch.float64, device=device))
        n_target, stop = max(float(counts[0].item()), 1.0), bool(counts[1].item() > 0)
    else:  # one process: no device round trip
        n_target = max(float(n_local), 1.0)
    tokens_per_rank = n_target / world.size  # DDP/FSDP average over ranks: divide by this, not n_target
    n_micro = len(batches)  # per rank; R(m) / n_micro averaged over ranks = mean over all micro-batches

    s = StepSums.zeros(L, device)
    z_coef = cfg.optim.z_loss
    for i, b in enumerate(batches):
        x = b["input_ids"].to(device, non_blocking=True)
        y = b["labels"].to(device, non_blocking=True)
        mask = y != IGNORE_INDEX
        psi = None
        with no_sync(model, skip=i < n_micro - 1):
            with world.autocast():
                out = model(x, stats=stats, labels=y, loss_chunk_tokens=cfg.trainer.loss_chunk_tokens,
                            z_loss=z_coef, **documents(b, device))
            ce = out.loss if out.ce is None else out.ce
            loss = out.loss / tokens_per_rank
            if use_jreg:
                with torch.profiler.record_function("jreg_term"):  # named for scripts/bench_cpu.py
                    psi, reg = J.penalty(out.cos, out.cos_post_norm, mask, cfg.jreg)
                    loss = loss + (weight / n_micro) * reg
                s.jreg += reg.detach().double()
            if nan:
                loss = loss * float("nan")
            loss.backward()
        s.ce += ce.detach().double()
        if out.lse_sq is not None:
            s.lse2 += out.lse_sq.double()
        if with_psi:  # Psi for the jump row only on jump-logging steps (reusing JREG's Psi when built)
            with torch.no_grad():
                n = mask.sum().double()
                s.psi_tokens += n
                psi = psi.detach() if psi is not None else J.psi(out.cos, mask)
                s.psi += psi.double() * n
                s.psi_post_norm += J.psi(out.cos_post_norm[None], mask)[0].double() * n
    s = replace(s, n_target=n_target, micro_batches=n_micro * world.size, weight=weight, with_psi=with_psi,
                stop=stop, nan=nan)
    return s.unflatten(all_reduce_sum(s.flatten()))
