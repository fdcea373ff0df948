"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore, composed with the Compose API.

``load_config(overrides)`` composes ``configs/train.yaml`` with the user's overrides, checks every key and
type against :class:`TrainConfig` (a wrong key or type fails here), then validates values (``validate``).
Every failure is a :class:`llama_jreg.UserError` with one clear line; nothing heavy has run yet.

We use the Compose API rather than ``@hydra.main`` so that launchers (accelerate, torchrun) and Hydra do not
fight over argv or output directories: every rank composes the same config and agrees on one ``run.dir``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf  # noqa: F401
from omegaconf.errors import OmegaConfBaseException

from llama_jreg import UserError
from llama_jreg.data.mixture import check_mixture
from llama_jreg.data.schema import DataConfig
from llama_jreg.jreg import JregConfig
from llama_jreg.model import SIZES, ModelConfig
from llama_jreg.tasks.spec import parse_specs
from llama_jreg.train.init_from import apply_init_from

CONFIG_DIR = Path(os.environ.get("LLAMA_JREG_CONFIGS", Path(__file__).resolve().parent.parent / "configs"))


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_embeddings: bool = False  # weight decay off for norms and embeddings by default
    fused: bool | None = None  # None = fused AdamW on CUDA and CPU, foreach elsewhere
    grad_clip: float = 1.0  # 0 = off
    # z-loss (PaLM, OLMo): adds z_loss * mean over target tokens of logsumexp(logits)^2 to the training loss,
    # inside the fused LM head + loss (llama_jreg/loss.py); logged as z_loss. 0 = off (bit-identical)
    z_loss: float = 0.0


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * lr (cosine, wsd)
    decay_fraction: float = 0.2  # wsd: fraction of steps in the final decay


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    # stop cleanly (checkpoint saved) after this many steps of one invocation; resume=auto continues.
    # The schedule still spans max_steps (for job time limits / chained jobs). null = run to max_steps
    steps_per_run: int | None = None
    global_batch_size: int | None = None  # sequences per optimizer step; None = micro_batch_size * world
    log_every: int = 10
    jump_every: int = 50
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 500
    keep_last: int = 3
    # sharded: every rank writes its own shards (torch.distributed.checkpoint), loadable at any world size;
    # full: model.safetensors + optimizer.pt gathered on rank 0; auto: sharded under parallel=fsdp, else full.
    # Resume reads either format (llama_jreg/train/checkpoint.py)
    checkpoint_format: str = "auto"
    # write the sharded checkpoint's shards in a background thread while training continues; the checkpoint
    # exists (manifest, rename) only once the write completed (at the next save or the end of the run).
    # Needs the sharded format (auto picks it)
    async_checkpoint: bool = False
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    # tokens per chunk of the fused LM head + cross-entropy (llama_jreg/loss.py); null = auto (32 MiB of fp32
    # logits per chunk on CPU, 512 MiB on CUDA, >= 512 tokens); 0 = materialise the full logits (reference path)
    loss_chunk_tokens: int | None = None
    activation_checkpointing: bool = False
    # torch.profiler over steps profile_from .. profile_from + profile_steps - 1 (null = off); traces and op
    # tables go to <run.dir>/profile/ (llama_jreg/train/profiling.py)
    profile_from: int | None = None
    profile_steps: int = 3
    deterministic: bool = False
    nonfinite: str = "skip"  # skip | halt
    max_nonfinite_in_a_row: int = 5
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda
    # on CPU with glibc: keep freed memory in the heap so the step's large temporaries do not page-fault
    # every step (process-wide mallopt settings; llama_jreg/train/allocator.py)
    malloc_tuning: bool = True
    plots: bool = True  # write <run.dir>/plots/ at the end of the run (llama_jreg.analysis.plots)
    # task evaluation (top-level ``tasks``; llama_jreg/tasks/): every task_every steps (null = eval_every), at
    # the end, and at step 0 of an init_from run; task_n examples per task without @N; task_batch_size
    # sequences per forward pass
    task_every: int | None = None
    task_n: int = 200
    task_batch_size: int = 8


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "llama-jreg"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    run_name: str | None = None
    mode: str | None = None  # online | offline | disabled (default: $WANDB_MODE or online)


@dataclass
class ParallelConfig:
    name: str = "ddp"  # ddp | fsdp


