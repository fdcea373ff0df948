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
from pathlib import Path

import pytest

from llama_jreg.checkpoint import MANIFEST
from tests.s3_server import free_port, start_server, stop_server  # fixtures s3 / s3_server: conftest.py
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
    # a new run (another, empty run.dir) without resume= over the URL that holds them: refused, naming the URL
    proc = _cli(tmp_path / "other", f"trainer.ckpt_dir={url}", env={**env_for_subprocess(), **s3.env})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: trainer.ckpt_dir={url} already holds checkpoints; continue it with resume=auto or start a new "
        "run with another trainer.ckpt_dir"]
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


STORE_DOWN_AT_STEP_4 = """
import os, signal, sys, time
from llama_jreg.checkpoint import remote
from llama_jreg.cli import main

real = remote.filesystem
down = []

def filesystem(url, options=None):  # the store's server is killed -9 as step 4's upload begins
    fs, path = real(url, options)
    put = type(fs).put_file

    def put_after_the_store_is_down(self, lpath, rpath, *a, **k):
        if "step_00000004" in rpath and not down:
            os.kill(int(os.environ["STORE_PID"]), signal.SIGKILL)
            time.sleep(0.5)
            down.append(rpath)
        return put(self, lpath, rpath, *a, **k)

    fs.put_file = put_after_the_store_is_down.__get__(fs)
    return fs, path

remote.filesystem = filesystem
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_a_failed_upload_stops_the_run_with_one_line_and_resume_continues(s3, reference, tmp_path):
    """The store goes down (its server killed -9) as step 4's upload begins: one error line naming the URL, the
    cause and the kept checkpoint, exit 2; with a store back (a new, empty one on the same endpoint),
    resume=auto continues from the local step 4 with the losses of the uninterrupted run, bit for bit."""
    proc_store, store = start_server()
    try:
        bucket = store.bucket()
        url = f"s3://{bucket}/ckpt"
        run = tmp_path / "a"
        env = {**env_for_subprocess(), **store.env, "STORE_PID": str(proc_store.pid)}
        overrides = tiny(run, *GLOBAL, f"trainer.ckpt_dir={url}")
        proc = subprocess.run([sys.executable, "-c", STORE_DOWN_AT_STEP_4, *overrides], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        local = run / "checkpoints" / "step_00000004"
        assert len(errors) == 1 and errors[0].startswith(
            f"error: trainer.ckpt_dir={url}/step_00000004: cannot reach the object store endpoint"), proc.stderr
        assert errors[0].endswith(f"the checkpoint is kept in {local}: once the store is fixed, rerun with "
                                  "resume=auto (it resumes from it and uploads the next checkpoint)")
        assert "Traceback" not in proc.stderr and (local / MANIFEST).is_file()
    finally:
        stop_server(proc_store)
    proc_store, store = start_server(int(store.endpoint.rsplit(":", 1)[1]))
    try:
        store.fs().mkdir(bucket)
        proc = subprocess.run([sys.executable, "-m", "llama_jreg", "train", *overrides, "resume=auto"], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert {p.split("/")[2] for p in store.fs().find(bucket)} == {"step_00000008"}
    finally:
        stop_server(proc_store)
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'} (step 4)" in proc.stdout
    assert by_step(run, "loss") == by_step(reference, "loss")  # bit for bit


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


def test_a_failed_upload_is_one_line_that_keeps_the_local_checkpoint(s3, tmp_path):
    """The bucket disappears between the start-up check and a save: the upload's error names the URL, the cause
    and where the checkpoint is kept; nothing local is removed."""
    import shutil

    from llama_jreg import UserError
    from llama_jreg.checkpoint.remote import remote_checkpoints

    fixtures = Path(__file__).parent / "fixtures" / "checkpoints" / "v1" / "full"
    src = next(p for p in sorted(fixtures.rglob("step_*")) if (p / MANIFEST).is_file())
    local = tmp_path / "checkpoints" / src.name
    shutil.copytree(src, local)
    before = sorted(p.relative_to(local).as_posix() for p in local.rglob("*"))
    bucket = s3.bucket()
    url = f"s3://{bucket}/ckpt"
    remote = remote_checkpoints(url)
    remote.check()
    s3.fs().rmdir(bucket)
    with pytest.raises(UserError) as e:
        remote.upload(local, keep_last=2)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"trainer.ckpt_dir={url}/{src.name}: bucket {bucket} does not exist")
    assert line.endswith(f"the checkpoint is kept in {local}: once the store is fixed, rerun with resume=auto (it "
                         "resumes from it and uploads the next checkpoint)")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*")) == before
