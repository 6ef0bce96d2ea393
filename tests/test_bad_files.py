"""Bad input, table-driven: every file the suite writes, broken the ways a full disk, a crash or a
hand edit breaks it; bad options and paths of every command; --out folders bench did not write or
that hold a command's data; and writes that fail (a full disk, a folder that cannot be written).
Each is reported as one line `error: ...` (for a file: `error: <file>: <what is wrong>`) with exit
status 2: no traceback, and no file changed or added."""
import json
import os
import pickle
import resource
import shutil
from contextlib import contextmanager, nullcontext
from functools import partial

import pytest
import torch
from PIL import Image

from helpers import bench, huge_png


class NotATensor:
    """An object that weights_only loading must refuse: unpickling it could run code."""


def truncated(path):
    path.write_bytes(path.read_bytes()[:100])


def zero_bytes(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_text("these are not the bytes you are looking for")


def unsafe_pickle(path):
    with open(path, "wb") as file:
        pickle.dump({"model": NotATensor()}, file)


def json_list(path):
    path.write_text("[1, 2, 3]")


def not_json(path):
    path.write_text('{"config": {"method": ')


def set_json(key, value):
    def edit(path):
        content = json.loads(path.read_text())
        content[key] = value
        path.write_text(json.dumps(content))
    return edit


def nan_xmax(path):
    path.write_text(path.read_text().replace("<xmax>", "<xmax>nan<!-- was ", 1).replace("</xmax>", " --></xmax>", 1))


def unknown_setting(path):
    content = json.loads(path.read_text())
    content["config"]["learning_rate"] = 0.1
    path.write_text(json.dumps(content))


@contextmanager
def disk_full(room=200):
    """While the command runs no file may grow past `room` bytes (`ulimit -f`): every larger write
    fails with EFBIG, as on a full disk (Python ignores the SIGXFSZ that comes with it). The lock
    file and the marker of an output folder still fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


RESUME = ["pretrain", "--resume", "--out", "{run}"]
TRANSFER = ["transfer", "--task", "cls", "--protocol", "svm", "--init", "{run}", "--data-root", "{toy}",
            "--image-size", "64", "--workers", "0", "--out", "{tmp}/record"]
TABLE = ["table", "--records", "{records}", "--out", "{tmp}/table"]
PRETRAIN = ["pretrain", "--data-root", "{toy}", "--steps", "1", "--out", "{tmp}/new"]
SEG = ["transfer", "--task", "seg", "--data-root", "{toy}", "--steps", "1", "--out", "{tmp}/new"]
EXPORT = ["export", "--run", "{run}", "--to", "torchvision"]
INPAINT = ["inpaint", "--run", "{run}", "--images", "{toy}", "--out", "{tmp}/filled"]
EVAL_INPAINT = ["eval-inpaint", "--run", "{run}", "--data-root", "{toy}", "--out", "{tmp}/scores"]
SPEED = ["speed", "--data-root", "{toy}"]
SUITE = ["suite", "--data-root", "{toy}"]
NOT_A_RUN = "not a `bench pretrain` run folder (no config.json)"
PROBE = ["transfer", "--task", "probe", "--data-root", "{classes}", "--image-size", "64", "--workers", "0",
         "--out", "{tmp}/new"]
NOT_BENCH = "{tmp}/thesis holds 3 items that bench did not write (chapter1.tex, data/, photo.jpg); choose another"
NO_ROOM = "File too large; nothing was written"
# name: (file of the run folder to break, how, command, what the error line says). A case without a
# file is a bad option or a bad path on the command line; its second entry, if any, is what the
# command runs under (a full disk). A file under root/ or classes/ is one of a copy of the toy VOC
# root or of the toy class-folder root, at {root} or {classes}.
CASES = {
    # Files the suite wrote, broken.
    "checkpoint empty": ("checkpoint.pt", zero_bytes, RESUME, "checkpoint.pt: empty (0 bytes); delete it or start"),
    "checkpoint truncated": ("checkpoint.pt", truncated, RESUME, "checkpoint.pt: truncated or not a torch file"),
    "checkpoint garbage": ("checkpoint.pt", garbage, RESUME, "checkpoint.pt: truncated or not a torch file"),
    "checkpoint unsafe": ("checkpoint.pt", unsafe_pickle, RESUME, "checkpoint.pt: refused, it holds objects other"),
    "checkpoint not one": ("checkpoint.pt", lambda p: torch.save([1, 2], p), RESUME,
                           "checkpoint.pt: not a checkpoint of this suite"),
    "config not json": ("config.json", not_json, RESUME, "config.json: not valid JSON"),
    "config a list": ("config.json", json_list, RESUME, "config.json: holds a JSON list, not a JSON object"),
    "config empty": ("config.json", zero_bytes, RESUME, "config.json: empty (0 bytes)"),
    "config unknown setting": ("config.json", unknown_setting, RESUME, "config.json: unknown settings learning_rate"),
    "config no method": ("config.json", set_json("config", {}), RESUME, "config.json: has no run configuration"),
    "encoder info not json": ("encoder.json", not_json, TRANSFER, "encoder.json: not valid JSON"),
    "encoder info a list": ("encoder.json", json_list, TRANSFER, "encoder.json: holds a JSON list"),
    "encoder info bad mean": ("encoder.json", set_json("input_mean", [0.5, "x"]), TRANSFER,
                              "encoder.json: input_mean must be three numbers"),
    "encoder info bad std": ("encoder.json", set_json("input_std", 0.2), TRANSFER,
                             "encoder.json: input_std must be three numbers"),
    "encoder weights empty": ("encoder.pt", zero_bytes, TRANSFER, "encoder.pt: empty (0 bytes)"),
    "encoder weights truncated": ("encoder.pt", truncated, TRANSFER, "encoder.pt: truncated or not a torch file"),
    "encoder weights unsafe": ("encoder.pt", unsafe_pickle, TRANSFER, "encoder.pt: refused"),
    "export encoder truncated": ("encoder.pt", truncated, [*EXPORT, "--out", "{tmp}/out.pth"],
                                 "encoder.pt: truncated or not a torch file"),
    "inpaint checkpoint empty": ("checkpoint.pt", zero_bytes, INPAINT, "checkpoint.pt: empty (0 bytes)"),
    "eval-inpaint checkpoint garbage": ("checkpoint.pt", garbage, EVAL_INPAINT,
                                        "checkpoint.pt: truncated or not a torch file"),
    "inpaint config a list": ("config.json", json_list, INPAINT, "config.json: holds a JSON list"),
    "record a list": ("records/a/record.json", json_list, TABLE, "record.json: holds a JSON list"),
    "record not json": ("records/a/record.json", not_json, TABLE, "record.json: not valid JSON"),
    "record without task": ("records/a/record.json", lambda p: p.write_text("{}"), TABLE,
                            "record.json: not a transfer or inpainting record"),
    "report record a list": ("records/a/record.json", json_list, ["report", "{run}"],
                             "record.json: holds a JSON list, not a JSON object; fix or remove it"),
    "report encoder info not json": ("encoder.json", not_json, ["report", "{run}"], "encoder.json: not valid JSON"),
    "jobs file not json": ("jobs.json", not_json, ["suite", "--status", "{run}"], "jobs.json: not valid JSON"),
    # Data that cannot train or score as it is.
    "det box nan": ("root/VOCdevkit/VOC2007/Annotations/000001.xml", nan_xmax,
                    ["transfer", "--task", "det", "--data-root", "{root}", "--steps", "1", "--out", "{tmp}/new"],
                    "has a coordinate that is not a finite number"),
    "seg split empty": ("root/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", zero_bytes,
                        [*SEG[:4], "{root}", *SEG[5:]], "lists no images"),
    "pretrain split empty": ("root/VOCdevkit/VOC2012/ImageSets/Main/train.txt", zero_bytes,
                             [*PRETRAIN[:2], "{root}", *PRETRAIN[3:]], "lists no images"),
    "probe val class missing": ("classes/val/bird", shutil.rmtree, PROBE, "missing, though train has that class"),
    "probe train class missing": ("classes/train/bird", shutil.rmtree, PROBE, "missing, though val has that class"),
    "pretrain probe data class missing": ("classes/val/bird", shutil.rmtree, [*PRETRAIN, "--probe-data", "{classes}"],
                                          "missing, though train has that class"),
    "pretrain image too large": ("classes/train/bird/huge.png", huge_png,
                                 ["pretrain", "--data-root", "{classes}/train", "--mask", "central", "--steps", "1", "--out",
                                  "{tmp}/new"],
                                 "has more than 89,478,485 pixels"),
    "probe image too large": ("classes/val/bird/huge.png", huge_png, PROBE, "has more than 89,478,485 pixels"),
    "probe image corrupt": ("classes/val/bird/0000.jpg", truncated, PROBE, "cannot read image"),
    # Options and paths.
    "pretrain seed negative": (None, None, [*PRETRAIN, "--seed", "-1"], "argument --seed: must be between 0 and"),
    "pretrain seed too large": (None, None, [*PRETRAIN, "--seed", str(2**32)], "argument --seed: must be between 0"),
    "pretrain device unknown": (None, None, [*PRETRAIN, "--device", "gpu"], "argument --device: must be auto, cpu"),
    "pretrain out under a file": (None, None, [*PRETRAIN[:-1], "{tmp}/a-file/run"],
                                  "a-file is a file, not a folder"),
    "pretrain lr negative": (None, None, [*PRETRAIN, "--lr", "-1"], "--lr must be positive and finite, got -1.0"),
    "pretrain lr infinite": (None, None, [*PRETRAIN, "--lr", "inf"], "argument --lr: takes finite float values"),
    "pretrain resume other method": (None, None, [*RESUME, "--method", "rotation"],
                                     "the run was saved with method context-encoder; these options differ: "
                                     "--method rotation"),
    "pretrain resume other size and arch": (None, None, [*RESUME, "--image-size", "64", "--steps", "3", "--arch",
                                                         "inpaint"], "arch alexnet, image-size 96; these options "
                                                                     "differ: --arch inpaint, --image-size 64"),
    "pretrain size zero": (None, None, [*PRETRAIN, "--image-size", "0"], "--image-size must be at least 1, got 0"),
    "pretrain inpaint with encoder norm": (None, None, [*PRETRAIN, "--arch", "inpaint", "--encoder-norm", "batch"],
                                           "--encoder-norm batch applies to --arch alexnet, not --arch inpaint"),
    "pretrain steps a word": (None, None, [*PRETRAIN, "--steps", "many"], "argument --steps: takes int values"),
    "pretrain unknown option": (None, None, [*PRETRAIN, "--stepz", "3"], "unrecognized arguments: --stepz 3"),
    "pretrain unknown method": (None, None, [*PRETRAIN, "--method", "inpaint"], "argument --method: invalid choice"),
    "pretrain data root missing": (None, None, ["pretrain", "--data-root", "{tmp}/nowhere", "--out", "{tmp}/new"],
                                   "data root {tmp}/nowhere does not exist"),
    "pretrain nothing to resume": (None, None, ["pretrain", "--resume", "--out", "{tmp}/new"],
                                   "nothing to resume: {tmp}/new/config.json does not exist"),
    "pretrain run exists": (None, None, ["pretrain", "--data-root", "{toy}", "--out", "{run}"],
                            "already exists; pass --resume to continue it or --overwrite"),
    "transfer device malformed": (None, None, [*SEG, "--device", "cuda:x"], "argument --device: must be auto"),
    "transfer seed negative": (None, None, [*SEG, "--seed", "-5"], "argument --seed: must be between 0"),
    "transfer out under a file": (None, None, [*SEG[:-1], "{tmp}/a-file/seg"], "a-file is a file, not a folder"),
    "transfer steps zero": (None, None, [*SEG, "--steps", "0"], "--steps must be at least 1"),
    "transfer init missing": (None, None, [*SEG, "--init", "{tmp}/nowhere"], "--init {tmp}/nowhere: no encoder"),
    "transfer split missing": (None, None, [*SEG, "--test-split", "nosuch"], "missing split file"),
    "transfer unknown task": (None, None, ["transfer", "--task", "depth"], "argument --task: invalid choice"),
    "transfer out exists": (None, None, [*SEG[:-1], "{run}"], "already exists; pass --resume"),
    "table records missing": (None, None, ["table", "--records", "{tmp}/nowhere", "--out", "{tmp}/table"],
                              "no record.json files under {tmp}/nowhere"),
    "table out under a file": (None, None, ["table", "--records", "{records}", "--out", "{tmp}/a-file/t"],
                               "a-file is a file, not a folder"),
    "suite seeds negative": (None, None, ["suite", "--seeds", "-1", "--out", "{tmp}/suite"],
                             "argument --seeds: must be between 0"),
    "suite preset missing": (None, None, ["suite", "--preset", "{tmp}/nowhere.yaml", "--out", "{tmp}/suite"],
                             "unknown preset"),
    "suite status of no suite": (None, None, ["suite", "--status", "{tmp}/a-folder"], "has no jobs.json"),
    "suite jobs zero": (None, None, ["suite", "--jobs", "0", "--out", "{tmp}/suite"],
                        "argument --jobs: must be 1 or more, got '0'"),
    "export to a folder": (None, None, [*EXPORT, "--out", "{tmp}/a-folder"], "a-folder is a folder; name the file"),
    "export over a file": (None, None, [*EXPORT, "--out", "{tmp}/a-file"], "a-file already exists; choose another"),
    "export to a folder, overwriting": (None, None, [*EXPORT, "--out", "{tmp}/a-folder", "--overwrite"],
                                        "a-folder is a folder; name the file"),
    "export timm of an alexnet": (None, None, ["export", "--run", "{run}", "--to", "timm", "--out", "{tmp}/t.pth"],
                                  "--to timm takes timm:<model> encoders only"),
    "export unknown layout": (None, None, ["export", "--run", "{run}", "--to", "onnx", "--out", "{tmp}/t.onnx"],
                              "argument --to: invalid choice"),
    "export run missing": (None, None, ["export", "--run", "{tmp}/nowhere", "--to", "torchvision", "--out",
                                        "{tmp}/t.pth"], "no encoder file"),
    "inpaint images missing": (None, None, [*INPAINT[:4], "{tmp}/nowhere", *INPAINT[5:]], "--images {tmp}/nowhere"),
    "inpaint run not a run": (None, None, ["inpaint", "--run", "{toy}", "--images", "{toy}", "--out", "{tmp}/f"],
                              NOT_A_RUN),
    "inpaint seed negative": (None, None, [*INPAINT, "--seed", "-2"], "argument --seed: must be between 0"),
    "inpaint device unknown": (None, None, [*INPAINT, "--device", "tpu"], "argument --device: must be auto"),
    "eval-inpaint run missing": (None, None, [*EVAL_INPAINT[:2], "{tmp}/nowhere", *EVAL_INPAINT[3:]], NOT_A_RUN),
    "eval-inpaint split missing": (None, None, [*EVAL_INPAINT, "--split", "nosuch"], "missing split file"),
    "report folder missing": (None, None, ["report", "{tmp}/nowhere"], "{tmp}/nowhere is not a folder"),
    "report a file": (None, None, ["report", "{tmp}/a-file"], "a-file is not a folder"),
    "report an empty folder": (None, None, ["report", "{tmp}/a-folder"], "holds no suite, pretraining run"),
    "cache older than negative": (None, None, ["cache", "clean", "--older-than", "-1"],
                                  "argument --older-than: must be 0 or more, got '-1'"),
    "cache unknown action": (None, None, ["cache", "purge"], "invalid choice: 'purge' (choose from 'list', 'clean')"),
    "data toy into a full folder": (None, None, ["data", "toy", "--out", "{run}"], "is not empty; choose a new folder"),
    "data toy seed negative": (None, None, ["data", "toy", "--out", "{tmp}/toy", "--seed", "-1"],
                               "argument --seed: must be between 0"),
    "data check of no VOC root": (None, None, ["data", "check", "{tmp}/a-folder"], "no VOCdevkit folder"),
    "data check to a folder": (None, None, ["data", "check", "{toy}", "--out", "{tmp}/a-folder"],
                               "--out {tmp}/a-folder is a folder; name the CSV file to write"),
    "table into a file": (None, None, ["table", "--records", "{tmp}/transfer", "--out", "{tmp}/a-file"],
                          "--out {tmp}/a-file is a file, not a folder"),
    # --out folders bench did not write: refused, with or without --overwrite, before any work.
    "pretrain over user files": (None, None, [*PRETRAIN[:-1], "{tmp}/thesis", "--overwrite"], NOT_BENCH),
    "pretrain into user files": (None, None, [*PRETRAIN[:-1], "{tmp}/thesis"], NOT_BENCH),
    "transfer over user files": (None, None, [*SEG[:-1], "{tmp}/thesis", "--overwrite"], NOT_BENCH),
    "inpaint over user files": (None, None, [*INPAINT[:-1], "{tmp}/thesis", "--overwrite"], NOT_BENCH),
    "eval-inpaint over user files": (None, None, [*EVAL_INPAINT[:-1], "{tmp}/thesis", "--overwrite"], NOT_BENCH),
    "speed over user files": (None, None, [*SPEED, "--out", "{tmp}/thesis", "--overwrite"], NOT_BENCH),
    "suite into user files": (None, None, [*SUITE, "--out", "{tmp}/thesis"], NOT_BENCH),
    "suite into a pretraining run": (None, None, [*SUITE, "--out", "{run}"],
                                     "is a pretrain-run folder, not a suite folder"),
    # --out folders that are, hold or lie inside the command's own data or runs.
    "pretrain over its data root": (None, None, ["pretrain", "--data-root", "{data}", "--steps", "1", "--out",
                                                 "{data}", "--overwrite"], "--out {data} is --data-root {data}"),
    "pretrain into its data root": (None, None, ["pretrain", "--data-root", "{data}", "--out", "{data}/runs/new"],
                                    "--out {data}/runs/new is inside --data-root {data}"),
    "pretrain over a folder of its data": (None, None, ["pretrain", "--data-root", "{data}", "--out", "{tmp}",
                                                        "--overwrite"], "--out {tmp} holds --data-root {data}"),
    "pretrain over its probe data": (None, None, [*PRETRAIN[:-1], "{data}", "--probe-data", "{data}", "--overwrite"],
                                     "is --probe-data {data}"),
    "pretrain over its mask folder": (None, None, [*PRETRAIN[:-1], "{data}/VOCdevkit", "--mask-dir",
                                                   "{data}/VOCdevkit/VOC2012/SegmentationClass", "--overwrite"],
                                      "holds --mask-dir {data}/VOCdevkit/VOC2012/SegmentationClass"),
    "transfer over its encoder's run": (None, None, [*SEG[:-1], "{run}", "--init", "{run}", "--overwrite"],
                                        "--out {run} is --init {run}"),
    "transfer over its data root": (None, None, [*SEG[:-1], "{data}", "--data-root", "{data}", "--overwrite"],
                                    "is --data-root {data}"),
    "inpaint into its images": (None, None, ["inpaint", "--run", "{run}", "--images", "{tmp}/thesis", "--out",
                                             "{tmp}/thesis/filled"], "is inside --images {tmp}/thesis"),
    "inpaint over its run": (None, None, [*INPAINT[:-1], "{run}", "--overwrite"], "--out {run} is --run {run}"),
    "eval-inpaint over its data root": (None, None, [*EVAL_INPAINT[:3], "--data-root", "{data}", "--out", "{data}",
                                                     "--overwrite"], "is --data-root {data}"),
    "speed over its data root": (None, None, ["speed", "--data-root", "{data}", "--out", "{data}", "--overwrite"],
                                 "is --data-root {data}"),
    "suite into its data root": (None, None, ["suite", "--data-root", "{data}", "--out", "{data}/suite"],
                                 "is inside --pretrain-data {data}"),
    "export over the run's encoder": (None, None, [*EXPORT, "--out", "{run}/encoder.pt", "--overwrite"],
                                      "--out {run}/encoder.pt is inside --run {run}"),
    "export of an encoder file over it": (None, None, ["export", "--run", "{run}/encoder.pt", "--to", "torchvision",
                                                       "--out", "{run}/encoder.pt", "--overwrite"],
                                          "is inside --run {run}"),
    # Writes that fail: a full disk, a folder that cannot be written (here /proc).
    "data toy on a full disk": (None, disk_full, ["data", "toy", "--out", "{tmp}/toy", "--images", "4", "--size",
                                                  "128"], f"cannot write {{tmp}}/toy: {NO_ROOM}"),
    "data check on a full disk": (None, partial(disk_full, 10), ["data", "check", "{toy}", "--out",
                                                                 "{tmp}/problems.csv"],
                                  "cannot write {tmp}/problems.csv: File too large"),
    "inpaint on a full disk": (None, disk_full, [*INPAINT, "--quiet"], f"cannot write {{tmp}}/filled: {NO_ROOM}"),
    "export on a full disk": (None, disk_full, [*EXPORT, "--out", "{tmp}/out.pth"],
                              "cannot write {tmp}/out.pth: File too large"),
    "table on a full disk": (None, disk_full, ["table", "--records", "{tmp}/transfer", "--out", "{tmp}/table"],
                             "cannot write {tmp}/table/table.csv: File too large; nothing was written"),
    "report on a full disk": (None, disk_full, ["report", "{run}"], "cannot write {run}/report.html: File too large"),
    "pretrain under /proc": (None, None, [*PRETRAIN[:-1], "/proc/bench-run"],
                             "its lock file /proc/.bench-run.lock cannot be made"),
    "transfer under /proc": (None, None, [*SEG[:-1], "/proc/bench-run"], "its lock file /proc/.bench-run.lock"),
    "inpaint under /proc": (None, None, [*INPAINT[:-1], "/proc/bench-run"], "its lock file /proc/.bench-run.lock"),
    "data toy under /proc": (None, None, ["data", "toy", "--out", "/proc/bench-toy"], "cannot write /proc/bench-toy"),
    "table under /proc": (None, None, ["table", "--records", "{tmp}/transfer", "--out", "/proc/bench-table"],
                          "cannot write /proc/bench-table"),
}
# A transfer record `bench table` reads without complaint.
RECORD = {"task": "cls", "protocol": "svm", "pretrain_method": "context-encoder", "data_root": "toy", "seed": 0,
          "pretrain_seconds": 1.0, "metric": "mAP", "value": 0.5}


def files_as_they_are(folder):
    """{file: (size, modification time, inode)}: writing a file, in place or by renaming a new one
    over it, changes one of them."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*") if p.is_file()}


