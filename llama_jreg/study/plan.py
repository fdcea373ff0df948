"""The study's run plan: which sweeps each scale makes (:data:`PLANS`: ``quick``, ``cpu``, ``gpu`` and the
hidden ``test``), the cells of an experiment (:func:`_cells`), the ``--smoke`` substitute, and the order the
runs start in (:func:`plan_jobs`).

Run names are Hydra sweep job names (``<i>_seed=S_jreg.weight=W``); they must not change between versions of
the plan, or a rerun starts the runs again instead of resuming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llama_jreg.train.command import expand_sweep

SMOLLM2 = "@smollm2"  # stands for the cached SmolLM2-135M HF dir (llama_jreg.interop.smollm2.smollm2_dir())


@dataclass
class Sweep:
    """One ``llama-jreg train -m`` invocation: ``overrides`` (with comma lists) into ``OUT/<name>``."""

    name: str
    overrides: list[str]
    experiment: str = "text"
    tier: int = 0  # the order runs start in: tier 0 (the key cells) before tier 1 (the grids)


@dataclass
class Plan:
    sweeps: list[Sweep] = field(default_factory=list)
    e1_models: list[str] = field(default_factory=lambda: [SMOLLM2])
    e1_seq_len: int = 256
    e1_num_seqs: int = 8
    about: str = ""
    lanes: int = 1  # parallel runs when --lanes is not given
    eval_args: list[str] = field(default_factory=list)  # extra `llama-jreg eval` arguments (quick: fewer batches)


# the hidden `test` scale: the whole pipeline on 2-layer models in a minute or two (tests/test_reproduce.py)
_TEST_COMMON = ["model=tiny", "model.n_layers=2", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
                "model.ffn_dim=128", "model.max_seq_len=64", "data.seq_len=32", "data.micro_batch_size=2",
                "trainer.max_steps=6", "optim.lr=3e-3", "schedule.warmup_steps=2", "trainer.jump_every=2",
                "trainer.eval_every=3", "trainer.eval_batches=2", "trainer.ckpt_every=6", "trainer.keep_last=1",
                "trainer.progress=false", "trainer.plots=false"]

# the cpu study's experiments (issue 24): from scratch where the jump grows (cloze at the end), the induction
# recipe (induction accuracy from `llama-jreg eval`) and SmolLM2-135M continued (cloze at step 0 and at the end)
_END_TASKS = ["tasks=[cloze]", "trainer.task_every=100000"]  # at the end (and step 0 of init_from runs) only
_STUDY = {"jump_emergence": ("je", ["experiment=jump_emergence", *_END_TASKS]),
          "induction": ("ind", ["experiment=induction"]),
          "continued": ("cont", ["experiment=continued", f"init_from={SMOLLM2}", *_END_TASKS])}


def _cells(experiment: str, key_seeds: str = "1,2,3,4,5", grid_seeds: str = "1,2,3",
           extra: tuple[str, ...] = (), name: str | None = None) -> list[Sweep]:
    """The study's cells of one experiment: the key comparison, lambda = 0 (``<name>_base``) against the
    paper-literal penalty (``jreg=paper``: 1 - cos(h_{L-1}, final_norm(h_L)), ``<name>_paper``) at lambda = 1
    on ``key_seeds``; then the paper penalty at lambda = 0.1 and 10 (``<name>_paper_grid``: with lambda = 1 a
    grid of 3) and our default penalty (``jreg=jump`` at lambda = 1, ``<name>_jump``) on ``grid_seeds``. Seeds
    pair across cells: seed k of every cell starts from the same initialisation and sees the same batches."""
    short, preset = _STUDY[experiment]
    name = name or short
    common = [*preset, "trainer.progress=false", *extra]
    return [Sweep(f"{name}_base", common + ["jreg=jump", "jreg.weight=0", f"seed={key_seeds}"], experiment),
            Sweep(f"{name}_paper", common + ["jreg=paper", "jreg.weight=1", f"seed={key_seeds}"], experiment),
            Sweep(f"{name}_paper_grid", common + ["jreg=paper", "jreg.weight=0.1,10", f"seed={grid_seeds}"],
                  experiment, tier=1),
            Sweep(f"{name}_jump", common + ["jreg=jump", "jreg.weight=1", f"seed={grid_seeds}"], experiment, tier=1)]


_CPU = {e: _cells(e) for e in ("continued", "jump_emergence", "induction")}
_QUICK = {"jump_emergence": ("trainer.max_steps=150", "trainer.jump_every=30"),
          "induction": ("trainer.max_steps=120", "schedule.warmup_steps=12"),
          "continued": ("trainer.max_steps=8", "trainer.jump_every=2", "trainer.eval_every=4",
                        "trainer.ckpt_every=8")}

def _gpu() -> list[Sweep]:
    """The gpu plan's sweeps, at most 5 runs each so that 16 processes share the work evenly: the key cells of
    jump_emergence (6 and 12 layers) and induction on seeds 1-10 (two sweeps each, ``_b`` = seeds 6-10), then
    the grids on seeds 1-5 (the paper penalty's two other lambdas as two sweeps)."""
    key = []
    for seeds, b in (("1,2,3,4,5", ""), ("6,7,8,9,10", "_b")):
        key += [Sweep(sw.name + b, sw.overrides, sw.experiment)
                for sw in (_cells("jump_emergence", seeds)[:2] + _cells("induction", seeds)[:2]
                           + [Sweep(sw.name, sw.overrides, "jump_emergence_12_layers") for sw in
                              _cells("jump_emergence", seeds, extra=("model.n_layers=12",), name="jed")[:2]])]
    grid = []
    for exp in ("jump_emergence", "induction"):
        paper_grid, jump = _cells(exp, grid_seeds="1,2,3,4,5")[2:]
        grid += [Sweep(f"{paper_grid.name}_{w}", [o.replace("0.1,10", w) for o in paper_grid.overrides], exp)
                 for w in ("0.1", "10")] + [jump]
    return key + grid


# --smoke: the same plan (sweeps, names, cells) with a tiny substitute for every run, one seed a cell, on CPU
_SMOKE = ["model.dim=64", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_dim=128", "data.seq_len=32",
          "data.micro_batch_size=2", "trainer.max_steps=4", "schedule.warmup_steps=1", "trainer.jump_every=2",
          "trainer.eval_every=2", "trainer.eval_batches=1", "trainer.ckpt_every=4", "trainer.task_n=8",
          "trainer.device=cpu", "trainer.plots=false"]


def smoke(plan: Plan) -> Plan:
    """``plan`` with :data:`_SMOKE` replacing (or added to) every sweep's overrides and each seed list cut to
    its first seed: every sweep, cell and stage runs, in a minute or two on a CPU (tests/test_reproduce.py)."""
    def key(o: str) -> str:
        return o.split("=", 1)[0]

    sweeps = []
    for sw in plan.sweeps:
        mine = {key(o): o for o in _SMOKE}
        ovs = [mine.pop(key(o), o) for o in sw.overrides]
        ovs = [f"seed={o.split('=', 1)[1].split(',')[0]}" if key(o) == "seed" else o for o in ovs]
        sweeps.append(Sweep(sw.name, ovs + list(mine.values()), sw.experiment))
    return Plan(sweeps, plan.e1_models, 64, 2, f"{plan.about} -- smoke substitute", min(plan.lanes, 2), ["--batches", "1"])


PLANS: dict[str, Plan] = {
    "quick": Plan([sw for e, extra in _QUICK.items() for sw in _cells(e, "1", "1", extra)[:2]],
                  eval_args=["--batches", "2"],
                  about="the cpu study's three experiments with one seed, lambda = 0 against the paper penalty "
                        "only, on shortened runs evaluated on 2 validation batches (a check of the pipeline, not "
                        "a result)"),
    # sweep order = the order `--lanes N` starts them in: the key cells (5 seeds) first, the longest
    # (continued) leading, then the grids (3 seeds)
    "cpu": Plan([_CPU[e][i] for i in (0, 1, 2, 3) for e in _CPU],
                about="the jump from scratch (experiment=jump_emergence), induction heads (experiment=induction) "
                      "and SmolLM2-135M continued (experiment=continued); lambda = 0 against the paper penalty at "
                      "lambda = 1 on 5 seeds each, the paper penalty at lambda = 0.1 and 10 and our default "
                      "(jump, lambda = 1) on 3 seeds (about 3.5 hours on 2 CPU cores with --lanes 2)"),
    "gpu": Plan(_gpu(), e1_models=[], lanes=16,
                about="one H200-class GPU without network, 16 runs at a time as processes sharing it: the cpu "
                      "study's from-scratch experiments with 10 seeds in the key cells and 5 in the grid, plus "
                      "jump_emergence with 12 layers (key cells only); no continued pre-training (SmolLM2's "
                      "538 MB of weights cannot travel in the 64 MiB a device call carries); data carried in "
                      "(--bundle); planned for <= 8 minutes, not yet run on a GPU"),
    "test": Plan([Sweep("text_jump", _TEST_COMMON + ["data=shakespeare", "jreg=jump", "seed=1,2", "jreg.weight=0,1"]),
                  Sweep("induction_jump", ["experiment=induction", *_TEST_COMMON, "model.vocab_size=64",
                                           "data.seq_len=64", "data.induction.num_val=8", "jreg=jump", "seed=1",
                                           "jreg.weight=0,1"], experiment="induction")],
                 e1_seq_len=64, e1_num_seqs=2, about="tests only"),
}
COMMANDS = {"cpu": "make reproduce"}


def plan_jobs(plan: Plan, out: Path, only: set[str] | None = None) -> list[tuple[Sweep, list[str], str, Path]]:
    """Every run of the plan as (sweep, job overrides, job name, run dir), in the order lanes start them:
    the key cells (``Sweep.tier`` 0) before the grids, and within a tier seed by seed across the sweeps (seed 1
    of every key cell, then seed 2, ...), so a study stopped part-way has whole paired seeds."""
    jobs = []
    for k, sw in enumerate(plan.sweeps):
        if only and sw.name not in only:
            continue
        for i, (ovs, name) in enumerate(expand_sweep(sw.overrides)):
            jobs.append(((sw.tier, i, k), (sw, ovs, name, out / sw.name / name)))
    return [job for _, job in sorted(jobs, key=lambda j: j[0])]


def data_configs(plan: Plan) -> list[str]:
    """The distinct data preparations the plan's runs read (one ``prepare-data`` override string each: the
    sweep's first job without its JREG and seed choices, with the experiment's SmolLM2 runs left out)."""
    seen: list[str] = []
    for sw in plan.sweeps:
        job = expand_sweep(sw.overrides)[0][0]
        keep = " ".join(o for o in job if not o.startswith(("jreg", "seed=", "trainer.", "tasks=", "init_from=")))
        if SMOLLM2 not in " ".join(job) and keep not in seen:
            seen.append(keep)
    return seen
