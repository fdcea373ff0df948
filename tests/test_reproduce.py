"""The first (v1) study's code in llama_jreg/study/ (plan.py, run.py, results.py, findings.py, tables.py,
figures.py, report.py), kept for its committed archive docs/study/cpu and the report docs/results_v1.md it
regenerates byte for byte; scripts/reproduce.py runs the v2 study (tests/test_study_v2.py)."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import statistics
from pathlib import Path

import pytest

from llama_jreg.cli import main as cli
from llama_jreg.study.archive import archive_run, restore
from llama_jreg.study.figures import make_plots
from llama_jreg.study.findings import (
    Reading,
    exit_is_mechanical,
    findings,
    holm_adjust,
    penalised_psi,
    penalised_streams,
    readings,
)
from llama_jreg.study.plan import PLANS, SMOLLM2, plan_jobs
from llama_jreg.study.report import machine, publish, render_report, report_meta
from llama_jreg.study.results import read_json, run_complete, run_result
from llama_jreg.study.run import e1_label, record_stage, run_dirs, wall_time
from llama_jreg.study.stats import compare
from llama_jreg.study.tables import _TESTED, e2_seed_table, headline_table, lens_change_table, summary_table
from tests.test_train_helpers import REPO, TINY, rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real 2 x 2 sweep (lambda 0 / 1, seeds 1 / 2) of 3 steps of a 2-layer model, each run evaluated."""
    d = tmp_path_factory.mktemp("study") / "sweep"
    over = [o for o in TINY if not o.startswith(("trainer.jump_every", "trainer.eval_every"))]
    assert cli(["train", "-m", *over, "trainer.max_steps=3", "trainer.jump_every=1", "trainer.eval_every=2",
                "jreg=jump", "seed=1,2", "jreg.weight=0,1", f"hydra.sweep.dir={d}"]) == 0
    runs = sorted(p for p in d.iterdir() if p.is_dir())
    evals = {}
    for run in runs:
        js = run.parent / f"{run.name}.eval.json"
        assert cli(["eval", str(run), "--json", str(js)]) == 0
        evals[run.name] = json.loads(js.read_text())
    return runs, evals


def test_run_result_copies_the_metrics(sweep):
    runs, evals = sweep
    assert len(runs) == 4
    for run in runs:
        res = run_result(run, "induction", evals[run.name])
        jump, ev = rows(run, "jump"), rows(run, "eval")
        assert res["complete"] and res["steps"] == 3 and res["tokens"] == ev[-1]["tokens"]
        assert res["val_loss"] == ev[-1]["val_loss"] and res["val_ppl"] == ev[-1]["val_ppl"]
        assert res["val_zeta_L"] == jump[-1]["val_zeta_L"] and res["zeta_L"] == jump[-1]["zeta_L"]
        assert res["psi"] == jump[-1]["psi"] and res["psi_L"] == jump[-1]["val_psi"][-1]
        assert [h["step"] for h in res["history"]] == [1, 2, 3]
        ej = evals[run.name]
        assert res["lens_loss"] == [r["loss"] for r in ej["lens"]] and len(res["lens_loss"]) == 3
        # a 2-layer model has one intermediate stream, h1, and no middle layers 2..L-1
        assert res["lens_h1_loss"] == ej["lens"][1]["loss"] and res["lens_mid_loss"] is None
        assert res["n_layers"] == 2 and res["tasks"] == []
        assert res["induction_accuracy"] == ej["induction"]["accuracy"]
        assert res["early_exit_saving"] == ej["saturation"]["early_exit_blocks_saved"]
        assert (res["jreg.weight"], res["seed"]) == ({"0": 0.0, "1": 1.0}[run.name.rsplit("=", 1)[1]],
                                                     int(run.name.split("seed=")[1][0]))


