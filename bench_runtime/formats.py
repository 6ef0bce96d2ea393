"""Format versions of the files the suite writes and reads back.

config.json, encoder.json, record.json and checkpoint.pt carry "format_version". A file written
before versions existed is version 1. A reader passes what it read through `upgrade`, with the
steps that bring each older version of that kind of file to the next one, so all knowledge of old
layouts sits in those steps; a file from a newer version of the suite is refused with one line."""
from .errors import UserError

KEY = "format_version"
# The version this code writes, per kind of file. 2: run identities (bench_runtime.identity).
CURRENT = {"config": 2, "encoder": 2, "record": 2, "checkpoint": 2}


def stamped(kind, content):
    """`content` (a dict) with the current version of `kind` files."""
    return {KEY: CURRENT[kind], **content}


def upgrade(kind, content, path, steps=None):
    """`content`, read from `path`, in today's layout: each step steps[v](content) takes version v
    to v + 1 (a missing step: nothing changed in that layout). A newer version is a UserError."""
    found = content.get(KEY, 1)
    if not isinstance(found, int) or found < 1:
        raise UserError(f"{path}: {KEY} {found!r} is not a version number")
    if found > CURRENT[kind]:
        raise UserError(f"{path}: written by a newer version of the suite ({kind} format {found}; this one "
                        f"reads up to {CURRENT[kind]}); update the suite")
    for version in range(found, CURRENT[kind]):
        content = (steps or {}).get(version, dict)(content)
    return {**content, KEY: CURRENT[kind]}
