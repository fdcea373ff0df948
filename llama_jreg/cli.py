"""`llama-jreg` command line: one subcommand per user journey.

Each subcommand lives in the module that does the work and exposes ``main(argv) -> int``; this file only
dispatches (lazily, so `llama-jreg --help` is fast) and turns a :class:`llama_jreg.UserError` into one
``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llama_jreg import UserError, __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("llama_jreg.train.command", "pre-train (or resume, or sweep with -m) from Hydra overrides"),
    "prepare-data": ("llama_jreg.commands.prepare_data", "tokenise a corpus into shards + manifest"),
    "sweep-report": ("llama_jreg.analysis.sweep_report", "Markdown table + plots for a JREG sweep dir"),
    "jump": ("llama_jreg.analysis.jump", "Psi per layer and zeta_L of any model on a text"),
    "plot": ("llama_jreg.plots", "zeta_L over training and Psi curves from a run dir"),
    "eval": ("llama_jreg.analysis.logit_lens", "validation loss, logit lens, early exit, induction accuracy"),
    "ffn-concepts": ("llama_jreg.analysis.ffn_concepts", "top FFN sub-updates and the tokens they promote"),
    "generate": ("llama_jreg.generate", "sample text from a checkpoint, run dir, HF dir or GGUF (KV cache)"),
    "export-hf": ("llama_jreg.commands.export_hf", "export a checkpoint as an HF Llama directory"),
    "lm-eval": ("llama_jreg.commands.lm_eval", "evaluate a checkpoint with lm-eval-harness tasks"),
    "eval-tasks": ("llama_jreg.commands.eval_tasks", "task accuracy (induction, cloze, choice, lm-eval) of any model"),
}


def _usage() -> str:
    lines = [f"llama-jreg {__version__} - pre-train Llama models with JREG", "", "usage: llama-jreg COMMAND [ARGS...]", ""]
    lines += [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`llama-jreg COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _argparse_error(parser: argparse.ArgumentParser, message: str):
    raise UserError(f"{parser.prog}: {message}; see `{parser.prog} --help`")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    argparse.ArgumentParser.error = _argparse_error  # one `error:` line, not usage + error (exit status 2)
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    # any other exception is a bug, not a user's mistake: its traceback is shown as it is


if __name__ == "__main__":
    raise SystemExit(main())
