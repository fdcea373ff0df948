"""The v2 study's report (docs/results.md when the study is complete; ``OUT/report.md`` with a "partial"
banner before): the registration, the emergence rate, E1, the paired table of the growing seeds, the continued
arms' curves, every cell on both streams (descriptive: :mod:`llama_jreg.study.cells`), every verdict (n, both
CIs, Holm p, sign-flip p, power), the deviations and how it was run. A function of the runs' files alone (no clock, no machine), so the archive regenerates it byte for byte."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from llama_jreg.analysis.stats import paired
from llama_jreg.study.cells import descriptive_section, groups
from llama_jreg.study.cells import fmt as _f
from llama_jreg.study.design import Design, Job
from llama_jreg.study.deviations import CHOICES, DEVIATIONS, REGISTRATION
from llama_jreg.study.families import (
    ACTS_ON,
    FAMILIES,
    METRIC_NAMES,
    T_ONLY,
    build_tests,
    c3_summary,
    collect,
    decide,
    direct_counts,
    emergence,
)
from llama_jreg.study.lanes import eval_command, show, train_command
from llama_jreg.study.results import logged_train_seconds
from llama_jreg.study.run import read_timing, union_seconds
from llama_jreg.train.provenance import read_provenance

MODEL = "SmolLM2-135M-Instruct (de-quantised from Q4_1)"


def _pct(pct) -> str:
    """A percentage with two decimals below 1 % (a 0.01 % loss change is not "-0.0 %")."""
    return "-" if pct is None else f"{pct:+.2f} %" if abs(pct) < 1 else f"{pct:+.1f} %"


def _p(p) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def first_run_time(out: Path) -> str:
    """The earliest start recorded in the runs' provenance.json (the study's first run)."""
    times = [p["time"] for run in out.glob("*/seed_*") for p in read_provenance(run) if p.get("time")]
    times += [p["time"] for run in out.glob("*/*/seed_*") for p in read_provenance(run) if p.get("time")]
    return min(times) if times else "-"


def compute_line(out: Path, budget_h: float | None = None) -> str:
    """The machine time the study's runs took, from their files: the union of the train and eval intervals
    in ``OUT/timing.jsonl`` (``make reproduce``'s lanes side by side count once), plus the logged training
    time of the evaluated runs trained outside it (an ``eval:`` row but no ``train:`` row; such runs ran one at
    a time)."""
    rows = [r for r in read_timing(out) if r["stage"].startswith(("train:", "eval:"))]
    timed = {r["stage"].split(":", 1)[1] for r in rows if r["stage"].startswith("train:")}
    evaluated = {r["stage"].split(":", 1)[1] for r in rows if r["stage"].startswith("eval:")}
    untimed = [out / key for key in sorted(evaluated - timed)]  # trained before make reproduce evaluated them
    inside = union_seconds((r["start"], r["end"]) for r in rows) / 3600
    outside = sum(logged_train_seconds(run) for run in untimed) / 3600
    line = (f"* **Compute**: {inside + outside:.2f} h" + (f" (registered: ≤ {budget_h:g} h)" if budget_h else "")
            + f": {inside:.2f} h while "
            "`make reproduce` trained and evaluated (the union of the intervals in `timing.jsonl`, its lanes side "
            "by side counted once)")
    if untimed:
        line += (f", and {outside:.2f} h of training of {len(untimed)} run(s) made one at a time outside it "
                 "(their logged step times)")
    return line + "."


def _e1_section(e1: dict | None, seq_len: int) -> list[str]:
    out = ["## E1 (C1): the jump of a pre-trained model", ""]
    if not e1:
        return out + ["Not measured (not at this scale, or not yet).", ""]
    pw = e1.get("per_window") or {}
    rows = ["| reading | mean | 95 % t interval over windows |", "|---|---:|---|"]
    psi = pw.get("psi") or []
    post = pw.get("psi_post_norm_L") or []
    series = {"D (pre-norm)": [w[-1] - w[-2] for w in psi], "D^post (post-norm)": [p - w[-2] for w, p in zip(psi, post)],
              "J2 (last two layers)": [max(w[-2], w[-1]) - w[-3] for w in psi if len(w) >= 3]}
    for name, vals in series.items():
        if len(vals) >= 2:
            s = paired(vals)
            rows.append(f"| {name} | {s.mean:+.4f} | [{s.ci[0]:+.4f}, {s.ci[1]:+.4f}] ({s.n - 1} df) |")
    n_tok = e1.get("windows", 0) * e1.get("seq_len", seq_len)
    return out + [f"{MODEL}, `llama-jreg jump` on {e1.get('windows')} windows × {e1.get('seq_len')} tokens "
                  f"({n_tok:,} tokens) of a fixed slice of the Shakespeare corpus (`OUT/e1/text.txt`; see the deviations). C1 rests on this one model and these "
                  f"{n_tok:,} tokens: the intervals are text-sampling uncertainty, not a statement about LMs.", "",
                  *rows, ""]


E3_ARMS = [("λ = 0", ("screen", "")), ("placebo", ("arms", "placebo")), ("paper", ("arms", "paper")),
           ("jump", ("arms", "jump"))]
CONTROL_ARMS = [("λ = 0", ("screen", "")), ("paper", ("control", "paper")), ("jump", ("control", "jump"))]


def _paired_table(data: dict, seeds: list[int], arms=E3_ARMS) -> list[str]:
    runs = data["runs"]
    head = "| seed | " + " | ".join(f"{a}: D | {a}: D^post | {a}: val loss" for a, _ in arms) + " |"
    lines = [head, "|---:|" + "---:|" * (3 * len(arms))]
    for s in seeds:
        cells = []
        for _, key in arms:
            r = runs.get(key, {}).get(s, {})
            cells += [_f(r.get("D")), _f(r.get("D_post")), _f(r.get("val_loss"))]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    means = []
    for _, key in arms:
        for k in ("D", "D_post", "val_loss"):
            vals = [runs.get(key, {}).get(s, {}).get(k) for s in seeds]
            vals = [v for v in vals if v is not None]
            means.append(_f(statistics.fmean(vals)) if vals else "-")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return lines


def _continued_section(data: dict, design: Design, fig: str | None) -> list[str]:
    runs = data["runs"]
    out = ["## E4: continued pre-training", "",
           f"{MODEL}, per arm the mean validation loss over its seeds (the same 4 validation batches at every "
           "step) at the registered steps:", "",
           "| arm | seeds | " + " | ".join(f"step {s}" for s in design.e4_show) + " | cloze at the end |",
           "|---|---:|" + "---:|" * (len(design.e4_show) + 1)]
    for arm in ("base", "paper", "jump"):
        rs = runs.get(("continued", arm), {})
        vals = []
        for st in design.e4_show:
            v = [r["curve"][st] for r in rs.values() if st in r.get("curve", {})]
            vals.append(_f(statistics.fmean(v)) if v else "-")
        cz = [r["cloze"] for r in rs.values() if r.get("cloze") is not None]
        name = "λ = 0" if arm == "base" else f"{arm} λ = 1"
        out.append(f"| {name} | {len(rs)} | " + " | ".join(vals) + f" | {_f(statistics.fmean(cz), 3) if cz else '-'} |")
    base1 = runs.get(("continued", "base"), {}).get(1, {})
    n = base1.get("cloze_n")
    out += ["", f"Cloze at step 0 (the shared initial weights): {_f(base1.get('cloze_0'), 3)}" +
            (f" on {n} passages: its binomial standard error at accuracy 0.2 is "
             f"{math.sqrt(0.2 * 0.8 / n):.3f} per run, so single-run differences of 2 points are below its "
             "resolution." if n else "."), ""]
    if fig:
        out += [f"![E4 validation loss per step, every arm and seed]({fig})", ""]
    return out


CLAIMS = {"C2": "without suppression, the final-layer jump grows during pre-training",
          "C3": "JREG lowers the jump, by more than a perturbation that is not JREG",
          "P": "descriptive: the jump under the placebo, against λ = 0",
          "C4": "JREG does not cost validation loss",
          "C5": "with JREG the middle layers do more of the work (unit-gain lens, early exits at h ≤ L−2)",
          "C6": "JREG helps a task (cloze accuracy)"}


def _name(t) -> str:
    return f"{t.label}: {METRIC_NAMES.get(t.metric, t.metric)}, {t.arm} vs {t.vs}"


def summary_section(tests, em: dict, e1: dict | None) -> list[str]:
    """What the verdicts support and what they do not, claim by claim, from the tests alone."""
    out = ["## What it supports and what it does not", ""]
    e = em["all"]
    if e["ci"]:
        out.append(f"* **Emergence**: the jump grew (the registered criterion) in {e['k']} of {e['n']} screened seeds "
                   f"(95 % Wilson interval {100 * e['ci'][0]:.1f}–{100 * e['ci'][1]:.1f} %).")
    psi = ((e1 or {}).get("per_window") or {}).get("psi") or []
    if len(psi) >= 2:
        s = paired([w[-1] - w[-2] for w in psi])
        out.append(f"* **C1** (descriptive): in {MODEL}, D = Ψ_L − Ψ_{{L−1}} = {s.mean:+.4f} (95 % t interval "
                   f"[{s.ci[0]:+.4f}, {s.ci[1]:+.4f}] over {s.n} windows): one model and one text, not LMs in general.")
    for fam, claim in CLAIMS.items():
        got = [t for t in tests if t.family == fam]
        done = [t for t in got if t.verdict in ("lower", "higher")]
        open_ = [t for t in got if t.verdict == "not resolved"]
        missing = len(got) - len(done) - len(open_)
        line = f"* **{fam}**: {claim} ({len(got)} tests). "
        if done:
            line += "Resolved: " + "; ".join(f"{_name(t)}: {t.reading}" for t in done) + ". "
        if open_:
            line += f"{len(open_)} not resolved (the smallest difference each could detect: " + "; ".join(
                f"{_name(t)}: {t.stats.mde:.4f}" for t in open_) + "). "
        if missing:
            line += f"{missing} missing (runs not there). "
        out.append(line.rstrip())
    return out + ["", "Holm's correction runs within each family (35 tests in 6 families), not across them; "
                  "a verdict holds for this scale (above: Scale) and is not shown here to hold at any other.", ""]


def _verdict_rows(tests) -> list[str]:
    lines = ["| family | test | arm vs | n | mean diff | % | 95 % CI (unadjusted) | CI (family-adjusted, m) | "
             "Holm p, t (raw) | Holm p, sign-flip (raw) | verdict | power: could not detect smaller than |",
             "|---|---|---|---:|---:|---:|---|---|---:|---:|---|---:|"]
    for t in tests:
        s = t.stats
        name = f"{t.label}: {METRIC_NAMES[t.metric]}"
        if s is None:
            lines.append(f"| {t.family} | {name} | {t.arm} vs {t.vs} | {len(t.diffs)} | - | - | - | - | - | - | "
                         f"{t.reading} | - |")
            continue
        pct = t.percent
        verdict = t.reading + (f"; {T_ONLY}" if t.e4 else "") + (" (direct)" if t.direct else "")
        power = t.family in ("C4", "C5", "C6") or t.verdict == "not resolved"
        lines.append(
            f"| {t.family} | {name} | {t.arm} vs {t.vs} | {s.n} | {s.mean:+.4f} | "
            f"{_pct(pct)} | [{s.ci[0]:+.4f}, {s.ci[1]:+.4f}] | "
            f"[{s.ci_family[0]:+.4f}, {s.ci_family[1]:+.4f}] (m = {FAMILIES[t.family]}) | {_p(t.p_holm)} "
            f"(raw {_p(s.p)}) | {_p(t.p_sign_holm)} (raw {_p(t.p_sign)}) | {verdict} | "
            f"{f'{s.mde:.4f}' if power else '-'} |")
    return lines


def _verdicts_section(tests) -> list[str]:
    c3 = c3_summary(tests)
    counts = direct_counts(tests)
    out = ["## Verdicts (35 registered tests in 6 families)", "",
           "Paired by seed. A test is resolved when its Holm-adjusted t p < 0.05 and its Holm-adjusted sign-flip "
           f"p < 0.05 (Holm within the family, separately for each); E4 verdicts (5 seeds) are {T_ONLY}. "
           "'Power' is the smallest true mean difference the test had 80 % power to detect at the strictest Holm "
           "level, from the observed spread: an unresolved test could not detect a difference smaller than it.",
           "", *_verdict_rows(tests), "",
           "C3, the stream each penalty acts on: " + "; ".join(
               f"`{arm}` ({METRIC_NAMES[ACTS_ON[arm]]}): {c3[arm]}" for arm in ("paper", "jump")) + ".", "",
           "C5 verdicts by tag (*direct*: the penalty's R contains the stream read): " + "; ".join(
               f"{tag}: " + (", ".join(f"{n} {r}" for r, n in sorted(c.items())) or "none")
               for tag, c in counts.items()) + ".", ""]
    return out


def render(design: Design, scale: str, out: Path, progress: dict, e1: dict | None, fig: str | None) -> str:
    """The report's Markdown (see the module docstring)."""
    data = collect(design, out)
    tests = decide(build_tests(data, design))
    em = emergence(data, design)
    reg = REGISTRATION
    lines = [f"# JREG study v2, `{scale}` scale", ""]
    if not progress["complete"]:
        lines += [f"**partial: {progress['done']} of {progress['total']} runs**"
                  + ("" if progress["final"] else " (the screening is not settled: more runs may follow)"), "",
                  "| stage | runs evaluated | runs trained | runs known |", "|---|---:|---:|---:|"]
        lines += [f"| {st} | {d} | {t} | {n} |" for st, (d, t, n) in progress["stages"].items()] + [""]
    lines += [f"* **Registration**: docs/preregistration.md, commit {reg['commit']} ({reg['date']}), amendment A1 "
              f"commit {reg['amendments']['A1']}; first run started {first_run_time(out)}.",
              compute_line(out, design.budget_h),
              f"* **Scale**: {design.about}.", ""]
    lines += summary_section(tests, em, e1)
    lines += ["## Emergence (E2, C2)", ""]
    for name, what in (("all", "all screened seeds"), ("new", f"the new seeds alone (≥ {design.first_new_seed})")):
        e = em[name]
        ci = e["ci"]
        lines.append(f"* {what}: {e['k']} of {e['n']} grew" + (f" ({100 * e['k'] / e['n']:.1f} %, 95 % Wilson "
                     f"interval [{100 * ci[0]:.1f} %, {100 * ci[1]:.1f} %])" if ci else ""))
    growers = [s for s in sorted(data["outcome"]) if data["outcome"][s]]
    lines += ["", f"Growing seeds: {', '.join(map(str, growers)) or 'none'}.", ""]
    lines += _e1_section(e1, design.e1_seq_len)
    seeds = groups(data)
    lines += ["## E3: the growing seeds, paired", "",
              "Signed jumps from `llama-jreg eval --unit-gain-lens` on the whole validation set; λ = 0 is the "
              "screening run of the seed.", "", *_paired_table(data, seeds["arms"]), ""]
    lines += ["## E3 negative control: non-growing seeds, paired", "",
              "The loss cost where there is no jump to remove; the same readings.", "",
              *_paired_table(data, seeds["control"], CONTROL_ARMS), ""]
    lines += _continued_section(data, design, fig)
    lines += descriptive_section(data, design, out)
    lines += _verdicts_section(tests)
    lines += ["## Deviations from the registration", ""] + [f"* {d}" for d in DEVIATIONS] + [""]
    lines += ["## Choices where the registration is silent", ""] + [f"* {c}" for c in CHOICES] + [""]
    lines += _how_section(design)
    return "\n".join(lines).rstrip() + "\n"


def _how_section(design: Design) -> list[str]:
    out = Path("OUT")
    ex = [Job("screen", "", 1, tuple(design.screen), tuple(design.screen_eval)),
          Job("continued", "paper", 1, tuple(design.continued), tuple(design.continued_eval))]
    lines = ["## How it was run", "", "Every run through the public CLI, for example:", ""]
    for job in ex:
        lines += [f"* `{show(train_command(job, out, dry=True))}`", f"  then `{show(eval_command(job, out))}`"]
    return lines + [""]


def plot_curves(data: dict, path: Path) -> Path | None:
    """E4: validation loss per step, one colour per arm, one line per seed."""
    rs = {arm: data["runs"].get(("continued", arm), {}) for arm in ("base", "paper", "jump")}
    if not any(rs.values()):
        return None
    import matplotlib  # deferred: ~0.4 s to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (arm, runs) in enumerate(rs.items()):
        for j, (seed, r) in enumerate(sorted(runs.items())):
            c = r.get("curve", {})
            ax.plot(list(c), list(c.values()), color=f"C{i}", alpha=0.8,
                    label=("λ = 0" if arm == "base" else f"{arm} λ = 1") if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title("E4: continued pre-training (one line per seed)")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path
