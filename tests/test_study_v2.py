"""The v2 study (docs/preregistration.md; llama_jreg/study/design.py, lanes.py, families.py, v2report.py): the
screening criterion and the extension rule on synthetic metrics rows, the 35 tests in 6 families, the decision
rule, --max-hours 0, the gpu plan's dry run, and (slow) the test scale end to end with the archive."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llama_jreg.analysis.stats import holm, sign_flip
from llama_jreg.study.design import DESIGNS, Design, grew, jobs, screen_outcome, screen_reading, selection
from llama_jreg.study.families import FAMILIES, T_ONLY, RegTest, build_tests, c3_summary, decide, emergence
from tests.test_train_helpers import REPO, env_for_subprocess

CPU = DESIGNS["cpu"]


def _jump_row(step: int, psi: list[float], post: float) -> dict:
    return {"kind": "jump", "step": step, "tokens": step * 512, "psi": psi, "zeta_L": 0.0, "psi_post_norm_L": post,
            "val_psi": psi, "val_zeta_L": 100 * max(0.0, psi[-1] - psi[-2]), "val_psi_post_norm_L": post}


def _screen_run(out: Path, seed: int, d_first: float, d_end: float, steps: int = 600) -> Path:
    """A screening run dir as the trainer writes it: config.yaml and logged jump rows every 60 steps, whose
    validation Psi_L - Psi_(L-1) is d_first at step 60 and d_end at the end."""
    run = out / "screen" / f"seed_{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"seed: {seed}\ntrainer:\n  max_steps: {steps}\n")
    rows = []
    for step in range(60, steps + 1, 60):
        d = d_first + (d_end - d_first) * (step - 60) / (steps - 60)
        rows.append(_jump_row(step, [0.2, 0.1, 0.05, 0.03, 0.02, 0.02 + d], 0.02 + d + 0.001))
    rows.insert(3, {"kind": "train", "step": 180, "loss": 3.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_criterion_reads_the_signed_jump_of_the_logged_rows(tmp_path):
    """D(600) >= 0.01 and D(600) > D(60), on the pre-norm signed value of the validation rows; an unfinished
    run is not screened yet."""
    cases = {1: (0.0, 0.02, True), 2: (0.03, 0.02, False), 3: (-0.01, 0.009, False), 4: (-0.05, 0.01, True)}
    for seed, (a, b, _) in cases.items():
        _screen_run(tmp_path, seed, a, b)
    r = screen_reading(tmp_path / "screen" / "seed_1")
    assert (r["first_step"], r["end_step"]) == (60, 600)
    assert r["end"]["D"] == pytest.approx(0.02) and r["first"]["D"] == pytest.approx(0.0)
    assert r["end"]["D_post"] == pytest.approx(0.021) and r["end"]["J2"] == pytest.approx(0.04 - 0.03)
    assert screen_outcome(CPU, tmp_path) == {s: want for s, (_, _, want) in cases.items()}
    short = _screen_run(tmp_path, 5, 0.0, 0.05, steps=600)
    (short / "metrics.jsonl").write_text("".join(ln + "\n" for ln in (short / "metrics.jsonl").read_text()
                                                 .splitlines()[:4]))  # stopped at step 180
    assert screen_reading(short) is None and 5 not in screen_outcome(CPU, tmp_path)
    assert grew({"first": {"D": 0.0}, "end": {"D": 0.01}}, 0.01) and not grew({"first": {"D": 0.01},
                                                                               "end": {"D": 0.01}}, 0.01)


def test_extension_rule_and_the_seeds_of_each_stage():
    def outcome(growers, n):
        return {s: s in growers for s in range(1, n + 1)}

    sel = selection(CPU, outcome({3, 7, 9, 12, 20, 21, 25, 30, 33, 38}, 40))  # 10 grew: no extension
    assert sel.screen_seeds == list(range(1, 41)) and sel.settled
    assert sel.arm_seeds == [3, 7, 9, 12, 20, 21, 25, 30, 33, 38] and sel.control_seeds == [1, 2, 4, 5, 6]
    eight = {3, 7, 9, 12, 20, 21, 25, 30}
    sel = selection(CPU, outcome(eight, 40))  # 8 < 9: seeds 41-60 next, not settled until they are screened
    assert sel.screen_seeds == list(range(1, 61)) and not sel.settled
    sel = selection(CPU, outcome(eight | {45, 50, 51, 52, 53, 54}, 60))
    assert sel.screen_seeds == list(range(1, 61)) and sel.settled
    assert sel.arm_seeds == sorted(eight | {45, 50, 51, 52})  # the first 12 in seed order
    assert selection(CPU, outcome(set(), 80)).screen_seeds == list(range(1, 81))  # never beyond 80
    assert selection(CPU, outcome({1}, 80)).settled
    # part-way: the arms wait for every seed before theirs; the count decides only once 1-40 are screened
    part = {1: True, 2: False, 4: True}
    sel = selection(CPU, part)
    assert sel.arm_seeds == [1] and sel.control_seeds == [2] and sel.screen_seeds == list(range(1, 41))
    todo, final = jobs(CPU, part)
    assert not final and [j.key for j in todo if j.stage == "arms"] == \
        ["arms/paper/seed_1", "arms/jump/seed_1", "arms/placebo/seed_1"]
    todo, final = jobs(CPU, outcome({3, 7, 9, 12, 20, 21, 25, 30, 33, 38}, 40))
    assert final and len(todo) == 40 + 3 * 10 + 2 * 5 + 15
    screen = next(j for j in todo if j.key == "screen/seed_7")
    assert screen.train_args(Path("/o")) == ["experiment=jump_emergence", "seed=7", "run.dir=/o/screen/seed_7",
                                             "resume=auto", "logger=none"]
    cont = next(j for j in todo if j.key == "continued/jump/seed_5")
    for o in ("trainer.max_steps=200", "data.seq_len=128", "data.micro_batch_size=2", "jreg.warmup_steps=50",
              "optim.lr=1e-4", "schedule.warmup_steps=0", "trainer.eval_every=10", "trainer.jump_every=10",
              "trainer.eval_batches=4", "data.val_sequences=256", "tasks=[cloze@256]", "jreg=jump", "jreg.weight=1"):
        assert o in cont.overrides, o
    assert cont.eval_args == ("--batches", "16") and cont.eval_json(Path("/o")) == Path(
        "/o/eval/continued/jump/seed_5.json")
    placebo = next(j for j in todo if j.key == "arms/placebo/seed_3")
    assert "optim.lr=1.25e-3" in placebo.overrides and not any(o.startswith("jreg") for o in placebo.overrides)


def _data(n_grow: int = 12, n_cont: int = 5, shift: float = 0.0, seed: int = 0) -> dict:
    """Synthetic readings of every arm: the penalties lower D by ``shift`` against lambda = 0 and the placebo."""
    rng = random.Random(seed)

    def rec(d):
        return {"D": d, "D_post": d + 0.001, "val_loss": 3 + rng.random() / 10, "lens_mid": 5 + rng.random(),
                "saving": rng.random() / 10, "loss_late": 3 + rng.random() / 10, "loss_early": 3.5 + rng.random() / 10,
                "cloze": rng.random(), "curve": {}}

    growers = list(range(1, 2 * n_grow + 1, 2))
    runs = {("screen", ""): {s: rec(0.02 + rng.random() / 100) for s in range(1, 41)}}
    for arm in ("placebo", "paper", "jump"):
        runs[("arms", arm)] = {s: rec(runs["screen", ""][s]["D"] - (shift if arm != "placebo" else 0.0)
                                      + rng.gauss(0, 0.001)) for s in growers}
    for arm in ("paper", "jump"):
        runs[("control", arm)] = {s: rec(0.0) for s in (2, 4, 6, 8, 10)}
    for arm in ("base", "paper", "jump"):
        runs[("continued", arm)] = {s: rec(0.1 - (shift if arm != "base" else 0) + rng.gauss(0, 0.001))
                                    for s in range(1, n_cont + 1)}
    screen = {s: {"first": {"D": 0.0, "D_post": 0.0, "J2": 0.0},
                  "end": {"D": 0.02 + rng.random() / 100, "D_post": 0.02, "J2": 0.01 + rng.random() / 100}}
              for s in range(1, 41)}
    return {"runs": runs, "screen": screen, "outcome": {s: s in growers for s in range(1, 41)}}


def test_35_tests_in_6_families_with_holm_on_both_p_values():
    tests = decide(build_tests(_data(shift=0.01), CPU))
    assert len(tests) == 35 == sum(FAMILIES.values())
    assert {f: sum(t.family == f for t in tests) for f in FAMILIES} == FAMILIES
    assert [t.stats.n for t in tests if t.family == "C2"] == [40] * 3
    assert all(t.stats.n == 12 for t in tests if t.label == "E3 growing")
    assert all(t.stats.n == 5 and t.e4 for t in tests if t.label == "E4 continued")
    assert sum(t.label.startswith("E3 control") for t in tests) == 2
    for fam in FAMILIES:  # Holm within the family, for the t p and the sign-flip p separately
        fam_tests = [t for t in tests if t.family == fam]
        assert [t.p_holm for t in fam_tests] == holm([t.stats.p for t in fam_tests])
        assert [t.p_sign_holm for t in fam_tests] == holm([t.p_sign for t in fam_tests])
        assert all(t.stats.ci_family[0] < t.stats.ci[0] for t in fam_tests if t.stats.sd > 1e-9)
    c2 = tests[0]
    assert c2.sign_how.startswith("monte carlo") and (c2.p_sign, c2.sign_how) == sign_flip(c2.diffs)
    # E3: 12 seeds, every penalty 0.01 below lambda = 0 and the placebo: resolved, supports C3, both streams
    c3 = [t for t in tests if t.family == "C3" and t.label == "E3 growing"]
    assert all(t.verdict == "lower" and t.reading == "supports" for t in c3)
    assert c3_summary(tests) == {a: "lowers the jump below the placebo on both streams" for a in ("paper", "jump")}
    # E4 (5 seeds): the sign-flip floor is 0.0625, so the t-test alone decides, labelled so
    e4 = [t for t in tests if t.family == "C3" and t.e4]
    assert all(t.p_sign >= 0.0625 and t.verdict == "lower" for t in e4)
    assert all(t.percent == pytest.approx(100 * sum(t.diffs) / len(t.diffs) / 0.1, rel=0.05) for t in e4)


def test_the_decision_needs_both_tests_except_in_e4():
    """Outside E4 a test whose t p passes but whose sign-flip p cannot is not resolved (both shown)."""
    diffs = {s: v for s, v in enumerate([1.0, 1.1, 0.9, 1.05, 1.0], 1)}  # n = 5: sign-flip p >= 0.0625
    zeros = {s: 0.0 for s in diffs}
    t3, t4 = RegTest("C4", "E3 growing", "val_loss", diffs, zeros), RegTest("C4", "E4 continued", "loss_late", diffs,
                                                                       zeros, e4=True)
    decide([t3, t4])
    assert t3.p_holm < 0.05 and t3.p_sign_holm >= 0.05
    assert t3.verdict == "not resolved" and "disagree" in t3.reading
    assert t4.verdict == "higher" and t4.reading == "contradicts"
    lens = RegTest("C5", "E3 growing", "saving", {s: v for s, v in enumerate(range(1, 13), 1)},
                {s: 0.0 for s in range(1, 13)})
    decide([lens])
    assert lens.verdict == "higher" and lens.reading == "supports"  # a larger saving supports C5
    missing = RegTest("C6", "E4 continued", "cloze", {1: 0.5}, {1: 0.4}, e4=True)
    decide([missing])
    assert missing.verdict == "missing" and missing.stats is None


def test_emergence_rate_over_all_and_new_seeds():
    data = {"outcome": {s: s in (1, 4, 12, 30) for s in range(1, 41)}}
    em = emergence(data, CPU)
    assert (em["all"]["k"], em["all"]["n"], em["new"]["k"], em["new"]["n"]) == (4, 40, 2, 30)
    lo, hi = em["all"]["ci"]
    assert lo == pytest.approx(0.0396, abs=1e-4) and hi == pytest.approx(0.2305, abs=1e-4)  # by hand: 0.1350 ± 0.0955


def _reproduce(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/reproduce.py", *args], cwd=REPO, env=env_for_subprocess(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_max_hours_0_starts_nothing_and_reports_partial(tmp_path):
    out = tmp_path / "o"
    p = _reproduce("--scale", "test", "--out", str(out), "--max-hours", "0", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not (out / "screen").exists() and not (out / "logs").exists()
    md = (out / "report.md").read_text()
    assert "**partial: 0 of " in md and "| screen | 0 | 0 | 3 |" in md
    p = _reproduce("--scale", "test", "--out", str(out), "--max-hours", "-1", timeout=300)
    assert p.returncode == 2 and "error: argument" not in p.stderr and "--max-hours -1" in p.stderr


def test_gpu_and_cpu_dry_runs_print_every_stage(tmp_path):
    for scale, seeds in (("cpu", "seeds 1-40"), ("gpu", "seeds 1-64")):
        p = _reproduce("--scale", scale, "--out", str(tmp_path / "o"), "--dry-run", timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        for stage in ("screen/seed_1", "arms/paper/", "arms/jump/", "arms/placebo/", "control/paper/",
                      "control/jump/", "continued/base/", "continued/paper/", "continued/jump/"):
            assert f"run.dir={tmp_path}/o/{stage}" in p.stdout, (scale, stage)
        assert f"# screen: {seeds}" in p.stdout and p.stdout.count("--unit-gain-lens") == 9
    assert "jreg.warmup_steps=200" in p.stdout and "trainer.max_steps=1000" in p.stdout
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_test_scale_end_to_end_resumes_and_regenerates_from_the_archive(tmp_path):
    """screen -> arms -> control -> continued, each run evaluated and archived; the report (complete: also
    --docs); a rerun starts nothing; a fresh output dir restored from the archive regenerates the report byte
    for byte without training or evaluating."""
    out, arch, docs = tmp_path / "out", tmp_path / "arch", tmp_path / "docs" / "results.md"
    args = ["--scale", "test", "--out", str(out), "--archive", str(arch), "--lanes", "2", "--docs", str(docs)]
    (docs.parent / "results").mkdir(parents=True)
    (docs.parent / "results" / "an_earlier_report.png").write_bytes(b"png")  # replaced, not kept beside it
    p = _reproduce(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted(f.name for f in (docs.parent / "results").iterdir()) == ["e4_val_loss.png"]
    design: Design = DESIGNS["test"]
    oc = screen_outcome(design, out)
    todo, final = jobs(design, oc)
    assert final and all((out / "eval" / j.rel / f"seed_{j.seed}.json").is_file() for j in todo)
    md = (out / "report.md").read_text()
    assert "partial" not in md and docs.read_text() == md.replace("figures/e4_val_loss.png", "results/e4_val_loss.png")
    assert md.count("\n| C") + md.count("\n| P |") == 35 and T_ONLY in md
    assert not list(arch.rglob("checkpoints")) and not list(arch.rglob("*.pt"))
    again = _reproduce(*args)
    assert again.returncode == 0 and "training" not in again.stdout and "0 run(s) started" in again.stdout
    fresh = tmp_path / "fresh"
    p = _reproduce("--scale", "test", "--out", str(fresh), "--archive", str(arch), "--report-only")
    assert p.returncode == 0 and f"restored {len(todo)} complete run(s)" in p.stdout
    assert (fresh / "report.md").read_text() == md
    shutil.rmtree(fresh)


def test_percent_of_the_reference_mean_only_where_that_mean_is_positive():
    a = {1: 0.03, 2: 0.01, 3: 0.02}
    t = RegTest("C2", "x", "D", a, {s: 0.0 for s in a}, ref={1: 0.02, 2: 0.01, 3: 0.03})
    t.pair()
    assert t.percent == pytest.approx(100 * 0.02 / 0.02)
    for ref in ({1: -0.01, 2: -0.02, 3: 0.0}, {1: 0.0, 2: 0.0, 3: 0.0}):  # a negative or zero mean
        t = RegTest("C2", "x", "D", a, {s: 0.0 for s in a}, ref=ref)
        t.pair()
        assert t.diffs and t.percent is None


def test_descriptive_cells_read_both_streams_and_the_hinges():
    from llama_jreg.study.cells import cell_rows, psi_rows, zeta_upto

    psi = [0.4, 0.1, 0.02, 0.01, 0.03, 0.05]          # L = 6
    assert zeta_upto(psi, 6) == pytest.approx(100 * 0.02)          # ζ_L: the last step alone
    assert zeta_upto(psi, 5) == pytest.approx(100 * (0.02 + 0.02))  # ζ_{L−1}: the last two
    assert zeta_upto(psi, 1) == pytest.approx(100 * (0.02 + 0.02))  # the falls count 0
    rec = {"psi": psi, "D": 0.02, "D_post": 0.05, "J2": 0.04, "zeta_L": 2.0, "zeta_L_post": 5.0, "val_loss": 4.0,
           "lens_mid": 6.0, "lens_mid_usual": 6.5, "saving": 0.3, "saving_usual": 0.25}
    other = {**rec, "psi": [0.4, 0.1, 0.02, 0.01, 0.03, 0.01], "D": -0.02, "D_post": 0.0, "zeta_L": 0.0,
             "zeta_L_post": 0.0, "val_loss": 5.0}
    data = {"runs": {("screen", ""): {1: rec, 2: other}, ("arms", "paper"): {1: other}}}
    rows = cell_rows(data)
    every = next(r for r in rows if r.startswith("| E2: λ = 0, every screened seed |")).split(" | ")
    # n, Ψ_L (0.05, 0.01), Ψ_L^post = Ψ_L + D^post − D (0.08, 0.03), ζ_L, ζ_L^post, ζ_{L−1} (4, 2), ..., val loss
    assert every[1:8] == ["2", "0.0300", "0.0550", "1.00", "2.50", "3.00", "0.0000"]
    assert every[10] == "4.5000"
    assert any(r.startswith("| E3 growing: paper | 1 |") for r in rows)
    assert any(r.startswith("| E3 growing: λ = 0 | 1 | 0.0500 |") for r in rows)  # seed 1's λ = 0 run only
    assert not any("E4" in r for r in rows)                           # no run, no row
    layers = next(r for r in psi_rows(data) if r.startswith("| E2")).removesuffix(" |").split(" | ")
    assert layers[1:8] == ["6", "0.4000", f"{(0.1 + 0.02 + 0.01) / 3:.4f}", "0.0100", "0.0300", "0.0300", "0.0550"]


def test_summary_says_what_each_claim_got_resolved_open_or_missing():
    from llama_jreg.study.v2report import summary_section

    seeds = range(1, 13)
    rng = random.Random(0)
    lam0 = {s: 4.0 + rng.random() / 10 for s in seeds}
    tests = [RegTest("C4", "E3 growing", "val_loss", {s: lam0[s] - 0.05 - rng.random() / 100 for s in seeds}, lam0,
                     arm="paper", vs="λ = 0"),                                   # lower in all 12: resolved
             RegTest("C4", "E3 growing", "val_loss", {s: lam0[s] + rng.gauss(0, 0.05) for s in seeds}, lam0,
                     arm="jump", vs="λ = 0"),                                    # noise: not resolved
             RegTest("C4", "E3 control", "val_loss", {}, lam0, arm="paper", vs="λ = 0")]  # no runs: missing
    decide(tests)
    assert [t.verdict for t in tests] == ["lower", "not resolved", "missing"]
    em = {"all": {"k": 4, "n": 40, "ci": (0.04, 0.23)}}
    lines = summary_section(tests, em, None)
    c4 = next(line for line in lines if line.startswith("* **C4**"))
    assert "(3 tests)" in c4 and "Resolved: E3 growing: val loss, paper vs λ = 0: supports." in c4
    assert f"1 not resolved (the smallest difference each could detect: E3 growing: val loss, jump vs λ = 0: " \
           f"{tests[1].stats.mde:.4f})" in c4 and "1 missing" in c4
    assert "in 4 of 40 screened seeds (95 % Wilson interval 4.0–23.0 %)" in lines[2]
    assert not any(line.startswith("* **C1**") for line in lines)  # no E1 reading, no C1 line


def test_compute_counts_parallel_lanes_once_and_adds_runs_trained_outside_make_reproduce(tmp_path):
    from llama_jreg.study.v2report import compute_line

    def row(stage, start, end):
        return json.dumps({"stage": stage, "start": start, "end": end, "lanes": 2, "threads": 1, "rc": 0})

    # two lanes side by side (0-3600 and 1800-5400: 1.5 h), a report row (not compute), an eval of a run
    # trained by hand (its training, 2 rows of 100 steps at 9 s and 27 s a step = 1 h, comes from its log)
    (tmp_path / "timing.jsonl").write_text("\n".join([
        row("train:screen/seed_2", 0, 3600), row("train:arms/paper/seed_2", 1800, 5400), row("report", 0, 90000),
        row("eval:screen/seed_1", 7200, 7200 + 360)]) + "\n")
    run = tmp_path / "screen" / "seed_1"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"kind": "train", "step": 100, "step_time_s": 9.0}, {"kind": "train", "step": 100, "step_time_s": 9.0},
        {"kind": "eval", "step": 100, "val_loss": 4.0}, {"kind": "train", "step": 200, "step_time_s": 27.0}]))
    line = compute_line(tmp_path, 6.0)
    assert line.startswith("* **Compute**: 2.60 h (registered: ≤ 6 h): 1.60 h while `make reproduce`"), line
    assert "and 1.00 h of training of 1 run(s) made one at a time outside it" in line
    (tmp_path / "timing.jsonl").unlink()
    assert compute_line(tmp_path).startswith("* **Compute**: 0.00 h: 0.00 h while")


def test_results_md_is_the_report_of_the_committed_archive(tmp_path):
    """docs/results.md and its figure are what `make reproduce` writes from the committed archive docs/study/v2,
    byte for byte: every run restored from the archive (so nothing is trained or evaluated), the report a
    function of the runs' files alone."""
    from llama_jreg.study.archive import restore
    from llama_jreg.study.cli import write_report

    design = DESIGNS["cpu"]
    out, docs = tmp_path / "out", tmp_path / "docs" / "results.md"
    n = restore(REPO / "docs" / "study" / "v2", out, lambda msg: None)
    todo, final = jobs(design, screen_outcome(design, out))
    assert final and n == len(todo) == 92
    write_report(design, "cpu", out, str(docs))
    assert docs.read_text(encoding="utf-8") == (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in (docs.parent / "results").iterdir()) == \
        sorted(p.name for p in (REPO / "docs" / "results").glob("*.png")) == ["e4_val_loss.png"]
