"""Where pretraining images come from: a VOC root's split, or any folder of images.

`transfer` reuses `find_voc_dir`, so a data root means the same thing everywhere.
"""
from pathlib import Path

import numpy as np

from bench_runtime.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def find_voc_dir(root, year=None):
    """Return the VOC<year> folder under `root`.

    `root` may be the folder holding VOCdevkit/, VOCdevkit/ itself, or a VOC<year>/ folder.
    With `year=None` the newest year present is taken.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"data root {root} does not exist")
    if root.name.startswith("VOC") and root.name[3:].isdigit():
        if year is not None and root.name != f"VOC{year}":
            raise UserError(f"data root {root} is not VOC{year}")
        return root
    devkit = root if root.name == "VOCdevkit" else root / "VOCdevkit"
    if not devkit.is_dir():
        raise UserError(f"no VOCdevkit folder under data root {root}")
    if year is not None:
        voc = devkit / f"VOC{year}"
        if not voc.is_dir():
            raise UserError(f"missing folder {voc}")
        return voc
    years = sorted(p for p in devkit.glob("VOC*") if p.is_dir() and p.name[3:].isdigit())
    if not years:
        raise UserError(f"no VOC<year> folder in {devkit}")
    return years[-1]


def read_split(voc_dir, split, image_sets="Main"):
    """Image ids listed in ImageSets/<image_sets>/<split>.txt."""
    path = Path(voc_dir) / "ImageSets" / image_sets / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        hint = f" (splits there: {', '.join(available)})" if available else ""
        raise UserError(f"missing split file {path}{hint}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_class_labels(voc_dir, split):
    """Image ids of ImageSets/Main/<split>.txt and their (N, 20) int8 labels from the per-class
    files <class>_<split>.txt: 1 present, -1 absent, 0 present only as difficult objects."""
    ids = read_split(voc_dir, split)
    row = {image_id: i for i, image_id in enumerate(ids)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), np.int8)
    seen = np.zeros_like(labels, dtype=bool)
    for c, name in enumerate(VOC_CLASSES):
        path = Path(voc_dir) / "ImageSets" / "Main" / f"{name}_{split}.txt"
        if not path.is_file():
            raise UserError(f"missing class label file {path}")
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in row:
                if len(fields) != 2 or fields[1] not in ("1", "-1", "0"):
                    raise UserError(f"malformed line {line!r} in {path}")
                labels[row[fields[0]], c] = int(fields[1])
                seen[row[fields[0]], c] = True
    if not seen.all():
        i, c = np.argwhere(~seen)[0]
        raise UserError(f"image {ids[i]} of split {split!r} has no label in "
                        f"{Path(voc_dir) / 'ImageSets' / 'Main' / f'{VOC_CLASSES[c]}_{split}.txt'}")
    return ids, labels


def is_voc_root(root):
    root = Path(root)
    return (root / "VOCdevkit").is_dir() or root.name == "VOCdevkit" or (
        root.name.startswith("VOC") and (root / "JPEGImages").is_dir())


def list_images(root, split="train", year=None):
    """Image paths for pretraining.

    A VOC root gives the JPEGImages of `split`; any other folder gives every image file
    below it (the split is then ignored), so ImageNet- or StreetView-style folders work too.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"data root {root} does not exist")
    if is_voc_root(root):
        voc = find_voc_dir(root, year)
        images = voc / "JPEGImages"
        if not images.is_dir():
            raise UserError(f"missing folder {images}")
        paths = [images / f"{image_id}.jpg" for image_id in read_split(voc, split)]
        if not paths:
            raise UserError(f"split file {voc / 'ImageSets' / 'Main' / f'{split}.txt'}: lists no images")
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{len(missing)} images of split {split!r} are missing, e.g. {missing[0]}")
    else:
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"no images found under {root}")
    return paths


def image_labels(paths, root, split="train", year=None):
    """Labels of pretraining images, for methods that learn from labels: (one label per path,
    class names).

    A VOC root gives each image its (20,) int8 vector from ImageSets/Main/<class>_<split>.txt
    (1 present, -1 absent, 0 present only as difficult objects). Any other folder is an image-folder
    data set, root/<class>/.../<image>, and gives each image the index of its class folder.
    """
    root = Path(root)
    if is_voc_root(root):
        ids, labels = read_class_labels(find_voc_dir(root, year), split)
        row = {image_id: i for i, image_id in enumerate(ids)}
        return [labels[row[Path(path).stem]] for path in paths], list(VOC_CLASSES)
    names = []
    for path in paths:
        parts = Path(path).relative_to(root).parts
        if len(parts) < 2:
            raise UserError(f"{path} is not inside a class folder of {root} (expected {root}/<class>/<image>)")
        names.append(parts[0])
    classes = sorted(set(names))
    if len(classes) < 2:
        raise UserError(f"{root} has {len(classes)} class folder(s); labelled pretraining needs at least 2")
    return [classes.index(name) for name in names], classes


def class_folders(split_dir):
    """Sorted class folder names of a split folder of a class-folder root (at least two)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} does not exist (a class-folder root holds <split>/<class>/<image>)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UserError(f"{split_dir} has {len(classes)} class folder(s); a probe needs at least 2")
    return classes


def class_images(class_dir):
    """The image files below a class folder, sorted."""
    return sorted(p for p in Path(class_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def voc_year(root, wanted):
    """`wanted` if the VOC root has that year, else the newest year it has."""
    try:
        return find_voc_dir(root, wanted).name[3:]
    except UserError:
        return find_voc_dir(root).name[3:]
