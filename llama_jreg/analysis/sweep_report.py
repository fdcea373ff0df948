"""`llama-jreg sweep-report SWEEP_DIR`: one Markdown row per run of a JREG sweep, plus plots.

A run is any directory under SWEEP_DIR holding ``config.yaml`` and ``metrics.jsonl`` (what `llama-jreg train
-m ...` writes). Columns: jreg.weight, final train loss, validation loss, zeta_L, tokens, the last accuracy of each task
the runs evaluated (``tasks=[...]``: one ``NAME acc`` column per task), then mode, seed and run name. Plots, in ``SWEEP_DIR/plots/``: validation loss vs lambda, zeta_L vs lambda, Psi per layer for each
lambda. The table is also written to ``SWEEP_DIR/report.md``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from llama_jreg import UserError
from llama_jreg.plots import save_figure
from llama_jreg.rows import EvalRow, JumpRow, TaskRow, TrainRow, read_metrics, rows_of, typed_rows


@dataclass
class RunResult:
    name: str
    weight: float
    mode: str
    seed: int
    train_loss: float | None
    val_loss: float | None
    zeta_L: float | None
    tokens: int | None
    psi: list[float] | None
    tasks: dict[str, float | None] = field(default_factory=dict)  # task name -> its last accuracy


def _last(rows: list, key: str):
    """The last non-null ``key`` among typed rows."""
    for r in reversed(rows):
        if getattr(r, key) is not None:
            return getattr(r, key)
    return None


def collect(sweep_dir: Path) -> list[RunResult]:
    if not sweep_dir.exists():
        raise UserError(f"sweep dir {sweep_dir} does not exist; pass the hydra.sweep.dir of a `train -m` run")
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is a file, not a sweep dir; pass the directory given as hydra.sweep.dir")
    results = []
    for cfg_path in sorted(sweep_dir.glob("*/config.yaml")):
        run = cfg_path.parent
        metrics = run / "metrics.jsonl"
        if not metrics.exists():
            continue
        cfg = OmegaConf.load(cfg_path)
        rows = read_metrics(metrics)
        results.append(RunResult(
            name=run.name,
            weight=float(cfg.jreg.weight),
            mode=str(cfg.jreg.mode),
            seed=int(cfg.seed),
            train_loss=_last(rows_of(rows, TrainRow), "loss"),
            val_loss=_last(rows_of(rows, EvalRow), "val_loss"),
            zeta_L=_last(rows_of(rows, JumpRow), "zeta_L"),
            tokens=_last(typed_rows(rows), "tokens"),
            psi=_last(rows_of(rows, JumpRow), "psi"),
            tasks={r.task: r.accuracy for r in rows_of(rows, TaskRow) if isinstance(r.task, str)},
        ))
    if not results:
        raise UserError(f"no runs (config.yaml + metrics.jsonl) under {sweep_dir}; is this a sweep dir?")
    return sorted(results, key=lambda r: (r.weight, r.mode, r.seed, r.name))


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def markdown_table(results: list[RunResult]) -> str:
    tasks = sorted({t for r in results for t in r.tasks})
    lines = ["| jreg.weight | final train loss | val loss | zeta_L | tokens | "
             + "".join(f"{t} acc | " for t in tasks) + "mode | seed | run |",
             "|---:|---:|---:|---:|---:|" + "---:|" * len(tasks) + "---|---:|---|"]
    for r in results:
        lines.append(f"| {r.weight:g} | {_fmt(r.train_loss)} | {_fmt(r.val_loss)} | {_fmt(r.zeta_L, 3)} | "
                     f"{_fmt(r.tokens)} | " + "".join(f"{_fmt(r.tasks.get(t))} | " for t in tasks)
                     + f"{r.mode} | {r.seed} | {r.name} |")
    return "\n".join(lines)


def make_plots(results: list[RunResult], out_dir: Path) -> list[Path]:
    import matplotlib  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # lambda = 0 cannot sit on a log axis; use symlog so the baseline is shown
    for key, label, fname in (("val_loss", "validation loss", "val_loss_vs_lambda.png"),
                              ("zeta_L", "zeta_L (jump rate, %)", "zeta_L_vs_lambda.png")):
        pts = [(r.weight, getattr(r, key)) for r in results if getattr(r, key) is not None]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-")
        ax.set_xscale("symlog", linthresh=min([w for w, _ in pts if w > 0] or [1e-3]))
        ax.set_xlabel("jreg.weight (lambda)")
        ax.set_ylabel(label)
        paths.append(save_figure(fig, ax, out_dir / fname, legend=False))
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        if r.psi:
            ax.plot(range(1, len(r.psi) + 1), r.psi, "o-", label=f"lambda={r.weight:g} ({r.name})")
    ax.set_xlabel("layer")
    ax.set_ylabel("Psi (displacement)")
    paths.append(save_figure(fig, ax, out_dir / "psi_per_layer.png", legend_fontsize=7))
    return paths


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg sweep-report", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path, help="the hydra.sweep.dir of a `llama-jreg train -m ...` run")
    p.add_argument("--no-plots", action="store_true", help="only print the table")
    args = p.parse_args(argv)
    results = collect(args.sweep_dir)
    table = markdown_table(results)
    print(table)
    (args.sweep_dir / "report.md").write_text(table + "\n")
    if not args.no_plots:
        for path in make_plots(results, args.sweep_dir / "plots"):
            print(f"plot: {path}")
    return 0
