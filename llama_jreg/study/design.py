"""The v2 study's design (docs/preregistration.md): its stages, seeds and arms per scale (:data:`DESIGNS`),
the screening criterion and the extension rule read from the logged jump rows (:func:`screen_reading`,
:func:`selection`), and every run of the study as a :class:`Job` (:func:`jobs`).

Layout under ``OUT`` (fixed: a rerun finds its runs again by these paths):
``screen/seed_K`` (lambda = 0, E2; also the lambda = 0 arm of E3), ``arms/{paper,jump,placebo}/seed_K`` (E3),
``control/{paper,jump}/seed_K`` (E3 negative control), ``continued/{base,paper,jump}/seed_K`` (E4),
``eval/<stage>[/<arm>]/seed_K.json`` (``llama-jreg eval --unit-gain-lens``), ``e1/`` (``llama-jreg jump``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from llama_jreg.rows import read_metrics
from llama_jreg.study.plan import SMOLLM2
from llama_jreg.study.results import read_json

_COMMON = ["resume=auto", "logger=none"]
# E3: the penalties at lambda = 1 and the placebo (lambda = 0, lr x 1.25 of jump_emergence's 1e-3)
ARMS = {"paper": ["jreg=paper", "jreg.weight=1"], "jump": ["jreg=jump", "jreg.weight=1"],
        "placebo": ["optim.lr=1.25e-3"]}
CONTROL = {"paper": ARMS["paper"], "jump": ARMS["jump"]}
CONTINUED_ARMS = {"base": ["jreg=off"], "paper": ARMS["paper"], "jump": ARMS["jump"]}
# E4 as registered (with amendment A1: eval and jump rows every 10 steps); cloze at the end only (the trainer
# also evaluates it at step 0 of an init_from run)
CONTINUED = ["experiment=continued", f"init_from={SMOLLM2}", "trainer.max_steps=200", "data.seq_len=128",
             "data.micro_batch_size=2", "jreg.warmup_steps=50", "optim.lr=1e-4", "schedule=cosine",
             "schedule.warmup_steps=0", "trainer.eval_every=10", "trainer.jump_every=10", "trainer.eval_batches=4",
             "data.val_sequences=256", "tasks=[cloze@256]", "trainer.task_every=100000", "trainer.ckpt_every=100",
             "trainer.keep_last=1", "trainer.progress=false"]


@dataclass
class Design:
    """One scale of the study. Counts and rules follow the registration at ``cpu``; other scales shorten them."""

    screen: list[str]                     # the screening command's overrides (before seed and run.dir)
    seeds: int = 40                       # seeds 1..seeds screened first
    block: int = 20                       # the extension rule: blocks of this many more seeds ...
    max_seeds: int = 80                   # ... up to this many in all
    min_growers: int = 9                  # ... until this many meet the criterion
    n_arms: int = 12                      # E3 on the first n_arms growing seeds
    n_control: int = 5                    # the negative control on the first n_control non-growing seeds
    threshold: float = 0.01               # the criterion: D(end) >= threshold and D(end) > D(first)
    arm_extra: list[str] = field(default_factory=list)  # added to every E3 / control run (after ARMS)
    continued: list[str] = field(default_factory=lambda: list(CONTINUED))
    continued_seeds: int = 5
    continued_eval: list[str] = field(default_factory=lambda: ["--batches", "16"])
    screen_eval: list[str] = field(default_factory=list)
    e1_models: list[str] = field(default_factory=lambda: [SMOLLM2])
    e1_seq_len: int = 256
    e1_num_seqs: int = 32
    first_new_seed: int = 11              # seeds below it are the 2026-12-04 search's (the recipe's) seeds
    lanes: int = 2
    about: str = ""
    e4_late: tuple[int, ...] = (160, 180, 200)   # C4's E4 loss: the mean of these evaluations
    e4_early: tuple[int, ...] = (60, 80, 100)    # the gap narrowing: late gap - early gap
    e4_show: tuple[int, ...] = (50, 100, 150, 200)  # the report's table of the curves
    budget_h: float | None = None         # the registered compute budget (hours on 2 cores), if any


_JE = ["experiment=jump_emergence"]
# the hidden test scale: 4-layer models (J2 needs L >= 3, a middle layer h_2..h_(L-2) L >= 4) of 8 steps
_TINY = ["model=tiny", "model.n_layers=4", "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
         "model.ffn_dim=128", "model.max_seq_len=64", "data.seq_len=32", "data.micro_batch_size=2",
         "trainer.max_steps=8", "schedule.warmup_steps=2", "trainer.jump_every=2", "trainer.eval_every=2",
         "trainer.eval_batches=2", "trainer.ckpt_every=8", "trainer.plots=false", "trainer.progress=false"]
_QUICK = ["trainer.max_steps=60", "trainer.jump_every=20", "trainer.eval_every=60", "trainer.ckpt_every=60",
          "trainer.plots=false", "schedule.warmup_steps=10"]
_QUICK_CONT = ["trainer.max_steps=12", "trainer.eval_every=4", "trainer.jump_every=4", "jreg.warmup_steps=4",
               "data.val_sequences=32", "tasks=[cloze@32]", "trainer.ckpt_every=12"]
_GPU_DATA = ["data.seq_len=512", "data.micro_batch_size=8"]

DESIGNS: dict[str, Design] = {
    "cpu": Design(_JE, about="the registered design (docs/preregistration.md): 40+ seeds screened at lambda = 0 "
                             "(jump_emergence), paper / jump / placebo on the first 12 growing seeds, paper / jump "
                             "on the first 5 non-growing, SmolLM2-135M-Instruct continued 200 steps (5 seeds x 3 "
                             "arms); two lanes of one thread each, about 6 h on 2 cores, in chunks (--max-hours)",
                  budget_h=6.0),
    "quick": Design([*_JE, *_QUICK], seeds=4, block=2, max_seeds=6, min_growers=1, n_arms=2, n_control=1,
                    threshold=-math.inf,
                    continued=[*CONTINUED, *_QUICK_CONT], continued_seeds=1, continued_eval=["--batches", "2"],
                    screen_eval=["--batches", "2"], e1_num_seqs=4, e4_late=(12,), e4_early=(4,),
                    e4_show=(4, 8, 12),
                    about="a smoke of every stage (4 seeds of 60 steps screened with the criterion D(end) > D(first) "
                          "alone, E3 on 2 growers, the control on 1, E4 12 steps on 1 seed): checks the pipeline, "
                          "no claims"),
    "gpu": Design([*_JE, *_GPU_DATA, "trainer.max_steps=2000", "trainer.jump_every=100", "trainer.eval_every=500",
                   "trainer.ckpt_every=1000"], seeds=64, block=32, max_seeds=128, min_growers=16, n_arms=24,
                  n_control=10, continued=[*CONTINUED, "trainer.max_steps=1000", "data.micro_batch_size=8",
                                           "jreg.warmup_steps=200", "trainer.eval_every=50", "trainer.jump_every=50",
                                           "data.val_sequences=1024", "tasks=[cloze@1024]"],
                  continued_seeds=10, continued_eval=["--batches", "64"], e4_late=(800, 900, 1000),
                  e4_early=(300, 400, 500), e4_show=(200, 500, 800, 1000), lanes=16,
                  about="the same design at GPU sizes (a plan, not yet run): 64+ seeds of 2000 steps of 8 x 512 "
                        "tokens screened, placebo, both streams, 24 growers, continued 1000 steps with a 200-step "
                        "ramp on 10 seeds; 16 runs at a time"),
    "test": Design([*_JE, *_TINY], seeds=3, block=1, max_seeds=4, min_growers=2, n_arms=2, n_control=1,
                   threshold=-math.inf, continued=[*_JE, *_TINY, "jreg.warmup_steps=2", "tasks=[cloze@8]",
                                                   "trainer.task_every=100000"],
                   continued_seeds=1, continued_eval=["--batches", "2"], screen_eval=["--batches", "2"],
                   e1_models=[], e4_late=(6, 8), e4_early=(2, 4), e4_show=(2, 4, 6, 8), first_new_seed=3,
                   about="tests only: 4-layer models of 8 steps; the criterion is D(end) > D(first) alone"),
}


@dataclass(frozen=True)
class Job:
    """One run of the study: ``llama-jreg train OVERRIDES seed=K run.dir=OUT/<stage>[/<arm>]/seed_K ...``,
    then ``llama-jreg eval RUN --unit-gain-lens --json OUT/eval/<stage>[/<arm>]/seed_K.json EVAL_ARGS``."""

    stage: str        # screen | arms | control | continued
    arm: str          # "" for screen (lambda = 0)
    seed: int
    overrides: tuple[str, ...]
    eval_args: tuple[str, ...] = ()

    @property
    def rel(self) -> str:
        return "/".join(p for p in (self.stage, self.arm) if p)

    @property
    def key(self) -> str:
        return f"{self.rel}/seed_{self.seed}"

    def run_dir(self, out: Path) -> Path:
        return out / self.rel / f"seed_{self.seed}"

    def eval_json(self, out: Path) -> Path:
        return out / "eval" / self.rel / f"seed_{self.seed}.json"

    def train_args(self, out: Path) -> list[str]:
        return [*self.overrides, f"seed={self.seed}", f"run.dir={self.run_dir(out)}", *_COMMON]


# ------------------------------------------------------------------------------------- screening criterion


def jump_rows(metrics: Path) -> list[dict]:
    """The run's logged jump rows with a validation reading, one per step (a resumed run's repeat: the last)."""
    rows = [r for r in read_metrics(metrics) if r.get("kind") == "jump" and r.get("val_psi")]
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def signed(row: dict) -> dict:
    """D, D_post and J2 (docs/preregistration.md, Notation) of one logged jump row's validation reading."""
    psi = row["val_psi"]
    post = row.get("val_psi_post_norm_L")
    return {"D": psi[-1] - psi[-2], "D_post": None if post is None else post - psi[-2],
            "J2": max(psi[-2], psi[-1]) - psi[-3] if len(psi) >= 3 else None}


