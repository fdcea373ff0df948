"""CPU training-step benchmark: our trainer vs a plain transformers ``LlamaForCausalLM`` loop, side by side.

    python scripts/bench_cpu.py                      # tiny model, induction data, B=8 x T=256, fp32, 2 threads
    python scripts/bench_cpu.py --compile            # also trainer.compile=true (per-block torch.compile)
    python scripts/bench_cpu.py --rounds 8 --steps 2 --model tiny --batch 8 --seq 256 --threads 2
    python scripts/bench_cpu.py --compile --set model.vocab_size=32000   # a Llama-2-sized vocabulary
    python scripts/bench_cpu.py --document-mask --no-hf  # also jreg=0 with data.document_mask's attention mask

What is timed: one optimizer step = forward + backward + grad clipping (max-norm 1.0) + AdamW (the same param
groups / lr / betas / eps / weight decay on both sides) + ``zero_grad``. Ours is
``Trainer(cfg).train_step(batches)`` -- the real step of ``llama-jreg train``, with its defaults (fused chunked
LM head + cross-entropy, fused AdamW), loss normalisation, JREG term and logging sums. The transformers loop is
what a user writes: ``LlamaForCausalLM`` with the same shapes (dim / layers / heads / kv heads / ffn / vocab /
tied head / seq / batch), ``attn_implementation="sdpa"``, ``F.cross_entropy`` summed over the target tokens of
the materialised logits, ``torch.optim.AdamW`` with torch's default implementation for CPU tensors
(``--hf-optimizer foreach|fused`` to give it ours), on the same batches (``data=induction``, no download).

Allocator: our trainer tunes glibc's malloc on CPU (``trainer.malloc_tuning``, on by default): freed memory
stays in the heap, so the step's large temporaries stop page-faulting. That setting is process-wide, so the
reference transformers loop runs in a process of its own (glibc's defaults, as a plain script has them; steps
requested over a pipe and timed inside it, so rounds still interleave), and the same loop is also timed in this
process with our settings: the speed-up over that row is the step code alone. ``--same-process`` times only
the in-process loop; ``--set trainer.malloc_tuning=false`` runs everything with glibc's defaults. Minor page
faults and system CPU seconds per step are printed for every variant.

Noise control: every variant gets ``--warmup`` untimed steps, then ``--rounds`` rounds; in each round every
variant (in a rotated order) runs ``--steps`` timed steps. We report the median step time, the spread
(min..max and the inter-quartile range), tokens/s at the median, and the speed-up vs transformers both as a
ratio of medians and as the median of per-round paired ratios. Other processes on the machine still add noise:
the load average is printed before and after.

JREG overhead: the same trainer with ``jreg.weight=0.1`` (mode=jump, statistics with gradient) vs
``jreg.weight=0`` (no statistics, no term). Memory overhead is measured as the bytes of tensors autograd
saves for backward during one forward + loss (``torch.autograd.graph.saved_tensors_hooks``; distinct
storages counted once, parameters and buffers excluded): that is the activation memory a training step
holds at its peak, and the only memory JREG could add. Measured on the eager model. The wall-clock A/B of
JREG is at the noise limit of a 2-core machine, so the JREG variants are also profiled: the CPU time spent in
JREG's own ops (token cosines forward/backward, Psi and R) as a share of the step (``jreg_cpu_share``;
eager only: under ``trainer.compile`` the cosine is traced into each block's compiled graph and cannot be
separated).

Document masking (``--document-mask``): the ``jreg=0`` trainer once more, its batches carrying the
``doc_ids`` / ``position_ids`` that ``data.document_mask=true`` + ``data.document_positions=true`` add (rows cut
into documents of geometric length, mean ``--doc-len`` tokens, seeded; the ids are made before timing, as the
loader makes them outside the step): attention then runs SDPA with a (B, 1, T, T) block-diagonal causal mask
instead of ``is_causal``. Its cost does not depend on where the boundaries fall.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_jreg.loss import IGNORE_INDEX


def base_overrides(args, run_dir: str) -> list[str]:
    return [
        f"model={args.model}", "data=induction", f"data.seq_len={args.seq}", f"data.micro_batch_size={args.batch}",
        "data.induction.num_train=4096", "data.induction.num_val=16",
        # a 512-token bigram keeps data setup fast (a random 8192^2 bigram takes ~40 s to build); the model's
        # vocabulary, hence the LM head and the cross-entropy, stays model.vocab_size
        "data.induction.vocab_size=512", "trainer.device=cpu", "trainer.precision=fp32",
        "trainer.progress=false", "logger=none", "trainer.max_steps=1000000", "trainer.jump_every=1000000",
        f"model.attn_backend={args.attn}", f"run.dir={run_dir}", *args.set,
    ]


class Ours:
    def __init__(self, name: str, args, extra: list[str]):
        from llama_jreg.config import load_config
        from llama_jreg.train.trainer import Trainer

        self.name = name
        self.tmp = tempfile.TemporaryDirectory(prefix="bench_cpu_")
        self.cfg = load_config(base_overrides(args, self.tmp.name) + extra)
        self.trainer = Trainer(self.cfg)
        self.tokens_per_step = self.trainer.tokens_per_step

    def batches(self, n: int) -> list[list[dict]]:
        return [self.trainer._next_batches() for _ in range(n)]

    def step(self, batches: list[dict]) -> float:
        return self.trainer.train_step(batches).loss

    def forward_loss(self, batches: list[dict]) -> torch.Tensor:
        """One forward + loss as the trainer builds it (for the saved-tensor measurement)."""
        from llama_jreg import jreg as J

        tr, b = self.trainer, batches[0]
        y = b["labels"]
        use_jreg = self.cfg.jreg.enabled
        docs = {k: b[k] for k in ("doc_ids", "position_ids") if k in b}
        out = tr.model(b["input_ids"], stats="grad" if use_jreg else False, labels=y, **docs)
        loss = out.loss / (y != IGNORE_INDEX).sum()
        if use_jreg:
            loss = loss + self.cfg.jreg.weight * J.regularizer(J.psi(out.cos, y != IGNORE_INDEX), self.cfg.jreg)
        return loss

    def parameters(self):
        return self.trainer.llama.parameters()

    def buffers(self):
        return self.trainer.llama.buffers()

    def close(self):
        self.trainer.close()
        self.tmp.cleanup()


class DocumentMasked(Ours):
    """``Ours`` whose batches carry document ids and positions (see the module docstring)."""

    def __init__(self, name: str, args, extra: list[str]):
        super().__init__(name, args, extra)
        self.doc_len = args.doc_len
        self._cache: dict[int, list[dict]] = {}

    def _docs(self, batches: list[dict]) -> list[dict]:
        from llama_jreg.data.loader import document_ids

        if id(batches) not in self._cache:
            g = torch.Generator().manual_seed(len(self._cache))
            out = []
            for b in batches:
                ends = torch.rand(b["input_ids"].shape, generator=g) < 1 / self.doc_len  # a document's last token
                doc, pos = document_ids(torch.where(ends, -1, b["input_ids"]), -1)
                out.append({**b, "doc_ids": doc, "position_ids": pos})
            self._cache[id(batches)] = out
        return self._cache[id(batches)]

    def step(self, batches: list[dict]) -> float:
        return super().step(self._docs(batches))

    def forward_loss(self, batches: list[dict]) -> torch.Tensor:
        return super().forward_loss(self._docs(batches))


class JregToggled:
    """``other``'s trainer with JREG switched off for the steps of this variant: the same model, optimizer state
    and memory placement as ``other``, so the A/B of the two measures the JREG term alone. (Two trainers built
    separately differ by themselves: two identical jreg=0 trainers timed 0.75 % apart, paired, on the Intel VM.)"""

    def __init__(self, name: str, other: Ours):
        self.name, self.other, self.tokens_per_step = name, other, other.tokens_per_step

    def step(self, batches: list[dict]) -> float:
        jcfg = self.other.trainer.cfg.jreg
        weight, jcfg.weight = jcfg.weight, 0.0
        try:
            return self.other.trainer.train_step(batches).loss
        finally:
            jcfg.weight = weight

    def close(self):
        pass


class HF:
    """A plain transformers training loop with the same shapes, loss and optimizer settings."""

    def __init__(self, name: str, cfg, hf_optimizer: str | None = None):
        from transformers import LlamaConfig, LlamaForCausalLM

        from llama_jreg.train.optim import param_groups

        m = cfg.model
        hcfg = LlamaConfig(
            vocab_size=m.vocab_size, hidden_size=m.dim, intermediate_size=m.ffn_dim, num_hidden_layers=m.n_layers,
            num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads, head_dim=m.hd,
            max_position_embeddings=m.max_seq_len, rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta,
            tie_word_embeddings=m.tie_embeddings, attention_bias=False, mlp_bias=False, use_cache=False,
        )
        hcfg._attn_implementation = "sdpa"
        torch.manual_seed(0)
        self.name = name
        self.model = LlamaForCausalLM(hcfg).train()
        o = cfg.optim
        # what a plain loop writes: torch.optim.AdamW with the same groups and hyper-parameters, and torch's
        # default implementation for CPU tensors (the per-tensor loop); --hf-optimizer picks another
        kwargs = {"foreach": hf_optimizer == "foreach", "fused": hf_optimizer == "fused"} if hf_optimizer else {}
        self.optimizer = torch.optim.AdamW(param_groups(self.model, o), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           **kwargs)
        self.grad_clip = cfg.optim.grad_clip
        self.tokens_per_step = cfg.data.micro_batch_size * cfg.data.seq_len

    def forward_loss(self, batches: list[dict]) -> torch.Tensor:
        b = batches[0]
        y = b["labels"]
        logits = self.model(input_ids=b["input_ids"], use_cache=False).logits
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum") / (y != IGNORE_INDEX).sum()

    def step(self, batches: list[dict]) -> float:
        loss = self.forward_loss(batches)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def parameters(self):
        return self.model.parameters()

    def buffers(self):
        return self.model.buffers()

    def close(self):
        pass


def measured(step, batches) -> tuple[float, float, int, float]:
    """(wall s, process CPU s, minor page faults, system CPU s) of one ``step(batches)`` in this process."""
    t, c, ru0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    step(batches)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, cpu, ru1.ru_minflt - ru0.ru_minflt, ru1.ru_stime - ru0.ru_stime


def _serve(conn, factory, pool, threads: int) -> None:
    torch.set_num_threads(threads)
    variant = factory()
    while (i := conn.recv()) is not None:
        conn.send(measured(variant.step, pool[i]))


class Isolated:
    """A variant in its own (spawned) process, with glibc's default allocator settings -- how a plain training
    script runs. Steps are requested over a pipe and timed inside the child, so the rounds still interleave."""

    def __init__(self, name: str, factory, pool: list, threads: int, tokens_per_step: int):
        ctx = mp.get_context("spawn")
        self.name, self.tokens_per_step = name, tokens_per_step
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, factory, pool, threads), daemon=True)
        self.proc.start()

    def measured_step(self, i: int) -> tuple[float, float, int, float]:
        self.conn.send(i)
        return self.conn.recv()

    def close(self):
        self.conn.send(None)
        self.proc.join(timeout=60)


def saved_tensor_bytes(variant, batches) -> int:
    """Bytes of distinct storages autograd saves during one forward + loss (params/buffers excluded)."""
    exclude = {p.untyped_storage().data_ptr() for p in variant.parameters()}
    exclude |= {b.untyped_storage().data_ptr() for b in variant.buffers()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in exclude:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = variant.forward_loss(batches)
    total = sum(seen.values())
    del loss
    return total


JREG_EVENTS = ("_TokenCosine", "_TokenCosineBackward", "_StreamCosines", "_StreamCosinesBackward", "jreg_term")


def jreg_cpu_share(variant: Ours, pool, steps: int) -> tuple[float, float]:
    """Profile ``steps`` real trainer steps; return (ms per step in JREG's own ops, their share of the step).

    JREG's ops: the per-layer token cosine forward (``_TokenCosine``) and backward (``_TokenCosineBackward``),
    and Psi + R(Psi) (the trainer's ``jreg_term`` region); each counted inclusively of its child ops. The
    backward of Psi/R (ops on (L, B, T) vectors) is not attributed and is negligible. Unlike a wall-clock A/B
    of two variants, this does not depend on how noisy the machine is between rounds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(steps):
            variant.step(pool[i % len(pool)])
        wall = time.perf_counter() - t
    jreg_us = 0.0
    for e in prof.events():
        name = e.name.replace("autograd::engine::evaluate_function: ", "")
        if name in JREG_EVENTS and not (e.cpu_parent and e.cpu_parent.name.endswith(name)):
            jreg_us += e.cpu_time_total
    return jreg_us / 1e3 / steps, jreg_us / 1e6 / wall


OP_CATEGORIES = (  # (label, predicate on a profiler key), self CPU time
    ("matmuls (`mm`, `addmm_`, `bmm`)", lambda k: k in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")),
    ("attention (SDPA CPU flash kernels, fwd + bwd)", lambda k: "scaled_dot_product" in k),
    ("log-softmax / NLL fwd + bwd (materialised logits)", lambda k: "log_softmax" in k or "nll_loss" in k),
    ("zero fills (`fill_`, `zero_`)", lambda k: k in ("aten::fill_", "aten::zero_")),
)


def op_profile(variant, pool, steps: int) -> dict[str, float]:
    """ms per step by kind of op over ``steps`` profiled steps (self CPU time; the optimizer inclusive)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(steps):
            variant.step(pool[i % len(pool)])
        wall = time.perf_counter() - t
    rows = {label: 0.0 for label, _ in OP_CATEGORIES}
    opt = total = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
        if e.key.startswith("Optimizer.step"):
            opt += e.cpu_time_total
        for label, pred in OP_CATEGORIES:
            if pred(e.key):
                rows[label] += e.self_cpu_time_total
                break
    rows["AdamW step (inclusive)"] = opt
    rows["everything else (elementwise, norms, RoPE, compiled kernels, autograd)"] = total - sum(rows.values())
    out = {k: v / 1e3 / steps for k, v in rows.items()}
    out["profiled step, wall clock"] = wall * 1e3 / steps
    return out


def sgemm_gflops(n: int = 2048, reps: int = 7) -> float:
    """This machine's fp32 matmul rate (GFLOP/s, median of ``reps``) on one n x n x n product, at the thread
    count set: the ceiling any training step of this script can reach on its matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


HF_NAME = "transformers LlamaForCausalLM"


def run_step(v, pool: list, i: int) -> tuple[float, float, int, float]:
    return v.measured_step(i) if isinstance(v, Isolated) else measured(v.step, pool[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="our model.attn_backend (sdpa | eager)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compile: +2)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--compile", action="store_true", help="also time trainer.compile=true")
    ap.add_argument("--compile-only", action="store_true", help="time only the compiled variants (and HF)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every variant (model.* reach the transformers model too), "
                         "e.g. --set model.vocab_size=32000")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--same-process", action="store_true",
                    help="time the transformers loop only in this process (with our malloc tuning, if on), not "
                         "also in a process of its own")
    ap.add_argument("--hf-optimizer", choices=["foreach", "fused"], default=None,
                    help="AdamW implementation of the transformers loop (default: torch's default for CPU tensors)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--jreg-toggle", action="store_true",
                    help="also time each JREG trainer with JREG switched off (same model and memory): the JREG A/B "
                         "without the difference between two separately built trainers")
    ap.add_argument("--document-mask", action="store_true",
                    help="also time jreg=0 with document masking (data.document_mask) on the same batches")
    ap.add_argument("--doc-len", type=int, default=64, help="--document-mask: mean document length (tokens)")
    ap.add_argument("--no-jreg", action="store_true", help="skip the jreg=0.1 variants")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled JREG share")
    ap.add_argument("--profile-steps", type=int, default=3)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    import transformers

    print(f"# bench_cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({args.threads} threads), transformers {transformers.__version__}, "
          f"python {platform.python_version()}")
    print(f"# command: python scripts/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"# load average at start (1/5/15 min): {os.getloadavg()}")

    t0 = time.perf_counter()
    variants = []
    if not args.compile_only:
        if not args.no_jreg:
            variants.append(Ours("ours jreg=0.1 (jump)", args, ["jreg=jump", "jreg.weight=0.1"]))
        variants.append(Ours("ours jreg=0", args, ["jreg=off"]))
    if args.compile or args.compile_only:
        if not args.no_jreg:
            variants.append(Ours("ours+compile jreg=0.1", args, ["jreg=jump", "jreg.weight=0.1", "trainer.compile=true"]))
        variants.append(Ours("ours+compile jreg=0", args, ["jreg=off", "trainer.compile=true"]))
    if args.document_mask and not args.compile_only:
        variants.append(DocumentMasked("ours jreg=0, document mask", args, ["jreg=off"]))
    if args.jreg_toggle:  # the JREG A/B on one trainer: its jreg=0.1 steps vs its steps with JREG switched off
        variants += [JregToggled(f"{v.name.replace(' (jump)', '')}, JREG switched off", v) for v in list(variants)
                     if v.cfg.jreg.enabled]
    cfg = variants[0].cfg
    m = cfg.model
    print(f"# model {m.name}: dim {m.dim}, layers {m.n_layers}, heads {m.n_heads}/{m.n_kv_heads} kv, ffn {m.ffn_dim}, "
          f"vocab {m.vocab_size}, tied {m.tie_embeddings}; batch {args.batch} x seq {args.seq} = "
          f"{args.batch * args.seq} tokens/step; fp32; attn {args.attn}; setup {time.perf_counter() - t0:.1f}s")

    tuned = any(v.trainer.malloc_tuned for v in variants if isinstance(v, Ours))
    data_src = next(v for v in variants if isinstance(v, Ours))
    pool = data_src.batches(4)
    hf_here = None  # the transformers loop in this process: profiled and measured for memory
    if not args.no_hf:
        # the reference (first row): a plain transformers script in its own process (glibc's allocator
        # defaults), unless --same-process; with our malloc tuning on, the loop in this process is a row too
        with_tuning = tuned and not args.same_process
        hf_here = HF(f"{HF_NAME}, our malloc tuning" if with_tuning else HF_NAME, cfg, args.hf_optimizer)
        if args.same_process or with_tuning:  # (tuning off: the in-process loop would time the same thing)
            variants.insert(0, hf_here)
        if not args.same_process:
            variants.insert(0, Isolated(HF_NAME, functools.partial(HF, HF_NAME, cfg, args.hf_optimizer), pool,
                                        args.threads, data_src.tokens_per_step))
    ref = variants[0].name if not args.no_hf else None
    print(f"# glibc malloc tuning (trainer.malloc_tuning, llama_jreg/train/allocator.py): {'on' if tuned else 'off'}"
          + (" -- process-wide: a transformers loop in this process runs with it too" if tuned else "")
          + ("; the reference transformers loop runs in its own process" if not args.same_process else ""))

    for v in variants:
        t = time.perf_counter()
        n = args.warmup + (2 if "compile" in v.name else 0)
        for i in range(n):
            run_step(v, pool, i % len(pool))
        print(f"# warm-up {v.name}: {n} steps in {time.perf_counter() - t:.1f}s", flush=True)

    times: dict[str, list[float]] = {v.name: [] for v in variants}
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu: dict[str, list[float]] = {v.name: [] for v in variants}  # process CPU seconds per step
    faults: dict[str, list[int]] = {v.name: [] for v in variants}  # minor page faults per step
    sys_s: dict[str, list[float]] = {v.name: [] for v in variants}  # system (kernel) CPU seconds per step
    k = 0
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            ts = []
            for _ in range(args.steps):
                wall, c, f, sy = run_step(v, pool, k % len(pool))
                k += 1
                ts.append(wall)
                cpu[v.name].append(c)
                faults[v.name].append(f)
                sys_s[v.name].append(sy)
            times[v.name] += ts
            per_round[v.name].append(statistics.median(ts))
        print(f"# round {r + 1}/{args.rounds}: " + ", ".join(f"{n}={per_round[n][-1]:.3f}s" for n in per_round),
              flush=True)

    tok = variants[0].tokens_per_step
    print()
    print("| variant | median step (s) | IQR (s) | min..max (s) | tokens/s (median) | tokens/s (best) | "
          "CPU-s/step (median) | vs transformers: ratio of medians | paired per-round | ratio of bests |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def ratios(a: str, b: str) -> tuple[float, float, float]:
        """step time of ``a`` over ``b``: ratio of medians, median of per-round paired ratios, ratio of bests"""
        return (statistics.median(times[a]) / statistics.median(times[b]),
                statistics.median(x / y for x, y in zip(per_round[a], per_round[b])), min(times[a]) / min(times[b]))

    def speedups(base: str, name: str) -> str:
        return " | ".join(f"{r:.2f}x" for r in ratios(base, name))

    for v in variants:
        ts = times[v.name]
        med = statistics.median(ts)
        print(f"| {v.name} | {med:.3f} | {q(ts, .25):.3f}..{q(ts, .75):.3f} | {min(ts):.3f}..{max(ts):.3f} | "
              f"{tok / med:,.0f} | {tok / min(ts):,.0f} | {statistics.median(cpu[v.name]):.2f} | "
              f"{speedups(ref, v.name) if ref and v.name != ref else '- | - | -'} |")
    if hf_here is not None and hf_here.name in times and hf_here.name != ref:
        print(f"\n| vs {hf_here.name} (same allocator settings: the step code alone) | ratio of medians | "
              "paired per-round | ratio of bests |")
        print("|---|---|---|---|")
        for v in variants:
            if isinstance(v, Ours):
                print(f"| {v.name} | {speedups(hf_here.name, v.name)} |")

    print()
    print("| variant | minor page faults per step (median) | system CPU-s per step (median) |")
    print("|---|---|---|")
    for v in variants:
        print(f"| {v.name} | {statistics.median(faults[v.name]):,.0f} | {statistics.median(sys_s[v.name]):.3f} |")

    if not args.no_jreg:
        print()
        print("| JREG overhead (jreg=0.1 jump vs jreg=0) | ratio of medians | median paired per-round ratio | "
              "ratio of bests | ratio of median CPU-s |")
        print("|---|---|---|---|---|")

    def overhead(label: str, on: str, off: str) -> None:
        rs = (*ratios(on, off), statistics.median(cpu[on]) / statistics.median(cpu[off]))
        print(f"| {label} | " + " | ".join(f"{100 * (r - 1):+.1f}%" for r in rs) + " |")

    for prefix in ("ours", "ours+compile"):
        on, off = f"{prefix} jreg=0.1" + (" (jump)" if prefix == "ours" else ""), f"{prefix} jreg=0"
        if on in times and off in times:
            overhead(f"{prefix} step time", on, off)
    for v in variants:
        if isinstance(v, JregToggled):
            overhead(f"{v.other.name} vs the same trainer with JREG switched off", v.other.name, v.name)
    if "ours jreg=0, document mask" in times:
        print()
        print(f"| document mask overhead (jreg=0; documents of mean {args.doc_len} tokens) | ratio of medians | "
              "median paired per-round ratio | ratio of bests | ratio of median CPU-s |")
        print("|---|---|---|---|---|")
        overhead("ours jreg=0 with vs without data.document_mask", "ours jreg=0, document mask", "ours jreg=0")

    # achieved model FLOP/s against this machine's own matmul rate: how far each step is from the floor
    from llama_jreg.train.metrics import flops_per_token

    ours0 = next(v for v in variants if isinstance(v, Ours))
    step_flops = flops_per_token(ours0.trainer.llama, args.seq) * tok  # same shapes for every variant
    rate = sgemm_gflops()
    floor = step_flops / (rate * 1e9)
    print()
    print(f"# model FLOPs per step (6 N_matmul + 12 L T d_attn per token, metrics.py): {step_flops / 1e9:.1f} GFLOP; "
          f"this machine's fp32 sgemm (2048^3, {args.threads} threads): {rate:.0f} GFLOP/s -> a step doing only "
          f"those FLOPs at that rate takes {floor:.3f} s")
    print("| variant | model GFLOP/s (median step) | share of the sgemm rate | step / matmul floor |")
    print("|---|---|---|---|")
    for v in variants:
        med = statistics.median(times[v.name])
        print(f"| {v.name} | {step_flops / med / 1e9:.1f} | {100 * floor / med:.0f}% | {med / floor:.2f}x |")

    if not args.no_profile and (hf_here is not None or not args.no_jreg):
        prof_vs = ([hf_here] if hf_here else []) + [v for v in variants if isinstance(v, Ours) and v.cfg.jreg.enabled]
        profs = [op_profile(v, pool, args.profile_steps) for v in prof_vs]
        print()
        print(f"| where the time goes, ms per step ({args.profile_steps} profiled steps) | "
              + " | ".join(v.name for v in prof_vs) + " |")
        print("|---|" + "---:|" * len(prof_vs))
        for key in profs[0]:
            print(f"| {key} | " + " | ".join(f"{p[key]:.0f}" for p in profs) + " |")

        print()
        print("| JREG's own ops, profiled (torch.profiler, CPU time inclusive of child ops) | ms per step | "
              "share of the step's wall time |")
        print("|---|---|---|")
        for v in variants:  # eager only: under compile the cosine is traced into the block's compiled graph
            if isinstance(v, Ours) and v.cfg.jreg.enabled and not v.cfg.trainer.compile:
                ms, share = jreg_cpu_share(v, pool, args.profile_steps)
                print(f"| {v.name} | {ms:.1f} | {100 * share:.2f}% |")

    if not args.no_memory:
        print()
        print("| variant (eager) | autograd saved tensors per forward (MiB) |")
        print("|---|---|")
        for v in ([hf_here] if hf_here else []) + [v for v in variants if isinstance(v, Ours)]:
            if "compile" in v.name:
                continue
            print(f"| {v.name} | {saved_tensor_bytes(v, pool[0]) / 2**20:.2f} |")
        names = [v.name for v in variants if isinstance(v, Ours) and not isinstance(v, DocumentMasked)
                 and "compile" not in v.name]
        if len(names) == 2:  # jreg=0.1 and jreg=0
            a, b = (saved_tensor_bytes(v, pool[0]) for v in variants if v.name in names)
            print(f"\nJREG activation-memory overhead: {(a - b) / 2**20:+.3f} MiB ({100 * (a - b) / b:+.2f}%)")
    print(f"\n# load average at end (1/5/15 min): {os.getloadavg()}; total {time.perf_counter() - t0:.0f}s")
    for v in {id(v): v for v in [*variants, hf_here] if v is not None}.values():
        v.close()


if __name__ == "__main__":
    main()
