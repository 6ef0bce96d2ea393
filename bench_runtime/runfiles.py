"""Run folders: claiming them safely, marking them as the suite's, and writing their files atomically."""
import errno
import importlib.metadata
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
    overwrite: bool = option(False, "replace an existing run folder (only one bench wrote); it is kept until the "
                          "new run is complete")

    def check(self):
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        return self


CHECKPOINT = "checkpoint.pt"  # what --resume continues from, in pretraining and transfer runs


def check_out_path(out):
    """A one-line error when `out` cannot be made because a folder on its way is a file."""
    for folder in Path(out).absolute().parents:
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--out {out}: {folder} is a file, not a folder")
            return


OUTPUT_MARKER = "bench-output.json"  # in every folder a command writes: what --overwrite may replace
OUTPUT_FORMAT = 1
# What a folder written before the marker holds, by kind: every pattern of one of the sets matches.
EARLIER_OUTPUTS = {
    "pretrain-run": (("config.json", "encoder.json"), ("config.json", "encoder.pt"), ("config.json", CHECKPOINT)),
    "transfer-run": (("config.json", "record.json"),),
    "eval-inpaint": (("grid.png", "*/record.json"),),
    "speed": (("speed.json", "speed.md"),),
    "suite": (("jobs.json",), ("table.json", "transfer/*/record.json")),
}


def package_version():
    """The installed version of the suite; "unknown" where it runs uninstalled."""
    try:
        return importlib.metadata.version("context-encoder-bench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def mark_output(folder, kind):
    """Write `folder`/bench-output.json: it says that bench wrote `folder` (a `kind` output, e.g.
    pretrain-run), which is what lets a later --overwrite replace it."""
    save_json({"kind": kind, "format": OUTPUT_FORMAT, "bench_version": package_version()},
              Path(folder) / OUTPUT_MARKER)


def output_kind(folder):
    """The kind of bench output `folder` is, or None when bench did not write it.

    Folders are marked (mark_output) since format 1. One written by an earlier version is known by
    what it holds (EARLIER_OUTPUTS): config.json with encoder.json, encoder.pt or checkpoint.pt (a
    pretraining run), config.json with record.json (a transfer run), grid.png with <row>/record.json
    (bench eval-inpaint), speed.json with speed.md (bench speed), jobs.json, or table.json with
    transfer/<run>/record.json (a suite). Nothing else counts: an earlier `bench inpaint` folder
    holds only PNGs, which cannot be told from a user's pictures."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and isinstance(marker.get("kind"), str):
        return marker["kind"]
    for kind, holdings in EARLIER_OUTPUTS.items():
        if any(all(next(folder.glob(pattern), None) for pattern in held) for held in holdings):
            return kind
    return None


def not_written_by_bench(out):
    """The error for a non-empty `out` that bench did not write: it names what is there."""
    entries = sorted(Path(out).iterdir())
    names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries[:3]]
    more = ", ..." if len(entries) > 3 else ""
    return UserError(f"{out} holds {len(entries)} item{'s' if len(entries) > 1 else ''} that bench did not write "
                     f"({', '.join(names)}{more}); choose another --out")


def check_apart_from_inputs(out, inputs=(), runs=()):
    """Refuse an `out` that is or holds one of the command's `inputs` (data folders, as pairs of
    option and path) or `runs` (run folders it reads): replacing it would delete them; and one that
    lies inside an input, which would add to the data (a run folder takes a sub-folder unchanged)."""
    where = Path(out).resolve()
    for (flag, path), is_run in [*((pair, False) for pair in inputs), *((pair, True) for pair in runs)]:
        if not path or not Path(path).exists():
            continue
        source = Path(path).resolve()
        relation = ("is" if where == source else "holds" if where in source.parents
                    else "is inside" if source in where.parents and not is_run else None)
        if relation:
            raise UserError(f"--out {out} {relation} {flag} {path}; choose an --out apart from the command's inputs")


def check_new_run_dir(out, overwrite=False, inputs=(), runs=()):
    """Refuse an `out` too close to the command's `inputs` and `runs` (check_apart_from_inputs), and
    a non-empty `out` unless bench wrote it and `overwrite` is given; changes nothing on disk."""
    out = Path(out)
    check_apart_from_inputs(out, inputs, runs)
    if out.exists() and not out.is_dir():
        raise UserError(f"run folder {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if output_kind(out) is None:
            raise not_written_by_bench(out)
        if not overwrite:
            raise UserError(f"run folder {out} already exists; pass --resume to continue it "
                            f"or --overwrite to replace it")
    return out


def check_output_of(out, kind, inputs=()):
    """Refuse an `out` that a command adding to its own folder (a suite continues in its folder)
    must not write into: one too close to its `inputs` (check_apart_from_inputs), or a non-empty
    one that is not a `kind` output."""
    out = Path(out)
    check_apart_from_inputs(out, inputs)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    found = output_kind(out) if out.exists() and any(out.iterdir()) else kind  # new or empty: becomes one
    if found is None:
        raise not_written_by_bench(out)
    if found != kind:
        raise UserError(f"--out {out} is a {found} folder, not a {kind} folder; choose another --out")
    return out


def create_run_dir(folder, kind):
    """Make `folder` an empty `kind` output (marked), deleting what is in it: call it only on a
    folder checked with check_new_run_dir under the run's lock, or on a staging folder, once the
    run's inputs are validated, so a mistyped option never costs the results --overwrite replaces."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    mark_output(folder, kind)
    return folder


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_lock(path, out, me)
    except OSError as exc:  # a folder that cannot be written (read-only, /proc): found before any work
        raise UserError(f"cannot write {out}: its lock file {path} cannot be made ({exc.strerror or exc}); "
                        f"choose another --out") from None
    try:
        yield
    finally:
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)


