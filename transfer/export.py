"""`bench export`: an encoder in the checkpoint layout of another framework.

torchvision  {"features.<i>.weight": tensor, ...}, a torch.save'd state_dict; loads into
             torchvision.models.alexnet() with strict=False (only its classifier stays missing).
detectron2   a pickle of {"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True},
             the form detectron2's DetectionCheckpointer reads for converted third-party weights.
             detectron2 has no AlexNet, so the five convolutions are named conv1..conv5
             (conv<k>.weight / conv<k>.bias) for a backbone that names its layers the same way.
timm         for a timm backbone (--arch timm:<name>): the state_dict of timm.create_model(<name>)
             minus its classifier, which loads into that model with strict=False. timm has no AlexNet.
"""
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.backbones import TIMM_PREFIX
from bench_runtime.errors import UserError
from bench_runtime.options import option
from bench_runtime.runfiles import check_apart_from_inputs, output_kind, save_torch, write_atomically
from .encoders import load_encoder

# The encoders each layout holds: AlexNet (torchvision first: it is what an AlexNet is told to use) or timm models.
LAYOUT_FAMILY = {"torchvision": "alexnet", "detectron2": "alexnet", "timm": "timm:<model>"}
FORMATS = tuple(LAYOUT_FAMILY)


def torchvision_state(encoder):
    return {f"features.{key}": value.detach().cpu().clone() for key, value in encoder.state_dict().items()}


def timm_state(encoder):
    """The timm backbone's weights under the names of the full timm model."""
    return {key: value.detach().cpu().clone() for key, value in encoder.model.state_dict().items()}


def detectron2_checkpoint(encoder):
    convolutions = [i for i, layer in enumerate(encoder) if isinstance(layer, torch.nn.Conv2d)]
    model = {}
    for number, index in enumerate(convolutions, start=1):
        for kind in ("weight", "bias"):
            model[f"conv{number}.{kind}"] = getattr(encoder[index], kind).detach().cpu().numpy().copy()
    return {"model": model, "__author__": "context-encoder-bench", "matching_heuristics": True}


@dataclass
class ExportConfig:
    """write an encoder in torchvision's, timm's or detectron2's checkpoint layout

    Convert the encoder of a `bench pretrain` run (or an encoder.pt) for use outside the suite.
    torchvision: a state_dict with features.<i> names that loads into torchvision.models.alexnet()
    with strict=False. timm (timm:<model> encoders): the timm model's state_dict without its
    classifier. detectron2: a pickle of NumPy arrays named conv1..conv5 with detectron2's checkpoint
    fields."""
    run: str = option("", "a `bench pretrain` run folder or an encoder.pt", required=True)
    to: str = option("torchvision", "target checkpoint layout", choices=FORMATS, required=True)
    out: str = option("", "file to write (.pth for torchvision and timm, .pkl for detectron2)", required=True)
    overwrite: bool = option(False, "replace an existing --out file (never one inside the run exported)")


def export(config):
    """`bench export`: write the file and say so."""
    out = export_encoder(config.run, config.to, Path(config.out), config.overwrite)
    print(f"wrote {out} ({config.to} layout)")


def export_encoder(init, to, out, overwrite=False):
    """Write the encoder of `init` (a run folder or encoder.pt) to `out` in format `to`."""
    if to not in FORMATS:
        raise UserError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; name the file to write, e.g. {out / 'encoder.pth'}")
    # A file of the run being exported (its encoder.pt) is never replaced: the run needs it.
    source = Path(init)
    run_folder = source if source.is_dir() or output_kind(source.parent) is None else source.parent
    check_apart_from_inputs(out, [("--run", run_folder)])
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    encoder, info = load_encoder(init)
    # Each layout holds one family: a backbone of any other is refused, not written under wrong names.
    family = "timm:<model>" if info["arch"].startswith(TIMM_PREFIX) else info["arch"]
    if family != LAYOUT_FAMILY[to]:
        other = next((f" (export it --to {layout})" for layout, held in LAYOUT_FAMILY.items() if held == family), "")
        raise UserError(f"the encoder of {init} is {info['arch']!r}; --to {to} takes {LAYOUT_FAMILY[to]} "
                        f"encoders only{other}")
    if to == "torchvision":
        save_torch(torchvision_state(encoder), out)
    elif to == "timm":
        save_torch(timm_state(encoder), out)
    else:
        checkpoint = detectron2_checkpoint(encoder)
        write_atomically(out, lambda tmp: tmp.write_bytes(pickle.dumps(checkpoint)))
    return out