def user_files(folder):
    """A folder of someone's own files (text, a JPEG, a CSV in a sub-folder) that bench did not write."""
    (folder / "data").mkdir(parents=True)
    (folder / "chapter1.tex").write_text("\\chapter{Context}\n")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "photo.jpg")
    (folder / "data" / "budget.csv").write_text("item,cost\ngpu,1\n")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, pretrain_run, toy_voc_root, toy_class_folders, tmp_path,
                                                   capsys):
    """Exit status 2, one line `error: ...` on stderr, no traceback, and every file under the test's
    folder (the run, records, jobs.json, a file and a folder in the way, a folder of user files, a
    data root) as it was; the user's files byte for byte."""
    target, breaking, command, message = CASES[name]
    run = tmp_path / "run"
    # Hard links: the run's 50 MB are not copied 80 times. The suite replaces files by renaming
    # (write_atomically), which leaves the shared copy alone; the file a case breaks in place is
    # made a copy of its own first. The data root is linked too: a case that deleted it would
    # delete only the links, not the session's toy set.
    shutil.copytree(pretrain_run, run, copy_function=os.link)
    shutil.copytree(toy_voc_root, tmp_path / "data", copy_function=os.link)
    (run / "records" / "a").mkdir(parents=True)
    (run / "records" / "a" / "record.json").write_text(json.dumps({"task": "cls"}))
    (run / "jobs.json").write_text(json.dumps({"plan": [], "jobs": {}}))
    (tmp_path / "transfer" / "a").mkdir(parents=True)
    (tmp_path / "transfer" / "a" / "record.json").write_text(json.dumps(RECORD))
    (tmp_path / "a-file").write_text("in the way")
    (tmp_path / "a-folder").mkdir()
    user_files(tmp_path / "thesis")
    condition = breaking if target is None and breaking else nullcontext
    data = {"root": toy_voc_root, "classes": toy_class_folders}
    broken = run / target if target else None
    if target and target.split("/")[0] in data:
        shutil.copytree(data[target.split("/")[0]], tmp_path / target.split("/")[0])
        broken = tmp_path / target
    elif target and (pretrain_run / target).is_file():
        (run / target).unlink()
        shutil.copyfile(pretrain_run / target, run / target)
    if target:
        breaking(broken)
    before, folders = files_as_they_are(tmp_path), {p for p in tmp_path.rglob("*") if p.is_dir()}
    theirs = {p: p.read_bytes() for p in (tmp_path / "thesis").rglob("*") if p.is_file()}
    names = {"run": run, "toy": toy_voc_root, "tmp": tmp_path, "records": run / "records", "data": tmp_path / "data",
             "root": tmp_path / "root", "classes": tmp_path / "classes"}
    args = [a.format(**names) for a in command]
    capsys.readouterr()
    with condition():
        status = bench(*args)
    assert status == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(**names) in lines[0], err
    if target:
        assert str(broken) in lines[0]  # the file, by its path
    assert files_as_they_are(tmp_path) == before
    assert {p for p in tmp_path.rglob("*") if p.is_dir()} == folders
    assert {p: p.read_bytes() for p in (tmp_path / "thesis").rglob("*") if p.is_file()} == theirs


