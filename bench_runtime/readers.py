"""One way to read the files the suite writes (checkpoints, encoders, configs, records, jobs,
cache indexes): every failure becomes one UserError, `<file>: <what is wrong>`, with what to do
about it where there is something to do, never a traceback."""
import json
import pickle
import warnings
from pathlib import Path

import torch

from .errors import UserError

KINDS = {dict: "a JSON object", list: "a JSON list"}


def read_json(path, kind=dict, hint=""):
    """The JSON value in `path`, which must be of type `kind` (None: any). `hint` ends the message
    of every failure (e.g. "; delete it or start without --resume")."""
    path = Path(path)
    text = _read(path, lambda p: p.read_text(), hint)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}){hint}") from None
    if kind is not None and not isinstance(value, kind):
        raise UserError(f"{path}: holds a JSON {type(value).__name__}, not {KINDS.get(kind, kind.__name__)}{hint}")
    return value


def read_torch(path, hint="", **load_options):
    """What torch.save wrote to `path`, loaded with weights_only=True (tensors, numbers, strings
    and containers only: a file that holds other objects is refused, so loading it runs no code)."""
    path = Path(path)
    _read(path, lambda p: None, hint)
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickle protocols: the error below says it
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True, **load_options)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise UserError(f"{path}: refused, it holds objects other than tensors and numbers, which could run "
                        f"code when loaded ({first}){hint}") from None
    except Exception as exc:  # noqa: BLE001  a damaged file fails anywhere inside the unpickler
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: truncated or not a torch file ({reason}){hint}") from None


def _read(path, read, hint):
    """`read(path)`, with a missing, unreadable or empty file as a UserError."""
    try:
        if path.stat().st_size == 0:
            raise UserError(f"{path}: empty (0 bytes){hint}")
        return read(path)
    except FileNotFoundError:
        raise UserError(f"{path}: missing{hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc}){hint}") from None
