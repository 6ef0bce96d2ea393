"""The paper's protocol (issue 12): the feature network's L2 covers the dropped pixels only, a
pretrained encoder keeps its learned channel scales through the transfer set-up, fresh heads and
the random inits are initialised as documented, transfer takes its size from the encoder, and the
kNN probe follows pretraining from step 0."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from bench_data.masks import MaskSampler
from bench_data.voc import VOCClassification
from pretrain.methods.context_encoder import ContextEncoder
from pretrain.probe import KNNProbe, knn_class_scores, multilabel_map
from pretrain.train import PretrainConfig
from transfer.encoders import MAX_HEAD_GAIN, calibrate_fresh_head, load_encoder, standardize_units
from transfer.config import TransferConfig
from transfer.finetune import set_up_task
from transfer.tasks import resolve_transfer
from helpers import bench

PROBE_KEY = KNNProbe.score_key
MEAN, STD = [0.5] * 3, [0.25] * 3


def visible_share(method, hole):
    weights = method.loss_weights(hole)
    return float((weights * (1 - hole)).sum() / weights.sum())


@pytest.mark.parametrize("mask", ["random-block", "central"])
def test_feature_network_puts_no_l2_weight_on_visible_pixels(mask):
    method = ContextEncoder(PretrainConfig(mask=mask, image_size=128), MEAN, STD)
    sampler = MaskSampler(mask, 128, method.hole_band)
    hole = torch.from_numpy(np.stack([sampler(np.random.default_rng(i)) for i in range(4)]))
    hole = hole.float().unsqueeze(1)
    assert hole.sum() > 0 and visible_share(method, hole) == 0


def test_inpainting_network_keeps_the_released_overlap_band():
    method = ContextEncoder(PretrainConfig(arch="inpaint", mask="central", image_size=128), MEAN, STD)
    hole = torch.from_numpy(MaskSampler("central", 128, method.hole_band)(np.random.default_rng(0))).float()[None, None]
    assert method.hole_band == 4
    # A 56 px hole inside the 64 px centre: the band's 10x weight is most of the loss.
    assert 0.5 < visible_share(method, hole) < 0.9


def test_overlap_is_recorded_in_the_encoder_record_and_label(toy_voc_root, tmp_path):
    out = tmp_path / "band"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--image-size", 64, "--steps", 1,
                 "--batch-size", 4, "--workers", 0, "--mask", "random-block", "--overlap", 2) == 0
    info = json.loads((out / "encoder.json").read_text())
    assert info["method_options"]["overlap"] == 2 and info["method_options"]["overlap_weight"] == 10
    assert info["label"] == "context-encoder (random-block, overlap 2 px x10)"


def layer_channel_norms(encoder):
    return [layer.weight.flatten(1).norm(dim=1) for layer in encoder if isinstance(layer, nn.Conv2d)]


@pytest.mark.parametrize("rescale", [False, True])
def test_pretrained_channel_ratios_survive_the_transfer_set_up(toy_voc_root, pretrain_run, rescale):
    """Without --rescale the weights are untouched; with it each layer moves by one factor only."""
    before = layer_channel_norms(load_encoder(pretrain_run)[0])
    config = TransferConfig(task="cls", init=str(pretrain_run), data_root=str(toy_voc_root), year="2007",
                            train_split="trainval", test_split="test", image_size=96, rescale=rescale)
    after = layer_channel_norms(set_up_task(*resolve_transfer(config), VOCClassification).encoder)
    for old, new in zip(before, after):
        ratio = new / old
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
        if not rescale:
            assert torch.allclose(ratio, torch.ones_like(ratio))


def test_per_layer_calibration_gives_unit_layer_outputs():
    torch.manual_seed(0)
    encoder = load_encoder("random")[0]
    with torch.no_grad():
        for layer in encoder:
            if isinstance(layer, nn.Conv2d):
                layer.weight.mul_(0.1)  # a shrunken encoder, as after a short pretraining
    images = torch.randn(6, 3, 96, 96)
    standardize_units(list(encoder), images, per_layer=True)
    x = images
    with torch.no_grad():
        for layer in encoder:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                assert abs(float(x.std()) - 1) < 1e-3


def fresh_head():
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(256 * 9, 32), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 20))


def test_fresh_head_starts_at_unit_variance_whatever_the_feature_scale():
    torch.manual_seed(0)
    for scale in (0.5, 1.0, 50.0):
        features = scale * torch.rand(64, 256, 3, 3)
        head = fresh_head()
        last = head[-1].weight.clone()
        calibrate_fresh_head(head, features)
        with torch.no_grad():
            fc6 = head[2](features.flatten(1))
            fc7 = head[5](head[3](fc6))
        for pre_activation in (fc6, fc7):
            assert torch.allclose(pre_activation.std(0), torch.ones(32), atol=1e-3)
            assert torch.allclose(pre_activation.mean(0), torch.zeros(32), atol=1e-3)
        assert torch.equal(head[-1].weight, last)  # the class layer keeps its own init
        assert head.training  # dropout is on again for training


def test_fresh_head_does_not_amplify_a_vanishing_input_without_bound():
    torch.manual_seed(0)
    features = 1e-5 * torch.rand(64, 256, 3, 3)  # like a Random Gaussian encoder's pool5, smaller
    head = fresh_head()
    default = head[2].weight.detach().std()
    calibrate_fresh_head(head, features)
    assert float(head[2].weight.detach().std() / default) == pytest.approx(MAX_HEAD_GAIN, rel=1e-3)


def test_random_gaussian_init_is_the_papers():
    encoder, info = load_encoder("random-gaussian")
    for layer in encoder:
        if isinstance(layer, nn.Conv2d):
            assert abs(float(layer.weight.detach().std()) - 0.01) < 0.001 and not layer.bias.any()
    assert not info["data_init"] and info["label"] == "random Gaussian 0.01, not rescaled"


def test_kraehenbuehl_init_standardises_the_random_encoder(toy_voc_root):
    config = TransferConfig(task="cls", init="random-kraehenbuehl", data_root=str(toy_voc_root), year="2007",
                            train_split="trainval", test_split="test", image_size=96)
    task = set_up_task(*resolve_transfer(config), VOCClassification)
    x = task.calibration_images
    with torch.no_grad():
        for layer in task.encoder.eval():
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                channels = x.transpose(0, 1).flatten(1)
                live = channels.std(1) > 1e-6
                assert torch.allclose(channels.std(1)[live], torch.ones(int(live.sum())), atol=1e-3)
    assert task.init_info["label"] == "random + Krähenbühl init (the paper's Random Gaussian)"


def test_transfer_takes_the_size_the_encoder_was_pretrained_at(toy_voc_root, pretrain_run, tmp_path):
    pretrained = json.loads((pretrain_run / "encoder.json").read_text())["image_size"]
    common = ["--data-root", toy_voc_root, "--task", "cls", "--protocol", "svm", "--workers", 0]
    assert bench("transfer", *common, "--init", pretrain_run, "--out", tmp_path / "own") == 0
    record = json.loads((tmp_path / "own" / "record.json").read_text())
    assert (record["image_size"], record["image_size_from"]) == (pretrained, "encoder.json")
    assert bench("transfer", *common, "--init", pretrain_run, "--image-size", 64, "--out", tmp_path / "given") == 0
    record = json.loads((tmp_path / "given" / "record.json").read_text())
    assert (record["image_size"], record["image_size_from"]) == (64, "option")
    assert bench("transfer", *common, "--init", "random", "--out", tmp_path / "random") == 0
    record = json.loads((tmp_path / "random" / "record.json").read_text())
    assert (record["image_size"], record["image_size_from"]) == (96, "default")


def test_knn_scores_follow_the_nearest_neighbours():
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    test = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    scores = knn_class_scores(train, labels, test, k=2)
    assert scores[0, 0] > 0.99 and scores[1, 1] > 0.99
    test_labels = np.array([[1, -1], [-1, 1]])
    assert multilabel_map(scores.numpy(), test_labels) == 1.0
    assert multilabel_map(-scores.numpy(), test_labels) == 0.5  # the worst ranking of one positive in two
    assert np.isnan(multilabel_map(scores.numpy(), np.array([[1, 0], [1, 0]])))  # nothing to score


def test_probe_curve_starts_at_step_zero_and_is_plotted(toy_voc_root, tmp_path):
    out = tmp_path / "probed"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--image-size", 64, "--steps", 5,
                 "--batch-size", 4, "--workers", 0, "--mask", "random-block", "--probe-data", toy_voc_root,
                 "--probe-every", 2, "--probe-splits", "trainval", "test") == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    probes = [line for line in lines if PROBE_KEY in line]
    assert [p["step"] for p in probes] == [0, 2, 4, 5]
    assert all(0 <= p[PROBE_KEY] <= 1 for p in probes)
    assert len([line for line in lines if "loss" in line]) == 5
    for name in ("loss.png", "probe.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_probe_data_must_be_a_labelled_voc_root(toy_voc_root, tmp_path, capsys):
    out = tmp_path / "bad-probe"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--steps", 1,
                 "--probe-data", tmp_path) == 2
    assert "--probe-data" in capsys.readouterr().err and not out.exists()

