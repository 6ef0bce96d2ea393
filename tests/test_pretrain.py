"""`bench pretrain` end to end on the generated toy VOC set: run folder, learning, encoder export,
checkpoints, resume/overwrite rules, the inpainting GAN variant and user errors."""
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from bench_data.masks import central_mask
from pretrain.methods import get_method
from pretrain.runs import build_method, build_pretraining, fixed_batch_step, load_run, resolve_pretraining
from pretrain.train import PretrainConfig, load_run_config
from bench_runtime.engine import read_checkpoint
from bench_runtime.errors import UserError
from bench_runtime.options import flag
from bench_runtime.runfiles import save_torch
from helpers import bench as run_bench

# The main alexnet run on the toy VOC set.
STEPS = 20
BATCH = 8
LR = "1e-3"
PREVIEW_EVERY = 10
RUN_FILES = ["config.json", "metrics.jsonl", "checkpoint.pt", "encoder.pt", "encoder.json", "preview.png"]


def bench(*args):
    """Exit status of `bench pretrain ARGS`."""
    return run_bench("pretrain", *args)


def alexnet_args(root, out, *extra):
    return ["--data-root", root, "--out", out, "--image-size", 96, "--workers", 0, *extra]


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def fresh_method(run_dir, seed):
    """A new method built from the run's config.json under torch seed `seed`, in eval mode."""
    config = load_run_config(run_dir)
    torch.manual_seed(seed)
    return get_method(config.method)(config, config.dataset_mean, config.dataset_std).eval()


def load_method(run_dir):
    """The run's method with its checkpoint.pt loaded (load_run), in eval mode; and the checkpoint."""
    return load_run(run_dir)[1], read_checkpoint(run_dir / "checkpoint.pt")


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def central_run(toy_voc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("central") / "run"
    rc = bench(*alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", STEPS,
                             "--batch-size", BATCH, "--lr", LR, "--preview-every", PREVIEW_EVERY))
    return rc, out


