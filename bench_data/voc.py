"""PASCAL VOC data: annotations, per-class labels, and Datasets for classification, detection and
segmentation.

torchvision's VOC datasets accept only the fixed split names (train/val/trainval/test) and the
fixed year layout; we need any split name and any VOC-layout root, so we read the layout ourselves.
Each Dataset takes `leave_out`, ids its split drops: the images bench_data/check.py found problems with,
under --bad-annotations skip.
"""
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from bench_runtime.errors import UserError
from .images import VOC_CLASSES, find_voc_dir, read_class_labels, read_split
from .pixels import load_rgb, readable_only


def parse_annotation(xml_path):
    """Read one Annotations/*.xml file.

    Returns {filename, width, height, objects}; each object is {name, box, difficult, truncated}.
    VOC stores boxes as 1-based inclusive pixel corners; `box` is converted to torchvision's
    0-based continuous (x1, y1, x2, y2) = (xmin - 1, ymin - 1, xmax, ymax), so a box covering
    pixels 1..10 of the file becomes (0.0, ..., 10.0, ...) and its width is x2 - x1.
    A missing `difficult` or `truncated` tag counts as 0.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
        size = root.find("size")
        objects = []
        for obj in root.iter("object"):
            bndbox = obj.find("bndbox")
            x1, y1, x2, y2 = (float(bndbox.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
            objects.append({
                "name": obj.find("name").text.strip(),
                "box": (x1 - 1, y1 - 1, x2, y2),
                "difficult": obj.findtext("difficult", "0").strip() == "1",
                "truncated": obj.findtext("truncated", "0").strip() == "1",
            })
        return {"filename": root.findtext("filename", "").strip(),
                "width": int(size.find("width").text), "height": int(size.find("height").text),
                "objects": objects}
    except FileNotFoundError:
        raise UserError(f"missing annotation file {xml_path}") from None
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise UserError(f"malformed annotation file {xml_path}: {e}") from None


def _check_files(voc, ids, split, folders):
    """Raise one UserError naming the first missing folder or file; folders is {name: suffix}."""
    for folder in folders:
        if not (voc / folder).is_dir():
            raise UserError(f"missing folder {voc / folder}")
    for folder, suffix in folders.items():
        paths = (voc / folder / f"{image_id}{suffix}" for image_id in ids)
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise UserError(f"{len(missing)} files of split {split!r} are missing, e.g. {missing[0]}")


def image_paths(dataset):
    """The JPEG files of a VOC dataset's images, in item order."""
    return [dataset.voc_dir / "JPEGImages" / f"{image_id}.jpg" for image_id in dataset.ids]


def drop_unreadable(dataset, policy, what):
    """Apply the --bad-images policy (see readable_only) to a VOC dataset, in place: with "skip",
    images that cannot be decoded leave every per-image field (dataset.PER_IMAGE)."""
    paths = image_paths(dataset)
    readable = set(readable_only(paths, policy, what))
    keep = [i for i, path in enumerate(paths) if path in readable]
    if len(keep) < len(paths):
        for name in dataset.PER_IMAGE:
            value = getattr(dataset, name)
            setattr(dataset, name, value[keep] if torch.is_tensor(value) else [value[i] for i in keep])
    return dataset


class VOCClassification(Dataset):
    """Item: (image, {labels: float (20,) 1 positive / 0 otherwise, difficult: bool (20,)}).

    `difficult` marks classes present only as difficult objects (label 0 in the VOC files); the
    standard evaluation ignores those entries. `transform` is applied to the PIL image only.
    """

    PER_IMAGE = ("ids", "labels", "difficult")
    IMAGE_SETS = "Main"  # where its split files are
    NEEDS = ("image",)  # what of each image bench_data/check.py checks for it

    def __init__(self, root, split, year=None, transform=None, leave_out=()):
        self.voc_dir = find_voc_dir(root, year)
        ids, labels = read_class_labels(self.voc_dir, split)
        keep = [i for i, image_id in enumerate(ids) if image_id not in leave_out]
        self.ids, labels = [ids[i] for i in keep], labels[keep]
        _check_files(self.voc_dir, self.ids, split, {"JPEGImages": ".jpg"})
        self.labels = torch.from_numpy(labels == 1).float()
        self.difficult = torch.from_numpy(labels == 0)
        self.transform = transform


    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image = load_rgb(self.voc_dir / "JPEGImages" / f"{self.ids[index]}.jpg")
        if self.transform is not None:
            image = self.transform(image)
        return image, {"labels": self.labels[index], "difficult": self.difficult[index]}