def screen_reading(run: Path, max_steps: int | None = None) -> dict | None:
    """The screening run's signed jumps at its first logged measurement and at the end; None until the run has
    logged its last step (``max_steps``: from its config.yaml when not given)."""
    try:
        rows = jump_rows(run / "metrics.jsonl")
        if max_steps is None:
            from omegaconf import OmegaConf  # deferred: only where the run's config is read

            max_steps = int(OmegaConf.load(run / "config.yaml").trainer.max_steps)
    except (OSError, ValueError, KeyError):
        return None
    if len(rows) < 2 or rows[-1]["step"] < max_steps:
        return None
    return {"first_step": rows[0]["step"], "end_step": rows[-1]["step"], "first": signed(rows[0]),
            "end": signed(rows[-1])}


def grew(reading: dict, threshold: float) -> bool:
    """The registered criterion: D(end) >= threshold and D(end) > D(first) (pre-norm, signed)."""
    d0, d1 = reading["first"]["D"], reading["end"]["D"]
    return d1 >= threshold and d1 > d0


@dataclass
class Selection:
    """What the screening decides so far: the seeds to screen (the extension rule), the growing and
    non-growing seeds in seed order up to the first unscreened seed, and whether the screening is settled."""

    screen_seeds: list[int]
    growers: list[int]
    others: list[int]
    settled: bool          # every seed to screen is screened and the extension rule needs no more
    arm_seeds: list[int]   # the first n_arms growers (known so far)
    control_seeds: list[int]


