"""The study report's tables: the summary, the headline table per run, E1, E2 per step and
per seed, the logit lens per layer and its change against λ = 0, and the code the runs came from."""

from __future__ import annotations

import statistics

from llama_jreg.study.findings import _derived, _lens_mean, exit_is_mechanical, penalised_streams, readings
from llama_jreg.study.results import by_seed, cells, complete, stat_list
from llama_jreg.study.stats import Stat, _f, _ms, compare, stat


def headline_table(results: list[dict]) -> str:
    """lambda x seed: val loss, val zeta_L, Psi_L, induction accuracy, then mean ± sd per cell."""
    keys = [("val_loss", 4), ("val_zeta_L", 3), ("psi_L", 4), ("lens_h1_loss", 3), ("lens_mid_loss", 3),
            ("early_exit_saving", 3), ("induction_accuracy", 3)]
    keys += [(f"task_{n}_accuracy", 3) for n in task_names(results)]
    lines = ["| experiment | JREG | λ | seed | val loss | val ζ_L | Ψ_L (val) | lens loss h1 | lens loss h2..h(L-1) | "
             "early-exit saving | induction acc. |" + "".join(f" task: {n} |" for n in task_names(results)),
             "|---|---|---:|---|" + "---:|" * len(keys)]
    for (exp, cell, w), rs in cells(results).items():
        for r in rs:
            lines.append(f"| {exp} | {cell} | {w:g} | {r['seed']}{'' if r['complete'] else ' (running)'} | "
                         + " | ".join(_f(r.get(k), d) for k, d in keys) + " |")
        done = complete(rs)
        if len(done) > 1:
            lines.append(f"| {exp} | {cell} | {w:g} | **mean ± sd** | "
                         + " | ".join(_ms_short(stat(done, k), d) for k, d in keys) + " |")
            lines.append(f"| {exp} | {cell} | {w:g} | 95 % CI (t, {len(done) - 1} df) | "
                         + " | ".join(_ci(stat(done, k), d) for k, d in keys) + " |")
    return "\n".join(lines)


def task_names(results: list[dict]) -> list[str]:
    """The in-training task evaluations any run logged (``kind=task`` rows), sorted."""
    return sorted({n for r in results for n in r.get("tasks", [])})


def _ci(s: Stat | None, digits: int) -> str:
    ci = s.ci95 if s is not None else None
    return "-" if ci is None else f"[{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def summary_table(results: list[dict]) -> str:
    """One row per cell (complete runs only): mean ± sd over the seeds of the final validation loss (and its
    change against the experiment's λ = 0 cell), the validation ζ_L at the first measurement and at the end,
    Ψ_L and, for the induction runs, the induction accuracy. It is also written alone to ``headline.md``."""
    tasks = task_names(complete(results))
    lines = ["| experiment | JREG | λ | seeds | val loss | vs λ = 0 | val ζ_L, first measurement | val ζ_L, end | "
             "Ψ_L (val) | induction acc. |" + "".join(f" task: {n} |" for n in tasks),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(tasks)]
    by_cell = cells(complete(results))
    loss_tests = {r.key[:3]: r.test for r in readings(results) if r.claim == "C4"}
    for (exp, cell, w), rs in by_cell.items():
        base = stat(by_cell.get((exp, "jump", 0.0), []), "val_loss")
        loss = stat(rs, "val_loss")
        rel = (f"{100 * (loss.mean - base.mean) / base.mean:+.2f} %" if loss and base and not (cell == "jump" and w == 0)
               else "-")
        if (exp, cell, w) in loss_tests:
            rel += f" ({_TESTED[loss_tests[exp, cell, w].verdict]})"
        first = Stat([r["history"][0]["val_zeta_L"] for r in rs if r["history"]
                      and isinstance(r["history"][0].get("val_zeta_L"), (int, float))])
        lines.append(f"| {exp} | {cell} | {w:g} | {len(rs)} | {_ms(loss, 4, n=False)} | {rel} | "
                     f"{_ms(first if first.n else None, 3, n=False)} (step {rs[0]['history'][0]['step'] if rs[0]['history'] else '-'}) | "
                     f"{_ms(stat(rs, 'val_zeta_L'), 3, n=False)} | {_ms(stat(rs, 'psi_L'), 4, n=False)} | "
                     f"{_ms(stat(rs, 'induction_accuracy'), 3, n=False)} |"
                     + "".join(f" {_ms(stat(rs, f'task_{n}_accuracy'), 3, n=False)} |" for n in tasks))
    return "\n".join(lines)