class VOCDetection(Dataset):
    """Item: (image, target) with target {boxes: float32 (K, 4) 0-based (x1, y1, x2, y2),
    labels: int64 (K,) 1..20 (0 is background, as torchvision detectors expect), difficult: bool (K,),
    image_id: str}.

    All annotations are parsed up front (`self.annotations`, in `parse_annotation`'s form), so a
    broken file fails at construction and evaluation can read the ground truth without images.
    `transform(image, target)` is applied jointly, since resizing or flipping must move the boxes.
    """

    PER_IMAGE = ("ids", "annotations")
    IMAGE_SETS = "Main"
    NEEDS = ("image", "annotation")

    def __init__(self, root, split, year=None, transform=None, leave_out=()):
        self.voc_dir = find_voc_dir(root, year)
        self.ids = [image_id for image_id in read_split(self.voc_dir, split) if image_id not in leave_out]
        _check_files(self.voc_dir, self.ids, split, {"JPEGImages": ".jpg", "Annotations": ".xml"})
        self.annotations = []
        for image_id in self.ids:
            path = self.voc_dir / "Annotations" / f"{image_id}.xml"
            self.annotations.append(parse_annotation(path))
            unknown = {o["name"] for o in self.annotations[-1]["objects"]} - set(VOC_CLASSES)
            if unknown:
                raise UserError(f"unknown class {sorted(unknown)[0]!r} in {path}")
        self.transform = transform


    def __len__(self):
        return len(self.ids)

    def target(self, index):
        """The target of item `index`, without loading its image."""
        objects = self.annotations[index]["objects"]
        labels = [VOC_CLASSES.index(o["name"]) + 1 for o in objects]
        return {
            "boxes": torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor([o["difficult"] for o in objects], dtype=torch.bool),
            "image_id": self.ids[index],
        }

    def __getitem__(self, index):
        image = load_rgb(self.voc_dir / "JPEGImages" / f"{self.ids[index]}.jpg")
        target = self.target(index)
        if self.transform is not None:
            return self.transform(image, target)
        return image, target


def mask_misfit(mask, image_size):
    """(kind, what is wrong) when an opened mask does not fit its image of `image_size`, else None:
    VOC masks are one channel of indices ('P' or 'L') the size of their image. Reads only the
    PNG header; the kinds are bench_data/check.py's."""
    if mask.mode not in ("P", "L"):
        return "mask-mode", f"has mode {mask.mode}; VOC masks are palette ('P') or grey ('L') images of class indices"
    if mask.size != image_size:
        return "mask-size", f"is {mask.size[0]}x{mask.size[1]} but its image is {image_size[0]}x{image_size[1]}"
    return None


def _load_mask(path, image_size):
    """A VOC mask PNG, decoded, if it fits its image (see mask_misfit)."""
    try:
        with Image.open(path) as mask:
            mask.load()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read mask {path}: {exc}") from None
    misfit = mask_misfit(mask, image_size)
    if misfit:
        raise UserError(f"mask {path} {misfit[1]}")
    return mask


class VOCSegmentation(Dataset):
    """Item: (image, class_mask, object_mask), the masks as PIL palette ('P') or 'L' images whose
    values are 0 background, 1..20 class (object mask: instance 1..K), 255 void.

    Ids come from ImageSets/Segmentation/<split>.txt. `transform(image, class_mask, object_mask)`
    is applied jointly (crops and flips must agree) and its result is returned as the item.
    """

    PER_IMAGE = ("ids",)
    IMAGE_SETS = "Segmentation"
    NEEDS = ("image", "masks")

    def __init__(self, root, split, year=None, transform=None, leave_out=()):
        self.voc_dir = find_voc_dir(root, year)
        self.ids = [image_id for image_id in read_split(self.voc_dir, split, self.IMAGE_SETS)
                    if image_id not in leave_out]
        _check_files(self.voc_dir, self.ids, split,
                     {"JPEGImages": ".jpg", "SegmentationClass": ".png", "SegmentationObject": ".png"})
        self.transform = transform


    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        image = load_rgb(self.voc_dir / "JPEGImages" / f"{image_id}.jpg")
        masks = [_load_mask(self.voc_dir / folder / f"{image_id}.png", image.size)
                 for folder in ("SegmentationClass", "SegmentationObject")]
        if self.transform is not None:
            return self.transform(image, *masks)
        return (image, *masks)
