"""The reproduction study (scripts/reproduce.py, llama_jreg/analysis/study.py): the report stage on real runs,
the plan's run names, and (slow) the whole pipeline end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from llama_jreg.analysis import study
from llama_jreg.cli import main as cli
from tests.test_train_helpers import REPO, TINY, env_for_subprocess, rows


def _script():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reproduce", mod)  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


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
        res = study.run_result(run, "induction", evals[run.name])
        jump, ev = rows(run, "jump"), rows(run, "eval")
        assert res["complete"] and res["steps"] == 3 and res["tokens"] == ev[-1]["tokens"]
        assert res["val_loss"] == ev[-1]["val_loss"] and res["val_ppl"] == ev[-1]["val_ppl"]
        assert res["val_zeta_L"] == jump[-1]["val_zeta_L"] and res["zeta_L"] == jump[-1]["zeta_L"]
        assert res["psi"] == jump[-1]["psi"] and res["psi_L"] == jump[-1]["val_psi"][-1]
        assert [h["step"] for h in res["history"]] == [1, 2, 3]
        ej = evals[run.name]
        assert res["lens_loss"] == [r["loss"] for r in ej["lens"]] and len(res["lens_loss"]) == 3
        assert res["lens_mid_loss"] == ej["lens"][1]["loss"]  # a 2-layer model has one intermediate stream
        assert res["induction_accuracy"] == ej["induction"]["accuracy"]
        assert res["early_exit_saving"] == ej["saturation"]["early_exit_blocks_saved"]
        assert (res["jreg.weight"], res["seed"]) == ({"0": 0.0, "1": 1.0}[run.name.rsplit("=", 1)[1]],
                                                     int(run.name.split("seed=")[1][0]))


def test_report_tables_findings_and_plots(sweep, tmp_path):
    runs, evals = sweep
    results = [study.run_result(r, "induction", evals[r.name]) for r in runs]
    found = study.findings(results)
    tags = {t for t, _ in found}
    assert tags <= {"supports", "contradicts", "noise"}
    # E2 (lambda = 0 emergence) and E3 (lambda = 1 vs 0: zeta, loss, lens, early exit, induction)
    assert sum(s.startswith("C2 · E2, induction, λ = 0:") for _, s in found) == 1
    claims = [s.split(" · ")[0] for _, s in found if " · E3, induction, jump λ = 1:" in s]
    assert claims == ["C3", "C4", "C5", "C5", "C6"]
    figs = study.make_plots(results, [], tmp_path / "figures")
    assert {"zeta_induction", "psi_final_induction", "lens_induction", "val_loss", "val_zeta"} <= set(figs)
    assert all(p.stat().st_size > 0 for p in figs.values())
    meta = {"title": "t", "command": "c", "machine": study.machine(), "date": "d", "wall": "w", "sweeps": []}
    md = study.render_report(meta, results, [], figs, lambda p: p.name)
    table = md.split("## Headline table")[1].split("\n## ")[0]
    body = [ln for ln in table.splitlines() if ln.startswith("| induction")]
    assert len(body) == 4 + 2  # one row per run + one mean ± sd row per lambda
    for r in results:  # every run's numbers are in its row, as formatted
        row = next(ln for ln in body if f"| {r['jreg.weight']:g} | {r['seed']} |" in ln)
        assert f"{r['val_loss']:.4f}" in row and f"{r['val_zeta_L']:.3f}" in row and f"{r['psi_L']:.4f}" in row
    base = [r for r in results if r["jreg.weight"] == 0]
    mean = sum(r["val_loss"] for r in base) / 2
    assert f"**{mean:.4f} ± " in next(ln for ln in body if "| 0 | **mean" in ln)
    assert all(f"({p.name})" in md for p in figs.values())
    # the summary: one row per lambda with the means over the seeds and the loss change against lambda = 0
    summary = study.summary_table(results)
    assert summary in md.split("## Summary")[1].split("## Headline table")[0]
    srows = summary.splitlines()[2:]
    assert len(srows) == 2 and srows[0].startswith("| induction | jump | 0 | 2 | ")
    one = [r for r in results if r["jreg.weight"] == 1]
    m1 = sum(r["val_loss"] for r in one) / 2
    z1 = sum(r["val_zeta_L"] for r in one) / 2
    assert f"| {m1:.4f} ± " in srows[1] and f"| {100 * (m1 - mean) / mean:+.2f} % |" in srows[1]
    assert f"| {z1:.3f} ± " in srows[1] and "(step 1)" in srows[1]


def test_readme_shows_the_summary_of_docs_results():
    """The README's results table is the Summary table of the committed docs/results.md, as written by
    `scripts/reproduce.py --docs docs/results.md --readme README.md` (never typed by hand)."""
    rep = _script()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(rep.README_START)[1].split(rep.README_END)[0].strip()
    assert block.startswith("| experiment | JREG | λ | seeds |")
    results_md = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert block == results_md.split("## Summary")[1].split("## Headline table")[0].strip().split("\n\n")[-1]


def test_readme_table_writer(tmp_path):
    rep = _script()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{rep.README_START}\nold\n{rep.README_END}\nafter\n")
    rep.write_readme_table(readme, "| a |\n|---|")
    assert readme.read_text() == f"# x\n\nbefore\n{rep.README_START}\n| a |\n|---|\n{rep.README_END}\nafter\n"
    bad = subprocess.run([sys.executable, "scripts/reproduce.py", "--out", str(tmp_path / "o"), "--readme",
                          str(tmp_path / "none.md"), "--dry-run"], cwd=REPO, env=env_for_subprocess(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no results-summary block" in bad.stderr.splitlines()[-1]


def test_compare_rule():
    a, b = study.Stat([1.0, 1.1]), study.Stat([2.0, 2.1])
    assert study.compare(a, b).verdict == "lower" and study.compare(b, a).verdict == "higher"
    assert study.compare(study.Stat([1.0, 2.5]), b).verdict == "noise"  # overlapping seed ranges
    assert study.compare(study.Stat([1.0]), b).verdict == "one seed"
    c = study.compare(study.Stat([1.0, 1.0]), study.Stat([1.0 + 1e-9, 1.0 + 1e-9]))
    assert c.verdict == "lower"  # no spread at all: any separation counts
    # paired by seed: a consistent per-seed shift is told apart even when the seeds themselves spread widely
    a, b = {1: 3.8602, 2: 3.7844}, {1: 3.8375, 2: 3.7690}
    assert study.compare(study.Stat(list(a.values())), study.Stat(list(b.values()))).verdict == "noise"
    p = study.paired(a, b)
    assert p.verdict == "higher" and p.diffs == pytest.approx([0.0227, 0.0154])
    assert "higher in 2 of 2 seeds: higher" in p.says(4)
    assert study.paired({1: 1.0, 2: 3.0}, {1: 2.0, 2: 2.0}).verdict == "noise"  # one up, one down
    assert study.paired({1: 1.0, 2: 1.1}, {1: 1.0, 2: 1.0}).verdict == "noise"  # one seed shows no change
    assert study.paired({1: 1.0, 3: 1.1}, {1: 1.0, 2: 1.0}) is None  # fewer than 2 common seeds


def test_cpu_plan_keeps_its_run_names(tmp_path):
    """The cpu study's run dirs are found again by a rerun only if the sweeps expand to the same job names."""
    from llama_jreg.train.cli import expand_sweep

    plan = _script().PLANS["cpu"]
    names = {sw.name: [n for _, n in expand_sweep(sw.overrides)] for sw in plan.sweeps}
    assert names["text_jump"] == [f"{i}_seed={s}_jreg.weight={w}" for i, (s, w) in
                                  enumerate((s, w) for s in (1, 2) for w in ("0", "0.01", "0.1", "1"))]
    assert names["text_modes"] == ["0_jreg=final_seed=1", "1_jreg=final_seed=2", "2_jreg=weighted_seed=1",
                                   "3_jreg=weighted_seed=2"]
    assert names["induction_jump"] == [f"{i}_seed={s}_jreg.weight={w}" for i, (s, w) in
                                       enumerate((s, w) for s in (1, 2) for w in ("0", "0.1", "1"))]
    assert names["e4_continued"] == [f"{i}_seed={s}_jreg.weight={w}" for i, (s, w) in
                                     enumerate((s, w) for s in (1, 2) for w in ("0", "1"))]


