"""`experiment=jump_emergence` (configs/experiment/jump_emergence.yaml) and the search that chose it
(scripts/search_jump.py): the preset is the searched recipe, a JREG preset on the command line wins over its
`jreg: off`, and it trains."""

from __future__ import annotations

import importlib.util
import json

from llama_jreg.config import load_config
from tests.test_train_helpers import REPO, rows, run_inprocess, tiny


def _search():
    spec = importlib.util.spec_from_file_location("search_jump", REPO / "scripts" / "search_jump.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_preset_is_the_searched_recipe():
    """docs/jump_emergence.md reports runs of the search's `tiny-b2-s600-lr1e-3`: the preset must train the same."""
    s = _search()
    exp = load_config(["experiment=jump_emergence", "seed=3"])
    searched = load_config([*s.BASE, *s.CONFIGS[s.RECIPE], "seed=3"])
    for group in ("model", "data", "optim", "schedule", "jreg"):
        assert getattr(exp, group) == getattr(searched, group), group
    for key in ("max_steps", "global_batch_size", "jump_every", "eval_batches"):
        assert getattr(exp.trainer, key) == getattr(searched.trainer, key), key
    assert exp.jreg.weight == 0.0 and exp.data.micro_batch_size == 2 and exp.trainer.max_steps == 600


def test_a_jreg_preset_on_the_command_line_wins():
    for order in (["experiment=jump_emergence", "jreg=paper"], ["jreg=paper", "experiment=jump_emergence"]):
        cfg = load_config(order)
        assert (cfg.jreg.mode, cfg.jreg.weight, cfg.jreg.stream) == ("paper", 0.1, "post_norm")
        assert cfg.run.dir == "runs/jump_emergence/paper-w0.1-seed1"
    assert load_config(["experiment=jump_emergence", "jreg.weight=0.2"]).jreg.weight == 0.2


def test_it_trains_and_logs_the_jump(tmp_path):
    """The preset under the tests' tiny model and data (a few steps): val zeta_L rows every jump_every steps."""
    run = tmp_path / "run"
    run_inprocess(["experiment=jump_emergence", *tiny(run, "trainer.max_steps=6", "trainer.jump_every=3",
                                                      "data.micro_batch_size=2")])
    jumps = rows(run, "jump")
    assert [r["step"] for r in jumps] == [3, 6]
    assert all(len(r["val_psi"]) == 2 and r["val_zeta_L"] >= 0 for r in jumps)
    assert all(r["jreg_weight"] == 0.0 for r in rows(run, "train"))  # lambda = 0: JREG off


def test_search_criterion_and_table(tmp_path):
    s = _search()
    log = tmp_path / "log.jsonl"
    recs = [dict(config="c", overrides=["data.micro_batch_size=2"], seed=seed, steps=600, wall_s=wall,
                 first_val_zeta_L=first, final_val_zeta_L=final, val_zeta_L={"300": first, "600": final},
                 val_psi_final=[0.01, 0.02, 0.03])
            for seed, wall, first, final in [(1, 10.0, 0.0, 1.5), (2, 12.0, 0.0, 0.4), (3, 11.0, 2.0, 1.2)]]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [s.grows(r) for r in recs] == [True, False, False]  # >= 1 at the end, and up from the first
    row = s.table(log).splitlines()[2]
    assert row.startswith("| `c` | 3 | 600 x 2 | 10-12 |") and row.endswith("| 1/3 |")
    text = s.curves(log, "c")
    assert "Grew in 1 of 3 seeds" in text
    assert "| 1 | 0.00 | 1.50 | 0.0100, 0.0200, 0.0300 | 2.00 | yes | 10 |" in text  # zeta_(L-1) = 100 * 0.02
    assert abs(s.zeta_tail([0.3, 0.1, 0.4, 0.2], 1)) < 1e-12 and abs(s.zeta_tail([0.3, 0.1, 0.4, 0.2], 2) - 30) < 1e-9
    lo, hi = s.wilson(1, 3)
    assert 0.0 < lo < 1 / 3 < hi < 1.0 and s.wilson(5, 5)[1] == 1.0 and round(s.wilson(5, 5)[0], 3) == 0.566