def selection(design: Design, outcome: dict[int, bool]) -> Selection:
    """Apply the extension rule and the arm / control choice to the screening ``outcome`` (seed -> grew) known
    so far. The extension rule reads the count of growers alone: while fewer than ``min_growers`` of the
    screened seeds grew, ``block`` more seeds are screened, up to ``max_seeds``."""
    n = design.seeds
    while n < design.max_seeds and all(s in outcome for s in range(1, n + 1)) and \
            sum(outcome[s] for s in range(1, n + 1)) < design.min_growers:
        n = min(design.max_seeds, n + design.block)
    seeds = list(range(1, n + 1))
    growers, others = [], []
    for s in seeds:  # in seed order, up to the first seed not screened yet
        if s not in outcome:
            break
        (growers if outcome[s] else others).append(s)
    settled = all(s in outcome for s in seeds)
    return Selection(seeds, growers, others, settled, growers[:design.n_arms], others[:design.n_control])


def screen_outcome(design: Design, out: Path) -> dict[int, bool]:
    """seed -> grew for every screened seed whose run under ``out`` has finished."""
    res = {}
    for run in sorted((out / "screen").glob("seed_*")):
        reading = screen_reading(run)
        if reading is not None:
            res[int(run.name.split("_")[1])] = grew(reading, design.threshold)
    return res


def jobs(design: Design, outcome: dict[int, bool]) -> tuple[list[Job], bool]:
    """Every run known from the screening ``outcome`` so far, in the order lanes start them (screening, then
    E3 seed by seed, the control, E4), and whether that list is final (the screening settled)."""
    sel = selection(design, outcome)
    out = [Job("screen", "", s, tuple(design.screen), tuple(design.screen_eval)) for s in sel.screen_seeds]
    for s in sel.arm_seeds:
        out += [Job("arms", a, s, (*design.screen, *ov, *design.arm_extra), tuple(design.screen_eval))
                for a, ov in ARMS.items()]
    for s in sel.control_seeds:
        out += [Job("control", a, s, (*design.screen, *ov, *design.arm_extra), tuple(design.screen_eval))
                for a, ov in CONTROL.items()]
    out += [Job("continued", a, s, (*design.continued, *ov), tuple(design.continued_eval))
            for s in range(1, design.continued_seeds + 1) for a, ov in CONTINUED_ARMS.items()]
    final = sel.settled and len(sel.arm_seeds) == min(design.n_arms, len(sel.growers)) and \
        len(sel.control_seeds) == min(design.n_control, len(sel.others))
    return out, final


def eval_done(job: Job, out: Path, final_step: int) -> dict | None:
    """The job's evaluation JSON when it exists for the run's final step."""
    ev = read_json(job.eval_json(out))
    return ev if ev is not None and ev.get("step") == final_step else None
