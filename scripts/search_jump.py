"""Search for a from-scratch recipe in which the jump (val zeta_L) grows at lambda = 0 (docs/jump_emergence.md).

Runs ``llama-jreg train`` one run at a time (``nice -n 10``, ``OMP_NUM_THREADS=1`` unless ``--threads``) for named
configurations (``CONFIGS`` below) and seeds, each in ``OUT/<config>/seed<k>`` with ``resume=auto``, and appends
one JSON line per finished run to ``OUT/log.jsonl``: config, overrides, seed, steps, tokens, wall time, val zeta_L
and Psi per layer at every jump measurement, and the final values. A run already in the log is skipped, and an
interrupted one continues from its last checkpoint, so the search can be stopped and restarted at any time.

    python scripts/search_jump.py run d64x12-b2 tiny-b2 --seeds 1 2    # run (or skip) these
    python scripts/search_jump.py table --md docs/jump_search.md       # the markdown table from the log
    python scripts/search_jump.py curves tiny-b2-s600-lr1e-3          # per seed val zeta_L by step + rate
    python scripts/search_jump.py list                                 # the configurations and their overrides

The table says, per configuration: seeds, steps x batch, wall time per run, val zeta_L at the first measurement
and at the end per seed, how many seeds end with val zeta_L >= 1 and above their first measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_jreg.rows import JumpRow, read_rows

REPO = Path(__file__).resolve().parent.parent

# every run: Shakespeare, no JREG, no wandb, one final checkpoint (for resume), Psi on the fixed validation batch
BASE = ["data=shakespeare", "jreg=off", "logger=none", "trainer.progress=false", "trainer.plots=false",
        "trainer.keep_last=1", "trainer.eval_batches=4"]


def narrow(dim: int, layers: int, heads: int, ffn: int) -> list[str]:
    return [f"model.dim={dim}", f"model.n_layers={layers}", f"model.n_heads={heads}",
            f"model.n_kv_heads={max(1, heads // 2)}", f"model.ffn_dim={ffn}"]


def sched(steps: int, batch: int, lr: float, warmup: int, jump_every: int | None = None) -> list[str]:
    je = jump_every or max(1, steps // 10)
    return [f"trainer.max_steps={steps}", f"data.micro_batch_size={batch}", f"optim.lr={lr}",
            f"schedule.warmup_steps={warmup}", f"trainer.jump_every={je}", f"trainer.eval_every={steps}",
            f"trainer.ckpt_every={max(steps // 2, 1)}", "trainer.log_every=50"]


# name -> overrides (on top of BASE); the names say model (dim x layers), batch, steps, lr
CONFIGS: dict[str, list[str]] = {
    # the starting points of the issue
    "tiny-b8-s500-lr3e-4": ["model=tiny", *sched(500, 8, 3e-4, 100)],
    "tiny-b2-s2000-lr3e-4": ["model=tiny", *sched(2000, 2, 3e-4, 100)],
    "tiny-b8-s500-lr1e-3": ["model=tiny", *sched(500, 8, 1e-3, 100)],
    "tiny-b4-s1000-lr1e-3": ["model=tiny", *sched(1000, 4, 1e-3, 100)],
    "tiny-b2-s2000-lr1e-3": ["model=tiny", *sched(2000, 2, 1e-3, 100)],
    "tiny-b2-s600-lr1e-3": ["model=tiny", *sched(600, 2, 1e-3, 100, jump_every=60)],
    "tiny-b8-s150-lr1e-3": ["model=tiny", *sched(150, 8, 1e-3, 25, jump_every=15)],
    # narrow and deep: cheap per step, so many updates fit
    "d64x12-b2-s3000-lr3e-3": [*narrow(64, 12, 4, 172), *sched(3000, 2, 3e-3, 100)],
    "d64x12-b8-s750-lr3e-3": [*narrow(64, 12, 4, 172), *sched(750, 8, 3e-3, 100)],
    "d64x12-b2-s3000-lr1e-3": [*narrow(64, 12, 4, 172), *sched(3000, 2, 1e-3, 100)],
    "d64x8-b2-s3000-lr3e-3": [*narrow(64, 8, 4, 172), *sched(3000, 2, 3e-3, 100)],
    "d64x16-b2-s3000-lr3e-3": [*narrow(64, 16, 4, 172), *sched(3000, 2, 3e-3, 100)],
    "d128x12-b2-s2000-lr1e-3": [*narrow(128, 12, 4, 344), *sched(2000, 2, 1e-3, 100)],
    "d128x12-b8-s500-lr1e-3": [*narrow(128, 12, 4, 344), *sched(500, 8, 1e-3, 100)],
    "d64x12-b2-s3000-lr3e-3-untied": [*narrow(64, 12, 4, 172), *sched(3000, 2, 3e-3, 100),
                                      "model.tie_embeddings=false"],
}

# the recipe chosen from the search: configs/experiment/jump_emergence.yaml trains exactly this
RECIPE = "tiny-b2-s600-lr1e-3"


def read_jump_rows(run_dir: Path) -> list[JumpRow]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return read_rows(path, JumpRow)


def read_log(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_one(name: str, seed: int, out: Path, threads: int, log: Path) -> dict | None:
    overrides = [*BASE, *CONFIGS[name], f"seed={seed}"]
    run_dir = out / name / f"seed{seed}"
    cmd = ["nice", "-n", "10", sys.executable, "-m", "llama_jreg", "train", *overrides, f"run.dir={run_dir}",
           "resume=auto"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"[{time.strftime('%H:%M:%S')}] {name} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    (run_dir / "search_stdout.txt").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "search_stdout.txt").write_text(p.stdout[-20000:] + "\n--- stderr\n" + p.stderr[-20000:])
    if p.returncode != 0:
        print(f"  failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    rows = read_jump_rows(run_dir)
    steps = max((r.step for r in rows), default=0)
    rec = {
        "config": name, "overrides": CONFIGS[name], "seed": seed, "steps": steps,
        "tokens": rows[-1].tokens if rows else 0, "wall_s": round(wall, 1), "threads": threads,
        "date": time.strftime("%Y-%m-%d"), "run_dir": str(run_dir),
        "val_zeta_L": {str(r.step): round(r.val_zeta_L, 4) for r in rows},
        "val_psi_final": [round(v, 5) for v in rows[-1].val_psi] if rows else None,
        "final_val_zeta_L": rows[-1].val_zeta_L if rows else None,
        "first_val_zeta_L": rows[0].val_zeta_L if rows else None,
    }
    with log.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  done in {wall:.0f} s: val zeta_L {rec['first_val_zeta_L']:.3f} (step {rows[0].step}) -> "
          f"{rec['final_val_zeta_L']:.3f} (step {steps})", flush=True)
    return rec


def grows(rec: dict) -> bool:
    """The criterion of the search: val zeta_L >= 1 at the end and higher than at the first measurement."""
    return rec["final_val_zeta_L"] >= 1.0 and rec["final_val_zeta_L"] > rec["first_val_zeta_L"]


def table(log: Path) -> str:
    recs = read_log(log)
    by: dict[str, list[dict]] = {}
    for r in recs:
        by.setdefault(r["config"], []).append(r)
    lines = ["| configuration | seeds | steps x batch | wall time per run (s) | val ζ_L, first -> end, per seed | "
             "grew (≥ 1 and up) |",
             "|---|---:|---|---:|---|---:|"]
    for name, rs in by.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        batch = next((o.split("=")[1] for o in r_over(rs[0]) if o.startswith("data.micro_batch_size=")), "?")
        walls = [r["wall_s"] for r in rs]
        per_seed = "; ".join(f"s{r['seed']}: {r['first_val_zeta_L']:.2f} -> {r['final_val_zeta_L']:.2f}" for r in rs)
        lines.append(f"| `{name}` | {len(rs)} | {rs[0]['steps']} x {batch} | {min(walls):.0f}-{max(walls):.0f} | "
                     f"{per_seed} | {sum(grows(r) for r in rs)}/{len(rs)} |")
    return "\n".join(lines) + "\n"


def r_over(rec: dict) -> list[str]:
    return rec.get("overrides") or []


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def zeta_tail(psi: list[float], k: int) -> float:
    """zeta_(L-k+1) = 100 * sum of max(0, Psi_l - Psi_(l-1)) over the last k layers (k = 1: zeta_L)."""
    return 100 * sum(max(0.0, psi[i] - psi[i - 1]) for i in range(len(psi) - k, len(psi)))


def curves(log: Path, name: str) -> str:
    """Per seed, val zeta_L at every measurement of configuration ``name`` (a markdown table), and the
    emergence rate with its Wilson interval."""
    rs = sorted((r for r in read_log(log) if r["config"] == name), key=lambda r: r["seed"])
    if not rs:
        return f"no finished run of {name} in {log}\n"
    steps = sorted({int(k) for r in rs for k in r["val_zeta_L"]})
    lines = ["| seed | " + " | ".join(str(st) for st in steps) + " | Ψ_L-2, Ψ_L-1, Ψ_L (end) | ζ_L-1 (end) | grew | "
             "wall time (s) |",
             "|---:|" + "---:|" * len(steps) + "---|---:|---|---:|"]
    for r in rs:
        z = [r["val_zeta_L"].get(str(st)) for st in steps]
        psi = r["val_psi_final"]
        lines.append(f"| {r['seed']} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in z) +
                     f" | {psi[-3]:.4f}, {psi[-2]:.4f}, {psi[-1]:.4f} | {zeta_tail(psi, 2):.2f} | "
                     f"{'yes' if grows(r) else 'no'} | {r['wall_s']:.0f} |")
    k, n = sum(grows(r) for r in rs), len(rs)
    lo, hi = wilson(k, n)
    finals = [r["final_val_zeta_L"] for r in rs]
    mean = sum(finals) / n
    sd = (sum((f - mean) ** 2 for f in finals) / (n - 1)) ** 0.5 if n > 1 else float("nan")
    lines.append("")
    lines.append(f"Grew in {k} of {n} seeds (95 % Wilson interval {lo:.2f}-{hi:.2f}); final val ζ_L "
                 f"{mean:.2f} ± {sd:.2f} (mean ± sample s.d.), min {min(finals):.2f}, max {max(finals):.2f}; "
                 f"wall time {min(r['wall_s'] for r in rs):.0f}-{max(r['wall_s'] for r in rs):.0f} s per run.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table", "curves", "list"])
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "search_jump")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--md", type=Path, default=None, help="table: write it into this file (else print)")
    a = ap.parse_args(argv)
    log = a.out / "log.jsonl"
    if a.what == "list":
        for k, v in CONFIGS.items():
            print(f"{k}: {' '.join(v)}")
        return 0
    if a.what in ("table", "curves"):
        text = table(log) if a.what == "table" else "".join(curves(log, c) for c in (a.configs or [RECIPE]))
        if a.md:
            a.md.write_text(text)
        print(text, end="")
        return 0
    unknown = [c for c in a.configs if c not in CONFIGS]
    if unknown:
        print(f"error: unknown configuration(s) {', '.join(unknown)}; `search_jump.py list` shows them",
              file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.configs:
        for seed in a.seeds:
            done = [r for r in read_log(log) if r["config"] == name and r["seed"] == seed]
            if done:
                print(f"{name} seed {seed}: in the log, skipped")
                continue
            run_one(name, seed, a.out, a.threads, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