@dataclass
class RunConfig:
    dir: str = "runs/default"
    root: str | None = None  # if set, run.dir must resolve inside it


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    jreg: JregConfig = field(default_factory=JregConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    seed: int = 1234
    resume: str | None = None  # None | auto | PATH
    # continued pre-training: the weights (only) of a checkpoint / run dir / HF Llama dir / .gguf; the model
    # architecture and (without data.tokenizer) the tokenizer come from it (llama_jreg/train/init_from.py)
    init_from: str | None = None
    # task evaluation during training: specs KIND[:ARG][@N], e.g. [induction, cloze@100, choice:piqa.jsonl]
    # (llama_jreg/tasks/spec.py); empty = off
    tasks: list[str] = field(default_factory=list)


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Value checks that types cannot express. Raises UserError with one clear line."""
    if cfg.model.name in SIZES or cfg.model.name == "custom":
        pass
    else:
        raise UserError(f"unknown model size {cfg.model.name!r}; choose one of {', '.join(SIZES)}")
    cfg.model.validate()
    cfg.jreg.validate(cfg.model.n_layers)
    d = cfg.data
    if d.source not in ("shakespeare", "local", "hf", "induction"):
        raise UserError(f"unknown data source {d.source!r}; choose data=shakespeare|local|hf|induction")
    if d.seq_len > cfg.model.max_seq_len:
        raise UserError(
            f"data.seq_len={d.seq_len} is longer than the model context model.max_seq_len={cfg.model.max_seq_len}; "
            "lower data.seq_len or raise model.max_seq_len"
        )
    if d.seq_len < 2 or d.micro_batch_size < 1:
        raise UserError("data.seq_len must be >= 2 and data.micro_batch_size >= 1")
    if d.document_mask and d.source == "induction":
        raise UserError("data.document_mask=true needs documents separated by EOS, and data=induction has one "
                        "sequence per row and no EOS; drop data.document_mask")
    if d.document_positions and not d.document_mask:
        raise UserError("data.document_positions=true restarts RoPE positions per document and needs "
                        "data.document_mask=true; set both, or drop data.document_positions")
    if d.mixture:
        check_mixture(d)
    elif d.source == "local" and not d.files:
        raise UserError("data=local needs files: add data.files=[path/to/corpus.jsonl,...]")
    if d.source == "hf" and not d.hf_path and not d.mixture:
        raise UserError("data=hf needs a dataset: add data.hf_path=NAME (e.g. HuggingFaceFW/fineweb-edu)")
    if d.vocab_size is not None and d.vocab_size > cfg.model.vocab_size:
        raise UserError(
            f"data.vocab_size={d.vocab_size} is larger than model.vocab_size={cfg.model.vocab_size}; "
            "lower data.vocab_size or raise model.vocab_size"
        )
    t = cfg.trainer
    for key in ("max_steps", "log_every", "jump_every", "eval_every", "ckpt_every", "keep_last"):
        if getattr(t, key) < 1:
            raise UserError(f"trainer.{key}={getattr(t, key)} must be >= 1")
    if t.task_every is not None and t.task_every < 1:
        raise UserError(f"trainer.task_every={t.task_every} must be >= 1 (null = trainer.eval_every)")
    for key in ("task_n", "task_batch_size"):
        if getattr(t, key) < 1:
            raise UserError(f"trainer.{key}={getattr(t, key)} must be >= 1")
    if cfg.tasks:
        parse_specs(cfg.tasks)  # syntax and names; the tasks' data is checked in the trainer's set-up
    if t.loss_chunk_tokens is not None and t.loss_chunk_tokens < 0:
        raise UserError(f"trainer.loss_chunk_tokens={t.loss_chunk_tokens} must be >= 0 (null = auto, 0 = unfused)")
    if t.profile_from is not None and (t.profile_from < 1 or t.profile_steps < 1):
        raise UserError(f"trainer.profile_from={t.profile_from} and trainer.profile_steps={t.profile_steps} must be "
                        ">= 1 (profile_from=null turns profiling off)")
    if t.profile_from is not None and t.profile_from > t.max_steps:
        raise UserError(f"trainer.profile_from={t.profile_from} is after trainer.max_steps={t.max_steps}: nothing "
                        "would be profiled; choose a step <= max_steps")
    if t.checkpoint_format not in ("auto", "sharded", "full"):
        raise UserError(f"unknown trainer.checkpoint_format={t.checkpoint_format!r}; choose auto, sharded or full")
    if t.async_checkpoint and t.checkpoint_format == "full":
        raise UserError("trainer.async_checkpoint=true writes sharded checkpoints only; set "
                        "trainer.checkpoint_format=sharded (or auto), or trainer.async_checkpoint=false")
    if t.precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"unknown trainer.precision={t.precision!r}; choose auto, fp32 or bf16")
    if t.nonfinite not in ("skip", "halt"):
        raise UserError(f"unknown trainer.nonfinite={t.nonfinite!r}; choose skip or halt")
    if t.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown trainer.device={t.device!r}; choose auto, cpu or cuda")
    if cfg.optim.lr <= 0:
        raise UserError(f"optim.lr={cfg.optim.lr} must be > 0")
    if not cfg.optim.z_loss >= 0:  # also refuses nan
        raise UserError(f"optim.z_loss={cfg.optim.z_loss} must be >= 0 (0 = off; 1e-4 is the usual value)")
    if cfg.schedule.name not in ("cosine", "wsd", "constant"):
        raise UserError(f"unknown schedule {cfg.schedule.name!r}; choose schedule=cosine|wsd|constant")
    if cfg.logger.name not in ("none", "wandb"):
        raise UserError(f"unknown logger {cfg.logger.name!r}; choose logger=none|wandb")
    if cfg.parallel.name not in ("ddp", "fsdp"):
        raise UserError(f"unknown parallel {cfg.parallel.name!r}; choose parallel=ddp|fsdp")
    if cfg.resume not in (None, "auto", "none") and not Path(cfg.resume).exists():
        raise UserError(f"resume={cfg.resume}: no such checkpoint; use resume=auto or an existing path")
    check_run_dir(cfg.run)
    return cfg


def check_run_dir(run: RunConfig) -> Path:
    """run.dir must not escape run.root (when a root is set) - configs cannot write outside it."""
    d = Path(run.dir).expanduser().resolve()
    if run.root:
        root = Path(run.root).expanduser().resolve()
        if d != root and root not in d.parents:
            raise UserError(f"run.dir={run.dir} resolves outside run.root={run.root}; choose a dir inside it")
    return d


def _explain_omegaconf_error(e: Exception) -> str:
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        return f"unknown config key {key or msg}; see `llama-jreg train --help` for the keys"
    if key:
        return f"bad value for {key}: {msg}"
    return msg


def compose(overrides: list[str] | None = None) -> Any:
    """Compose the raw (DictConfig) train config from configs/ plus overrides."""
    if not CONFIG_DIR.is_dir():
        raise UserError(f"config directory {CONFIG_DIR} not found; set LLAMA_JREG_CONFIGS to the repo's configs/")
    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__
        if cause is not None and "Error merging override" in str(e):
            raise UserError(f"{_first_line(e)}: {_explain_omegaconf_error(cause)}") from None
        raise UserError(_first_line(e)) from None


def _first_line(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else type(e).__name__
    found = re.search(r"Could not find '(\w+)/([^']*)'", text)
    if found and (CONFIG_DIR / found.group(1)).is_dir():
        group = found.group(1)
        options = "|".join(sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")))
        return f"unknown {group} {found.group(2)!r}; choose {group}={options}"
    if "Could not find" in text or "In 'train'" in text:
        return text + " (check the group option name, e.g. model=tiny|small|medium|large)"
    if "Could not override" in text or "Key '" in text:
        extra = " ".join(m.strip() for m in msg[1:2])
        return f"{text} {extra}".strip() + " (use +key=value only for new keys; see `llama-jreg train --help`)"
    return text


def to_train_config(raw: Any) -> TrainConfig:
    try:
        schema = OmegaConf.structured(TrainConfig)
        merged = OmegaConf.merge(schema, raw)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(_explain_omegaconf_error(e)) from None
    assert isinstance(obj, TrainConfig)
    if obj.resume in ("none", "null", ""):
        obj.resume = None
    if obj.init_from in ("none", "null", ""):
        obj.init_from = None
    if obj.data.vocab_size is None:
        obj.data.vocab_size = obj.model.vocab_size
    if obj.data.induction.vocab_size is None:
        obj.data.induction.vocab_size = obj.model.vocab_size
    return obj


def load_config(overrides: list[str] | None = None) -> TrainConfig:
    """Compose + type-check + validate. The one entry point used by the CLI, tests and scripts.

    With ``init_from`` the model architecture (and, without ``data.tokenizer``, the tokenizer) is the
    source's; the overrides say which ``model.*`` keys the user set (those must agree with the source)."""
    cfg = to_train_config(compose(overrides))
    if cfg.init_from is not None:
        cfg = apply_init_from(cfg, list(overrides or []))
    return validate(cfg)


def apply_data_overrides(base, overrides: list[str]):
    """The checkpoint's TrainConfig with Hydra-style data overrides (``data=NAME``, ``data.key=value``,
    ``seed=N``) applied, validated through the same schema as training."""
    raw = OmegaConf.structured(base)
    for ov in overrides:
        if "=" not in ov:
            raise UserError(f"bad override {ov!r}; use key=value, e.g. data=induction or data.seq_len=64")
        key, value = ov.split("=", 1)
        key = key.lstrip("+")
        if key == "data":
            path = CONFIG_DIR / "data" / f"{value}.yaml"
            if not path.is_file():
                choices = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")))
                raise UserError(f"unknown data config {value!r}; choose one of {choices}")
            raw.data = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(path))
        elif key.startswith("data.") or key == "seed":
            try:
                OmegaConf.update(raw, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=True)
            except Exception as e:  # noqa: BLE001 - omegaconf raises several kinds
                raise UserError(f"bad override {ov!r}: {str(e).splitlines()[0]}") from None
        else:
            raise UserError(f"override {ov!r}: eval takes only data.* and seed overrides")
    return to_train_config(raw)  # fills data.vocab_size / data.induction.vocab_size from the model


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(path: str | Path) -> TrainConfig:
    """Read a resolved config.yaml (as written into run dirs and checkpoints)."""
    try:
        raw = OmegaConf.load(path)  # a safe YAML loader: python-object tags are refused, never run
    except (OSError, yaml.YAMLError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a readable llama-jreg config: {detail}") from None
    return to_train_config(raw)