def _create_lock(path, out, me):
    """Create the lock file `path` holding `me`; one left by a process that is gone is taken over."""
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
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump(me, file)
        except OSError:
            path.unlink(missing_ok=True)  # an empty lock would read as a crashed writer's
            raise
        return


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


def staging_dir(out):
    """Where a run that will become `out` is written until it succeeds."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def has_interrupted_run(out):
    """True when a staged run of `out` stopped after writing a checkpoint."""
    return (staging_dir(out) / CHECKPOINT).is_file()


@contextmanager
def staged_run_dir(out, kind, overwrite=False, resume=False, inputs=(), runs=()):
    """Yield a staging folder beside `out`, marked as a `kind` output; it becomes `out` only when the
    block succeeds, so a failed or interrupted run never replaces (or half-writes) earlier results,
    and a full disk is one line that says so. `out` is checked first (check_new_run_dir, with the
    command's `inputs` and `runs`).

    A run stopped after writing staging/checkpoint.pt leaves its staging folder behind, and
    `resume` continues in it; a new run refuses to discard it unless overwriting.

    Under torchrun every process enters the block with the same folder; the main process alone
    creates, removes and renames it, and the others wait for it at barriers."""
    out = check_new_run_dir(out, overwrite, inputs, runs)
    with run_lock(out):
        yield from _staged(out, kind, overwrite, resume)


def _staged(out, kind, overwrite, resume):
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
    try:
        with _failures_named_for(out, staging, out.exists()):
            if main:
                if not resume:
                    shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True, exist_ok=True)
                mark_output(staging, kind)
            distributed.barrier()
            yield staging
    except BaseException:
        if main and not has_interrupted_run(out):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    distributed.barrier()  # no process reads the staging folder any more
    if main:
        replace_run_dir(staging, out)
    distributed.barrier()


# Errors that say a write failed for want of room or of a writable disk, whatever file they name.
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextmanager
def _failures_named_for(out, staging, existed):
    """A failure to write into `staging` (a full disk, a file size limit, a read-only folder) as one
    line naming `out`, which the failure leaves as it was (or, unless it `existed`, absent)."""
    kept = f"{out} is left as it was" if existed else "nothing was written"
    try:
        yield
    except UserError as exc:  # from write_atomically: named by where the file was going
        if str(staging) not in str(exc):
            raise
        raise UserError(f"{str(exc).replace(str(staging), str(out))}; {kept}") from None
    except OSError as exc:
        named = isinstance(exc.filename, str) and Path(staging).resolve() in Path(exc.filename).resolve().parents
        if exc.errno not in NO_ROOM and not named:
            raise
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; {kept}") from None


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
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; name a folder for the files")
    existed = out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with _failures_named_for(out, staging, existed):
            yield staging
            for path in sorted(staging.iterdir()):
                os.replace(path, out / path.name)  # a rename: needs no space, so it does not fail half-way
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not existed and not any(out.iterdir()):  # made for files that never came
            out.rmdir()


def check_resumable(out):
    out = Path(out)
    for name in ("config.json", CHECKPOINT):
        if not (out / name).is_file():
            raise UserError(f"nothing to resume: {out / name} does not exist")
    return out


def write_atomically(path, write):
    """`write(tmp)` to a temporary file beside `path` (in a folder made if missing), then rename it
    over `path`: a reader (or a crash) never sees half a file. If writing fails (a full disk, a
    read-only folder), the old `path` is kept and the error is one line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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
