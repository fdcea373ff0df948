"""run.dir/provenance.json (llama_jreg/train/provenance.py): the commit, dirty flag and command of each start."""

from __future__ import annotations

import json
import subprocess

from llama_jreg.study.results import run_result
from llama_jreg.study.tables import provenance_summary
from llama_jreg.train.provenance import git_state, read_provenance, record_start
from tests.test_train_helpers import REPO, run_inprocess, tiny


def _git(d, *args):
    return subprocess.run(["git", "-C", str(d), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_of_a_checkout_and_of_none(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    head = _git(repo, "rev-parse", "HEAD")
    assert git_state(repo) == (head, False)
    (repo / "new.txt").write_text("untracked files do not count\n")
    assert git_state(repo) == (head, False)
    (repo / "a.py").write_text("x = 2\n")
    assert git_state(repo) == (head, True)
    # a directory inside a checkout but not its top level (an installed package in a venv) has no commit
    (repo / "sub").mkdir()
    assert git_state(repo / "sub") == (None, None)
    assert git_state(tmp_path / "not_a_repo_at_all") == (None, None)


def test_record_start_replaces_on_a_fresh_run_and_appends_on_resume(tmp_path):
    first = record_start(tmp_path, 0, resumed=False, argv=["llama-jreg", "train", "seed=1"])
    assert first["command"] == "llama-jreg train seed=1" and first["step"] == 0
    record_start(tmp_path, 5, resumed=True, argv=["llama-jreg", "train", "resume=auto", "a b"])
    starts = read_provenance(tmp_path)
    assert [s["step"] for s in starts] == [0, 5] and starts[1]["command"] == "llama-jreg train resume=auto 'a b'"
    record_start(tmp_path, 0, resumed=False, argv=["x"])
    assert [s["argv"] for s in read_provenance(tmp_path)] == [["x"]]
    assert record_start(tmp_path, 0, enabled=False) is None and len(read_provenance(tmp_path)) == 1
    assert not list(tmp_path.glob("*.tmp-*"))
    (tmp_path / "provenance.json").write_text("{not json")
    assert read_provenance(tmp_path) == []


def test_a_run_records_what_made_it_and_the_study_lists_it(tmp_path):
    """A real run writes provenance.json at its start and appends at a resume (not when a finished run is only
    reopened); the study's report names the commit (this checkout's HEAD and dirty flag)."""
    run = tmp_path / "run"
    run_inprocess(tiny(run, "trainer.max_steps=2", "trainer.ckpt_every=2"))
    (start,) = read_provenance(run)
    commit, dirty = git_state(REPO)
    assert (start["commit"], start["dirty"], start["step"]) == (commit, dirty, 0) and commit is not None
    assert start["world_size"] == 1 and start["argv"] and start["time"].endswith("Z")
    run_inprocess(tiny(run, "trainer.max_steps=3", "trainer.ckpt_every=3", "resume=auto"))
    assert [s["step"] for s in read_provenance(run)] == [0, 2]
    run_inprocess(tiny(run, "trainer.max_steps=3", "trainer.ckpt_every=3", "resume=auto"))  # finished: reopened
    assert [s["step"] for s in read_provenance(run)] == [0, 2]
    res = run_result(run, "text")
    assert [p["commit"] for p in res["provenance"]] == [commit, commit]
    label = commit[:12] + (" (dirty: uncommitted changes)" if dirty else " (clean)")
    assert provenance_summary([res, {**res, "provenance": []}]) == \
        f"{label}: 1 run(s); 1 run(s) without provenance.json"
    assert json.loads((run / "provenance.json").read_text())["starts"][1]["step"] == 2