def test_cpu_plan_presets_keep_the_resolved_configs():
    """The cpu study's text and continued runs are ``experiment=text|continued`` + per-scale overrides now; every
    job resolves to the config it had when the same recipe was written out key by key (so existing runs resume
    unchanged). init_from stays unresolved here (resolving it fetches SmolLM2)."""
    from llama_jreg.config import compose, to_train_config
    from llama_jreg.train.cli import expand_sweep

    rep = _script()
    text_keys = ["model=tiny", "data=shakespeare", "data.seq_len=256", "data.micro_batch_size=8",
                 "trainer.max_steps=500", "optim.lr=1e-3", "schedule.warmup_steps=50", "trainer.jump_every=25",
                 "trainer.eval_every=100", "trainer.eval_batches=8", "trainer.ckpt_every=100", "trainer.keep_last=1",
                 "trainer.progress=false"]
    cont_keys = ["init_from=/m", "data=shakespeare", "data.seq_len=128", "data.micro_batch_size=4",
                 "trainer.max_steps=30", "optim.lr=1e-4", "schedule.warmup_steps=0", "trainer.jump_every=5",
                 "trainer.eval_every=5", "trainer.eval_batches=4", "trainer.ckpt_every=30", "trainer.keep_last=1",
                 "trainer.progress=false"]
    sweeps = {sw.name: sw for sw in rep.PLANS["cpu"].sweeps}
    checked = 0
    for name, old in [("text_jump", text_keys), ("text_modes", text_keys), ("e4_continued", cont_keys)]:
        sw = sweeps[name]
        assert sw.overrides[0] == f"experiment={'continued' if name == 'e4_continued' else 'text'}"
        mine = [o.replace(rep.SMOLLM2, "/m") for o in sw.overrides]
        for job, _ in expand_sweep(mine):
            axes = [o for o in job if o.startswith(("jreg", "seed"))]
            assert to_train_config(compose(job)) == to_train_config(compose(old + axes)), (name, axes)
            checked += 1
    assert checked == 8 + 4 + 4
    ind = sweeps["induction_jump"]
    assert ind.overrides[0] == "experiment=induction" and ind.experiment == "induction"


