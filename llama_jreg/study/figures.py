"""The study report's figures (matplotlib, imported when a figure is drawn): ζ_L over training, Ψ per layer,
the logit lens per layer and metrics against λ; :func:`make_plots` draws every figure that has data."""

from __future__ import annotations

from pathlib import Path

from llama_jreg.analysis.jump import plot_psi
from llama_jreg.plots import pick_rows, save_figure
from llama_jreg.study.findings import STAGE
from llama_jreg.study.results import cells, complete, stat_list
from llama_jreg.study.stats import stat
from llama_jreg.study.tables import base_runs


def _plt():
    import matplotlib  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator  # deferred: ~0.4 s to import (scripts/bench_imports.py)

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_zeta_over_tokens(results: list[dict], experiment: str, path: Path) -> Path | None:
    """Validation zeta_L against tokens seen, one colour per cell, one line per seed."""
    rs = [r for r in results if r["experiment"] == experiment and r["history"]]
    if not rs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = list(cells(rs))
    for i, key in enumerate(keys):
        for j, r in enumerate(cells(rs)[key]):
            h = [p for p in r["history"] if p.get("val_zeta_L") is not None]
            ax.plot([p["tokens"] for p in h], [p["val_zeta_L"] for p in h], color=f"C{i % 10}",
                    ls=["-", "--", ":", "-."][j % 4], label=f"{key[1]} λ={key[2]:g}" if j == 0 else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(r"validation $\zeta_L$")
    ax.set_title(f"{experiment}: final-layer jump during training (one line per seed)")
    return save_figure(fig, ax, path, legend_fontsize=8)


def plot_e2_zeta(results: list[dict], experiment: str, path: Path) -> Path | None:
    """E2: zeta_L of the lambda = 0 runs against tokens, on the training batch and the fixed validation batch."""
    base = base_runs(results, experiment)
    if not base:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, r in enumerate(base):
        h = r["history"]
        ax.plot([p["tokens"] for p in h], [p["val_zeta_L"] for p in h], color=f"C{j}", marker=".",
                label=f"seed {r['seed']}, validation batch")
        ax.plot([p["tokens"] for p in h], [p["zeta_L"] for p in h], color=f"C{j}", ls="--", alpha=0.7,
                label=f"seed {r['seed']}, training batch")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(r"$\zeta_L$")
    ax.set_title(f"{experiment}, λ = 0: the final-layer jump during training")
    return save_figure(fig, ax, path, legend_fontsize=8)


def plot_psi_over_training(results: list[dict], experiment: str, path: Path) -> Path | None:
    """E2: Psi per layer of the first lambda = 0 run at up to 6 points of training, training batch (left) and
    fixed validation batch (right)."""
    base = base_runs(results, experiment)
    if not base:
        return None
    r = base[0]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    picked = pick_rows([p for p in r["history"] if p.get("val_psi") and p.get("psi")], None, default_n=6)
    cmap = plt.get_cmap("viridis")
    for ax, key, name in ((axes[0], "psi", "training batch"), (axes[1], "val_psi", "validation batch")):
        for i, p in enumerate(picked):
            ax.plot(range(1, len(p[key]) + 1), p[key], marker="o", ms=3, color=cmap(i / max(1, len(picked) - 1)),
                    label=f"{p['tokens']:,} tokens")
        ax.set_xlabel("layer l")
        _integer_x(ax)
        ax.set_title(f"{experiment}, λ = 0, seed {r['seed']}: {name}", fontsize=9)
    axes[0].set_ylabel(r"$\Psi_l$")
    axes[0].grid(alpha=0.3)
    return save_figure(fig, axes[1], path, legend_fontsize=8)


def plot_profiles(results: list[dict], experiment: str, key: str, ylabel: str, path: Path,
                  start: int = 1, skip: int = 0) -> Path | None:
    """A list-valued metric (final Psi, lens loss) per layer, mean over seeds, one line per cell; the list's
    element i is layer ``start + i``, the first ``skip`` elements are left out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for i, ((exp, cell, w), rs) in enumerate(cells([r for r in results if r["experiment"] == experiment]).items()):
        v = stat_list(rs, key)
        if v:
            ax.plot(range(start + skip, start + len(v)), v[skip:], marker="o", ms=3, color=f"C{i % 10}",
                    label=f"{cell} λ={w:g} (n={len(rs)})")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("layer l" if start else "layer l (0 = embeddings)")
    _integer_x(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{experiment}: {ylabel}, mean over seeds")
    return save_figure(fig, ax, path, legend_fontsize=8)


def plot_vs_lambda(results: list[dict], key: str, ylabel: str, path: Path) -> Path | None:
    """A scalar metric against lambda (jump mode), mean and seed range per experiment (symlog x axis)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ws_all = []
    drawn = 0
    for i, exp in enumerate(sorted({r["experiment"] for r in results})):
        pts = [(w, stat(rs, key)) for (e, cell, w), rs in cells(results).items() if e == exp and cell == "jump"]
        pts = [(w, s) for w, s in pts if s is not None]
        if not pts:
            continue
        ws = [w for w, _ in pts]
        ws_all += ws
        ax.errorbar(ws, [s.mean for _, s in pts], yerr=[[s.mean - s.lo for _, s in pts], [s.hi - s.mean for _, s in pts]],
                    marker="o", capsize=3, color=f"C{i}", label=exp)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("symlog", linthresh=min([w for w in ws_all if w > 0] or [1e-2]))
    ax.set_xlabel("jreg.weight λ (jreg=jump)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} vs λ (mean, bars: seed range)")
    return save_figure(fig, ax, path, legend_fontsize=8)


def make_plots(results: list[dict], e1: list[dict], fig_dir: Path) -> dict[str, Path]:
    """Every figure of the report, by name; figures with no data are left out."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    results = complete(results)
    figs: dict[str, Path | None] = {}
    for m in e1:
        figs[f"e1_{m['slug']}"] = plot_psi(m, fig_dir / f"e1_psi_{m['slug']}.png", m["name"])
    for exp in sorted({r["experiment"] for r in results}):
        figs[f"zeta_{exp}"] = plot_zeta_over_tokens(results, exp, fig_dir / f"zeta_L_over_tokens_{exp}.png")
        if STAGE.get(exp) != "E4":  # E2 (emergence from scratch) only: continued runs start from a trained model
            figs[f"e2_zeta_{exp}"] = plot_e2_zeta(results, exp, fig_dir / f"e2_zeta_L_{exp}.png")
            figs[f"psi_train_{exp}"] = plot_psi_over_training(results, exp,
                                                              fig_dir / f"psi_during_training_{exp}.png")
        figs[f"psi_final_{exp}"] = plot_profiles(results, exp, "val_psi", r"final validation $\Psi_l$",
                                                 fig_dir / f"psi_final_{exp}.png")
        figs[f"lens_{exp}"] = plot_profiles(results, exp, "lens_loss", "logit-lens loss (h_1..h_L)",
                                            fig_dir / f"lens_{exp}.png", start=0, skip=1)
        figs[f"ind_lens_{exp}"] = plot_profiles(results, exp, "induction_lens_accuracy",
                                                "logit-lens induction accuracy",
                                                fig_dir / f"induction_lens_{exp}.png", start=0)
    figs["val_loss"] = plot_vs_lambda(results, "val_loss", "validation loss", fig_dir / "val_loss_vs_lambda.png")
    figs["val_zeta"] = plot_vs_lambda(results, "val_zeta_L", r"validation $\zeta_L$", fig_dir / "val_zeta_L_vs_lambda.png")
    figs["induction"] = plot_vs_lambda(results, "induction_accuracy", "induction accuracy",
                                       fig_dir / "induction_accuracy_vs_lambda.png")
    return {k: v for k, v in figs.items() if v is not None}
