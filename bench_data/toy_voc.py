"""A small synthetic PASCAL VOC, generated deterministically, for tests and the quick preset.

Each scene is a regular textured background (smooth stripes, a checkerboard or a gradient) with
1-3 objects on it. Every class has a fixed (shape, texture, hue) signature, so classes are
learnable, and the background is regular, so context predicts a hole. Objects are large (a side of
35-75% of the image's shorter side, as VOC's objects often are) so that FCN-32s and Fast R-CNN,
whose features have a stride of 16-32 px, can resolve them at 128 px; and the set uses the first
`classes` VOC classes (10 by default), so that fine-tuning learns them in a few hundred steps on a
CPU. The files follow the real VOC layout (docs/protocol.md, "VOC layout"), so everything that reads VOC
reads this set unchanged; classes that never occur score no AP and no IU (they are left out of the
means, not counted as zero).
"""
import colorsys
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench_runtime.device import seed_value
from bench_runtime.errors import UserError
from bench_runtime.options import at_least, option
from bench_runtime.progress import info
from bench_runtime.runfiles import cache_dir, staged_run_dir
from .images import VOC_CLASSES

DEFAULT_TOY = {"n_images": 200, "size": 128, "seed": 0, "classes": 10}  # the built-in data of `bench` commands
TOY_VOC_VERSION = 2  # part of the cache folder name: bump it when the generated data changes
YEARS = (2007, 2012)
SPLITS = ("train", "val", "trainval", "test")
TEXTURES = ("solid", "stripes", "dots", "checks")
OBJECTS_PER_IMAGE = (1, 3)  # inclusive
OBJECT_SIDE = (0.35, 0.75)  # fraction of the shorter image side


def _regular_polygon(n, radius=1.0, phase=-np.pi / 2):
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _rectangle(half_width, half_height):
    return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [half_width, half_height]


_STAR = _regular_polygon(10) * np.where(np.arange(10) % 2, 0.45, 1.0)[:, None]
_HALF = np.linspace(np.pi, 2 * np.pi, 25)  # the upper half of the unit circle (y points down)
# Each shape: polygons in unit coordinates ([-1, 1] spans the object's side), filled in turn with
# the given value (0 cuts a hole).
SHAPES = {
    "disc": [(_regular_polygon(48), 1)],
    "square": [(_rectangle(0.9, 0.9), 1)],
    "triangle": [(np.array([[0, -1], [1, 0.8], [-1, 0.8]]), 1)],
    "diamond": [(np.array([[0, -1], [1, 0], [0, 1], [-1, 0]]), 1)],
    "star": [(_STAR, 1)],
    "cross": [(_rectangle(0.36, 1), 1), (_rectangle(1, 0.36), 1)],
    "ring": [(_regular_polygon(48), 1), (_regular_polygon(48, 0.5), 0)],
    "hexagon": [(_regular_polygon(6, phase=0), 1)],
    "ellipse": [(_regular_polygon(48) * [1, 0.55], 1)],
    "half-disc": [(np.stack([np.cos(_HALF), np.sin(_HALF) + 0.5], axis=1), 1)],
}


