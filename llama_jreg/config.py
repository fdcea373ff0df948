"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore, composed with the Compose API.

``load_config(overrides)`` composes ``configs/train.yaml`` with the user's overrides, checks every key and
type against :class:`TrainConfig` (an unknown key, with or without ``+``, fails here naming the closest valid
one), then validates values: each schema checks itself (``validate`` next to its fields; the data schema in
``llama_jreg/data/schema.py``), allowed values come from the constants below. Every failure is a
:class:`llama_jreg.UserError` with one clear line. Loading reads configs only: it touches no data, model or
network (``init_from`` is resolved where a run is built: ``llama_jreg/train/setup.py``).

We use the Compose API rather than ``@hydra.main`` so that launchers (accelerate, torchrun) and Hydra do not
fight over argv or output directories: every rank composes the same config and agrees on one ``run.dir``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, fields
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
from llama_jreg.data.schema import DataConfig, InductionConfig, MixtureSource
from llama_jreg.jreg import JregConfig
from llama_jreg.model import SIZES, ModelConfig
from llama_jreg.storage import is_url
from llama_jreg.task_spec import parse_specs

CONFIG_DIR = Path(os.environ.get("LLAMA_JREG_CONFIGS", Path(__file__).resolve().parent.parent / "configs"))

# allowed values (the code that acts on them reads the same constants)
OPTIMIZERS = ("adamw",)
SCHEDULES = ("cosine", "wsd", "constant")
LOGGERS = ("none", "wandb")
PARALLEL = ("ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE = ("skip", "halt")
CHECKPOINT_FORMATS = ("auto", "sharded", "full")


def one_of(key: str, value, choices: tuple[str, ...], group: bool = False) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (``group``: the key is picked as GROUP=NAME)."""
    if value not in choices:
        how = f"{key}={'|'.join(choices)}" if group else ", ".join(choices)
        raise UserError(f"unknown {key}={value!r}; choose {how}")


def at_least(key: str, value, low: int = 1, note: str = "") -> None:
    if value < low:
        raise UserError(f"{key}={value} must be >= {low}{note}")


@dataclass
class OptimConfig:
    name: str = "adamw"  # optimizer (configs/optim/)
    lr: float = 3e-4  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.1  # decoupled weight decay
    decay_norms_and_embeddings: bool = False  # weight decay off for norms and embeddings by default
    fused: bool | None = None  # None = fused AdamW on CUDA and CPU, foreach elsewhere
    grad_clip: float = 1.0  # 0 = off
    # z-loss (PaLM, OLMo): adds z_loss * mean over target tokens of logsumexp(logits)^2 to the training loss,
    # inside the fused LM head + loss (llama_jreg/loss.py); logged as z_loss. 0 = off (bit-identical)
    z_loss: float = 0.0

    def validate(self) -> OptimConfig:
        one_of("optim", self.name, OPTIMIZERS, group=True)
        if not self.lr > 0:
            raise UserError(f"optim.lr={self.lr} must be > 0")
        if not self.z_loss >= 0:  # also refuses nan
            raise UserError(f"optim.z_loss={self.z_loss} must be >= 0 (0 = off; 1e-4 is the usual value)")
        return self


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 100  # linear warm-up from 0 to optim.lr (a warning when longer than max_steps)
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * lr (cosine, wsd)
    decay_fraction: float = 0.2  # wsd: fraction of steps in the final decay

    def validate(self) -> ScheduleConfig:
        if self.name not in SCHEDULES:
            raise UserError(f"unknown schedule {self.name!r}; choose schedule={'|'.join(SCHEDULES)}")
        at_least("schedule.warmup_steps", self.warmup_steps, 0)
        return self


@dataclass
class TrainerConfig:
    max_steps: int = 1000  # optimizer steps (the schedule spans them)
    # stop cleanly (checkpoint saved) after this many steps of one invocation; resume=auto continues.
    # The schedule still spans max_steps (for job time limits / chained jobs). null = run to max_steps
    steps_per_run: int | None = None
    global_batch_size: int | None = None  # sequences per optimizer step; None = micro_batch_size * world
    log_every: int = 10  # training metrics every N steps
    jump_every: int = 50  # Psi per layer and zeta_L every N steps
    eval_every: int = 200  # validation loss every N steps
    eval_batches: int = 8  # validation batches per evaluation
    ckpt_every: int = 500  # checkpoint every N steps (and at the end)
    keep_last: int = 3  # checkpoints kept
    # sharded: every rank writes its own shards (torch.distributed.checkpoint), loadable at any world size;
    # full: model.safetensors + optimizer.pt gathered on rank 0; auto: sharded under parallel=fsdp, else full.
    # Resume reads either format (llama_jreg/checkpoint/)
    checkpoint_format: str = "auto"
    # write the sharded checkpoint's shards in a background thread while training continues; the checkpoint
    # exists (manifest, rename) only once the write completed (at the next save or the end of the run).
    # Needs the sharded format (auto picks it)
    async_checkpoint: bool = False
    # object-store URL (s3://bucket/prefix, any fsspec URL): each checkpoint is also uploaded there (manifest
    # last); resume=auto takes the newest verified one from it. null = local disk only
    ckpt_dir: str | None = None
    ckpt_storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options (endpoint_url, key, ...)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model
    # tokens per chunk of the fused LM head + cross-entropy (llama_jreg/loss.py); null = auto (32 MiB of fp32
    # logits per chunk on CPU, 512 MiB on CUDA, >= 512 tokens); 0 = materialise the full logits (reference path)
    loss_chunk_tokens: int | None = None
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    # torch.profiler over steps profile_from .. profile_from + profile_steps - 1 (null = off); traces and op
    # tables go to <run.dir>/profile/ (llama_jreg/train/profiling.py)
    profile_from: int | None = None
    profile_steps: int = 3  # steps profiled from trainer.profile_from
    deterministic: bool = False  # torch deterministic algorithms (slower)
    nonfinite: str = "skip"  # skip | halt
    max_nonfinite_in_a_row: int = 5  # halt after this many skipped non-finite steps in a row
    progress: bool = True  # a tqdm progress bar
    device: str = "auto"  # auto | cpu | cuda
    # on CPU with glibc: keep freed memory in the heap so the step's large temporaries do not page-fault
    # every step (process-wide mallopt settings; llama_jreg/train/allocator.py)
    malloc_tuning: bool = True
    plots: bool = True  # write <run.dir>/plots/ at the end of the run (llama_jreg.plots)
    # task evaluation (top-level ``tasks``; llama_jreg/tasks/): every task_every steps (null = eval_every), at
    # the end, and at step 0 of an init_from run; task_n examples per task without @N; task_batch_size
    # sequences per forward pass
    task_every: int | None = None
    task_n: int = 200  # examples per task without @N
    task_batch_size: int = 8  # sequences per forward pass of task evaluation

    def validate(self) -> TrainerConfig:
        for key in ("max_steps", "log_every", "jump_every", "eval_every", "ckpt_every", "keep_last", "task_n",
                    "task_batch_size"):
            at_least(f"trainer.{key}", getattr(self, key))
        if self.task_every is not None:
            at_least("trainer.task_every", self.task_every, note=" (null = trainer.eval_every)")
        if self.steps_per_run is not None:
            at_least("trainer.steps_per_run", self.steps_per_run, note=" (or null)")
        if self.global_batch_size is not None:
            at_least("trainer.global_batch_size", self.global_batch_size, note=" (null = data.micro_batch_size * "
                     "world size)")
        if self.loss_chunk_tokens is not None:
            at_least("trainer.loss_chunk_tokens", self.loss_chunk_tokens, 0, " (null = auto, 0 = unfused)")
        if self.profile_from is not None and (self.profile_from < 1 or self.profile_steps < 1):
            raise UserError(f"trainer.profile_from={self.profile_from} and trainer.profile_steps={self.profile_steps} "
                            "must be >= 1 (profile_from=null turns profiling off)")
        if self.profile_from is not None and self.profile_from > self.max_steps:
            raise UserError(f"trainer.profile_from={self.profile_from} is after trainer.max_steps={self.max_steps}: "
                            "nothing would be profiled; choose a step <= max_steps")
        one_of("trainer.checkpoint_format", self.checkpoint_format, CHECKPOINT_FORMATS)
        if self.async_checkpoint and self.checkpoint_format == "full":
            raise UserError("trainer.async_checkpoint=true writes sharded checkpoints only; set "
                            "trainer.checkpoint_format=sharded (or auto), or trainer.async_checkpoint=false")
        one_of("trainer.precision", self.precision, PRECISIONS)
        one_of("trainer.nonfinite", self.nonfinite, NONFINITE)
        one_of("trainer.device", self.device, DEVICES)
        return self


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "llama-jreg"  # wandb project
    entity: str | None = None  # wandb entity
    group: str | None = None  # wandb group (a sweep: its dir name)
    tags: list[str] = field(default_factory=list)  # wandb tags
    run_name: str | None = None  # wandb run name (a sweep job: its name)
    mode: str | None = None  # online | offline | disabled (default: $WANDB_MODE or online)

    def validate(self) -> LoggerConfig:
        if self.name not in LOGGERS:
            raise UserError(f"unknown logger {self.name!r}; choose logger={'|'.join(LOGGERS)}")
        return self


@dataclass
class ParallelConfig:
    name: str = "ddp"  # ddp | fsdp

    def validate(self) -> ParallelConfig:
        if self.name not in PARALLEL:
            raise UserError(f"unknown parallel {self.name!r}; choose parallel={'|'.join(PARALLEL)}")
        return self


@dataclass
class RunConfig:
    dir: str = "runs/default"  # where the run writes config.yaml, metrics.jsonl, checkpoints/, plots/
    root: str | None = None  # if set, run.dir must resolve inside it

    def validate(self) -> RunConfig:
        check_run_dir(self)
        return self


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
    seed: int = 1234  # seeds model init, data order, everything
    resume: str | None = None  # None | auto | PATH
    # continued pre-training: the weights (only) of a checkpoint / run dir / HF Llama dir / .gguf; the model
    # architecture and (without data.tokenizer) the tokenizer come from it (llama_jreg/train/init_from.py)
    init_from: str | None = None
    # task evaluation during training: specs KIND[:ARG][@N], e.g. [induction, cloze@100, choice:piqa.jsonl]
    # (llama_jreg/task_spec.py); empty = off
    tasks: list[str] = field(default_factory=list)


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Value checks that types cannot express: each group's own, then those across groups. Raises UserError
    with one clear line."""
    if cfg.model.name not in SIZES and cfg.model.name != "custom":
        raise UserError(f"unknown model size {cfg.model.name!r}; choose one of {', '.join(SIZES)}")
    cfg.model.validate()
    cfg.jreg.validate(cfg.model.n_layers)
    cfg.data.validate(cfg.model.max_seq_len, cfg.model.vocab_size)
    for part in (cfg.trainer, cfg.optim, cfg.schedule, cfg.logger, cfg.parallel, cfg.run):
        part.validate()
    if cfg.tasks:
        parse_specs(cfg.tasks)  # syntax and names; the tasks' data is checked in the trainer's set-up
    gbs, mbs = cfg.trainer.global_batch_size, cfg.data.micro_batch_size
    if gbs is not None and gbs % mbs != 0:
        raise UserError(f"trainer.global_batch_size={gbs} is not a multiple of data.micro_batch_size={mbs}; pick a "
                        f"multiple of {mbs}")
    if cfg.resume not in (None, "auto", "none") and not Path(cfg.resume).exists():
        raise UserError(f"resume={cfg.resume}: no such checkpoint; use resume=auto or an existing path")
    return cfg


def check_run_dir(run: RunConfig) -> Path:
    """run.dir must not escape run.root (when a root is set) - configs cannot write outside it."""
    if is_url(run.dir):
        raise UserError(f"run.dir={run.dir}: run.dir is a local directory (metrics.jsonl, config.yaml, the local "
                        "copy of each checkpoint); put checkpoints on object storage with trainer.ckpt_dir=URL")
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
        key = re.search(r"Could not (?:override|append to config\. An item is already at) '([^']+)'", str(e))
        if key and key.group(1) not in schema_keys() and not _is_group(key.group(1)):
            raise unknown_key(key.group(1)) from None
        cause = e.__cause__
        inner = re.search(r"Key '(\w+)' not in '(\w+)'", str(cause))
        if key and inner and inner.group(2) in _SCHEMAS:  # a key inside a dict or list value
            raise unknown_key(f"{key.group(1)}.{inner.group(1)}", _SCHEMAS[inner.group(2)]) from None
        if cause is not None and "Error merging override" in str(e):
            raise UserError(f"{_first_line(e)}: {_explain_omegaconf_error(cause)}") from None
        raise UserError(_first_line(e)) from None


def _is_group(key: str) -> bool:
    return (CONFIG_DIR / key).is_dir()


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


def schema_keys(schema=TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a schema (``jreg.weight``, ``data.induction.bigram``, ...)."""
    out = []
    for f in fields(schema):
        sub = _dataclass_of(schema, f.name)
        out += schema_keys(sub, f"{prefix}{f.name}.") if sub is not None else [f"{prefix}{f.name}"]
    return out


_NESTED = {(TrainConfig, n): t for n, t in (("model", ModelConfig), ("jreg", JregConfig), ("data", DataConfig),
                                             ("optim", OptimConfig), ("schedule", ScheduleConfig),
                                             ("trainer", TrainerConfig), ("logger", LoggerConfig),
                                             ("parallel", ParallelConfig), ("run", RunConfig))}
_NESTED[(DataConfig, "induction")] = InductionConfig
_LIST_OF = {(DataConfig, "mixture"): MixtureSource}
_SCHEMAS = {t.__name__: t for t in (TrainConfig, *_NESTED.values(), MixtureSource)}


def _dataclass_of(schema, name: str):
    return _NESTED.get((schema, name))


def unknown_key(key: str, schema=None) -> UserError:
    """The error for a key no schema has, naming the closest valid one (among ``schema``'s fields if given)."""
    keys = schema_keys()
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    if schema is not None:
        siblings = {f.name: f"{parent}.{f.name}" for f in fields(schema)}
    close = [siblings[c] for c in difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.7)]
    close = close or [k for c, k in siblings.items() if leaf and c.startswith(leaf)][:1]  # warmup -> warmup_steps
    if not siblings:  # the group itself is mistyped (jerg.weight)
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else "; see `llama-jreg train --help` for the keys"
    return UserError(f"unknown config key {key}{hint}")


def check_keys(raw: Any, schema=TrainConfig, prefix: str = "") -> None:
    """Refuse any key of ``raw`` (a composed DictConfig; ``+key=value`` adds keys Hydra does not check) that
    ``schema`` does not define."""
    known = {f.name for f in fields(schema)}
    for key in raw:
        if key not in known:
            raise unknown_key(f"{prefix}{key}", schema if prefix else None)
        value = raw[key] if OmegaConf.is_config(raw) and not OmegaConf.is_missing(raw, key) else None
        sub = _dataclass_of(schema, str(key))
        if sub is not None and OmegaConf.is_dict(value):
            check_keys(value, sub, f"{prefix}{key}.")
        item = _LIST_OF.get((schema, str(key)))
        if item is not None and OmegaConf.is_list(value):
            for i, element in enumerate(value):
                if OmegaConf.is_dict(element):
                    check_keys(element, item, f"{prefix}{key}[{i}].")


def to_train_config(raw: Any) -> TrainConfig:
    check_keys(raw)
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
    """Compose + type-check + validate. The one entry point used by the CLI, tests and scripts. Reads configs
    only: ``init_from`` is left as written (``llama_jreg.train.setup.build_config`` resolves it for a run).

    ``data.files`` without a data group is a local corpus: with the default ``data=shakespeare`` it selects
    ``data=local`` (the files would not be read otherwise); named together with ``data=shakespeare`` it is
    refused."""
    overrides = list(overrides or [])
    return validate(files_pick_local(to_train_config(compose(overrides)), overrides))


def files_pick_local(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``data.files`` with ``data=shakespeare`` (which reads no files): ``data=local`` unless the overrides name
    ``data=shakespeare`` themselves, which is refused."""
    if cfg.data.source == "shakespeare" and cfg.data.files:
        picked = [o for o in overrides if o.lstrip("+~").partition("=")[0] == "data"]
        if picked:
            raise UserError(f"data.files is read by data=local (or data=hf), not by {picked[-1]}; write data=local "
                            "data.files=[...]")
        cfg.data.source = "local"
    return cfg


def describe(cfg: TrainConfig) -> list[str]:
    """What a run uses, in four lines (printed first by ``llama-jreg train``)."""
    d, m, j, s, t = cfg.data, cfg.model, cfg.jreg, cfg.schedule, cfg.trainer
    if d.mixture:
        what = "mixture of " + ", ".join(f"{x.name} ({x.weight})" for x in d.mixture)
    elif d.source == "local":
        what = "local " + ", ".join(d.files)
    elif d.source == "hf":
        what = f"hf {d.hf_path}" + (f" ({d.hf_name})" if d.hf_name else "")
    else:
        what = d.source
    tok = f", tokenizer {d.tokenizer}" if d.tokenizer and d.source != "induction" else ""
    init = f", weights from init_from={cfg.init_from}" if cfg.init_from else ""
    jreg = (f"{j.mode} weight {j.weight} (l0 {j.l0}, {j.stream}, warm-up {j.warmup_steps} steps)" if j.enabled
            else "off (weight 0)")
    return [f"data: {what}{tok}; {d.seq_len} tokens x {d.micro_batch_size} sequences a micro-batch",
            f"model: {m.name} ({m.n_layers} layers, dim {m.dim}, vocab {m.vocab_size}){init}",
            f"jreg: {jreg}",
            f"schedule: {s.name}, lr {cfg.optim.lr:g}, warm-up {s.warmup_steps} of {t.max_steps} steps"]


def warnings_for(cfg: TrainConfig) -> list[str]:
    """Settings that are valid but probably not meant."""
    out = []
    s, steps = cfg.schedule, cfg.trainer.max_steps
    if s.warmup_steps > steps:
        peak = cfg.optim.lr * steps / s.warmup_steps
        out.append(f"schedule.warmup_steps={s.warmup_steps} is longer than trainer.max_steps={steps}: the learning "
                   f"rate peaks at {peak:g} instead of optim.lr={cfg.optim.lr:g}; lower schedule.warmup_steps")
    return out


def group_options(config_dir: Path | None = None) -> dict[str, list[str]]:
    """The config groups of configs/ and their options (one YAML each), as ``train --help`` lists them."""
    root = config_dir or CONFIG_DIR
    return {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(root.iterdir())
            if d.is_dir() and any(d.glob("*.yaml"))}


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
    return files_pick_local(to_train_config(raw), overrides)  # fills data.vocab_size / induction.vocab_size


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
