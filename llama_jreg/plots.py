"""`llama-jreg plot RUN_DIR`: plots of the jump over training, from ``RUN_DIR/metrics.jsonl``.

Writes into ``RUN_DIR/plots/``:

* ``zeta_L.png``      zeta_L over optimizer steps (train batches; validation too when logged as val_zeta_L)
* ``psi_layers.png``  Psi per layer at a few steps (``--steps 100,500``; default: up to 5 evenly spaced jump
                      rows), the post-final-norm Psi_L marked when logged
* ``loss.png``        training loss (and lm_loss / jreg_loss when present), when training rows exist
* ``tasks.png``       task accuracy over steps, one line per task, when the run evaluated tasks (``kind=task``)

The rows are read typed (``llama_jreg.rows``); jump rows are drawn when they carry ``psi`` (a list, one
value per layer) and ``zeta_L``; a torn last line (one being written while training runs) is skipped. ``plot_run(run_dir, steps=None)`` does the same from
Python and returns the written paths.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from llama_jreg import UserError, help_text
from llama_jreg.rows import EvalRow, JumpRow, TaskRow, TrainRow, latest_by_step, read_metrics, rows_of


def save_figure(fig, ax, path: Path, legend: bool = True, legend_fontsize=None) -> Path:
    """Grid, legend, tight layout, write ``path`` (PNG) and close the figure."""
    import matplotlib.pyplot as plt  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pick_rows(jump_rows: list, steps: list[int] | None, default_n: int = 5, step_of=lambda r: r["step"]) -> list:
    """The jump rows to draw: the one nearest each of ``steps``, else up to ``default_n`` evenly spaced ones.
    ``step_of`` reads a row's step (default: a dict's ``step``)."""
    if not jump_rows:
        return []
    if steps:  # the jump row nearest each requested step
        picked = {}
        for s in steps:
            row = min(jump_rows, key=lambda r: (abs(step_of(r) - s), step_of(r)))
            picked[step_of(row)] = row
        return [picked[k] for k in sorted(picked)]
    n = min(default_n, len(jump_rows))
    if n == 1:
        return [jump_rows[-1]]
    idx = sorted({round(i * (len(jump_rows) - 1) / (n - 1)) for i in range(n)})
    return [jump_rows[i] for i in idx]


def plot_run(run_dir: str | Path, steps: list[int] | None = None) -> list[Path]:
    """Write the plots for ``run_dir`` (see the module docstring); returns their paths."""
    import matplotlib  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    mpath = run / "metrics.jsonl"
    if not mpath.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; is it a run directory (run.dir of a training run)?")
    rows = read_metrics(mpath)
    # a resumed run may log a step twice: keep the last row of each step
    jump_rows = latest_by_step([r for r in rows_of(rows, JumpRow) if _num(r.step) and r.psi and _num(r.zeta_L)])
    train_rows = latest_by_step([r for r in rows_of(rows, TrainRow) if _num(r.step) and _num(r.loss)])
    eval_rows = [r for r in rows_of(rows, EvalRow) if _num(r.step) and _num(r.val_loss)]
    task_rows = [r for r in rows_of(rows, TaskRow) if _num(r.step) and isinstance(r.task, str) and _num(r.accuracy)]
    if not jump_rows and not train_rows and not task_rows:
        raise UserError(f"{mpath} has no jump rows (psi, zeta_L), no training rows (loss) and no task rows to plot")
    out_dir = run / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    if jump_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([r.step for r in jump_rows], [r.zeta_L for r in jump_rows], marker=".", label="train")
        val = [r for r in jump_rows if _num(r.val_zeta_L)]
        if val:
            ax.plot([r.step for r in val], [r.val_zeta_L for r in val], marker=".", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel(r"$\zeta_L = 100\,\max(0, \Psi_L - \Psi_{L-1})$")
        ax.set_title(f"{run.name}: final-layer jump")
        written.append(save_figure(fig, ax, out_dir / "zeta_L.png"))

        picked = pick_rows(jump_rows, steps, step_of=lambda r: r.step)
        fig, ax = plt.subplots(figsize=(7, 4))
        cmap = plt.get_cmap("viridis")
        for i, r in enumerate(picked):
            color = cmap(i / max(1, len(picked) - 1))
            layers = list(range(1, len(r.psi) + 1))
            ax.plot(layers, r.psi, marker="o", ms=3, color=color, label=f"step {r.step}")
            if _num(r.psi_post_norm_L):
                ax.scatter([layers[-1]], [r.psi_post_norm_L], marker="x", color=color)
        ax.set_xlabel("layer l")
        ax.set_ylabel(r"$\Psi_l$")
        ax.set_title(f"{run.name}: displacement per layer (x: post final norm)")
        written.append(save_figure(fig, ax, out_dir / "psi_layers.png", legend_fontsize=8))

    if train_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in ("loss", "lm_loss", "jreg_loss"):
            pts = [(r.step, getattr(r, key)) for r in train_rows if _num(getattr(r, key))]
            if pts and not (key == "lm_loss" and all(r.lm_loss == r.loss for r in train_rows)):
                ax.plot(*zip(*pts), label=key)
        val = [(r.step, r.val_loss) for r in eval_rows]
        if val:
            ax.plot(*zip(*sorted(val)), marker=".", label="val_loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{run.name}: loss")
        written.append(save_figure(fig, ax, out_dir / "loss.png"))

    if task_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in sorted({r.task for r in task_rows}):
            pts = sorted({r.step: r.accuracy for r in task_rows if r.task == name}.items())
            ax.plot(*zip(*pts), marker=".", label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{run.name}: tasks")
        written.append(save_figure(fig, ax, out_dir / "tasks.png"))
    return written


def _parse_steps(s: str | None) -> list[int] | None:
    if not s:
        return None
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--steps {s!r}: expected comma-separated integers, e.g. --steps 100,500") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llama-jreg plot", description="zeta_L over training and Psi curves",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_text(__doc__))
    p.add_argument("run_dir", help="a run directory (with metrics.jsonl)")
    p.add_argument("--steps", help="comma-separated steps for the Psi-per-layer plot (nearest logged step)")
    args = p.parse_args(argv)
    for path in plot_run(args.run_dir, _parse_steps(args.steps)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
