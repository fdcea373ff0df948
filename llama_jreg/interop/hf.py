"""Import and export Llama weights in the Hugging Face transformers layout.

* ``load_hf_llama(path_or_model)`` -> ``(Llama, ModelConfig)`` from an HF ``LlamaForCausalLM`` directory
  (config.json + safetensors or .bin, sharded or not), a GGUF file (de-quantised by transformers, needs the
  ``gguf`` package), or an in-memory ``LlamaForCausalLM``.
* ``save_hf_llama(model, out_dir, tokenizer_path=None)`` writes config.json + model.safetensors (+ tokenizer
  files from one of our SentencePiece models) that ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads
  offline with the same logits.

No weight permutation is needed: our RoPE uses HF's half-split ("rotate_half") layout. What our model cannot
express is refused with a :class:`llama_jreg.UserError` (rope scalings other than linear / llama3, biases,
activations other than SiLU), rather than loaded into something that silently computes a different function.

Name mapping (ours <- HF)::

    tok_embeddings.weight             <- model.embed_tokens.weight
    layers.i.attn_norm.weight         <- model.layers.i.input_layernorm.weight
    layers.i.attn.w{q,k,v,o}.weight   <- model.layers.i.self_attn.{q,k,v,o}_proj.weight
    layers.i.mlp_norm.weight          <- model.layers.i.post_attention_layernorm.weight
    layers.i.mlp.{w1,w3,w2}.weight    <- model.layers.i.mlp.{gate,up,down}_proj.weight
    norm.weight                       <- model.norm.weight
    output.weight                     <- lm_head.weight (absent when tied)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from tokenizers import normalizers

from llama_jreg import UserError
from llama_jreg.files import chmod_like_new_file
from llama_jreg.model import Llama, ModelConfig, rope_tables

_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
}

# HF model types whose checkpoints are plain Llama (same weights, same forward)
LLAMA_MODEL_TYPES = ("llama",)



# ---------------------------------------------------------------------------------------------- config


def _rope(d: dict) -> tuple[float, str, dict | None]:
    """(theta, rope_type, scaling dict) from an HF config dict, old (rope_theta + rope_scaling) or
    transformers>=5 (rope_parameters) style."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or None
    theta = d.get("rope_theta") or params.get("rope_theta") or (scaling or {}).get("rope_theta") or 10000.0
    rtype = "default"
    for src in (scaling or {}, params):
        t = src.get("rope_type", src.get("type"))
        if t:
            rtype = t
            break
    return float(theta), rtype, (scaling or params or None)


def read_config_json(directory: Path) -> dict:
    """An HF model directory's ``config.json`` as a dict; UserError (one line) when it is not valid JSON or
    not an object."""
    try:
        d = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{directory / 'config.json'} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{directory / 'config.json'} is not an HF model config")
    return d


