"""TensorBoard event files of a training run, in <run>/tensorboard/ beside metrics.jsonl, so that
`tensorboard --logdir runs/` shows every run under runs/, live. The training engine
(bench_runtime.engine) writes the metrics it logs, the learning rates and picture grids while a run
trains; `add_picture` adds what a run draws once it has finished (a transfer's predictions)."""
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .progress import warning

EVENTS_DIR = "tensorboard"


class EventLog:
    """The TensorBoard events of one training session in run_dir/tensorboard/; a context manager
    that closes the event file (a staged run must be complete before its folder is renamed).

    Every session writes a file of its own. A resumed one repeats the steps after its checkpoint,
    `first_step` on, which metrics.jsonl drops (bench_runtime.engine); its file hides them in the earlier
    files too (SummaryWriter's purge_step), so TensorBoard shows each step once.

    Events are an extra: when they cannot be written (a full disk, no tensorboard package), one
    warning says so and the run goes on without them."""

    def __init__(self, run_dir, first_step):
        self.folder = Path(run_dir) / EVENTS_DIR
        self._writer = None
        try:
            # Imported here, not at the top: it loads tensorboard, which only training needs.
            from torch.utils.tensorboard import SummaryWriter
            _quiet_writer_threads()
            self._writer = SummaryWriter(self.folder, purge_step=first_step, flush_secs=10)
        except (ImportError, OSError) as exc:
            self._give_up(exc)

    def scalars(self, section, step, values):
        """Each number of `values` ({name: value}) at `step`, tagged <section>/<name>."""
        def write(writer):
            for name, value in values.items():
                writer.add_scalar(f"{section}/{name}", value, step)
        self._attempt(write)

    def image(self, tag, picture, step):
        """A (channels, height, width) float tensor with values in [0, 1] (clipped) at `step`."""
        self._attempt(lambda writer: writer.add_image(tag, picture, step, dataformats="CHW"))

    def flush(self):
        """Put every event so far on disk (before a checkpoint: a killed run resumes from there)."""
        self._attempt(lambda writer: writer.flush())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._attempt(lambda writer: writer.close())
        self._writer = None

    def _attempt(self, write):
        if self._writer is None:
            return
        try:
            write(self._writer)
        except OSError as exc:  # the writer thread's error comes back on the next call
            self._give_up(exc)

    def _give_up(self, exc):
        warning(f"cannot write TensorBoard events in {self.folder} ({exc}); the run goes on without them")
        self._writer = None  # its thread has stopped; its events so far stay readable


def add_picture(run_dir, tag, png, step):
    """The picture a finished run saved as `png`, in its TensorBoard events at `step` (its last)."""
    with Image.open(png) as opened:
        picture = torch.from_numpy(np.array(opened.convert("RGB"))).permute(2, 0, 1).float() / 255
    with EventLog(run_dir, first_step=step + 1) as events:  # purges nothing: every earlier step is <= step
        events.image(tag, picture, step)


def _quiet_writer_threads():
    """Leave the OSError that ends a tensorboard writer thread out of Python's report of unhandled
    thread errors: the writer raises it again in the training thread, where it becomes
    EventLog's one warning instead of a traceback besides."""
    report = threading.excepthook
    if getattr(report, "quiet_writer_threads", False):
        return

    def hook(args):
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            report(args)
    hook.quiet_writer_threads = True
    threading.excepthook = hook
