"""`bench data check` and --bad-annotations: each kind of broken VOC file is found and named, a
transfer stops on one before it trains (or leaves its image out when asked), and nothing is clipped."""
import csv
import shutil
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from bench_data.check import annotation_problems, root_problems
from bench_data.pixels import load_rgb
from helpers import bench, huge_png

FAST_TRANSFER = ["--image-size", 64, "--batch-size", 4, "--steps", 2, "--fc-width", 16, "--workers", 0]


def voc_dir(root, year=2012):
    return root / "VOCdevkit" / f"VOC{year}"


def first_id(voc, split="val", image_sets="Main"):
    return (voc / "ImageSets" / image_sets / f"{split}.txt").read_text().split()[0]


def edit_annotation(path, edit):
    """Rewrite an annotation after `edit(size, first bndbox)` has changed its elements."""
    tree = ET.parse(path)
    edit(tree.find("size"), tree.find("object/bndbox"))
    tree.write(path)


def set_tags(element, **values):
    for tag, value in values.items():
        element.find(tag).text = str(value)


def tag(element, name):
    return int(element.find(name).text)


def rewrite_mask(path, change):
    """Apply `change` to a mask's index array in place, keeping its palette."""
    with Image.open(path) as mask:
        indices, palette = np.array(mask), mask.getpalette()
    change(indices)
    changed = Image.fromarray(indices)
    changed.putpalette(palette)
    changed.save(path)


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
            if line.startswith(("error", "warning"))]


def test_a_clean_toy_root_passes_quickly(toy_voc_root, capsys):
    started = time.perf_counter()
    problems, checked = root_problems(toy_voc_root)
    assert time.perf_counter() - started < 1.0
    assert problems == [] and checked == {"VOC2007": 24, "VOC2012": 24}
    assert bench("data", "check", toy_voc_root) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        "checked VOC2007 (24 images), VOC2012 (24 images): no problems"]


def break_box_outside(voc, image_id):
    edit_annotation(voc / "Annotations" / f"{image_id}.xml",
                    lambda size, box: set_tags(box, xmax=tag(size, "width") + 5))
    return "box-outside", voc / "Annotations" / f"{image_id}.xml"


def break_box_inverted(voc, image_id):
    edit_annotation(voc / "Annotations" / f"{image_id}.xml",
                    lambda size, box: set_tags(box, xmin=tag(box, "xmax"), xmax=tag(box, "xmin")))
    return "inverted-box", voc / "Annotations" / f"{image_id}.xml"


def break_box_empty(voc, image_id):
    # VOC boxes are inclusive: xmax = xmin - 1 is zero pixels wide (xmin = xmax is one pixel).
    edit_annotation(voc / "Annotations" / f"{image_id}.xml",
                    lambda size, box: set_tags(box, xmax=tag(box, "xmin") - 1))
    return "empty-box", voc / "Annotations" / f"{image_id}.xml"


def break_box_nan(voc, image_id):
    edit_annotation(voc / "Annotations" / f"{image_id}.xml", lambda size, box: set_tags(box, xmax="nan"))
    return "nonfinite-box", voc / "Annotations" / f"{image_id}.xml"


def break_image_too_large(voc, image_id):
    huge_png(voc / "JPEGImages" / f"{image_id}.jpg")
    return "too-large", voc / "JPEGImages" / f"{image_id}.jpg"


def break_annotation_size(voc, image_id):
    edit_annotation(voc / "Annotations" / f"{image_id}.xml",
                    lambda size, box: set_tags(size, width=tag(size, "width") + 10))
    return "size-mismatch", voc / "Annotations" / f"{image_id}.xml"


def break_mask_class(voc, image_id):
    path = voc / "SegmentationClass" / f"{image_id}.png"
    rewrite_mask(path, lambda indices: indices.__setitem__((slice(0, 3), slice(0, 3)), 37))
    return "mask-class", path


def break_mask_size(voc, image_id):
    path = voc / "SegmentationClass" / f"{image_id}.png"
    with Image.open(path) as mask:
        mask.resize((mask.width + 3, mask.height)).save(path)
    return "mask-size", path


def remove(folder, suffix, kind):
    def break_it(voc, image_id):
        path = voc / folder / f"{image_id}{suffix}"
        path.unlink()
        return kind, path
    return break_it


@pytest.mark.parametrize("break_it", [
    break_box_outside, break_box_inverted, break_box_empty, break_box_nan, break_image_too_large,
    break_annotation_size, break_mask_class,
    break_mask_size, remove("JPEGImages", ".jpg", "missing-image"),
    remove("Annotations", ".xml", "missing-annotation"),
    remove("SegmentationObject", ".png", "missing-mask"),
], ids=lambda break_it: break_it.__name__)
def test_each_problem_is_found_and_names_its_file(toy_copy, break_it):
    voc = voc_dir(toy_copy)
    image_id = first_id(voc)
    kind, path = break_it(voc, image_id)
    problems, _ = root_problems(toy_copy)
    # A missing JPEG is listed by both Main and Segmentation: two problems, one (kind, file).
    assert {(problem.kind, problem.file, problem.image_id) for problem in problems} == {(kind, str(path), image_id)}


def test_object_masks_hold_instance_ids_not_classes(toy_copy):
    voc = voc_dir(toy_copy)
    image_id = first_id(voc, image_sets="Segmentation")
    rewrite_mask(voc / "SegmentationObject" / f"{image_id}.png",
                 lambda indices: indices.__setitem__((slice(0, 3), slice(0, 3)), 37))
    assert annotation_problems(voc, [image_id], ("image", "masks"), "ImageSets/Segmentation/val.txt") == []