def test_report_tables_findings_and_plots(sweep, tmp_path):
    runs, evals = sweep
    results = [run_result(r, "induction", evals[r.name]) for r in runs]
    found = findings(results)
    tags = {t for t, _ in found}
    assert tags <= {"supports", "contradicts", "mechanical", "identical", "noise"}
    # E2 (lambda = 0 emergence) and E3 (lambda = 1 vs 0: zeta, loss, lens, early exit, induction)
    assert sum(s.startswith("C2 · E2, induction, λ = 0:") for _, s in found) == 1
    claims = [s.split(" · ")[0] for _, s in found if " · E3, induction, jump λ = 1:" in s]
    assert claims == ["C3", "C4", "C5", "C5", "C6"]
    figs = make_plots(results, [], tmp_path / "figures")
    assert {"zeta_induction", "psi_final_induction", "lens_induction", "val_loss", "val_zeta"} <= set(figs)
    assert all(p.stat().st_size > 0 for p in figs.values())
    meta = {"title": "t", "command": "c", "machine": machine(), "date": "d", "wall": "w", "sweeps": []}
    md = render_report(meta, results, [], figs, lambda p: p.name)
    table = md.split("## Headline table")[1].split("\n## ")[0]
    body = [ln for ln in table.splitlines() if ln.startswith("| induction")]
    assert len(body) == 4 + 2 + 2  # one row per run + one mean ± sd row and one 95 % CI row per lambda
    for r in results:  # every run's numbers are in its row, as formatted
        row = next(ln for ln in body if f"| {r['jreg.weight']:g} | {r['seed']} |" in ln)
        assert f"{r['val_loss']:.4f}" in row and f"{r['val_zeta_L']:.3f}" in row and f"{r['psi_L']:.4f}" in row
    base = [r for r in results if r["jreg.weight"] == 0]
    mean = sum(r["val_loss"] for r in base) / 2
    assert f"**{mean:.4f} ± " in next(ln for ln in body if "| 0 | **mean" in ln)
    sd = statistics.stdev(r["val_loss"] for r in base)
    half = 12.7062047 * sd / math.sqrt(2)  # t_{0.975, 1} = tan(0.475 pi)
    assert f"| [{mean - half:.4f}, {mean + half:.4f}] |" in next(ln for ln in body if "| 0 | 95 % CI (t, 1 df)" in ln)
    assert "**Comparisons made: " in md and "Holm" in md
    assert all(f"({p.name})" in md for p in figs.values())
    # the summary: one row per lambda with the means over the seeds and the loss change against lambda = 0
    summary = summary_table(results)
    assert summary in md.split("## Summary")[1].split("## Headline table")[0]
    srows = summary.splitlines()[2:]
    assert len(srows) == 2 and srows[0].startswith("| induction | jump | 0 | 2 | ")
    one = [r for r in results if r["jreg.weight"] == 1]
    m1 = sum(r["val_loss"] for r in one) / 2
    z1 = sum(r["val_zeta_L"] for r in one) / 2
    (c4,) = [r.test for r in readings(results) if r.claim == "C4"]  # the loss test, paired by seed
    assert c4.kind == "paired" and c4.diffs == pytest.approx(
        [o["val_loss"] - b["val_loss"] for o, b in zip(sorted(one, key=lambda r: r["seed"]),
                                                       sorted(base, key=lambda r: r["seed"]))])
    assert f"| {m1:.4f} ± " in srows[1] and f"| {100 * (m1 - mean) / mean:+.2f} % ({_TESTED[c4.verdict]})" in srows[1]
    assert f"| {z1:.3f} ± " in srows[1] and "(step 1)" in srows[1]


