"""The reproduction study (``scripts/reproduce.py``, ``make reproduce``), on top of the library: the run plan
(plan.py), running it through the public CLI (run.py, archive.py), per-run results (results.py), seed
statistics (stats.py), the claims and findings (findings.py), tables, figures and the Markdown report
(tables.py, figures.py, report.py) and the command line (cli.py). Nothing else in llama_jreg imports it."""
