"""Shared fixtures: a small generated toy VOC set and a copy a test may break, a private cache
folder for every test, a private method registry, and a tiny pretraining run."""
import os
import shutil
from pathlib import Path

import pytest
import torch

import pretrain.methods
from bench_data.toy_voc import write_toy_class_folders, write_toy_voc
from helpers import bench


if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # Under pytest-xdist (`make test` runs `-n auto`) the workers share the cores: each gets its part,
    # as the commands it runs do (bench_runtime.device.start_process reads OMP_NUM_THREADS), instead of
    # every worker's OpenMP threads competing for all of them.
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0))
                                            // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def bench_cache_dir(tmp_path_factory):
    """Point BENCH_CACHE_DIR at a temporary folder so no test writes to ~/.cache.

    Session-scoped (not the function-scoped `monkeypatch`) so that module- and session-scoped
    fixtures that run the CLI see it too.
    """
    cache = tmp_path_factory.mktemp("bench-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def toy_voc_root(tmp_path_factory):
    """A 24-image, 64 px toy VOCdevkit (VOC2007 + VOC2012, 12 train images per year), read-only by
    convention: tests that need to break it copy it first."""
    return write_toy_voc(tmp_path_factory.mktemp("toy-voc"), n_images=24, size=64, seed=0)


@pytest.fixture(scope="session")
def pretrain_run(toy_voc_root, tmp_path_factory):
    """A two-step context-encoder run (96 px, central holes) for tests that need a run folder."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert bench("pretrain", "--data-root", toy_voc_root, "--out", out, "--image-size", 96, "--steps", 2,
                 "--batch-size", 4, "--workers", 0, "--mask", "central") == 0
    return out


@pytest.fixture
def toy_copy(toy_voc_root, tmp_path):
    """A private copy of the toy root that a test may break."""
    return Path(shutil.copytree(toy_voc_root, tmp_path / "root"))


@pytest.fixture
def private_registry():
    """Methods a test registers (plug-ins) are gone from the registry after the test."""
    saved = dict(pretrain.methods.METHODS)
    yield
    pretrain.methods.METHODS.clear()
    pretrain.methods.METHODS.update(saved)


@pytest.fixture(scope="session")
def toy_class_folders(tmp_path_factory):
    """A class-folder root (train/<class>/, val/<class>/) of toy scenes: 4 classes, 12 + 6 images each."""
    return write_toy_class_folders(tmp_path_factory.mktemp("toy-classes"))
