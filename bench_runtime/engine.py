"""The one training loop of the suite. Pretraining (pretrain/train.py) and fine-tuning
(transfer/finetune.py) both run through `Engine`; what they train comes in as a step function:
a pretext method's `train_step`, or a task's forward, loss and `take_step`.

The engine owns what every training run must get right, whatever it trains:
* checkpoint.pt and exact resume: model, optimisers, learning-rate schedules, fp16 loss scalers,
  the step, the training time and every process's RNG streams (the dropout draws);
* metrics.jsonl: one line per step, cut back to the checkpoint's step on resume, and the same
  in TensorBoard event files in tensorboard/ (bench_runtime.events), with the learning rates and pictures;
* data parallelism under torchrun: the step sees a view of the model whose trainable children are
  wrapped in DistributedDataParallel (gradients averaged during backward, bucketed and overlapped);
  every process starts from the same weights (same seed) but draws its own dropout;
* precision (autocast, a GradScaler per optimiser for fp16), SyncBatchNorm, channels-last and
  torch.compile (`prepare_model`);
* the progress bar with images/s, and the stop on a non-finite loss.
"""
import contextlib
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import distributed, formats, preemption, speedups
from .errors import UserError
from .events import EventLog
from .options import check_ranges, flag
from .progress import progress_bar
from .readers import read_torch
from .runfiles import CHECKPOINT, save_torch

METRICS = "metrics.jsonl"


def check_training_options(config, *extra):
    """A one-line error for a step count, batch size, worker count, learning rate, image size or
    checkpoint interval out of range (the options pretraining and fine-tuning share), or for one
    of the (flag, value, ok, rule) `extra` rules."""
    check_ranges([*[(flag(name), getattr(config, name), getattr(config, name) >= 1, "at least 1")
                    for name in ("steps", "batch_size", "checkpoint_every")],
                  ("--image-size", config.image_size, config.image_size is None or config.image_size >= 1,
                   "at least 1"),
                  ("--workers", config.workers, config.workers >= 0, "0 or more"),
                  ("--lr", config.lr, config.lr is None or 0 < config.lr < math.inf, "positive and finite"), *extra])


def prepare_model(model, device, compile=False, sync_bn=False):
    """`model` on `device` with the speed options: BatchNorm synchronised across processes
    (--sync-bn, under torchrun), channels-last where it is faster, and each direct child compiled
    (nn.Module.compile keeps the parameter names, so checkpoints and encoder.pt do not change)."""
    if sync_bn and distributed.active():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if speedups.use_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    if compile:
        speedups.compile_children(model)
    return model


def data_parallel_view(model, device):
    """What the training step calls under torchrun: a shallow copy of `model` whose direct children
    with trainable parameters are wrapped in DistributedDataParallel, so that gradients are averaged
    over processes during backward. One wrapper per child (a method's generator, discriminator,
    encoder, head) lets a step call them in any order and as often as it likes. `model` itself keeps
    its plain children: its state_dict, its encoder and its checkpoints are the same on any number of
    processes. Buffers are not broadcast (each process keeps BatchNorm statistics of its own share;
    the engine averages them at checkpoints). One process: `model` unchanged."""
    if not distributed.active():
        return model
    loose = [name for name, p in model.named_parameters(recurse=False) if p.requires_grad]
    if loose:
        raise UserError(f"{type(model).__name__} has trainable parameters outside its sub-networks "
                        f"({', '.join(loose)}): they would not be averaged over processes; move them into one")
    owners = {}
    for name, child in model.named_children():
        for p in child.parameters():
            if p.requires_grad and owners.setdefault(id(p), name) != name:
                raise UserError(f"{type(model).__name__}: {owners[id(p)]} and {name} share parameters; make one "
                                f"of them a property, not a sub-network, to train data-parallel")
    device = torch.device(device)
    view = copy.copy(model)
    view.__dict__["_modules"] = {
        name: DistributedDataParallel(child, device_ids=[device] if device.type == "cuda" else None,
                                      broadcast_buffers=False)
        if any(p.requires_grad for p in child.parameters()) else child
        for name, child in model._modules.items()}
    return view


def take_step(optimizer, loss):
    """One optimisation step on `loss`: zero the gradients, backward (scaled by the optimiser's
    `grad_scaler` under fp16, which the engine attaches), step (skipped on an fp16 overflow).
    Under torchrun the gradients arrive averaged over processes (see data_parallel_view)."""
    optimizer.zero_grad(set_to_none=True)
    scaler = getattr(optimizer, "grad_scaler", None)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


