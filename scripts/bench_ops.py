"""Micro-benchmarks of the pieces the CPU training step was tuned with (docs/benchmarks.md, "What was optimised").

    python scripts/bench_ops.py                 # all, tiny's shapes: 2,048 tokens x dim 256, 2 threads
    python scripts/bench_ops.py --only loss adamw --rounds 12

* ``loss``: LM head + summed cross-entropy, forward + backward, vocab 8,192 and 32,000: materialised logits
  (``F.cross_entropy(F.linear(h, W))``, = ``loss_chunk_tokens=0``) vs ``llama_jreg.loss.linear_cross_entropy``
  at several chunk sizes and at the auto size;
* ``adamw``: one step of torch's AdamW over ``tiny``'s parameters: the default for CPU tensors (per-tensor
  loop), foreach, fused (our default);
* ``rmsnorm``: forward + backward of one norm: ``llama_jreg.model.RMSNorm`` (in eager training one autograd
  node with a hand-written backward) vs autograd of the same fp32 formula vs torch's ``F.rms_norm``;
* ``rope``: RoPE forward (the rotation) of ``tiny``'s queries, (B, H, T, hd) = (tokens / 256, 8, 256, 32):
  the model's concatenation-free rotation (``llama_jreg.ops.rotate``, also RoPE's backward) vs
  ``x * cos + rotate_half(x) * sin`` with ``rotate_half`` = ``cat(-x2, x1)`` (HF's formula);
* ``mlp``: forward + backward of the SwiGLU MLP: gate/up as one matmul over concatenated weights vs two
  matmuls (``llama_jreg.model.SwiGLU``);
* ``zloss``: the fused LM head + cross-entropy at the auto chunk size, vocab 8,192, without and with z-loss
  (``linear_cross_entropy`` vs ``linear_cross_entropy_z``, ``optim.z_loss``);
* ``docmask``: attention forward + backward of ``tiny``'s shapes, (B, H, T, hd) = (tokens / 256, 8, 256, 32)
  with 4 kv heads, SDPA causal vs SDPA with ``data.document_mask``'s block-diagonal causal mask (documents of
  geometric length, mean 64 tokens), and building that mask (once per forward, shared by the layers);
* ``bigram``: building the ``data=induction`` random bigram at vocab 8,192;
* ``generate``: greedy decoding of ``--gen-tokens`` tokens after a 16-token prompt with ``tiny`` (batch 1):
  ``llama_jreg.generate`` (KV cache) vs re-running the full forward for every new token.

Every variant of a group runs in the same rounds, in alternating order; the table gives the median and the
minimum over rounds of the mean time of ``--iters`` calls. Wall-clock numbers: quote them from a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_jreg.attention import attention, document_mask
from llama_jreg.data.synthetic import BigramModel
from llama_jreg.loss import auto_chunk_tokens, linear_cross_entropy, linear_cross_entropy_z
from llama_jreg.model import Llama, RMSNorm, SwiGLU, config_for_size, rope_tables
from llama_jreg.ops import rotate, rotate_formula
from llama_jreg.train.allocator import tune_cpu_allocator


def interleaved(variants: dict, rounds: int, iters: int) -> dict[str, list[float]]:
    """ms per call of each variant, one entry per round; the order alternates between rounds."""
    names = list(variants)
    for f in variants.values():  # warm-up
        f()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            for _ in range(iters):
                variants[n]()
            out[n].append((time.perf_counter() - t) / iters * 1e3)
    return out


def report(title: str, res: dict[str, list[float]]) -> None:
    print(f"\n| {title} | median ms | min ms |\n|---|---:|---:|")
    for n, v in res.items():
        print(f"| {n} | {statistics.median(v):.1f} | {min(v):.1f} |")


def bench_loss(args) -> None:
    g = torch.Generator().manual_seed(0)
    for vocab in (8192, 32000):
        h = torch.randn(args.tokens, args.dim, generator=g).requires_grad_()
        w = (torch.randn(vocab, args.dim, generator=g) * 0.02).requires_grad_()
        y = torch.randint(0, vocab, (args.tokens,), generator=g)

        def run(chunk, h=h, w=w, y=y):
            h.grad = w.grad = None
            linear_cross_entropy(h, w, y, chunk).backward()

        auto = auto_chunk_tokens(vocab, "cpu")
        variants = {"materialised logits (chunk 0)": lambda: run(0)}
        variants.update({f"fused, chunk {c}" + (" (auto)" if c == auto else ""): (lambda c=c: run(c))
                         for c in sorted({128, 512, auto, args.tokens})})
        report(f"LM head + CE fwd+bwd, {args.tokens} tokens x {args.dim}, vocab {vocab}",
               interleaved(variants, args.rounds, max(1, args.iters // 4)))


def bench_zloss(args) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.tokens, args.dim, generator=g).requires_grad_()
    w = (torch.randn(8192, args.dim, generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, 8192, (args.tokens,), generator=g)

    def plain():
        h.grad = w.grad = None
        linear_cross_entropy(h, w, y).backward()

    def with_z():
        h.grad = w.grad = None
        linear_cross_entropy_z(h, w, y, 1e-4)[0].backward()

    report(f"LM head + CE fwd+bwd, {args.tokens} tokens x {args.dim}, vocab 8192, auto chunk",
           interleaved({"fused CE (optim.z_loss=0)": plain, "fused CE + z-loss (optim.z_loss=1e-4)": with_z},
                       args.rounds, max(1, args.iters // 4)))


def bench_docmask(args) -> None:
    from llama_jreg.data.loader import document_ids

    g = torch.Generator().manual_seed(0)
    B = max(1, args.tokens // 256)
    q = torch.randn(B, 8, 256, 32, generator=g).requires_grad_()
    k, v = (torch.randn(B, 4, 256, 32, generator=g).requires_grad_() for _ in range(2))
    ends = torch.rand(B, 256, generator=g) < 1 / 64
    doc, _ = document_ids(torch.where(ends, -1, 0), -1)
    docs = document_mask(doc, "sdpa")
    grad = torch.randn(B, 8, 256, 32, generator=g)

    def run(d):
        q.grad = k.grad = v.grad = None
        attention(q, k, v, "sdpa", d).backward(grad)

    report(f"attention fwd+bwd, q {tuple(q.shape)}, 4 kv heads, documents of mean 64 tokens",
           interleaved({"SDPA causal": lambda: run(None), "SDPA, document mask": lambda: run(docs),
                        "building the document mask (once per forward)": lambda: document_mask(doc, "sdpa")},
                       args.rounds, args.iters))


def bench_adamw(args) -> None:
    model = Llama(config_for_size("tiny"))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opts = {"torch default for CPU tensors (per-tensor loop)": torch.optim.AdamW(model.parameters(), lr=1e-4),
            "foreach": torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True),
            "fused (our default)": torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)}
    report("AdamW step, tiny (6.45M parameters)",
           interleaved({n: o.step for n, o in opts.items()}, args.rounds, args.iters))


def bench_rmsnorm(args) -> None:
    norm = RMSNorm(args.dim, 1e-5)
    x = torch.randn(args.tokens, args.dim, requires_grad=True)
    g = torch.randn(args.tokens, args.dim)

    report(f"RMSNorm fwd+bwd, {args.tokens} x {args.dim}",
           interleaved({"RMSNorm (one autograd node)": lambda: norm(x).backward(g),
                        "autograd of the fp32 formula": lambda: norm.formula(x).backward(g),
                        "F.rms_norm": lambda: F.rms_norm(x, (args.dim,), norm.weight, norm.eps).backward(g)},
                       args.rounds, args.iters))


def bench_rope(args) -> None:
    cfg = config_for_size("tiny")
    cos, sin = rope_tables(cfg)
    cos, sin = cos[:256], sin[:256]
    x = torch.randn(max(1, args.tokens // 256), cfg.n_heads, 256, cfg.hd)
    report(f"RoPE rotation, {tuple(x.shape)}",
           interleaved({"concatenation-free (llama_jreg.ops.rotate)": lambda: rotate(x, cos, sin),
                        "x cos + cat(-x2, x1) sin": lambda: rotate_formula(x, cos, sin)},
                       args.rounds, args.iters * 4))


def bench_mlp(args) -> None:
    mlp = SwiGLU(config_for_size("tiny"))
    x = torch.randn(args.tokens, args.dim, requires_grad=True)

    def concatenated():
        gate, up = F.linear(x, torch.cat([mlp.w1.weight, mlp.w3.weight])).chunk(2, dim=-1)
        mlp.w2(F.silu(gate) * up).sum().backward()

    report(f"SwiGLU MLP fwd+bwd, {args.tokens} x {args.dim}, ffn 688",
           interleaved({"gate/up as one matmul (concatenated weights)": concatenated,
                        "two matmuls (SwiGLU)": lambda: mlp(x).sum().backward()}, args.rounds, args.iters))


def bench_bigram(args) -> None:
    t = time.perf_counter()
    BigramModel.random(8192, 0.1, 1)
    print(f"\n| data=induction bigram, vocab 8192 | {time.perf_counter() - t:.1f} s |\n|---|---:|")


def bench_generate(args) -> None:
    from llama_jreg.generate import generate

    torch.manual_seed(0)
    model = Llama(config_for_size("tiny")).eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 16))
    n = args.gen_tokens

    @torch.no_grad()
    def full_forward():
        seq = prompt
        for _ in range(n):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
        return seq

    assert torch.equal(generate(model, prompt, n, temperature=0), full_forward())  # the same tokens
    res = interleaved({"KV cache (llama_jreg.generate)": lambda: generate(model, prompt, n, temperature=0),
                       "full forward per token": full_forward}, args.rounds, 1)
    report(f"greedy generation of {n} tokens, tiny, batch 1 (ms per call)", res)
    for name, v in res.items():
        print(f"# {name}: {n / statistics.median(v) * 1e3:,.0f} tokens/s")


BENCHES = {"loss": bench_loss, "zloss": bench_zloss, "docmask": bench_docmask, "adamw": bench_adamw, "rmsnorm": bench_rmsnorm, "rope": bench_rope, "mlp": bench_mlp,
           "bigram": bench_bigram, "generate": bench_generate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--iters", type=int, default=8, help="calls per round (loss: a quarter of it)")
    ap.add_argument("--gen-tokens", type=int, default=256, help="generate: new tokens per call")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# bench_ops: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({args.threads} threads), python {platform.python_version()}")
    print(f"# command: python scripts/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"# load average at start (1/5/15 min): {os.getloadavg()}")
    # the trainer's CPU allocator setting (trainer.malloc_tuning, on by default), so the pieces run as in a step
    print(f"# glibc malloc tuning as the trainer sets it: {'on' if tune_cpu_allocator() else 'unavailable'}")
    for name in args.only:
        BENCHES[name](args)
    print(f"\n# load average at end (1/5/15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
