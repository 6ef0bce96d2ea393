"""SimCLR and the masked autoencoder (issue 29): per-image random views, the NT-Xent loss against
its hand-computed value, MAE's masking and masked-only loss, and each method from a two-step run
on toy data through a frozen-feature transfer (a ResNet to the in-domain probe, a ViT to the SVMs).
That the contrastive loss is right on two processes is in test_distributed.py."""
import json
import math

import pytest
import torch

from bench_data.views import ViewAugmentation
from pretrain.methods.mae import VisibleEncoder
from pretrain.patches import masked_patch_loss, random_masking
from pretrain.methods.simclr import nt_xent
from pretrain.backbones import build_backbone
from helpers import bench

TINY_VIT = "timm:vit_tiny_patch16_224,depth=2,patch_size=8,img_size=32"


def test_views_are_drawn_per_image_and_repeat_from_the_seed():
    augment = ViewAugmentation(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2, blur_p=0.5)
    images = torch.rand(1, 3, 32, 32).expand(8, -1, -1, -1)
    views = augment(images, torch.Generator().manual_seed(0))
    assert views.shape == images.shape and 0 <= views.min() and views.max() <= 1
    assert all((views[0] - view).abs().mean() > 0.01 for view in views[1:])  # one image, eight views
    assert torch.equal(augment(images, torch.Generator().manual_seed(0)), views)
    whole = ViewAugmentation(crop_scale=(1, 1), crop_ratio=(1, 1), flip=1.0)
    torch.testing.assert_close(whole(images), images.flip(-1))


@pytest.mark.parametrize("positives_aligned, expected", [(True, math.log(1 + 2 * math.exp(-2))),
                                                         (False, math.log(2 + math.exp(2)))])
def test_nt_xent_is_the_hand_computed_value(positives_aligned, expected):
    """Two images, orthogonal unit projections, temperature 0.5. Aligned: each anchor's positive
    has cosine 1, its two negatives 0: -log(e^2 / (e^2 + 2)). Crossed: the positive has 0 and one
    negative 1: -log(1 / (2 + e^2)). Every anchor alike by symmetry, so the mean is that value."""
    first = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # lengths do not matter: cosine similarity
    second = first if positives_aligned else first.flip(0)
    assert nt_xent(first, second, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_mae_hides_the_stated_ratio_and_its_loss_ignores_visible_patches():
    visible, masked = random_masking(4, 64, 0.75, "cpu", torch.Generator().manual_seed(0))
    assert visible.shape == (4, 16) and masked.sum(1).tolist() == [48] * 4
    assert not masked.gather(1, visible).any()
    assert len({tuple(row.sort().values.tolist()) for row in visible}) == 4  # each image its own
    encoder = VisibleEncoder(build_backbone(TINY_VIT))
    assert encoder(torch.rand(4, 3, 64, 64), visible).shape == (4, 1 + 16, 192)  # class token + visible
    predicted, target = torch.randn(4, 64, 192), torch.randn(4, 64, 192)
    loss = masked_patch_loss(predicted, target, masked)
    assert masked_patch_loss(torch.where(masked[..., None], predicted, 100.0), target, masked) == loss
    assert masked_patch_loss(torch.where(masked[..., None], 100.0, predicted), target, masked) > loss


@pytest.mark.parametrize("method, arch, transfer", [
    ("simclr", "timm:resnet18", ["--task", "probe"]),
    ("mae", TINY_VIT, ["--task", "cls", "--protocol", "svm"])])
def test_trains_two_steps_and_transfers(method, arch, transfer, toy_voc_root, toy_class_folders, tmp_path):
    run = tmp_path / "run"
    assert bench("pretrain", "--method", method, "--arch", arch, "--data-root", toy_voc_root, "--out", run,
                 "--image-size", 32, "--steps", 2, "--batch-size", 4, "--workers", 0) == 0
    assert all(math.isfinite(json.loads(line)["loss"]) for line in (run / "metrics.jsonl").read_text().splitlines())
    data = toy_class_folders if "probe" in transfer else toy_voc_root
    out = tmp_path / "transfer"
    assert bench("transfer", *transfer, "--init", run, "--data-root", data, "--image-size", 32, "--workers", 0,
                 "--out", out) == 0
    record = json.loads((out / "record.json").read_text())
    assert 0 <= record["value"] <= 1 and record["pretrain_label"] == f"{method} [{arch}]"


def test_mae_needs_a_vision_transformer(toy_voc_root, tmp_path, capsys):
    assert bench("pretrain", "--method", "mae", "--data-root", toy_voc_root, "--out", tmp_path / "run",
                 "--image-size", 32, "--steps", 1, "--batch-size", 4, "--workers", 0) == 2
    assert "--method mae needs a vision transformer, not --arch alexnet" in capsys.readouterr().err