@pytest.fixture(scope="module")
def straight_run(toy_voc_root, tmp_path_factory):
    """4 uninterrupted steps at batch 4: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert bench(*alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", 4,
                               "--batch-size", 4, "--lr", LR)) == 0
    return out


# ---------------------------------------------------------------- the main run

def test_central_run_writes_run_folder(central_run):
    rc, out = central_run
    assert rc == 0
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    previews = sorted(p.name for p in (out / "previews").glob("step_*.png"))
    assert previews == ["step_000010.png", "step_000020.png"]
    assert (out / "preview.png").read_bytes() == (out / "previews" / "step_000020.png").read_bytes()
    # Rows: masked input / prediction / original, 8 images each, 96 px tiles with 2 px padding.
    with Image.open(out / "preview.png") as grid:
        assert grid.size == (8 * 98 + 2, 3 * 98 + 2)

    config = json.loads((out / "config.json").read_text())
    assert config["images"] == 12  # VOC2012 train split of the toy set
    cfg = config["config"]
    assert (cfg["mask"], cfg["arch"], cfg["method_options"]["loss"], cfg["image_size"], cfg["batch_size"],
            cfg["steps"]) == ("central", "alexnet", "l2", 96, BATCH, STEPS)
    assert cfg["lr"] == float(LR) and cfg["load_size"] == round(96 * 1.15) and cfg["device"] == "cpu"
    assert len(cfg["dataset_mean"]) == 3 and all(0 < s < 1 for s in cfg["dataset_std"])
    assert set(config["environment"]) >= {"python", "torch", "torchvision", "numpy", "code_version", "threads"}
    assert config["environment"]["threads"] == torch.get_num_threads()

    encoder = json.loads((out / "encoder.json").read_text())
    assert encoder["arch"] == "alexnet" and encoder["method"] == "context-encoder"
    assert encoder["image_size"] == 96 and encoder["steps"] == STEPS and encoder["seed"] == 0
    assert encoder["input_mean"] == pytest.approx(cfg["dataset_mean"])
    assert encoder["input_std"] == pytest.approx(cfg["dataset_std"])


def test_metrics_one_line_per_step(central_run):
    _, out = central_run
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        assert np.isfinite(m["loss"]) and m["loss"] > 0
        assert m["loss"] == m["l2"]  # l2 only: no adversarial term
        assert "adv" not in m
    elapsed = [m["elapsed_s"] for m in metrics]
    assert elapsed == sorted(elapsed)


def write_centre_template_images(folder, n=12, side=96, seed=0):
    """A plain folder (not VOC) of images sharing one layout: a bluish gradient with an orange centre
    square, plus per-image colour jitter and pixel noise.

    The centre is far from the dataset mean, so a context encoder lowers its loss within a few dozen
    steps even before its output depends on the input. (On the toy VOC set the AlexNet encoder's output
    is still input-independent after 200 steps at 96 px, and its loss does not fall reliably.)
    """
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] / side
    quarter = side // 4
    for index in range(n):
        image = np.empty((side, side, 3))
        image[..., 0], image[..., 1], image[..., 2] = 0.2 + 0.2 * yy, 0.25 + 0.1 * xx, 0.45
        image[quarter:side - quarter, quarter:side - quarter] = (0.95, 0.7, 0.15)
        image += rng.normal(0, 0.05, size=3) + rng.normal(0, 0.03, size=image.shape)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return folder


def test_loss_goes_down(tmp_path):
    # lr 3e-4: measured last-10/first-10 ratios 0.09-0.14 over seeds 0, 3, 4 (1e-3 oscillates here).
    root = write_centre_template_images(tmp_path / "images")
    out = tmp_path / "run"
    assert bench("--data-root", root, "--out", out, "--mask", "central", "--image-size", 96,
                 "--load-size", 96, "--batch-size", 4, "--lr", "3e-4", "--steps", 30, "--workers", 0) == 0
    loss = np.array([m["loss"] for m in read_metrics(out)])
    assert len(loss) == 30 and np.isfinite(loss).all()
    first, last = loss[:10].mean(), loss[-10:].mean()
    assert last < 0.5 * first, (first, last)
    assert json.loads((out / "config.json").read_text())["images"] == 12


def test_encoder_pt_loads_into_torchvision_alexnet(central_run):
    _, out = central_run
    state = torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)
    features = torchvision.models.alexnet(weights=None).features
    features.load_state_dict(state, strict=True)
    features.eval()
    method, checkpoint = load_method(out)
    assert checkpoint["step"] == STEPS
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exported, trained = features(x), method.encoder(x)
    assert exported.shape == (2, 256, 2, 2)
    assert torch.equal(exported, trained)
    # The encoder was trained: it is not torchvision's random initialisation under the same seed.
    torch.manual_seed(0)
    untrained = torchvision.models.alexnet(weights=None).features.eval()
    with torch.no_grad():
        assert not torch.allclose(untrained(x), exported)


def test_load_run_gives_the_run_config_and_the_trained_method(central_run, tmp_path):
    _, out = central_run
    config, method = load_run(out)
    assert config == load_run_config(out) and config.method_options["overlap"] == 0  # resolved, as recorded
    assert not method.training and method.hole_band == 0  # its outputs: test_encoder_pt_loads_into_...
    with pytest.raises(UserError, match="not a `bench pretrain` run folder"):
        load_run(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(out / "config.json", unfinished)
    with pytest.raises(UserError, match="checkpoint.pt is missing"):
        load_run(unfinished)


def test_fixed_batch_step_repeats_its_batch_for_a_seed():
    config = PretrainConfig(image_size=64, batch_size=2, mask="central", device="cpu", dataset_mean=[0.5] * 3,
                            dataset_std=[0.25] * 3)
    context = resolve_pretraining(config, paths=[])

    def losses(seed, steps=2):
        torch.manual_seed(0)  # the same initial weights and dropout every time
        step = fixed_batch_step(build_method(context.recorded(config)), config, context, central_mask(64), seed=seed)
        return [step()["loss"] for _ in range(steps)]

    first = losses(seed=0)
    assert losses(seed=0) == first and first[1] != first[0]  # the same batch; the weights were stepped
    assert losses(seed=1, steps=1) != first[:1]  # another seed, another batch
    with pytest.raises(ValueError, match="needs its `hole`"):
        fixed_batch_step(build_method(config), config, context)


def test_checkpoint_roundtrip_identical_outputs(central_run, tmp_path):
    _, out = central_run
    method, checkpoint = load_method(out)
    assert set(checkpoint) >= {"model", "step", "optimizers", "elapsed", "rng_by_process"}
    adam = checkpoint["optimizers"]["generator"]["state"]
    assert len(adam) == len(list(method.generator.parameters()))
    assert all(int(s["step"]) == STEPS for s in adam.values())

    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = method.generator(x)
        assert torch.equal(method.generator(x), reference)  # eval mode: no dropout

    save_torch(method.state_dict(), tmp_path / "state.pt")
    other = fresh_method(out, seed=123)
    with torch.no_grad():
        assert not torch.allclose(other.generator(x), reference)
        other.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        assert torch.equal(other.generator(x), reference)
    for key, value in method.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_existing_out_is_refused_and_untouched(central_run, toy_voc_root, capsys):
    _, out = central_run
    before = snapshot(out)
    capsys.readouterr()
    rc = bench(*alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", 2, "--batch-size", 4))
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert str(out) in lines[0] and "--overwrite" in lines[0] and "--resume" in lines[0]
    assert snapshot(out) == before


# ---------------------------------------------------------------- overwrite and resume

def test_overwrite_replaces(toy_voc_root, tmp_path):
    out = tmp_path / "run"
    args = alexnet_args(toy_voc_root, out, "--mask", "central", "--batch-size", 4)
    assert bench(*args, "--steps", 2) == 0
    (out / "stray.txt").write_text("from an older run")
    assert bench(*args, "--steps", 2) == 2
    assert (out / "stray.txt").exists()
    # A run of a version before output folders were marked (no bench-output.json) is replaced too.
    (out / "bench-output.json").unlink()
    assert bench(*args, "--steps", 3, "--overwrite") == 0
    assert not (out / "stray.txt").exists()
    assert json.loads((out / "bench-output.json").read_text())["kind"] == "pretrain-run"
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["config"]["steps"] == 3
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step_000003.png"]


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    assert bench("--out", tmp_path / "run", "--resume", "--overwrite") == 2
    assert "exclude" in capsys.readouterr().err


def test_resume_without_checkpoint(tmp_path, capsys):
    assert bench("--out", tmp_path / "nothing", "--resume", "--steps", 4) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and str(tmp_path / "nothing") in err


def test_resume_continues_to_2n(toy_voc_root, straight_run, tmp_path):
    out = tmp_path / "run"
    assert bench(*alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", 2,
                               "--batch-size", 4, "--lr", LR)) == 0
    config_before = (out / "config.json").read_bytes()
    assert bench("--out", out, "--resume", "--steps", 4) == 0
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert json.loads((out / "encoder.json").read_text())["steps"] == 4
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    assert (out / "config.json").read_bytes() == config_before
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step_000002.png", "step_000004.png"]
    # Same batches, weights, optimizer state and dropout stream as an uninterrupted run.
    reference = [m["loss"] for m in read_metrics(straight_run)]
    assert [m["loss"] for m in metrics] == pytest.approx(reference, rel=1e-4)


def interrupt_at(monkeypatch, call):
    """Make the context encoder's train_step raise KeyboardInterrupt (Ctrl-C) on its `call`-th call."""
    from pretrain.methods.context_encoder import ContextEncoder
    real_step, calls = ContextEncoder.train_step, []

    def step(self, batch, optimizers):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_step(self, batch, optimizers)

    monkeypatch.setattr(ContextEncoder, "train_step", step)
    return calls


