"""Fast R-CNN detection: cached selective-search proposals, the [0.1, 0.5) background rule,
proposals following the image resize, mirroring, and a few training steps of both proposal kinds
ending in a valid record."""
import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Subset

from bench_data.images import VOC_CLASSES
from bench_data.voc import VOCDetection
from bench_runtime.errors import UserError
from transfer.detection import (MAX_PROPOSALS, DetectionSamples, FastRCNN, cached_proposals, drop_easy_background,
                                proposal_dir, save_detection_grid, selective_search, shared_parts)
from transfer.encoders import load_encoder
from transfer.config import TransferConfig
from transfer.tasks import run_task

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def det_config(root, **changes):
    return TransferConfig(**{
        "task": "det", "protocol": "finetune", "data_root": str(root), "year": "2007",
        "train_split": "trainval", "test_split": "test", "image_size": 96, "batch_size": 2,
        "steps": 2, "fc_width": 16, "workers": 0, **changes})


def test_proposals_are_cached_per_image(toy_voc_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    voc = VOCDetection(toy_voc_root, "test", "2007")
    paths = cached_proposals(voc, 96, 160, progress=False)
    assert paths == [proposal_dir(voc.voc_dir, 96, 160) / f"{i}.npy" for i in voc.ids]
    assert str(tmp_path / "proposals") in str(paths[0]) and "VOC2007" in str(paths[0])
    for path, annotation in zip(paths, voc.annotations):
        boxes = np.load(path)
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= MAX_PROPOSALS
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
        assert (boxes[:, [0, 2]] <= annotation["width"]).all()
        assert (boxes[:, [1, 3]] <= annotation["height"]).all()

    def no_search():
        raise AssertionError("selective search ran again")
    monkeypatch.setattr(cv2.ximgproc.segmentation, "createSelectiveSearchSegmentation", no_search)
    assert cached_proposals(voc, 96, 160, progress=False) == paths
    with pytest.raises(AssertionError, match="ran again"):  # another scale is another cache entry
        cached_proposals(voc, 64, 100, progress=False)


def test_selective_search_on_a_downscaled_copy_gives_original_coordinates():
    image = np.full((100, 200, 3), 40, np.uint8)
    image[20:80, 120:190] = (200, 30, 30)
    boxes = selective_search(Image.fromarray(image), min_size=50, max_size=100)  # searched at 100 x 50
    assert boxes[:, 2].max() == pytest.approx(200) and boxes[:, 3].max() == pytest.approx(100)
    assert np.abs(boxes - [120, 20, 190, 80]).max(1).min() <= 2  # the red block, back at full size


def test_background_below_0_1_iou_is_dropped():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],    # IoU 1
                              [0.0, 0.0, 10.0, 4.0],     # 0.4: background
                              [0.0, 0.0, 10.0, 1.0],     # 0.1: background, kept
                              [0.0, 0.0, 10.0, 0.5],     # 0.05: dropped
                              [20.0, 20.0, 30.0, 30.0]])  # 0: dropped
    assert torch.equal(drop_easy_background(proposals, gt), proposals[:3])
    assert drop_easy_background(proposals, gt[:0]).shape == (0, 4)


class RecordingHeads(nn.Module):
    """Stands in for RoIHeads: records what it is given and 'detects' the proposals themselves."""

    def forward(self, features, proposals, image_shapes, targets=None):
        self.proposals, self.targets = proposals, targets
        return [{"boxes": p, "scores": torch.ones(len(p)), "labels": torch.ones(len(p), dtype=torch.int64)}
                for p in proposals], {"loss": torch.zeros(())}


def test_proposals_are_resized_with_the_image(toy_voc_root):
    heads = RecordingHeads()
    transform, _ = shared_parts(det_config(toy_voc_root), 96, MEAN, STD, channels=256, stride=16)
    model = FastRCNN(load_encoder("random")[0][:12], transform, heads)
    image, box = torch.rand(3, 50, 70), torch.tensor([[5.0, 10.0, 40.0, 45.0]])
    model.train()
    model([image], [box.clone()], [{"boxes": box.clone(), "labels": torch.tensor([3])}])
    resized_gt = heads.targets[0]["boxes"]
    assert not torch.allclose(resized_gt, box)  # 50 x 70 -> 96 x 134: the box moved
    assert torch.allclose(heads.proposals[0], resized_gt)
    model.eval()
    with torch.no_grad():
        detections = model([image], [box.clone()])
    assert torch.allclose(heads.proposals[0], resized_gt)
    assert torch.allclose(detections[0]["boxes"], box, atol=1e-4)  # and back to the original size


