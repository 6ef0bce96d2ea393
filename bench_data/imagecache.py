"""Decoded images kept as uint8 pixels in one memory-mapped file, so that each image is decoded
and resized once, not once per epoch, method and seed.

A cache holds the images of one list of files at one shorter side (`load_rgb(path, side)`, the
exact pixels the uncached path gives). It lives under the cache folder as
    images/<key>.u8    every image's (H, W, 3) pixels, one after the other
    images/<key>.json  the index: offset, height and width of each image
where <key> hashes the resolved paths, their sizes and modification times, and the side, so a
changed file or list makes a new cache. Both files are written under temporary names and renamed
into place, the index last: a build that is killed never leaves a cache that looks complete.
"""
import hashlib
import json
import os
import tempfile

import numpy as np

from bench_runtime.errors import UserError
from bench_runtime.progress import progress_bar
from bench_runtime.cache import read_image_index
from bench_runtime.runfiles import cache_dir
from .pixels import load_rgb

VERSION = 1


def cache_key(paths, side):
    digest = hashlib.sha256(f"v{VERSION} side {side}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc.strerror}") from None
        digest.update(f"{os.path.realpath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


class ImageCache:
    """Read-only pixels of `paths` at shorter side `side`: `cache[i]` is an (H, W, 3) uint8 view.

    Picklable without its pixels (DataLoader workers map the file themselves)."""

    def __init__(self, paths, side, folder=None, progress=True):
        self.folder = (folder or cache_dir()) / "images"
        key = cache_key(paths, side)
        self.data_path, self.index_path = self.folder / f"{key}.u8", self.folder / f"{key}.json"
        if not self.index_path.is_file():
            _build(paths, side, self.data_path, self.index_path, progress)
        os.utime(self.index_path)  # last used: what `bench cache clean --older-than` goes by
        try:
            index = read_image_index(self.index_path, self.data_path, len(paths))
        except UserError as problem:
            raise UserError(f"{problem}; delete it (bench cache clean) and it is rebuilt") from None
        self.offsets, self.shapes = index["offsets"], index["shapes"]
        self._pixels = None

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, index):
        if self._pixels is None:
            self._pixels = np.memmap(self.data_path, dtype=np.uint8, mode="r")
        height, width = self.shapes[index]
        start = self.offsets[index]
        return self._pixels[start:start + height * width * 3].reshape(height, width, 3)

    def __getstate__(self):
        return {**self.__dict__, "_pixels": None}


def _build(paths, side, data_path, index_path, progress):
    data_path.parent.mkdir(parents=True, exist_ok=True)
    offsets, shapes, offset = [], [], 0
    fd, tmp_data = tempfile.mkstemp(prefix=f".{data_path.name}-", dir=data_path.parent)
    tmp_index = None
    try:
        with os.fdopen(fd, "wb") as file:
            for path in progress_bar(paths, desc=f"caching images at {side} px", unit="img", disable=not progress):
                pixels = np.ascontiguousarray(np.asarray(load_rgb(path, side), dtype=np.uint8))
                file.write(pixels.tobytes())
                offsets.append(offset)
                shapes.append(pixels.shape[:2])
                offset += pixels.size
        fd, tmp_index = tempfile.mkstemp(prefix=f".{index_path.name}-", dir=index_path.parent)
        with os.fdopen(fd, "w") as file:
            json.dump({"version": VERSION, "side": side, "count": len(paths), "offsets": offsets,
                       "shapes": [list(map(int, s)) for s in shapes]}, file)
        os.replace(tmp_data, data_path)
        os.replace(tmp_index, index_path)  # last: the index marks the cache complete
    except OSError as exc:
        raise UserError(f"cannot write the image cache in {data_path.parent}: {exc.strerror or exc}; "
                        f"free some space or pass --no-image-cache") from None
    finally:
        for tmp in (tmp_data, tmp_index):
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
