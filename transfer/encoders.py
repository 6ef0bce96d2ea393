"""What `--init` means: a pretraining run folder, an encoder file, `random`, or weights from
torchvision or timm."""
from functools import partial
from pathlib import Path

import torch

from pretrain.backbones import TIMM_PREFIX, build_backbone, is_backbone_arch, label_with_arch
from pretrain.train import control_settings, saved_run_settings
from bench_runtime import formats
from bench_runtime.errors import UserError
from bench_runtime.identity import data_name, identity
from bench_runtime.readers import read_json, read_torch

RANDOM = "random"
# No pretraining, three ways (AlexNet): He-normal; plain Gaussian weights as in Caffe's AlexNet
# definitions (N(0, 0.01^2), zero biases), not rescaled; Krähenbühl et al.'s data-dependent init
# (He-normal, then every unit standardised on the training images, see standardize_units). The
# paper's "Random Gaussian" row (53.3 / 43.4 / 19.8, "< 1 minute") is the last: Krähenbühl et al.'s
# Gaussian init with their data-dependent scaling, whose numbers it cites; plain N(0, 0.01^2)
# weights take no time to make, and un-rescaled they do not fine-tune here at all.
RANDOM_GAUSSIAN, RANDOM_KRAEHENBUEHL = "random-gaussian", "random-kraehenbuehl"
RANDOM_INITS = {RANDOM: "random", RANDOM_GAUSSIAN: "random Gaussian 0.01, not rescaled",
                RANDOM_KRAEHENBUEHL: "random + Krähenbühl init (the paper's Random Gaussian)"}
TORCHVISION_PREFIX = "torchvision-alexnet:"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def load_encoder(init):
    """Return (backbone module, info), info with the encoder's identity (bench_runtime.identity): that of
    its pretraining run, or of the init's kind and arch.

    `init` is one of
      a run folder written by `bench pretrain`, or an encoder.pt with its encoder.json beside it;
      "random" or "random:<arch>" (e.g. random:timm:resnet18): freshly initialised, no
          pretraining (for AlexNet He-normal weights);
      "random-gaussian": AlexNet with plain Gaussian weights (N(0, 0.01^2), zero biases), not rescaled;
      "random-kraehenbuehl": AlexNet, He-normal, marked for Krähenbühl's data-dependent init
          (info["data_init"]; the task standardises every unit on its training images): the
          paper's "Random Gaussian" row;
      "torchvision-alexnet:PATH": a torchvision AlexNet state_dict file (its ImageNet weights, or
          `bench export --to torchvision`), whose `features.*` weights are used;
      "timm:<model>:PATH": a timm model's state_dict file (its ImageNet weights, or
          `bench export --to timm`), cut to its feature stages.
    info holds method, label, arch, input_mean/input_std (None for random: use the data's own),
    pretrain_seconds and pretrain_flops (None where not known), the source path, and identity,
    settings and control_identity (None where there is no pretraining to control).
    """
    encoder, info = _load(str(init))
    if "identity" not in info:  # no pretraining run: the init's kind is the whole experiment
        settings = {"init": info["method"], "arch": info["arch"],
                    **({"weights": Path(info["init"]).name} if info["pretrain_seconds"] is None else {})}
        info = {**info, "identity": identity(settings), "settings": settings, "control_identity": None}
    return encoder, info


def _load(init):
    if init in (RANDOM_GAUSSIAN, RANDOM_KRAEHENBUEHL):
        encoder = build_backbone("alexnet")
        if init == RANDOM_GAUSSIAN:
            for layer in encoder.modules():
                if isinstance(layer, torch.nn.Conv2d):
                    torch.nn.init.normal_(layer.weight, 0.0, 0.01)
                    torch.nn.init.zeros_(layer.bias)
        return encoder, {"init": init, "method": init, "label": RANDOM_INITS[init], "arch": "alexnet",
                         "input_mean": None, "input_std": None, "pretrain_seconds": 0.0, "pretrain_flops": 0.0,
                         "data_init": init == RANDOM_KRAEHENBUEHL}
    if init == RANDOM or init.startswith(f"{RANDOM}:"):
        arch = init.removeprefix(RANDOM).removeprefix(":") or "alexnet"
        return build_backbone(arch), {"init": init, "method": RANDOM, "label": label_with_arch(RANDOM, arch),
                                      "arch": arch, "input_mean": None, "input_std": None,
                                      "pretrain_seconds": 0.0, "pretrain_flops": 0.0}
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
    meta = read_encoder_json(meta_path)
    _check_normalisation(meta, meta_path)
    arch = meta.get("arch", "")
    if not is_backbone_arch(arch):
        raise UserError(f"--init {init}: transfer needs an alexnet or timm encoder, this one is {arch!r}")
    encoder = _backbone_with(arch, _read_state(init, weights), init, weights)
    return encoder, {"init": str(weights.parent if path.is_dir() else weights), **meta}


