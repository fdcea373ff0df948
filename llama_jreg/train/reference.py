"""The lambda = 0 reference of `make demo`: what the demo's recipe gives without JREG, so the run summary can
put a run's zeta_L next to something it can be compared with.

``demo_reference.json`` (next to this file) holds the *recipe* (every config value that shapes the numbers:
model, the data's token stream, optim, schedule, seed, init_from and the trainer's step / evaluation /
measurement settings; JREG itself is left out, it is what a user varies), the step, and the lambda = 0 run's train zeta_L, validation zeta_L and
validation loss at that step, plus the machine it ran on. It is written by ``python scripts/demo_reference.py``
(a real `experiment=continued jreg=jump jreg.weight=0` run). :func:`matching_reference` returns it only for a run on CPU whose
recipe equals the reference's and that ended at the same step, so a stale or mismatched reference is never
shown.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from llama_jreg.config import from_yaml
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import cache_root
from llama_jreg.rows import EvalRow, JumpRow, read_metrics, rows_of

REFERENCE_PATH = Path(__file__).with_name("demo_reference.json")

# the config sections / keys that make two runs comparable step for step (JREG excluded: it is the variable);
# of the data section only the keys that shape the token stream of a text corpus
RECIPE_KEYS = ("model", "optim", "schedule", "seed", "init_from", "data.source", "data.files", "data.text_field",
               "data.text_sample_by", "data.hf_path", "data.hf_name", "data.hf_split", "data.tokenizer",
               "data.vocab_size", "data.tokenizer_train_chars", "data.seq_len", "data.micro_batch_size",
               "data.val_fraction", "data.val_sequences", "data.max_documents", "data.document_mask",
               "data.document_positions", "data.mixture", "data.streaming", "trainer.max_steps",
               "trainer.global_batch_size", "trainer.jump_every", "trainer.eval_every", "trainer.eval_batches",
               "trainer.precision", "trainer.loss_chunk_tokens", "trainer.compile")


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def recipe(cfg) -> dict:
    """The recipe of a TrainConfig (or a resolved config mapping) as a flat ``{dotted.key: value}`` dict of the
    :data:`RECIPE_KEYS` that are set (unset keys, None, are left out, so a key added to the config later with
    a None default does not make an older reference stale)."""
    raw = OmegaConf.to_container(OmegaConf.structured(cfg) if not isinstance(cfg, dict) else OmegaConf.create(cfg))
    flat = _flatten(raw)
    root = str(cache_root(DataConfig())) + "/"
    return {k: _in_cache(v, root) for k, v in sorted(flat.items())
            if v is not None and any(k == p or k.startswith(p + ".") for p in RECIPE_KEYS)}


def _in_cache(value, root: str):
    """A path inside the data cache (``init_from=smollm2`` resolves to one) as ``$LLAMA_JREG_CACHE/...``, so the
    recipe is the same on every machine whatever its cache dir."""
    return "$LLAMA_JREG_CACHE/" + value[len(root):] if isinstance(value, str) and value.startswith(root) else value


def load_reference(path: str | Path = REFERENCE_PATH) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def matching_reference(cfg, summary: dict, path: str | Path = REFERENCE_PATH) -> dict | None:
    """The reference when ``cfg``'s recipe equals its recipe and the run (``summary``: steps, device) ended at
    the reference's step on the same kind of device; otherwise None."""
    ref = load_reference(path)
    if not ref or summary.get("device", "cpu") != ref.get("device", "cpu") or summary.get("steps") != ref.get("step"):
        return None
    return ref if recipe(cfg) == ref.get("recipe") else None


def make_reference(run_dir: str | Path, machine: str, command: str) -> dict:
    """The reference of a finished lambda = 0 run: its recipe and its last jump and eval rows."""
    run = Path(run_dir)
    cfg = from_yaml(run / "config.yaml")
    if cfg.jreg.weight != 0:
        raise ValueError(f"{run} has jreg.weight={cfg.jreg.weight}; the reference is a lambda = 0 run")
    rows = read_metrics(run / "metrics.jsonl")
    step = cfg.trainer.max_steps
    jump = [r for r in rows_of(rows, JumpRow) if r.step == step]
    ev = [r for r in rows_of(rows, EvalRow) if r.step == step]
    if not jump or not ev:
        raise ValueError(f"{run} has no jump and eval rows at step {step}; is the run finished?")
    return {"recipe": recipe(cfg), "step": step, "device": "cpu", "zeta_L": jump[-1].zeta_L,
            "val_zeta_L": jump[-1].val_zeta_L, "val_loss": ev[-1].val_loss, "machine": machine,
            "command": command}


def summary_lines(ref: dict) -> list[str]:
    """Two short lines for the run summary (aligned with its 18-wide labels)."""
    return [f"{'lambda=0, step ' + str(ref['step']):>18}: val zeta_L {ref['val_zeta_L']:.4f} | zeta_L {ref['zeta_L']:.4f} "
            f"| val loss {ref['val_loss']:.4f}",
            f"{'':>18}  (same recipe without JREG, on {ref['machine']})"]