def test_readme_results_summary_quotes_docs_results_md():
    """The README's Results section is a short summary of the committed docs/results.md (written by
    `scripts/reproduce.py --docs docs/results.md`, never by hand): it links the report, and every number it
    quotes is in the report."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Results\n")[1].split("\n## ")[0]
    assert "(docs/results.md)" in section
    results_md = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    quoted = re.findall(r"\d+\.\d+", section)
    assert len(quoted) >= 5  # the summary quotes the study's numbers
    assert [q for q in quoted if q not in results_md] == []


def test_compare_paired_by_seed():
    """Paired t-test with n - 1 degrees of freedom; sd = 0 gives no verdict unless the values are identical."""
    # a consistent shift in both seeds of a wide seed spread: t(1) = 5.2, p = 0.12: not resolved at 2 seeds
    a, b = {1: 3.8602, 2: 3.7844}, {1: 3.8375, 2: 3.7690}
    t = compare(a, b)
    assert t.kind == "paired" and t.diffs == pytest.approx([0.0227, 0.0154]) and t.df == 1
    tt = statistics.fmean(t.diffs) / (statistics.stdev(t.diffs) / math.sqrt(2))
    assert t.t == pytest.approx(tt)
    assert t.p == pytest.approx(1 - 2 / math.pi * math.atan(tt))  # t with 1 df is the Cauchy distribution
    assert t.verdict == "noise" and t.p_sign == 0.5
    lo, hi = t.ci95
    assert (lo, hi) == pytest.approx((t.diff - 12.7062047 * t.se, t.diff + 12.7062047 * t.se))
    assert "higher in 2 of 2" in t.says(4) and "not resolved" in t.says(4)
    # 6 seeds, a shift much larger than its spread: resolved, and the exact sign-flip test agrees (2/64)
    b6 = {s: 3.0 + 0.1 * s for s in range(6)}
    a6 = {s: v + 0.02 + 0.001 * (-1) ** s for s, v in b6.items()}
    t6 = compare(a6, b6)
    assert t6.verdict == "higher" and t6.p < 1e-4 and t6.p_sign == pytest.approx(2 / 64)
    assert compare(b6, a6).verdict == "lower"
    # sd = 0: the same nonzero difference in every seed is no test; equal values are "identical"
    same = compare({1: 1.01, 2: 2.01}, {1: 1.0, 2: 2.0})
    assert same.verdict == "no spread" and same.p is None and "no test" in same.says(3)
    # differences of float-rounding size spread by rounding only: no test, not a "resolved" effect
    assert compare({1: 3.0 + 4.4e-16, 2: 3.0 + 8.8e-16}, {1: 3.0, 2: 3.0}).verdict == "no spread"
    ident = compare({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.0})
    assert ident.verdict == "identical" and ident.identical and "identical values" in ident.says(3)
    assert compare({1: 1.0, 2: 3.0}, {1: 2.0, 2: 2.0}).verdict == "noise"  # one up, one down
    # fewer than 2 common seeds: Welch's unpaired test; one seed per cell: no test
    w = compare({1: 1.0, 3: 1.2, 5: 1.1}, {2: 2.0, 4: 2.3})
    va, vb = statistics.variance([1.0, 1.2, 1.1]) / 3, statistics.variance([2.0, 2.3]) / 2
    assert w.kind == "unpaired" and w.se == pytest.approx(math.sqrt(va + vb))
    assert w.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1))
    assert compare({1: 1.0}, {2: 2.0}).verdict == "one seed"
    assert compare({}, {2: 2.0}) is None


def test_paired_rule_false_positive_rate_is_its_alpha():
    """With no effect (both cells drawn from one distribution, a per-seed offset shared by the pair), the paired
    test at 2 seeds calls a difference in about 5 % of the comparisons, and Holm over a family of 10 keeps the
    chance of any false call in the family near 5 %."""
    rng = random.Random(0)

    def null_pair(n):
        base = [rng.gauss(0, 1) for _ in range(n)]
        return ({s: base[s] + rng.gauss(0, 0.1) for s in range(n)}, {s: base[s] + rng.gauss(0, 0.1) for s in range(n)})

    calls = sum(compare(*null_pair(2)).verdict in ("higher", "lower") for _ in range(4000))
    assert 0.035 < calls / 4000 < 0.065
    families = 0
    for _ in range(600):
        tests = [compare(*null_pair(3)) for _ in range(10)]
        rd = [Reading("C9", "x", t, "lower") for t in tests]
        holm_adjust(rd)
        assert all(t.m == 10 for t in tests)
        families += any(t.verdict in ("higher", "lower") for t in tests)
    assert families / 600 < 0.08


def _result(cell: str, w: float, seed: int, lens: list[float], **kw) -> dict:
    """A run's figures as run_result gives them (data for the analysis functions)."""
    mode = {"jump": "jump", "final": "final"}.get(cell, "weighted")
    return {"experiment": "text", "cell": cell, "jreg.mode": mode, "jreg.weighting": "linear", "jreg.weight": w,
            "jreg.l0": 2, "jreg.last_k": 2, "seed": seed, "complete": True, "n_layers": len(lens) - 1,
            "lens_loss": lens, "history": [], "tokens": 100, "max_steps": 10, "run_dir": "sweep/run",
            **kw}


