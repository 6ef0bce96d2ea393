"""Run folders: claiming them safely and writing their files atomically."""
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from .errors import UserError


def prepare_run_dir(out, resume=False, overwrite=False):
    """Create `out` for a new run, or check it holds a run to resume; never clobber silently."""
    out = Path(out)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise UserError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"run folder {out} already exists; pass --resume to continue it "
                            f"or --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _replace_into(path, write):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_torch(obj, path):
    _replace_into(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj, path):
    _replace_into(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


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
