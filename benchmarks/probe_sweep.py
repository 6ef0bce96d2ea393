"""One-seed pretraining variants of the context encoder compared by their kNN probe curves (issue 12,
item 5): which of learning rate, hole kind, image size and optimiser changes whether pretraining
helps the frozen features. Each variant is one `bench pretrain` run with --probe-data; finished runs
are skipped, so a stopped sweep continues.

    python -m benchmarks.probe_sweep --pretrain-data ../shared/data/imagenette/train \
        --probe-data ../shared/data/pets-voc --mask-dir ../shared/data/voc-masks/SegmentationClassAug \
        --out runs/probe-sweep --results results/imagenet-subset-pets/probe-sweep

Writes into --results: probe_curves.png and .csv (variant, step, mAP), probe_sweep.md/.csv (start,
best, final and the share of pool5 channels silent on the probe images at the end).
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

from benchmarks.cli import main as bench
from pretrain.backbones import frozen_features
from pretrain.curves import PROBE_KEY, probe_comparison, read_metrics
from pretrain.probe import KNNProbe
from transfer.encoders import load_encoder
from .table import markdown_table

BASE = ["--method", "context-encoder", "--mask", "random-region", "--image-size", "128", "--batch-size", "32",
        "--lr", "1e-4", "--seed", "0"]
# name -> options that replace the base's (one change each from the preset's context encoder).
VARIANTS = {
    "adam-1e-4 (preset)": [],
    "adam-1e-3": ["--lr", "1e-3"],
    "adam-1e-5": ["--lr", "1e-5"],
    "central holes": ["--mask", "central"],
    "160 px": ["--image-size", "160"],
    "sgd 1e-2": ["--optimizer", "sgd", "--lr", "1e-2"],
}


def with_changes(base, changes):
    """`base` options with those in `changes` replaced (or added)."""
    options = dict(zip(base[::2], base[1::2]))
    options.update(zip(changes[::2], changes[1::2]))
    return [item for pair in options.items() for item in pair]


def silent_channels(run_dir, probe_root):
    """Share of the encoder's output channels that are zero on every probe image and position."""
    encoder, info = load_encoder(run_dir)
    probe = KNNProbe(probe_root, info["image_size"], info["input_mean"], info["input_std"])
    features = frozen_features(encoder, probe.images[probe.test_split])
    return float((features.amax(dim=(0, 2, 3)) <= 0).float().mean())


def summarise(runs, probe_root, results):
    results.mkdir(parents=True, exist_ok=True)
    probe_comparison({name: [run_dir] for name, run_dir in runs.items()}, results / "probe_curves.png",
                     "Context encoder variants, seed 0: frozen pool5 kNN probe")
    rows = []
    for name, run_dir in runs.items():
        probes = read_metrics(run_dir)[1][PROBE_KEY]
        rows.append({"variant": name, "step 0": 100 * probes.iloc[0], "best": 100 * probes.max(),
                     "best at step": int(probes.idxmax()), "final": 100 * probes.iloc[-1],
                     "final step": int(probes.index[-1]),
                     "silent pool5 channels (%)": 100 * silent_channels(run_dir, probe_root)})
    table = pd.DataFrame(rows).round(1)
    table.to_csv(results / "probe_sweep.csv", index=False)
    (results / "probe_sweep.md").write_text(markdown_table(table))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-data", required=True)
    parser.add_argument("--probe-data", required=True)
    parser.add_argument("--mask-dir", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/probe-sweep")
    parser.add_argument("--results", required=True)
    args = parser.parse_args(argv)
    runs = {}
    for name in args.variants:
        run_dir = Path(args.out) / name.split(" (")[0].replace(" ", "-")
        runs[name] = run_dir
        if (run_dir / "encoder.pt").is_file():
            continue
        options = with_changes(BASE, VARIANTS[name]) + [
            "--data-root", args.pretrain_data, "--mask-dir", args.mask_dir, "--steps", str(args.steps),
            "--probe-data", args.probe_data, "--probe-every", str(args.probe_every), "--out", str(run_dir)]
        resume = ["--resume"] if (run_dir / "checkpoint.pt").is_file() else []
        print(f"variant {name}: bench pretrain {' '.join(options)}", flush=True)
        if bench(["pretrain", *(options if not resume else ["--out", str(run_dir)]), *resume]) != 0:
            return 1
    print(summarise(runs, args.probe_data, Path(args.results)).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