def test_e2_seed_table_shows_each_seed():
    """A jump that grows in one seed and not the other shows per seed (their mean would hide it), with the count
    of seeds that ended above their first measurement; a lambda > 0 run is not in it."""
    def hist(zs):
        return [{"step": 10 * (i + 1), "tokens": 100 * (i + 1), "zeta_L": z, "val_zeta_L": z,
                 "val_psi": [0.1, 0.2]} for i, z in enumerate(zs)]
    rs = [_result("jump", 0.0, 2, [0.0] * 3, history=hist([0.0, 0.0, 0.0])),
          _result("jump", 0.0, 1, [0.0] * 3, history=hist([0.1, 1.5, 2.25])),
          _result("jump", 1.0, 1, [0.0] * 3, history=hist([9.0, 9.0, 9.0]))]
    lines = e2_seed_table(rs, "text").splitlines()
    assert lines[0] == "| step | seed 1 | seed 2 |"
    assert lines[2:5] == ["| 10 | 0.100 | 0.000 |", "| 20 | 1.500 | 0.000 |", "| 30 | 2.250 | 0.000 |"]
    assert lines[-1].endswith("in 1 of 2 seeds.")
    assert e2_seed_table(rs[1:], "text") == ""  # one lambda = 0 seed: the mean table says it all
    flat = [_result("jump", 0.0, s, [0.0] * 3, history=hist([0.0, 0.0])) for s in (1, 2)]
    assert e2_seed_table(flat, "text") == "Validation ζ_L was 0 at every measurement of all 2 seeds."


def test_penalised_layers_and_mechanical_readings():
    """The layers a penalty acts on directly; a better lens reading there is filed as mechanical, a better one
    elsewhere supports C5, layer 1 is read apart from the middle layers, and Holm runs within each claim."""
    r = _result("final", 0.1, 1, [0.0] * 7)
    assert penalised_psi(r) == {6} and penalised_streams(r) == {5, 6}
    assert penalised_streams({**r, "jreg.mode": "jump"}) == set(range(7))
    assert penalised_streams({**r, "jreg.mode": "jump", "jreg.l0": 4}) == {2, 3, 4, 5, 6}
    assert penalised_psi({**r, "jreg.mode": "jump", "jreg.l0": -1}) == {5, 6}  # jump_last: l0 = L
    assert penalised_psi({**r, "jreg.mode": "paper"}) == {6}
    assert penalised_streams({**r, "jreg.mode": "weighted", "jreg.weighting": "last_k"}) == {4, 5, 6}
    assert penalised_streams({**r, "jreg.weight": 0.0}) == set()
    # an early exit can stop at h1..h5: only a penalty on all of them makes a larger saving mechanical
    assert not exit_is_mechanical(r) and exit_is_mechanical({**r, "jreg.mode": "jump"})
    assert exit_is_mechanical({**r, "n_layers": 2, "lens_loss": [0.0] * 3})  # final on 2 layers: h1 only
    assert not exit_is_mechanical({**r, "jreg.weight": 0.0, "n_layers": 2})
    # 6 seeds; `final` lowers h3 and h5 (= h_(L-1), which it acts on) by 0.5 and raises h1 by 0.3
    rng = random.Random(1)
    base, fin = [], []
    for s in range(6):
        lens = [8.0, 6.0, 5.5, 5.0, 4.6, 4.3, 4.0]
        noise = [rng.gauss(0, 0.01) for _ in lens]
        base.append(_result("jump", 0.0, s, [x + e for x, e in zip(lens, noise)], val_loss=4.0 + 0.01 * s))
        shift = [0.0, 0.3, 0.0, -0.5, 0.0, -0.5, 0.0]
        fin.append(_result("final", 0.1, s, [x + e + d + rng.gauss(0, 0.01) for x, e, d in zip(lens, noise, shift)],
                           val_loss=4.0 + 0.01 * s + rng.gauss(0, 0.001)))
    rd = [x for x in readings(base + fin) if x.claim == "C5"]
    by = {x.key[3]: x for x in rd}
    assert set(by) == {"lens_h1", "lens_mid_free", "lens_mid_acted"}
    assert "middle layers h2–h4" in by["lens_mid_free"].text and "middle layers h5" in by["lens_mid_acted"].text
    assert by["lens_mid_free"].tag == "supports"
    assert float(by["lens_mid_free"].note.split("largest change of one layer: h3 ")[1]) == pytest.approx(-0.5, abs=0.03)
    assert by["lens_mid_acted"].tag == "mechanical" and "[mechanical" in by["lens_mid_acted"].text
    assert by["lens_h1"].tag == "contradicts" and "layer 1 (h1)" in by["lens_h1"].text
    assert {x.test.m for x in rd} == {3}  # one Holm family: C5's three tests
    found = findings(base + fin)
    assert any(t == "mechanical" and "h5" in s for t, s in found)
    table = lens_change_table(base + fin)
    row = next(ln for ln in table.splitlines() if ln.startswith("| text | final |"))
    cols = [c.strip() for c in row.strip("|").split("|")][3:]
    assert float(cols[2]) == pytest.approx(-0.5, abs=0.03)  # h3: not acted on, no mark
    assert cols[4].endswith(" (m)") and float(cols[4][:-4]) == pytest.approx(-0.5, abs=0.03)  # h5 = h_(L-1)
    assert float(cols[0]) == pytest.approx(0.3, abs=0.03)  # h1: worse, never marked
    md = render_report({"title": "t", "command": "c", "machine": "m", "date": "d", "wall": "w"},
                             base + fin, [], {}, str)
    assert "### What the penalty does by construction" in md and "**Comparisons made: " in md
    assert "over the 2 claims tested at most 10 %" in md  # C4 (val loss) and C5


