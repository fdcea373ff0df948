"""What a model path points at, read from its config files alone (no weights loaded).

Every command that takes a model path (``init_from=``, ``generate``, ``eval``, ``jump``, ``export-hf``,
``lm-eval``, ``eval-tasks``) accepts the same four things, classified here once:

* one of our checkpoints: ``<run.dir>/checkpoints/step_XXXXXXXX/`` (``model.safetensors`` or sharded ``state/``,
  plus ``config.yaml``);
* one of our run dirs (it has ``checkpoints/``): its newest intact checkpoint (``checkpoint.find_latest``);
* an HF Llama-family directory (``config.json``);
* a GGUF file, or a directory holding exactly one.

``resolve(path) -> ModelPath``; ``ModelPath.model_config()`` reads the architecture, ``ModelPath.tokenizer()``
says where its tokenizer is, ``ModelPath.state_dict()`` reads the weights (keys of ``Llama.state_dict()``).
``llama_jreg.load.load_model`` builds a model (+ tokenizer) from them; ``init_from`` copies them into the model
it trains.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from omegaconf import OmegaConf

from llama_jreg import UserError
from llama_jreg.checkpoint import (
    checkpoint_format,
    find_latest,
    list_checkpoints,
    read_model_state,
    verify,
)
from llama_jreg.interop.hf import config_from_hf, load_hf_llama, read_config_json
from llama_jreg.interop.smollm2 import cache_dir, install_dir
from llama_jreg.model import ModelConfig

STEP_RE = re.compile(r"^step_(\d+)$")
EXPECTED = "a checkpoint dir (checkpoints/step_*), a run dir, an HF Llama dir or a .gguf file"


@dataclasses.dataclass
class ModelPath:
    """A resolved model path: ``kind`` is checkpoint | hf | gguf; ``path`` the checkpoint dir, HF dir or GGUF
    file (a run dir is already resolved to its checkpoint)."""

    kind: str
    path: Path

    @property
    def name(self) -> str:
        if self.kind == "checkpoint" and STEP_RE.match(self.path.name):
            return f"{self.path.parent.parent.name}/{self.path.name}"
        return self.path.name

    @property
    def step(self) -> int | None:
        m = STEP_RE.match(self.path.name) if self.kind == "checkpoint" else None
        return int(m.group(1)) if m else None

    def model_config(self) -> ModelConfig:
        """The architecture, from ``config.yaml`` (ours), ``config.json`` (HF) or the GGUF's metadata."""
        if self.kind == "checkpoint":
            return _checkpoint_model_config(self.path)
        if self.kind == "hf":
            return config_from_hf(read_config_json(self.path))
        return _gguf_model_config(self.path)

    def tokenizer(self) -> str | None:
        """The model's own tokenizer as a path ``data.tokenizer.load_tokenizer`` reads, or None."""
        if self.kind == "gguf":
            return str(gguf_tokenizer_dir(self.path))
        for name in ("tokenizer.json", "tokenizer.model"):
            if (self.path / name).is_file():
                return str(self.path / name)
        return None

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The weights under the names of ``Llama.state_dict()`` (a tied head appears under both names)."""
        if self.kind != "checkpoint":
            model, _ = load_hf_llama(self.path, dtype=dtype)
            return model.state_dict()
        cfg = self.model_config()
        sd = _strip_prefixes(read_model_state(self.path))
        if cfg.tie_embeddings:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        elif "output.weight" not in sd:
            raise UserError(f"{self.path} has no output.weight but the config says tie_embeddings=false")
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}

    def weight_files(self) -> list[Path]:
        """The files holding the weights (what ``init_from`` records the sha256 of)."""
        if self.kind == "gguf":
            return [self.path]
        if self.kind == "hf":
            index = self.path / "model.safetensors.index.json"
            if index.is_file():
                return [self.path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
            return sorted(p for p in self.path.iterdir()
                          if p.name == "model.safetensors" or p.name.startswith("pytorch_model") and p.suffix == ".bin")
        return sorted(p for p in self.path.rglob("*")  # a sharded checkpoint's shards are in state/
                      if p.is_file() and (p.parent == self.path and p.name.startswith("model.") or p.suffix == ".distcp"))


def is_run_dir(path: Path) -> bool:
    """A run dir holds ``checkpoints/`` and is not itself a checkpoint."""
    return (path / "checkpoints").is_dir() and checkpoint_format(path) is None


def newest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of a run that holds weights and matches its manifest (``checkpoint.find_latest``;
    a checkpoint dir assembled by hand, without a manifest, is taken as it is)."""
    latest = find_latest(run_dir, weights_only=True)
    if latest is None:
        found = list_checkpoints(run_dir)
        why = f" (newest: {verify(found[-1])})" if found else ""
        raise UserError(f"{run_dir} has no complete checkpoint{why}; give a checkpoint dir (checkpoints/step_*) "
                        "or another run dir")
    return latest


