"""Pretraining variants compared in-domain, one change at a time (issue 21): which change keeps a
context encoder (or an autoencoder) from destroying its own features. Each variant is one
`bench pretrain` run probed by kNN on a class-folder root (frozen pool5, plus the share of units
per layer that never fire) every --probe-every steps; at the end its encoder gets the in-domain
linear probe at every layer (`bench transfer --task probe`'s measurement). Finished runs are
skipped, so a stopped sweep continues.

    python -m experiments.probe_sweep --pretrain-data ../shared/data/imagenette/train \\
        --probe-data ../shared/data/imagenette --mask-dir ../shared/data/voc-masks/SegmentationClassAug \\
        --out runs/probe-sweep --results results/imagenet-subset-pets/in-domain-sweep

Writes into --results: probe_curves.png and .csv (variant, step, kNN top-1), sweep.md/.csv (per
variant: kNN at the start and end, linear top-1 at pool5 and its best layer, dead pool5 values).
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from benchmarks.cli import main as bench
from pretrain.curves import probe_comparison, probe_score_key, read_metrics
from pretrain.probe import ClassFolderProbe
from bench_runtime.device import resolve_device
from transfer.encoders import load_encoder
from benchmarks.table import markdown_table

BASE = ["--method", "context-encoder", "--mask", "random-region", "--image-size", "128", "--batch-size", "32",
        "--lr", "1e-4", "--seed", "0"]
# name -> options that replace the base's (one change each from the preset's context encoder).
VARIANTS = {
    "preset": [],
    "batchnorm": ["--encoder-norm", "batch"],
    "batchnorm lr1e-3": ["--encoder-norm", "batch", "--lr", "1e-3"],
    "lr1e-5": ["--lr", "1e-5"],
    "context-normalised": ["--target", "context-normalised"],
    "batchnorm context-normalised": ["--encoder-norm", "batch", "--target", "context-normalised"],
    "warmup": ["--warmup-steps", "100"],
    "small output": ["--output-scale", "0.1"],
    "no dropout": ["--dropout", "0"],
    "sgd": ["--optimizer", "sgd", "--lr", "1e-2"],
    "autoencoder": ["--method", "autoencoder"],
    "autoencoder batchnorm": ["--method", "autoencoder", "--encoder-norm", "batch"],
    "autoencoder batchnorm normalised": ["--method", "autoencoder", "--encoder-norm", "batch",
                                         "--target", "input-normalised"],
}


def with_changes(base, changes):
    """`base` options with those in `changes` replaced (or added)."""
    options = dict(zip(base[::2], base[1::2]))
    options.update(zip(changes[::2], changes[1::2]))
    return [item for pair in options.items() for item in pair]


def final_probe(run_dir, probe_root):
    """The in-domain probe of a run's saved encoder, linear at every layer; cached in run_dir."""
    cached = Path(run_dir) / "in_domain.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    encoder, info = load_encoder(run_dir)
    probe = ClassFolderProbe(probe_root, info["image_size"], info["input_mean"], info["input_std"])
    scores = probe(encoder, resolve_device("auto"), linear=True)
    cached.write_text(json.dumps(scores, indent=1))
    return scores


def summarise(runs, probe_root, results):
    results.mkdir(parents=True, exist_ok=True)
    probe_comparison({name: [run_dir] for name, run_dir in runs.items()}, results / "probe_curves.png",
                     "Pretraining variants, seed 0: in-domain kNN probe of frozen pool5")
    rows = []
    for name, run_dir in runs.items():
        probes = read_metrics(run_dir)[1]
        knn = probes[probe_score_key(probes)]
        final = final_probe(run_dir, probe_root)
        linear = {k.removeprefix("linear_top1_"): v for k, v in final.items() if k.startswith("linear_top1_")}
        best = max(linear, key=linear.get)
        rows.append({"variant": name, "steps": int(knn.index[-1]), "kNN step 0": 100 * knn.iloc[0],
                     "kNN final": 100 * final["probe_knn_top1"], "linear pool5": 100 * linear["pool5"],
                     "best linear layer": f"{best} {100 * linear[best]:.1f}",
                     "dead pool5 (%)": 100 * final["dead_pool5"],
                     "dead conv (%)": " ".join(f"{100 * final[f'dead_conv{i}']:.0f}" for i in range(1, 6))})
    table = pd.DataFrame(rows).round(1)
    table.to_csv(results / "sweep.csv", index=False)
    (results / "sweep.md").write_text(markdown_table(table))
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-data", required=True)
    parser.add_argument("--probe-data", required=True, help="a class-folder root (train/<class>/, val/<class>/)")
    parser.add_argument("--mask-dir", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--probe-every", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/probe-sweep")
    parser.add_argument("--results", required=True)
    args = parser.parse_args(argv)
    runs = {}
    for name in args.variants:
        run_dir = Path(args.out) / f"{name.replace(' ', '-')}-{args.steps}"
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
        final_probe(run_dir, args.probe_data)
        print(summarise(runs, args.probe_data, Path(args.results)).to_string(index=False), flush=True)
    print(summarise(runs, args.probe_data, Path(args.results)).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