def test_task_rows_reach_the_summary_and_findings(sweep, tmp_path):
    """`kind=task` rows of a run's metrics.jsonl (the in-training task evaluation) become task_<name>_accuracy
    (the last evaluation), a column of the summary and headline tables, and C6 comparisons."""
    runs, evals = sweep
    results = []
    for i, run in enumerate(runs):
        copy = tmp_path / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
        w = float(run.name.rsplit("=", 1)[1])
        with open(copy / "metrics.jsonl", "a") as f:
            for step, acc in ((2, 0.1), (3, 0.25 + 0.5 * w + 0.01 * i)):
                f.write(json.dumps({"kind": "task", "step": step, "task": "cloze", "accuracy": acc, "n": 40,
                                    "seconds": 0.5}) + "\n")
        results.append(run_result(copy, "text", evals[run.name]))
    for i, r in enumerate(results):
        assert r["tasks"] == ["cloze"] and r["task_cloze_step"] == 3 and r["task_cloze_n"] == 40
        assert r["task_cloze_accuracy"] == 0.25 + 0.5 * r["jreg.weight"] + 0.01 * i
    summary = summary_table(results)
    assert summary.splitlines()[0].endswith("| task: cloze |")
    acc1 = [r["task_cloze_accuracy"] for r in results if r["jreg.weight"] == 1]
    assert summary.splitlines()[3].endswith(f"| {statistics.fmean(acc1):.3f} ± {statistics.stdev(acc1):.3f} |")
    assert "| task: cloze |" in headline_table(results).splitlines()[0]
    c6 = [s for t, s in findings(results) if s.startswith("C6 · E3, text, jump λ = 1: cloze accuracy")]
    assert len(c6) == 1 and "(task evaluation, step 3)" in c6[0] and "paired by seed (n = 2)" in c6[0]


def test_cpu_plan_keeps_its_run_names():
    """The cpu study's run dirs are found again by a rerun only if the sweeps expand to the same job names; the
    key cells have 5 seeds, the grid cells 3, and the key cells start first (continued, the longest, leading)."""
    from llama_jreg.train.command import expand_sweep

    plan = PLANS["cpu"]
    names = {sw.name: [n for _, n in expand_sweep(sw.overrides)] for sw in plan.sweeps}
    assert list(names)[:6] == ["cont_base", "je_base", "ind_base", "cont_paper", "je_paper", "ind_paper"]
    for exp in ("je", "ind", "cont"):
        for cell in ("base", "paper"):
            assert names[f"{exp}_{cell}"] == [f"{i}_seed={s}" for i, s in enumerate(range(1, 6))]
        assert names[f"{exp}_jump"] == [f"{i}_seed={s}" for i, s in enumerate(range(1, 4))]
        assert names[f"{exp}_paper_grid"] == [f"{i}_jreg.weight={w}_seed={s}" for i, (w, s) in
                                              enumerate((w, s) for w in ("0.1", "10") for s in (1, 2, 3))]
    assert len(names) == 12 and sum(map(len, names.values())) == 3 * (5 + 5 + 6 + 3)
    jobs = [(sw.name, name) for sw, _, name, _ in plan_jobs(plan, Path("/o"))]
    assert len(jobs) == 57 and len(set(jobs)) == 57
    # seed by seed across the key cells, so a study stopped part-way holds whole paired seeds; the grids last
    assert jobs[:6] == [(f"{e}_{c}", "0_seed=1") for c in ("base", "paper") for e in ("cont", "je", "ind")]
    assert jobs[6][1] == "1_seed=2" and {n.split("_")[1] for n, _ in jobs[:30]} == {"base", "paper"}
    assert {n.split("_", 1)[1] for n, _ in jobs[30:]} == {"paper_grid", "jump"}


