"""The training loop. ``train(cfg) -> summary`` is what ``llama-jreg train`` calls.

Read top to bottom: ``Trainer.__init__`` sets everything up (accelerate, seeds, run dir, data, model,
parallelism, optimizer, schedule, resume, logging); ``fit`` is the loop; ``train_step`` is one optimizer
step (``step.forward_backward``: gradient accumulation and the JREG term; then clipping, the non-finite
guard); ``evaluate`` and ``val_jump`` are the validation metrics, ``evaluate_tasks`` the task accuracies
(``tasks=[...]``, llama_jreg/tasks/); ``save`` writes a checkpoint.

Launch: ``llama-jreg train ...`` (one process), ``torchrun --nproc_per_node N -m llama_jreg train ...`` or
``accelerate launch -m llama_jreg train ...`` (several; multi-node: see scripts/launch_slurm.sh).

The loss of a step and how gradient accumulation normalises it: ``train/step.py``.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import time
import uuid
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from llama_jreg import UserError
from llama_jreg import checkpoint as ckpt
from llama_jreg import jreg as J
from llama_jreg.config import TrainConfig, check_run_dir, to_yaml
from llama_jreg.data import build_data
from llama_jreg.distributed import all_reduce_sum, barrier, broadcast_object
from llama_jreg.loss import IGNORE_INDEX
from llama_jreg.model import Llama
from llama_jreg.rows import EvalRow, JumpRow, TaskRow
from llama_jreg.tasks import build_tasks, context_for_run, evaluate_tasks
from llama_jreg.train.allocator import tune_cpu_allocator
from llama_jreg.train.init_from import init_model
from llama_jreg.train.metrics import MetricsLogger, Throughput, device_peak_flops, flops_per_token
from llama_jreg.train.optim import Schedule, build_optimizer
from llama_jreg.train.parallel import parallelize, unwrap
from llama_jreg.train.profiling import StepProfiler
from llama_jreg.train.provenance import record_start
from llama_jreg.train.state import TrainState, state_field
from llama_jreg.train.step import StepLosses, World, documents, forward_backward, micro_batches_per_rank

# fault injection for tests: comma-separated 1-indexed steps whose loss is made NaN
INJECT_NONFINITE_ENV = "LLAMA_JREG_INJECT_NONFINITE"


class NonFiniteError(UserError):
    """Training produced non-finite losses or gradients too often (``trainer.nonfinite``)."""


def train(cfg: TrainConfig) -> dict:
    """Pre-train (or resume) as configured; returns a summary dict (see ``Trainer.summary``)."""
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def _resolve_device(cfg: TrainConfig) -> str:
    want = cfg.trainer.device
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu (or auto)")
    return want


class Trainer:
    step, tokens = state_field("step"), state_field("tokens")  # the counters: self.state (TrainState, checkpointed)
    nonfinite_total, nonfinite_in_a_row = state_field("nonfinite_total"), state_field("nonfinite_in_a_row")
    wandb_run_id, init_from = state_field("wandb_run_id"), state_field("init_from")

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        t = cfg.trainer

        self._start_processes()  # accelerate, ranks, device, precision, seeds

        # -- run dir: what to resume from (decided on rank 0, before anything is written), then config.yaml ---
        self.run_dir = check_run_dir(cfg.run)
        self.remote = ckpt.remote_checkpoints(t.ckpt_dir, t.ckpt_storage_options)  # trainer.ckpt_dir=s3://...
        self.resumed_from = ckpt.resolve_resume(cfg.resume, self.run_dir, self.remote)
        if self.resumed_from is None and cfg.resume is None:
            existing = broadcast_object(self._holder_of_checkpoints() if self.is_main else None)
            if existing:
                raise UserError(f"{existing[0]}={existing[1]} already holds checkpoints; continue it with resume=auto "
                                f"or start a new run with another {existing[0]}")
        self.config_yaml = to_yaml(cfg)
        self._write_run_file(None)  # creates run.dir; config.yaml is written once set-up and resume succeeded

        self._build_data()  # this rank's loader, the validation batches, accumulation, tasks
        self.state = TrainState(world_size=self.world, data_fingerprint=self.data.fingerprint)  # the counters
        self._build_model()  # model (init_from), parallelism, optimizer, schedule
        self.checkpointer = self._checkpoint_manager()  # saves and restores every Stateful part

        # -- resume ----------------------------------------------------------------------------------------
        self.last: dict = {}  # the latest logged values, for the summary
        self.metrics = MetricsLogger(self.run_dir, enabled=self.is_main)
        self.profiler = StepProfiler(self.run_dir, self.rank, self.device, cfg.trainer.profile_from,
                                     cfg.trainer.profile_steps)
        if self.is_main:
            ckpt.remove_stale_tmp(self.run_dir)
        if self.resumed_from is not None:
            self.checkpointer.restore(self.resumed_from)  # every part: model ... counters (self.state)
            self.metrics.truncate_after(self.step)
            self.last.update(broadcast_object(self.metrics.last_values() if self.is_main else None))
            self.last["last_checkpoint"] = str(self.resumed_from)
            if self.is_main:
                print(f"resumed from {self.resumed_from} (step {self.step})", flush=True)
        else:
            self.metrics.truncate_after(-1)  # a fresh run starts a fresh metrics.jsonl
        if not self.wandb_run_id:
            self.wandb_run_id = broadcast_object(_new_run_id() if self.is_main else None)
        self.last_saved_step = self.step if self.resumed_from is not None else -1
        self._write_run_file("config.yaml")  # only now: a failed start leaves an existing run's config intact
        record_start(self.run_dir, self.step, self.resumed_from is not None, self.world,  # not for a finished run
                     enabled=self.is_main and self.step < t.max_steps)
        self.metrics.start_wandb(cfg.logger, self.run_dir, self.wandb_run_id, _plain_config(cfg))

        self.inject_nonfinite = {int(s) for s in os.environ.get(INJECT_NONFINITE_ENV, "").split(",") if s.strip()}
        self._stop_signal: str | None = None

    def _start_processes(self) -> None:
        """Processes and devices (accelerate reads the torchrun / accelerate-launch / SLURM environment), the
        precision, the seeds and deterministic mode."""
        t = self.cfg.trainer
        device_kind = _resolve_device(self.cfg)
        self.accelerator = Accelerator(cpu=device_kind == "cpu", mixed_precision="no")
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        _destroy_process_group_at_exit()
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device if device_kind == "cuda" else torch.device("cpu")
        self.precision = t.precision if t.precision != "auto" else ("bf16" if self.device.type == "cuda" else "fp32")
        self.malloc_tuned = self.device.type == "cpu" and t.malloc_tuning and tune_cpu_allocator()

        # seeds: the same on every rank (identical model init, FSDP2 shards a common tensor)
        set_seed(self.cfg.seed)
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

    def _build_data(self) -> None:
        """This rank's data (already split per rank: never through ``accelerator.prepare``), the fixed
        validation batches, the micro-batches per step, and the tasks (their data read and checked now, before
        any step)."""
        cfg, t = self.cfg, self.cfg.trainer
        with self.accelerator.main_process_first():
            self.data = build_data(cfg.data, seed=cfg.seed, rank=self.rank, world_size=self.world,
                                   model_vocab=cfg.model.vocab_size)
        self.train_iter = self.data.train
        self.val = self.data.val_batches(max(1, t.eval_batches))
        self.val_sources = self.data.val_sources()  # data.mixture: (name, weight share) per source, else None
        self.accum = micro_batches_per_rank(cfg, self.world)
        self.tokens_per_step = self.accum * cfg.data.micro_batch_size * self.world * cfg.data.seq_len
        self.tasks = self._build_tasks()  # tasks=[...]

    def _build_model(self) -> None:
        """The model (initialised from ``init_from`` when set), wrapped for DDP / FSDP2, its optimizer and LR
        schedule, and where the step runs (``step_world``)."""
        cfg = self.cfg
        model = Llama(cfg.model)
        self.init_from = init_model(cfg, model, self.run_dir, self.resumed_from, self.is_main)  # init_from=PATH
        model = model.to(self.device)
        self.flops_per_token = flops_per_token(model, cfg.data.seq_len)
        self.peak_flops = device_peak_flops(self.device, self.precision)
        self.model = parallelize(model, cfg, self.device, self.precision)
        # FSDP2 with bf16: its MixedPrecisionPolicy casts the parameters (fp32 masters), no autocast
        fsdp_mixed_precision = cfg.parallel.name == "fsdp" and self.world > 1 and self.precision == "bf16"
        bf16_autocast = self.precision == "bf16" and not fsdp_mixed_precision
        self.step_world = World(self.world, self.device, torch.bfloat16 if bf16_autocast else None)
        self.llama = unwrap(self.model)
        self.optimizer = build_optimizer(self.llama, cfg.optim, self.device)
        self.schedule = Schedule(self.optimizer, cfg.schedule, cfg.optim.lr, cfg.trainer.max_steps)

    def _checkpoint_manager(self) -> ckpt.CheckpointManager:
        """The run's checkpoints, saved from and restored into its Stateful parts (one entry each)."""
        t = self.cfg.trainer
        tok = getattr(self.data.tokenizer, "path", None) if self.data.tokenizer is not None else None
        identity = self.data.identity()  # the data files, known by their content (data/identity.py)
        states = {"model": ckpt.ModelPart(self.llama), "optim": ckpt.OptimizerPart(self.llama, self.optimizer),
                  "scheduler": ckpt.JsonPart(self.schedule), "trainer_state": ckpt.JsonPart(self.state),
                  "loader": ckpt.RankPart(self.train_iter, translate=identity.translate),  # another world: rank 0's
                  "rng": ckpt.RankPart(ckpt.RNG(), suffix=".pt", other_world="skip")}  # another world: re-seeded
        fmt = ckpt.resolve_format(t.checkpoint_format, self.cfg.parallel.name, t.async_checkpoint)
        return ckpt.CheckpointManager(self.run_dir, states, fmt, t.keep_last, ckpt.RunFiles(
            self.config_yaml, str(tok) if tok else None), ckpt.AsyncCheckpointer() if t.async_checkpoint else None,
            data_identity=identity, remote=self.remote)

    def _holder_of_checkpoints(self) -> tuple[str, str] | None:
        """(setting, value) of the place that already holds this run's checkpoints (run.dir first, then
        trainer.ckpt_dir), None when neither does: a run started without ``resume`` refuses to overwrite them."""
        if ckpt.list_checkpoints(self.run_dir):
            return "run.dir", str(self.cfg.run.dir)
        if self.remote is not None and self.remote.steps():
            return "trainer.ckpt_dir", str(self.cfg.trainer.ckpt_dir)
        return None

    def _write_run_file(self, name: str | None) -> None:
        """Create run.dir (``name=None``) or write the resolved config into it; rank 0 writes, all ranks agree."""
        err = None
        if self.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if name:
                    (self.run_dir / name).write_text(self.config_yaml)
            except OSError as e:
                err = f"cannot write to run.dir={self.cfg.run.dir}: {e.strerror or e}; choose a writable directory"
        err = broadcast_object(err)
        if err:
            raise UserError(err)

    # ------------------------------------------------------------------------------------------- the loop

    def fit(self) -> dict:
        """Train to ``trainer.max_steps`` (or a stop): step, then log / evaluate / checkpoint, each when due.
        Returns the summary."""
        t = self.cfg.trainer
        self._install_signal_handlers()
        progress = None
        if self.is_main and t.progress:
            progress = tqdm(total=t.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        meter = Throughput(self.tokens_per_step, self.flops_per_token, self.world, self.peak_flops, self.device)
        stopped_by = None
        first_step = self.step
        if self.step == 0 and self.cfg.init_from is not None:
            self.log_start()
            meter.restart()  # the first step's time excludes the step-0 evaluation
        try:
            while self.step < t.max_steps:
                out = self._timed_step(meter)
                if out is None:
                    warnings.warn(f"training data exhausted after {self.step} steps", stacklevel=1)
                    break
                if progress is not None:
                    progress.update(1)
                self._log_when_due(out, meter, progress)  # train / jump / eval / task rows
                stopped_by = self._stop_reason(out, first_step)
                if stopped_by:
                    break
                if self.step % t.ckpt_every == 0:
                    self.save()
            if self.step != self.last_saved_step:
                self.save()
            self.checkpointer.wait()  # an asynchronous last checkpoint exists before the run reports it
        finally:
            if progress is not None:
                progress.close()
            self._restore_signal_handlers()
            self.profiler.stop()  # a run that ends (or fails) inside the profiled window still writes it
        if stopped_by and self.is_main:
            print(f"stopped by {stopped_by} at step {self.step}; checkpoint saved, resume with resume=auto", flush=True)
        return self.summary(stop_reason=stopped_by)

    def _timed_step(self, meter: Throughput) -> StepLosses | None:
        """The next optimizer step (inside the profiler's window), its data wait counted by ``meter``; None
        when the training data ran out."""
        with self.profiler.step(self.step + 1):
            step_start = time.perf_counter()
            batches = self._next_batches()
            wait = time.perf_counter() - step_start
            if batches is None:
                return None
            out = self.train_step(batches)
        meter.add(wait)
        self.last.update(final_loss=out.loss, final_lm_loss=out.lm_loss)
        return out

    def _log_when_due(self, out: StepLosses, meter: Throughput, progress) -> None:
        """After a step: the train row, the jump row, the evaluation and the tasks, each when due."""
        t = self.cfg.trainer
        if self._due(t.log_every):
            row = meter.row(self.step, self.tokens, out, self.nonfinite_total)
            if hasattr(self.train_iter, "tokens_by_source"):  # data.mixture
                row.tokens_by_source = self.train_iter.tokens_by_source()
            self.metrics.log(row)
            if progress is not None:
                progress.set_postfix(loss=f"{out.loss:.4f}", tok_s=f"{row.tokens_per_s:,.0f}")
        if out.psi is not None:
            self.log_jump(out)
        if t.eval_batches > 0 and self._due(t.eval_every):
            self.evaluate()
        if self.tasks and self._due(t.task_every or t.eval_every):
            self.evaluate_tasks()

    def _stop_reason(self, out: StepLosses, first_step: int) -> str | None:
        """Why the run stops before ``max_steps`` after this step (a signal on any rank, ``steps_per_run``)."""
        t = self.cfg.trainer
        if out.stop:
            return self._stop_signal or "signal"
        if t.steps_per_run and self.step - first_step >= t.steps_per_run and self.step < t.max_steps:
            return f"trainer.steps_per_run={t.steps_per_run}"
        return None

    def _due(self, every: int) -> bool:
        """Whether something done every ``every`` steps (and at the last step) is due after this step."""
        return self.step % every == 0 or self.step == self.cfg.trainer.max_steps

    def _next_batches(self) -> list[dict] | None:
        """This rank's ``accum`` micro-batches of the next optimizer step (None when the data ran out)."""
        try:
            return [next(self.train_iter) for _ in range(self.accum)]
        except StopIteration:
            return None

    # ------------------------------------------------------------------------------------------- one step

    def _autocast(self):
        """bf16 autocast, or nothing: in fp32, and under FSDP2 whose MixedPrecisionPolicy already runs the
        forward in bf16 (``parallel.parallelize``)."""
        return self.step_world.autocast()

    def train_step(self, batches: list[dict]) -> StepLosses:
        """One optimizer step over this rank's micro-batches (collective across ranks). Returns floats that
        are the same on every rank (all-reduced)."""
        cfg, t = self.cfg, self.cfg.trainer
        weight = J.weight_at(cfg.jreg, self.step)
        with_psi = (self.step + 1) % t.jump_every == 0 or self.step + 1 == t.max_steps
        sums = forward_backward(self.model, batches, cfg, self.step_world, weight=weight, with_psi=with_psi,
                                stop=self._stop_signal is not None, nan=(self.step + 1) in self.inject_nonfinite)

        # clip (also measures the global grad norm; max_norm=inf leaves the gradients untouched)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        # one read-back for the loss sums, Psi sums and grad norm together (the skip decision below needs them on
        # the host); multi-rank runs also read the global target-token count before the forward
        out = sums.losses(cfg, grad_norm)
        out.lr = self.schedule.lr()

        if math.isfinite(out.loss) and math.isfinite(out.grad_norm):
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            self._nonfinite_step(out)
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.step += 1
        self.tokens += self.tokens_per_step
        return out

    def _nonfinite_step(self, out: StepLosses) -> None:
        """Count a step whose loss or gradient is not finite (its update is skipped); raise NonFiniteError
        when ``trainer.nonfinite=halt`` or after ``trainer.max_nonfinite_in_a_row`` of them."""
        t = self.cfg.trainer
        self.nonfinite_total += 1
        self.nonfinite_in_a_row += 1
        what = f"non-finite loss/gradient at step {self.step + 1} (loss={out.loss}, grad_norm={out.grad_norm})"
        if t.nonfinite == "halt":
            raise NonFiniteError(f"{what}; trainer.nonfinite=halt. Lower optim.lr or check the data")
        if self.nonfinite_in_a_row >= t.max_nonfinite_in_a_row:
            raise NonFiniteError(
                f"{what}: {self.nonfinite_in_a_row} non-finite steps in a row "
                f"(trainer.max_nonfinite_in_a_row={t.max_nonfinite_in_a_row}); training diverged - lower "
                "optim.lr, raise schedule.warmup_steps or check the data; resume from the last checkpoint"
            )
        if self.is_main:
            warnings.warn(f"{what}: step skipped (trainer.nonfinite=skip)", stacklevel=1)

    # ------------------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def val_jump(self) -> tuple[list[float], float]:
        """Psi per layer and the post-norm Psi_L on the first fixed validation batch (every rank computes
        them; FSDP2 needs all)."""
        self.model.eval()
        b = self.val[0]
        y = b["labels"].to(self.device)
        with self._autocast():
            out = self.llama(b["input_ids"].to(self.device), stats=True, **documents(b, self.device))
        mask = y != IGNORE_INDEX
        post = float(J.psi(out.cos_post_norm[None], mask)[0])
        return [float(v) for v in J.psi(out.cos, mask)], post

    def log_jump(self, out: StepLosses) -> None:
        psi = out.psi
        val_psi, val_post = self.val_jump()
        row = JumpRow(step=self.step, tokens=self.tokens, psi=psi, zeta_L=float(J.zeta_L(torch.tensor(psi))),
                      psi_post_norm_L=out.psi_post_norm_L, val_psi=val_psi,
                      val_zeta_L=float(J.zeta_L(torch.tensor(val_psi))), val_psi_post_norm_L=val_post)
        self.metrics.log(row)
        self.last.update(zeta_L=row.zeta_L, psi=psi, val_zeta_L=row.val_zeta_L)

    def log_start(self) -> None:
        """Step-0 rows before any update (``init_from`` runs: where the source model starts): ``kind=eval``
        and a ``kind=jump`` row whose Psi is measured on the first fixed validation batch (no training batch
        has been drawn yet; ``psi_batch`` says so)."""
        if self.cfg.trainer.eval_batches > 0:
            self.evaluate()
        val_psi, val_post = self.val_jump()
        z = float(J.zeta_L(torch.tensor(val_psi)))
        self.metrics.log(JumpRow(step=self.step, tokens=self.tokens, psi=val_psi, zeta_L=z, psi_post_norm_L=val_post,
                                 val_psi=val_psi, val_zeta_L=z, val_psi_post_norm_L=val_post, psi_batch="validation"))
        self.last.update(zeta_L=z, psi=val_psi, val_zeta_L=z)
        if self.tasks:
            self.evaluate_tasks()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean CE over the ``trainer.eval_batches`` fixed validation batches, split over ranks. A data.mixture
        has that many batches per source: ``val_loss/<name>`` per source, ``val_loss`` their weighted mean."""
        self.model.eval()
        groups = self.val_sources or [(None, 1.0)]
        n = len(self.val)
        per_group = n // len(groups)
        sums = torch.zeros(2 * len(groups), dtype=torch.float64, device=self.device)
        per_rank = -(-n // self.world)
        for j in range(per_rank):
            i = self.rank + j * self.world
            b = self.val[i if i < n else 0]  # ranks past the end still run a forward (FSDP2 collectives)
            y = b["labels"].to(self.device)
            with self._autocast():
                ce = self.llama(b["input_ids"].to(self.device), labels=y,
                                loss_chunk_tokens=self.cfg.trainer.loss_chunk_tokens, **documents(b, self.device)).loss
            if i < n:
                g = 2 * (i // per_group)
                sums[g] += ce.double()
                sums[g + 1] += (y != IGNORE_INDEX).sum().double()
        all_reduce_sum(sums)
        losses = [float(sums[2 * k] / sums[2 * k + 1].clamp_min(1.0)) for k in range(len(groups))]
        val_loss = sum(w * loss for (_, w), loss in zip(groups, losses))
        by_source = {name: loss for (name, _), loss in zip(groups, losses)} if self.val_sources else {}
        self.metrics.log(EvalRow(step=self.step, tokens=self.tokens, val_loss=val_loss,
                                 val_ppl=math.exp(min(val_loss, 700.0)), val_loss_by_source=by_source))
        self.last["val_loss"] = val_loss
        return val_loss

    def _build_tasks(self) -> list:
        """The run's ``tasks`` (llama_jreg.tasks), every task's data read and checked (UserError)."""
        if not self.cfg.tasks:
            return []

        ctx = context_for_run(self.data, self.cfg.data, max_length=self.cfg.model.max_seq_len,
                              default_n=self.cfg.trainer.task_n)
        with self.accelerator.main_process_first():  # lm-eval datasets: one rank fills the cache first
            return build_tasks(self.cfg.tasks, ctx)

    def evaluate_tasks(self) -> list[dict]:
        """Evaluate the tasks (sharded over ranks, sums all-reduced; collective) and log ``kind=task`` rows."""
        rows = evaluate_tasks(self.llama, self.tasks, rank=self.rank, world=self.world, device=self.device,
                              batch_size=self.cfg.trainer.task_batch_size, autocast=self._autocast)
        for r in rows:
            row = TaskRow.of_result(self.step, self.tokens, r)
            self.metrics.log(row)
            self.last.setdefault("tasks", {})[row.task] = row.to_dict()
        return rows

    # ------------------------------------------------------------------------------------------- checkpoints

    def save(self) -> Path:
        path = self.checkpointer.save(self.step)
        self.last_saved_step = self.step
        self.last["last_checkpoint"] = str(path)
        return path

    # ------------------------------------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> None:
        self._old_handlers = {}

        def handler(signum, frame):
            name = signal.Signals(signum).name
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self._stop_signal = name
            if self.is_main:
                print(f"\n{name} received: saving a checkpoint at the end of this step", flush=True)

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)

    # ------------------------------------------------------------------------------------------- the end

    def summary(self, stop_reason: str | None = None) -> dict:
        plots: list[str] = []
        # (a run stopped before its first logged row has no metrics.jsonl yet: nothing to plot)
        if self.is_main and self.cfg.trainer.plots and Path(self.metrics.path).is_file():
            try:
                from llama_jreg.plots import plot_run
            except ImportError:
                plot_run = None
            if plot_run is not None:
                plots = [str(p) for p in (plot_run(self.run_dir) or [])]
        barrier()
        return {
            "final_loss": self.last.get("final_loss"),
            "final_lm_loss": self.last.get("final_lm_loss"),
            "zeta_L": self.last.get("zeta_L"),
            "val_zeta_L": self.last.get("val_zeta_L"),
            "val_loss": self.last.get("val_loss"),
            "tasks": self.last.get("tasks") or {},  # task name -> its latest kind=task row
            "tokens": self.tokens,
            "steps": self.step,
            "device": self.device.type,
            "nonfinite_skipped": self.nonfinite_total,
            "interrupted": stop_reason is not None,  # stopped before max_steps (signal / steps_per_run)
            "stop_reason": stop_reason,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "run_dir": str(self.run_dir),
            "metrics_path": str(self.metrics.path),
            "last_checkpoint": self.last.get("last_checkpoint"),
            "plots": plots,
            "profile": [str(p) for p in self.profiler.written] if self.is_main else [],
        }

    def close(self) -> None:
        self.checkpointer.close()  # a run that failed mid-save leaves that checkpoint unfinished
        self.metrics.finish()
        torch.use_deterministic_algorithms(self._was_deterministic)


_AT_EXIT_REGISTERED = False


def _destroy_process_group_at_exit() -> None:
    """Tear the process group down before interpreter shutdown (else gloo/NCCL threads may abort the
    process after a successful run). At exit, not in ``close``, so several runs in one process still work."""
    global _AT_EXIT_REGISTERED

    if _AT_EXIT_REGISTERED or not dist.is_initialized():
        return

    def destroy():
        if dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(destroy)
    _AT_EXIT_REGISTERED = True


def _new_run_id() -> str:
    try:
        from wandb.util import generate_id

        return generate_id()
    except ImportError:
        return uuid.uuid4().hex[:8]


def _plain_config(cfg: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
