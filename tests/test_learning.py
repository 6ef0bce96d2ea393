"""Each transfer task learns: a short run on an easy toy VOC set beats, by a clear margin, a trivial
baseline scored with the suite's own metric on the same test images. The other transfer tests check
what a run writes; a task that learned nothing would pass them."""
import json

import numpy as np
import pytest

from bench_data.images import VOC_CLASSES
from bench_data.toy_voc import write_toy_voc
from bench_data.voc import VOCClassification, VOCDetection, VOCSegmentation
from bench_runtime.metrics import classification_ap
from transfer.metrics import confusion_matrix, detection_ap, segmentation_scores
from helpers import bench

# With seeds 0-2 every run beat its baseline by 0.22 or more; with lr 0 (or constant features for
# the SVMs) each fell short of this.
MARGIN = 0.10
RANDOM_BOXES_PER_IMAGE = 10


@pytest.fixture(scope="module")
def three_class_voc(tmp_path_factory):
    """64 images of the first three classes per year (16 test images, each class in many of them)."""
    return write_toy_voc(tmp_path_factory.mktemp("three-class-voc"), n_images=64, size=64, seed=0, classes=3)


@pytest.fixture(scope="module")
def one_class_voc(tmp_path_factory):
    """Objects of one class only: in 80 steps FCN-32s on a random AlexNet learns them well, where
    with three classes it beat background-only by 0.06-0.08 mean IU."""
    return write_toy_voc(tmp_path_factory.mktemp("one-class-voc"), n_images=64, size=64, seed=0, classes=1)


def transfer_value(root, out, task, *options):
    """The value in the record of a `bench transfer` run."""
    assert bench("transfer", "--data-root", root, "--out", out, "--task", task, "--fc-width", 64,
                 "--workers", 0, *options) == 0
    return json.loads((out / "record.json").read_text())["value"]


def class_prior_map(root):
    """mAP of scoring every test image with the class frequencies of the training images."""
    train, test = VOCClassification(root, "trainval", "2007"), VOCClassification(root, "test", "2007")
    priors = train.labels.mean(0).expand(len(test), -1)
    return classification_ap(priors, test.labels, test.difficult)[1]


def background_mean_iu(root):
    """Mean IU of predicting background at every pixel of the val masks."""
    val = VOCSegmentation(root, "val", "2012")
    masks = [np.array(class_mask) for _, class_mask, _ in val]
    confusion = sum(confusion_matrix(np.zeros_like(mask), mask, len(VOC_CLASSES) + 1) for mask in masks)
    return segmentation_scores(confusion)["mean_iu"]


def random_boxes_map(root, seed=0):
    """VOC07 mAP of RANDOM_BOXES_PER_IMAGE boxes on each test image, with random corners, scores
    and classes (among those the test images hold)."""
    test = VOCDetection(root, "test", "2007")
    truth = [test.target(i) for i in range(len(test))]
    classes = np.unique(np.concatenate([t["labels"].numpy() for t in truth]))
    rng = np.random.default_rng(seed)
    detections = []
    for annotation in test.annotations:
        corners = rng.uniform(0, [annotation["width"], annotation["height"]] * 2, (RANDOM_BOXES_PER_IMAGE, 4))
        boxes = np.hstack([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])])
        detections.append({"boxes": boxes, "scores": rng.random(RANDOM_BOXES_PER_IMAGE),
                           "labels": rng.choice(classes, RANDOM_BOXES_PER_IMAGE)})
    return detection_ap(detections, truth, len(VOC_CLASSES))[1]


# name: (toy set fixture, the task and its options, the trivial baseline it must beat).
# Segmentation runs at 128 px: AlexNet's pool5 is 3x3 there, 1x1 at 64 px (one class per image).
RUNS = {
    "cls fine-tune beats the class priors": ("three_class_voc", ["cls", "--image-size", 64, "--steps", 40,
                                                                 "--batch-size", 8, "--lr", 0.01], class_prior_map),
    "cls SVM beats the class priors": ("three_class_voc", ["cls", "--protocol", "svm", "--image-size", 64],
                                       class_prior_map),
    "seg beats background everywhere": ("one_class_voc", ["seg", "--image-size", 128, "--steps", 80,
                                                          "--batch-size", 4, "--lr", 0.005], background_mean_iu),
    "det beats random boxes": ("three_class_voc", ["det", "--image-size", 64, "--steps", 40, "--batch-size", 4],
                               random_boxes_map),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_short_run_beats_a_trivial_baseline(name, request, tmp_path):
    fixture, (task, *options), baseline = RUNS[name]
    root = request.getfixturevalue(fixture)
    assert transfer_value(root, tmp_path / task, task, *options) > baseline(root) + MARGIN
