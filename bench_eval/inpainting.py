"""Semantic inpainting (paper §5.1, Table 1) with a context-encoder run: fill holes in any
images (`bench inpaint`) and score fills against the truth next to baselines (`bench eval-inpaint`).

Evaluation images are prepared as in pretraining, without the randomness: the shorter side is
rescaled to the run's load size and the centre image_size square is kept. Hole i is drawn from a
generator seeded by (seed, i), so every row of one evaluation is scored on the same pixels.
Scores are over the hole only, with pixels in [0, 1] (see hole_scores).
"""
import dataclasses
import math
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from bench_data.images import list_images
from bench_data.masks import MaskSampler
from bench_data.pixels import BAD_IMAGE_POLICIES, BAD_IMAGES_HELP, centre_crop, load_rgb, normalized_tensor, readable_only
from bench_data.toy_voc import data_root_or_toy
from pretrain.methods.context_encoder import ContextEncoder
from pretrain.runs import load_run
from bench_runtime.device import DEVICE_NAMES, device_name, resolve_device, seed_value
from bench_runtime import formats
from bench_runtime.errors import UserError
from bench_runtime.options import option
from bench_runtime.metrics import as_numpy
from bench_runtime.progress import progress_bar
from bench_runtime.readers import read_json
from bench_runtime.runfiles import environment_info, save_json, staged_run_dir, write_atomically
from . import inpaint_baselines as baselines

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

INPAINT_MASKS = ("central", "random-block", "random-region")
# Rows of an evaluation: per run, its network and nearest neighbours in its encoder's features;
# once, the classical references.
RUN_ROWS = ("network", "nn-features")
BASELINE_ROWS = ("mean-colour", "telea", "navier-stokes", "nn-hog")
ROWS = RUN_ROWS + BASELINE_ROWS
BASELINE_LABELS = {"mean-colour": "mean colour fill", "telea": "OpenCV Telea",
                   "navier-stokes": "OpenCV Navier-Stokes", "nn-hog": "nearest neighbour, HOG features"}
GRID_IMAGES = 8