class Engine:
    """Train `model` for `steps` steps with `optimizers` ({name: optimizer}) and `schedules`
    ({name: LR scheduler stepped once per step}), checkpointing to run_dir/checkpoint.pt every
    `checkpoint_every` steps and at the end. When that checkpoint is already there (an interrupted
    run), training continues from it and ends where an uninterrupted run would have. With run_dir
    None nothing is read or written (`bench speed` times steps that way).

    The main process alone writes files and shows progress; every process must call `run`."""

    def __init__(self, model, optimizers, run_dir, *, steps, batch_size, seed, device, precision="fp32",
                 checkpoint_every=100, schedules=None, desc="training", progress=True):
        self.model, self.optimizers, self.schedules = model, optimizers, schedules or {}
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self.device, self.precision, self.checkpoint_every, self.desc = device, precision, checkpoint_every, desc
        self.main = distributed.is_main() and self.run_dir is not None  # the process that writes
        self.progress = progress and self.main
        for optimizer in optimizers.values():
            optimizer.grad_scaler = speedups.grad_scaler(precision, device)
        self.step, self.elapsed = 0, 0.0
        self._metrics_file = self._events = None
        if self.run_dir is not None and (self.run_dir / CHECKPOINT).is_file():
            self._load(read_checkpoint(self.run_dir / CHECKPOINT, device))
        elif distributed.rank() > 0:
            # The weights came from the same seed everywhere; dropout must differ between processes.
            torch.manual_seed(distributed.process_seed(seed, distributed.rank()))

    def log(self, record, section="train"):
        """Append `record` (a dict with "step") to metrics.jsonl, and its numbers to the TensorBoard
        events as <section>/<name> (main process only, while `run` runs). The training steps are
        "train"; a caller names its own records' section (pretraining's probe scores: "probe")."""
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(record) + "\n")
            self._metrics_file.flush()
            # The events' own wall times stand in for elapsed_s.
            self._events.scalars(section, record["step"], {name: value for name, value in record.items()
                                                           if name not in ("step", "elapsed_s")})

    def log_image(self, tag, picture, step):
        """Add `picture`, a (channels, height, width) tensor with values in [0, 1], to the
        TensorBoard events (main process only, while `run` runs)."""
        if self._events is not None:
            self._events.image(tag, picture, step)

    def run(self, train_step, batches_from, after_step=None):
        """Call `train_step(model, batch) -> {"loss": float, ...}` on the batches of
        `batches_from(start_step)` until `steps`, inside autocast, with `model` the data-parallel
        view. `after_step(step, metrics)` runs in the main process after every step, and once at the
        start of a fresh run with metrics None; its time is not training time. Returns the model."""
        self.model.train()
        trained = data_parallel_view(self.model, self.device)
        started = time.perf_counter() - self.elapsed
        session_start, session_first_step = time.perf_counter(), self.step

        def hook(metrics):
            nonlocal started
            if after_step is not None and self.main:
                hook_started = time.perf_counter()
                after_step(self.step, metrics)
                started += time.perf_counter() - hook_started

        metrics_file = open(self.run_dir / METRICS, "a") if self.main else contextlib.nullcontext()
        events = EventLog(self.run_dir, first_step=self.step + 1) if self.main else contextlib.nullcontext()
        with progress_bar(total=self.steps, initial=self.step, desc=self.desc, unit="step",
                          disable=not self.progress) as bar, metrics_file as self._metrics_file, \
                events as self._events, preemption.training_loop():
            if self.step == 0:
                hook(None)
            for batch in batches_from(self.step) if self.step < self.steps else ():
                metrics = self.train_one_step(train_step, trained, batch)
                if not all(math.isfinite(value) for value in metrics.values()):
                    kept = (f"; the last good checkpoint is kept in {self.run_dir / CHECKPOINT}"
                            if self.run_dir is not None and (self.run_dir / CHECKPOINT).is_file() else "")
                    raise UserError(f"{self.desc}: loss became non-finite at step {self.step + 1} ({metrics})"
                                    f"{kept}; try a lower --lr")
                # The rates this step used, before the schedules move on (first parameter group: the
                # suite's optimisers have one).
                rates = {name: optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}
                for schedule in self.schedules.values():
                    schedule.step()
                self.step += 1
                self.elapsed = time.perf_counter() - started
                if self.main:
                    self.log({"step": self.step, **metrics, "elapsed_s": round(self.elapsed, 3)})
                    self._events.scalars("lr", self.step, rates)
                    rate = (self.step - session_first_step) * self.batch_size / (time.perf_counter() - session_start)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{rate:.1f}", refresh=False)
                    bar.update(1)
                hook(metrics)
                preempted = preemption.requested()
                if self.step % self.checkpoint_every == 0 or self.step == self.steps or preempted:
                    self._checkpoint()
                if preempted:
                    preemption.hand_over()  # the job is requeued and resumes from this checkpoint
                if self.step >= self.steps:
                    break
        self._metrics_file = self._events = None
        distributed.average_buffers(self.model)  # without --sync-bn each process kept its own statistics
        return self.model

    def train_one_step(self, train_step, trained, batch):
        """`train_step(trained, batch)` in the run's precision, its metrics averaged over processes
        (each process checks the global batch's mean, so all stop together on a non-finite loss).
        No bookkeeping: `run` counts the step; `bench speed` times this alone."""
        # Optimiser steps happen inside the step, hence no autocast weight cache (see speedups).
        with speedups.autocast(self.precision, self.device, weight_cache=False):
            metrics = train_step(trained, batch)
        return distributed.average_metrics(metrics)

    def _checkpoint(self):
        # Collective parts first (every process calls this), then the main process writes.
        distributed.average_buffers(self.model)
        rng = distributed.all_gather_objects(_rng_state(self.device))
        if self.run_dir is None:
            return
        if self.main:
            self._events.flush()  # the events of the steps a resume keeps are on disk with them
            state = {"model": self.model.state_dict(), "step": self.step, "elapsed": self.elapsed,
                     "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                     "schedules": {n: s.state_dict() for n, s in self.schedules.items()},
                     "grad_scalers": {n: o.grad_scaler.state_dict() for n, o in self.optimizers.items()
                                      if o.grad_scaler is not None},
                     "rng_by_process": rng}
            save_torch(formats.stamped("checkpoint", state), self.run_dir / CHECKPOINT)

    def _load(self, state):
        self.model.load_state_dict(state["model"])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            if optimizer.grad_scaler is not None and name in state["grad_scalers"]:
                optimizer.grad_scaler.load_state_dict(state["grad_scalers"][name])
        for name, schedule in self.schedules.items():
            schedule.load_state_dict(state["schedules"][name])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self._restore_rng(state["rng_by_process"])
        if self.main:
            _truncate_metrics(self.run_dir / METRICS, self.step)

    def _restore_rng(self, saved):
        processes, rank = distributed.world_size(), distributed.rank()
        if len(saved) != processes:
            distributed.warn_main(f"resuming with {processes} process(es) a run checkpointed with {len(saved)}: "
                                  f"the batches are the same, the dropout draws are not")
        if rank < len(saved):
            torch.set_rng_state(saved[rank]["torch"].cpu())  # map_location may have moved it
            if saved[rank]["cuda"] is not None and torch.device(self.device).type == "cuda":
                torch.cuda.set_rng_state(saved[rank]["cuda"].cpu(), self.device)
        else:
            torch.manual_seed(distributed.process_seed(self.seed, rank) + self.step)