def config_from_hf(hf_config: Any, *, max_seq_len: int | None = None) -> ModelConfig:
    """Map an HF ``LlamaConfig`` (object or dict, e.g. a parsed config.json) to our :class:`ModelConfig`.

    Raises UserError for anything our Llama cannot compute exactly."""
    d = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    mtype = d.get("model_type")
    if mtype not in LLAMA_MODEL_TYPES:
        arch = ",".join(d.get("architectures") or []) or "unknown architecture"
        raise UserError(
            f"not a Llama model: model_type={mtype!r} ({arch}); only Llama-architecture checkpoints "
            "(model_type 'llama', e.g. Llama 2/3, SmolLM2, TinyLlama) can be loaded"
        )
    theta, rtype, scaling = _rope(d)
    if rtype not in ("default", "linear", "llama3"):
        raise UserError(
            f"rope scaling type {rtype!r} ({scaling}) is not supported; only plain RoPE and the 'linear' and "
            "'llama3' scalings can be loaded"
        )
    rope = {}
    if rtype != "default":
        if float(scaling.get("attention_factor") or 1.0) != 1.0:
            raise UserError(f"rope scaling {scaling} with attention_factor != 1 is not supported")
        rope = {"rope_scaling": rtype, "rope_factor": float(scaling["factor"])}
        if rtype == "llama3":
            rope.update(rope_low_freq_factor=float(scaling["low_freq_factor"]),
                        rope_high_freq_factor=float(scaling["high_freq_factor"]),
                        rope_original_max_seq_len=int(scaling["original_max_position_embeddings"]))
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise UserError("attention_bias/mlp_bias=true is not supported: our Llama has no bias terms")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"hidden_act={act!r} is not supported; our Llama's MLP is SwiGLU (silu)")
    if int(d.get("pretraining_tp", 1) or 1) != 1:
        raise UserError("pretraining_tp != 1 is not supported")
    dim = int(d["hidden_size"])
    n_heads = int(d["num_attention_heads"])
    head_dim = d.get("head_dim")
    head_dim = int(head_dim) if head_dim else dim // n_heads
    return ModelConfig(
        name="custom",
        vocab_size=int(d["vocab_size"]),
        dim=dim,
        n_layers=int(d["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
        head_dim=None if head_dim * n_heads == dim else head_dim,
        ffn_dim=int(d["intermediate_size"]),
        max_seq_len=int(max_seq_len or d.get("max_position_embeddings") or 2048),
        rope_theta=theta,
        **rope,
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        init_std=float(d.get("initializer_range", 0.02)),
    ).validate()


def _hf_rope_scaling(cfg: ModelConfig) -> dict | None:
    if cfg.rope_scaling is None:
        return None
    out = {"rope_type": cfg.rope_scaling, "factor": cfg.rope_factor}
    if cfg.rope_scaling == "llama3":
        out.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                   original_max_position_embeddings=cfg.rope_original_max_seq_len)
    return out


def hf_config_from_ours(cfg: ModelConfig, dtype: torch.dtype = torch.float32, **extra):
    """A ``transformers.LlamaConfig`` for our :class:`ModelConfig` (``architectures=["LlamaForCausalLM"]``)."""
    from transformers import LlamaConfig  # deferred: ~0.6 s to import (scripts/bench_imports.py)

    kw = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.hd,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": _hf_rope_scaling(cfg),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "architectures": ["LlamaForCausalLM"],
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    kw.update(extra)
    hf_cfg = LlamaConfig(**kw)
    # transformers>=5 folds rope_theta into rope_parameters; older versions keep rope_theta. Either way,
    # make sure the value we mean is the one written.
    params = getattr(hf_cfg, "rope_parameters", None)
    if isinstance(params, dict):
        params["rope_theta"] = cfg.rope_theta
    else:
        hf_cfg.rope_theta = cfg.rope_theta
    return hf_cfg


# ---------------------------------------------------------------------------------------------- weights


def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename an HF Llama state dict to ours (no permutation needed). Extra keys such as rotary buffers are
    ignored; missing ones raise UserError."""
    prefix = "model." if any(k.startswith("model.") for k in hf_sd) else ""
    out: dict[str, torch.Tensor] = {}

    def take(ours: str, theirs: str) -> None:
        if theirs not in hf_sd:
            raise UserError(f"HF checkpoint lacks weight {theirs!r} (needed for {ours}); is it a full Llama model?")
        out[ours] = hf_sd[theirs]

    take("tok_embeddings.weight", f"{prefix}embed_tokens.weight")
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_MAP.items():
            take(f"layers.{i}.{ours}", f"{prefix}layers.{i}.{theirs}")
    take("norm.weight", f"{prefix}norm.weight")
    if not cfg.tie_embeddings:
        take("output.weight", "lm_head.weight")
    else:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """Our model's weights under HF names (a tied head is stored once, as ``model.embed_tokens.weight``)."""
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"]}
    for i in range(model.cfg.n_layers):
        for ours, theirs in _LAYER_MAP.items():
            out[f"model.layers.{i}.{theirs}"] = sd[f"layers.{i}.{ours}"]
    out["model.norm.weight"] = sd["norm.weight"]
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = sd["output.weight"]
    return out


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    index = d / "model.safetensors.index.json"
    if (d / "model.safetensors").is_file():
        return load_file(str(d / "model.safetensors"))
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(d / f)))
        return sd
    if (d / "pytorch_model.bin").is_file():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    bin_index = d / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        sd = {}
        for f in sorted(set(json.loads(bin_index.read_text())["weight_map"].values())):
            sd.update(torch.load(d / f, map_location="cpu", weights_only=True))
        return sd
    raise UserError(
        f"{d} has a config.json but no weights (model.safetensors, model.safetensors.index.json or "
        "pytorch_model.bin)"
    )


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> Llama:
    """Our Llama holding exactly ``sd`` (no random init of the full model: built on the meta device)."""
    dtype = dtype or sd["tok_embeddings.weight"].dtype
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device="cpu").to(dtype)
    # non-persistent RoPE tables were left uninitialised by to_empty; the tie was broken by it too
    model.rope_cos, model.rope_sin = rope_tables(cfg)
    if cfg.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
        sd = {k: v for k, v in sd.items() if k != "output.weight"}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "output.weight")]
    if missing or unexpected:
        raise UserError(f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def _from_hf_model(hf_model: Any, dtype: torch.dtype | None, max_seq_len: int | None) -> tuple[Llama, ModelConfig]:
    d = hf_model.config.to_dict()
    d.pop("quantization_config", None)
    cfg = config_from_hf(d, max_seq_len=max_seq_len)
    sd = {k: v.detach() for k, v in hf_model.state_dict().items()}
    return build_model(cfg, state_dict_from_hf(sd, cfg), dtype), cfg


def load_hf_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """transformers ``LlamaForCausalLM`` de-quantised from a GGUF file (needs the ``gguf`` package), with the
    ``quantization_config`` dropped so it saves as a plain HF model."""
    path = Path(path)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("loading GGUF files needs the gguf package: pip install 'llama-jreg[gguf]'") from None
    from transformers import (  # deferred: ~0.6 s to import (scripts/bench_imports.py)
        AutoConfig,
        AutoModelForCausalLM,
    )

    try:
        hf_cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for an unreadable gguf
        raise UserError(f"cannot read GGUF file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    config_from_hf(hf_cfg)  # refuse non-Llama architectures before the (slow) de-quantisation
    quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    # transformers marks a GGUF-loaded model as quantised (and refuses to save it); rebuild a plain model
    # around the same, already de-quantised, tensors
    cfg_dict = quantized.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    clean_cfg = type(quantized.config).from_dict(cfg_dict)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(clean_cfg, dtype=dtype)
    hf_model.load_state_dict(quantized.state_dict(), strict=False, assign=True)
    hf_model.tie_weights()
    leftover = [n for n, p in hf_model.named_parameters() if p.is_meta]
    if leftover:
        raise UserError(f"GGUF file {path} lacks weights for {leftover[:3]}")
    return hf_model.eval()


def load_hf_llama(
    path_or_model: Any,
    *,
    dtype: torch.dtype | None = torch.float32,
    max_seq_len: int | None = None,
) -> tuple[Llama, ModelConfig]:
    """Our :class:`Llama` (eval mode) and its :class:`ModelConfig` from an HF Llama.

    ``path_or_model``: an HF model directory (config.json + weights), a ``.gguf`` file, or an in-memory
    ``transformers.LlamaForCausalLM``. ``dtype``: cast the weights (default fp32; None keeps the stored
    dtype). ``max_seq_len`` overrides ``max_position_embeddings`` (it sizes the RoPE tables).
    """
    if not isinstance(path_or_model, (str, os.PathLike)):
        if not hasattr(path_or_model, "config") or not hasattr(path_or_model, "state_dict"):
            raise UserError(f"expected a path or a transformers model, got {type(path_or_model).__name__}")
        return _from_hf_model(path_or_model, dtype, max_seq_len)
    p = Path(path_or_model).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if p.is_file():
        if p.suffix == ".gguf":
            return _from_hf_model(load_hf_gguf(p, dtype or torch.float32), dtype, max_seq_len)
        raise UserError(f"{p} is a file but not a .gguf; give an HF model directory (with config.json) or a .gguf file")
    ggufs = sorted(p.glob("*.gguf"))
    if not (p / "config.json").is_file():
        if len(ggufs) == 1:
            return _from_hf_model(load_hf_gguf(ggufs[0], dtype or torch.float32), dtype, max_seq_len)
        raise UserError(f"{p} has no config.json; not an HF model directory")
    cfg = config_from_hf(read_config_json(p), max_seq_len=max_seq_len)
    sd = state_dict_from_hf(_read_weights(p), cfg)
    return build_model(cfg, sd, dtype), cfg


# ---------------------------------------------------------------------------------------------- export


def save_hf_tokenizer(tokenizer_path: str | Path, out_dir: str | Path, *, model_max_length: int | None = None):
    """Save one of our SentencePiece models as an HF fast tokenizer in ``out_dir`` (tokenizer.json,
    tokenizer_config.json, special_tokens_map and a copy of tokenizer.model). Returns the HF tokenizer.

    transformers' own Llama conversion is the starting point (vocab, merges, byte fallback, decoder), with two
    fixes so that ids equal SentencePiece's on *any* text (tests check this):

    * SentencePiece always adds the dummy-prefix "▁" (``add_dummy_prefix``), also before text that already
      starts with a space; HF's ``Metaspace`` pre-tokenizer skips it then. We prepend in the normalizer (as
      Llama-2's own tokenizer.json does) and drop the pre-tokenizer.
    * SentencePiece reads "<s>" in text as plain characters; ``split_special_tokens=True`` does the same.

    The class is the generic ``PreTrainedTokenizerFast`` because ``LlamaTokenizer``'s constructor (transformers
    5) rebuilds the normalizer/pre-tokenizer, undoing the first fix; ``AutoTokenizer`` loads it either way.
    """
    from transformers import (  # deferred: ~0.6 s to import (scripts/bench_imports.py)
        LlamaTokenizer,
        PreTrainedTokenizerFast,
    )

    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise UserError(f"tokenizer {tokenizer_path}: no such file")
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    special = {}
    for key, idx in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()),
                     ("pad_token", sp.pad_id())):
        if idx >= 0:
            special[key] = sp.id_to_piece(idx)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(tokenizer_path, Path(tmp) / "tokenizer.model")
        llama_tok = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_bos_token=False, add_eos_token=False)
        backend = llama_tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
        **special,
        **({"model_max_length": model_max_length} if model_max_length else {}),
    )
    out = Path(out_dir)
    tok.save_pretrained(str(out))
    conf_path = out / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text())
    conf["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name transformers 4 and 5 both resolve
    conf_path.write_text(json.dumps(conf, indent=2) + "\n")
    shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    if len(tok) != sp.GetPieceSize():
        raise UserError(f"tokenizer conversion kept {len(tok)} of {sp.GetPieceSize()} pieces")
    return tok


def save_hf_llama(
    model: Llama,
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    *,
    dtype: torch.dtype | None = None,
    special_ids: dict[str, int | None] | None = None,
) -> Path:
    """Write ``model`` as an HF Llama directory: config.json + model.safetensors (+ tokenizer files when
    ``tokenizer_path`` names one of our SentencePiece models). ``dtype``: cast the saved weights (default: the
    model's own dtype). ``special_ids``: ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` for config.json
    when the tokenizer is not one of ours (an HF tokenizer saved next to it by the caller). Loads offline with
    ``AutoModelForCausalLM.from_pretrained(out_dir)``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype or next(model.parameters()).dtype
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in hf_state_dict(model).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    chmod_like_new_file(out / "model.safetensors")  # readable like the rest of the export (and checkpoints)
    extra = dict(special_ids or {})
    if tokenizer_path is not None:
        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
        extra = {
            "bos_token_id": sp.bos_id() if sp.bos_id() >= 0 else None,
            "eos_token_id": sp.eos_id() if sp.eos_id() >= 0 else None,
            "pad_token_id": sp.pad_id() if sp.pad_id() >= 0 else None,
        }
    hf_cfg = hf_config_from_ours(model.cfg, dtype, **extra)
    hf_cfg.save_pretrained(str(out))
    if tokenizer_path is not None:
        save_hf_tokenizer(tokenizer_path, out, model_max_length=model.cfg.max_seq_len)
    return out
