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


def test_new_checkpoints_record_the_format_version_and_a_newer_one_is_refused(tmp_path):
    """A checkpoint written now records ``format_version`` (the v1 layout, so 1); one whose manifest names a
    version this code does not read is refused by ``resume=auto`` with one ``error:`` line naming it, exit 2,
    nothing written; a manifest without the field is version 1."""
    import subprocess
    import sys

    from llama_jreg import checkpoint as ckpt
    from tests.test_train_helpers import REPO, env_for_subprocess

    rec = json.loads((FIXTURES / "v1" / "full" / "losses.json").read_text())
    assert ckpt.format_version(FIXTURES / "v1" / "full" / rec["checkpoint"]) == 1  # written before the field
    run = tmp_path / "run"
    run_inprocess([*rec["overrides"], f"run.dir={run}", "trainer.max_steps=3"])
    ck = ckpt.list_checkpoints(run)[-1]
    manifest = json.loads((ck / "manifest.json").read_text())
    assert manifest["format_version"] == ckpt.FORMAT_VERSION == 1 and ckpt.verify(ck) is None
    manifest["format_version"] = 7
    (ck / "manifest.json").write_text(json.dumps(manifest))
    assert ckpt.verify(ck) is None  # intact, but of a version this code does not read
    before = sorted((p.relative_to(run).as_posix(), p.stat().st_mtime_ns) for p in run.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "llama_jreg", "train", *rec["overrides"], f"run.dir={run}",
                           "resume=auto"], cwd=REPO, env=env_for_subprocess(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: resume={ck}: checkpoint format version 7 is newer than this llama-jreg reads "
                      "(it reads version 1); resume it with the llama-jreg that wrote it, or upgrade llama-jreg"]
    assert "Traceback" not in proc.stderr
    assert sorted((p.relative_to(run).as_posix(), p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    # the commands that read a model (eval, jump, generate, export-hf, ...) refuse it the same way
    proc = subprocess.run([sys.executable, "-m", "llama_jreg", "eval", str(ck), "--batches", "1"], cwd=REPO,
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {ck}: checkpoint format version 7 is newer than this llama-jreg reads (it reads version 1); "
        "read it with the llama-jreg that wrote it, or upgrade llama-jreg"]
    assert "Traceback" not in proc.stderr