def test_unpickling_never_runs_code(pretrain_run, tmp_path, capsys):
    """A crafted pickle that would run code when loaded is refused before it runs."""
    run = tmp_path / "run"
    shutil.copytree(pretrain_run, run)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "checkpoint.pt").write_bytes(pickle.dumps({"model": Payload()}))
    assert bench("pretrain", "--resume", "--out", run) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()


@pytest.mark.parametrize("breaking, message", [(truncated, ".u8: truncated"), (not_json, ".json: not valid JSON")])
def test_a_broken_image_cache_is_named_before_the_run_folder_exists(toy_voc_root, tmp_path, monkeypatch, capsys,
                                                                    breaking, message):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    options = ["pretrain", "--data-root", toy_voc_root, "--steps", 1, "--image-size", 64, "--batch-size", 4,
               "--workers", 0, "--mask", "central"]
    assert bench(*options, "--out", tmp_path / "first") == 0
    suffix = ".u8" if message.startswith(".u8") else ".json"
    (cache_file,) = (tmp_path / "cache" / "images").glob(f"*{suffix}")
    breaking(cache_file)
    capsys.readouterr()
    assert bench(*options, "--out", tmp_path / "second") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cache_file}") and message in lines[0]
    assert "bench cache clean" in lines[0] and not (tmp_path / "second").exists()


