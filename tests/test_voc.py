import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench_data.images import VOC_CLASSES, read_class_labels
from bench_data.toy_voc import SPLITS, YEARS, ensure_toy_voc, write_toy_voc
from bench_data.voc import VOCClassification, VOCDetection, VOCSegmentation, parse_annotation
from bench_runtime.errors import UserError


def test_counts_match_summary(toy_voc_root):
    summary = json.loads((toy_voc_root / "toy_voc.json").read_text())
    for year in YEARS:
        for split in SPLITS:
            expected = summary["years"][str(year)][split]
            det = VOCDetection(toy_voc_root, split, year=year)
            assert len(det) == expected["images"]
            assert len(VOCSegmentation(toy_voc_root, split, year=year)) == expected["images"]
            assert len(VOCClassification(toy_voc_root, split, year=year)) == expected["images"]
            counts = dict.fromkeys(VOC_CLASSES, 0)
            difficult = 0
            for index in range(len(det)):
                target = det.target(index)
                for label in target["labels"].tolist():
                    counts[VOC_CLASSES[label - 1]] += 1
                difficult += int(target["difficult"].sum())
            assert counts == expected["objects"]
            assert difficult == expected["difficult"]
    assert sum(summary["years"]["2007"]["trainval"]["objects"].values()) > 0


def test_class_labels_agree_with_annotations(toy_voc_root):
    for year in YEARS:
        voc = toy_voc_root / "VOCdevkit" / f"VOC{year}"
        ids, labels = read_class_labels(voc, "trainval")
        assert labels.dtype == np.int8 and labels.shape == (len(ids), 20)
        det = VOCDetection(toy_voc_root, "trainval", year=year)
        assert det.ids == ids
        for row, index in zip(labels, range(len(det))):
            target = det.target(index)
            expected = np.full(20, -1)
            for label, hard in zip(target["labels"].tolist(), target["difficult"].tolist()):
                expected[label - 1] = max(expected[label - 1], 0 if hard else 1)
            assert row.tolist() == expected.tolist()
        cls = VOCClassification(toy_voc_root, "trainval", year=year)
        _, target = cls[0]
        assert target["labels"].tolist() == (labels[0] == 1).astype(np.float32).tolist()
        assert target["difficult"].tolist() == (labels[0] == 0).tolist()


def test_boxes_and_masks_agree(toy_voc_root):
    seg = VOCSegmentation(toy_voc_root, "trainval", year=2012)
    det = VOCDetection(toy_voc_root, "trainval", year=2012)
    assert seg.ids == det.ids
    for index in range(len(seg)):
        image, class_mask, object_mask = seg[index]
        image2, target = det[index]
        assert image.mode == "RGB" and image.size == image2.size == class_mask.size == object_mask.size
        classes, objects = np.array(class_mask), np.array(object_mask)
        assert set(np.unique(classes).tolist()) <= set(range(21)) | {255}
        assert ((classes == 255) == (objects == 255)).all()
        w, h = image.size
        for k, (box, label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist()), 1):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            ys, xs = np.nonzero(objects == k)
            if len(xs) == 0:  # an object lost entirely in the void band must be difficult
                assert target["difficult"][k - 1]
                continue
            assert (classes[ys, xs] == label).all()
            # the non-void pixels lie inside the box, and every edge of the box touches the object
            # or the void band (which hides its outline, and all of a thin visible sliver)
            assert x1 <= xs.min() and xs.max() + 1 <= x2 and y1 <= ys.min() and ys.max() + 1 <= y2
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            inside = (objects == k) | (objects == 255)
            assert inside[y1:y2, x1].any() and inside[y1:y2, x2 - 1].any()
            assert inside[y1, x1:x2].any() and inside[y2 - 1, x1:x2].any()
        assert objects[objects != 255].max(initial=0) == len(target["boxes"])


