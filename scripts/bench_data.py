"""Benchmark the data layer: prepare-data tokenisation throughput and loader throughput; or, with
``--hash-mib N``, the content identity of a local file (data/identity.py) alone.

    python scripts/bench_data.py [--copies 8] [--vocab 8192] [--batches 200]
    python scripts/bench_data.py --hash-mib 1024

Corpus: the Shakespeare works (fetched like ``data=shakespeare``) written ``--copies`` times into a jsonl
file (each copy's documents get a distinct prefix, so nothing is cached). The tokenizer is trained once and
passed as ``data.tokenizer`` so only tokenisation + shard writing are timed. Loader: micro-batch 8 x 2048.

``--hash-mib N``: a file of N MiB of random bytes is written to a temporary directory (deleted at the end);
timed are its first sha256 (what a start on a new machine or after a change pays; the file was just written,
so it is read from the page cache, not the disk) and the cached look-up (path, size, mtime) of a second start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from llama_jreg.data import build_data
from llama_jreg.data.identity import cached_sha256
from llama_jreg.data.prepare import prepare
from llama_jreg.data.schema import DataConfig
from llama_jreg.data.sources import cache_root, fetch_shakespeare
from llama_jreg.data.tokenizer import train_tokenizer


def cpu_seconds() -> float:
    """User + system CPU time of this process and its (finished) children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--hash-mib", type=int, default=0, help="time only the content hash of a file of this size")
    args = ap.parse_args()
    if args.hash_mib:
        hash_benchmark(args.hash_mib)
        return

    texts = [Path(f).read_text(encoding="utf-8") for f in fetch_shakespeare(cache_root(DataConfig()))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        with corpus.open("w", encoding="utf-8") as f:
            for c in range(args.copies):
                for t in texts:
                    f.write(json.dumps({"text": f"Copy {c}.\n{t}"}) + "\n")
        tok = train_tokenizer(texts, tmp / "tok.model", args.vocab, 20_000_000)
        cfg = DataConfig(source="local", files=[str(corpus)], tokenizer=tok.path, seq_len=2048, micro_batch_size=8,
                         cache_dir=str(tmp / "cache"), prepared_dir=str(tmp / "prepared"))
        t0, c0 = time.perf_counter(), cpu_seconds()
        _out, m = prepare(cfg, log=lambda s: None)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        ntok = m["stream"]["tokens"]
        print(f"cores: {os.cpu_count()}  corpus: {corpus.stat().st_size / 2**20:.1f} MiB, "
              f"{len(texts) * args.copies} documents, {ntok:,} tokens, vocab {tok.vocab_size}")
        print(f"prepare-data tokenisation: {m['tokens_per_second']:,.0f} tokens/s "
              f"(read+tokenise+write; whole prepare incl. manifest: {ntok / wall:,.0f} tokens/s, {wall:.2f}s)")
        print(f"  CPU time (this process + workers): {cpu:.2f}s = {ntok / cpu:,.0f} tokens per CPU-second; "
              f"load average now {os.getloadavg()[0]:.2f} (other jobs on the machine lower the wall-clock rate)")

        b = build_data(cfg, seed=0, model_vocab=args.vocab)
        next(b.train)  # warm up (permutation, page cache)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            batch = next(b.train)
        dt = time.perf_counter() - t0
        shape = tuple(batch["input_ids"].shape)
        print(f"loader: {args.batches * batch['input_ids'].numel() / dt:,.0f} tokens/s "
              f"({args.batches / dt:,.0f} micro-batches/s of {shape[0]}x{shape[1]})")


def hash_benchmark(mib: int) -> None:
    """First sha256 of a ``mib`` MiB file, then the cached look-up, as ``TextSource.identity`` pays them."""
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "corpus.bin"
        with f.open("wb") as out:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
        cache = Path(tmp) / "cache"
        t0, c0 = time.perf_counter(), cpu_seconds()
        digest = cached_sha256(str(f), cache)
        first, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        t0 = time.perf_counter()
        for _ in range(100):
            assert cached_sha256(str(f), cache) == digest
        cached = (time.perf_counter() - t0) / 100
        print(f"cores: {os.cpu_count()}  file: {mib} MiB  load average now {os.getloadavg()[0]:.2f}")
        print(f"first sha256: {first:.2f}s ({mib / first:,.0f} MiB/s; CPU {cpu:.2f}s)")
        print(f"cached (path, size, mtime) look-up: {cached * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