def read_encoder_json(path):
    """A run's encoder.json in today's format (bench_runtime.formats)."""
    return formats.upgrade("encoder", read_json(path), path, {1: partial(_encoder_from_version_1, Path(path))})


def _encoder_from_version_1(path, meta):
    """An encoder.json from before identities: the identity of the run's settings, from its
    config.json when that is beside it, else from what encoder.json itself records (its method,
    options, size, steps, input statistics: runs that differ only elsewhere then share a row)."""
    config_path = path.with_name("config.json")
    if config_path.is_file():
        settings = saved_run_settings(path.parent)
    else:
        settings = {key: meta.get(key) for key in ("method", "arch", "image_size", "mask", "method_options",
                                                    "input_mean", "input_std", "steps", "split")}
        settings["data"] = data_name(meta.get("data_root"))
    return {**meta, "identity": identity(settings), "settings": settings,
            "control_identity": identity(control_settings(settings))}


def _check_normalisation(meta, path):
    """An encoder.json's input_mean and input_std: each absent, null or three numbers."""
    for key in ("input_mean", "input_std"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3
                                      and all(isinstance(v, (int, float)) for v in value)):
            raise UserError(f"{path}: {key} must be three numbers (one per colour channel), not {value!r}")


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
    state = read_torch(weights, map_location="cpu")
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


def pretrained_image_size(init):
    """The input size an encoder was pretrained at (its encoder.json), or None (random inits,
    downloaded weights)."""
    path = Path(str(init))
    meta = (path if path.is_dir() else path.parent) / "encoder.json"
    if str(init) in RANDOM_INITS or str(init).startswith((f"{RANDOM}:", TORCHVISION_PREFIX, TIMM_PREFIX)) \
            or not meta.is_file():
        return None
    return read_encoder_json(meta).get("image_size")


def _affine_layers(layers):
    return [layer for layer in layers if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))]


@torch.no_grad()
def standardize_units(layers, inputs, per_layer=False, max_gain=None):
    """Data-dependent scaling of the convolutions and linear layers in `layers` (applied in order,
    in eval mode, to `inputs`), in place, each measured on the already scaled layers below it.

    per_layer=False: Krähenbühl et al. (2016)'s within-layer init. Every output unit gets zero mean
        and unit standard deviation over the inputs (weights divided by its std, its mean removed
        from the bias). For layers that have no learned weights: fresh heads and random networks.
    per_layer=True: one factor per layer (between-layer calibration). Weights and bias are divided
        by the std of the layer's output over all its units, so each unit keeps its mean and its
        scale relative to the others: what a pretrained layer learned survives, only its overall
        scale changes (through ReLUs and max pooling the features above change by the same factor).
    A unit or layer constant over the inputs keeps its scale; with `max_gain` no weight is
    multiplied by more than that.
    """
    training = [(module, module.training) for module in layers]
    for module in layers:
        module.eval()
    x = inputs
    for layer in layers:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            out = layer(x).transpose(0, 1).flatten(1)  # (units, samples)
            mean, std = (out.mean(), out.std()) if per_layer else (out.mean(1), out.std(1))
            std = torch.where(std > 1e-6, std, torch.ones_like(std))
            if max_gain is not None:
                std = std.clamp(min=1 / max_gain)
            shape = (-1,) + (1,) * (layer.weight.dim() - 1)
            layer.weight.div_(std.view(shape) if std.dim() else std)
            if per_layer:
                layer.bias.div_(std)
            else:
                layer.bias.sub_(mean).div_(std)
        x = layer(x)
    for module, was_training in training:
        module.train(was_training)
    return x


# The most a fresh head's init is scaled up. On pets-voc at 128 px the pretrained and He-initialised
# encoders need at most 23x (cls, seg and det heads); the Random Gaussian encoder's vanishing pool5
# (rms 0.005) would need ~2,000x, and a head that loud amplifies the gradients into the encoder
# until fine-tuning diverges.
MAX_HEAD_GAIN = 100.0


def calibrate_fresh_head(layers, features):
    """Krähenbühl's data-dependent init for the fresh layers of a task head (fc6, fc7 and their
    convolutional forms), on the encoder's features of training images: whatever the encoder's
    output scale (a pretrained pool5 is often far smaller than a He-initialised one's), fc6 and
    fc7 start with unit-variance pre-activations, up to a gain of MAX_HEAD_GAIN. The last (class)
    layer keeps its default init."""
    affine = _affine_layers(layers)
    if affine:
        last = list(layers).index(affine[-1])
        standardize_units(list(layers)[:last], features, max_gain=MAX_HEAD_GAIN)


def _key_mismatch(expected, given):
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    return [f"{k} (shape)" for k in shapes] + missing, unexpected
