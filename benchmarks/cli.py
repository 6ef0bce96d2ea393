"""`bench`: the command line. Each sub-command parses options and calls one library function."""
import argparse
import os
import sys
from pathlib import Path

from runtime.errors import UserError


def is_main_process():
    """False in the processes torchrun starts besides the main one: they print nothing."""
    from runtime.distributed import is_main
    return is_main()


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_plugin_option(p):
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (an import path or a .py file) first, so the pretext methods it "
                        "registers can be used")


def add_bad_images_option(p, default):
    from data.pixels import BAD_IMAGE_POLICIES
    p.add_argument("--bad-images", default=default, choices=BAD_IMAGE_POLICIES,
                   help="an image that cannot be decoded: stop the run naming it (fail), or check every image "
                        "first and leave the unreadable ones out with a warning (skip)")


def add_scaling_options(p, defaults):
    """--precision, --compile and --sync-bn, shared by pretrain and transfer."""
    from runtime.speedups import PRECISIONS
    p.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                   help="autocast dtype of forward passes and losses: bf16 on CUDA or CPUs with bf16 "
                        "instructions, fp16 on CUDA (with loss scaling)")
    p.add_argument("--compile", action="store_true", help="compile the networks with torch.compile")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)")


def add_pretrain_parser(commands):
    from data.masks import MASK_KINDS
    from pretrain.methods import METHODS
    from pretrain.methods.context_encoder import LOSSES, OPTIMIZERS
    from pretrain.train import PretrainConfig
    defaults = PretrainConfig()
    p = commands.add_parser(
        "pretrain", help="learn an encoder without labels",
        description="Train a pretext method and write a run folder: config.json, metrics.jsonl, "
                    "checkpoint.pt, encoder.pt + encoder.json (for `bench transfer`) and preview PNGs. "
                    "With no options: the context encoder on the built-in toy data (quick preset).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", default=defaults.method, choices=sorted(METHODS),
                   help="pretext method (`bench methods` lists them)")
    add_plugin_option(p)
    p.add_argument("--arch", default=defaults.arch,
                   help="backbone: alexnet (the paper's feature-learning network, any size >= 63 px) or "
                        "timm:<model name> (e.g. timm:resnet18); context-encoder also takes inpaint "
                        "(the 128 px inpainting network with a 4000-d bottleneck)")
    p.add_argument("--mask", default=defaults.mask, choices=MASK_KINDS, help="hole strategy")
    p.add_argument("--loss", default=defaults.loss, choices=LOSSES,
                   help="l2: masked L2; l2+adv: 0.999 L2 + 0.001 adversarial (DCGAN discriminator)")
    p.add_argument("--data-root", default=None,
                   help="a VOC root (VOCdevkit parent, VOCdevkit or VOC<year>) or any folder of "
                        "images; default: the built-in toy VOC set")
    p.add_argument("--split", default=defaults.split, help="image set of a VOC root")
    p.add_argument("--year", default=None, help="VOC year folder (default: the newest present)")
    p.add_argument("--mask-dir", default=None,
                   help="folder of VOC segmentation PNGs for random-region shapes "
                        "(default: the data root's SegmentationClass)")
    p.add_argument("--image-size", type=positive_int, default=defaults.image_size,
                   help="square crop side fed to the network (paper: 227 alexnet, 128 inpaint)")
    p.add_argument("--load-size", type=positive_int, default=None,
                   help="images are rescaled to this shorter side before the random crop "
                        "(default: 1.15 x image size; the paper's inpainting used 350)")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate of the network (the discriminator gets lr/10); default: "
                        "1e-3 central / 1e-4 other masks for alexnet, 2e-3 for inpaint")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"training iterations (default: {defaults.steps}; with --resume: the run's own)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=non_negative_int, default=defaults.workers, help="DataLoader worker processes")
    add_bad_images_option(p, defaults.bad_images)
    add_scaling_options(p, defaults)
    p.add_argument("--no-image-cache", dest="image_cache", action="store_false",
                   help="decode every image at every use instead of once into the uint8 cache under the "
                        "cache folder ($BENCH_CACHE_DIR/images)")
    p.add_argument("--overlap", type=non_negative_int, default=defaults.overlap,
                   help="width in px of the band around the hole that is predicted too, at --overlap-weight "
                        "(default: 0 for the feature networks, the paper's L2 over the dropped pixels only; "
                        "4 for --arch inpaint, as the released inpainting code)")
    p.add_argument("--overlap-weight", type=float, default=defaults.overlap_weight,
                   help="L2 weight of the overlap band relative to the hole")
    p.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS,
                   help="context encoder: the generator's optimiser (sgd: momentum 0.9; give --lr)")
    p.add_argument("--adv-weight", type=float, default=defaults.adv_weight,
                   help="weight of the adversarial term with --loss l2+adv")
    p.add_argument("--probe-data", default=None,
                   help="a labelled VOC root: every --probe-every steps (and at step 0) score the encoder's "
                        "frozen pool5 features by kNN on its --probe-splits (mAP into metrics.jsonl and probe.png)")
    p.add_argument("--probe-every", type=positive_int, default=defaults.probe_every, help="steps between probes")
    p.add_argument("--probe-splits", nargs=2, default=[defaults.probe_train_split, defaults.probe_test_split],
                   metavar=("TRAIN", "TEST"), help="image sets of --probe-data: kNN neighbours, scored images")
    p.add_argument("--preview-every", type=positive_int, default=defaults.preview_every,
                   help="write a preview grid every N steps")
    p.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every,
                   help="write checkpoint.pt every N steps")
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<method>-<arch>[-<mask>]-<size>px-seed<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (its saved config is used; "
                        "--steps may extend it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(handler=run_pretrain)


def run_pretrain(args):
    from data.toy_voc import default_data_root
    from pretrain.methods import get_method
    from pretrain.train import PretrainConfig, pretrain, resume_pretraining
    mask = f"-{args.mask}" if get_method(args.method).uses_masks else ""
    out = args.out or f"runs/{args.method}-{args.arch}{mask}-{args.image_size}px-seed{args.seed}"
    if args.resume:
        if args.overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        run_dir = resume_pretraining(out, args.steps)
    else:
        config = PretrainConfig(
            method=args.method, arch=args.arch, mask=args.mask, loss=args.loss,
            data_root=str(args.data_root or default_data_root()), split=args.split, year=args.year,
            mask_dir=args.mask_dir, image_size=args.image_size, load_size=args.load_size,
            batch_size=args.batch_size, lr=args.lr, steps=args.steps or PretrainConfig.steps,
            seed=args.seed, device=args.device, workers=args.workers, overlap=args.overlap,
            overlap_weight=args.overlap_weight, adv_weight=args.adv_weight, optimizer=args.optimizer,
            preview_every=args.preview_every, checkpoint_every=args.checkpoint_every,
            bad_images=args.bad_images, precision=args.precision, compile=args.compile, sync_bn=args.sync_bn,
            image_cache=args.image_cache, probe_data=args.probe_data, probe_every=args.probe_every,
            probe_train_split=args.probe_splits[0], probe_test_split=args.probe_splits[1])
        run_dir = pretrain(config, out, overwrite=args.overwrite)
    if is_main_process():
        print(f"run folder: {run_dir}  (encoder: {run_dir / 'encoder.pt'}, preview: {run_dir / 'preview.png'})")


def add_transfer_parser(commands):
    from transfer.finetune import TransferConfig
    from transfer.tasks import TASKS
    defaults = TransferConfig()
    p = commands.add_parser(
        "transfer", help="fine-tune an encoder on a VOC task and write a record",
        description="Fine-tune (or probe) an encoder on a PASCAL VOC task and write "
                    "<out>/record.json with the metric, per-class numbers and the full config. "
                    "seg: FCN-32s, VOC2012 train -> val, mean IU. cls: VOC2007 trainval -> test, mAP. "
                    "det: Fast R-CNN, VOC2007 trainval -> test, VOC07 mAP at IoU 0.5.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--init", default="random",
                   help="a `bench pretrain` run folder, an encoder.pt, or 'random' (no pretraining)")
    p.add_argument("--protocol", default="finetune", choices=("finetune", "svm"),
                   help="cls only: finetune everything, or linear SVMs on frozen pool5 features")
    p.add_argument("--proposals", default="selective-search", choices=("selective-search", "rpn"),
                   help="det only: cached selective-search boxes (Fast R-CNN) or a jointly trained "
                        "RPN (Faster R-CNN)")
    p.add_argument("--rescale", action="store_true",
                   help="rescale the encoder's layers to unit-variance outputs on the training images "
                        "first (Krähenbühl et al.'s data-dependent rescaling)")
    p.add_argument("--data-root", default=None, help="a VOC root; default: the built-in toy VOC set")
    p.add_argument("--year", default=None,
                   help="VOC year (default: 2012 for seg, 2007 for cls/det, else the newest present)")
    p.add_argument("--train-split", default=None, help="default: train (seg), trainval (cls, det)")
    p.add_argument("--test-split", default=None, help="default: val (seg), test (cls, det)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="crop side in px (the paper: 227); default: the size the --init encoder was "
                        "pretrained at (its encoder.json), else 96")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate (default: 0.01 seg, 1e-3 cls and det), polynomial decay")
    p.add_argument("--steps", type=positive_int, default=defaults.steps, help="training iterations")
    p.add_argument("--fc-width", type=positive_int, default=defaults.fc_width,
                   help="width of the fresh fc6/fc7 (the paper: 4096)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=non_negative_int, default=defaults.workers)
    add_bad_images_option(p, defaults.bad_images)
    add_scaling_options(p, defaults)
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/transfer/<task>-<protocol>-<init>-seed<seed>)")
    p.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every,
                   help="steps between training checkpoints (what --resume continues from)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of this command (same options) from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(handler=run_transfer)


def voc_year(root, wanted):
    """`wanted` if the root has that VOC year, else the newest year it has."""
    from data.images import find_voc_dir
    try:
        return find_voc_dir(root, wanted).name[3:]
    except UserError:
        return find_voc_dir(root).name[3:]


def run_transfer(args):
    from data.toy_voc import default_data_root
    from runtime.runfiles import staged_run_dir
    from transfer.finetune import TransferConfig
    from transfer.tasks import TASK_DATA, run_task
    if args.lr is not None and args.lr <= 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    task = TASK_DATA[args.task]
    data_root = str(args.data_root or default_data_root())
    config = TransferConfig(
        task=args.task, protocol=args.protocol, init=args.init, data_root=data_root,
        year=args.year or voc_year(data_root, task["year"]),
        train_split=args.train_split or task["train_split"], test_split=args.test_split or task["test_split"],
        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
        fc_width=args.fc_width, proposals=args.proposals, rescale=args.rescale,
        checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device, workers=args.workers,
        bad_images=args.bad_images, precision=args.precision, compile=args.compile, sync_bn=args.sync_bn)
    init_name = "random" if args.init == "random" else Path(args.init).resolve().name.removesuffix(".pt")
    variant = args.proposals if args.task == "det" else args.protocol
    rescaled = "-rescaled" if args.rescale else ""
    out = args.out or f"runs/transfer/{args.task}-{variant}-{init_name}{rescaled}-seed{args.seed}"
    with staged_run_dir(out, args.overwrite, args.resume) as staging:
        record = run_task(config, staging)
    if is_main_process():
        print(f"{args.task} {record['metric']} = {100 * record['value']:.1f}%  (record: {Path(out) / 'record.json'})")


def add_export_parser(commands):
    from transfer.export import FORMATS
    p = commands.add_parser(
        "export", help="write an encoder in torchvision's, timm's or detectron2's checkpoint layout",
        description="Convert the encoder of a `bench pretrain` run (or an encoder.pt) for use outside "
                    "the suite. torchvision: a state_dict with features.<i> names that loads into "
                    "torchvision.models.alexnet() with strict=False. timm (timm:<model> encoders): "
                    "the timm model's state_dict without its classifier. detectron2: a pickle of "
                    "NumPy arrays named conv1..conv5 with detectron2's checkpoint fields.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="a `bench pretrain` run folder or an encoder.pt")
    p.add_argument("--to", required=True, choices=FORMATS, help="target checkpoint layout")
    p.add_argument("--out", required=True, help="file to write (.pth for torchvision and timm, .pkl for detectron2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=run_export)


def run_export(args):
    from transfer.export import export_encoder
    out = export_encoder(args.run, args.to, Path(args.out), args.overwrite)
    print(f"wrote {out} ({args.to} layout)")


def add_inpaint_options(p):
    from evaluation.inpainting import INPAINT_MASKS
    p.add_argument("--run", required=True, action="append",
                   help="a context-encoder `bench pretrain` run folder; repeat to compare runs on the same holes")
    p.add_argument("--mask", default=None, choices=INPAINT_MASKS, help="hole kind (default: the run's own)")
    p.add_argument("--mask-dir", default=None,
                   help="VOC segmentation PNGs for random-region holes (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the holes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def add_inpaint_parser(commands):
    p = commands.add_parser(
        "inpaint", help="fill holes in your own images with a trained context encoder",
        description="Fill holes in images of any size. Each image's largest centred square is rescaled "
                    "to the network's input size, a hole is drawn and filled there, and the fill is "
                    "rescaled back and pasted into the hole at full resolution (the context keeps its "
                    "own pixels). Writes <out>/<image>.png: masked | fill of each --run | original.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", required=True, help="an image file or a folder of images")
    p.add_argument("--out", required=True, help="new folder for the side-by-side PNGs")
    add_inpaint_options(p)
    p.set_defaults(handler=run_inpaint)


def run_inpaint(args):
    from evaluation.inpainting import inpaint_files
    from runtime.runfiles import staged_run_dir
    if not Path(args.images).exists():
        raise UserError(f"--images {args.images} does not exist")
    with staged_run_dir(args.out, args.overwrite) as staging:
        written = inpaint_files(args.run, args.images, staging, args.mask, args.mask_dir, args.seed, args.device)
    print(f"wrote {len(written)} side-by-side PNG(s) to {args.out}")


def add_eval_inpaint_parser(commands):
    from evaluation.inpainting import ROWS
    p = commands.add_parser(
        "eval-inpaint", help="score inpainting against the truth, with baselines (the paper's Table 1)",
        description="Fill the same holes in the images of --split with each --run's network and the "
                    "baselines, and score each over the hole with pixels in [0, 1]: mean L1, mean L2, "
                    "PSNR, SSIM. Writes <out>/<row>/record.json (read by `bench table`) and "
                    "<out>/grid.png comparing every row on the same holes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None, help="a VOC root or folder of images; default: the toy VOC set")
    p.add_argument("--split", default="val", help="image set evaluated (of a VOC root)")
    p.add_argument("--year", default=None, help="VOC year folder (default: the newest present)")
    p.add_argument("--database-split", default="train",
                   help="image set the nearest-neighbour rows search (the evaluated images are left out)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                   help="network and nn-features: per --run; the others: classical baselines")
    add_bad_images_option(p, "fail")
    p.add_argument("--out", default=None,
                   help="folder for the records (default: runs/transfer/inpaint-<run>-<mask>-<split>-seed<seed>)")
    add_inpaint_options(p)
    p.set_defaults(handler=run_eval_inpaint)


def run_eval_inpaint(args):
    from data.toy_voc import default_data_root
    from evaluation.inpainting import evaluate_inpainting
    from runtime.runfiles import staged_run_dir
    data_root = str(args.data_root or default_data_root())
    mask = f"-{args.mask}" if args.mask else ""
    out = args.out or f"runs/transfer/inpaint-{Path(args.run[0]).resolve().name}{mask}-{args.split}-seed{args.seed}"
    with staged_run_dir(out, args.overwrite) as staging:
        records = evaluate_inpainting(args.run, data_root, args.split, staging, args.rows, args.year, args.mask,
                                      args.mask_dir, args.database_split, args.seed, args.bad_images, args.device)
    print(f"{'row':<60} {'L1 %':>6} {'L2 %':>6} {'PSNR dB':>8} {'SSIM':>6}")
    for record in records:
        m = record["metrics"]
        psnr = "inf" if m["psnr"] == "inf" else f"{m['psnr']:.2f}"
        print(f"{record['pretrain_label'][:60]:<60} {100 * m['l1']:>6.2f} {100 * m['l2']:>6.2f} {psnr:>8} "
              f"{m['ssim']:>6.3f}")
    print(f"records and grid.png in {out}")


def add_table_parser(commands):
    p = commands.add_parser(
        "table", help="the paper's Tables 2 and 1 beside the measured records",
        description="Read every record.json under --records and write into --out: from transfer "
                    "records table.csv, table.md, table.json and table.png (mean ± std over seeds) next "
                    "to the paper's Table 2 (results/paper_table2.csv); from `bench eval-inpaint` records "
                    "inpaint_table.csv/.md/.json next to the paper's Table 1 (results/paper_table1.csv, "
                    "measured on Paris StreetView, which is not public).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--records", default="runs/transfer", help="folder searched for record.json files")
    p.add_argument("--out", default="results", help="folder for the table files")
    p.set_defaults(handler=run_table)


def run_table(args):
    from benchmarks.table import write_table
    print_table(write_table(args.records, args.out), args.out)


def print_table(tables, folder):
    for stem, table in tables.items():
        print(table.to_string(index=False))
        print(f"written: {Path(folder) / stem}.md (+ .csv, .json{', .png' if stem == 'table' else ''})\n")


def add_suite_parser(commands):
    p = commands.add_parser(
        "suite", help="pretrain every method, run every task for several seeds, build the table",
        description="Run a preset (benchmarks/presets/*.yaml, or a YAML file of the same form): "
                    "pretraining for each method and seed, every transfer task on every encoder, "
                    "then the table. Finished work (encoder.pt / record.json present) is skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="quick", help="quick, methods, cpu, paper, or a YAML file")
    p.add_argument("--pretrain-data", "--data-root", dest="data_root", default=None,
                   help="pretraining images (VOC root or folder); default: the built-in toy VOC set")
    p.add_argument("--transfer-data", "--transfer-data-root", dest="transfer_data_root", default=None,
                   help="VOC root for the tasks (and the pretraining probe); default: --pretrain-data")
    p.add_argument("--mask-dir", default=None, help="VOC segmentation PNGs for random-region masks")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="suite folder (default: runs/suite-<preset>)")
    add_plugin_option(p)
    p.set_defaults(handler=run_suite_command)


def add_methods_parser(commands):
    p = commands.add_parser(
        "methods", help="list the registered pretext methods",
        description="List every pretext method `bench pretrain --method` accepts: the built-ins, "
                    "those of installed packages (entry-point group context_encoder_bench.methods) "
                    "and those of --plugin modules.")
    add_plugin_option(p)
    p.set_defaults(handler=run_methods)


def run_methods(args):
    from pretrain.methods import METHODS
    width = max(map(len, METHODS))
    for name, cls in sorted(METHODS.items()):
        masks = " [uses --mask]" if cls.uses_masks else ""
        print(f"{name:<{width}}  {cls.description}{masks}  ({cls.__module__})")


def run_suite_command(args):
    from benchmarks.suite import load_preset, run_suite
    from data.toy_voc import default_data_root
    preset = load_preset(args.preset)
    given = {"pretrain-data": args.data_root, "transfer-data": args.transfer_data_root, "mask-dir": args.mask_dir}
    for option, hint in (preset.get("needs") or {}).items():
        if given.get(option) is None:
            raise UserError(f"preset {args.preset} needs --{option} ({hint})")
    data_root = args.data_root or preset.get("data_root") or default_data_root()
    out = args.out or f"runs/suite-{Path(args.preset).stem}"
    table = run_suite(preset, out, data_root, args.mask_dir or preset.get("mask_dir"),
                      args.transfer_data_root, voc_year, args.seeds, args.device)
    print_table(table, out)


def add_data_parser(commands):
    from data.toy_voc import DEFAULT_TOY
    p = commands.add_parser("data", help="make data sets")
    kinds = p.add_subparsers(dest="kind", required=True)
    toy = kinds.add_parser("toy", help="write the synthetic toy VOCdevkit (VOC2007 + VOC2012)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    toy.add_argument("--out", required=True, help="folder to write VOCdevkit/ into (must be new or empty)")
    toy.add_argument("--images", type=positive_int, default=DEFAULT_TOY["n_images"], help="images per year")
    toy.add_argument("--size", type=positive_int, default=DEFAULT_TOY["size"], help="nominal image side in px")
    toy.add_argument("--seed", type=int, default=DEFAULT_TOY["seed"])
    toy.set_defaults(handler=run_data_toy)


def run_data_toy(args):
    from data.toy_voc import write_toy_voc
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new folder")
    root = write_toy_voc(out, args.images, args.size, args.seed)
    print(f"toy VOC written to {root} ({args.images} images per year, see toy_voc.json)")


def add_speed_parser(commands):
    from runtime.speedups import PRECISIONS
    p = commands.add_parser(
        "speed", help="measure training throughput against the machine's matmul peak",
        description="Measure the matmul peak (fp32, bf16), model-only training throughput on random "
                    "tensors and end-to-end pretraining throughput on real files, for the feature network "
                    "(AlexNet context encoder, random-region holes) at each --feature-sizes and the "
                    "inpainting network at 128 px, in each --precisions. Prints a table and writes "
                    "speed.json, speed.csv and speed.md into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=None,
                   help="images for the end-to-end runs (a VOC root or folder); default: the built-in toy VOC set")
    p.add_argument("--mask-dir", default=None,
                   help="VOC segmentation PNGs for random-region holes (default: the data root's SegmentationClass)")
    p.add_argument("--feature-sizes", type=positive_int, nargs="+", default=[128, 227],
                   help="input sizes of the feature network")
    p.add_argument("--feature-batch", type=positive_int, default=32, help="batch size of the feature network")
    p.add_argument("--inpaint-batch", type=non_negative_int, default=64,
                   help="batch size of the inpainting network (0: leave it out)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"])
    p.add_argument("--steps", type=positive_int, default=5, help="timed training steps per measurement")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps before them")
    p.add_argument("--matmul-size", type=positive_int, default=2048, help="side of the square matmuls")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=non_negative_int, default=1, help="DataLoader worker processes")
    p.add_argument("--out", default=None, help="results folder (default: runs/speed-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results folder")
    p.set_defaults(handler=run_speed_command)


def run_speed_command(args):
    import time

    from benchmarks.speed import default_cases, run_speed
    from data.toy_voc import default_data_root
    from runtime.device import resolve_device
    out = args.out or f"runs/speed-{time.strftime('%Y%m%d-%H%M%S')}"
    cases = default_cases(args.feature_sizes, args.feature_batch, args.inpaint_batch)
    out, _ = run_speed(out, args.data_root or default_data_root(), args.mask_dir, cases, args.precisions,
                       resolve_device(args.device), args.workers, args.warmup, args.steps, args.matmul_size,
                       args.overwrite)
    print((out / "speed.md").read_text())
    print(f"written: {out / 'speed.json'} (+ .csv, .md)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="bench", description="Context-encoder pretraining and PASCAL VOC transfer benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(commands)
    add_transfer_parser(commands)
    add_table_parser(commands)
    add_export_parser(commands)
    add_inpaint_parser(commands)
    add_eval_inpaint_parser(commands)
    add_suite_parser(commands)
    add_methods_parser(commands)
    add_data_parser(commands)
    add_speed_parser(commands)
    return parser


def plugin_modules(argv):
    """The --plugin modules of a command line, read before the full parser is built, since the
    methods they register must be among --method's choices."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    return early.parse_known_args(argv)[0].plugin


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        from pretrain.methods import load_plugins
        load_plugins(plugin_modules(argv))
        args = build_parser().parse_args(argv)
        import torch
        # All the cores we may use, no more; shared between torchrun's processes on this machine.
        processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes_here))
        if getattr(args, "device", None) is not None:  # under torchrun: join the process group first
            from runtime.device import resolve_device
            from runtime.distributed import setup
            setup(resolve_device(args.device))
        args.handler(args)
    except UserError as exc:
        # An error raised in a DataLoader worker arrives wrapped in the worker's traceback;
        # its last line is the message.
        message = str(exc).strip().splitlines()[-1].removeprefix(f"{UserError.__module__}.UserError: ")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from runtime.distributed import shutdown
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
