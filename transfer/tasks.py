"""One entry point for every transfer task, used by `bench transfer` and `bench suite`."""
from pretrain.errors import UserError
from .classification import run_classification
from .detection import run_detection
from .segmentation import run_segmentation

TASKS = {"cls": run_classification, "det": run_detection, "seg": run_segmentation}
# The paper's data for each task (DESIGN §4).
TASK_DATA = {
    "seg": {"year": "2012", "train_split": "train", "test_split": "val"},
    "cls": {"year": "2007", "train_split": "trainval", "test_split": "test"},
    "det": {"year": "2007", "train_split": "trainval", "test_split": "test"},
}


def run_task(config, run_dir, progress=True):
    if config.task not in TASKS:
        raise UserError(f"unknown task {config.task!r}; choose from {', '.join(sorted(TASKS))}")
    if config.protocol == "svm" and config.task != "cls":
        raise UserError("--protocol svm applies to --task cls only")
    return TASKS[config.task](config, run_dir, progress=progress)
