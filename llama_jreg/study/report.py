"""The study's Markdown report: :func:`render_report` (header, findings, tables, figures, how it was run), and
:func:`publish`, the report stage of ``scripts/reproduce.py`` (``results.json``, ``report.md``,
``headline.md``, the figures and ``--docs``)."""

from __future__ import annotations

import os
import shlex
import shutil
import time
from pathlib import Path

from llama_jreg.study.findings import CLAIMS, STAGE, findings, readings, testing_summary
from llama_jreg.study.plan import COMMANDS, Plan
from llama_jreg.study.run import show, sweep_command, wall_time
from llama_jreg.study.stats import COMPARE_RULE
from llama_jreg.study.tables import (
    base_runs,
    e1_table,
    e2_seed_table,
    e2_table,
    headline_table,
    lens_change_table,
    lens_table,
    provenance_summary,
    summary_table,
)


def machine() -> str:
    """CPU model name and core count (``/proc/cpuinfo``), plus the CUDA device when there is one."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{name}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the description only
        pass
    return desc


TAGS = (("supports", "What our numbers support"), ("contradicts", "What our numbers contradict"),
        ("mechanical", "What the penalty does by construction (better readings of layers it acts on directly, earlier exits "
                        "where it acts on every layer)"),
        ("identical", "Where the compared runs gave identical numbers"),
        ("noise", "Where seed noise is too large to tell (or no test could be made)"))


def _header(meta: dict, results: list[dict]) -> list[str]:
    """The title and what made the report: command, machine, date, seeds, wall time, code, notes."""
    seeds = sorted({r["seed"] for r in results})
    out = [f"# {meta['title']}", "",
           f"* **Command**: `{meta['command']}`" + (f" (this report written by `{meta['argv']}`)" if meta.get("argv") else ""),
           f"* **Machine**: {meta['machine']}",
           f"* **Date**: {meta['date']}",
           f"* **Seeds**: {', '.join(map(str, seeds)) or '-'}; {len(results)} runs "
           f"({sum(1 for r in results if r['complete'])} complete)",
           f"* **Wall time**: {meta['wall']}",
           f"* **Code** (the runs' `provenance.json`): {provenance_summary(results)}", ""]
    out += [f"* {n}" for n in meta.get("notes", [])]
    return out


def _findings_section(results: list[dict], e1: list[dict]) -> list[str]:
    """The claims, the testing rule and every finding, grouped by tag (:data:`TAGS`)."""
    out = ["", "## Findings (computed from the numbers below)", "", "The claims checked:", ""]
    out += [f"* **{k}**: {v}" for k, v in CLAIMS.items()]
    out += ["", COMPARE_RULE, "", testing_summary(readings(results)), "",
            "A better logit-lens reading of a layer is *mechanical* when the cell's penalty is a direct function of "
            "that layer's stream h_k, i.e. contains Ψ_k or Ψ_(k+1) (`final`: Ψ_L, so h_(L-1); `jump` with l0: "
            "Ψ_(l0-1)..Ψ_L, every layer at the default l0 = 2; `weighted`: every Ψ_l with weight > 0): the penalty "
            "pulls such a stream towards its neighbour by construction, so its better reading does not support C5. "
            "For the same reason a larger oracle early-exit saving is mechanical when the penalty acts on every "
            "layer h_1..h_(L-1) an exit can stop at (`jump` at l0 = 2; `final` on a 2-layer model, whose only "
            "early exit is h_1 = h_(L-1)).",
            ""]
    found = findings(results, e1)
    for tag, title in TAGS:
        lines = [s for t, s in found if t == tag]
        out += [f"### {title}", ""] + ([f"* {s}" for s in lines] or ["* nothing"]) + [""]
    return out


def _tables_section(results: list[dict]) -> list[str]:
    """The summary and the headline table."""
    out = ["## Summary", "",
            "Per cell, mean ± sample s.d. over the seeds of the complete runs: final validation loss and its "
            "change against the λ = 0 cell of the same experiment, validation ζ_L at the first measurement "
            "(step 0 for continued pre-training: the source model) and at the end, final Ψ_L on the validation "
            "batch, the induction accuracy of the logit-lens evaluation and, where the runs logged them, the "
            "accuracies of the in-training task evaluations (`task: NAME`, last evaluation). In brackets after "
            "the loss change: the verdict of its test (C4, Holm-adjusted; see the findings). The 95 % "
            "confidence intervals are in the headline table.", "", summary_table(results), ""]
    out += ["## Headline table", "",
            "Final validation loss, validation ζ_L and Ψ_L (the fixed validation batch, last measurement), the "
            "logit-lens loss of layer 1 and the mean of the middle layers 2..L-1, the oracle early-exit "
            "saving (fraction of blocks), the induction accuracy (2nd+ trigger outputs) and the task "
            "accuracies, per run and, over the seeds of the complete runs, as mean ± sample s.d. and the 95 % "
            "confidence interval of the mean from the t distribution with n − 1 degrees of freedom (a run "
            "still short of its last step is marked running and left out of every mean, comparison and "
            "figure).", "",
            headline_table(results), ""]
    return out


def _e1_section(e1: list[dict], img) -> list[str]:
    """E1: the jump of the open-weight models."""
    out = ["## E1: the jump in open-weight models", "",
            "`llama-jreg jump MODEL --text TEXT`: Ψ_l = (1 − cos(h_{l−1}, h_l))/2 averaged over the tokens, "
            "ζ_L = 100·max(0, Ψ_L − Ψ_{L−1}); post-norm: Ψ_L measured after the final norm.", "",
            e1_table(e1), ""]
    out += [img(f"e1_{m['slug']}", f"Psi per layer of {m['name']}") for m in e1]
    return out


def _experiment_section(exp: str, rs: list[dict], img) -> list[str]:
    """One experiment's runs: E2 (from scratch) and E3, or E4 (continued pre-training)."""
    title = "continued pre-training (E4)" if STAGE.get(exp) == "E4" else "emergence (E2) and the λ sweep (E3)"
    sweeps = ", ".join(f"`{n}/`" for n in sorted({Path(r["run_dir"]).parent.name for r in rs}))
    out = [f"## {exp}: {title}", "",
            f"{len(rs)} runs, {rs[0]['tokens']:,} tokens each at the end ({rs[0]['max_steps']} steps); run "
            f"dirs in {sweeps}.", ""]
    t = e2_table(rs, exp) if STAGE.get(exp) != "E4" else ""
    if t:
        out += [f"E2, λ = 0 (mean over {len(base_runs(rs, exp))} seed(s)): the jump against tokens seen.", "",
                img(f"e2_zeta_{exp}", f"E2 zeta_L, {exp}"), img(f"psi_train_{exp}", f"Psi during training, {exp}"),
                t, ""]
        t = e2_seed_table(rs, exp)
        if t:
            out += ([t, ""] if t.startswith("Validation") else ["The validation ζ_L of each λ = 0 seed:", "", t, ""])
        out += ["E3: every cell.", ""]
    out += [img(f"zeta_{exp}", f"zeta_L over tokens, {exp}"),
            img(f"psi_final_{exp}", f"final Psi per layer, {exp}"), img(f"lens_{exp}", f"logit lens, {exp}"),
            img(f"ind_lens_{exp}", f"induction accuracy per layer, {exp}")]
    t = lens_table(rs)
    if t:
        out += ["Logit-lens loss per layer (mean over seeds; emb = the embeddings, h_L = the model's output):",
                "", t, ""]
    t = lens_change_table(rs)
    if t:
        out += ["Change against λ = 0 per intermediate layer (mean of the per-seed differences; layer 1 reads "
                "the embeddings, h2..h(L-1) are the middle layers; (m): lower on a layer the penalty acts on "
                "directly, mechanical) and of the oracle early-exit saving ((m): higher where the penalty acts on every "
                "layer an exit can stop at):", "", t, ""]
    return out


