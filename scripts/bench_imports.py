"""Import-time cost of the optional heavy dependencies, over an already imported torch: the measurement behind
the imports that llama_jreg defers into the functions that need them (everything else is imported at the top).

    python scripts/bench_imports.py [--repeats 3]

Each package is imported in a fresh interpreter after ``import torch``; the best of ``--repeats`` runs is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PACKAGES = ["transformers", "datasets", "wandb", "matplotlib.pyplot", "torch.distributed.checkpoint", "lm_eval.evaluator",
            "hydra", "accelerate", "gguf", "safetensors.torch", "omegaconf", "sentencepiece", "yaml", "tqdm.auto"]
PROBE = "import time, torch; t = time.perf_counter(); import {name}; print(time.perf_counter() - t)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print("| package | import time over torch, s (best of %d) |\n|---|---:|" % args.repeats)
    for name in PACKAGES:
        best = min(float(subprocess.run([sys.executable, "-c", PROBE.format(name=name)], check=True,
                                        capture_output=True, text=True).stdout) for _ in range(args.repeats))
        print(f"| `{name}` | {best:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
