"""``trainer.profile_from`` / ``trainer.profile_steps``: torch.profiler over a window of training steps.

Steps ``profile_from .. profile_from + profile_steps - 1`` (1-based optimizer steps, data loading included)
are recorded on every rank, CPU ops and, on CUDA, kernels. Each rank writes to ``<run.dir>/profile/``:

* ``rank<R>_steps<A>-<B>.json``: a Chrome trace (open in https://ui.perfetto.dev or chrome://tracing); every
  step is one ``train_step <N>`` range;
* ``rank<R>_steps<A>-<B>.txt``: the ops table (``key_averages``, input shapes grouped), sorted by self
  device time on CUDA and by self CPU time on CPU.

The profiled steps run slower (the profiler's overhead), so their ``tokens_per_s`` is not representative.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function


class StepProfiler:
    def __init__(self, run_dir: Path, rank: int, device: torch.device, start: int | None, n_steps: int):
        self.dir = Path(run_dir) / "profile"
        self.rank, self.device = rank, device
        self.start, self.end = (start, start + n_steps - 1) if start is not None else (None, None)
        self.prof: profile | None = None
        self.first = self.last = None
        self.written: list[Path] = []

    def step(self, n: int):
        """Context of optimizer step ``n`` (1-based): starts the profiler at the first step of the window,
        marks the step as one range, stops and writes after the last."""
        if self.start is None or not self.start <= n <= self.end:
            return contextlib.nullcontext()
        return self._profiled_step(n)

    @contextlib.contextmanager
    def _profiled_step(self, n: int):
        if self.prof is None:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.prof = profile(activities=acts, record_shapes=True)
            self.prof.start()
            self.first = n
        with record_function(f"train_step {n}"):
            yield
        self.last = n
        if n == self.end:
            self.stop()

    def stop(self) -> list[Path]:
        """Stop and write (also when the run ends inside the window). Returns the files written."""
        if self.prof is None:
            return self.written
        prof, self.prof = self.prof, None
        prof.stop()
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = self.dir / f"rank{self.rank}_steps{self.first}-{self.last}"
        trace, table = stem.with_suffix(".json"), stem.with_suffix(".txt")
        prof.export_chrome_trace(str(trace))
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table.write_text(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=60,
                                                                            max_name_column_width=60) + "\n")
        self.written = [trace, table]
        return self.written
