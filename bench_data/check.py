"""Checks of a data root's files before anything trains on them. A VOC root: the files each split
needs (and that it lists some), boxes against their image, and mask class ids, modes and sizes. A
class-folder root (<split>/<class>/<image>): the same classes in every split. Both: images of more
pixels than bench_data.pixels.MAX_PIXELS.

Problems are reported, never repaired (no box is clipped): under the --bad-annotations policy a
run stops naming the first problem ("error") or leaves the images with problems out of their
split with a warning ("skip"); `bench data check ROOT` lists every problem of a root.
Unreadable JPEGs are --bad-images' business (bench_data/pixels.py), so they are not reported here.
"""
import csv
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from PIL import Image

from bench_runtime.errors import UserError
from bench_runtime.options import option
from bench_runtime.runfiles import write_atomically
from .images import VOC_CLASSES, class_folders, class_images, find_voc_dir, is_voc_root, read_split
from .pixels import TOO_LARGE, ImageTooLarge, open_image
from .voc import VOCDetection, VOCSegmentation, mask_misfit, parse_annotation

BAD_ANNOTATION_POLICIES = ("error", "skip")
BAD_ANNOTATIONS_HELP = ("an image whose files are wrong (a box outside the image, inverted or empty; a mask class "
                        "id out of range; a mask or annotation size that differs from the image; a file its split "
                        "lists that is missing): stop the run naming it (error), or leave those images out with a "
                        "warning (skip); `bench data check ROOT` lists them all")
