"""Inpainting: hole metrics against hand-computed values, the baselines, `bench inpaint`,
`bench eval-inpaint` and the inpainting table."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.table import write_table
from bench_eval import inpaint_baselines as baselines
from bench_eval.inpainting import EvalInpaintConfig, evaluate_inpainting, hole_scores
from helpers import bench


def centre_hole(n, side, start, stop):
    hole = np.zeros((n, side, side), bool)
    hole[:, start:stop, start:stop] = True
    return hole


# --------------------------------------------------------------------------- metrics

def test_identical_images_score_zero_error_and_infinite_psnr():
    images = np.random.default_rng(0).random((2, 16, 16, 3))
    scores = hole_scores(images, images, centre_hole(2, 16, 4, 12))
    assert scores["l1"].tolist() == [0.0, 0.0] and scores["l2"].tolist() == [0.0, 0.0]
    assert np.isinf(scores["psnr"]).all()
    assert np.allclose(scores["ssim"], 1.0)


@pytest.mark.parametrize("error, psnr", [(0.1, 20.0), (0.5, 6.0206), (0.01, 40.0)])
def test_constant_error_in_the_hole_gives_the_known_scores(error, psnr):
    original = np.full((1, 16, 16, 3), 0.25)
    hole = centre_hole(1, 16, 4, 12)
    filled = original.copy()
    filled[hole] += error
    filled[~hole] = 0.9  # outside the hole nothing counts
    scores = hole_scores(filled, original, hole)
    assert scores["l1"][0] == pytest.approx(error)
    assert scores["l2"][0] == pytest.approx(error ** 2)
    assert scores["psnr"][0] == pytest.approx(psnr, abs=1e-3)  # 10 log10(1 / error^2)
    assert scores["ssim"][0] < 1


def test_scores_are_per_image_and_ignore_pixels_outside_each_hole():
    original = np.zeros((2, 8, 8, 3))
    hole = np.zeros((2, 8, 8), bool)
    hole[0, :2, :2] = True   # 4 px
    hole[1, 4:, :] = True    # 32 px
    filled = original.copy()
    filled[0, :2, :2] = 0.5
    filled[1, 4:, :4] = 1.0  # half the second hole wrong by 1
    scores = hole_scores(filled, original, hole)
    assert scores["l1"] == pytest.approx([0.5, 0.5])
    assert scores["l2"] == pytest.approx([0.25, 0.5])


def test_metric_inputs_are_checked():
    images = np.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="non-empty hole"):
        hole_scores(images, images, np.zeros((1, 8, 8), bool))
    with pytest.raises(ValueError, match="hole must be"):
        hole_scores(images, images, np.ones((1, 4, 4), bool))
    with pytest.raises(ValueError, match="both be"):
        hole_scores(images, np.zeros((1, 8, 8, 1)), np.ones((1, 8, 8), bool))


# --------------------------------------------------------------------------- baselines

def two_colour_images():
    images = np.zeros((1, 32, 32, 3), np.uint8)
    images[0, :, :16] = (200, 0, 0)
    images[0, :, 16:] = (0, 100, 0)
    return images


def test_mean_colour_fill_uses_the_context_mean_and_keeps_the_context():
    images = two_colour_images()
    hole = np.zeros((1, 32, 32), bool)
    hole[0, 8:24, 20:28] = True  # inside the green half; the context is still half red
    filled = baselines.mean_colour_fill(images, hole)
    context = ~hole[0]
    expected = images[0][context].mean(axis=0) / 255
    assert np.allclose(filled[0][hole[0]], expected, atol=1e-6)
    assert np.allclose(filled[0][context], images[0][context] / 255)


@pytest.mark.parametrize("method", ["telea", "navier-stokes"])
def test_opencv_inpainting_recovers_a_flat_image(method):
    images = np.full((2, 32, 32, 3), 77, np.uint8)
    filled = baselines.opencv_fill(images, centre_hole(2, 32, 8, 24), method)
    assert filled.shape == (2, 32, 32, 3) and filled.dtype == np.float32
    assert np.allclose(filled, 77 / 255, atol=3 / 255)  # Telea rounds a little on each marching step


def test_nearest_neighbour_pastes_the_image_with_the_same_context():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    database = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    database[2] = query[0]  # same context and same centre: an exact fill
    holes = centre_hole(1, 64, 24, 40)  # HOG blocks away from the centre still see context
    pixels = lambda images, hole: (images * ~hole[..., None]).reshape(len(images), -1).astype(float)  # noqa: E731
    for describe, prepare in ((baselines.hog_context, baselines.hog_blocks), (pixels, None)):
        filled = baselines.nearest_neighbour_fill(query, holes, database, describe, prepare, progress=False)
        assert np.allclose(filled, query / 255)


def test_hog_descriptors_leave_out_the_blocks_touching_the_hole():
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    hole = np.zeros((32, 32), bool)
    hole[0, 0] = True  # only cell (0, 0): only block (0, 0) touches it
    blocks = baselines.hog_blocks(images)
    with_hole = baselines.hog_context(blocks, hole).reshape(2, 3, 3, 2, 2, 9)
    without = baselines.hog_context(blocks, np.zeros((32, 32), bool)).reshape(2, 3, 3, 2, 2, 9)
    assert (with_hole[:, 0, 0] == 0).all()
    assert np.array_equal(with_hole[:, 1:], without[:, 1:]) and np.array_equal(with_hole[:, 0, 1:], without[:, 0, 1:])


# --------------------------------------------------------------------------- runs, commands, table

@pytest.fixture(scope="module")
def inpaint_runs(toy_voc_root, tmp_path_factory):
    """One-step inpainting networks (128 px, central hole), one per loss."""
    folder = tmp_path_factory.mktemp("inpaint-runs")
    for loss in ("l2", "l2+adv"):
        assert bench("pretrain", "--data-root", toy_voc_root, "--arch", "inpaint", "--mask", "central",
                     "--loss", loss, "--image-size", 128, "--steps", 1, "--batch-size", 4, "--workers", 0,
                     "--out", folder / loss.replace("+", "-")) == 0
    return [folder / "l2", folder / "l2-adv"]


def test_eval_inpaint_writes_a_record_per_row_a_grid_and_the_table(inpaint_runs, toy_voc_root, tmp_path):
    out = tmp_path / "eval"
    assert bench("eval-inpaint", "--run", inpaint_runs[0], "--run", inpaint_runs[1], "--data-root", toy_voc_root,
                 "--split", "val", "--out", out) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in out.rglob("record.json")}
    assert sorted(records) == sorted(["network-l2", "network-l2-adv", "nn-features-l2", "nn-features-l2-adv",
                                      "mean-colour", "telea", "navier-stokes", "nn-hog"])
    for record in records.values():
        metrics = record["metrics"]
        assert record["task"] == "inpaint" and record["mask"] == "central" and record["image_size"] == 128
        assert 0 < metrics["l1"] < 1 and 0 < metrics["l2"] < metrics["l1"] and 0 < metrics["psnr"] < 60
        assert -1 <= metrics["ssim"] <= 1
    assert records["network-l2-adv"]["pretrain_label"] == "context encoder (central), l2+adv, inpaint"
    assert records["telea"]["run"] is None and records["network-l2"]["run"] == str(inpaint_runs[0].resolve())
    assert Image.open(out / "grid.png").size[0] > 1000  # 11 columns: masked, 8 rows, original

    write_table(out, tmp_path / "tables")
    table = pd.read_csv(tmp_path / "tables" / "inpaint_table.csv", keep_default_na=False).set_index("Method")
    assert table.loc["Context encoder (L2 + adversarial) (paper)", "PSNR (dB)"] == "18.58"
    assert "Paris StreetView" in table.loc["Context encoder (L2 + adversarial) (paper)", "Source"]
    measured = table[table["Source"] == f"measured: {toy_voc_root.name}"]
    assert len(measured) == 8 and measured["Mean L1 (%)"].str.endswith("(n=1)").all()
    l1 = measured["Mean L1 (%)"].str.split(" ").str[0].astype(float)
    assert list(l1) == sorted(l1)  # ranked, best first
    assert not (tmp_path / "tables" / "table.csv").exists()  # no transfer records: no Table 2


def test_rows_share_holes_so_a_rerun_gives_the_same_scores(pretrain_run, toy_voc_root, tmp_path):
    config = EvalInpaintConfig(run=[str(pretrain_run)], data_root=str(toy_voc_root), rows=["telea"], device="cpu")
    first = evaluate_inpainting(config, tmp_path / "a", progress=False)
    again = evaluate_inpainting(config, tmp_path / "b", progress=False)
    other_seed = evaluate_inpainting(dataclasses.replace(config, mask="random-block", seed=1), tmp_path / "c",
                                     progress=False)
    assert first[0]["metrics"] == again[0]["metrics"]
    assert first[0]["metrics"] != other_seed[0]["metrics"] and other_seed[0]["mask"] == "random-block"


def test_feature_network_on_random_region_holes(toy_voc_root, tmp_path):
    run = tmp_path / "feature-run"
    assert bench("pretrain", "--data-root", toy_voc_root, "--mask", "random-region", "--image-size", 64,
                 "--steps", 2, "--batch-size", 4, "--workers", 0, "--out", run) == 0
    out = tmp_path / "eval"
    assert bench("eval-inpaint", "--run", run, "--data-root", toy_voc_root, "--split", "val",
                 "--rows", "network", "nn-features", "mean-colour", "--out", out) == 0
    records = [json.loads(p.read_text()) for p in out.rglob("record.json")]
    assert len(records) == 3 and {r["mask"] for r in records} == {"random-region"}
    assert all(r["image_size"] == 64 for r in records)


def test_inpaint_fills_images_of_any_size_at_full_resolution(pretrain_run, tmp_path):
    images = tmp_path / "mine"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    Image.fromarray(wide).save(images / "wide.png")
    Image.fromarray(rng.integers(0, 256, (200, 90, 3), dtype=np.uint8)).save(images / "sub" / "tall.jpg")
    out = tmp_path / "out"
    assert bench("inpaint", "--run", pretrain_run, "--run", pretrain_run, "--images", images, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench-output.json", "sub__tall.png", "wide.png"]
    panels = np.asarray(Image.open(out / "wide.png"))
    assert panels.shape == (100, 4 * 150, 3)  # masked | fill | fill | original
    masked, filled, original = panels[:, :150], panels[:, 150:300], panels[:, 450:]
    assert np.array_equal(original, wide)
    hole = (masked != original).any(axis=2)
    assert 0.1 < hole.mean() < 0.3  # the central quarter of the 100 px square, less the overlap band
    assert np.array_equal(filled[~hole], wide[~hole])  # the context keeps its own pixels
    assert Image.open(out / "sub__tall.png").size == (4 * 90, 200)
    # A single file works too, and an existing result is replaced only with --overwrite.
    single = ["inpaint", "--run", pretrain_run, "--images", images / "wide.png", "--out", out]
    assert bench(*single) == 2
    assert sorted(p.name for p in out.iterdir()) == ["bench-output.json", "sub__tall.png", "wide.png"]
    assert bench(*single, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["bench-output.json", "wide.png"]


def test_bad_inpainting_input_is_a_one_line_error(inpaint_runs, pretrain_run, toy_voc_root, tmp_path, capsys):
    autoencoder = tmp_path / "ae"
    assert bench("pretrain", "--method", "autoencoder", "--data-root", toy_voc_root, "--image-size", 64,
                 "--steps", 1, "--batch-size", 4, "--workers", 0, "--out", autoencoder) == 0
    capsys.readouterr()
    cases = [
        (["eval-inpaint", "--run", autoencoder, "--data-root", toy_voc_root], "inpainting needs a context-encoder run"),
        (["eval-inpaint", "--run", tmp_path / "nowhere", "--data-root", toy_voc_root], "not a `bench pretrain` run"),
        (["eval-inpaint", "--run", inpaint_runs[0], "--run", pretrain_run, "--data-root", toy_voc_root],
         "must share image and load sizes"),
        (["eval-inpaint", "--run", inpaint_runs[0], "--data-root", toy_voc_root, "--mask", "random-region",
          "--mask-dir", tmp_path / "no-masks"], "random-region holes need --mask-dir"),
        (["inpaint", "--run", inpaint_runs[0], "--images", tmp_path / "missing", "--out", tmp_path / "o"],
         "does not exist"),
    ]
    for args, message in cases:
        if "--out" not in args:
            args = [*args, "--out", tmp_path / "never"]
        assert bench(*args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()

