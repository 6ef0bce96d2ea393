"""Run by tests/test_distributed.py, on one process or under `torchrun --nproc-per-node 2`:
evaluate fixed, seeded models on the toy VOC set with the tasks' own evaluation functions, and
write what they give (the main process) to a JSON file.

    python tests/distributed_worker.py VOC_ROOT OUT.json
"""
import json
import sys

import torch

from bench_data.images import VOC_CLASSES
from bench_data.voc import VOCClassification, VOCDetection, VOCSegmentation
from pretrain.networks import alexnet_encoder
from bench_runtime import distributed
from bench_runtime.metrics import classification_ap
from transfer.classification import Classifier, classification_scores
from transfer.detection import DetectionSamples, build_detector, detect
from transfer.config import TransferConfig
from transfer.metrics import detection_ap, segmentation_scores
from transfer.segmentation import FCN32s, SegmentationPairs, evaluate_segmentation

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def main(root, out):
    device = distributed.setup("cpu")
    config = TransferConfig(batch_size=3, fc_width=16, workers=0, seed=0)
    torch.manual_seed(0)
    results = {}

    segmentation = FCN32s(alexnet_encoder(), 16).eval()
    voc = VOCSegmentation(root, "val", "2012")
    voc.transform = SegmentationPairs(64, MEAN, STD, train=False)
    results["seg"] = segmentation_scores(evaluate_segmentation(segmentation, voc, device))["mean_iu"]

    classifier = Classifier(alexnet_encoder(), 64, 16).eval()
    voc = VOCClassification(root, "test", "2007")
    scores = classification_scores(classifier, voc, MEAN, STD, 64, config, device)
    results["cls_scores"] = scores.tolist()
    results["cls"] = classification_ap(scores, voc.labels, voc.difficult)[1]

    detector = build_detector(alexnet_encoder(), config, 64, MEAN, STD, proposals="rpn").eval()
    voc = VOCDetection(root, "test", "2007")
    detections = detect(detector, DetectionSamples(voc, None, train=False), config, device)
    results["det_count"] = sum(len(d["boxes"]) for d in detections)
    results["det"] = detection_ap(detections, [voc.target(i) for i in range(len(voc))], len(VOC_CLASSES))[1]

    if distributed.is_main():
        with open(out, "w") as file:
            json.dump(results, file)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