def resolve(path: str | Path, what: str = "") -> ModelPath:
    """Classify ``path`` (see the module docstring). ``what`` prefixes error messages (e.g. ``init_from=``)."""
    label = f"{what}{path}"
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{label}: no such file or directory; give {EXPECTED}")
    p = p.resolve()
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(f"{label} is a file but not a .gguf; give {EXPECTED}")
        return ModelPath("gguf", p)
    if is_run_dir(p):
        p = newest_checkpoint(p)
    ours = checkpoint_format(p) is not None  # model.safetensors (an HF dir may have one too) or state/
    if ours and (p / "config.yaml").is_file():
        problem = verify(p) if (p / "manifest.json").is_file() else None  # hand-made dirs have no manifest
        if problem is not None:
            raise UserError(f"refusing a damaged checkpoint: {problem}; use another checkpoint of the run")
        return ModelPath("checkpoint", p)
    if (p / "config.json").is_file():
        return ModelPath("hf", p)
    if ours:
        raise UserError(f"{label} is not a complete checkpoint: no config.yaml next to its weights")
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelPath("gguf", ggufs[0])
    raise UserError(f"{label} is not a model: expected a checkpoint dir (model.safetensors or state/ + "
                    "config.yaml), a run dir (with checkpoints/), an HF Llama dir (config.json) or a .gguf file")


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (torch.compile's ``_orig_mod.``, DDP's ``module.``) if a writer left them."""
    out = {}
    for k, v in sd.items():
        for pre in ("_orig_mod.", "module."):
            while k.startswith(pre):
                k = k[len(pre):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def _checkpoint_model_config(path: Path) -> ModelConfig:
    """The ``model`` section of a checkpoint's resolved config.yaml."""
    try:
        raw = OmegaConf.load(path / "config.yaml")
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw.model))
    except Exception as e:  # noqa: BLE001 - yaml/omegaconf raise many kinds for a damaged file
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path / 'config.yaml'} is not a readable llama-jreg config: {detail}") from None


def _gguf_model_config(path: Path) -> ModelConfig:
    """The GGUF's architecture (refused unless Llama) after checking that every tensor can be de-quantised."""
    try:
        import gguf
        from gguf.quants import _type_traits
    except ImportError:
        raise UserError(f"{path}: reading a GGUF file needs the gguf package: pip install 'llama-jreg[gguf]'") from None
    from transformers import AutoConfig  # deferred: ~0.6 s to import (scripts/bench_imports.py)

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the gguf reader raises many kinds for a bad file
        raise UserError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0] if str(e) else e!r})") from None
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "unknown"
    if arch != "llama":
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported; only 'llama' GGUF files "
                        "(e.g. SmolLM2, TinyLlama) can be read")
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    bad = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in plain | set(_type_traits)})
    if bad:
        raise UserError(f"{path}: GGUF quantisation {', '.join(bad)} cannot be de-quantised; use an "
                        "F32/F16/BF16 or Q4/Q5/Q6/Q8 GGUF")
    try:
        hf_cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for an unreadable gguf
        raise UserError(f"{path}: cannot read the GGUF config ({str(e).splitlines()[0] if str(e) else e!r})") from None
    return config_from_hf(hf_cfg)


def gguf_tokenizer_dir(path: Path) -> Path:
    """A directory with the GGUF's vocabulary as tokenizer.json (+ tokenizer_config.json), built once with
    transformers and cached under ``<cache>/tokenizers/gguf-<name>-<size>``."""
    st = path.stat()
    out = cache_dir() / "tokenizers" / f"gguf-{path.stem}-{st.st_size}-{int(st.st_mtime)}"
    if (out / "tokenizer.json").is_file():
        return out
    from transformers import AutoTokenizer  # deferred: ~0.6 s to import (scripts/bench_imports.py)

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for an unreadable vocabulary
        raise UserError(f"{path}: cannot read the GGUF vocabulary ({str(e).splitlines()[0]}); "
                        "set data.tokenizer") from None
    return install_dir(out, lambda tmp: tok.save_pretrained(str(tmp)))
