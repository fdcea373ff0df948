"""The Stateful parts of a checkpoint: ``TrainState`` writes exactly the fields of ``trainer_state.json`` of the
released format, and a part added to ``CheckpointManager(states={...})`` is saved and restored by that one
entry (its key names its file), in both formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llama_jreg import checkpoint as ckpt
from llama_jreg.train.state import TrainState
from tests.test_checkpoint_sharded import _tiny_model_and_optimizer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


def test_train_state_round_trips_the_fields_of_the_v1_format():
    saved = json.loads((FIXTURES / "v1" / "full" / "step_00000003" / "trainer_state.json").read_text())
    state = TrainState(world_size=saved["world_size"], data_fingerprint=saved["data_fingerprint"])
    state.load_state_dict(saved)
    assert state.state_dict() == saved  # the same keys and values: the layout did not change
    assert (state.step, state.tokens) == (3, 3 * 4 * 32)


class Counter:
    def __init__(self, n: int):
        self.n = n

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, sd: dict) -> None:
        self.n = sd["n"]


@pytest.mark.parametrize("fmt", ["full", "sharded"])
def test_a_part_added_as_one_entry_is_saved_and_restored(tmp_path, fmt):
    model, opt, sched = _tiny_model_and_optimizer()

    def states(n: int, rank_n: int) -> dict:
        return {"model": ckpt.ModelPart(model), "optim": ckpt.OptimizerPart(model, opt),
                "scheduler": ckpt.JsonPart(sched), "extra": ckpt.JsonPart(Counter(n)),
                "per_rank": ckpt.RankPart(Counter(rank_n)),
                "trainer_state": ckpt.JsonPart(TrainState(step=5, wandb_run_id="w", data_fingerprint="fp"))}

    written = states(7, 11)
    path = ckpt.CheckpointManager(tmp_path, written, fmt=fmt).save(5)
    assert ckpt.verify(path) is None and ckpt.format_version(path) == ckpt.FORMAT_VERSION
    assert json.loads((path / "extra.json").read_text()) == {"n": 7}
    assert json.loads((path / "per_rank_rank0.json").read_text()) == {"n": 11}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    read = states(0, 0)
    read["trainer_state"].obj.data_fingerprint = "fp"
    read["trainer_state"].obj.step = 0
    ckpt.CheckpointManager(tmp_path, read, fmt=fmt).restore(path)
    assert read["extra"].obj.n == 7 and read["per_rank"].obj.n == 11 and read["trainer_state"].obj.step == 5
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_restore_refuses_other_data(tmp_path):
    model, opt, sched = _tiny_model_and_optimizer()
    states = {"model": ckpt.ModelPart(model), "optim": ckpt.OptimizerPart(model, opt),
              "trainer_state": ckpt.JsonPart(TrainState(data_fingerprint="aaa"))}
    path = ckpt.CheckpointManager(tmp_path, states).save(1)
    states["trainer_state"].obj.data_fingerprint = "bbb"
    from llama_jreg import UserError

    with pytest.raises(UserError, match="trained on other data \\(fingerprint aaa, now bbb\\)"):
        ckpt.CheckpointManager(tmp_path, states).restore(path)
