"""``--archive DIR``: the study's record, small enough to commit (no checkpoints), from which a fresh clone
resumes: :func:`archive_run` keeps a finished, evaluated run, :func:`restore` puts the archived runs back."""

from __future__ import annotations

import shutil
from pathlib import Path

from llama_jreg.study.results import read_json, run_complete

_ARCHIVE_SKIP = (".png", ".pt", ".safetensors", ".bin", ".tmp")


def archive_run(out: Path, archive: Path, sweep: str, name: str) -> bool:
    """Copy a complete, evaluated run into ``archive`` (``<sweep>/<run>/`` with the run dir's files, no
    checkpoints or figures, and ``eval/<sweep>/<run>.json``), and the study's ``timing.jsonl`` and E1 JSON.
    Returns False (copies nothing) while the run is incomplete or not evaluated."""
    run, js = out / sweep / name, out / "eval" / sweep / f"{name}.json"
    ev = read_json(js)
    if ev is None or not run.is_dir():
        return False
    dst = archive / sweep / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in run.iterdir():
        if f.is_file() and not f.name.endswith(_ARCHIVE_SKIP):
            shutil.copyfile(f, dst / f.name)
    if (out / sweep / "sweep.json").is_file():
        shutil.copyfile(out / sweep / "sweep.json", archive / sweep / "sweep.json")
    (archive / "eval" / sweep).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(js, archive / "eval" / sweep / js.name)
    _merge_lines(out / "timing.jsonl", archive / "timing.jsonl")
    for e1 in (out / "e1").glob("*.json"):
        (archive / "e1").mkdir(exist_ok=True)
        shutil.copyfile(e1, archive / "e1" / e1.name)
    return True


def _merge_lines(src: Path, dst: Path) -> None:
    """Append to ``dst`` the lines of ``src`` it lacks (both JSON-lines logs of the same study)."""
    if not src.is_file():
        return
    have = set(dst.read_text().splitlines()) if dst.is_file() else set()
    new = [line for line in src.read_text().splitlines() if line.strip() and line not in have]
    if new:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "a") as f:
            f.write("".join(line + "\n" for line in new))


def restore(archive: Path, out: Path, log) -> int:
    """Put the archived runs that ``out`` lacks (or holds incomplete) into ``out``, with their evaluations, the
    E1 JSON and the timing rows: a fresh clone then resumes the study where the archive ends. Returns how many
    runs were restored."""
    n = 0
    for ev in sorted(archive.glob("eval/**/*.json")):  # eval/<sweep>/<run>.json; v2: eval/<stage>[/<arm>]/seed_K.json
        sweep, name = ev.parent.relative_to(archive / "eval").as_posix(), ev.stem
        src, dst = archive / sweep / name, out / sweep / name
        if not (src / "config.yaml").is_file() or (dst.is_dir() and run_complete(dst, "")):
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copyfile(f, dst / f.name)
        (out / "eval" / sweep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ev, out / "eval" / sweep / ev.name)
        if (archive / sweep / "sweep.json").is_file() and not (out / sweep / "sweep.json").is_file():
            shutil.copyfile(archive / sweep / "sweep.json", out / sweep / "sweep.json")
        n += 1
    for e1 in archive.glob("e1/*.json"):
        if not (out / "e1" / e1.name).is_file():
            (out / "e1").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(e1, out / "e1" / e1.name)
    _merge_lines(archive / "timing.jsonl", out / "timing.jsonl")
    if n:
        log(f"  restored {n} complete run(s) from {archive}")
    return n
