"""Real multi-process training on CPU (torchrun, gloo): DDP and FSDP2 match one process, resume is exact.

Every run here is a fresh ``torchrun --standalone --nproc_per_node 2`` of tests/test_train_driver.py.
"""

from __future__ import annotations

import warnings

import pytest

from tests.test_train_helpers import by_step, rows, run_inprocess, run_torchrun, tiny

STEPS = 20
GLOBAL = ["trainer.global_batch_size=8", f"trainer.max_steps={STEPS}", "trainer.ckpt_every=10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Lazily computed reference runs, shared by the tests of this module (global batch 8 = 4 micro-batches
    of 2 on one process, 2 per rank on two: gradient accumulation with no_sync on both)."""
    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            d = tmp_path_factory.mktemp(kind)
            if kind == "one":  # 1 process: 4 micro-batches of 2 per step
                run_inprocess(tiny(d, *GLOBAL))
            else:  # 2 processes: 2 micro-batches of 2 per rank per step
                run_torchrun(2, tiny(d, *GLOBAL, f"parallel={kind}"))
            cache[kind] = d
        return cache[kind]

    return get


def _max_diff(a, b, key="loss", kind="train"):
    x, y = by_step(a, key, kind), by_step(b, key, kind)
    assert x.keys() == y.keys() and len(x) > 0
    if kind == "jump":
        return max(abs(p - q) for k in x for p, q in zip(x[k], y[k]))
    return max(abs(x[k] - y[k]) for k in x)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_match_one(runs, kind):
    one, two = runs("one"), runs(kind)
    assert len(rows(two, "train")) == STEPS
    assert _max_diff(one, two, "loss") < 1e-5
    assert _max_diff(one, two, "grad_norm") < 1e-5
    assert _max_diff(one, two, "val_loss", "eval") < 1e-5
    assert _max_diff(one, two, "psi", "jump") < 1e-5
    assert by_step(one, "tokens") == by_step(two, "tokens")
    ck = two / "checkpoints" / "step_00000020"
    assert (ck / "rng_rank1.pt").is_file() and (ck / "loader_rank1.json").is_file()


def test_ddp_resume_is_bit_exact(runs, tmp_path):
    ref = runs("ddp")
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "trainer.steps_per_run=10"))
    proc = run_torchrun(2, tiny(tmp_path, *GLOBAL, "resume=auto"))
    assert "step_00000010" in proc.stdout
    for key in ("loss", "grad_norm", "lr"):
        assert by_step(ref, key) == by_step(tmp_path, key), key
    assert by_step(ref, "psi", "jump") == by_step(tmp_path, "psi", "jump")


@pytest.mark.slow
def test_fsdp_resume_twice_is_bit_exact(runs, tmp_path):
    ref = runs("fsdp")
    for _ in range(3):  # 7 + 7 + 6 steps
        run_torchrun(2, tiny(tmp_path, *GLOBAL, "parallel=fsdp", "trainer.steps_per_run=7", "resume=auto"))
    for key in ("loss", "grad_norm"):
        assert by_step(ref, key) == by_step(tmp_path, key), key


@pytest.mark.slow
def test_resume_with_another_world_size(runs, tmp_path):
    """A 2-process checkpoint continues on 1 process with the same samples (the loader cursor is global)."""
    one = runs("one")
    run_torchrun(2, tiny(tmp_path, *GLOBAL, "trainer.steps_per_run=10"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = run_inprocess(tiny(tmp_path, *GLOBAL, "resume=auto"))
    assert s["steps"] == STEPS
    assert _max_diff(one, tmp_path, "loss") < 1e-5