def interrupted_run(toy_voc_root, out, monkeypatch):
    """A 4-step run (checkpoint every 2) stopped by Ctrl-C during step 3."""
    interrupt_at(monkeypatch, 4)  # the first call is the step whose FLOPs a new run counts
    assert bench(*alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", 4, "--batch-size", 4,
                               "--lr", LR, "--checkpoint-every", 2)) == 130
    monkeypatch.undo()
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


def test_resume_after_interruption(toy_voc_root, straight_run, tmp_path, monkeypatch):
    """Ctrl-C at step 3 of 4: exit 130; --resume redoes step 3 once and matches an uninterrupted run."""
    out = tmp_path / "run"
    interrupted_run(toy_voc_root, out, monkeypatch)
    # A metrics line past the checkpoint (as a crash between the two writes leaves) is dropped.
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    assert bench("--out", out, "--resume", "--steps", 4) == 0
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    reference = [m["loss"] for m in read_metrics(straight_run)]
    assert [m["loss"] for m in metrics] == pytest.approx(reference, rel=1e-4)


def test_resume_without_steps_finishes_the_saved_run(toy_voc_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(toy_voc_root, out, monkeypatch)
    interrupt_at(monkeypatch, 3)  # steps 3 and 4 are all that is left; a third step means overrun
    assert bench("--out", out, "--resume") == 0
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]


