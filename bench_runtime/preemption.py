"""Preemption at a step boundary. A cluster job that is preempted or about to time out gets a
signal, and the launcher's handler (submitit's) requeues the job and exits at once, wherever the
training loop is. `defer` holds such a handler back while a training loop runs: the loop checks
`requested()` after each step, writes its checkpoint, and only then lets the handler requeue the
job (`hand_over`), so the requeued job resumes exactly from a whole step. Outside a training loop
the handler acts at once (the requeued job resumes from the last checkpoint)."""
import contextlib
import signal

import numpy as np

from . import distributed

_held = {}      # signal number -> the handler held back
_pending = []   # (signal number, frame) received inside a training loop
_in_loop = False


def defer(signums):
    """Hold back the current handlers of `signums` (those that have one) from now on."""
    for signum in signums:
        handler = signal.getsignal(signum)
        if callable(handler) and signum not in _held:
            _held[signum] = handler
            signal.signal(signum, _receive)


def _receive(signum, frame):
    if _in_loop:
        _pending.append((signum, frame))
    else:
        _held[signum](signum, frame)


@contextlib.contextmanager
def training_loop():
    """Mark a training loop: signals received inside it wait for `hand_over`."""
    global _in_loop
    _in_loop = True
    try:
        yield
    finally:
        _in_loop = False


def requested():
    """True in every process when any process of the run holds a deferred signal (so that all of
    them checkpoint at the same step). Without `defer` it costs nothing."""
    if not _held:
        return False
    if distributed.active():
        return distributed.all_reduce_sum(np.array([float(bool(_pending))]))[0] > 0
    return bool(_pending)


def hand_over():
    """Run the held-back handler of the first deferred signal (submitit's: requeue and exit)."""
    if _pending:
        signum, frame = _pending.pop(0)
        _held[signum](signum, frame)
