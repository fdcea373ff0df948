"""``init_from=PATH``: continued pre-training from the weights of an existing model.

PATH is one of our checkpoints (``.../checkpoints/step_XXXXXXXX``, or a run dir: its newest intact checkpoint),
an HF Llama-family directory (``config.json`` + safetensors, sharded or not) or a GGUF file. ``init_from=smollm2``
(when no file or directory of that name exists) stands for SmolLM2-135M, fetched once into the cache by
``llama_jreg.interop.smollm2.smollm2_dir()``: the resolved config records the directory, so a run's config.yaml
is the same as with the path written out (``experiment=continued`` uses it). Only the weights
are taken: optimizer, schedule, step counter and data position start fresh (a model-only initial load).

Two halves:

* ``apply_init_from(cfg, overrides)`` runs where a run is built (``train.setup.build_config``, never in
  ``config.load_config``) and reads configs only (``init_from=smollm2`` may fetch the model once):
  the model architecture becomes the source's (the user's runtime keys such as ``model.attn_backend`` stay;
  ``model.max_seq_len`` may be lowered, never raised); an architecture key the user set explicitly that
  contradicts the source is refused in one line; without ``data.tokenizer`` the source's own tokenizer is
  used (HF dir: its tokenizer.json; GGUF: the vocabulary inside it, converted once into the cache; our
  checkpoint: its tokenizer file).
* ``load_init_weights(model, path)`` runs in ``Trainer.__init__`` before ``parallelize`` (every rank loads the
  same weights, so DDP and FSDP2 start from them) and returns the record written to ``<run.dir>/init_from.json``
  and every checkpoint's ``trainer_state.json``: the source, its kind and the sha256 of its weight files.

With ``resume=auto`` a relaunch is safe: once the run has a checkpoint of its own, resume wins and the source's
weights are not loaded again (the architecture and tokenizer still come from it, as before).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from llama_jreg import UserError
from llama_jreg.data.tokenizer import load_tokenizer
from llama_jreg.files import sha256_file
from llama_jreg.interop.smollm2 import smollm2_dir
from llama_jreg.model import SIZES, Llama
from llama_jreg.model_path import ModelPath, resolve

#: ModelConfig fields that define the function the weights compute (all but name, init_std, attn_backend and
#: max_seq_len, which only sizes the RoPE tables)
ARCH_KEYS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "rope_theta",
             "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
             "rope_original_max_seq_len", "norm_eps", "tie_embeddings")
RECORD_FILE = "init_from.json"
SMOLLM2_ALIAS = "smollm2"  # init_from=smollm2: the cached SmolLM2-135M dir (interop.smollm2.smollm2_dir)


def resolve_source(path: str | Path) -> ModelPath:
    """What ``init_from=PATH`` points at (``model_path.resolve``: a run dir is its newest intact checkpoint)."""
    return resolve(path, what="init_from=")


def explicit_model_keys(overrides: list[str]) -> tuple[str | None, set[str]]:
    """(``model=GROUP`` if the user picked one, the ``model.KEY`` names the user set) from CLI overrides."""
    group, keys = None, set()
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if not sep:
            continue
        if key == "model":
            group = value
        elif key.startswith("model."):
            keys.add(key[len("model."):])
    return group, keys


def apply_init_from(cfg, overrides: list[str]):
    """``cfg`` (a TrainConfig with ``init_from`` set) with the source's architecture and tokenizer. Reads
    configs only. Raises UserError when an explicit ``model.*`` override contradicts the source."""
    if cfg.init_from == SMOLLM2_ALIAS and not Path(SMOLLM2_ALIAS).exists():
        cfg.init_from = str(smollm2_dir())
    src = resolve_source(cfg.init_from)
    try:
        source_model = src.model_config()
    except UserError as e:
        raise UserError(f"init_from={cfg.init_from}: {e}") from None
    group, keys = explicit_model_keys(overrides)
    user = cfg.model
    checked = set(ARCH_KEYS) if group is not None else keys & set(ARCH_KEYS)
    for key in ARCH_KEYS:
        if key not in checked:
            continue
        mine, theirs = getattr(user, key), getattr(source_model, key)
        if key == "head_dim":
            mine, theirs = user.hd, source_model.hd
        if mine != theirs:
            how = f"model={group} sets {key}={mine}" if key not in keys else f"model.{key}={mine}"
            raise UserError(f"{how} contradicts init_from={cfg.init_from} ({key}={theirs}); the architecture comes "
                            f"from init_from: drop {'model=' + group if key not in keys else 'model.' + key}")
    max_seq_len = source_model.max_seq_len
    if "max_seq_len" in keys or group is not None:
        if user.max_seq_len > source_model.max_seq_len:
            raise UserError(f"model.max_seq_len={user.max_seq_len} is longer than init_from={cfg.init_from}'s context "
                            f"({source_model.max_seq_len}); lower it")
        max_seq_len = user.max_seq_len
    name = source_model.name if source_model.name in SIZES else "custom"
    cfg.model = dataclasses.replace(source_model, name=name, attn_backend=user.attn_backend, max_seq_len=max_seq_len)
    given = {o.lstrip("+~").partition("=")[0] for o in overrides}
    if "data.vocab_size" not in given:
        cfg.data.vocab_size = cfg.model.vocab_size
    if "data.induction.vocab_size" not in given:
        cfg.data.induction.vocab_size = cfg.model.vocab_size
    if not cfg.data.tokenizer and cfg.data.source != "induction":
        tok = src.tokenizer()
        if tok is None:
            raise UserError(f"init_from={cfg.init_from} has no tokenizer (tokenizer.json / tokenizer.model); set "
                            "data.tokenizer to the one the model was trained with")
        cfg.data.tokenizer = tok
    if cfg.data.tokenizer and cfg.data.source != "induction":
        tok = load_tokenizer(cfg.data.tokenizer)  # checked here, before anything is written
        if tok.vocab_size > cfg.model.vocab_size:
            raise UserError(f"tokenizer {cfg.data.tokenizer} has {tok.vocab_size} tokens but init_from={cfg.init_from} "
                            f"embeds {cfg.model.vocab_size}; use a tokenizer with <= {cfg.model.vocab_size} tokens "
                            "(without data.tokenizer the source's own is used)")
    return cfg


def load_init_weights(model: Llama, path: str | Path) -> dict[str, Any]:
    """Copy the source's weights into ``model`` (built from the source's config); returns the record
    (source, kind, sha256 of every weight file)."""
    src = resolve_source(path)
    sd = src.state_dict(torch.float32)
    want = model.state_dict()
    wrong = [k for k in want if k not in sd or sd[k].shape != want[k].shape]
    if wrong:
        raise UserError(f"init_from={path}: weights do not fit the model ({wrong[0]}); the checkpoint's config and "
                        "weights disagree")
    with torch.no_grad():
        for k, v in want.items():
            v.copy_(sd[k].to(v.dtype))
    del sd
    return {"init_from": str(path), "source": str(src.path), "kind": src.kind,
            "weights_sha256": {p.name: sha256_file(p) for p in src.weight_files()}}


def init_model(cfg, model: Llama, run_dir: Path, resumed_from: Path | None, is_main: bool) -> dict[str, Any] | None:
    """The trainer's hook (before ``parallelize``): load ``cfg.init_from``'s weights into ``model`` unless the
    run resumes from its own checkpoint. Returns the record of the source (None without ``init_from``); rank 0
    writes it to ``<run.dir>/init_from.json`` on the first launch, a resumed run reads it back."""
    if cfg.init_from is None:
        return None
    record_path = Path(run_dir) / RECORD_FILE
    if resumed_from is not None:
        return json.loads(record_path.read_text()) if record_path.is_file() else {"init_from": cfg.init_from}
    record = load_init_weights(model, cfg.init_from)
    if is_main:
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record
