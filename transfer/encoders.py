"""What `--init` means: a pretraining run folder, an encoder file, `random`, or weights from
torchvision or timm."""
import json
from pathlib import Path

import torch

from pretrain.backbones import TIMM_PREFIX, build_backbone, is_backbone_arch, label_with_arch
from pretrain.errors import UserError

RANDOM = "random"
TORCHVISION_PREFIX = "torchvision-alexnet:"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def load_encoder(init):
    """Return (backbone module, info).

    `init` is one of
      a run folder written by `bench pretrain`, or an encoder.pt with its encoder.json beside it;
      "random" or "random:<arch>" (e.g. random:timm:resnet18): freshly initialised, no
          pretraining (for AlexNet He-Gaussian weights: the paper's random-init row);
      "torchvision-alexnet:PATH": a torchvision AlexNet state_dict file (its ImageNet weights, or
          `bench export --to torchvision`), whose `features.*` weights are used;
      "timm:<model>:PATH": a timm model's state_dict file (its ImageNet weights, or
          `bench export --to timm`), cut to its feature stages.
    info holds method, label, arch, input_mean/input_std (None for random: use the data's own),
    pretrain_seconds and the source path.
    """
    init = str(init)
    if init == RANDOM or init.startswith(f"{RANDOM}:"):
        arch = init.removeprefix(RANDOM).removeprefix(":") or "alexnet"
        return build_backbone(arch), {"init": init, "method": RANDOM, "label": label_with_arch(RANDOM, arch),
                                      "arch": arch, "input_mean": None, "input_std": None,
                                      "pretrain_seconds": 0.0}
    if init.startswith(TORCHVISION_PREFIX):
        return _load_torchvision_alexnet(init)
    if init.startswith(TIMM_PREFIX):
        return _load_timm_weights(init)
    path = Path(init)
    weights = path / "encoder.pt" if path.is_dir() else path
    meta_path = weights.with_name("encoder.json")
    if not weights.is_file():
        raise UserError(f"--init {init}: no encoder file {weights} (give a pretraining run folder, "
                        f"an encoder.pt, or 'random')")
    if not meta_path.is_file():
        raise UserError(f"--init {init}: {meta_path} is missing (it says how the encoder was trained)")
    meta = json.loads(meta_path.read_text())
    arch = meta.get("arch", "")
    if not is_backbone_arch(arch):
        raise UserError(f"--init {init}: transfer needs an alexnet or timm encoder, this one is {arch!r}")
    encoder = _backbone_with(arch, _read_state(init, weights), init, weights)
    return encoder, {"init": str(weights.parent if path.is_dir() else weights), **meta}


def _load_torchvision_alexnet(init):
    weights = Path(init.removeprefix(TORCHVISION_PREFIX))
    if not weights.is_file():
        raise UserError(f"--init {init}: no file {weights}")
    state = _read_state(init, weights)
    prefix = "features."
    features = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    if not features:
        raise UserError(f"--init {init}: {weights} has no 'features.*' weights; it is not a torchvision AlexNet")
    encoder = _backbone_with("alexnet", features, init, weights)
    return encoder, {"init": str(weights), "method": "torchvision-alexnet", "label": "torchvision-alexnet",
                     "arch": "alexnet", "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD,
                     "pretrain_seconds": None}


def _load_timm_weights(init):
    name, _, file = init.removeprefix(TIMM_PREFIX).partition(":")
    weights = Path(file)
    if not name or not file or not weights.is_file():
        raise UserError(f"--init {init}: expected timm:<model name>:<state_dict file>")
    arch = f"{TIMM_PREFIX}{name}"
    encoder = build_backbone(arch)
    # The feature stages keep the full model's names; what they lack (the classifier) is dropped.
    wanted = {f"model.{key}" for key in encoder.model.state_dict()}
    state = {f"model.{key}": value for key, value in _read_state(init, weights).items()
             if f"model.{key}" in wanted}
    encoder = _backbone_with(arch, state, init, weights, encoder)
    return encoder, {"init": str(weights), "method": arch, "label": arch, "arch": arch,
                     "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD, "pretrain_seconds": None}


def _read_state(init, weights):
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a state_dict: say which file
        raise UserError(f"--init {init}: cannot load {weights}: {exc}") from None
    if not isinstance(state, dict):
        raise UserError(f"--init {init}: {weights} holds a {type(state).__name__}, not a state_dict")
    return state


def _backbone_with(arch, state, init, weights, encoder=None):
    """A backbone of `arch` holding `state`; a mismatch lists the missing and unexpected keys."""
    encoder = encoder or build_backbone(arch)
    missing, unexpected = _key_mismatch(encoder.state_dict(), state)
    if missing or unexpected:
        raise UserError(f"--init {init}: {weights} is not a {arch} encoder "
                        f"(missing keys: {_few(missing)}; unexpected keys: {_few(unexpected)})")
    encoder.load_state_dict(state)
    return encoder


def _few(keys, shown=8):
    if not keys:
        return "none"
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def rescale_to_data(encoder, images):
    """Krähenbühl et al. (2016)'s within-layer rescaling of an AlexNet encoder, in place: each convolution's output
    channels get zero mean and unit standard deviation over `images` (layer by layer, on the
    already rescaled layers below). It keeps what each filter responds to but undoes the scale
    drift of pretraining, and it revives channels whose ReLU never fires on these images.
    A channel constant over the images keeps its weights and only loses its mean."""
    was_training = encoder.training
    encoder.eval()
    x = images
    with torch.no_grad():
        for layer in encoder:
            if isinstance(layer, torch.nn.Conv2d):
                out = layer(x).transpose(0, 1).flatten(1)
                mean, std = out.mean(1), out.std(1)
                std = torch.where(std > 1e-6, std, torch.ones_like(std))
                layer.weight.div_(std.view(-1, 1, 1, 1))
                layer.bias.sub_(mean).div_(std)
            x = layer(x)
    encoder.train(was_training)
    return encoder


def _key_mismatch(expected, given):
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    return [f"{k} (shape)" for k in shapes] + missing, unexpected