VOID = 255  # the mask value of unlabelled pixels
FILE_NOUNS = {".jpg": "image", ".xml": "annotation", ".png": "mask"}
KIND_NOUNS = {"too-large": "image", "empty-split": "split file", "missing-class": "class folder",
              "empty-class": "class folder"}  # kinds whose file's suffix does not say what it is


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the files of image `image_id`: `file` is the file at fault (the missing
    one, for a missing file) and `kind` a short tag such as box-outside or mask-class."""
    file: str
    kind: str
    detail: str
    image_id: str

    def __str__(self):
        return f"{KIND_NOUNS.get(self.kind) or FILE_NOUNS[Path(self.file).suffix]} {self.file}: {self.detail}"


def annotation_problems(voc_dir, ids, needs, listed_in):
    """The problems of images `ids` of the VOC<year> folder `voc_dir`, in what a task reads of them:
    `needs` holds "image" (the JPEG), "annotation" (the XML and its boxes) and/or "masks" (the class
    and object PNGs). `listed_in` names the split file the ids come from, for missing files."""
    voc_dir = Path(voc_dir)
    problems = []
    for image_id in ids:
        image = voc_dir / "JPEGImages" / f"{image_id}.jpg"
        if "image" in needs and not image.is_file():
            problems.append(Problem(str(image), "missing-image", f"missing, though {listed_in} lists it", image_id))
        try:
            image_size = _image_size(image)
        except ImageTooLarge:
            problems.append(Problem(str(image), "too-large", TOO_LARGE, image_id))
            image_size = None
        if "annotation" in needs:
            problems += _annotation_problems(voc_dir / "Annotations" / f"{image_id}.xml", image_id, image_size,
                                             listed_in)
        if "masks" in needs:
            for folder in ("SegmentationClass", "SegmentationObject"):
                problems += _mask_problems(voc_dir / folder / f"{image_id}.png", image_id, image_size, listed_in)
    return problems


def _image_size(path):
    """(width, height) from the image's header; None when the file is missing or unreadable
    (--bad-images' business), an ImageTooLarge when it has too many pixels."""
    try:
        with open_image(path) as image:
            return image.size
    except ImageTooLarge:
        raise
    except UserError:
        return None


def _annotation_problems(path, image_id, image_size, listed_in):
    if not path.is_file():
        return [Problem(str(path), "missing-annotation", f"missing, though {listed_in} lists it", image_id)]
    try:
        annotation = parse_annotation(path)
    except UserError as error:
        return [Problem(str(path), "bad-annotation", str(error).replace(f" {path}", ""), image_id)]
    problems = []

    def found(kind, detail):
        problems.append(Problem(str(path), kind, detail, image_id))

    width, height = annotation["width"], annotation["height"]
    if image_size is not None and image_size != (width, height):
        found("size-mismatch", f"gives the size {width}x{height} but the image is {image_size[0]}x{image_size[1]}")
    for number, obj in enumerate(annotation["objects"], 1):
        if obj["name"] not in VOC_CLASSES:
            found("unknown-class", f"object {number} is a {obj['name']!r}, not one of the 20 VOC classes")
        x1, y1, x2, y2 = obj["box"]
        # The file's own numbers (1-based, inclusive), which is what a user edits.
        box = (f"object {number} ({obj['name']}): box xmin {x1 + 1:g}, ymin {y1 + 1:g}, xmax {x2:g}, "
               f"ymax {y2:g}")
        if not all(map(math.isfinite, obj["box"])):  # NaN passes every comparison below
            found("nonfinite-box", f"{box} has a coordinate that is not a finite number")
            continue
        if x2 < x1 or y2 < y1:
            found("inverted-box", f"{box} is inverted (xmin after xmax or ymin after ymax)")
        elif x2 == x1 or y2 == y1:
            found("empty-box", f"{box} has zero width or height")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            found("box-outside", f"{box} reaches outside the {width}x{height} image")
    return problems


def _mask_problems(path, image_id, image_size, listed_in):
    if not path.is_file():
        return [Problem(str(path), "missing-mask", f"missing, though {listed_in} lists it", image_id)]
    problems = []
    try:
        with Image.open(path) as mask:
            misfit = mask_misfit(mask, image_size or mask.size)  # no size to compare with: only the mode
            if misfit:
                problems.append(Problem(str(path), *misfit, image_id))
            # Object masks hold instance ids, which have no fixed range.
            if path.parent.name == "SegmentationClass" and mask.mode in ("P", "L"):
                counts = mask.histogram()  # one count per index value
                wrong = [value for value in range(len(VOC_CLASSES) + 1, VOID) if counts[value]]
                if wrong:
                    problems.append(Problem(str(path), "mask-class",
                                            f"has class id(s) {', '.join(map(str, wrong[:5]))}"
                                            f"{' ...' if len(wrong) > 5 else ''} outside 0..{len(VOC_CLASSES)} "
                                            f"and {VOID} (void)", image_id))
    except (OSError, ValueError) as error:
        problems.append(Problem(str(path), "bad-mask", f"cannot be read: {error}", image_id))
    return problems


def refusal(problems, root, hint=""):
    """The one-line error that stops a run on the first of `problems` of data root `root`."""
    return UserError(f"{problems[0]} ({len(problems) - 1} more problem(s); see `bench data check {root}`{hint})")


def ids_to_leave_out(problems, policy, what, root):
    """The ids of the images with `problems` in `what` (a split, named in messages) under the
    --bad-annotations policy: "error" stops at the first problem with one line that counts the
    rest; "skip" returns every image with a problem, with one warning that counts them."""
    if policy not in BAD_ANNOTATION_POLICIES:
        raise UserError(f"--bad-annotations must be one of {', '.join(BAD_ANNOTATION_POLICIES)}, got {policy!r}")
    if not problems:
        return set()
    if policy == "error":
        raise refusal(problems, root, ", or pass --bad-annotations skip")
    bad = {problem.image_id for problem in problems}
    print(f"warning: skipping {len(bad)} image(s) of {what} with annotation problems, first: {problems[0]}",
          file=sys.stderr)
    return bad


def checked_dataset(dataset_class, root, split, year, policy):
    """`dataset_class(root, split, year)`, a VOC dataset of bench_data/voc.py, once what it reads of each
    image of the split (its NEEDS) has been checked under the --bad-annotations `policy`."""
    voc_dir = find_voc_dir(root, year)
    ids = read_split(voc_dir, split, dataset_class.IMAGE_SETS)
    split_file = Path("ImageSets") / dataset_class.IMAGE_SETS / f"{split}.txt"
    if not ids:
        raise UserError(f"split file {voc_dir / split_file}: lists no images")
    what = f"{voc_dir.name} {split}"
    leave_out = ids_to_leave_out(annotation_problems(voc_dir, ids, dataset_class.NEEDS, split_file),
                                 policy, what, root)
    if ids and len(leave_out) == len(ids):
        raise UserError(f"every image of {what} has annotation problems; see `bench data check {root}`")
    return dataset_class(root, split, year, leave_out=leave_out)


@dataclass
class DataCheckConfig:
    """list what is wrong with a VOC root's annotations and masks, or a class-folder root's classes

    Check every split of a VOC root: the files each split lists (JPEG; annotation for ImageSets/Main,
    class and object masks for ImageSets/Segmentation) and that it lists any, boxes outside their
    image, inverted, empty or not finite, mask class ids outside 0..20 and 255, mask modes and sizes,
    and annotation sizes against the JPEG. Of a class-folder root (<split>/<class>/<image>): a class
    one split has and another lacks, and empty class folders. Of both: images over PIL's pixel limit.
    Prints one line per problem (file, kind, detail) and a summary; exits 0 when clean, 1 when there
    are problems. `bench transfer` runs the same check on its splits (--bad-annotations)."""
    root: str = option("", "a VOC root (the folder holding VOCdevkit/, VOCdevkit/ or VOC<year>/) or a class-folder "
                       "root (<split>/<class>/<image>)", flags=("ROOT",))
    year: str | None = option(None, "check only this VOC year (default: every year under ROOT)")
    out: str | None = option(None, "also write the problems to this CSV file")


def check_root(config):
    """`bench data check`: print the problems of config.root (and write them to config.out); the
    exit status: 1 when there are problems, so that scripts can tell a clean root."""
    if config.out and Path(config.out).is_dir():
        raise UserError(f"--out {config.out} is a folder; name the CSV file to write, e.g. "
                        f"{Path(config.out) / 'problems.csv'}")
    if is_class_folder_root(config.root):
        problems, checked = class_folder_root_problems(config.root)
    else:
        problems, checked = root_problems(config.root, config.year)
    for problem in problems:
        print(f"{problem.file}  {problem.kind}  {problem.detail}")
    if config.out:
        write_problems(problems, config.out)
    print(summary(problems, checked))
    return 1 if problems else 0


def voc_dirs(root, year=None):
    """The VOC<year> folders of a data root as find_voc_dir reads it: that of `year`, else every year."""
    newest = find_voc_dir(root, year)
    if year is not None or newest == Path(root):
        return [newest]
    return sorted(p for p in newest.parent.glob("VOC*") if p.is_dir() and p.name[3:].isdigit())


def root_problems(root, year=None):
    """Every problem of every split of a VOC root (of one year, with `year`). The ids of the
    ImageSets/Main splits need images and annotations, as detection reads them; those of
    ImageSets/Segmentation images and masks. Each id is checked once per image set, its missing
    files named with the first split file (by name) that lists it.
    Returns (problems, {year folder name: images checked})."""
    problems, checked = [], {}
    for voc_dir in voc_dirs(root, year):
        all_ids, any_split = set(), False
        for dataset_class in (VOCDetection, VOCSegmentation):
            seen = set()
            for split_file in split_files(voc_dir, dataset_class.IMAGE_SETS):
                listed = read_split(voc_dir, split_file.stem, dataset_class.IMAGE_SETS)
                if not listed:
                    problems.append(Problem(str(split_file), "empty-split", "lists no images", ""))
                ids = [i for i in listed if i not in seen]
                seen.update(ids)
                problems += annotation_problems(voc_dir, ids, dataset_class.NEEDS, split_file.relative_to(voc_dir))
                any_split = True
            all_ids |= seen
        if not any_split:
            raise UserError(f"{voc_dir} has no split files in ImageSets/Main or ImageSets/Segmentation to check")
        checked[voc_dir.name] = len(all_ids)
    return problems, checked


def is_class_folder_root(root):
    """True for a folder of split folders of class folders (<split>/<class>/) that is no VOC root."""
    root = Path(root)
    return root.is_dir() and not is_voc_root(root) and any(
        child.is_dir() for split in root.iterdir() if split.is_dir() for child in split.iterdir())


def class_folder_problems(root, splits=None):
    """What makes a probe on a class-folder root score wrongly: a class folder that one of `splits`
    (default: every folder of the root) lacks and another has (its images could never be predicted,
    or never be scored), and a class folder without images."""
    root = Path(root)
    splits = splits or sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = {split: class_folders(root / split) for split in splits}
    problems = []
    for split in splits:
        for name in sorted(set().union(*classes.values())):
            folder = root / split / name
            if name not in classes[split]:
                having = ", ".join(other for other in splits if name in classes[other])
                problems.append(Problem(str(folder), "missing-class", f"missing, though {having} has that class", ""))
            elif not class_images(folder):
                problems.append(Problem(str(folder), "empty-class", "holds no images", ""))
    return problems


def checked_class_folders(root, splits):
    """The class names of a class-folder root, once its `splits` have the same ones, each with
    images; else a one-line error naming the first class_folder_problems."""
    problems = class_folder_problems(root, splits)
    if problems:
        raise refusal(problems, root)
    return class_folders(Path(root) / splits[0])


def class_folder_root_problems(root):
    """Every problem of a class-folder root: class_folder_problems over all its splits, and images
    of too many pixels. Returns (problems, {split: images checked})."""
    root = Path(root)
    problems, checked = class_folder_problems(root), {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        paths = class_images(split_dir)
        checked[split_dir.name] = len(paths)
        for path in paths:
            try:
                _image_size(path)
            except ImageTooLarge:
                problems.append(Problem(str(path), "too-large", TOO_LARGE, path.stem))
    return problems, checked


def split_files(voc_dir, image_sets):
    """The split files of ImageSets/<image_sets>, by name, without Main's per-class label files
    (<class>_<split>.txt), which list their split's ids again."""
    return sorted(path for path in (Path(voc_dir) / "ImageSets" / image_sets).glob("*.txt")
                  if path.stem.partition("_")[0] not in VOC_CLASSES)


def summary(problems, checked):
    """One line: the years (or splits) and images checked, and how many problems in how many images."""
    years = ", ".join(f"{name} ({count} images)" for name, count in checked.items())
    if not problems:
        return f"checked {years}: no problems"
    images = {(Path(problem.file).parents[1], problem.image_id) for problem in problems if problem.image_id}
    return f"checked {years}: {len(problems)} problem(s) in {len(images)} image(s)"


def write_problems(problems, path):
    """`problems` as a CSV file with the columns file, kind, detail, image_id, written whole or not at all."""
    def write(tmp):
        with open(tmp, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=[field.name for field in fields(Problem)])
            writer.writeheader()
            writer.writerows(asdict(problem) for problem in problems)
    write_atomically(path, write)