RESUME_HINT = "; delete it or start without --resume"


def read_checkpoint(path, device="cpu", mmap=False, hint=RESUME_HINT):
    """A checkpoint.pt the engine wrote: {"model": state_dict, "optimizers", "schedules",
    "grad_scalers", "step", "elapsed", "rng_by_process"}. mmap: read tensors only when used.
    A file that is not one is a UserError naming it, ending with `hint`."""
    state = read_torch(path, hint, map_location=device, mmap=mmap)
    if not isinstance(state, dict) or not ("model" in state or "method" in state):
        raise UserError(f"{path}: not a checkpoint of this suite (it holds no model weights){hint}")
    return formats.upgrade("checkpoint", state, path, {1: _from_version_1})


def _from_version_1(state):
    """Checkpoints from before versions, in the version-2 layout: pretraining's ("method",
    "torch_rng") and fine-tuning's ("model", "optimizer", "schedule", "scaler", RNG tensors, no
    "elapsed") become one layout."""
    state = {"schedules": {}, "grad_scalers": {}, "elapsed": 0.0, **state}
    if "method" in state:
        state["model"] = state.pop("method")
    for old, new in (("optimizer", "optimizers"), ("schedule", "schedules"), ("scaler", "grad_scalers")):
        if old in state:
            state[new] = {"sgd": state.pop(old)}
    rng = state.get("rng_by_process") or [state.get("torch_rng")]
    state["rng_by_process"] = [entry if isinstance(entry, dict) else {"torch": entry, "cuda": None} for entry in rng]
    return state


def _rng_state(device):
    """The generators dropout and other in-step draws use: torch's CPU one and the device's."""
    cuda = torch.device(device).type == "cuda"
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}


def _truncate_metrics(path, step):
    """Drop metric lines past the checkpoint: those steps run again after a resume."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))