def test_wall_time_counts_parallel_lanes_once(tmp_path):
    """timing.jsonl rows of two lanes that overlap, then a later resumed invocation after a pause: the wall
    time is the union of the intervals (1.5 h + 0.5 h), not their sum and not first-to-last."""
    rep = _script()
    rep.record_stage(tmp_path, "train:a", 0.0, 3600.0, lanes=2, threads=1, rc=0)
    rep.record_stage(tmp_path, "train:b", 1800.0, 5400.0, lanes=2, threads=1, rc=0)
    rep.record_stage(tmp_path, "eval", 36000.0, 37800.0)
    line = rep.wall_time([{"train_time_s": 7200.0}, {"train_time_s": 3600.0}], tmp_path)
    assert line.startswith("2.00 h of running") and "2 lane(s) of 1 thread(s) each" in line
    assert "3.00 h of training summed" in line
    assert rep.wall_time([], tmp_path / "none").startswith("not recorded")
    (tmp_path / "x").mkdir()
    rep.record_stage(tmp_path / "x", "eval", 0.0, 360.0)  # a report-only invocation: no sweep stage
    assert rep.wall_time([], tmp_path / "x").startswith("the training was not timed by this script")


def test_dry_run_prints_every_command(tmp_path):
    out = subprocess.run([sys.executable, "scripts/reproduce.py", "--scale", "gpu", "--out", str(tmp_path / "o"),
                          "--dry-run"], cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.count("llama-jreg train -m model=small") == 1 and "init_from=" in out
    assert out.count("llama-jreg train -m experiment=induction trainer.progress=false jreg=jump") == 1
    assert "llama-jreg jump " in out and "llama-jreg eval RUN_DIR" in out
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    """The `test` scale (the quick pipeline on 2-layer models): sweeps, E1 on SmolLM2-135M, eval, report;
    a rerun reuses every run and evaluation."""
    out = tmp_path / "study"
    cmd = [sys.executable, "scripts/reproduce.py", "--scale", "test", "--out", str(out), "--docs",
           str(tmp_path / "docs" / "results.md"), "--lanes", "2", "--note", "Provenance: made by the test."]
    subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True, timeout=900, check=True)
    res = json.loads((out / "results.json").read_text())
    run_dirs = sorted(p.parent for p in out.glob("*/*/metrics.jsonl"))
    assert len(res["runs"]) == len(run_dirs) == 6
    md = (out / "report.md").read_text()
    for r in res["runs"]:
        jump, ev = rows(r["run_dir"], "jump"), rows(r["run_dir"], "eval")
        assert r["val_loss"] == ev[-1]["val_loss"] and r["val_zeta_L"] == jump[-1]["val_zeta_L"]
        assert r["psi"] == jump[-1]["psi"] and r["tokens"] == 6 * 2 * (64 if r["experiment"] == "induction" else 32)
        assert r["lens_loss"] and (r["experiment"] == "text") == ("induction_accuracy" not in r)
        assert f"{r['val_loss']:.4f}" in md
    (e1,) = res["e1"]
    assert e1["name"] == "SmolLM2-135M-Instruct" and len(e1["psi"]) == 30 and "SmolLM2-135M-Instruct" in md
    assert "### What our numbers support" in md and "## Headline table" in md
    timing = [json.loads(x) for x in (out / "timing.jsonl").read_text().splitlines()]
    assert {t["stage"] for t in timing} == {"train:text_jump", "train:induction_jump", "e1", "eval", "report"}
    assert all(t["lanes"] == 2 and t["rc"] == 0 for t in timing if t["stage"].startswith("train:"))
    assert (out / "logs" / "text_jump.log").is_file() and "2 lane(s)" in md
    assert "\n* Provenance: made by the test.\n" in md
    docs = (tmp_path / "docs" / "results.md").read_text()
    assert "](results/zeta_L_over_tokens_text.png)" in docs and (tmp_path / "docs" / "results" /
                                                                   "zeta_L_over_tokens_text.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("eval/*/*.json")}
    again = subprocess.run(cmd, cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True, timeout=900,
                           check=True).stdout
    assert "llama-jreg eval" not in again and "llama-jreg jump" not in again
    assert {p: p.stat().st_mtime_ns for p in out.glob("eval/*/*.json")} == stamps
    assert json.loads((out / "results.json").read_text())["runs"] == res["runs"]