def test_non_finite_loss_stops_with_user_error(toy_voc_root, tmp_path, monkeypatch, capsys):
    from pretrain.methods.context_encoder import ContextEncoder
    real_step, calls = ContextEncoder.train_step, []

    def step(self, batch, optimizers):
        calls.append(1)
        metrics = real_step(self, batch, optimizers)
        return {**metrics, "loss": float("nan")} if len(calls) == 4 else metrics  # the first counts FLOPs

    monkeypatch.setattr(ContextEncoder, "train_step", step)
    out = tmp_path / "run"
    rc = bench(*alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", 5, "--batch-size", 4,
                             "--checkpoint-every", 2))
    err = capsys.readouterr().err
    assert rc == 2
    assert "non-finite at step 3" in err and str(out / "checkpoint.pt") in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
    assert [m["step"] for m in read_metrics(out)] == [1, 2]


# ---------------------------------------------------------------- other masks and the inpainting GAN

def test_random_region_run(toy_voc_root, tmp_path):
    out = tmp_path / "run"
    assert bench(*alexnet_args(toy_voc_root, out, "--mask", "random-region", "--steps", 3,
                               "--batch-size", 4)) == 0
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert [p.name for p in (out / "previews").iterdir()] == ["step_000003.png"]
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    cfg = json.loads((out / "config.json").read_text())["config"]
    # Default shapes: the newest VOC year's SegmentationClass; default lr for random regions: 1e-4.
    assert cfg["mask_dir"] == str(toy_voc_root / "VOCdevkit" / "VOC2012" / "SegmentationClass")
    assert cfg["lr"] is None
    method, _ = load_method(out)
    assert method.configure_optimizers()["generator"].param_groups[0]["lr"] == 1e-4
    # Holes cover at most a quarter and differ between images.
    dataset = build_pretraining(PretrainConfig(**cfg), progress=False).dataset
    holes = [dataset.mask_sampler(np.random.default_rng(seed)) for seed in range(4)]
    assert all(0 < h.mean() <= 0.25 for h in holes)
    assert not np.array_equal(holes[0], holes[1])