def render_report(meta: dict, results: list[dict], e1: list[dict], figs: dict[str, Path], link) -> str:
    """The Markdown report. ``meta``: title, command, argv, machine, date, wall, sweeps (list of
    (name, command line)), notes (list of lines). ``link(path) -> str`` makes a figure's link."""
    def img(key: str, alt: str) -> str:
        return f"![{alt}]({link(figs[key])})\n" if key in figs else ""

    out = _header(meta, results) + _findings_section(results, e1)
    if results:
        out += _tables_section(results)
    if e1:
        out += _e1_section(e1, img)
    for exp in sorted({r["experiment"] for r in results}):
        out += _experiment_section(exp, [r for r in results if r["experiment"] == exp], img)
    if results:
        out += ["## Against λ", "", img("val_loss", "validation loss vs lambda"),
                img("val_zeta", "validation zeta_L vs lambda"), img("induction", "induction accuracy vs lambda")]
    out += ["## How it was run", "", "Each sweep is one public-CLI command (`resume=auto`: a rerun reopens finished "
            "runs and continues interrupted ones):", ""]
    for name, cmd in meta.get("sweeps", []):
        out += [f"* `{name}`: `{cmd}`"]
    out += ["", "Per run, `llama-jreg eval RUN_DIR --json F` (logit lens on the run's own validation set) and "
            "`llama-jreg jump` for E1; every number above is read from the runs' `metrics.jsonl` and these JSON files "
            "(all of it in `results.json`).", ""]
    return "\n".join(line for line in out if line is not None).rstrip() + "\n"