def test_check_lists_problems_writes_csv_and_exits_1(toy_copy, tmp_path, capsys):
    voc = voc_dir(toy_copy)
    val = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    kinds_and_files = [break_box_inverted(voc, val[0]), break_mask_class(voc, val[1])]
    report = tmp_path / "report.csv"
    assert bench("data", "check", toy_copy, "--out", report) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "checked VOC2007 (24 images), VOC2012 (24 images): 2 problem(s) in 2 image(s)"
    assert [line.split("  ")[:2] for line in lines[:-1]] == [[str(path), kind] for kind, path in kinds_and_files]
    with open(report, newline="") as rows:
        written = list(csv.DictReader(rows))
    assert [(row["file"], row["kind"], row["image_id"]) for row in written] == [
        (str(path), kind, image_id) for (kind, path), image_id in zip(kinds_and_files, val)]
    assert "is inverted" in written[0]["detail"] and "37" in written[1]["detail"]
    # One year only: VOC2007 is clean.
    assert bench("data", "check", toy_copy, "--year", 2007) == 0


def test_a_root_that_is_not_voc_is_one_error_line(tmp_path, capsys):
    assert bench("data", "check", tmp_path) == 2
    assert error_lines(capsys) == [f"error: no VOCdevkit folder under data root {tmp_path}"]


def test_a_bad_test_mask_stops_segmentation_before_training(toy_copy, tmp_path, capsys):
    voc = voc_dir(toy_copy)
    _, path = break_mask_class(voc, first_id(voc, "val", "Segmentation"))
    assert bench("transfer", "--task", "seg", "--data-root", toy_copy, "--out", tmp_path / "seg",
                 *FAST_TRANSFER) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith(f"error: mask {path}: has class id(s) 37")
    assert lines[0].endswith(f"(0 more problem(s); see `bench data check {toy_copy}`, or pass --bad-annotations skip)")
    assert not [p for p in tmp_path.rglob("*") if p.name in ("checkpoint.pt", "metrics.jsonl", "record.json")]


def test_skip_leaves_the_bad_images_out(toy_copy, tmp_path, capsys):
    voc = voc_dir(toy_copy)
    val = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    break_mask_class(voc, val[0])
    break_mask_size(voc, val[1])
    assert bench("transfer", "--task", "seg", "--data-root", toy_copy, "--out", tmp_path / "seg",
                 *FAST_TRANSFER, "--bad-annotations", "skip") == 0
    warnings = [line for line in error_lines(capsys) if line.startswith("warning")]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: skipping 2 image(s) of VOC2012 val with annotation problems, "
                                  f"first: mask {voc / 'SegmentationClass' / val[0]}.png")
    assert (tmp_path / "seg" / "record.json").is_file()


def test_an_inverted_box_stops_detection_by_default(toy_copy, tmp_path, capsys):
    voc = voc_dir(toy_copy, 2007)
    _, path = break_box_inverted(voc, first_id(voc, "trainval"))
    assert bench("transfer", "--task", "det", "--data-root", toy_copy, "--out", tmp_path / "det",
                 *FAST_TRANSFER) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: annotation {path}: object 1") and "inverted" in lines[0]
    assert not (tmp_path / "det").exists()


def test_an_empty_split_file_is_a_problem(toy_copy, capsys):
    split = voc_dir(toy_copy) / "ImageSets" / "Main" / "val.txt"
    split.write_text("\n")
    problems, _ = root_problems(toy_copy)
    assert [(problem.kind, problem.file) for problem in problems] == [("empty-split", str(split))]
    assert bench("data", "check", toy_copy) == 1
    assert f"{split}  empty-split  lists no images" in capsys.readouterr().out


def test_a_class_folder_root_is_checked(toy_class_folders, tmp_path, capsys):
    assert bench("data", "check", toy_class_folders) == 0
    assert capsys.readouterr().out.strip() == "checked train (48 images), val (24 images): no problems"
    root = shutil.copytree(toy_class_folders, tmp_path / "classes")
    shutil.rmtree(root / "val" / "bird")  # train's birds would never be scored
    (root / "val" / "zebra").mkdir()  # nor could val's zebras ever be predicted
    shutil.copy(root / "val" / "boat" / "0000.jpg", root / "val" / "zebra")
    (root / "train" / "boat" / "empty").mkdir()  # a sub-folder of a class is part of it
    huge_png(root / "train" / "boat" / "huge.png")
    assert bench("data", "check", root) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[:2] for line in lines[:-1]] == [
        [str(root / "train" / "zebra"), "missing-class"], [str(root / "val" / "bird"), "missing-class"],
        [str(root / "train" / "boat" / "huge.png"), "too-large"]]
    assert "missing, though val has that class" in lines[0] and "missing, though train has that class" in lines[1]
    assert "more than 89,478,485 pixels" in lines[2]
    assert lines[-1] == "checked train (49 images), val (19 images): 3 problem(s) in 1 image(s)"


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    levels = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")  # PIL's convert("RGB") would clip it at 255
    pixels = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert pixels.shape == (64, 64, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    assert np.abs(pixels[..., 0].astype(int) - np.round(levels / 257)).max() == 0
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255 and abs(pixels.mean() - 127.5) < 1