def test_random_region_needs_mask_dir_outside_voc(toy_voc_root, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(toy_voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages", images)
    assert bench("--data-root", images, "--out", tmp_path / "run", "--mask", "random-region",
                 "--workers", 0, "--batch-size", 4) == 2
    assert "--mask-dir" in capsys.readouterr().err


@pytest.fixture
def inpaint_out(tmp_path):
    """The inpainting run folder, removed afterwards: its checkpoint (71M parameters + Adam) is ~0.9 GB."""
    out = tmp_path / "run"
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_inpaint_adversarial_run(toy_voc_root, inpaint_out):
    out = inpaint_out
    assert bench("--data-root", toy_voc_root, "--out", out, "--arch", "inpaint", "--image-size", 128,
                 "--loss", "l2+adv", "--mask", "central", "--steps", 2, "--batch-size", 4,
                 "--workers", 0) == 0
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert all(np.isfinite(m[key]) for key in ("loss", "l2", "adv", "d_loss"))
        assert m["adv"] > 0 and m["d_loss"] > 0
        assert m["loss"] == pytest.approx(0.999 * m["l2"] + 0.001 * m["adv"], rel=1e-5)
    encoder = json.loads((out / "encoder.json").read_text())
    assert encoder["arch"] == "inpaint" and encoder["image_size"] == 128
    assert encoder["input_mean"] == [0.5] * 3 and encoder["input_std"] == [0.5] * 3
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert set(state["optimizers"]) == {"generator", "discriminator"}
    assert state["optimizers"]["generator"]["param_groups"][0]["lr"] == pytest.approx(2e-3)
    assert state["optimizers"]["discriminator"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert state["optimizers"]["generator"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert any(key.startswith("discriminator.") for key in state["model"])
    encoder_state = torch.load(out / "encoder.pt", weights_only=True)
    assert [v.shape for v in encoder_state.values()].count((4000, 512, 4, 4)) == 1  # 4000-d bottleneck


# ---------------------------------------------------------------- user errors and help

def test_missing_data_root(tmp_path, capsys):
    missing = tmp_path / "no-such-voc"
    rc = bench("--data-root", missing, "--out", tmp_path / "run", "--mask", "central", "--workers", 0)
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0]


def test_missing_data_root_with_default_mask(tmp_path, capsys):
    missing = tmp_path / "no-such-voc"
    rc = bench("--data-root", missing, "--out", tmp_path / "run", "--workers", 0)
    err = capsys.readouterr().err
    assert rc == 2
    assert str(missing) in err


def test_too_small_image_size(toy_voc_root, tmp_path, capsys):
    assert bench(*alexnet_args(toy_voc_root, tmp_path / "run", "--mask", "central", "--batch-size", 4),
                 "--image-size", 48) == 2
    err = capsys.readouterr().err
    assert "--image-size 48" in err and "too small" in err


def test_inpaint_needs_128(toy_voc_root, tmp_path, capsys):
    assert bench("--data-root", toy_voc_root, "--out", tmp_path / "run", "--arch", "inpaint",
                 "--mask", "central", "--image-size", 96, "--workers", 0, "--batch-size", 4) == 2
    assert "128" in capsys.readouterr().err


@pytest.mark.parametrize("options,message", [
    (["--load-size", 50], "--load-size 50"),
    (["--device", "cuda:0"], "--device cuda:0"),
    (["--split", "nosuch"], "nosuch.txt"),
    (["--year", "1999"], "VOC1999"),
    (["--mask", "random-region", "--mask-dir", "EMPTY"], "no object shapes"),
])
def test_bad_options_are_one_line_user_errors(options, message, toy_voc_root, tmp_path, capsys):
    if torch.cuda.is_available() and "--device" in options:
        pytest.skip("a CUDA device is present")
    (tmp_path / "empty").mkdir()
    options = [str(tmp_path / "empty") if o == "EMPTY" else o for o in options]
    rc = bench(*alexnet_args(toy_voc_root, tmp_path / "run", "--mask", "central", "--steps", 1,
                             "--batch-size", 4), *options)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_batch_larger_than_data_is_user_error(toy_voc_root, tmp_path, capsys):
    rc = bench(*alexnet_args(toy_voc_root, tmp_path / "run", "--mask", "central", "--steps", 1,
                             "--batch-size", 13))
    assert rc == 2
    err = capsys.readouterr().err
    assert "only 12 images" in err and "batch of 13" in err


def test_out_reusable_after_user_error(toy_voc_root, tmp_path):
    out = tmp_path / "run"
    args = alexnet_args(toy_voc_root, out, "--mask", "central", "--steps", 1)
    assert bench(*args, "--batch-size", 13) == 2
    assert bench(*args, "--batch-size", 4) == 0


FAILING_METHOD = """
from pretrain.methods import register
from pretrain.methods.autoencoder import Autoencoder
from bench_runtime.errors import UserError


@register
class FailsAtStepThree(Autoencoder):
    name = "fails-at-step-three"
    calls = 0

    def train_step(self, batch, optimizers):
        type(self).calls += 1
        if type(self).calls == 4:  # the first call is the step whose FLOPs bench pretrain counts
            raise UserError("the method gave up at step 3")
        return super().train_step(batch, optimizers)
"""


def test_error_inside_training_loop_is_on_its_own_line(toy_voc_root, tmp_path, capsys, private_registry):
    """An error raised by a training step, while the progress bar is drawn, starts a line of its own;
    the steps before it are in metrics.jsonl."""
    plugin = tmp_path / "failing_method.py"
    plugin.write_text(FAILING_METHOD)
    out = tmp_path / "run"
    rc = bench(*alexnet_args(toy_voc_root, out, "--plugin", plugin, "--method", "fails-at-step-three",
                             "--steps", 5, "--batch-size", 4))
    assert rc == 2
    lines = [line.strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines()]
    assert "error: the method gave up at step 3" in lines, lines
    assert [m["step"] for m in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("options", [["--workers", -1], ["--lr", -1], ["--overlap", -2],
                                     ["--adv-weight", 2, "--loss", "l2+adv"]])
def test_invalid_numbers_are_user_errors(options, toy_voc_root, tmp_path, capsys):
    rc = bench(*alexnet_args(toy_voc_root, tmp_path / "run", "--mask", "central", "--steps", 1,
                             "--batch-size", 4), *options)
    assert rc == 2
    assert options[0] in capsys.readouterr().err


@pytest.mark.parametrize("method", ["context-encoder", "rotation"])
def test_help_mentions_every_option(method, capsys):
    """Every field of PretrainConfig and of the method's Options that has help text is a flag in
    `bench pretrain --method M --help`, with its choices; another method's options are not."""
    assert bench("--method", method, "--help") == 0
    text = capsys.readouterr().out
    own, other = get_method(method).Options, get_method("context-encoder").Options
    flags = {field.name: field for cls in (PretrainConfig, own) for field in dataclasses.fields(cls)
             if "help" in field.metadata}
    assert len(flags) >= 20
    for name, field in flags.items():
        assert re.search(re.escape(flag(name)) + r"(?![\w-])", text), name
        choices = field.metadata["choices"]
        for choice in (choices() if callable(choices) else choices or ()):
            assert choice in text, choice
    for field in dataclasses.fields(other) if own is not other else ():
        assert flag(field.name) not in text, field.name


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_named_in_one_line(toy_voc_root, tmp_path, capsys, monkeypatch, workers):
    # Skip the dataset statistics (which read images too) so the training loader meets the bad file,
    # in a worker process when workers > 0.
    monkeypatch.setattr("pretrain.train.channel_stats", lambda paths: ([0.5] * 3, [0.25] * 3))
    images = tmp_path / "images"
    shutil.copytree(toy_voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages", images)
    broken = sorted(images.iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated JPEG
    rc = bench("--data-root", images, "--out", tmp_path / "run", "--mask", "central", "--image-size", 96,
               "--batch-size", 24, "--steps", 1, "--workers", workers)
    lines = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert rc == 2
    assert lines[-1].startswith("error: cannot read image") and broken.name in lines[-1], lines


def test_autoencoder_on_a_plain_folder(toy_voc_root, tmp_path):
    """The autoencoder needs no masks, so a folder without VOC segmentation masks is enough."""
    images = tmp_path / "images"
    shutil.copytree(toy_voc_root / "VOCdevkit" / "VOC2012" / "JPEGImages", images)
    out = tmp_path / "run"
    assert bench("--method", "autoencoder", "--data-root", images, "--out", out, "--image-size", 96,
                 "--steps", 3, "--batch-size", 4, "--workers", 0) == 0
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(np.isfinite(m["loss"]) for m in metrics)
    assert json.loads((out / "encoder.json").read_text())["method"] == "autoencoder"
    torchvision.models.alexnet(weights=None).features.load_state_dict(torch.load(out / "encoder.pt"))
