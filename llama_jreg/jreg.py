"""The jump metric and the JREG regularizer, as small pure functions on per-layer statistics.

Notation (layers are 1-indexed, L = number of blocks, h_0 = token embeddings, h_L = last block output
before the final norm):

* displacement  Psi_l = (1 - cos(h_{l-1}, h_l)) / 2, per token in fp32, averaged over non-padding tokens;
* jump rate     zeta_l = 100 * sum_{k=l..L} max(0, Psi_k - Psi_{k-1})   (terms with k < 2 do not exist);
  the headline figure is zeta_L = 100 * max(0, Psi_L - Psi_{L-1}).

Regularizers R(Psi) (``jreg.mode``), see docs/jreg.md:

* ``jump``     R = sum_{l=l0..L} max(0, Psi_l - Psi_{l-1}) = zeta_{l0} / 100   (default, l0 = 2; l0 = -1 means L)
* ``final``    R = Psi_L
* ``paper``    R = mean over tokens of 1 - cos(h_{L-1}, h_L) = 2 Psi_L   (the sources' literal wording)
* ``weighted`` R = sum_l w_l Psi_l, w in {uniform, linear, last_k}, normalised to sum 1

``jreg.stream`` says which h_L the penalty sees: ``pre_norm`` (the last block's output, as in the measurement
above; default) or ``post_norm`` (final_norm(h_L), what the LM head reads; transformers' ``hidden_states[-1]``).
It replaces Psi_L inside R only; the logged Psi / zeta stay pre-norm.

Total loss = LM loss + weight(step) * R, where weight(step) ramps linearly from 0 to ``jreg.weight`` over
``jreg.warmup_steps``. ``jreg.weight == 0`` means the term is never built: loss and gradients are exactly
those of plain LM training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llama_jreg import UserError

MODES = ("jump", "final", "paper", "weighted")
STREAMS = ("pre_norm", "post_norm")
WEIGHTINGS = ("uniform", "linear", "last_k")


@dataclass
class JregConfig:
    weight: float = 0.0  # lambda; 0 = off
    mode: str = "jump"  # jump | final | paper | weighted (see docs/jreg.md)
    l0: int = 2  # first layer (1-indexed) of the jump sum, mode=jump; -1 = the last layer L, whatever the depth
    weighting: str = "uniform"  # mode=weighted
    last_k: int = 2  # weighting=last_k
    warmup_steps: int = 0  # linear warm-up of the weight
    stream: str = "pre_norm"  # h_L inside R: pre_norm (last block output) | post_norm (after the final norm)

    def validate(self, n_layers: int | None = None) -> JregConfig:
        if not (self.weight >= 0.0):
            raise UserError(f"jreg.weight={self.weight} must be >= 0 (0 turns JREG off)")
        if self.mode not in MODES:
            raise UserError(f"unknown jreg.mode={self.mode!r}; choose one of {', '.join(MODES)}")
        if self.weighting not in WEIGHTINGS:
            raise UserError(f"unknown jreg.weighting={self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.warmup_steps < 0:
            raise UserError(f"jreg.warmup_steps={self.warmup_steps} must be >= 0")
        if self.stream not in STREAMS:
            raise UserError(f"unknown jreg.stream={self.stream!r}; choose one of {', '.join(STREAMS)}")
        if self.l0 < 2 and self.l0 != -1:
            raise UserError(f"jreg.l0={self.l0} must be >= 2 (the jump at layer l needs Psi_(l-1)) or -1 (= the "
                            "last layer L)")
        if n_layers is not None:
            if n_layers < 2:
                raise UserError("JREG needs a model with at least 2 layers")
            if self.l0 > n_layers:
                raise UserError(f"jreg.l0={self.l0} exceeds the number of layers {n_layers}; use 2..{n_layers}")
            if self.last_k < 1 or self.last_k > n_layers:
                raise UserError(f"jreg.last_k={self.last_k} must be in 1..{n_layers}")
        return self

    @property
    def enabled(self) -> bool:
        return self.weight > 0.0

    def first_layer(self, n_layers: int) -> int:
        """l0 as a layer number: ``jreg.l0=-1`` is the last layer L of an ``n_layers``-deep model."""
        return n_layers if self.l0 == -1 else self.l0


def psi_per_token(cos: torch.Tensor) -> torch.Tensor:
    """Token-wise displacement (1 - cos) / 2, fp32."""
    return (1.0 - cos.float()) * 0.5


def psi(cos: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-layer displacement Psi from token-wise cosines.

    cos: (L, ...) token-wise cos(h_{l-1}, h_l) for each layer; mask: (...) bool/0-1, True on real tokens.
    Returns (L,) fp32: the mean over (non-padding) tokens.
    """
    p = psi_per_token(cos).flatten(1)
    if mask is None:
        return p.mean(dim=1)
    m = mask.reshape(-1).to(p.dtype)
    denom = m.sum().clamp_min(1.0)
    return (p * m).sum(dim=1) / denom


