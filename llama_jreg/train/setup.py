"""Where a run is built from the command line: ``build_config(overrides)`` is ``load_config`` plus what needs
more than the configs, all before anything is written.

* ``init_from`` is resolved (``init_from=smollm2`` may fetch SmolLM2-135M once into the cache): the model
  architecture and, without ``data.tokenizer``, the tokenizer become the source's (``train/init_from.py``).
* The data's files are checked (a mixture's files exist and hold text).
* Relative paths (``data.files``, ``data.tokenizer``, a mixture's files, a task's FILE) become absolute, so the
  run's config.yaml reads the same data from any directory (``eval``, ``eval-tasks``, ``jump`` ... on the run
  dir).

``load_config`` alone (``train --print-config``) reads configs only and touches neither the data nor the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from llama_jreg.config import TrainConfig, load_config, validate
from llama_jreg.data.mixture import check_mixture
from llama_jreg.tasks.spec import parse_spec
from llama_jreg.train.init_from import apply_init_from


def build_config(overrides: list[str] | None = None) -> TrainConfig:
    """The config of a run: composed, validated, ``init_from`` resolved, data files checked, paths absolute."""
    overrides = list(overrides or [])
    return resolve_run(load_config(overrides), overrides)


def resolve_run(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``cfg`` (from ``load_config(overrides)``) made ready to train; see the module docstring."""
    if cfg.init_from is not None:
        cfg = validate(apply_init_from(cfg, overrides))
    if cfg.data.mixture:
        check_mixture(cfg.data)
    return absolute_paths(cfg)


def _absolute(path: str | None) -> str | None:
    """A relative path that exists here (or a glob) as an absolute one; anything else unchanged."""
    if not path or "://" in path:
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return path
    return os.path.abspath(expanded)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Data and task file paths relative to the current directory, made absolute (in place)."""
    d = cfg.data
    if d.source != "hf":  # an hf source's files are the builder's data_files, kept as written
        d.files = [_absolute(f) for f in d.files]
    d.tokenizer = _absolute(d.tokenizer)
    for src in d.mixture:
        if src.hf_path is None:
            src.files = [_absolute(f) for f in src.files]
    if d.induction.bigram not in ("random", "shakespeare") and Path(d.induction.bigram).exists():
        d.induction.bigram = _absolute(d.induction.bigram)
    tasks = []
    for text in cfg.tasks:
        spec = parse_spec(text)
        if spec.arg and spec.kind in ("cloze", "choice") or (spec.kind == "lm-eval" and spec.arg
                                                             and spec.arg.endswith((".yaml", ".yml"))):
            text = text.replace(spec.arg, _absolute(spec.arg), 1)
        tasks.append(text)
    cfg.tasks = tasks
    return cfg