GOOD_PRESET = ("seeds: [0]\npretrain: {image_size: 64, steps: 2}\nmethods: {ce: {method: context-encoder}}\n"
               "transfer: {image_size: 64}\ntasks: {seg: {task: seg}}\n")


@pytest.mark.parametrize("text, message", [
    (GOOD_PRESET.replace("steps: 2", "steps: many"), "preset pretrain.steps: input should be a valid integer"),
    (GOOD_PRESET.replace("{method: context-encoder}", "{method: context-encoder, steps: 2.5}"),
     "preset methods.ce.steps: input should be a valid integer"),
    (GOOD_PRESET.replace("{method: context-encoder}", "{method: context-encoder, stepz: 3}"),
     "preset methods.ce (--method context-encoder): unknown option(s) stepz"),
    (GOOD_PRESET.replace("{method: context-encoder}", "{method: context-encoder, loss: l3}"),
     "loss must be one of l2, l2+adv"),
    (GOOD_PRESET.replace("seeds: [0]", "seeds: 0"), "seeds: input should be a valid list, got 0"),
    (GOOD_PRESET.replace("seeds: [0]", "seed: [0]"), "seed: unknown section"),
    (GOOD_PRESET.replace("methods: {ce: {method: context-encoder}}", "methods: 3"), "methods: input should be a valid"),
    (GOOD_PRESET.replace("image_size: 64}\ntasks", "image_size: 6.5}\ntasks"), "preset transfer.image_size"),
    (GOOD_PRESET.replace("{task: seg}", "{task: segment}"), "task must be one of"),
    (GOOD_PRESET.replace("steps: 2", "steps: yes"), "preset pretrain.steps: input should be a valid integer, got True"),
    (GOOD_PRESET.replace("seeds: [0]", "seeds: [yes]"), "seeds.0: input should be a valid integer, got True"),
    (GOOD_PRESET.replace("{method: context-encoder}", "{method: context-encoder, lr: .inf}"),
     "preset methods.ce.lr: input should be a finite number, got inf"),
    (GOOD_PRESET.replace("{method: context-encoder}", "{method: context-encoder, steps: 0}"),
     "preset methods.ce: --steps must be at least 1, got 0"),
    (GOOD_PRESET.replace("seg: {task: seg}", "cls-svm: {task: cls, protocol: svm, steps: -3}"),
     "preset tasks.cls-svm: --steps must be at least 1, got -3"),
    (GOOD_PRESET.replace("{task: seg}", "{task: seg, protocol: svm}"),
     "preset tasks.seg: --protocol svm applies to --task cls only"),
    (GOOD_PRESET.replace("methods: {ce: {method: context-encoder}}", "methods: {}"), "preset methods: empty"),
    (GOOD_PRESET.replace("tasks: {seg: {task: seg}}", "tasks: {}"), "preset tasks: empty"),
    (GOOD_PRESET.replace("seeds: [0]", "seeds: []"), "preset seeds: empty"),
    ("", "a preset is a mapping of sections"),
    ("seeds: [0\n", "not valid YAML"),
])
def test_a_broken_preset_is_named_before_any_work(text, message, tmp_path, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    assert bench("suite", "--preset", preset, "--out", tmp_path / "suite") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "suite").exists()  # no jobs.json, no run folder
