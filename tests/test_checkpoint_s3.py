"""Checkpoints on object storage (``trainer.ckpt_dir=s3://...``, llama_jreg/checkpoint/remote.py), against a
real S3 API server (moto's standalone server on 127.0.0.1, the ``s3`` fixture of tests/s3_server.py) with s3fs
as the client: a run saves to S3 and ``resume=auto`` from the URL, in an empty run.dir (another machine),
continues with the losses of the uninterrupted run; keep_last prunes the remote checkpoints; an upload without
its manifest is never resumed (also after a kill -9 mid-upload); a 2-rank sharded save to S3 resumes on 1 rank;
an asynchronous save is uploaded; a bad URL is one ``error:`` line, exit 2, before any step."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import warnings

import pytest

from llama_jreg.checkpoint import MANIFEST
from tests.s3_server import free_port  # the fixtures s3 / s3_server come from conftest.py
from tests.test_train_helpers import by_step, env_for_subprocess, run_inprocess, run_torchrun, tiny

STEPS = 8
GLOBAL = ["trainer.global_batch_size=8", f"trainer.max_steps={STEPS}", "trainer.ckpt_every=4",
          "trainer.keep_last=5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 1-process run, checkpoints on local disk."""
    d = tmp_path_factory.mktemp("ref")
    run_inprocess(tiny(d, *GLOBAL))
    return d


def remote_steps(s3, url: str) -> dict[str, bool]:
    """{step_XXXXXXXX: has a manifest} under ``url``."""
    fs = s3.fs()
    root = url.removeprefix("s3://")
    out = {}
    for p in fs.ls(root, detail=False, refresh=True):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        out[name] = fs.exists(f"{root}/{name}/{MANIFEST}")
    return out


def test_save_to_s3_and_resume_auto_from_the_url_on_another_machine(s3, reference, tmp_path):
    url = f"s3://{s3.bucket()}/runs/r1/checkpoints"
    first = run_inprocess(tiny(tmp_path / "a", *GLOBAL, f"trainer.ckpt_dir={url}", "trainer.steps_per_run=4"))
    assert first["steps"] == 4
    assert remote_steps(s3, url) == {"step_00000004": True}
    # another machine: an empty run.dir, only the URL
    second = run_inprocess(tiny(tmp_path / "b", *GLOBAL, f"trainer.ckpt_dir={url}", "resume=auto"))
    assert second["resumed_from"].endswith("step_00000004") and second["steps"] == STEPS
    ref = by_step(reference, "loss")
    assert by_step(tmp_path / "b", "loss") == {k: v for k, v in ref.items() if k > 4}  # bit for bit
    assert by_step(tmp_path / "a", "loss") == {k: v for k, v in ref.items() if k <= 4}
    assert remote_steps(s3, url) == {"step_00000004": True, "step_00000008": True}


def test_keep_last_prunes_remote_checkpoints(s3, tmp_path):
    url = f"s3://{s3.bucket()}/ckpt"
    run_inprocess(tiny(tmp_path / "run", "trainer.global_batch_size=2", "trainer.max_steps=6",
                       "trainer.ckpt_every=2", "trainer.keep_last=2", f"trainer.ckpt_dir={url}"))
    assert remote_steps(s3, url) == {"step_00000004": True, "step_00000006": True}


def test_an_upload_without_its_manifest_is_never_resumed(s3, tmp_path):
    """An interrupted upload (every file of step 8 but the manifest) is skipped: resume=auto takes step 4."""
    url = f"s3://{s3.bucket()}/ckpt"
    run_inprocess(tiny(tmp_path / "a", *GLOBAL, f"trainer.ckpt_dir={url}"))
    fs = s3.fs()
    root = url.removeprefix("s3://")
    fs.rm_file(f"{root}/step_00000008/{MANIFEST}")
    assert remote_steps(s3, url) == {"step_00000004": True, "step_00000008": False}
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint .*step_00000008"):
        s = run_inprocess(tiny(tmp_path / "b", *GLOBAL, f"trainer.ckpt_dir={url}", "resume=auto"))
    assert s["resumed_from"].endswith("step_00000004") and s["steps"] == STEPS
    # the new step 8 replaced the incomplete upload
    assert remote_steps(s3, url) == {"step_00000004": True, "step_00000008": True}


def test_two_rank_sharded_save_to_s3_resumes_on_one_rank(s3, reference, tmp_path):
    url = f"s3://{s3.bucket()}/ckpt"
    run_torchrun(2, tiny(tmp_path / "a", *GLOBAL, "parallel=fsdp", "trainer.steps_per_run=4",
                         f"trainer.ckpt_dir={url}"))
    assert remote_steps(s3, url) == {"step_00000004": True}
    assert s3.fs().exists(f"{url.removeprefix('s3://')}/step_00000004/state/.metadata")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "resuming a 2-process checkpoint" warning
        s = run_inprocess(tiny(tmp_path / "b", *GLOBAL, "parallel=ddp", f"trainer.ckpt_dir={url}", "resume=auto"))
    assert s["resumed_from"].endswith("step_00000004") and s["steps"] == STEPS
    ref = by_step(reference, "loss")
    got = by_step(tmp_path / "b", "loss")
    assert sorted(got) == [5, 6, 7, 8]
    assert max(abs(got[k] - ref[k]) for k in got) < 1e-5  # another world size: the reduction order differs


