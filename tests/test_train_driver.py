"""Run ``llama_jreg.train.trainer.train`` from Hydra overrides: the program the training tests launch under
torchrun or as a subprocess (no tests here). Prints the summary as one JSON line prefixed with ``SUMMARY``;
a UserError exits with status 2 and one ``error:`` line.
"""

import json
import sys


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    from llama_jreg import UserError
    from llama_jreg.train.setup import build_config
    from llama_jreg.train.trainer import train

    try:
        summary = train(build_config(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
