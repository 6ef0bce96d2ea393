"""The configuration of a transfer run and what the run works out from it (its context), apart
from the task code, so that the tasks and the code they share can all use them without importing
transfer.tasks."""
import dataclasses
from dataclasses import dataclass

from bench_data.check import BAD_ANNOTATION_POLICIES, BAD_ANNOTATIONS_HELP
from bench_data.pixels import BAD_IMAGE_POLICIES, BAD_IMAGES_HELP
from pretrain.probe import PROBE_PROTOCOLS
from bench_runtime.device import DeviceOptions, seed_value
from bench_runtime.options import at_least, option, positive
from .registry import get_task, task_help, task_names


@dataclass(frozen=True)
class TransferConfig(DeviceOptions):
    """Everything a transfer run depends on; each field with help text is a `bench transfer` flag."""
    task: str = option("seg", task_help, choices=task_names, required=True)
    protocol: str = option("finetune", "cls only: finetune everything, or linear SVMs on frozen pool5 features",
                           choices=("finetune", "svm"))
    init: str = option("random", "a `bench pretrain` run folder, an encoder.pt, 'random' (He-normal), "
                       "'random-gaussian' (N(0, 0.01^2)), 'random-kraehenbuehl' (data-dependent) or "
                       "'torchvision-alexnet:PATH'")
    data_root: str = option("", "a VOC root (default: the built-in toy VOC set), or for a task on class folders "
                            "(see --task) a class-folder root such as ../shared/data/imagenette")
    year: str | None = option(None, "VOC year (default: the task's, see --task; else the newest present)")
    train_split: str | None = option(None, "default: the task's, see --task")
    test_split: str | None = option(None, "default: the task's, see --task")
    image_size: int | None = option(None, "crop side in px (the paper: 227); default: the size the --init "
                                    "encoder was pretrained at (its encoder.json), else 96")
    batch_size: int = option(16, "images per step (split between processes under torchrun)")
    lr: float | None = option(None, "SGD learning rate (default: 0.01 seg, 1e-3 cls and det), polynomial decay")
    steps: int = option(300, "training iterations")
    fc_width: int = option(1024, "width of the fresh fc6/fc7 (the paper: 4096)")
    proposals: str = option("selective-search", "det only: cached selective-search boxes (Fast R-CNN) or a "
                            "jointly trained RPN (Faster R-CNN)", choices=("selective-search", "rpn"))
    rescale: bool = option(False, "scale each encoder layer by one factor to unit-variance outputs on the "
                           "training images first (Kraehenbuehl et al.'s between-layer calibration)")
    seed: int = option(0, "seed of the fresh layers, batches and dropout", check=seed_value)
    bad_images: str = option("fail", BAD_IMAGES_HELP, choices=BAD_IMAGE_POLICIES)
    bad_annotations: str = option("error", BAD_ANNOTATIONS_HELP, choices=BAD_ANNOTATION_POLICIES)
    checkpoint_every: int = option(100, "steps between training checkpoints (what --resume continues from)")
    probe_protocol: str = option("sampled", "probe only: how the kNN scores, as a set: sampled (k 20, temperature "
                                 "0.07, a fixed class-balanced sample of 300 train and 150 test images per class) "
                                 "or lightly (lightly's imagenette benchmark, comparable with its published "
                                 "numbers: k 200, temperature 0.1, the whole train and test splits); the four "
                                 "options below change one value of it", choices=tuple(PROBE_PROTOCOLS))
    knn_k: int | None = option(None, "probe only: neighbours in the kNN vote (default: --probe-protocol's)",
                               check=at_least(1))
    knn_temperature: float | None = option(None, "probe only: temperature T of the kNN vote's weights exp(cos / T) "
                                           "(default: --probe-protocol's)", check=positive)
    probe_train_per_class: int | None = option(None, "probe only: images per class of --train-split, 0: all "
                                               "(default: --probe-protocol's)", check=at_least(0))
    probe_test_per_class: int | None = option(None, "probe only: images per class of --test-split, 0: all "
                                              "(default: --probe-protocol's)", check=at_least(0))
    label: str | None = option(None, "row name in `bench table` (default: the --init encoder's own)")

    def input_paths(self):
        """(option, path) of the data the run reads: its run folder must lie apart from them."""
        return [("--data-root", self.data_root)]

    def input_runs(self):
        """(option, path) of the run the encoder comes from: the run folder must not replace it."""
        return [("--init", self.init)]


@dataclass(frozen=True)
class TransferContext:
    """What a transfer run works out from its TransferConfig before it starts, once
    (transfer.tasks.resolve_transfer); the tasks read these here and the options in the config."""
    device: str  # this process's: --device resolved ("auto": cuda if there is a GPU), cuda:LOCAL_RANK under torchrun
    image_size: int  # --image-size, else the size the --init encoder was pretrained at, else the default
    image_size_from: str  # which of them: "option", "encoder.json" or "default"

    def recorded(self, config):
        """The run's settings as its config.json and record.json hold them: `config` (the run's, with
        its task's data: resolve_transfer) with the task's own defaults (TransferTask.prepare) and
        the image size written in, and where that came from."""
        task = get_task(config.task)
        config = dataclasses.replace(config, image_size=self.image_size)
        return {**dataclasses.asdict(task.prepare(config) if task.prepare else config),
                "image_size_from": self.image_size_from}


def probe_protocol(config):
    """The ProbeProtocol `config` (a TransferConfig) asks for: its --probe-protocol with the values
    that its probe options (knn_k, ..., None: the protocol's) change."""
    chosen = PROBE_PROTOCOLS[config.probe_protocol]
    return dataclasses.replace(chosen, **{field.name: getattr(config, field.name) for field in dataclasses.fields(chosen)
                                          if getattr(config, field.name) is not None})
