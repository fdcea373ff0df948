"""llama-jreg: pre-train Llama language models with JREG, the jump-suppressing regularizer."""

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input (config, paths, data).

    The CLI prints ``error: <message>`` on one line and exits with status 2; no traceback.
    Messages name the problem and the fix.
    """


def help_text(doc: str) -> str:
    """A module docstring as ``--help`` text: its reST literals (double backticks) shown with single ones."""
    return doc.replace("``", "`")
