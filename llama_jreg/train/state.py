"""``TrainState``: the trainer's own counters, one Stateful part of a checkpoint (``trainer_state.json``).

The other parts of a run's state are the model, the optimizer, the schedule, the data loader and the RNG
(llama_jreg/checkpoint/parts.py); the checkpoint manager saves and restores them all together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TrainState:
    """Counters of a run, and what identifies it.

    ``step``: optimizer steps taken (incl. skipped non-finite ones); ``tokens``: training tokens seen;
    ``nonfinite_total`` / ``nonfinite_in_a_row``: skipped non-finite steps; ``wandb_run_id``: the wandb run a
    resume continues; ``init_from``: the record of the source weights of an ``init_from`` run (None otherwise).
    ``world_size`` and ``data_fingerprint`` describe the run that writes a checkpoint: a restore compares them
    with the resumed run's (the checkpoint manager) instead of loading them."""

    step: int = 0
    tokens: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0
    world_size: int = 1
    wandb_run_id: str | None = None
    data_fingerprint: str | None = None
    init_from: dict[str, Any] | None = None
    data_files: list | None = None  # [path or URL, sha256 or ETag] of every data file (data/identity.py)

    def state_dict(self) -> dict[str, Any]:
        sd = {"step": self.step, "tokens": self.tokens, "nonfinite_total": self.nonfinite_total,
              "nonfinite_in_a_row": self.nonfinite_in_a_row, "world_size": self.world_size,
              "wandb_run_id": self.wandb_run_id, "data_fingerprint": self.data_fingerprint}
        if self.init_from is not None:
            sd["init_from"] = self.init_from
        if self.data_files is not None:
            sd["data_files"] = self.data_files
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step, self.tokens = int(sd["step"]), int(sd["tokens"])
        self.nonfinite_total = int(sd.get("nonfinite_total", 0))
        self.nonfinite_in_a_row = int(sd.get("nonfinite_in_a_row", 0))
        self.wandb_run_id = sd.get("wandb_run_id")
        if sd.get("init_from") is not None:
            self.init_from = sd["init_from"]


def state_field(name: str) -> property:
    """An attribute of an object that is the field ``name`` of its ``.state`` (a TrainState): the trainer's
    ``self.step`` is ``self.state.step``."""
    return property(lambda self: getattr(self.state, name), lambda self, v: setattr(self.state, name, v),
                    doc=f"``self.state.{name}`` (TrainState)")