def test_async_save_to_s3_resumes_from_the_url(s3, reference, tmp_path):
    """trainer.async_checkpoint=true (sharded, written in the background): uploaded once committed (step 2's
    upload runs in the background while step 4's shards are written; step 4's, the last, before the end)."""
    url = f"s3://{s3.bucket()}/ckpt"
    run_inprocess(tiny(tmp_path / "a", *GLOBAL, "trainer.async_checkpoint=true", "trainer.steps_per_run=4",
                       "trainer.ckpt_every=2", f"trainer.ckpt_dir={url}"))
    assert remote_steps(s3, url) == {"step_00000002": True, "step_00000004": True}
    s = run_inprocess(tiny(tmp_path / "b", *GLOBAL, "trainer.async_checkpoint=true", f"trainer.ckpt_dir={url}",
                           "resume=auto"))
    assert s["resumed_from"].endswith("step_00000004") and s["steps"] == STEPS
    ref = by_step(reference, "loss")
    assert by_step(tmp_path / "b", "loss") == {k: v for k, v in ref.items() if k > 4}
    assert remote_steps(s3, url) == {"step_00000002": True, "step_00000004": True, "step_00000008": True}


def _cli(tmp_path, *extra: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_jreg", "train", *tiny(tmp_path / "run", *extra)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


BAD = {  # name: (trainer.ckpt_dir, env overrides on top of the server's, what the error line must say)
    "unreachable-endpoint": ("s3://{bucket}/ckpt", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{closed}"},
                             r"cannot reach the object store endpoint .*check AWS_ENDPOINT_URL \(or "
                             r"trainer.ckpt_storage_options.endpoint_url\)"),
    "missing-credentials": ("s3://{bucket}/ckpt", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
                            "no credentials for the object store; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    "no-such-bucket": ("s3://{bucket}-nope/ckpt", {}, "bucket {bucket}-nope does not exist .*check the URL"),
    "no-fsspec-backend": ("gs://{bucket}/ckpt", {}, r"no fsspec backend for gs:// is installed; "
                                                    r"pip install 'llama-jreg\[gcs\]'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_url_is_one_error_line_before_any_step(case, s3, tmp_path):
    if case == "no-fsspec-backend" and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    bucket = s3.bucket()
    url_t, env_t, want_t = BAD[case]
    fill = {"bucket": bucket, "closed": str(free_port())}
    url, want = url_t.format(**fill), want_t.format(**fill)
    env = {**env_for_subprocess(), **s3.env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    for k, v in env_t.items():
        if v is None:
            env.pop(k)
        else:
            env[k] = v.format(**fill)
    proc = _cli(tmp_path, f"trainer.ckpt_dir={url}", env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: trainer.ckpt_dir={url}: "), proc.stderr[-2000:]
    assert re.search(want, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()  # stopped before any step, nothing written locally
    assert s3.fs().find(bucket) == []  # nor remotely


def test_run_dir_url_and_local_ckpt_dir_are_refused(tmp_path):
    env = env_for_subprocess()
    proc = subprocess.run([sys.executable, "-m", "llama_jreg", "train", *tiny("s3://b/run")], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "put checkpoints on object storage with trainer.ckpt_dir=URL" in proc.stderr
    proc = _cli(tmp_path, f"trainer.ckpt_dir={tmp_path / 'x'}", env=env)
    assert proc.returncode == 2 and "is not an object-store URL" in proc.stderr.strip().splitlines()[-1]


KILL_MID_UPLOAD = """
import os, signal, sys
from llama_jreg.checkpoint import remote
from llama_jreg.train.setup import build_config
from llama_jreg.train.trainer import train

real = remote.filesystem

def filesystem(url, options=None):  # the process is killed -9 after uploading 3 files of step 8
    fs, path = real(url, options)
    put = type(fs).put_file
    done = []

    def put_then_die(self, lpath, rpath, *a, **k):
        put(self, lpath, rpath, *a, **k)
        done.append(rpath)
        if "step_00000008" in rpath and len(done) >= 3:
            os.kill(os.getpid(), signal.SIGKILL)

    fs.put_file = put_then_die.__get__(fs)
    return fs, path

remote.filesystem = filesystem
train(build_config(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill9_during_an_s3_upload_then_resume_auto(s3, reference, tmp_path):
    """A real SIGKILL in the middle of step 8's upload: the remote step 8 has no manifest; resume=auto from
    the URL in an empty run.dir takes step 4, and the next losses equal the uninterrupted run's bit for bit."""
    url = f"s3://{s3.bucket()}/ckpt"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_UPLOAD, *tiny(tmp_path / "a", *GLOBAL,
                                                                         f"trainer.ckpt_dir={url}")],
                          env=env_for_subprocess(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert remote_steps(s3, url) == {"step_00000004": True, "step_00000008": False}
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        s = run_inprocess(tiny(tmp_path / "b", *GLOBAL, f"trainer.ckpt_dir={url}", "resume=auto"))
    assert s["resumed_from"].endswith("step_00000004") and s["steps"] == STEPS
    ref = by_step(reference, "loss")
    assert by_step(tmp_path / "b", "loss") == {k: v for k, v in ref.items() if k > 4}
    assert remote_steps(s3, url) == {"step_00000004": True, "step_00000008": True}
