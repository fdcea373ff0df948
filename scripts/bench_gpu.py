"""GPU training-step benchmark (one device, bf16): tokens/s, MFU, peak memory, largest micro-batch, and the same
model through transformers on the same GPU.

    python scripts/bench_gpu.py                                   # small, medium, large; everything below
    python scripts/bench_gpu.py --sizes small --attn sdpa --compile on --micro-batch 8
    python scripts/bench_gpu.py --sizes small medium large --out bench_gpu.jsonl

Needs only ``torch`` (CUDA) and this repository (``llama_jreg.model``, ``llama_jreg.jreg``: plain torch);
``transformers`` for the transformers rows (skipped with a note if missing), ``flash-attn`` for the flash rows
(skipped if not importable). No hydra / wandb / datasets / accelerate.

One timed step = forward (bf16 autocast, fp32 master weights, as ``trainer.precision=bf16``) + summed
cross-entropy / target tokens (ours: the trainer's fused chunked LM head + loss, ``--loss-chunk``) + JREG (``--jreg-weight``, default 0.1, mode jump, statistics with gradient) +
backward + grad-norm clipping at 1.0 + fused AdamW (lr 3e-4, betas 0.9/0.95, wd 0.1 on matrices except the
embedding) + zero_grad -- the same work as ``Trainer.train_step`` with one micro-batch. Data: random tokens
(the step's cost does not depend on their values).

Per (size, attention backend, compile) we find the largest micro-batch that fits unless ``--micro-batch`` is
given: powers of two up from 1, then a bisection between the last fit and the first OOM, each probe two full steps
(so the optimizer state exists) on one model that is reused across probes. Then a fresh model times ``--steps``
steps after ``--warmup`` (CUDA-synchronised wall clock; median of per-step times). For ours with a JREG weight the
same model also times the step with ``jreg.weight=0`` (no statistics) in interleaved rounds (``--rounds``) at the
same micro-batch: the JREG overhead in step time and in peak memory, measured in one run.
``--time-limit`` stops starting new rows after that many seconds (rows are printed, and appended to ``--out``, as
they finish), so one command can be sized to a machine's per-command limit.

FLOPs per token (training, forward + backward), the same formula as ``llama_jreg/train/metrics.py``:

    6 * N_matmul + 12 * L * T * n_heads * head_dim

N_matmul = every weight that takes part in a matmul (all Linear layers incl. the LM head; the embedding lookup is
excluded), L layers, T sequence length; the second term is QK^T and attention*V, forward + backward, with no
discount for the causal mask. MFU = tokens/s * FLOPs/token / peak, peak = ``--peak-tflops`` (default: the
trainer's dense bf16 table by device name, ``llama_jreg/train/metrics.py``: H100 SXM and H200 989, H100 PCIe 756,
...). Peak memory = ``torch.cuda.max_memory_allocated`` over the timed steps (weights + AdamW state + gradients +
activations; the allocator's reserved memory is printed too).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_jreg import jreg as J
from llama_jreg.attention import HAS_FLASH_ATTN
from llama_jreg.loss import IGNORE_INDEX
from llama_jreg.model import Llama, config_for_size
from llama_jreg.train.metrics import device_peak_flops

DEVICE = "cuda"  # --device cpu: a smoke test of this script only (sizes tiny, numbers meaningless)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def flops_per_token(cfg, n_matmul: int, seq_len: int) -> float:
    return 6.0 * n_matmul + 12.0 * cfg.n_layers * seq_len * cfg.n_heads * cfg.hd


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in emb else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=DEVICE == "cuda",
                             foreach=None if DEVICE == "cuda" else True)


class Runner:
    """One model + optimizer; ``step(batch)`` is one optimizer step."""

    def __init__(self, impl: str, size: str, attn: str, compile_: bool, jreg_weight: float, seq: int,
                 loss_chunk: int | None = None):
        self.impl, self.attn, self.jreg_weight, self.loss_chunk = impl, attn, jreg_weight, loss_chunk
        cfg = config_for_size(size, attn_backend=attn if impl == "ours" else "sdpa", max_seq_len=max(seq, 2048))
        self.cfg = cfg
        dev = torch.device(DEVICE)
        if impl == "ours":
            model = Llama(cfg).to(dev)
            n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
            if compile_:
                model.compile_blocks()  # what trainer.compile=true does (llama_jreg/train/parallel.py)
        else:
            from transformers import LlamaConfig, LlamaForCausalLM

            hcfg = LlamaConfig(
                vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                head_dim=cfg.hd, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, use_cache=False,
            )
            hcfg._attn_implementation = {"sdpa": "sdpa", "flash": "flash_attention_2"}[attn]
            model = LlamaForCausalLM(hcfg).to(dev)
            n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
            if compile_:
                model = torch.compile(model)
        self.model = model.train()
        self.opt = adamw(model)
        self.fpt = flops_per_token(cfg, n_matmul, seq)

    def step(self, x: torch.Tensor, y: torch.Tensor, jreg_weight: float | None = None) -> None:
        w = self.jreg_weight if jreg_weight is None else jreg_weight
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            if self.impl == "ours":  # the trainer's path: fused chunked LM head + cross-entropy
                out = self.model(x, stats="grad" if w > 0 else False, labels=y, loss_chunk_tokens=self.loss_chunk)
                loss = out.loss
            else:
                logits = self.model(input_ids=x, use_cache=False).logits
        if self.impl != "ours":
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
        loss = loss / y.numel()
        if self.impl == "ours" and w > 0:
            loss = loss + w * J.regularizer(J.psi(out.cos), J.JregConfig(weight=w, mode="jump"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def fits(self, b: int, seq: int) -> bool:
        """Two full steps at micro-batch ``b`` run without running out of device memory."""
        ok = True
        try:
            x = torch.randint(0, self.cfg.vocab_size, (b, seq), device=DEVICE)
            for _ in range(2):
                self.step(x, x)
            sync()
        except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(e):
                raise
            ok = False
        # after the except clause: the exception and its frames (holding the activations) are gone
        x = None
        self.opt.zero_grad(set_to_none=True)
        free()
        return ok


def is_oom(e: BaseException) -> bool:
    """A failed allocation: torch's OutOfMemoryError, or a RuntimeError saying so (cuBLAS workspaces and some
    compiled kernels report it that way; the CPU allocator says "can't allocate memory")."""
    msg = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg


def free() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def largest_fitting(fits, cap: int) -> int:
    """The largest ``b`` in 1..cap with ``fits(b)`` (assumed monotone: true up to some size, false above), 0 if
    not even 1 fits: powers of two from 1 up, then bisection between the last fit and the first failure."""
    lo, hi, b = 0, None, 1
    while b <= cap:
        if fits(b):
            lo, b = b, b * 2
        else:
            hi = b
            break
    if hi is None:  # every power of two up to cap fits: bisect between the last one and cap
        if lo == 0 or lo == cap:
            return lo
        if fits(cap):
            return cap
        hi = cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def time_steps(r: Runner, b: int, seq: int, warmup: int, steps: int, rounds: int,
               jreg_weights: list[float]) -> dict[float, dict]:
    """Time ``steps`` steps per JREG weight, the weights interleaved over ``rounds`` rounds on one model."""
    x = torch.randint(0, r.cfg.vocab_size, (b, seq), device=DEVICE)
    y = torch.randint(0, r.cfg.vocab_size, (b, seq), device=DEVICE)
    for w in jreg_weights:  # each weight compiles its own graph (statistics on / off)
        for _ in range(warmup):
            r.step(x, y, w)
    sync()
    cuda = DEVICE == "cuda"
    ts: dict[float, list[float]] = {w: [] for w in jreg_weights}
    peak = {w: 0.0 for w in jreg_weights}
    reserved = {w: 0.0 for w in jreg_weights}
    per_round = max(1, steps // max(1, rounds))
    for k in range(max(1, rounds)):
        order = jreg_weights[k % len(jreg_weights):] + jreg_weights[:k % len(jreg_weights)]
        for w in order:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            for _ in range(per_round):
                t = time.perf_counter()
                r.step(x, y, w)
                sync()
                ts[w].append(time.perf_counter() - t)
            if cuda:
                peak[w] = max(peak[w], torch.cuda.max_memory_allocated() / 2**30)
                reserved[w] = max(reserved[w], torch.cuda.max_memory_reserved() / 2**30)
    out = {}
    for w in jreg_weights:
        med = statistics.median(ts[w])
        out[w] = {"step_s": med, "step_s_min": min(ts[w]), "step_s_max": max(ts[w]), "steps_timed": len(ts[w]),
                  "tokens_per_s": b * seq / med,
                  "peak_alloc_gib": peak[w] if cuda else None, "peak_reserved_gib": reserved[w] if cuda else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["small", "medium", "large"])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--attn", nargs="+", default=["sdpa", "flash"], help="sdpa | flash (flash only if importable)")
    ap.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--impl", nargs="+", default=["ours", "transformers"], choices=["ours", "transformers"])
    ap.add_argument("--micro-batch", type=int, default=None, help="fixed micro-batch (default: largest that fits)")
    ap.add_argument("--max-batch", type=int, default=256, help="upper bound of the micro-batch search")
    ap.add_argument("--jreg-weight", type=float, default=0.1, help="ours: JREG weight (0 = no statistics)")
    ap.add_argument("--loss-chunk", type=int, default=None,
                    help="ours: trainer.loss_chunk_tokens (default auto; 0 = materialised logits)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--rounds", type=int, default=4, help="ours: rounds interleaving JREG on / off")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="start no new row after S seconds (the rows left are listed as skipped)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak for MFU (default: the trainer's table by device name, "
                         "llama_jreg/train/metrics.py: H100 SXM / H200 989; else 989)")
    ap.add_argument("--out", default=None, help="append one JSON object per row to this file")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: smoke-test this script (e.g. --sizes tiny --seq 64 --micro-batch 2); no real numbers")
    args = ap.parse_args()

    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device (see docs/benchmarks.md for the CPU benchmark)")
    for key in ("cache_size_limit", "recompile_limit"):  # one compile per probed micro-batch size
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke test)"
    if args.peak_tflops is None:
        peak = device_peak_flops(torch.device("cuda"), "bf16") if DEVICE == "cuda" else None
        if peak is None:
            print(f"# {device_name}: not in the trainer's peak table; MFU against 989 TFLOP/s (set --peak-tflops)")
        args.peak_tflops = 989.0 if peak is None else peak / 1e12
    print(f"# bench_gpu: {device_name}, torch {torch.__version__}, transformers {hf_version}, "
          f"flash-attn {'yes' if HAS_FLASH_ATTN else 'no'}, peak {args.peak_tflops} TFLOP/s")
    print(f"# command: python scripts/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"# load average: {os.getloadavg()}")
    print("| size | impl | attn | compile | micro-batch | tokens/s | step (s) | MFU | peak alloc (GiB) | "
          "peak reserved (GiB) | JREG overhead: step time | JREG overhead: peak alloc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    t_start = time.perf_counter()
    skipped = []
    with open(args.out, "a") if args.out else contextlib.nullcontext() as sink:
        for size in args.sizes:
            for impl in args.impl:
                if impl == "transformers" and hf_version is None:
                    print(f"| {size} | transformers | - | - | - | not installed | | | | | | |")
                    continue
                for attn in args.attn:
                    if attn == "flash" and not HAS_FLASH_ATTN:
                        continue
                    for comp in args.compile:
                        if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
                            skipped.append(f"{size}/{impl}/{attn}/compile {comp}")
                            continue
                        run_row(args, size, impl, attn, comp, device_name, sink)
    if skipped:
        print(f"# time limit ({args.time_limit:.0f} s) reached; not run: {', '.join(skipped)}")
    print(f"# total {time.perf_counter() - t_start:.0f} s")


def gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def run_row(args, size: str, impl: str, attn: str, comp: str, device_name: str, sink) -> None:
    def make():
        return Runner(impl, size, attn, comp == "on", args.jreg_weight, args.seq, args.loss_chunk)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    b = args.micro_batch
    if b is None:
        probe = make()
        b = largest_fitting(lambda n: probe.fits(n, args.seq), args.max_batch)
        del probe
        free()
    if b == 0:
        print(f"| {size} | {impl} | {attn} | {comp} | 0 (OOM at 1) | | | | | | | |", flush=True)
        return
    r = make()
    weights = [args.jreg_weight, 0.0] if impl == "ours" and args.jreg_weight > 0 else [
        args.jreg_weight if impl == "ours" else 0.0]
    res = time_steps(r, b, args.seq, args.warmup, args.steps, args.rounds if len(weights) > 1 else 1, weights)
    fpt = r.fpt
    del r
    free()
    main_res = res[weights[0]]
    mfu = main_res["tokens_per_s"] * fpt / (args.peak_tflops * 1e12)
    over_t = over_m = ""
    if len(weights) > 1:
        off = res[0.0]
        over_t = f"{100 * (main_res['step_s'] / off['step_s'] - 1):+.2f}%"
        if DEVICE == "cuda":
            over_m = f"{main_res['peak_alloc_gib'] - off['peak_alloc_gib']:+.3f} GiB"
    row = {"size": size, "impl": impl, "attn": attn, "compile": comp, "micro_batch": b, "seq": args.seq,
           "flops_per_token": fpt, **main_res, "mfu": mfu, "jreg_weight": weights[0] if impl == "ours" else None,
           "jreg_off": res.get(0.0) if len(weights) > 1 else None, "row_s": time.perf_counter() - t0,
           "device": device_name}
    print(f"| {size} | {impl} | {attn} | {comp} | {b} | {main_res['tokens_per_s']:,.0f} | {main_res['step_s']:.3f} | "
          f"{100 * mfu:.1f}% | {gib(main_res['peak_alloc_gib'])} | {gib(main_res['peak_reserved_gib'])} | {over_t} | "
          f"{over_m} |", flush=True)
    if sink is not None:
        sink.write(json.dumps(row) + "\n")
        sink.flush()


if __name__ == "__main__":
    main()
