"""Run folders: claiming them safely and writing their files atomically."""
import json
import os
import platform
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import UserError


def cache_dir():
    """Where generated data (the toy VOC set, detection proposals) is kept between runs."""
    return Path(os.environ.get("BENCH_CACHE_DIR", Path.home() / ".cache" / "context-encoder-bench"))


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


@contextmanager
def staged_run_dir(out, overwrite=False):
    """Yield a staging folder beside `out`; it becomes `out` only when the block succeeds, so a
    failed or interrupted run never replaces (or half-writes) earlier results."""
    out = check_new_run_dir(out, overwrite)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def check_resumable(out):
    out = Path(out)
    for name in ("config.json", "checkpoint.pt"):
        if not (out / name).is_file():
            raise UserError(f"nothing to resume: {out / name} does not exist")
    return out


def write_atomically(path, write):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_torch(obj, path):
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj, path):
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def environment_info():
    """Versions that decide whether a number can be reproduced."""
    import numpy
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "code_version": commit or "unknown"}
