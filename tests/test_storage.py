"""Data on object storage (llama_jreg/storage.py), against a real S3 API server (moto's standalone server on
127.0.0.1: the ``s3`` fixture of tests/s3_server.py) with s3fs as the client: training from ``data.files=[s3://...]`` resumes and
gives the losses of the same corpus on disk; a changed object is refused by name (its ETag); a mixture source
by URL; and the bad inputs (unreachable endpoint, no credentials, no bucket, no backend) each end in one
``error:`` line naming the URL and the fix, exit status 2, before any step, nothing written anywhere."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llama_jreg import UserError, storage
from llama_jreg.config import load_config
from llama_jreg.data import build_data
from tests.s3_server import free_port
from tests.test_bad_inputs import snapshot
from tests.test_data_identity import RUN, STEPS, straight_run, write_corpus
from tests.test_train_helpers import by_step, env_for_subprocess, run_inprocess


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return straight_run(tmp_path_factory.mktemp("straight"))


def upload_corpus(s3, tmp_path: Path) -> tuple[str, list[Path]]:
    """The two-file corpus of test_data_identity in a new bucket: (bucket, local copies)."""
    bucket = s3.bucket()
    files = write_corpus(tmp_path / "corpus")
    for f in files:
        s3.upload(f, f"s3://{bucket}/corpus/{f.name}")
    return bucket, files


def s3_run(run_dir: Path, pattern: str, cache: Path, *extra: str) -> list[str]:
    return [*RUN, f"run.dir={run_dir}", f"data.files=[{pattern}]", f"data.cache_dir={cache}", *extra]


def test_url_helpers():
    assert storage.is_url("s3://b/k.txt") and storage.is_url("gs://b/k") and storage.is_url("memory://x")
    assert not storage.is_url("/data/corpus.txt") and not storage.is_url("file:///data/x.txt")
    assert not storage.is_url("corpus.txt") and not storage.is_url("C:/data/x.txt")


def test_train_from_s3_resumes_with_the_losses_of_the_same_files_on_disk(s3, straight, tmp_path):
    """4 steps from s3://bucket/corpus/*.txt, resume=auto to 8 with an empty data cache: every loss equals the
    uninterrupted run on the same two files on local disk (test_data_identity's reference)."""
    bucket, _ = upload_corpus(s3, tmp_path)
    pattern = f"s3://{bucket}/corpus/*.txt"
    first = run_inprocess(s3_run(tmp_path / "run", pattern, tmp_path / "cache1", "trainer.steps_per_run=4"))
    assert first["steps"] == 4
    record = (tmp_path / "run" / "checkpoints" / "step_00000004" / "trainer_state.json").read_text()
    assert f"s3://{bucket}/corpus/a.txt" in record and "etag:" in record
    second = run_inprocess(s3_run(tmp_path / "run", pattern, tmp_path / "cache2", "resume=auto"))
    assert second["resumed_from"].endswith("step_00000004") and second["steps"] == STEPS
    for key in ("loss", "lm_loss", "grad_norm", "lr"):
        assert by_step(tmp_path / "run", key) == by_step(straight, key), key
    assert by_step(tmp_path / "run", "val_loss", "eval") == by_step(straight, "val_loss", "eval")


def test_a_changed_object_is_refused_by_name(s3, tmp_path):
    bucket, files = upload_corpus(s3, tmp_path)
    run_inprocess(s3_run(tmp_path / "run", f"s3://{bucket}/corpus/*.txt", tmp_path / "cache",
                         "trainer.steps_per_run=4", "trainer.max_steps=8", "data.streaming=true"))
    with open(files[0], "a", encoding="utf-8") as f:
        f.write("\n\na changed ending.\n")
    s3.upload(files[0], f"s3://{bucket}/corpus/a.txt")
    with pytest.raises(UserError, match=rf"^data file s3://{bucket}/corpus/a.txt differs from the one this run "
                                        r"was trained on \(ETag [0-9a-f]{12}…, now [0-9a-f]{12}…\)"):
        run_inprocess(s3_run(tmp_path / "run", f"s3://{bucket}/corpus/*.txt", tmp_path / "cache",
                             "trainer.max_steps=8", "data.streaming=true", "resume=auto"))


def test_a_mixture_source_by_url_reads_the_same_text_as_on_disk(s3, tmp_path):
    bucket, files = upload_corpus(s3, tmp_path)
    mixture = (f"data.mixture=[{{name: disk, weight: 1, files: [{files[0]}]}}, "
               f"{{name: s3, weight: 1, files: [s3://{bucket}/corpus/a.txt]}}]")
    cfg = load_config([*RUN, f"run.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", mixture])
    bundle = build_data(cfg.data, seed=0, model_vocab=cfg.model.vocab_size)
    disk, remote = bundle.parts
    assert disk.manifest["stream"] == remote.manifest["stream"]  # the same tokens, from disk and from S3
    assert [[b["input_ids"].tolist() for b in p.val_batches(2)] for p in (disk, remote)].count(
        [b["input_ids"].tolist() for b in disk.val_batches(2)]) == 2
    assert [f for f, _ in bundle.identity().files] == [files[0].as_posix(), f"s3://{bucket}/corpus/a.txt"]


# ------------------------------------------------------------------------------------------- bad input

def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in env_for_subprocess().items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "llama_jreg", *args], cwd=cwd, check=False, capture_output=True,
                          text=True, timeout=300, env={**base, "AWS_MAX_ATTEMPTS": "1", **env})


BAD = {  # name: (url of data.files, env overrides on top of the server's, what the error line must say)
    "unreachable-endpoint": ("s3://{bucket}/corpus/*.txt", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"},
                             "cannot reach the object store endpoint .*check AWS_ENDPOINT_URL"),
    "missing-credentials": ("s3://{bucket}/corpus/*.txt", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
                            "no credentials for the object store; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    "no-such-bucket": ("s3://{bucket}-nope/corpus/*.txt", {},
                       "bucket {bucket}-nope does not exist .*check the URL"),
    "no-such-object": ("s3://{bucket}/corpus/nope.txt", {}, "matches no object; check the URL"),
    "no-fsspec-backend": ("gs://{bucket}/corpus/*.txt", {},
                          r"no fsspec backend for gs:// is installed; pip install 'llama-jreg\[gcs\]'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_object_storage_input_is_one_error_line(case, s3, tmp_path):
    if case == "no-fsspec-backend" and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    bucket, _ = upload_corpus(s3, tmp_path)
    url_t, env_t, want_t = BAD[case]
    fill = {"bucket": bucket, "closed": str(free_port())}
    url, want = url_t.format(**fill), want_t.format(**fill)
    env = {**s3.env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    for k, v in env_t.items():
        if v is None:
            env.pop(k)
        else:
            env[k] = v.format(**fill)
    objects_before = sorted(s3.fs().find(bucket, detail=True).items())
    before = snapshot(tmp_path)
    run_dir = tmp_path / "run"
    proc = _cli(["train", *s3_run(run_dir, url, tmp_path / "cache")], env, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert url in lines[0] and re.search(want, lines[0]), lines[0]
    assert "Traceback" not in proc.stderr and "run summary" not in proc.stdout  # stopped before any step
    assert snapshot(tmp_path) == before  # no file written or changed locally (run dir and data cache included)
    assert sorted(s3.fs().find(bucket, detail=True).items()) == objects_before  # nor remotely