def jumps(psi_values: torch.Tensor) -> torch.Tensor:
    """max(0, Psi_l - Psi_{l-1}) for l = 2..L, as an (L-1,) tensor (index 0 is layer 2)."""
    return torch.clamp(psi_values[1:] - psi_values[:-1], min=0.0)


def zeta(psi_values: torch.Tensor) -> torch.Tensor:
    """Jump rate zeta_l for l = 1..L, shape (L,): 100 * sum_{k=max(l,2)..L} max(0, Psi_k - Psi_{k-1})."""
    j = jumps(psi_values)
    tail = torch.flip(torch.cumsum(torch.flip(j, [0]), 0), [0])  # tail[i] = sum j[i:]
    z = torch.cat([tail[:1], tail]) if j.numel() else psi_values.new_zeros(1)
    return 100.0 * z


def zeta_L(psi_values: torch.Tensor) -> torch.Tensor:
    """The headline jump rate zeta_L = 100 * max(0, Psi_L - Psi_{L-1})."""
    return 100.0 * torch.clamp(psi_values[-1] - psi_values[-2], min=0.0)


def layer_weights(n_layers: int, weighting: str, last_k: int = 2, device=None) -> torch.Tensor:
    """Weights w_1..w_L for mode=weighted, normalised to sum 1."""
    if weighting == "uniform":
        w = torch.ones(n_layers)
    elif weighting == "linear":
        w = torch.arange(1, n_layers + 1, dtype=torch.float32)
    elif weighting == "last_k":
        w = torch.zeros(n_layers)
        w[-last_k:] = 1.0
    else:
        raise UserError(f"unknown jreg.weighting={weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    return (w / w.sum()).to(device=device, dtype=torch.float32)


def regularizer(psi_values: torch.Tensor, cfg: JregConfig) -> torch.Tensor:
    """R(Psi) for the configured mode (a scalar; differentiable in Psi)."""
    if cfg.mode == "jump":
        return jumps(psi_values)[cfg.first_layer(psi_values.numel()) - 2 :].sum()
    if cfg.mode == "final":
        return psi_values[-1]
    if cfg.mode == "paper":
        return 2.0 * psi_values[-1]  # mean(1 - cos) = 2 * mean((1 - cos) / 2)
    if cfg.mode == "weighted":
        w = layer_weights(psi_values.numel(), cfg.weighting, cfg.last_k, psi_values.device)
        return (w * psi_values).sum()
    raise UserError(f"unknown jreg.mode={cfg.mode!r}; choose one of {', '.join(MODES)}")


def stats_mode(cfg: JregConfig) -> str:
    """The model's ``stats`` argument for a JREG forward under ``cfg``: the post-norm cosine carries gradient
    (and its autograd graph its saved tensors) only when the penalty reads it."""
    return "grad_post_norm" if cfg.stream == "post_norm" else "grad"


def penalty(cos: torch.Tensor, cos_post_norm: torch.Tensor | None, mask: torch.Tensor | None,
            cfg: JregConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(Psi, R) for one micro-batch: Psi (L,) from the pre-norm cosines ``cos`` (what is logged), and R with
    Psi_L taken on ``cfg.stream`` - with ``post_norm`` from ``cos_post_norm`` = cos(h_{L-1}, final_norm(h_L)),
    which must carry gradient (the model's ``stats=stats_mode(cfg)`` forward provides it)."""
    p = psi(cos, mask)
    if cfg.stream == "post_norm":
        if cos_post_norm is None or (cos.requires_grad and not cos_post_norm.requires_grad):
            raise ValueError("jreg.stream=post_norm needs post-norm cosines with gradient "
                             "(forward with stats='grad_post_norm')")
        p_reg = torch.cat([p[:-1], psi(cos_post_norm[None], mask)])
        return p, regularizer(p_reg, cfg)
    return p, regularizer(p, cfg)


def weight_at(cfg: JregConfig, step: int) -> float:
    """The JREG weight at optimizer step ``step`` (0-indexed), with linear warm-up."""
    if cfg.weight == 0.0:
        return 0.0
    if cfg.warmup_steps <= 0:
        return cfg.weight
    return cfg.weight * min(1.0, (step + 1) / cfg.warmup_steps)