def test_generation_is_deterministic(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(write_toy_voc(tmp_path / "a", n_images=6, size=48, seed=1))
    b = files(write_toy_voc(tmp_path / "b", n_images=6, size=48, seed=1))
    c = files(write_toy_voc(tmp_path / "c", n_images=6, size=48, seed=2))
    assert a == b
    assert a.keys() == c.keys() and a != c
    jpeg = Path("VOCdevkit/VOC2007/JPEGImages/000001.jpg")
    assert a[jpeg] != c[jpeg]


def test_the_toy_set_draws_its_objects_from_the_first_classes(tmp_path):
    root = write_toy_voc(tmp_path / "three", n_images=30, size=48, seed=0, classes=3)
    summary = json.loads((root / "toy_voc.json").read_text())
    assert summary["classes"] == list(VOC_CLASSES[:3])
    names = {name for year in summary["years"].values() for split in year.values()
             for name, count in split["objects"].items() if count}
    assert names == set(VOC_CLASSES[:3])  # all three occur in 60 images, nothing else does
    with pytest.raises(UserError, match="1 to 20 classes"):
        write_toy_voc(tmp_path / "bad", n_images=2, size=48, classes=21)


def test_ensure_toy_voc_generates_once(tmp_path):
    root = ensure_toy_voc(tmp_path, n_images=4, size=48, seed=0)
    assert (root / "toy_voc.json").is_file()
    stamp = (root / "toy_voc.json").stat().st_mtime_ns
    assert ensure_toy_voc(tmp_path, n_images=4, size=48, seed=0) == root
    assert (root / "toy_voc.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind


def test_parse_annotation_converts_to_zero_based(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("""<annotation><filename>x.jpg</filename>
      <size><width>50</width><height>40</height><depth>3</depth></size>
      <object><name>dog</name><truncated>1</truncated><difficult>0</difficult>
        <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>40</ymax></bndbox></object>
      <object><name>cat</name><difficult>1</difficult>
        <bndbox><xmin>5</xmin><ymin>5</ymin><xmax>5</xmax><ymax>6</ymax></bndbox></object>
    </annotation>""")
    annotation = parse_annotation(path)
    assert (annotation["filename"], annotation["width"], annotation["height"]) == ("x.jpg", 50, 40)
    dog, cat = annotation["objects"]
    assert dog == {"name": "dog", "box": (0.0, 1.0, 10.0, 40.0), "difficult": False, "truncated": True}
    assert cat["box"] == (4.0, 4.0, 5.0, 6.0) and cat["difficult"] and not cat["truncated"]


def test_bad_annotation_names_the_file(tmp_path):
    for text in ("<annotation><size>", "<annotation><object><name>dog</name></object></annotation>"):
        path = tmp_path / "bad.xml"
        path.write_text(text)
        with pytest.raises(UserError, match="bad.xml"):
            parse_annotation(path)
    with pytest.raises(UserError, match="missing.xml"):
        parse_annotation(tmp_path / "missing.xml")


def test_detection_target_types(toy_voc_root):
    image, target = VOCDetection(toy_voc_root, "val", year=2007)[0]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
    assert target["labels"].dtype == torch.int64 and target["labels"].min() >= 1
    assert target["difficult"].dtype == torch.bool and isinstance(target["image_id"], str)


def test_transforms(toy_voc_root):
    cls = VOCClassification(toy_voc_root, "val", year=2007, transform=lambda image: image.size)
    assert isinstance(cls[0][0], tuple)
    det = VOCDetection(toy_voc_root, "val", year=2007, transform=lambda image, target: target["image_id"])
    assert det[0] == det.ids[0]
    seg = VOCSegmentation(toy_voc_root, "val", year=2007, transform=lambda image, c, o: (c.mode, o.mode))
    assert seg[0] == ("P", "P")


@pytest.mark.parametrize("dataset, broken", [
    (VOCDetection, "Annotations"),
    (VOCDetection, "Annotations/000001.xml"),
    (VOCDetection, "ImageSets/Main/val.txt"),
    (VOCClassification, "ImageSets/Main/dog_val.txt"),
    (VOCClassification, "JPEGImages"),
    (VOCSegmentation, "SegmentationObject"),
    (VOCSegmentation, "ImageSets/Segmentation/val.txt"),
])
def test_incomplete_root_names_missing_path(toy_copy, dataset, broken):
    voc = toy_copy / "VOCdevkit" / "VOC2007"
    ids = (voc / "ImageSets/Main/val.txt").read_text().split()
    path = voc / broken.replace("000001", ids[0])
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(UserError) as error:
        dataset(toy_copy, "val", year=2007)
    assert str(path) in str(error.value)


def test_malformed_class_file_names_it(toy_copy):
    voc = toy_copy / "VOCdevkit" / "VOC2012"
    path = voc / "ImageSets/Main/cat_train.txt"
    path.write_text(path.read_text().replace(" 1\n", " yes\n").replace("-1\n", "no\n"))
    with pytest.raises(UserError, match="cat_train.txt"):
        read_class_labels(voc, "train")


def test_unknown_split_lists_available(toy_voc_root):
    with pytest.raises(UserError) as error:
        VOCDetection(toy_voc_root, "valid", year=2007)
    assert "valid.txt" in str(error.value)
    for split in SPLITS:
        assert split in str(error.value)


def test_missing_year(toy_voc_root):
    with pytest.raises(UserError, match="VOC2010"):
        VOCSegmentation(toy_voc_root, "val", year=2010)
