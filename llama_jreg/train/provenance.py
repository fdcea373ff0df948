"""What made a run: ``run.dir/provenance.json``, one entry per start of the run (the first start, then every
resume that still has steps to train; reopening a finished run adds nothing), written by rank 0 once the run dir
and its ``config.yaml`` are in place.

Each entry: ``time`` (UTC), ``step`` (0, or the step resumed from), ``command`` (``sys.argv`` as one shell
line) and ``argv``, ``cwd``, ``world_size``, the versions of llama_jreg / Python / torch, and the code's git
state: ``commit`` (HEAD of the repository the running ``llama_jreg`` package lives in) and ``dirty`` (whether
tracked files differ from that commit; untracked files are not counted). Both are null when the code is not in
a git checkout (e.g. an installed wheel) or git is missing. A fresh run (no resume) starts a new file; a resume
appends, so a run continued by other code says so. ``llama_jreg.study`` lists the commits of a study's
runs from these files.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from llama_jreg import __version__

PROVENANCE = "provenance.json"


def _git(code_root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(code_root), *args], capture_output=True, text=True, timeout=20,
                             check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(code_root: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout whose top level is ``code_root`` (default: the directory holding the
    ``llama_jreg`` package); (None, None) when it is not one: a package installed into a virtual environment
    that sits inside some other checkout must not report that checkout's commit."""
    root = Path(code_root) if code_root is not None else Path(__file__).resolve().parents[2]
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None, None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def read_provenance(run_dir: str | Path) -> list[dict]:
    """The entries of ``run_dir/provenance.json`` ([] when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / PROVENANCE).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    starts = data.get("starts") if isinstance(data, dict) else None
    return [s for s in starts if isinstance(s, dict)] if isinstance(starts, list) else []


def record_start(run_dir: str | Path, step: int = 0, resumed: bool = False, world_size: int = 1,
                 argv: list[str] | None = None, enabled: bool = True) -> dict | None:
    """Append this start of the run to ``run_dir/provenance.json`` (a fresh run, ``resumed=False``, replaces
    the file) and return the entry; does nothing when ``enabled`` is False (ranks other than 0). The file is
    replaced atomically."""
    if not enabled:
        return None

    argv = list(sys.argv if argv is None else argv)
    commit, dirty = git_state()
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step": int(step),
        "command": shlex.join(argv),
        "argv": argv,
        "cwd": os.getcwd(),
        "world_size": int(world_size),
        "commit": commit,
        "dirty": dirty,
        "llama_jreg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    run = Path(run_dir)
    starts = (read_provenance(run) if resumed else []) + [entry]
    tmp = run / f"{PROVENANCE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"starts": starts}, indent=1) + "\n")
    os.replace(tmp, run / PROVENANCE)
    return entry
