"""Checkpoints of every released format version resume with today's code.

tests/fixtures/checkpoints/<version>/{full,sharded}/ each hold one checkpoint written by the code of that version
(tests/fixtures/make_checkpoints.py) and the losses of the steps after resuming it, recorded with that code. A
1-process run resumed from the fixture must log the same losses: bit for bit where the torch version and CPU
capability are those of the recording, else within 1e-5 (the tolerance of the reshard tests).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from tests.test_train_helpers import by_step, run_inprocess

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
CASES = sorted((p.parent.name, p.name) for p in FIXTURES.glob("v*/*") if (p / "losses.json").is_file())


def test_every_version_has_a_full_and_a_sharded_fixture():
    versions = {v for v, _ in CASES}
    assert "v1" in versions
    assert sorted(CASES) == sorted((v, kind) for v in versions for kind in ("full", "sharded"))


@pytest.mark.parametrize(("version", "kind"), CASES)
def test_old_checkpoint_resumes_with_the_recorded_losses(version, kind, tmp_path):
    fixture = FIXTURES / version / kind
    rec = json.loads((fixture / "losses.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(fixture / rec["checkpoint"], run / "checkpoints" / rec["checkpoint"])  # never written to
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sharded fixture was written by 2 processes
            s = run_inprocess([*rec["overrides"], f"run.dir={run}", "resume=auto"])
    finally:
        torch.set_num_threads(threads)
    assert s["resumed_from"].endswith(rec["checkpoint"])
    got = {str(k): v for k, v in sorted(by_step(run, "loss").items())}
    want = rec["losses"]
    print(f"{version}/{kind}: resumed {rec['checkpoint']}; losses {got} (recorded {want})")
    assert sorted(got) == sorted(want)
    same_machine = rec["recorded_with"] == {"torch": torch.__version__,
                                            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if same_machine:
        assert got == want  # bit for bit
    else:
        assert all(abs(got[k] - want[k]) < 1e-5 for k in want), (got, want)