def report_meta(scale: str, out_arg: str, plan: Plan, results: list[dict], out: Path, notes: list[str],
                argv_used: list[str]) -> dict:
    """The report's header (:func:`render_report`'s ``meta``): the command of the scale, the command line that
    wrote the report (``--note`` texts elided), this machine, the date, the wall time from ``OUT/timing.jsonl``,
    each sweep's command (with ``--out`` as given, ``out_arg``) and the notes."""
    command = COMMANDS.get(scale, f"python scripts/reproduce.py --scale {scale} --out {out_arg}")
    return {
        "title": f"JREG reproduction study, `{scale}` scale",
        "command": command,
        "argv": "python scripts/reproduce.py " + " ".join(
            "'…'" if prev == "--note" else shlex.quote(a) for prev, a in zip(["", *argv_used[:-1]], argv_used)),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall": wall_time(results, out),
        "sweeps": [(sw.name, show(sweep_command(sw, Path(out_arg), dry=True))) for sw in plan.sweeps],
        "notes": [f"Scale `{scale}`: {plan.about}."] + list(notes)
                 + [f"{sum(1 for r in results if not r['complete'])} run(s) still short of their last step "
                    "(marked running; not evaluated)."] * any(not r["complete"] for r in results),
    }


def publish(out: Path, meta: dict, results: list[dict], e1: list[dict], figs: dict[str, Path],
            docs: str | None = None) -> Path:
    """Write ``OUT/report.md`` and ``OUT/headline.md`` (the summary table alone); with ``docs``, the report
    there too, its figures in the folder next to it (``docs/results.md`` -> ``docs/results/``). Returns the
    report's path."""
    (out / "headline.md").write_text(summary_table(results) + "\n")  # the summary table alone
    report = out / "report.md"
    report.write_text(render_report(meta, results, e1, figs, lambda p: Path(p).relative_to(out).as_posix()))
    if docs:
        docs = Path(docs)
        fig_dir = docs.parent / docs.stem
        fig_dir.mkdir(parents=True, exist_ok=True)
        keep = {Path(p).name for p in figs.values()}
        for old in fig_dir.glob("*.png"):  # figures of an earlier report that this one no longer has
            if old.name not in keep:
                old.unlink()
        for p in figs.values():
            shutil.copyfile(p, fig_dir / Path(p).name)
        docs.write_text(render_report(meta, results, e1, figs, lambda p: f"{docs.stem}/{Path(p).name}"))
    return report