class Inpainter:
    """A trained context encoder (its generator, from the run's checkpoint) ready to fill holes."""

    def __init__(self, run, device="cpu"):
        config, method = load_run(run)
        if not isinstance(method, ContextEncoder):
            raise UserError(f"--run {run} is a {config.method} run; inpainting needs a context-encoder run")
        self.run_dir, self.config, self.device = Path(run).resolve(), config, resolve_device(device)
        self.name = self.run_dir.name
        encoder_info = self.run_dir / "encoder.json"  # written when the run finished
        self.pretrain_seconds = read_json(encoder_info).get("pretrain_seconds") if encoder_info.is_file() else None
        self.method = method.to(self.device)
        # Runs that differ only in their seed share a label, so the table averages over them.
        precision = "" if config.precision == "fp32" else f", {config.precision}"
        self.label = f"context encoder ({config.mask}), {self.method.options.loss}, {config.arch}{precision}"
        self.mean = torch.tensor(self.method.input_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(self.method.input_std).view(1, 3, 1, 1)

    def _batches(self, images, holes, batch_size):
        for start in range(0, len(images), batch_size):
            image = torch.stack([normalized_tensor(x, self.mean[0], self.std[0])
                                 for x in images[start:start + batch_size]]).to(self.device)
            hole = torch.from_numpy(holes[start:start + batch_size]).float().unsqueeze(1).to(self.device)
            yield image, hole

    @torch.no_grad()
    def fill(self, images, holes, batch_size=32):
        """(N, S, S, 3) uint8 images, (N, S, S) bool holes -> completed (N, S, S, 3) floats in [0, 1]."""
        filled = [self.method.complete(image, hole).cpu() * self.std + self.mean
                  for image, hole in self._batches(images, holes, batch_size)]
        return torch.cat(filled).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    @torch.no_grad()
    def features(self, images, hole, batch_size=32):
        """(N, D) encoder features of `images` with `hole` dropped, as the network saw its inputs;
        L2-normalised so that distances compare patterns rather than activation scale."""
        holes = np.repeat(hole[None], len(images), axis=0)
        out = torch.cat([self.method.encoder(self.method.fill_holes(image, h)).flatten(1).cpu()
                         for image, h in self._batches(images, holes, batch_size)])
        return torch.nn.functional.normalize(out, dim=1).numpy()


def load_inpainters(runs, device):
    inpainters = [Inpainter(run, device) for run in runs]
    first = inpainters[0].config
    for other in inpainters[1:]:
        if (other.config.image_size, other.config.load_size) != (first.image_size, first.load_size):
            raise UserError(f"runs to compare must share image and load sizes: {other.name} has "
                            f"{other.config.image_size}/{other.config.load_size} px, {inpainters[0].name} "
                            f"{first.image_size}/{first.load_size} px")
    return inpainters


def hole_sampler(run, mask, mask_dir):
    """Masks of kind `mask` (default: the run's own) at the input size of `run` (an Inpainter)."""
    config = run.config
    mask = mask or config.mask
    if mask not in INPAINT_MASKS:
        raise UserError(f"--mask {mask!r} cannot be evaluated; choose from {', '.join(INPAINT_MASKS)}")
    mask_dir = mask_dir or config.mask_dir
    if mask == "random-region" and (not mask_dir or not Path(mask_dir).is_dir()):
        raise UserError(f"random-region holes need --mask-dir, a folder of VOC segmentation PNGs "
                        f"(the run's {mask_dir} is not there)")
    # The central hole keeps the band the network was trained with.
    band = run.method.hole_band if mask == "central" else 0
    return mask, MaskSampler.from_folder(mask, config.image_size, band, mask_dir)


def draw_holes(sampler, count, seed):
    holes = np.stack([sampler(np.random.default_rng([seed, i])) for i in range(count)])
    if not holes.any(axis=(1, 2)).all():
        raise UserError("a drawn hole is empty; use a larger image size or another --mask")
    return holes


def hole_scores(filled, original, hole):
    """Per-image scores of inpainted images over their holes.

    `filled`, `original`: (N, H, W, 3) floats in [0, 1]; `hole`: (N, H, W) bool, True where the
    pixels were dropped (every image must have at least one). Returns {l1, l2, psnr, ssim}, each
    an (N,) float64 array: mean |error|, mean squared error, 10 log10(1 / that MSE) (inf for an
    exact fill) and the mean of scikit-image's SSIM map (7x7 windows) over the hole pixels. The
    [0, 1] range is the paper's (Table 1): on [-1, 1] the numbers could not be compared with it.
    """
    filled, original = as_numpy(filled, np.float64), as_numpy(original, np.float64)
    hole = as_numpy(hole, bool)
    if filled.shape != original.shape or filled.ndim != 4 or filled.shape[-1] != 3:
        raise ValueError(f"filled and original must both be (N, H, W, 3); got {filled.shape} and {original.shape}")
    if hole.shape != filled.shape[:3]:
        raise ValueError(f"hole must be (N, H, W) = {filled.shape[:3]}; got {hole.shape}")
    pixels = hole.sum(axis=(1, 2)) * 3
    if (pixels == 0).any():
        raise ValueError("every image needs a non-empty hole")
    error = (filled - original) * hole[..., None]
    l1 = np.abs(error).sum(axis=(1, 2, 3)) / pixels
    l2 = (error ** 2).sum(axis=(1, 2, 3)) / pixels
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(1 / l2)
    ssim = np.array([
        structural_similarity(f, o, channel_axis=-1, data_range=1.0, full=True)[1][h].mean()
        for f, o, h in zip(filled, original, hole)])
    return {"l1": l1, "l2": l2, "psnr": psnr, "ssim": ssim}


def centre_crops(paths, image_size, load_size, progress=True, desc="loading images"):
    """(N, S, S, 3) uint8: shorter side rescaled to `load_size`, centre `image_size` square."""
    crops = np.empty((len(paths), image_size, image_size, 3), np.uint8)
    for i, path in enumerate(progress_bar(paths, desc=desc, unit="img", disable=not progress)):
        crops[i] = np.asarray(centre_crop(load_rgb(path, load_size), image_size))
    return crops


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass
class HoleOptions:
    """The runs whose networks fill the holes, and the holes."""
    run: list[str] = option([], "a context-encoder `bench pretrain` run folder; repeat to compare runs on the same "
                            "holes", required=True, repeat=True)
    mask: str | None = option(None, "hole kind (default: the run's own)", choices=INPAINT_MASKS)
    mask_dir: str | None = option(None, "VOC segmentation PNGs for random-region holes (default: the run's)")
    seed: int = option(0, "seed of the holes", check=seed_value)
    device: str = option("auto", DEVICE_NAMES, check=device_name)
    overwrite: bool = option(False, "replace an existing --out folder (only one bench wrote)")

    def input_paths(self):
        """(option, path) of the data the command reads: its --out must lie apart from them."""
        return [("--mask-dir", self.mask_dir)]

    def input_runs(self):
        """(option, path) of the runs whose networks fill the holes: --out must not replace them."""
        return [("--run", run) for run in self.run]


@dataclass
class InpaintConfig(HoleOptions):
    """fill holes in your own images with a trained context encoder

    Fill holes in images of any size. Each image's largest centred square is rescaled to the
    network's input size, a hole is drawn and filled there, and the fill is rescaled back and pasted
    into the hole at full resolution (the context keeps its own pixels). Writes <out>/<image>.png:
    masked | fill of each --run | original."""
    images: str = option("", "an image file or a folder of images", required=True)
    out: str = option("", "new folder for the side-by-side PNGs", required=True)

    def input_paths(self):
        return [*super().input_paths(), ("--images", self.images)]


@dataclass
class EvalInpaintConfig(HoleOptions):
    """score inpainting against the truth, with baselines (the paper's Table 1)

    Fill the same holes in the images of --split with each --run's network and the baselines, and
    score each over the hole with pixels in [0, 1]: mean L1, mean L2, PSNR, SSIM. Writes
    <out>/<row>/record.json (read by `bench table`) and <out>/grid.png comparing every row on the
    same holes."""
    data_root: str | None = option(None, "a VOC root or folder of images; default: the toy VOC set")
    split: str = option("val", "image set evaluated (of a VOC root)")
    year: str | None = option(None, "VOC year folder (default: the newest present)")
    database_split: str = option("train", "image set the nearest-neighbour rows search (the evaluated images are "
                                 "left out)")
    rows: list[str] = option(list(ROWS), "network and nn-features: per --run; the others: classical baselines",
                             choices=ROWS, nargs="+")
    bad_images: str = option("fail", BAD_IMAGES_HELP, choices=BAD_IMAGE_POLICIES)
    out: str | None = option(None, "folder for the records (default: "
                             "runs/transfer/inpaint-<run>-<mask>-<split>-seed<seed>)")

    def input_paths(self):
        return [*super().input_paths(), ("--data-root", self.data_root)]

    def out_folder(self):
        mask = f"-{self.mask}" if self.mask else ""
        run = Path(self.run[0]).resolve().name
        return self.out or f"runs/transfer/inpaint-{run}{mask}-{self.split}-seed{self.seed}"


def inpaint(config, progress=True):
    """`bench inpaint`: the side-by-side PNGs of config.images in a new folder config.out."""
    if not Path(config.images).exists():
        raise UserError(f"--images {config.images} does not exist")
    with staged_run_dir(config.out, "inpaint", config.overwrite, inputs=config.input_paths(),
                        runs=config.input_runs()) as staging:
        written = inpaint_files(config, staging, progress)
    print(f"wrote {len(written)} side-by-side PNG(s) to {config.out}")


def evaluate(config, progress=True):
    """`bench eval-inpaint`: the records and grid in config.out_folder(), and the scores printed."""
    config = dataclasses.replace(config, data_root=data_root_or_toy(config.data_root))
    out = config.out_folder()
    with staged_run_dir(out, "eval-inpaint", config.overwrite, inputs=config.input_paths(),
                        runs=config.input_runs()) as staging:
        records = evaluate_inpainting(config, staging, progress)
    print(f"{'row':<60} {'L1 %':>6} {'L2 %':>6} {'PSNR dB':>8} {'SSIM':>6}")
    for record in records:
        m = record["metrics"]
        psnr = "inf" if m["psnr"] == "inf" else f"{m['psnr']:.2f}"
        print(f"{record['pretrain_label'][:60]:<60} {100 * m['l1']:>6.2f} {100 * m['l2']:>6.2f} {psnr:>8} "
              f"{m['ssim']:>6.3f}")
    print(f"records and grid.png in {out}")


def evaluate_inpainting(config, out_dir, progress=True):
    """Score every row of `config` (EvalInpaintConfig) on the same images and holes; write
    <out_dir>/<row>/record.json for each and <out_dir>/grid.png (the first images, one column per
    row). Returns the records."""
    rows, data_root, split, year, seed = config.rows, config.data_root, config.split, config.year, config.seed
    database_split, bad_images = config.database_split, config.bad_images
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise UserError(f"unknown inpainting rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    inpainters = load_inpainters(config.run, config.device)
    run_config = inpainters[0].config
    mask, sampler = hole_sampler(inpainters[0], config.mask, config.mask_dir)
    paths = readable_only(list_images(data_root, split, year), bad_images, f"{data_root} ({split})", progress)
    images = centre_crops(paths, run_config.image_size, run_config.load_size, progress, f"loading {split} images")
    holes = draw_holes(sampler, len(images), seed)
    database = None
    if {"nn-features", "nn-hog"} & set(rows):
        chosen = set(map(str, paths))
        database_paths = [p for p in readable_only(list_images(data_root, database_split, year), bad_images,
                                                   f"{data_root} ({database_split})", progress)
                          if str(p) not in chosen]  # an image must not find itself
        if not database_paths:
            raise UserError(f"nearest-neighbour rows need --database-split images other than the "
                            f"evaluated ones; {database_split} has none")
        database = centre_crops(database_paths, run_config.image_size, run_config.load_size, progress,
                                f"loading {database_split} images")

    fillers = []  # (row, label, Inpainter or None, function giving the filled images)
    for inpainter in inpainters:
        if "network" in rows:
            fillers.append(("network", inpainter.label, inpainter,
                            lambda i=inpainter: i.fill(images, holes)))
        if "nn-features" in rows:
            fillers.append(("nn-features", f"nearest neighbour, features of {inpainter.label}", inpainter,
                            lambda i=inpainter: baselines.nearest_neighbour_fill(
                                images, holes, database, i.features,
                                progress=progress and f"NN in {i.name} features")))
    classical = {"mean-colour": lambda: baselines.mean_colour_fill(images, holes),
                 "telea": lambda: baselines.opencv_fill(images, holes, "telea"),
                 "navier-stokes": lambda: baselines.opencv_fill(images, holes, "navier-stokes"),
                 "nn-hog": lambda: baselines.nearest_neighbour_fill(
                     images, holes, database, baselines.hog_context, baselines.hog_blocks,
                     progress and "NN in HOG features")}
    fillers += [(row, BASELINE_LABELS[row], None, classical[row]) for row in BASELINE_ROWS if row in rows]

    original = images.astype(np.float32) / 255
    setting = {"data_root": str(data_root), "test_split": split, "year": year, "mask": mask, "seed": seed,
               "image_size": run_config.image_size, "load_size": run_config.load_size, "images": len(images),
               "database_split": database_split if database is not None else None}
    records, grid_columns = [], []
    for row, label, run, fill in fillers:
        started = time.perf_counter()
        filled = fill()
        scores = {name: values.mean() for name, values in hole_scores(filled, original, holes).items()}
        folder = out_dir / (f"{row}-{_slug(run.name)}" if run else row)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"task": "inpaint", "protocol": row, "pretrain_label": label,
                  "run": str(run.run_dir) if run else None, "pretrain_seed": run.config.seed if run else None,
                  "pretrain_seconds": run.pretrain_seconds if run else 0.0, **setting,
                  "metric": "l1", "value": float(scores["l1"]),
                  "metrics": {name: _json_number(value) for name, value in scores.items()},
                  "wall_seconds": round(time.perf_counter() - started, 1), "environment": environment_info()}
        save_json(formats.stamped("record", record), folder / "record.json")
        records.append(record)
        grid_columns.append((label, filled[:GRID_IMAGES]))
    masked = np.where(holes[:GRID_IMAGES, ..., None], 1.0, original[:GRID_IMAGES])
    write_atomically(out_dir / "grid.png", lambda tmp: _grid(
        [("masked input", masked), *grid_columns, ("original", original[:GRID_IMAGES])], tmp))
    return records


def _json_number(value):
    """inf (an exact fill's PSNR) as the string "inf": JSON has no infinity."""
    return "inf" if math.isinf(value) else float(value)


GRID_DPI = 100


def _grid(columns, path):
    """Images in rows, one titled column per entry of `columns` [(title, (N, H, W, 3))], each
    picture at about its own pixel size (no upscaling, so the PNG stays small)."""
    count, side = len(columns[0][1]), columns[0][1].shape[1]
    cell = side / GRID_DPI
    figure, axes = plt.subplots(count, len(columns), figsize=(cell * len(columns), cell * count + 0.6),
                                squeeze=False)
    for col, (title, pictures) in enumerate(columns):
        axes[0, col].set_title("\n".join(textwrap.wrap(title, 22)), fontsize=6)
        for row in range(count):
            axes[row, col].imshow(pictures[row])
            axes[row, col].axis("off")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=GRID_DPI)
    plt.close(figure)