class OneImage:
    def __init__(self, boxes):
        self.boxes = torch.tensor(boxes)

    def __len__(self):
        return 1

    def __getitem__(self, index):
        image = Image.fromarray(np.arange(30 * 40, dtype=np.uint8).reshape(30, 40), "L").convert("RGB")
        return image, {"boxes": self.boxes.clone(), "labels": torch.arange(1, len(self.boxes) + 1)}


def test_samples_drop_empty_boxes_and_mirror_proposals_with_the_image(tmp_path):
    voc = OneImage([[2.0, 3.0, 12.0, 20.0], [5.0, 5.0, 5.0, 9.0]])  # the second has no area
    proposals = tmp_path / "p.npy"
    np.save(proposals, np.float32([[2, 3, 12, 20], [0, 0, 40, 30]]))
    plain = DetectionSamples(voc, [proposals], train=False)[0]
    assert plain[2]["boxes"].tolist() == [[2.0, 3.0, 12.0, 20.0]] and plain[2]["labels"].tolist() == [1]
    flips = set()
    samples = DetectionSamples(voc, [proposals], train=True)
    for seed in range(10):
        samples.rng = np.random.default_rng(seed)  # as training reseeds it per item
        image, boxes, target = samples[0]
        flipped = not torch.equal(image, plain[0])
        flips.add(flipped)
        if flipped:
            assert torch.equal(image, plain[0].flip(-1))
            assert target["boxes"].tolist() == [[28.0, 3.0, 38.0, 20.0]]
            assert boxes.tolist() == [[28.0, 3.0, 38.0, 20.0], [0.0, 0.0, 40.0, 30.0]]
    assert flips == {True, False}


@pytest.mark.parametrize("proposals", ["selective-search", "rpn"])
def test_training_and_evaluation_write_a_record(toy_voc_root, tmp_path, proposals):
    config = dataclasses.replace(det_config(toy_voc_root), proposals=proposals)
    record = run_task(config, tmp_path, progress=False)
    assert record["config"]["proposals"] == proposals
    assert record["task"] == "det" and record["metric"] == "mAP" and 0 <= record["value"] <= 1
    assert list(record["per_class"]) == list(VOC_CLASSES)
    assert all(v is None or 0 <= v <= 1 for v in record["per_class"].values())
    assert json.loads((tmp_path / "record.json").read_text())["value"] == record["value"]
    test = VOCDetection(toy_voc_root, "test", "2007")
    saved = json.loads((tmp_path / "detections.json").read_text())
    assert saved["classes"] == list(VOC_CLASSES) and list(saved["images"]) == test.ids
    for image_id, annotation in zip(test.ids, test.annotations):
        found = saved["images"][image_id]
        assert len(found["boxes"]) == len(found["scores"]) == len(found["labels"]) <= 100
        boxes = np.array(found["boxes"]).reshape(-1, 4)
        assert (boxes[:, 2] <= annotation["width"] + 0.1).all()
        assert (boxes[:, 3] <= annotation["height"] + 0.1).all()


def test_detection_grid_draws_true_positives_green_and_false_positives_red(toy_voc_root, tmp_path):
    test = VOCDetection(toy_voc_root, "test", "2007")
    truth = test.target(0)
    box = truth["boxes"][0]
    width, height = test.annotations[0]["width"], test.annotations[0]["height"]
    elsewhere = torch.tensor([[0.0, 0.0, 3.0, 3.0]]) if box[0] > 8 or box[1] > 8 else torch.tensor(
        [[width - 4.0, height - 4.0, width - 1.0, height - 1.0]])
    found = [{"boxes": torch.cat([box[None], elsewhere]), "scores": torch.tensor([0.9, 0.8]),
              "labels": torch.stack([truth["labels"][0], truth["labels"][0]])}]
    path = save_detection_grid(Subset(test, [0]), found, tmp_path / "detections.png", side=96)
    pixels = np.array(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert (0, 255, 0) in colours and (255, 0, 0) in colours  # lime: the match; red: the box elsewhere
    found[0]["labels"][0] = truth["labels"][0] % len(VOC_CLASSES) + 1  # another class: no match, no green
    pixels = np.array(Image.open(save_detection_grid(Subset(test, [0]), found, tmp_path / "d.png", side=96)))
    assert (0, 255, 0) not in {tuple(p) for p in pixels.reshape(-1, 3)}


def test_unknown_proposal_kind_is_a_user_error(toy_voc_root, tmp_path):
    with pytest.raises(UserError, match="--proposals"):
        run_task(dataclasses.replace(det_config(toy_voc_root), proposals="edge-boxes"), tmp_path, progress=False)
