"""Run identity: which runs repeat one experiment, and what separates those that do not.

A run's identity is a short hash of its settings, leaving out its seed and the settings that
cannot change a number it reports (each caller names those). Runs of one identity differ only
by seed, so `bench table` puts them in one row and their spread is seed spread; runs of two
identities never share a row, and the row names say in which settings they differ.
Pure functions on dicts of settings."""
import hashlib
import json
from pathlib import Path

LENGTH = 12  # hex digits: 48 bits, no collision in any table a person reads


def identity(settings):
    """The hash of `settings` (a JSON-able dict): the same for equal settings in any key order."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:LENGTH]


def data_name(path):
    """A data folder by its last two path parts ("imagenette/train"): two machines that keep one
    data set in different places give runs of one identity; None stays None."""
    if path is None or path == "":
        return None
    parts = Path(str(path)).resolve().parts
    return "/".join(parts[-2:])


def differing(settings_list):
    """The keys whose values are not the same in every dict of `settings_list` (a missing key
    counts as None), sorted."""
    keys = sorted(set().union(*settings_list)) if settings_list else []
    return [key for key in keys if len({json.dumps(s.get(key), sort_keys=True, default=str)
                                        for s in settings_list}) > 1]


def describe(settings, keys):
    """"key value, key value" of `settings` for `keys`: what a row name adds to tell rows apart."""
    return ", ".join(f"{key} {_shown(settings.get(key))}" for key in keys)


def _shown(value):
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_shown(v) for v in value)
    return str(value)
