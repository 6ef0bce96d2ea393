"""--overwrite replaces only what bench wrote: a folder bench marked (bench-output.json), or a
folder of an earlier version known by what it holds. Any other non-empty folder is refused, with
or without --overwrite, and nothing on disk changes. (The commands' refusals are cases of
test_bad_files.py.)"""
import json

import pytest

from bench_runtime.errors import UserError
from bench_runtime.runfiles import OUTPUT_MARKER, check_new_run_dir, mark_output, output_kind

# Folders that earlier versions wrote, without the marker: {name: (files, the kind they are)}.
EARLIER = {
    "pretraining run": (["config.json", "encoder.json", "encoder.pt", "metrics.jsonl", "previews/step_000002.png"],
                        "pretrain-run"),
    "interrupted pretraining run": (["config.json", "checkpoint.pt", "metrics.jsonl"], "pretrain-run"),
    "transfer run": (["config.json", "record.json", "predictions.png"], "transfer-run"),
    "eval-inpaint folder": (["grid.png", "network-run/record.json", "telea/record.json"], "eval-inpaint"),
    "speed folder": (["speed.json", "speed.md", "speed.csv"], "speed"),
    "suite folder": (["jobs.json", "pretrain/ce-seed0/config.json"], "suite"),
}
# Folders that are not bench's, although some hold a file of the same name.
NOT_BENCH = {
    "a config alone": ["config.json"],
    "a record alone": ["record.json", "notes.txt"],
    "pictures (an earlier bench inpaint folder looks the same)": ["a.png", "b.png"],
    "a thesis": ["chapter1.tex", "photo.jpg", "data/budget.csv"],
}


def folder_of(path, files):
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    return path


def contents(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(EARLIER))
def test_an_earlier_versions_folder_is_known_by_what_it_holds(name, tmp_path):
    files, kind = EARLIER[name]
    folder = folder_of(tmp_path / "out", files)
    assert output_kind(folder) == kind
    assert check_new_run_dir(folder, overwrite=True) == folder
    with pytest.raises(UserError, match="already exists; pass --resume to continue it or --overwrite"):
        check_new_run_dir(folder)


@pytest.mark.parametrize("name", list(NOT_BENCH))
def test_a_folder_bench_did_not_write_is_refused_even_with_overwrite(name, tmp_path):
    folder = folder_of(tmp_path / "out", NOT_BENCH[name])
    before = contents(folder)
    assert output_kind(folder) is None
    for overwrite in (False, True):
        with pytest.raises(UserError, match=f"holds {len(list(folder.iterdir()))} item.* that bench did not write"):
            check_new_run_dir(folder, overwrite=overwrite)
    assert contents(folder) == before


def test_the_marker_says_what_bench_wrote(tmp_path):
    folder = folder_of(tmp_path / "out", ["a.png"])
    mark_output(folder, "inpaint")
    marker = json.loads((folder / OUTPUT_MARKER).read_text())
    assert marker["kind"] == "inpaint" and marker["format"] == 1 and marker["bench_version"]
    assert output_kind(folder) == "inpaint" and check_new_run_dir(folder, overwrite=True) == folder
    (folder / OUTPUT_MARKER).write_text("[]")  # a file of that name that is not bench's marker
    assert output_kind(folder) is None
