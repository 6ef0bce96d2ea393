"""What a user sees: progress as whole lines with rate and ETA when the output is not a terminal,
--quiet and --verbose on every command, results alone on stdout, `bench --version`, an example at
the end of every command's --help, and the pictures of transfer runs (loss curve, predictions)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.cli import EXAMPLES
from bench_data.toy_voc import voc_palette
from bench_data.voc import VOCSegmentation
from helpers import bench

FAST_PRETRAIN = ["--image-size", 64, "--batch-size", 4, "--steps", 3, "--workers", 0, "--mask", "central"]
COMMANDS = sorted(EXAMPLES)  # every command and sub-command, by its path after `bench`


def test_progress_outside_a_terminal_is_whole_lines_with_rate_and_eta(toy_voc_root, tmp_path, capsys):
    # Under pytest stderr is not a terminal, as in a CI log or `bench ... 2> log`.
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", tmp_path / "run", *FAST_PRETRAIN) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err
    lines = err.splitlines()
    assert "" not in lines
    last = [line for line in lines if line.startswith("pretraining context-encoder:")][-1]
    # count, elapsed < remaining (the ETA), rate
    assert re.fullmatch(r"pretraining context-encoder: 100% 3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(step/s|s/step).*\]",
                        last), last
    assert out.startswith("run folder: ")  # results on stdout, progress on stderr
    assert "step/s" not in out and "%" not in out


def test_quiet_leaves_results_and_errors_only(toy_voc_root, tmp_path, capsys):
    assert bench("pretrain", "--quiet", "--data-root", toy_voc_root, "--out", tmp_path / "run", *FAST_PRETRAIN) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("run folder: ")
    assert bench("pretrain", "-q", "--data-root", toy_voc_root, "--out", tmp_path / "run", *FAST_PRETRAIN) == 2
    assert capsys.readouterr().err.startswith("error: run folder")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_quiet_and_verbose_and_ends_its_help_with_an_example(command, capsys):
    assert bench(*command.split(), "--quiet", "--verbose") == 2  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err
    assert bench(*command.split(), "--help") == 0
    help_text = capsys.readouterr().out
    assert help_text.rstrip().splitlines()[-1] == f"example: {EXAMPLES[command]}"
    assert f"{EXAMPLES[command]} ".startswith(f"bench {command} ")  # its own example, not a namesake's
    assert "--quiet" in help_text and "--verbose" in help_text


def test_version(capsys):
    assert bench("--version") == 0
    assert re.match(r"bench \d+\.\d+\.\d+ \(commit \w+\), torch \d", capsys.readouterr().out)


def test_a_closed_stdout_ends_the_command_quietly():
    """`bench methods | head -1` and the like: the reader goes away, bench stops without a traceback."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.cli", "methods"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # before bench writes anything
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and b"Traceback" not in err, err.decode()


def test_transfer_runs_write_their_loss_curve(toy_voc_root, tmp_path):
    out = tmp_path / "cls"
    assert bench("transfer", "--task", "cls", "--data-root", toy_voc_root, "--out", out, "--image-size", 64,
                 "--steps", 3, "--batch-size", 4, "--fc-width", 16, "--workers", 0) == 0
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["loss"] > 0 for s in steps)
    with Image.open(out / "loss.png") as image:
        assert image.size[0] > 300 and image.getextrema() != ((255, 255),) * len(image.getbands())


def test_segmentation_writes_predictions_beside_the_ground_truth(toy_voc_root, tmp_path):
    out = tmp_path / "seg"
    assert bench("transfer", "--task", "seg", "--data-root", toy_voc_root, "--out", out, "--image-size", 64,
                 "--steps", 2, "--batch-size", 4, "--fc-width", 16, "--workers", 0) == 0
    with Image.open(out / "predictions.png") as image:
        grid = np.asarray(image.convert("RGB"))
    # 3 rows (image, truth, prediction) of min(6, test images) 128 px tiles, 2 px padding
    columns = min(6, len(VOCSegmentation(toy_voc_root, "val", year=2012)))
    assert grid.shape == (3 * 130 + 2, columns * 130 + 2, 3)
    truth = grid[132:260, 2:130]
    palette = {tuple(c) for c in np.asarray(voc_palette(), np.uint8).reshape(-1, 3)[:21]} | {(255, 255, 255)}
    assert {tuple(c) for c in truth.reshape(-1, 3)} <= palette  # class colours and void only
    assert len({tuple(c) for c in truth.reshape(-1, 3)}) >= 2  # background and at least one object
