"""`bench cache list` and `bench cache clean`: sizes, ages, and deleting only what is old enough."""
import json
import os
import time

import numpy as np
from PIL import Image

from bench_data.imagecache import ImageCache
from helpers import bench

DAY = 86400


def age(path, days):
    """Set `path` (and everything under it) last used `days` ago."""
    stamp = time.time() - days * DAY
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (stamp, stamp))


# Seven 10 x 10 images, 2,100 bytes of pixels.
INDEX = json.dumps({"side": 74, "count": 7, "offsets": [300 * i for i in range(7)], "shapes": [[10, 10]] * 7})


def fake_cache(root):
    (root / "images").mkdir(parents=True)
    for key, size in (("fresh", 3000), ("stale", 5000)):
        (root / "images" / f"{key}.u8").write_bytes(b"\0" * size)
        (root / "images" / f"{key}.json").write_text(INDEX)
    (root / "proposals" / "VOC2007-abc" / "96").mkdir(parents=True)
    (root / "proposals" / "VOC2007-abc" / "96" / "1.npy").write_bytes(b"\0" * 2000)
    (root / "toy-voc-v1-n24").mkdir()
    (root / "toy-voc-v1-n24" / "toy_voc.json").write_text("{}")
    for path in (root / "images" / "stale.u8", root / "images" / "stale.json", root / "proposals"):
        age(path, 40)
    return root


def test_list_and_clean_older_than(tmp_path, monkeypatch, capsys):
    root = fake_cache(tmp_path / "cache")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(root))
    assert bench("cache", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cache folder: {root}" and len(lines) == 6
    assert "5.0 KB" in lines[1] and "images" in lines[1] and "stale" in lines[1] and "7 images at 74 px" in lines[1]
    assert lines[-1].lstrip().startswith("10.1 KB") and "in 4 entries" in lines[-1]  # 10,312 bytes

    assert bench("cache", "clean", "--older-than", 30) == 0
    assert capsys.readouterr().out.strip() == "removed 2 entries, 7.0 KB"  # 5,155 + 2,000 bytes
    assert sorted(p.name for p in (root / "images").iterdir()) == ["fresh.json", "fresh.u8"]
    assert not (root / "proposals" / "VOC2007-abc").exists() and (root / "toy-voc-v1-n24").is_dir()

    assert bench("cache", "clean") == 0  # everything
    assert capsys.readouterr().out.startswith("removed 2 entries")
    assert bench("cache", "clean", "--older-than", -1) == 2
    assert "--older-than" in capsys.readouterr().err


def test_list_flags_a_corrupt_image_cache(tmp_path, monkeypatch, capsys):
    root = fake_cache(tmp_path / "cache")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(root))
    (root / "images" / "fresh.u8").write_bytes(b"\0" * 100)  # a cut-short copy
    (root / "images" / "stale.json").write_text('{"side": 74')
    assert bench("cache", "list") == 0
    out, err = capsys.readouterr()
    lines = {line.split()[5]: line for line in out.splitlines()[1:-1]}
    assert lines["fresh"].endswith(f"CORRUPT: {root / 'images' / 'fresh.u8'}: truncated (100 of 2100 bytes)")
    assert f"CORRUPT: {root / 'images' / 'stale.json'}: not valid JSON" in lines["stale"]
    assert err.startswith("warning: 2 corrupt entries, first: ") and len(err.splitlines()) == 1


def test_using_an_image_cache_marks_it_used(tmp_path, monkeypatch):
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    paths = sorted(images.iterdir())
    cache = ImageCache(paths, 16, folder=tmp_path / "cache", progress=False)
    age(cache.index_path, 40)
    ImageCache(paths, 16, folder=tmp_path / "cache", progress=False)  # a later run reads it
    assert time.time() - cache.index_path.stat().st_mtime < 60
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    assert bench("cache", "clean", "--older-than", 30) == 0
    assert cache.index_path.is_file()
