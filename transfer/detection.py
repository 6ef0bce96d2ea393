"""Fast R-CNN detection on the encoder (docs/protocol.md, "Transfer tasks"): VOC2007 trainval -> test, VOC07 mAP@0.5.

The encoder up to conv5 (stride 16; a timm backbone: its last stage) feeds RoI max pooling to
6x6, fresh fc6/fc7 and the
classification + box regression layers; every part but the encoder is torchvision's
(GeneralizedRCNNTransform, RoIPool, TwoMLPHead, FastRCNNPredictor, RoIHeads). Fast R-CNN's
settings: 2 images x 128 RoIs (config.batch_size images), 25% foreground at IoU >= 0.5, background
at IoU in [0.1, 0.5), mirroring, NMS 0.3, 100 detections per image; the shorter side is
the image size (the paper: 600) with the longer side at most 1000/600 of it.

Proposals are selective search ("fast" mode), computed once per image and cached as .npy files,
or, with proposals="rpn", a region proposal network trained jointly (Faster R-CNN).
"""
import hashlib
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import RoIPool, box_iou
from torchvision.transforms.functional import pil_to_tensor, to_tensor
from torchvision.utils import draw_bounding_boxes, make_grid

from bench_data.images import VOC_CLASSES
from bench_data.pixels import load_rgb
from bench_data.sampling import loader_options
from bench_data.voc import VOCDetection
from pretrain.backbones import frozen_features
from pretrain.networks import ALEXNET_POOL5_CHANNELS
from bench_runtime import distributed
from bench_runtime.errors import UserError
from bench_runtime.events import add_picture
from bench_runtime.progress import progress_bar
from bench_runtime.runfiles import cache_dir, write_atomically
from .encoders import calibrate_fresh_head
from .finetune import fit, seeded_batches, set_up_task
from .metrics import TRUE_POSITIVE, detection_ap, match_detections
from .records import write_record
from .registry import VOC, Column, TransferTask, register

PROPOSAL_KINDS = ("selective-search", "rpn")
MAX_PROPOSALS = 2000        # selective-search boxes kept per image (its own ranking order)
CONV5 = 12                  # AlexNet `features` index of pool5: features[:CONV5] ends at conv5 + ReLU
ALEXNET_CONV5_STRIDE = 16
BACKGROUND_MIN_IOU = 0.1    # Fast R-CNN's background RoIs overlap a ground-truth box by [0.1, 0.5)
ANCHOR_SIZES = (64, 128, 256, 512)  # RPN anchors at a 600 px shorter side (Faster R-CNN's 128-512, + 64)
GRID_IMAGES = 6             # test images in detections.png
DRAWN_PER_IMAGE = 3         # and the highest-scoring detections of each


def proposal_dir(voc_dir, min_size, max_size):
    """Cache folder of one VOC<year> folder's proposals at one detector scale."""
    key = hashlib.sha1(str(Path(voc_dir).resolve()).encode()).hexdigest()[:12]
    scale = f"ss-fast-{min_size}-{max_size}-top{MAX_PROPOSALS}"
    return cache_dir() / "proposals" / f"{Path(voc_dir).name}-{key}" / scale


def selective_search(image, min_size, max_size):
    """(N <= MAX_PROPOSALS, 4) float32 boxes (x1, y1, x2, y2) in `image`'s coordinates.

    Computed on the image at the size the detector sees it, but never enlarged (so on the
    original for the paper's sizes), and mapped back to the original coordinates.
    """
    factor = min(1.0, min_size / min(image.size), max_size / max(image.size))
    small = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                         Image.BILINEAR)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(np.asarray(small)[:, :, ::-1]))  # RGB -> BGR
    search.switchToSelectiveSearchFast()
    rects = search.process()[:MAX_PROPOSALS].astype(np.float32).reshape(-1, 4)  # x, y, w, h
    rects[:, 2:] += rects[:, :2]
    return rects * np.float32([image.width / small.width, image.height / small.height] * 2)


def cached_proposals(voc, min_size, max_size, progress=True):
    """The proposal file of every image of `voc`, computing the missing ones (written atomically)."""
    folder = proposal_dir(voc.voc_dir, min_size, max_size)
    paths = [folder / f"{image_id}.npy" for image_id in voc.ids]
    missing = [(image_id, path) for image_id, path in zip(voc.ids, paths) if not path.is_file()]
    if not missing:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(len(os.sched_getaffinity(0)))
    for image_id, path in progress_bar(missing, desc="selective search", unit="img", disable=not progress):
        boxes = selective_search(load_rgb(voc.voc_dir / "JPEGImages" / f"{image_id}.jpg"), min_size, max_size)
        write_atomically(path, lambda tmp: _save_npy(tmp, boxes))
    return paths


def _save_npy(path, array):
    with open(path, "wb") as file:  # np.save given a name would append ".npy" to the temporary one
        np.save(file, array)


def drop_easy_background(proposals, gt_boxes, min_iou=BACKGROUND_MIN_IOU):
    """Training proposals whose best IoU with a ground-truth box is at least `min_iou`.

    torchvision's RoIHeads labels every proposal below fg_iou_thresh = bg_iou_thresh = 0.5 as
    background, with no lower bound; removing those below 0.1 first gives Fast R-CNN's [0.1, 0.5).
    """
    if gt_boxes.numel() == 0:
        return proposals[:0]
    return proposals[box_iou(proposals, gt_boxes).amax(1) >= min_iou]


class FeaturePool(RoIPool):
    """RoI max pooling with the call signature RoIHeads gives its pooler."""

    def forward(self, features, proposals, image_shapes):
        return super().forward(features["0"], proposals)


def detection_backbone(encoder):
    """(module, channels, stride) the detector pools RoIs from: AlexNet's conv5 (before pool5,
    stride 16, as in Fast R-CNN), or any other backbone's output (its `channels` and `stride`)."""
    if isinstance(encoder, nn.Sequential):  # AlexNet's features
        return encoder[:CONV5], ALEXNET_POOL5_CHANNELS, ALEXNET_CONV5_STRIDE
    return encoder, encoder.channels, encoder.stride


def shared_parts(config, image_size, mean, std, channels, stride):
    """The transform (resize + normalise) and the RoI heads both variants use."""
    transform = GeneralizedRCNNTransform(image_size, round(image_size * 1000 / 600), mean, std)
    heads = RoIHeads(
        FeaturePool(6, spatial_scale=1 / stride), TwoMLPHead(channels * 6 * 6, config.fc_width),
        FastRCNNPredictor(config.fc_width, len(VOC_CLASSES) + 1),
        fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=128, positive_fraction=0.25,
        bbox_reg_weights=None,  # (10, 10, 5, 5): Fast R-CNN's target normalisation, stds (.1, .1, .2, .2)
        score_thresh=0.0, nms_thresh=0.3, detections_per_img=100)  # Fast R-CNN tests keep the top 100
    return transform, heads


class FastRCNN(nn.Module):
    """forward(images, proposals, targets) -> losses (training) or detections in original coordinates.

    images: list of (3, H, W) in [0, 1]; proposals: list of (P, 4) in the same coordinates.
    """

    def __init__(self, backbone, transform, roi_heads):
        super().__init__()
        self.backbone, self.transform, self.roi_heads = backbone, transform, roi_heads

    def forward(self, images, proposals, targets=None):
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, targets = self.transform(images, targets)
        # The transform resizes images and targets only: move the proposals by the same ratios.
        proposals = [resize_boxes(p, size, resized)
                     for p, size, resized in zip(proposals, original_sizes, batch.image_sizes)]
        if self.training:
            proposals = [drop_easy_background(p, t["boxes"]) for p, t in zip(proposals, targets)]
        features = {"0": self.backbone(batch.tensors)}
        detections, losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def build_detector(encoder, config, image_size, mean, std, proposals="selective-search"):
    """Fast R-CNN on the encoder's conv5, or with proposals="rpn" Faster R-CNN."""
    backbone, channels, stride = detection_backbone(encoder)
    transform, heads = shared_parts(config, image_size, mean, std, channels, stride)
    if proposals == "selective-search":
        return FastRCNN(backbone, transform, heads)
    # Faster R-CNN. torchvision's FasterRCNN class accepts only RoIAlign poolers, so its parts are
    # assembled here with its RPN settings (those of the Faster R-CNN paper).
    scale = image_size / 600
    anchors = AnchorGenerator((tuple(max(1, round(s * scale)) for s in ANCHOR_SIZES),), ((0.5, 1.0, 2.0),))
    rpn = RegionProposalNetwork(
        anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=256, positive_fraction=0.5,
        pre_nms_top_n={"training": 2000, "testing": 1000}, post_nms_top_n={"training": 2000, "testing": 1000},
        nms_thresh=0.7)
    return GeneralizedRCNN(backbone, rpn, heads, transform)


def _calibrate_box_head(model, images):
    """Data-dependent init of the fresh fc6/fc7 (see calibrate_fresh_head) on each image's conv5
    features max-pooled to 6x6, as RoI pooling does for a box covering the whole image."""
    box_head = model.roi_heads.box_head
    pooled = F.adaptive_max_pool2d(frozen_features(model.backbone, images), 6).flatten(1)
    calibrate_fresh_head([box_head.fc6, nn.ReLU(), box_head.fc7, nn.ReLU(), model.roi_heads.box_predictor.cls_score],
                         pooled)


def _positive_area(boxes):
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _mirror(boxes, width):
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


class DetectionSamples(Dataset):
    """Item: (image (3, H, W) in [0, 1], proposals (P, 4) or None, target {boxes, labels}).

    Zero-area boxes are dropped; in training, items are mirrored with probability 1/2 (drawn
    from self.rng, which training reseeds per item).
    """

    def __init__(self, voc, proposal_paths, train):
        self.voc, self.proposal_paths, self.train = voc, proposal_paths, train
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return len(self.voc)

    def __getitem__(self, index):
        image, target = self.voc[index]
        image = to_tensor(image)
        keep = _positive_area(target["boxes"])
        boxes, labels = target["boxes"][keep], target["labels"][keep]
        proposals = None
        if self.proposal_paths is not None:
            proposals = torch.from_numpy(np.load(self.proposal_paths[index]))
        if self.train and self.rng.random() < 0.5:
            image, boxes = image.flip(-1), _mirror(boxes, image.shape[-1])
            proposals = None if proposals is None else _mirror(proposals, image.shape[-1])
        return image, proposals, {"boxes": boxes, "labels": labels}


def _collate(batch):
    return tuple(list(column) for column in zip(*batch))


def _forward(model, batch, device):
    """Either variant on a collated batch: losses in training mode, detections in eval mode."""
    images, proposals, targets = batch
    images = [image.to(device) for image in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets] if model.training else None
    if isinstance(model, FastRCNN):
        return model(images, [p.to(device) for p in proposals], targets)
    return model(images, targets)  # Faster R-CNN proposes its own boxes


def detect(model, samples, config, device, progress=False):
    """The detections of `model` (in eval mode) on every item of `samples`, in item order. Under
    torchrun each process detects in its shard of the images and all get all detections."""
    loader = DataLoader(Subset(samples, distributed.shard(len(samples))), batch_size=config.batch_size,
                        collate_fn=_collate, **loader_options(config.workers, device))
    detections = []
    with torch.no_grad():
        for batch in progress_bar(loader, desc="det eval", unit="batch",
                                  disable=not (progress and distributed.is_main())):
            detections += [{k: v.cpu() for k, v in found.items()} for found in _forward(model, batch, device)]
    return distributed.concat_in_rank_order(detections)


def run_detection(config, context, run_dir, progress=True):
    """Train on config.train_split, detect on config.test_split; write record.json (VOC07 mAP@0.5)
    and detections.json into run_dir and return the record. config.proposals: "selective-search"
    or "rpn"."""
    proposals = config.proposals
    if proposals not in PROPOSAL_KINDS:
        raise UserError(f"--proposals must be one of {', '.join(PROPOSAL_KINDS)}, got {proposals!r}")
    started = time.perf_counter()
    task = set_up_task(config, context, VOCDetection)
    device, train_voc, test_voc = context.device, task.train_set, task.test_set
    model = build_detector(task.encoder, config, context.image_size, task.mean, task.std, proposals)
    _calibrate_box_head(model, task.calibration_images)
    model = model.to(device)
    train_paths = test_paths = None
    if proposals == "selective-search":
        sizes = model.transform.min_size[0], model.transform.max_size
        with distributed.main_first(local=True):  # one process per machine computes missing ones
            train_paths, test_paths = (cached_proposals(voc, *sizes, progress and distributed.is_local_main())
                                       for voc in (train_voc, test_voc))
    # As Fast R-CNN does, train only on images with at least one box to learn from.
    usable = [i for i in range(len(train_voc)) if _positive_area(train_voc.target(i)["boxes"]).any()]
    train_samples = DetectionSamples(train_voc, train_paths, train=True)

    fit(model, lambda model, batch: sum(_forward(model, batch, device).values()),
        seeded_batches(Subset(train_samples, usable), train_samples, config, _collate, device), config,
        config.lr or 1e-3, weight_decay=5e-4, desc="det train", run_dir=run_dir, progress=progress)

    detections = detect(model, DetectionSamples(test_voc, test_paths, train=False), config, device, progress)
    ground_truth = [test_voc.target(i) for i in range(len(test_voc))]
    per_class, mean_ap = detection_ap(detections, ground_truth, len(VOC_CLASSES))
    if distributed.is_main():
        _save_detections(run_dir / "detections.json", test_voc.ids, detections)
        add_picture(run_dir, "detections", save_detection_grid(test_voc, detections, run_dir / "detections.png"),
                    config.steps)
    return write_record(run_dir, config, context, task.init_info, "mAP", mean_ap, per_class.tolist(), VOC_CLASSES,
                        started)


def _save_detections(path, ids, detections):
    """Per image id: boxes (original pixels, 0.1 px), scores (4 decimals) and labels (1..20)."""
    images = {image_id: {"boxes": np.round(d["boxes"].double().numpy(), 1).tolist(),
                         "scores": np.round(d["scores"].double().numpy(), 4).tolist(),
                         "labels": d["labels"].tolist()} for image_id, d in zip(ids, detections)}
    text = json.dumps({"classes": list(VOC_CLASSES), "images": images}, separators=(",", ":"))
    write_atomically(path, lambda tmp: tmp.write_text(text + "\n"))


def save_detection_grid(voc, detections, path, count=GRID_IMAGES, per_image=DRAWN_PER_IMAGE, side=192):
    """A PNG of the first `count` images of `voc` (each shown at side x side) with their ground-truth
    boxes in white and their `per_image` highest-scoring detections labelled with class and score:
    true positives in green, false positives in red, matched as the VOC devkit does (IoU >= 0.5)."""
    tiles = []
    for index in range(min(count, len(voc))):
        image, truth = voc[index]
        found = detections[index]
        keep = found["scores"].argsort(descending=True)[:per_image]
        boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
        outcomes = np.zeros(len(boxes), dtype=np.int64)
        for c in labels.unique():
            mine, theirs = labels == c, truth["labels"] == c
            outcomes[mine.numpy()] = match_detections(boxes[mine], scores[mine], truth["boxes"][theirs],
                                                      truth["difficult"][theirs])
        scale = torch.tensor([side / image.width, side / image.height] * 2)
        tile = F.interpolate(pil_to_tensor(image)[None].float(), size=(side, side), mode="bilinear",
                             align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        if len(truth["boxes"]):
            tile = draw_bounding_boxes(tile, truth["boxes"] * scale, colors="white", width=1)
        if len(boxes):
            names = [f"{VOC_CLASSES[label - 1]} {score:.2f}" for label, score in zip(labels.tolist(), scores.tolist())]
            tile = draw_bounding_boxes(tile, boxes * scale, labels=names, width=2,
                                       colors=["lime" if o == TRUE_POSITIVE else "red" for o in outcomes])
        tiles.append(tile)
    grid = make_grid(tiles, nrow=len(tiles), padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


register(TransferTask(
    "det", "Fast R-CNN (or with --proposals rpn Faster R-CNN), VOC07 mAP at IoU 0.5", run_detection, VOC,
    "trainval", "test", year="2007", variant_option="proposals",
    columns=(Column("Detection", "selective-search", paper=True), Column("Detection (RPN)", "rpn"))))
