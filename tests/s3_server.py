"""A real S3 API server for the tests: moto's standalone server (``moto[server]`` from PyPI), started on
127.0.0.1 on a free port, with s3fs as the client (the dev extra installs both).

``s3_server`` (session) starts it once; ``s3`` (per test) puts its endpoint and test credentials into the
environment the standard way (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), so the
code under test and CLI subprocesses reach it as they would reach any S3-compatible store. Use them with
``from tests.s3_server import s3, s3_server  # noqa: F401`` in a test module.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to talk to this server (and to nothing else: no instance-metadata lookups)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def fs(self):
        import s3fs  # deferred: an optional extra

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.endpoint, skip_instance_cache=True)

    def bucket(self) -> str:
        """A new, empty bucket (its name)."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        return name

    def upload(self, local: Path, url: str) -> None:
        self.fs().put_file(str(local), url.removeprefix("s3://"))


def start_server(port: int | None = None) -> tuple[subprocess.Popen, S3Server]:
    """A moto S3 server of its own on 127.0.0.1 (``port`` or a free one), answering once this returns."""
    port = port or free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).read()
            return proc, S3Server(endpoint)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("moto.server", reason="needs moto[server] (the dev extra)")
    pytest.importorskip("s3fs", reason="needs s3fs (the s3 extra)")
    proc, server = start_server()
    try:
        yield server
    finally:
        stop_server(proc)


@pytest.fixture
def s3(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