def test_archive_keeps_evaluated_runs_without_checkpoints_and_restores_them(sweep, tmp_path):
    """--archive: a complete, evaluated run is copied without its checkpoints (with its eval JSON and the
    sweep index); an unevaluated one is not; restore puts the archived runs into an empty output dir and
    leaves a complete run already there alone."""
    runs, evals = sweep
    out, archive = tmp_path / "out", tmp_path / "archive"
    for run in runs[:2]:
        shutil.copytree(run, out / "s" / run.name)
    (out / "s" / "sweep.json").write_text("{}")
    (out / "eval" / "s").mkdir(parents=True)
    (out / "eval" / "s" / f"{runs[0].name}.json").write_text(json.dumps(evals[runs[0].name]))
    record_stage(out, "train:s/x", 0.0, 1.0)
    assert archive_run(out, archive, "s", runs[0].name) and not archive_run(out, archive, "s", runs[1].name)
    kept = archive / "s" / runs[0].name
    assert (kept / "metrics.jsonl").read_bytes() == (runs[0] / "metrics.jsonl").read_bytes()
    assert (kept / "config.yaml").is_file() and not (kept / "checkpoints").exists()
    assert any((runs[0] / "checkpoints").iterdir()) and not (archive / "s" / runs[1].name).exists()
    assert (archive / "s" / "sweep.json").is_file() and (archive / "timing.jsonl").read_text().count("\n") == 1
    archive_run(out, archive, "s", runs[0].name)  # again: the timing rows are not repeated
    assert (archive / "timing.jsonl").read_text().count("\n") == 1
    fresh = tmp_path / "fresh"
    assert restore(archive, fresh, print) == 1
    assert (fresh / "s" / runs[0].name / "metrics.jsonl").read_bytes() == (kept / "metrics.jsonl").read_bytes()
    assert json.loads((fresh / "eval" / "s" / f"{runs[0].name}.json").read_text()) == evals[runs[0].name]
    assert run_complete(fresh / "s" / runs[0].name, "text") and (fresh / "timing.jsonl").is_file()
    assert restore(archive, fresh, print) == 0  # complete there already: nothing copied again


def test_cpu_plan_cells_resolve_to_their_recipes():
    """Every job of the cpu study is its experiment preset with only JREG and the seed changed (plus the cloze
    task at the end where there is text): the penalty, lambda and seed each cell claims. init_from stays
    unresolved here (resolving it fetches SmolLM2)."""
    from llama_jreg.config import compose, to_train_config
    from llama_jreg.train.command import expand_sweep

    want = {"base": ("jump", 0.0), "paper": ("paper", 1.0), "jump": ("jump", 1.0)}
    checked = 0
    for sw in PLANS["cpu"].sweeps:
        exp, cell = sw.experiment, sw.name.split("_", 1)[1]
        for job, _ in expand_sweep([o.replace(SMOLLM2, "/m") for o in sw.overrides]):
            cfg = to_train_config(compose(job))
            preset = to_train_config(compose([f"experiment={exp}"] + ["init_from=/m"] * (exp == "continued")))
            assert (cfg.model, cfg.optim, cfg.schedule) == (preset.model, preset.optim, preset.schedule), sw.name
            assert cfg.trainer.max_steps == preset.trainer.max_steps and cfg.data.seq_len == preset.data.seq_len
            mode, weight = want.get(cell, ("paper", None))
            assert cfg.jreg.mode == mode and (weight is None or cfg.jreg.weight == weight), (sw.name, cfg.jreg)
            if mode == "paper":
                assert cfg.jreg.stream == "post_norm"
            assert list(cfg.tasks) == ([] if exp == "induction" else ["cloze"])
            checked += 1
    assert checked == 57