def _rgb(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _signature(class_index):
    """(shape, texture, main colour, second colour) of a class; all 20 are distinct."""
    shape = list(SHAPES)[class_index % 10]
    texture = TEXTURES[class_index // 5]
    hue = (class_index * 7 % 20) / 20  # 7 is coprime to 20: distinct, well spread hues
    return shape, texture, _rgb(hue, 0.85, 0.95), _rgb(hue, 0.9, 0.4)


def voc_palette():
    """The standard PASCAL VOC colour map (256 RGB entries, flattened)."""
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((i >> (3 * bit + channel)) & 1) << (7 - bit)
        palette += rgb
    return palette


def _background(rng, h, w, size):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    a = xx * np.cos(theta) + yy * np.sin(theta)
    b = -xx * np.sin(theta) + yy * np.cos(theta)
    kind = rng.integers(3)
    if kind == 0:  # smooth stripes
        period = rng.uniform(0.12, 0.3) * size
        t = 0.5 + 0.5 * np.sin(2 * np.pi * a / period + rng.uniform(0, 2 * np.pi))
    elif kind == 1:  # (rotated) checkerboard
        cell = rng.uniform(0.1, 0.25) * size
        t = ((np.floor(a / cell) + np.floor(b / cell)) % 2).astype(np.float32)
    else:  # gradient
        t = (a - a.min()) / max(a.max() - a.min(), 1.0)
    c0 = _rgb(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.25, 0.5))
    c1 = _rgb(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.6, 0.95))
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _shape_mask(shape, h, w, cx, cy, side):
    mask = np.zeros((h, w), np.uint8)
    for polygon, value in SHAPES[shape]:
        points = np.round((polygon * side / 2 + [cx, cy]) * 16).astype(np.int32)  # shift=4: 1/16 px
        cv2.fillPoly(mask, [points], value, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _texture(texture, main, second, h, w, cx, cy, side):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v, period = xx - cx, yy - cy, max(4.0, side / 4)
    if texture == "solid":
        t = np.zeros((h, w), bool)
    elif texture == "stripes":
        t = np.floor((u + v) / period) % 2 == 1
    elif texture == "dots":
        t = (u % period - period / 2) ** 2 + (v % period - period / 2) ** 2 < (0.3 * period) ** 2
    else:  # checks
        t = (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    return np.where(t[..., None], second, main)


def _scene(rng, size, classes, objects_per_image=OBJECTS_PER_IMAGE, only_class=None):
    """One image: (uint8 RGB array, instance map with ids 1..K and 255 void, list of object dicts);
    its objects are of random classes, or all of `only_class`."""
    h, w = (int(rng.integers(round(0.8 * size), round(1.25 * size) + 1)) for _ in range(2))
    image = _background(rng, h, w, size)
    placed = []  # (class index, centre x, centre y, side, box)
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        for _attempt in range(20):
            cls = int(rng.integers(classes)) if only_class is None else only_class
            side = rng.uniform(*OBJECT_SIDE) * min(h, w)
            cx, cy = rng.uniform(0.3 * side, w - 0.3 * side), rng.uniform(0.3 * side, h - 0.3 * side)
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            if all(_iou(box, other[4]) <= 0.3 for other in placed):
                placed.append((cls, cx, cy, side, box))
                break
    masks = [_shape_mask(_signature(p[0])[0], h, w, *p[1:4]) for p in placed]
    # Later objects occlude earlier ones; drop those left less than 30% visible. Dropping an object
    # only uncovers others, so one pass decides it.
    instances = _instance_map(masks, h, w)
    keep = [k for k, m in enumerate(masks) if (instances == k + 1).sum() >= 0.3 * max(m.sum(), 1)]
    placed, masks = [placed[k] for k in keep], [masks[k] for k in keep]
    instances = _instance_map(masks, h, w)
    border = max(1, round(size / 96))  # void band: `border` px on each side of every object edge
    kernel = np.ones((2 * border + 1, 2 * border + 1), np.uint8)
    void = cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)
    objects = []
    for k, ((cls, cx, cy, side, _), mask) in enumerate(zip(placed, masks)):
        _, texture, main, second = _signature(cls)
        main, second = main * rng.uniform(0.85, 1.1), second * rng.uniform(0.85, 1.1)
        image[mask] = _texture(texture, main, second, h, w, cx, cy, side)[mask]
        ys, xs = np.nonzero(instances == k + 1)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        # very small objects, and those left with no pixel outside the void band, are always difficult
        small = min(x2 - x1 + 1, y2 - y1 + 1) < 0.12 * min(h, w) or void[ys, xs].all()
        objects.append({
            "name": VOC_CLASSES[cls], "box": (x1 + 1, y1 + 1, x2 + 1, y2 + 1),  # VOC: 1-based, inclusive
            "difficult": bool(rng.random() < 0.06 or small),  # about 10% in all
            "truncated": bool(x1 == 0 or y1 == 0 or x2 == w - 1 or y2 == h - 1)})
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    instances[void] = 255
    return image, instances, objects


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _instance_map(masks, h, w):
    instances = np.zeros((h, w), np.uint8)
    for k, mask in enumerate(masks):
        instances[mask] = k + 1
    return instances


_XML = ("<annotation>\n<folder>VOC{year}</folder>\n<filename>{image_id}.jpg</filename>\n"
        "<source><database>toy VOC (synthetic)</database></source>\n"
        "<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n"
        "<segmented>1</segmented>\n{objects}</annotation>\n")
_OBJECT_XML = ("<object><name>{name}</name><pose>Unspecified</pose><truncated>{truncated:d}</truncated>"
               "<difficult>{difficult:d}</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
               "<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>\n")


def _save_mask(array, path, palette):
    image = Image.fromarray(array)  # mode 'L'; putpalette turns it into 'P' with the same indices
    image.putpalette(palette)
    image.save(path)


def _write_year(voc, year, n_images, size, seed, classes):
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation",
                "SegmentationClass", "SegmentationObject"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    ids = [f"{i + 1:06d}" if year == 2007 else f"{year}_{i + 1:06d}" for i in range(n_images)]
    all_objects = {}
    for i, image_id in enumerate(ids):
        image, instances, objects = _scene(np.random.default_rng([seed, year, i + 1]), size, classes)
        h, w = instances.shape
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
        xml = _XML.format(year=year, image_id=image_id, w=w, h=h,
                          objects="".join(_OBJECT_XML.format(**o) for o in objects))
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
        lookup = np.full(256, 255, np.uint8)  # instance id -> class index; 255 stays void
        lookup[:len(objects) + 1] = [0] + [VOC_CLASSES.index(o["name"]) + 1 for o in objects]
        _save_mask(lookup[instances], voc / "SegmentationClass" / f"{image_id}.png", palette)
        _save_mask(instances, voc / "SegmentationObject" / f"{image_id}.png", palette)
        all_objects[image_id] = objects

    order = np.random.default_rng([seed, year, 0]).permutation(n_images)
    n_train, n_val = round(0.5 * n_images), round(0.25 * n_images)
    splits = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
              "trainval": order[:n_train + n_val], "test": order[n_train + n_val:]}
    counts = {}
    for split in SPLITS:
        split_ids = sorted(ids[k] for k in splits[split])
        lines = "".join(f"{image_id}\n" for image_id in split_ids)
        for folder in ("Main", "Segmentation"):
            (voc / "ImageSets" / folder / f"{split}.txt").write_text(lines)
        split_objects = [o for image_id in split_ids for o in all_objects[image_id]]
        for name in VOC_CLASSES:
            rows = []
            for image_id in split_ids:
                flags = [o["difficult"] for o in all_objects[image_id] if o["name"] == name]
                rows.append(f"{image_id} {-1 if not flags else 0 if all(flags) else 1:2d}\n")
            (voc / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("".join(rows))
        counts[split] = {
            "images": len(split_ids),
            "objects": {name: sum(o["name"] == name for o in split_objects) for name in VOC_CLASSES},
            "difficult": sum(o["difficult"] for o in split_objects)}
    return counts


def write_toy_voc(out_dir, n_images=200, size=128, seed=0, classes=10):
    """Write out_dir/VOCdevkit/VOC2007 and VOC2012 (n_images each, objects of the first `classes`
    VOC classes) and out_dir/toy_voc.json.

    Same arguments give byte-identical files. Returns out_dir, a data root for `find_voc_dir`.
    """
    if not 1 <= classes <= len(VOC_CLASSES):
        raise UserError(f"the toy set has 1 to {len(VOC_CLASSES)} classes, not {classes}")
    out_dir = Path(out_dir)
    summary = {"version": TOY_VOC_VERSION, "n_images": n_images, "size": size, "seed": seed,
               "classes": list(VOC_CLASSES[:classes]), "years": {}}
    for year in YEARS:
        voc = out_dir / "VOCdevkit" / f"VOC{year}"
        summary["years"][str(year)] = _write_year(voc, year, n_images, size, seed, classes)
    (out_dir / "toy_voc.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out_dir


@dataclass
class ToyVOCConfig:
    """write the synthetic toy VOCdevkit (VOC2007 + VOC2012)

    Writes OUT/VOCdevkit/VOC2007 and VOC2012 and OUT/toy_voc.json; the same options give the same bytes."""
    out: str = option("", "folder to write VOCdevkit/ into (must be new or empty)", required=True)
    images: int = option(DEFAULT_TOY["n_images"], "images per year", check=at_least(1))
    size: int = option(DEFAULT_TOY["size"], "nominal image side in px", check=at_least(1))
    seed: int = option(DEFAULT_TOY["seed"], "seed of the scenes", check=seed_value)
    classes: int = option(DEFAULT_TOY["classes"], "objects are drawn from the first N of VOC's 20 classes",
                          check=at_least(1))


def make_toy_voc(config):
    """`bench data toy`: write the set into config.out, which must be new or empty."""
    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new folder")
    with staged_run_dir(out, "toy-voc") as staging:  # a full disk leaves no half-written set
        write_toy_voc(staging, config.images, config.size, config.seed, config.classes)
    print(f"toy VOC written to {out} ({config.images} images per year, see toy_voc.json)")


def write_toy_class_folders(out_dir, per_class=(12, 6), size=64, seed=0, classes=4):
    """A class-folder root of toy scenes (the layout of ImageNet and imagenette): out_dir/train/<class>/
    and out_dir/val/<class>/ with per_class images each, one object of the folder's class in each
    image. Same arguments give identical files. Returns out_dir."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for cls in range(classes):
            folder = out_dir / split / VOC_CLASSES[cls]
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = _scene(rng, size, classes, objects_per_image=(1, 1), only_class=cls)[0]
                Image.fromarray(image).save(folder / f"{index:04d}.jpg", quality=90)
    return out_dir


def ensure_toy_voc(cache_dir, n_images=200, size=128, seed=0, classes=10):
    """The toy VOC root for these parameters under cache_dir, generated on first use.

    Generation goes to a temporary folder that is renamed into place when complete, so an
    interrupted run never leaves a half-written set behind that looks finished.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / f"toy-voc-v{TOY_VOC_VERSION}-n{n_images}-size{size}-c{classes}-seed{seed}"
    if root.is_dir():
        os.utime(root)  # last used: what `bench cache clean --older-than` goes by
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=cache_dir))
    try:
        write_toy_voc(tmp, n_images, size, seed, classes)
        os.rename(tmp, root)
    except OSError:
        if not root.is_dir():  # a concurrent run that finished first is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def data_root_or_toy(given):
    """The data root of a command given `given` (its --data-root; empty or None: none), as a string:
    `given`, else the built-in toy VOC set (DEFAULT_TOY), generated into the cache folder the first
    time. Every command that has a default data root takes it from here."""
    if given:
        return str(given)
    root = ensure_toy_voc(cache_dir(), **DEFAULT_TOY)
    info(f"no --data-root given: using the built-in toy VOC set at {root}")
    return str(root)