def inpaint_files(config, out_dir, progress=True):
    """Fill holes in a user's own images (`config`: InpaintConfig) at their own size. Each image's
    largest centred square is rescaled to the network's input size, a hole is drawn there and
    filled, and the fill is rescaled back and pasted into the hole at full resolution, so the
    context keeps its original pixels. Writes <out_dir>/<name>.png: masked | each run's fill |
    original, side by side."""
    inpainters = load_inpainters(config.run, config.device)
    _, sampler = hole_sampler(inpainters[0], config.mask, config.mask_dir)
    source = Path(config.images)
    paths = [source] if source.is_file() else list_images(source)
    side = inpainters[0].config.image_size
    seed = config.seed
    written = []
    for i, path in enumerate(progress_bar(paths, desc="inpainting", unit="img", disable=not progress)):
        picture = np.asarray(load_rgb(path))
        square = min(picture.shape[:2])
        top, left = (picture.shape[0] - square) // 2, (picture.shape[1] - square) // 2
        crop = Image.fromarray(picture[top:top + square, left:left + square]).resize((side, side), Image.BICUBIC)
        hole = sampler(np.random.default_rng([seed, i]))
        big_hole = np.zeros(picture.shape[:2], bool)
        big_hole[top:top + square, left:left + square] = np.asarray(
            Image.fromarray(hole).resize((square, square), Image.NEAREST))
        panels = [np.where(big_hole[..., None], 255, picture).astype(np.uint8)]
        for inpainter in inpainters:
            filled = inpainter.fill(np.asarray(crop)[None], hole[None])[0]
            big_fill = np.asarray(Image.fromarray((filled * 255).round().astype(np.uint8)).resize(
                (square, square), Image.BICUBIC))
            panel = picture.copy()
            region = panel[top:top + square, left:left + square]
            region[big_hole[top:top + square, left:left + square]] = big_fill[
                big_hole[top:top + square, left:left + square]]
            panels.append(panel)
        panels.append(picture)
        # Images of sub-folders keep their relative path in the name, so none is overwritten.
        name = path.stem if path == source else "__".join(path.relative_to(source).with_suffix("").parts)
        target = out_dir / f"{name}.png"
        Image.fromarray(np.concatenate(panels, axis=1)).save(target)
        written.append(target)
    return written
