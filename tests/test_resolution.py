"""What a table can resolve: ranges, positive control, pooled spread, intervals over seeds; and
in-domain records joining their method's row."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmarks.resolution import column_resolution, difference_interval, pooled_spread, row_differences, verdict
from benchmarks.table import write_table


def rows(column, values_by_row, data="pets-voc"):
    """Long records: {row name: (pretraining method, [value per seed])}."""
    return pd.DataFrame([{"method": name, "pretrain_method": method, "data": data, "column": column,
                          "value": value, "seed": seed}
                         for name, (method, values) in values_by_row.items() for seed, value in enumerate(values)])


def test_pooled_spread_weights_each_row_by_its_degrees_of_freedom():
    assert pooled_spread([[1.0, 3.0], [5.0]]) == pytest.approx(np.std([1, 3], ddof=1))
    expected = np.sqrt((1 * np.var([0, 2], ddof=1) + 2 * np.var([0, 1, 5], ddof=1)) / 3)
    assert pooled_spread([[0.0, 2.0], [0.0, 1.0, 5.0]]) == pytest.approx(expected)
    assert np.isnan(pooled_spread([[1.0], [2.0]]))


def test_difference_interval_is_welchs_and_gives_the_verdict():
    a, b = [0.50, 0.52, 0.51], [0.40, 0.41, 0.45]
    difference, low, high = difference_interval(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert difference == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert verdict(low, high) == "above"
    assert verdict(*difference_interval(b, a)[1:]) == "below"
    assert verdict(*difference_interval([0.5, 0.6, 0.4], [0.45, 0.55, 0.5])[1:]) == "level"
    assert verdict(*difference_interval([0.5], [0.4, 0.45])[1:]) == "one seed"


def test_a_column_ranks_only_when_range_and_positive_control_exceed_three_spreads():
    good = rows("Segmentation", {"supervised": ("supervised", [0.60, 0.61, 0.62]),
                                 "random": ("random", [0.40, 0.41, 0.42]),
                                 "context-encoder": ("context-encoder", [0.45, 0.46, 0.47])})
    noisy = rows("Detection", {"supervised": ("supervised", [0.30, 0.50, 0.40]),
                               "random": ("random", [0.35, 0.45, 0.40]),
                               "context-encoder": ("context-encoder", [0.30, 0.45, 0.40])})
    # A broken row makes the range large, but labels do not beat random: still no ranking.
    no_control = rows("Classification", {"supervised": ("supervised", [0.40, 0.41, 0.42]),
                                         "random": ("random", [0.40, 0.41, 0.42]),
                                         "random-gaussian": ("random-gaussian", [0.05, 0.06, 0.07])})
    table = column_resolution(pd.concat([good, noisy, no_control])).set_index("column")
    assert table.loc["Segmentation", "can rank pretraining"] == "yes"
    assert table.loc["Segmentation", "supervised - best random"] == pytest.approx(20.0)
    assert table.loc["Segmentation", "range"] == pytest.approx(20.0)
    assert table.loc["Segmentation", "pooled seed spread"] == pytest.approx(1.0)
    assert table.loc["Detection", "can rank pretraining"].startswith("no: range under 3 spreads")
    assert table.loc["Classification", "can rank pretraining"].startswith("no: labels beat random init by under")
    assert table.loc["Classification", "best random"] == "random"
    one_seed = column_resolution(rows("Segmentation", {"a": ("random", [0.4]), "b": ("supervised", [0.6])}))
    assert one_seed["can rank pretraining"].iloc[0] == "unknown: one seed per row"


def test_each_pretrained_row_is_compared_with_the_best_random_init_and_the_autoencoder():
    records = rows("Segmentation", {"random": ("random", [0.40, 0.41, 0.42]),
                                    "krahenbuhl": ("random-kraehenbuehl", [0.44, 0.45, 0.46]),
                                    "autoencoder": ("autoencoder", [0.30, 0.31, 0.32]),
                                    "context-encoder": ("context-encoder", [0.45, 0.44, 0.47])})
    table = row_differences(records).set_index(["row", "against"])
    ce_random = table.loc[("context-encoder", "krahenbuhl")]  # the best random init, not He-normal
    assert ce_random["verdict"] == "level"
    assert table.loc[("context-encoder", "autoencoder"), "verdict"] == "above"
    assert table.loc[("autoencoder", "krahenbuhl"), "verdict"] == "below"
    assert ("autoencoder", "autoencoder") not in table.index
    assert not any(name in ("random", "krahenbuhl") for name, _ in table.index)  # random rows are references


def record(folder, name, method, label, task, value, seed, data, metrics=None, protocol="finetune", per_class=None):
    path = folder / name / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "task": task, "protocol": protocol, "pretrain_method": method, "pretrain_label": label,
        "pretrain_seconds": 60.0, "seed": seed, "data_root": f"/data/{data}", "value": value,
        **({"metrics": metrics, "per_class": per_class} if metrics else {})}))


def test_in_domain_records_fill_their_methods_row_and_the_resolution_files(tmp_path):
    folder = tmp_path / "records"
    layers = {"conv1": 0.2, "conv5": 0.4, "pool5": 0.3}
    for seed in range(2):
        record(folder, f"seg-ce-{seed}", "context-encoder", "context-encoder", "seg", 0.40 + seed / 100, seed, "pets-voc")
        record(folder, f"seg-sup-{seed}", "supervised", "supervised", "seg", 0.55 + seed / 100, seed, "pets-voc")
        record(folder, f"seg-rand-{seed}", "random", "random", "seg", 0.35 + seed / 100, seed, "pets-voc")
        record(folder, f"probe-ce-{seed}", "context-encoder", "context-encoder", "probe", 0.30, seed, "imagenette",
               {"probe_knn_top1": 0.25 + seed / 100}, per_class=layers)
    out = tmp_path / "table"
    tables = write_table(folder, out)
    table = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("Pretraining")
    ce = table.loc["context-encoder"]
    assert ce["Source"] == "measured: pets-voc; in-domain: imagenette"
    assert ce["In-domain linear"] == "30.0 ± 0.0 (n=2)" and ce["In-domain kNN"] == "25.5 ± 0.7 (n=2)"
    assert ce["Segmentation"] == "40.5 ± 0.7 (n=2)"
    assert table.loc["supervised", "In-domain kNN"] == ""
    resolution = pd.read_csv(out / "resolution.csv").set_index("column")
    assert resolution.loc["Segmentation", "supervised - best random"] == pytest.approx(20.0)
    assert set(tables) == {"table", "resolution", "differences"}
    saved = json.loads((out / "table.json").read_text())
    assert saved["resolution"] and saved["differences"]
    per_layer = pd.read_csv(out / "layer_probes.csv").set_index("row")
    assert per_layer.loc["context-encoder"].tolist() == [20.0, 40.0, 30.0]  # conv1, conv5, pool5 in order
    assert (out / "layer_probes.png").read_bytes()[:4] == b"\x89PNG"
