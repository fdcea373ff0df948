"""Turn a plain :class:`llama_jreg.model.Llama` into the model the loop trains, in torchtitan's order:

    activation checkpointing  ->  torch.compile (per block)  ->  DDP | FSDP2

* Activation checkpointing sets ``model.checkpoint_blocks = True``: the model's forward wraps each block in
  ``torch.utils.checkpoint`` (non-reentrant), so the per-layer JREG statistics keep working.
* ``torch.compile`` compiles each block in place (``Llama.compile_blocks``), so parameter names, and hence
  checkpoints, stay free of ``_orig_mod`` prefixes; each block then computes its own JREG cosine, which
  inductor fuses into the block's kernels.
* ``parallel=ddp`` (default): ``DistributedDataParallel``; gradients are averaged over ranks.
* ``parallel=fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on each block, then on the root;
  gradients are reduce-scattered and averaged over ranks, parameters are DTensors sharded on dim 0.
* Mixed precision (``trainer.precision=bf16``): under DDP (and one process) the loop's autocast; under FSDP2
  a ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: the sharded parameters and the optimizer
  state stay fp32 (master weights), each block's parameters are all-gathered in bf16 and the forward /
  backward run in bf16, gradients are reduce-scattered in fp32. The JREG cosines and the loss are fp32
  either way (``model.py`` / ``loss.py`` accumulate in fp32 whatever the input dtype).

With one process neither wrapper is applied. The model file itself contains no distributed code.

Gradient accumulation: :func:`no_sync` turns off the gradient all-reduce / reduce-scatter for every
micro-batch but the last of an optimizer step.

Launching (accelerate reads the torch.distributed environment that any of these set up; every rank composes
the same config, so all agree on run.dir; on CPU the backend is gloo, on CUDA NCCL):

    llama-jreg train ...                                                    # one process
    torchrun --standalone --nproc_per_node 8 -m llama_jreg train ...        # one node
    accelerate launch --multi_gpu --num_processes 8 -m llama_jreg train ... # one node, via accelerate
    # N nodes: run on every node (same rendezvous endpoint, e.g. the first node's host name)
    torchrun --nnodes N --nproc_per_node 8 --rdzv_backend c10d --rdzv_id JOB \
             --rdzv_endpoint HEAD:29500 -m llama_jreg train ...
    accelerate launch --multi_gpu --num_machines N --machine_rank R --num_processes 8N \
             --main_process_ip HEAD --main_process_port 29500 -m llama_jreg train ...
    sbatch scripts/launch_slurm.sh ...                                      # SLURM, one task per GPU

The global batch (``trainer.global_batch_size``, sequences per optimizer step) is independent of the number
of processes: accumulation = global / (data.micro_batch_size * world). run.dir must be on storage every node
sees.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from llama_jreg.config import TrainConfig
from llama_jreg.distributed import is_distributed
from llama_jreg.model import Llama


def parallelize(model: Llama, cfg: TrainConfig, device: torch.device, precision: str = "fp32") -> nn.Module:
    """Apply AC -> compile -> DDP/FSDP2. Returns the module to call in the loop (``unwrap`` gets the Llama).
    ``precision`` (``fp32`` | ``bf16``, resolved): bf16 under FSDP2 gives it a MixedPrecisionPolicy."""
    if cfg.trainer.activation_checkpointing:
        model.checkpoint_blocks = True
    if cfg.trainer.compile:
        model.compile_blocks()
    if not is_distributed():
        return model
    if cfg.parallel.name == "fsdp":
        kw = {}
        if precision == "bf16":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model

    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> Llama:
    """The Llama inside a DDP wrapper (FSDP2 shards in place, so the model is its own unwrap)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, Llama) else model


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool):
    """Within the block, do not synchronise gradients across ranks (when ``skip``)."""
    if not skip or not is_distributed():
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield
