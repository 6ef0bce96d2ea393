"""FCN-32s semantic segmentation on the encoder (docs/protocol.md, "Transfer tasks"): VOC2012 train -> val, mean IU.

fc6/fc7 become fresh convolutions, a 21-way 1x1 classifier scores each pool5 cell, and the scores
are upsampled bilinearly (x32 for the paper's sizes) to the input. fc6 is a 3x3 convolution
(FCN-AlexNet's is 6x6 on an input padded by 100 px, then cropped); the 3x3 head works at any
input size, which the CPU presets need. SGD, momentum 0.9, polynomial decay, softmax loss with
255 ignored; evaluation upsamples the scores to each image's original size.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.utils import save_image

from bench_data.images import VOC_CLASSES
from bench_data.pixels import normalized_tensor, resize_shorter_side
from bench_data.toy_voc import voc_palette
from bench_data.voc import VOCSegmentation
from pretrain.backbones import backbone_channels, frozen_features
from bench_runtime import distributed
from bench_runtime.events import add_picture
from bench_runtime.progress import progress_bar
from bench_runtime.runfiles import save_json
from .encoders import calibrate_fresh_head
from .finetune import fit, seeded_batches, set_up_task
from .metrics import confusion_matrix, segmentation_scores
from .records import write_record
from .registry import VOC, Column, TransferTask, register

NUM_CLASSES = 21  # background + 20
GRID_IMAGES = 6  # test images in predictions.png
CLASS_NAMES = ("background", *VOC_CLASSES)


class FCN32s(nn.Module):
    def __init__(self, encoder, width, num_classes=NUM_CLASSES):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Conv2d(backbone_channels(encoder), width, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(0.5),
            nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Dropout2d(0.5),
            nn.Conv2d(width, num_classes, 1))

    def forward(self, x):
        scores = self.head(self.encoder(x))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SegmentationPairs:
    """Joint transform: rescale (shorter side `size` x U(1, 1.5) in training), random crop and flip;
    the mask is resized with nearest neighbour. Evaluation keeps the original mask."""

    def __init__(self, size, mean, std, train, seed=0):
        self.size, self.train = size, train
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __call__(self, image, class_mask, _object_mask):
        original = torch.from_numpy(np.array(class_mask, dtype=np.int64))
        scale = self.rng.uniform(1.0, 1.5) if self.train else 1.0
        shorter = round(self.size * scale)
        image = normalized_tensor(resize_shorter_side(image, shorter), self.mean, self.std)
        if not self.train:
            return image, original
        mask = torch.from_numpy(np.array(resize_shorter_side(class_mask, shorter, Image.NEAREST),
                                         dtype=np.int64))
        top = int(self.rng.integers(0, image.shape[1] - self.size + 1))
        left = int(self.rng.integers(0, image.shape[2] - self.size + 1))
        image = image[:, top:top + self.size, left:left + self.size]
        mask = mask[top:top + self.size, left:left + self.size]
        if self.rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask


def evaluate_segmentation(model, test_set, device, progress=False):
    """The (21, 21) confusion matrix of `model` on `test_set`, each image scored at its original
    size. Under torchrun each process scores its shard of the images and the matrices are summed."""
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    with torch.no_grad():
        for index in progress_bar(distributed.shard(len(test_set)), desc="seg eval", unit="img",
                                  disable=not (progress and distributed.is_main())):
            image, target = test_set[index]
            scores = model(image.unsqueeze(0).to(device))
            scores = F.interpolate(scores, size=target.shape, mode="bilinear", align_corners=False)
            confusion += confusion_matrix(scores.argmax(1)[0], target, NUM_CLASSES)
    return distributed.all_reduce_sum(confusion)


def colour_masks(masks):
    """(N, H, W) class indices -> (N, 3, H, W) floats in [0, 1] in the VOC colours (void 255: white)."""
    palette = torch.tensor(voc_palette(), dtype=torch.float32).view(256, 3) / 255
    palette[255] = 1.0
    return palette[masks].permute(0, 3, 1, 2)


def save_prediction_grid(model, test_set, mean, std, device, path, count=GRID_IMAGES, side=128):
    """A PNG with one column per test image (the first `count`, each shown at side x side): the
    image, its ground truth and the model's prediction, in the VOC colours."""
    rows = [[], [], []]
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        for index in range(min(count, len(test_set))):
            image, target = test_set[index]
            scores = model(image.unsqueeze(0).to(device))
            predicted = F.interpolate(scores, size=target.shape, mode="bilinear", align_corners=False).argmax(1)
            truth, guess = colour_masks(torch.stack([target, predicted[0].cpu()]))
            for row, picture in zip(rows, ((image * std + mean).clamp(0, 1), truth, guess)):
                row.append(F.interpolate(picture[None], size=(side, side), mode="nearest"))
    grid = torch.cat([torch.cat(row) for row in rows])
    save_image(grid, path, nrow=len(rows[0]), padding=2, pad_value=1.0)
    return path


def run_segmentation(config, context, run_dir, progress=True):
    started = time.perf_counter()
    task = set_up_task(config, context, VOCSegmentation)
    device, train_set, test_set, mean, std = context.device, task.train_set, task.test_set, task.mean, task.std
    train_set.transform = SegmentationPairs(context.image_size, mean, std, train=True, seed=config.seed)
    test_set.transform = SegmentationPairs(context.image_size, mean, std, train=False)

    model = FCN32s(task.encoder, config.fc_width)
    calibrate_fresh_head(model.head, frozen_features(task.encoder, task.calibration_images))
    model = model.to(device)

    def loss_fn(model, batch):
        images, masks = (t.to(device) for t in batch)
        return F.cross_entropy(model(images), masks, ignore_index=255)

    fit(model, loss_fn, seeded_batches(train_set, train_set.transform, config, device=device), config,
        config.lr or 0.01, weight_decay=5e-4, desc="seg train", run_dir=run_dir, progress=progress)

    confusion = evaluate_segmentation(model, test_set, device, progress)
    scores = segmentation_scores(confusion)
    if distributed.is_main():
        save_json({"confusion": confusion.tolist(), "classes": list(CLASS_NAMES)}, run_dir / "confusion.json")
        add_picture(run_dir, "predictions", save_prediction_grid(model, test_set, mean, std, device,
                                                                 run_dir / "predictions.png"), config.steps)
    return write_record(run_dir, config, context, task.init_info, "mean_iu", scores["mean_iu"],
                        scores["per_class_iu"].tolist(), CLASS_NAMES, started)


register(TransferTask(
    "seg", "FCN-32s segmentation, mean IU", run_segmentation, VOC, "train", "val", year="2012",
    columns=(Column("Segmentation", "finetune", paper=True),)))