_TESTED = {"higher": "higher", "lower": "lower", "noise": "not resolved", "one seed": "one seed",
           "no spread": "no spread", "identical": "identical"}


def _ms_short(s: Stat | None, digits: int) -> str:
    if s is None:
        return "-"
    return f"**{_f(s.mean, digits)} ± {_f(s.sd, digits)}**" if s.sd is not None else f"**{_f(s.mean, digits)}**"


def e1_table(e1: list[dict]) -> str:
    lines = ["| model | layers | tokens | ζ_L | ζ_L post-norm | Ψ_L | Ψ_L post-norm | max Ψ at layer | Ψ per layer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for m in e1:
        lines.append(f"| {m['name']} | {len(m['psi'])} | {m['tokens']:,} | {_f(m['zeta_L'], 2)} | "
                     f"{_f(m['zeta_L_post_norm'], 2)} | {_f(m['psi'][-1], 4)} | {_f(m['psi_post_norm_L'], 4)} | "
                     f"{m['argmax_layer']} | {' '.join(f'{v:.3f}' for v in m['psi'])} |")
    return "\n".join(lines)


def lens_table(results: list[dict]) -> str:
    """Mean logit-lens loss per layer (h_0 = embeddings .. h_L) per cell."""
    rows = [(k, stat_list(rs, "lens_loss")) for k, rs in cells(complete(results)).items()]
    rows = [(k, v) for k, v in rows if v]
    if not rows:
        return ""
    n = max(len(v) for _, v in rows)
    head = " | ".join("emb" if i == 0 else f"h{i}" for i in range(n))
    lines = [f"| experiment | JREG | λ | {head} |", "|---|---|---:|" + "---:|" * n]
    for (exp, cell, w), v in rows:
        lines.append(f"| {exp} | {cell} | {w:g} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    return "\n".join(lines)


def lens_change_table(results: list[dict]) -> str:
    """Per cell against the λ = 0 cell of its experiment: the change of the logit-lens loss of each
    intermediate layer h_1..h_{L-1} and of the oracle early-exit saving, the mean of the per-seed differences
    (of the means where fewer than 2 seeds are common). An improvement (lower loss) of a layer the cell's
    penalty acts on directly is marked (m): mechanical (:func:`penalised_streams`)."""
    by_cell = cells(complete(results))
    rows = []
    for (exp, cell, w), rs in by_cell.items():
        base = by_cell.get((exp, "jump", 0.0))
        if not base or (cell == "jump" and w == 0.0):
            continue
        a, b = stat_list(rs, "lens_loss"), stat_list(base, "lens_loss")
        if not a or not b or len(a) != len(b) or len(a) < 3:
            continue
        acted = penalised_streams(rs[0])
        cols = []
        for k in range(1, len(a) - 1):
            t = compare(by_seed(_derived(rs, _lens_mean([k])), "v"), by_seed(_derived(base, _lens_mean([k])), "v"))
            d = t.diff if t is not None else a[k] - b[k]
            cols.append(f"{d:+.3f}" + (" (m)" if k in acted and d < 0 else ""))
        t = compare(by_seed(rs, "early_exit_saving"), by_seed(base, "early_exit_saving"))
        mech = " (m)" if t is not None and t.diff > 0 and exit_is_mechanical(rs[0]) else ""
        cols.append(f"{t.diff:+.3f}{mech}" if t is not None else "-")
        rows.append((exp, cell, w, cols))
    if not rows:
        return ""
    n = max(len(c) for *_, c in rows) - 1
    lines = ["| experiment | JREG | λ | " + " | ".join(f"h{i}" for i in range(1, n + 1)) + " | early-exit saving |",
             "|---|---|---:|" + "---:|" * (n + 1)]
    for exp, cell, w, cols in rows:
        lines.append(f"| {exp} | {cell} | {w:g} | " + " | ".join(cols[:-1] + ["-"] * (n + 1 - len(cols)) + cols[-1:])
                     + " |")
    return "\n".join(lines)


def provenance_summary(results: list[dict]) -> str:
    """The distinct commits the runs came from (``provenance.json``, every start of each run), with the number
    of runs per commit; runs without the file are counted apart."""
    count: dict[str, int] = {}
    unknown = 0
    for r in results:
        starts = r.get("provenance") or []
        if not starts:
            unknown += 1
        for label in sorted({"not a git checkout" if p.get("commit") is None else
                             p["commit"][:12] + (" (dirty: uncommitted changes)" if p.get("dirty") else
                                                 " (clean)" if p.get("dirty") is False else "")
                             for p in starts}):
            count[label] = count.get(label, 0) + 1
    parts = [f"{label}: {n} run(s)" for label, n in sorted(count.items())]
    if unknown:
        parts.append(f"{unknown} run(s) without provenance.json")
    return "; ".join(parts) or "-"


def base_runs(results: list[dict], experiment: str) -> list[dict]:
    return sorted((r for r in complete(results) if r["experiment"] == experiment and r["cell"] == "jump"
                   and r["jreg.weight"] == 0 and r["history"]), key=lambda r: r["seed"])


def e2_table(results: list[dict], experiment: str) -> str:
    """E2: per logged step, the lambda = 0 runs' zeta_L (training / validation batch) and the validation Psi of
    the last two layers, mean over seeds."""
    base = base_runs(results, experiment)
    if not base:
        return ""
    steps = sorted(set.intersection(*[{p["step"] for p in r["history"]} for r in base]))
    lines = ["| step | tokens | ζ_L (train batch) | ζ_L (validation) | Ψ_L-1 (validation) | Ψ_L (validation) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for st in steps:
        pts = [next(p for p in r["history"] if p["step"] == st) for r in base]
        mean = lambda f: statistics.fmean(f(p) for p in pts)  # noqa: E731
        lines.append(f"| {st} | {pts[0]['tokens']:,} | {mean(lambda p: p['zeta_L']):.3f} | "
                     f"{mean(lambda p: p['val_zeta_L']):.3f} | {mean(lambda p: p['val_psi'][-2]):.4f} | "
                     f"{mean(lambda p: p['val_psi'][-1]):.4f} |")
    return "\n".join(lines)


def e2_seed_table(results: list[dict], experiment: str) -> str:
    """E2 per seed: the validation zeta_L of each lambda = 0 run at each logged step (a mean over seeds can hide
    a jump that grows in some seeds and not in others), and how many seeds ended above their first value."""
    base = sorted(base_runs(results, experiment), key=lambda r: r["seed"])
    if len(base) < 2:
        return ""
    steps = sorted(set.intersection(*[{p["step"] for p in r["history"]} for r in base]))
    if not steps:
        return ""
    at = {(r["seed"], p["step"]): p["val_zeta_L"] for r in base for p in r["history"]}
    if not any(at[r["seed"], st] for r in base for st in steps):
        return f"Validation ζ_L was 0 at every measurement of all {len(base)} seeds."
    lines = ["| step | " + " | ".join(f"seed {r['seed']}" for r in base) + " |", "|---:|" + "---:|" * len(base)]
    lines += [f"| {st} | " + " | ".join(f"{at[r['seed'], st]:.3f}" for r in base) + " |" for st in steps]
    grew = sum(at[r["seed"], steps[-1]] > at[r["seed"], steps[0]] for r in base)
    return "\n".join(lines) + (f"\n\nValidation ζ_L ended above its first measurement in {grew} of {len(base)} "
                               "seeds.")
