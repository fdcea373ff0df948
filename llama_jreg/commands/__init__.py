"""Subcommands that sit above the packages they combine: ``prepare-data`` (config + data) and ``eval-tasks``
(config + data + load + tasks). ``train`` lives in ``llama_jreg/train/command.py``, above the trainer; the
analysis commands live with their analyses. Nothing in the library imports these modules (``cli.py`` loads them
by name)."""
