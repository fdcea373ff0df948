"""Training: the loop (``trainer.train``), parallelism, optimizer and schedules, checkpoints, metrics.

The entry point is :func:`llama_jreg.train.trainer.train` (imported lazily so that ``import llama_jreg.train``
stays light).
"""