def test_wall_time_counts_parallel_lanes_once(tmp_path):
    """timing.jsonl rows of two lanes that overlap, then a later resumed invocation after a pause: the wall
    time is the union of the intervals (1.5 h + 0.5 h), not their sum and not first-to-last."""
    record_stage(tmp_path, "train:a", 0.0, 3600.0, lanes=2, threads=1, rc=0)
    record_stage(tmp_path, "train:b", 1800.0, 5400.0, lanes=2, threads=1, rc=0)
    record_stage(tmp_path, "eval", 36000.0, 37800.0)
    line = wall_time([{"train_time_s": 7200.0}, {"train_time_s": 3600.0}], tmp_path)
    assert line.startswith("2.00 h of running") and "2 lane(s) of 1 thread(s) each" in line
    assert "3.00 h of training summed" in line
    assert wall_time([], tmp_path / "none").startswith("not recorded")
    (tmp_path / "x").mkdir()
    record_stage(tmp_path / "x", "eval", 0.0, 360.0)  # a report-only invocation: no sweep stage
    assert wall_time([], tmp_path / "x").startswith("the training was not timed by this script")


def test_gpu_plan_is_the_cpu_studys_cells_with_more_seeds():
    """--scale gpu: no SmolLM2 (it cannot travel), 16 processes, <= 5 runs a sweep; 10 seeds in the key cells of
    both from-scratch experiments and of the 12-layer variant (its own experiment label, so its runs are never
    pooled with the 6-layer ones), 5 in the grids."""
    from llama_jreg.train.command import expand_sweep

    plan = PLANS["gpu"]
    assert plan.lanes == 16 and plan.e1_models == [] and not any(SMOLLM2 in " ".join(sw.overrides)
                                                                   for sw in plan.sweeps)
    jobs = {sw.name: [o for o, _ in expand_sweep(sw.overrides)] for sw in plan.sweeps}
    assert max(map(len, jobs.values())) == 5 and sum(map(len, jobs.values())) == 90

    def seeds(exp, cell):
        return sorted(int(o[5:]) for sw in plan.sweeps if sw.experiment == exp
                      and sw.name.split("_", 1)[1].removesuffix("_b") == cell
                      for job in jobs[sw.name] for o in job if o.startswith("seed="))

    for exp in ("jump_emergence", "induction", "jump_emergence_12_layers"):
        assert seeds(exp, "base") == seeds(exp, "paper") == list(range(1, 11)), exp
    for exp in ("jump_emergence", "induction"):
        assert seeds(exp, "jump") == [1, 2, 3, 4, 5] and seeds(exp, "paper") == list(range(1, 11))
    deep = [sw for sw in plan.sweeps if sw.experiment == "jump_emergence_12_layers"]
    assert len(deep) == 4 and all("model.n_layers=12" in sw.overrides for sw in deep)


def test_results_v1_md_is_the_report_of_the_committed_archive(tmp_path):
    """docs/results_v1.md is regenerated byte for byte from the committed archive docs/study/cpu (what
    `make reproduce ARCHIVE=docs/study/cpu` reads: finished, evaluated runs, so nothing is trained or evaluated):
    every run's result from its files and eval JSON, the figures, the wall time from the archive's timing.jsonl,
    the sweeps' commands; only the date and the machine, which say when and where the report was written, are
    taken from the committed file's header (and its command line, given as the argv that wrote it)."""
    archive = REPO / "docs" / "study" / "cpu"
    committed = (REPO / "docs" / "results_v1.md").read_text(encoding="utf-8")
    header = dict(line[4:].split("**: ", 1) for line in committed.splitlines()[2:5])  # command, machine, date
    argv = header["Command"].split("written by `python scripts/reproduce.py ")[1].removesuffix("`)")
    out_arg = argv.split("--out ")[1].split()[0]
    plan = PLANS["cpu"]
    results = [run_result(run, sw.experiment, read_json(archive / "eval" / sw.name / f"{run.name}.json"))
               for sw in plan.sweeps for run in run_dirs(archive, sw)]
    assert len(results) == 57 and all(r["complete"] and "lens_loss" in r for r in results)
    e1 = []
    for model in plan.e1_models:
        name, slug = e1_label(model, model)
        e1.append({**read_json(archive / "e1" / f"{slug}.json"), "name": name, "slug": slug})
    figs = make_plots(results, e1, tmp_path / "figures")
    meta = report_meta("cpu", out_arg, plan, results, archive, [], argv.split())
    meta.update(date=header["Date"], machine=header["Machine"])
    docs = tmp_path / "docs" / "results_v1.md"
    publish(tmp_path, meta, results, e1, figs, docs=str(docs))
    assert docs.read_text(encoding="utf-8") == committed
    assert sorted(p.name for p in (tmp_path / "docs" / "results_v1").iterdir()) == \
        sorted(p.name for p in (REPO / "docs" / "results_v1").glob("*.png"))
