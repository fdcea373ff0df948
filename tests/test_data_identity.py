"""Data known by its content (data/identity.py): moved runs resume bit for bit, a changed file is refused by
name, the sha256 of a file is cached by (path, size, mtime), and checkpoints of the release before content
identity (data known by path, size and mtime) still resume where their data is where it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_jreg import UserError
from llama_jreg.config import load_config
from llama_jreg.data.identity import cached_sha256
from llama_jreg.data.prepare import prepare
from llama_jreg.files import sha256_file
from tests.conftest import REPO
from tests.test_bad_inputs import MODEL, docs
from tests.test_train_helpers import by_step, env_for_subprocess, run_inprocess

STEPS = 8
RUN = [*MODEL, "data=local", "data.seq_len=32", "data.micro_batch_size=2", "data.val_sequences=4",
       "data.val_fraction=0.1", "data.vocab_size=512", "data.tokenizer_train_chars=200000", "data.num_proc=1",
       f"trainer.max_steps={STEPS}", "trainer.ckpt_every=4", "trainer.eval_every=4", "trainer.eval_batches=1",
       "trainer.jump_every=4", "trainer.log_every=1", "trainer.progress=false", "trainer.plots=false",
       "schedule=cosine", "schedule.warmup_steps=2", "optim.lr=3e-3"]


def write_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "a.txt", folder / "b.txt"]
    for i, f in enumerate(files):
        f.write_text("\n\n".join(docs(30, i)), encoding="utf-8")
    return files


def run_args(run_dir: Path, files: list[Path], cache: Path, *extra: str) -> list[str]:
    return [*RUN, f"run.dir={run_dir}", f"data.files=[{','.join(map(str, files))}]", f"data.cache_dir={cache}",
            *extra]


def straight_run(w: Path) -> Path:
    """The reference: 8 uninterrupted steps on the two-file local corpus, in ``w``; returns the run dir."""
    files = write_corpus(w / "corpus")
    run_inprocess(run_args(w / "run", files, w / "cache"))
    return w / "run"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return straight_run(tmp_path_factory.mktemp("straight"))


def test_moved_run_resumes_bit_for_bit(straight, tmp_path):
    """4 steps in a/, then run dir and corpus copied to b/ (new mtimes), an empty data cache, resume=auto."""
    a, b = tmp_path / "a", tmp_path / "b"
    files = write_corpus(a / "corpus")
    first = run_inprocess(run_args(a / "run", files, a / "cache", "trainer.steps_per_run=4"))
    assert first["steps"] == 4
    time.sleep(0.01)  # (the copies get other mtimes)
    shutil.copytree(a / "run", b / "run", copy_function=shutil.copy)
    moved = []
    for f in files:
        (b / "corpus").mkdir(parents=True, exist_ok=True)
        moved.append(Path(shutil.copy(f, b / "corpus" / f.name)))
    assert all(os.stat(m).st_mtime_ns != os.stat(f).st_mtime_ns for m, f in zip(moved, files))
    shutil.rmtree(a)  # nothing of the first place is left
    second = run_inprocess(run_args(b / "run", moved, b / "cache", "resume=auto"))
    assert second["resumed_from"].endswith("step_00000004") and second["steps"] == STEPS
    for key in ("loss", "lm_loss", "grad_norm", "lr"):
        assert by_step(b / "run", key) == by_step(straight, key), key  # bit for bit, steps 1-4 and 5-8
    assert by_step(b / "run", "val_loss", "eval") == by_step(straight, "val_loss", "eval")


def test_a_changed_file_is_refused_by_name(tmp_path):
    files = write_corpus(tmp_path / "corpus")
    run_inprocess(run_args(tmp_path / "run", files, tmp_path / "cache", "trainer.steps_per_run=4"))
    want = sha256_file(files[1])
    with open(files[1], "a", encoding="utf-8") as f:
        f.write("\n\none more paragraph of the lord and the lady.\n")
    with pytest.raises(UserError, match=rf"^data file {files[1]} differs from the one this run was trained on "
                                        rf"\(sha256 {want[:12]}…, now {sha256_file(files[1])[:12]}…\)"):
        run_inprocess(run_args(tmp_path / "run", files, tmp_path / "cache", "resume=auto"))


def test_sha256_is_cached_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("some text\n" * 1000)
    cache = tmp_path / "cache"
    real = sha256_file(f)
    assert cached_sha256(str(f), cache) == real and not cache.exists()  # small files: hashed, not cached
    assert cached_sha256(str(f), cache, min_bytes=1000) == real
    (entry,) = (cache / "sha256").iterdir()
    entry.write_text("0" * 64 + "\n")  # the cache is what a second call reads: it does not hash the file again
    assert cached_sha256(str(f), cache, min_bytes=1000) == "0" * 64
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: hashed again
    assert cached_sha256(str(f), cache, min_bytes=1000) == real
    shutil.copy(f, tmp_path / "copy.txt")  # another path: its own entry, the same content hash
    assert cached_sha256(str(tmp_path / "copy.txt"), cache, min_bytes=1000) == real
    assert len(list((cache / "sha256").iterdir())) == 3


def _pre_content_identity_tree(dest: Path) -> Path | None:
    """The package as it was before data/identity.py was added (from git), or None outside a git checkout."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    log = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "llama_jreg/data/identity.py"],
                         cwd=REPO, capture_output=True, text=True, check=False)
    added = log.stdout.split()
    if log.returncode != 0 or not added:
        return None
    dest.mkdir()
    archive = subprocess.run(["git", "archive", f"{added[-1]}~1", "llama_jreg", "configs"], cwd=REPO,
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


@pytest.mark.slow
def test_checkpoint_of_the_path_identity_release_resumes_where_its_data_is(straight, tmp_path):
    """A real checkpoint written by the release before content identity (its code from git) resumes with
    today's code, bit for bit, when its data files are where they were; moved, they are refused. Its data
    preparation is recognised as the same data."""
    old_code = _pre_content_identity_tree(tmp_path / "old_code")
    if old_code is None:
        pytest.skip("needs a git checkout that has the commit adding llama_jreg/data/identity.py")
    files = write_corpus(tmp_path / "corpus")
    args = run_args(tmp_path / "run", files, tmp_path / "cache_old", "trainer.steps_per_run=4")
    proc = subprocess.run([sys.executable, "-m", "llama_jreg", "train", *args], cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=600,
                          env={**env_for_subprocess(), "PYTHONPATH": str(old_code)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert "data_files" not in (ckpt / "trainer_state.json").read_text()  # written by the older release
    # its preparation is still this data's: prepare-data into it is a no-op, not "a different preparation"
    (old_prepared,) = (tmp_path / "cache_old" / "prepared").iterdir()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in old_prepared.iterdir())
    cfg = load_config(run_args(tmp_path / "run", files, tmp_path / "cache_new")).data
    assert prepare(cfg, out=old_prepared, log=lambda _m: None)[0] == old_prepared
    assert sorted((p.name, p.stat().st_mtime_ns) for p in old_prepared.iterdir()) == before

    moved = tmp_path / "moved"
    moved.mkdir()
    copies = [Path(shutil.copy(f, moved / f.name)) for f in files]
    with pytest.raises(UserError, match="predates data known by their content"):
        run_inprocess(run_args(tmp_path / "run", copies, tmp_path / "cache_new", "resume=auto"))

    second = run_inprocess(run_args(tmp_path / "run", files, tmp_path / "cache_new", "resume=auto"))
    assert second["resumed_from"].endswith("step_00000004") and second["steps"] == STEPS
    for key in ("loss", "lm_loss", "grad_norm", "lr"):
        assert by_step(tmp_path / "run", key) == by_step(straight, key), key
    assert "data_files" in (tmp_path / "run" / "checkpoints" / "step_00000008" / "trainer_state.json").read_text()
