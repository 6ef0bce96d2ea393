"""What the cache folder holds (`bench cache list`) and how to free it (`bench cache clean`).

Entries: each image set cached at one size (images/<key>.u8 with its .json index), each VOC year's
detection proposals (proposals/<VOC year>-<key>/), each generated toy VOC set (toy-voc-*/), and
anything else at the top of the folder. An entry's age is the time since it was last written or
used (the image cache and the toy set mark their use).
"""
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .options import at_least, option
from .readers import read_json
from .runfiles import cache_dir

# Top-level folders whose children are entries of their own; files that share a stem are one entry.
CONTAINERS = ("images", "proposals")


@dataclass
class CacheEntry:
    kind: str
    name: str
    paths: list
    bytes: int
    last_used: float  # seconds since the epoch
    about: str = ""   # e.g. "100 images at 74 px", from an image cache's index
    problem: str = ""  # what makes the entry unusable, e.g. a truncated image cache

    @property
    def age_days(self):
        return (time.time() - self.last_used) / 86400


def _size_and_time(path):
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    newest = max([s.st_mtime for s in stats] + [path.stat().st_mtime])
    return sum(s.st_size for s in stats), newest


def cache_entries(folder=None):
    """The entries of the cache folder (default: $BENCH_CACHE_DIR or ~/.cache/context-encoder-bench),
    largest first."""
    folder = Path(folder or cache_dir())
    if not folder.is_dir():
        return []
    groups = {}
    for item in sorted(folder.iterdir()):
        if item.name.startswith("."):  # a half-written entry of a running command
            continue
        if item.is_dir() and item.name in CONTAINERS:
            for child in sorted(item.iterdir()):
                if not child.name.startswith("."):
                    groups.setdefault((item.name, child.name.split(".")[0]), []).append(child)
        else:
            groups[("toy VOC set" if item.name.startswith("toy-voc") else "other", item.name)] = [item]
    entries = []
    for (kind, name), paths in groups.items():
        sizes, times = zip(*(_size_and_time(p) for p in paths))
        entries.append(CacheEntry(kind, name, paths, sum(sizes), max(times), *_about(kind, folder / kind, name)))
    return sorted(entries, key=lambda entry: -entry.bytes)


def _about(kind, folder, name):
    """(what an image cache holds, what is wrong with it) for the entry `name` of `folder`; ("", "")
    for other entries."""
    if kind != "images":
        return "", ""
    try:
        index = read_image_index(folder / f"{name}.json", folder / f"{name}.u8")
    except UserError as problem:
        return "", str(problem)
    return f"{index['count']} images at {index['side']} px", ""


def read_image_index(index_path, data_path, count=None):
    """The index of an image cache (bench_data/imagecache.py) with its "offsets" and "shapes" as arrays,
    once checked against its pixels file `data_path` (and the `count` of images it should hold);
    else a one-line error naming the file at fault."""
    index = read_json(index_path)
    try:
        offsets = np.asarray(index["offsets"], dtype=np.int64)
        shapes = np.asarray(index["shapes"], dtype=np.int64).reshape(len(offsets), 2)
        int(index["count"]), int(index["side"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{index_path}: not an image cache index (count, side, offsets and shapes)") from None
    expected = index["count"] if count is None else count
    if len(offsets) != expected:
        raise UserError(f"{index_path}: indexes {len(offsets)} images, not {expected}")
    needed = int(offsets[-1] + shapes[-1].prod() * 3) if len(offsets) else 0
    size = data_path.stat().st_size if data_path.is_file() else 0
    if size < needed:
        raise UserError(f"{data_path}: truncated ({size} of {needed} bytes)")
    return {**index, "offsets": offsets, "shapes": shapes}


@dataclass
class CacheListConfig:
    """every entry with its size and the days since it was last used"""


@dataclass
class CacheCleanConfig:
    """delete entries (all, or those unused for --older-than days)"""
    older_than: float = option(0.0, "delete only entries not used for this many days (0: everything)",
                               metavar="DAYS", check=at_least(0))


def list_cache(config=None):
    """`bench cache list`: print every entry, then the total."""
    entries = cache_entries()
    print(f"cache folder: {cache_dir()}")
    for entry in entries:
        about = f"CORRUPT: {entry.problem}" if entry.problem else entry.about
        print(f"{human_size(entry.bytes):>9}  {entry.age_days:6.1f} days  {entry.kind:<12} {entry.name}  {about}")
    print(f"{human_size(sum(e.bytes for e in entries)):>9}  in {len(entries)} entries "
          f"(`bench cache clean --older-than DAYS` frees them)")
    corrupt = [entry for entry in entries if entry.problem]
    if corrupt:
        print(f"warning: {len(corrupt)} corrupt entries, first: {corrupt[0].problem}; no run can use them "
              f"(a run stops on one); `bench cache clean` deletes every entry", file=sys.stderr)


def clean(config):
    """`bench cache clean`: delete the entries unused for config.older_than days and say what was freed."""
    removed = clean_cache(config.older_than)
    print(f"removed {len(removed)} entries, {human_size(sum(e.bytes for e in removed))}")


def clean_cache(older_than_days=0.0, folder=None):
    """Delete the entries not used for `older_than_days` days (0: all of them); return them."""
    removed = [entry for entry in cache_entries(folder) if entry.age_days >= older_than_days]
    for entry in removed:
        for path in entry.paths:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


def human_size(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
