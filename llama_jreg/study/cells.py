"""The report's descriptive readings (docs/preregistration.md, "Descriptive only (no test)"): every cell of the
study on both streams (Ψ_L and ζ_L before and after the final norm, ζ_{L−1}, the signed jumps, the val loss,
both lenses and both early-exit savings), Ψ layer by layer, and how many seeds meet the screening criterion
under each arm. Means over the cell's evaluated seeds; nothing here is tested."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from llama_jreg.jreg import zeta
from llama_jreg.study.design import Design, grew, screen_reading


def zeta_upto(psi: list[float], first: int) -> float:
    """ζ_ℓ = 100 · Σ_{k=ℓ..L} max(0, Ψ_k − Ψ_{k−1}) for ℓ = ``first`` (1-based), by :func:`llama_jreg.jreg.zeta`."""
    return float(zeta(torch.tensor(psi, dtype=torch.float64))[first - 1])


def groups(data: dict) -> dict[str, list[int]]:
    """The seeds of each group: every screened seed, the growing seeds with E3 runs, the control seeds."""
    runs = data["runs"]

    def seeds(stage: str, arms: tuple[str, ...]) -> list[int]:
        return sorted(set().union(*(runs.get((stage, a), {}) for a in arms)))

    return {"screened": sorted(runs.get(("screen", ""), {})), "arms": seeds("arms", ("paper", "jump", "placebo")),
            "control": seeds("control", ("paper", "jump"))}


def _cells(data: dict) -> list[tuple[str, str, str, list[int]]]:
    """(label, stage, arm, seeds) of every cell, in the report's order."""
    g = groups(data)
    out = [("E2: λ = 0, every screened seed", "screen", "", g["screened"])]
    out += [(f"E3 growing: {name}", stage, arm, g["arms"]) for name, stage, arm in
            (("λ = 0", "screen", ""), ("placebo", "arms", "placebo"), ("paper", "arms", "paper"),
             ("jump", "arms", "jump"))]
    out += [(f"control (non-growing): {name}", stage, arm, g["control"]) for name, stage, arm in
            (("λ = 0", "screen", ""), ("paper", "control", "paper"), ("jump", "control", "jump"))]
    out += [(f"E4: {name}", "continued", arm, sorted(data["runs"].get(("continued", arm), {}))) for name, arm in
            (("λ = 0", "base"), ("paper", "paper"), ("jump", "jump"))]
    return out


def _mean(vals) -> float | None:
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def fmt(v, d: int = 4) -> str:
    """A reading with ``d`` decimals; "-" for none (or a non-finite one)."""
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{d}f}"


def _evaluated(data: dict, stage: str, arm: str, seeds: list[int]) -> list[dict]:
    """The readings of the cell's evaluated runs, in seed order."""
    cell = data["runs"].get((stage, arm), {})
    return [cell[s] for s in seeds if cell.get(s)]


def _psi_post(r: dict) -> float:
    """Ψ_L^post from a run's readings (D^post − D = Ψ_L^post − Ψ_L)."""
    return r["psi"][-1] + r["D_post"] - r["D"]


def cell_rows(data: dict) -> list[str]:
    """One row per cell: n and the mean of every reading, both streams."""
    lines = ["| cell | n | Ψ_L | Ψ_L^post | ζ_L | ζ_L^post | ζ_{L−1} | D | D^post | J2 | val loss | "
             "lens mid (unit gain) | lens mid (usual) | saving ≤ L−2 (unit gain) | saving ≤ L−2 (usual) |",
             "|---|---:|" + "---:|" * 13]
    for label, stage, arm, seeds in _cells(data):
        rs = _evaluated(data, stage, arm, seeds)
        if not rs:
            continue

        def m(key, d=4, rs=rs):
            return fmt(_mean(r.get(key) for r in rs), d)

        psi_l = fmt(_mean(r["psi"][-1] for r in rs))
        psi_post = fmt(_mean(_psi_post(r) for r in rs))
        z1 = fmt(_mean(zeta_upto(r["psi"], len(r["psi"]) - 1) for r in rs), 2)
        lines.append(f"| {label} | {len(rs)} | {psi_l} | {psi_post} | {m('zeta_L', 2)} | {m('zeta_L_post', 2)} | "
                     f"{z1} | {m('D')} | {m('D_post')} | {m('J2')} | {m('val_loss')} | {m('lens_mid')} | "
                     f"{m('lens_mid_usual')} | {m('saving')} | {m('saving_usual')} |")
    return lines


def psi_rows(data: dict) -> list[str]:
    """Ψ layer by layer per cell (pre-norm; Ψ_L^post last): Ψ_1, the mean of Ψ_2..Ψ_{L−2}, then the last
    three layers (the same columns for the 6-layer and the 30-layer models)."""
    lines = ["| cell | L | Ψ_1 | mean Ψ_2..Ψ_{L−2} | Ψ_{L−2} | Ψ_{L−1} | Ψ_L | Ψ_L^post |", "|---|---:|" + "---:|" * 6]
    for label, stage, arm, seeds in _cells(data):
        rs = [r for r in _evaluated(data, stage, arm, seeds) if len(r["psi"]) >= 4]
        if not rs:
            continue
        L = len(rs[0]["psi"])
        cols = [_mean(r["psi"][0] for r in rs), _mean(statistics.fmean(r["psi"][1:L - 2]) for r in rs),
                *(_mean(r["psi"][k] for r in rs) for k in (L - 3, L - 2, L - 1)), _mean(_psi_post(r) for r in rs)]
        lines.append(f"| {label} | {L} | " + " | ".join(fmt(c) for c in cols) + " |")
    return lines


def criterion_rows(data: dict, design: Design, out: Path) -> list[str]:
    """How many seeds of each from-scratch group meet the screening criterion under each arm, read from each
    run's own logged rows as the screening reads them."""
    lines = ["| seeds | λ = 0 | placebo | paper | jump |", "|---|---:|---:|---:|---:|"]
    g = groups(data)
    for name, stage in (("E3 growing", "arms"), ("control (non-growing)", "control")):
        cells = []
        for rel in ("screen", f"{stage}/placebo", f"{stage}/paper", f"{stage}/jump"):
            readings = [screen_reading(out / rel / f"seed_{s}") for s in g[stage]]
            readings = [r for r in readings if r is not None]
            cells.append(f"{sum(grew(r, design.threshold) for r in readings)} of {len(readings)}" if readings else "-")
        if g[stage]:
            lines.append(f"| {name} ({len(g[stage])}) | " + " | ".join(cells) + " |")
    return lines


def descriptive_section(data: dict, design: Design, out: Path) -> list[str]:
    return ["## Every cell on both streams (descriptive, not tested)", "",
            "Means over each cell's evaluated seeds, from `llama-jreg eval --unit-gain-lens` (pre-norm: h_L before "
            "the final norm; post-norm: norm(h_L) with its learned gain). ζ_L = 100·max(0, D) and ζ_{L−1} = "
            "100·Σ_{k=L−1..L} max(0, Ψ_k − Ψ_{k−1}) are the hinges, shown for reference. 'lens mid': the mean "
            "logit-lens loss of h_2..h_{L−2}; 'saving ≤ L−2': the early-exit saving over exits at h ≤ L−2.", "",
            *cell_rows(data), "", "Ψ layer by layer (pre-norm; the last column post-norm):", "", *psi_rows(data), "",
            "Seeds that meet the screening criterion (D(end) ≥ "
            f"{design.threshold:g} and D(end) > D(first), from each run's own logged rows) under each arm:", "",
            *criterion_rows(data, design, out), ""]
