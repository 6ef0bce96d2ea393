"""Run folders: claiming them safely and writing their files atomically."""
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .errors import UserError
from .options import option
from .progress import warning


def cache_dir():
    """Where generated data (the toy VOC set, detection proposals) is kept between runs."""
    return Path(os.environ.get("BENCH_CACHE_DIR", Path.home() / ".cache" / "context-encoder-bench"))


@dataclass
class RunFolder:
    """Where a run is written, and what happens to one that is there."""
    out: str | None = option(None, "run folder (default: a name under runs/ made of the run's settings)")
    resume: bool = option(False, "continue the interrupted run in --out from its checkpoint (with its saved "
                          "settings)")
    overwrite: bool = option(False, "replace an existing run folder; it is kept until the new run is complete")

    def check(self):
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        return self


def check_out_path(out):
    """A one-line error when `out` cannot be made because a folder on its way is a file."""
    for folder in Path(out).absolute().parents:
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--out {out}: {folder} is a file, not a folder")
            return


def check_new_run_dir(out, overwrite=False):
    """Refuse a non-empty `out` unless overwriting; changes nothing on disk."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"run folder {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"run folder {out} already exists; pass --resume to continue it "
                        f"or --overwrite to replace it")
    return out


def create_run_dir(out, overwrite=False):
    """Make `out` empty and ready. Call it only once the run's inputs are validated, so a
    mistyped option never costs the results that --overwrite would replace."""
    out = check_new_run_dir(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def lock_path(out):
    """The lock file of run folder `out`: beside it, since the folder itself is replaced."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


@contextmanager
def run_lock(out):
    """Hold `out`'s lock while the block writes it: a second writer of the same folder stops with
    one line naming the first, instead of mixing two runs' files. The lock file is created with
    O_EXCL and holds the writer's pid and host; a lock whose process is gone (same host) is taken
    over with a warning. Under torchrun the main process alone takes it."""
    if not distributed.is_main():
        yield
        return
    path, me = lock_path(out), {"pid": os.getpid(), "host": socket.gethostname()}
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if attempt == 0 and _is_stale(holder):
                warning(f"taking over the lock of {out} left by a run that is gone ({path}: {holder or 'unreadable'})")
                path.unlink(missing_ok=True)
                continue
            raise UserError(f"{out} is being written by another run (pid {holder.get('pid')} on "
                            f"{holder.get('host')}); wait for it or choose another --out (a lock left by "
                            f"a crashed run on another machine: delete {path})") from None
        with os.fdopen(descriptor, "w") as file:
            json.dump(me, file)
        break
    try:
        yield
    finally:
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)


def _lock_holder(path):
    try:
        holder = json.loads(Path(path).read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_stale(holder):
    """A lock is stale when it names no process (unreadable: its writer died while writing it) or a
    process of this host that no longer exists."""
    if not isinstance(holder.get("pid"), int):
        return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


CHECKPOINT = "checkpoint.pt"  # what --resume continues from, in pretraining and transfer runs


def staging_dir(out):
    """Where a run that will become `out` is written until it succeeds."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def has_interrupted_run(out):
    """True when a staged run of `out` stopped after writing a checkpoint."""
    return (staging_dir(out) / CHECKPOINT).is_file()


@contextmanager
def staged_run_dir(out, overwrite=False, resume=False):
    """Yield a staging folder beside `out`; it becomes `out` only when the block succeeds, so a
    failed or interrupted run never replaces (or half-writes) earlier results.

    A run stopped after writing staging/checkpoint.pt leaves its staging folder behind, and
    `resume` continues in it; a new run refuses to discard it unless overwriting.

    Under torchrun every process enters the block with the same folder; the main process alone
    creates, removes and renames it, and the others wait for it at barriers."""
    out = check_new_run_dir(out, overwrite)
    with run_lock(out):
        yield from _staged(out, overwrite, resume)


def _staged(out, overwrite, resume):
    staging = staging_dir(out)
    interrupted = has_interrupted_run(out)
    if resume and not interrupted:
        raise UserError(f"nothing to resume: no interrupted run of {out} ({staging / 'checkpoint.pt'} "
                        f"does not exist)")
    if interrupted and not resume and not overwrite:
        raise UserError(f"an interrupted run of {out} is in {staging}; pass --resume to continue it "
                        f"or --overwrite to start again")
    main = distributed.is_main()
    distributed.barrier()  # every process has looked at the folders before they change
    if main:
        if not resume:
            shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    try:
        yield staging
    except BaseException:
        if main and not has_interrupted_run(out):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    distributed.barrier()  # no process reads the staging folder any more
    if main:
        replace_run_dir(staging, out)
    distributed.barrier()


def replace_run_dir(staging, out):
    """Put the finished run in `staging` at `out`, replacing what was there. The old folder is
    first renamed aside, so a crash between the two renames leaves both runs on disk."""
    out = Path(out)
    aside = out.with_name(f".{out.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    if out.exists():
        out.rename(aside)
    Path(staging).rename(out)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged_files(out):
    """Yield a staging folder inside `out` (a folder shared with other files, such as results/);
    the files written there are moved into `out` only when the block succeeds, so a failure
    (a full disk) leaves `out` as it was instead of new files beside old ones."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, out / path.name)  # a rename: needs no space, so it does not fail half-way
    except UserError as exc:  # named by where the file was going; nothing of this run reached `out`
        raise UserError(f"{str(exc).replace(str(staging), str(out))}; {out} is left as it was") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_resumable(out):
    out = Path(out)
    for name in ("config.json", CHECKPOINT):
        if not (out / name).is_file():
            raise UserError(f"nothing to resume: {out / name} does not exist")
    return out


def write_atomically(path, write):
    """`write(tmp)` to a temporary file beside `path`, then rename it over `path`: a reader (or a
    crash) never sees half a file. If writing fails (a full disk), the old `path` is kept."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise UserError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None


def save_torch(obj, path):
    buffer = io.BytesIO()  # serialise first, so a failed write is a plain OSError
    torch.save(obj, buffer)
    write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def save_json(obj, path):
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def environment_info():
    """Versions, and the thread count, that decide whether a number can be reproduced (CPU results
    change with the threads a run uses: they sum in another order)."""
    import numpy
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "code_version": code_version(), "threads": torch.get_num_threads()}


def code_version():
    """The git commit the code runs from, or "unknown" outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        commit = ""
    return commit or "unknown"
