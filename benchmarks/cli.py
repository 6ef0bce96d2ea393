"""`bench`: the command line. Each sub-command parses options and calls one library function."""
import argparse
import os
import sys
from pathlib import Path

from runtime.device import DEVICE_NAMES, device_name, seed_value
from runtime.errors import UserError
from runtime.options import HelpFormatter, Parser, flag_type


# Each command's --help ends with one of these.
EXAMPLES = {
    "pretrain": "bench pretrain --mask central --lr 1e-3 --steps 1000 --out runs/ce-central",
    "transfer": "bench transfer --task seg --init runs/ce-central",
    "table": "bench table --records runs/transfer --out results",
    "export": "bench export --run runs/ce-central --to torchvision --out ce-alexnet.pth",
    "inpaint": "bench inpaint --run runs/inpaint --images my_photos --out runs/filled",
    "eval-inpaint": "bench eval-inpaint --run runs/inpaint --mask central",
    "suite": "bench suite --preset quick",
    "report": "bench report runs/suite-quick",
    "methods": "bench methods --plugin my_methods.py",
    "data": "bench data toy --out runs/toy-voc",
    "toy": "bench data toy --out runs/toy-voc --images 50",
    "check": "bench data check ../shared/data/VOCdevkit --year 2012 --out voc2012-problems.csv",
    "speed": "bench speed --feature-sizes 128 --precisions fp32 bf16",
    "cache": "bench cache clean --older-than 30",
    "list": "bench cache list",
    "clean": "bench cache clean --older-than 30",
}


def add_command(commands, name, **options):
    """A sub-command parser with --quiet/--verbose and, after its options in --help, an example."""
    p = commands.add_parser(name, epilog=f"example: {EXAMPLES[name]}", **{"formatter_class": HelpFormatter, **options})
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const="quiet", default="normal",
                          help="no progress bars or status lines: results and errors only")
    loudness.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const="verbose",
                          help="progress lines every 5 s instead of 30 s when the output is not a terminal")
    return p


def is_main_process():
    """False in the processes torchrun starts besides the main one: they print nothing."""
    from runtime.distributed import is_main
    return is_main()


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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


def add_device_option(p):
    p.add_argument("--device", type=flag_type(str, device_name), default="auto", help=DEVICE_NAMES)


def add_bad_images_option(p, default):
    from data.pixels import BAD_IMAGE_POLICIES, BAD_IMAGES_HELP
    p.add_argument("--bad-images", default=default, choices=BAD_IMAGE_POLICIES, help=BAD_IMAGES_HELP)


def add_pretrain_parser(commands, method):
    """`bench pretrain`: PretrainConfig's options, then those of `--method` (a name; unknown: the
    default method's)."""
    from pretrain.methods import METHODS
    from pretrain.train import PretrainConfig
    from runtime.options import add_options
    p = add_command(commands, "pretrain", help="learn an encoder without labels",
        description="Train a pretext method and write a run folder: config.json, metrics.jsonl, "
                    "checkpoint.pt, encoder.pt + encoder.json (for `bench transfer`) and preview PNGs. "
                    "With no options: the context encoder on the built-in toy data (quick preset).")
    add_plugin_option(p)
    add_options(p, PretrainConfig)
    p.set_defaults(steps=None)  # with --resume: the run's own
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/<method>-<arch>[-<mask>]-<size>px-seed<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (its saved config is used; "
                        "--steps may extend it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    method_class = METHODS.get(method, METHODS[PretrainConfig.method])
    add_options(p, method_class.Options, title=f"options of --method {method_class.name} "
                f"(`bench pretrain --method NAME --help` shows another method's)")
    p.set_defaults(handler=run_pretrain, method_options_class=method_class.Options)


def run_pretrain(args):
    import dataclasses

    from data.toy_voc import default_data_root
    from pretrain.train import PretrainConfig, pretrain, pretrain_run_name, resume_pretraining
    from runtime.options import option_values
    values = option_values(args, PretrainConfig)
    steps = values.pop("steps")  # None unless given: --resume keeps the run's own
    config = PretrainConfig(**values, method_options=option_values(args, args.method_options_class))
    out = args.out or pretrain_run_name(config)
    if args.resume:
        if args.overwrite:
            raise UserError("--resume and --overwrite exclude each other")
        run_dir = resume_pretraining(out, steps)
    else:
        config = dataclasses.replace(config, steps=config.steps if steps is None else steps,
                                     data_root=str(config.data_root or default_data_root()))
        run_dir = pretrain(config, out, overwrite=args.overwrite)
    if is_main_process():
        print(f"run folder: {run_dir}  (encoder: {run_dir / 'encoder.pt'}, preview: {run_dir / 'preview.png'})")


def add_transfer_parser(commands):
    from runtime.options import add_options
    from transfer.finetune import TransferConfig
    p = add_command(commands, "transfer", help="fine-tune an encoder on a VOC task and write a record",
        description="Fine-tune (or probe) an encoder on a PASCAL VOC task and write "
                    "<out>/record.json with the metric, per-class numbers and the full config. "
                    "seg: FCN-32s, VOC2012 train -> val, mean IU. cls: VOC2007 trainval -> test, mAP. "
                    "det: Fast R-CNN, VOC2007 trainval -> test, VOC07 mAP at IoU 0.5. "
                    "probe: frozen features on a class-folder root (train -> val), kNN and linear top-1.")
    add_options(p, TransferConfig)
    p.add_argument("--out", default=None,
                   help="run folder (default: runs/transfer/<task>-<protocol>-<init run>-seed<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of this command (same options) from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(handler=run_transfer)


def run_transfer(args):
    from data.toy_voc import default_data_root
    from runtime.options import option_values
    from runtime.runfiles import staged_run_dir
    from transfer.finetune import TransferConfig
    from transfer.tasks import run_task, transfer_run_name
    config = TransferConfig(**option_values(args, TransferConfig))
    if config.task != "probe":  # the toy set is VOC; the probe needs a class-folder root
        config.data_root = str(config.data_root or default_data_root())
    out = args.out or transfer_run_name(config)
    with staged_run_dir(out, args.overwrite, args.resume) as staging:
        record = run_task(config, staging)
    if is_main_process():
        print(f"{config.task} {record['metric']} = {100 * record['value']:.1f}%  (record: {Path(out) / 'record.json'})")


def add_export_parser(commands):
    from transfer.export import FORMATS
    p = add_command(
        commands, "export", help="write an encoder in torchvision's, timm's or detectron2's checkpoint layout",
        description="Convert the encoder of a `bench pretrain` run (or an encoder.pt) for use outside "
                    "the suite. torchvision: a state_dict with features.<i> names that loads into "
                    "torchvision.models.alexnet() with strict=False. timm (timm:<model> encoders): "
                    "the timm model's state_dict without its classifier. detectron2: a pickle of "
                    "NumPy arrays named conv1..conv5 with detectron2's checkpoint fields.")
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
    p.add_argument("--seed", type=flag_type(int, seed_value), default=0, help="seed of the holes")
    add_device_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def add_inpaint_parser(commands):
    p = add_command(commands, "inpaint", help="fill holes in your own images with a trained context encoder",
        description="Fill holes in images of any size. Each image's largest centred square is rescaled "
                    "to the network's input size, a hole is drawn and filled there, and the fill is "
                    "rescaled back and pasted into the hole at full resolution (the context keeps its "
                    "own pixels). Writes <out>/<image>.png: masked | fill of each --run | original.")
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
    p = add_command(
        commands, "eval-inpaint", help="score inpainting against the truth, with baselines (the paper's Table 1)",
        description="Fill the same holes in the images of --split with each --run's network and the "
                    "baselines, and score each over the hole with pixels in [0, 1]: mean L1, mean L2, "
                    "PSNR, SSIM. Writes <out>/<row>/record.json (read by `bench table`) and "
                    "<out>/grid.png comparing every row on the same holes.")
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
    p = add_command(commands, "table", help="the paper's Tables 2 and 1 beside the measured records",
        description="Read every record.json under --records and write into --out: from transfer "
                    "records table.csv, table.md, table.json and table.png (mean ± std over seeds) next "
                    "to the paper's Table 2 (results/paper_table2.csv); from `bench eval-inpaint` records "
                    "inpaint_table.csv/.md/.json next to the paper's Table 1 (results/paper_table1.csv, "
                    "measured on Paris StreetView, which is not public).")
    p.add_argument("--records", default="runs/transfer", help="folder searched for record.json files")
    p.add_argument("--out", default="results", help="folder for the table files")
    p.set_defaults(handler=run_table)


def run_table(args):
    from benchmarks.table import write_table
    print_table(write_table(args.records, args.out), args.out)


def print_table(tables, folder):
    for stem, table in tables.items():
        print(table.to_string(index=False))
        also = {"table": ".csv, .json, .png", "inpaint_table": ".csv, .json"}.get(stem, ".csv")
        print(f"written: {Path(folder) / stem}.md (+ {also})\n")


def add_suite_parser(commands):
    from benchmarks.launcher import LAUNCHERS, ClusterOptions
    p = add_command(commands, "suite", help="pretrain every method, run every task for several seeds, build the table",
        description="Run a preset (benchmarks/presets/*.yaml, or a YAML file of the same form): "
                    "pretraining for each method and seed, every transfer task on every encoder, "
                    "then the table. Finished work (encoder.pt / record.json present) is skipped.")
    p.add_argument("--preset", default="quick", help="quick, methods, cpu, paper, or a YAML file")
    p.add_argument("--pretrain-data", "--data-root", dest="data_root", default=None,
                   help="pretraining images (VOC root or folder); default: the built-in toy VOC set")
    p.add_argument("--transfer-data", "--transfer-data-root", dest="transfer_data_root", default=None,
                   help="VOC root for the tasks (and the pretraining probe); default: --pretrain-data")
    p.add_argument("--in-domain-data", default=None,
                   help="class-folder root (train/<class>/, val/<class>/) for the in-domain probe: the presets' "
                        "probe task and the pretraining probe curves, e.g. ../shared/data/imagenette")
    p.add_argument("--mask-dir", default=None, help="VOC segmentation PNGs for random-region masks")
    p.add_argument("--seeds", type=flag_type(int, seed_value), nargs="+", default=None,
                   help="override the preset's seeds")
    add_device_option(p)
    p.add_argument("--out", default=None, help="suite folder (default: runs/suite-<preset>)")
    add_plugin_option(p)
    scale = p.add_argument_group("running at scale (submitit: pip install -e '.[cluster]')")
    scale.add_argument("--launcher", choices=LAUNCHERS, default="sequential",
                       help="sequential: one job after another in this process; local: each job its own "
                            "process, up to --jobs at once; slurm: each job a SLURM job, transfers after "
                            "their pretraining")
    scale.add_argument("--jobs", type=positive_int, default=1, help="local: jobs at once (each gets its share "
                                                                     "of the cores, and a GPU of its own when there are enough)")
    scale.add_argument("--dry-run", action="store_true", help="print the jobs, what each waits for and their "
                                                              "resources; run nothing")
    scale.add_argument("--status", metavar="OUT", default=None,
                       help="list every job of the suite in OUT: done, running, failed (with its error), not started")
    for name, field in ClusterOptions.__dataclass_fields__.items():
        kind = str if name == "partition" else positive_int
        default = {"cpus_per_job": "8 on SLURM, cores / --jobs locally"}.get(name, field.default)
        scale.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                           help=f"{'slurm and local' if name == 'cpus_per_job' else 'slurm'} "
                                f"(default: the preset's cluster: section, else {default})")
    p.set_defaults(handler=run_suite_command)


def add_report_parser(commands):
    p = add_command(commands, "report", help="one HTML page of a suite or run folder: table, curves, grids, configs",
                    description="Write DIR/report.html: the table beside the paper's rows, the bar chart, loss "
                                "and probe curves, preview and prediction grids, and each run's configuration "
                                "and versions. Images are linked relatively: copy the folder whole to share it.")
    p.add_argument("folder", metavar="DIR", help="a `bench suite` output folder, a folder of runs, or one run folder")
    p.set_defaults(handler=run_report)


def run_report(args):
    from benchmarks.report import write_report
    print(f"written: {write_report(args.folder)}")


def add_methods_parser(commands):
    p = add_command(commands, "methods", help="list the registered pretext methods",
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
    from benchmarks.launcher import ClusterOptions, cluster_options, launch
    from benchmarks.suite import (SuiteData, check_needs, check_preset, guide, job_status, load_preset, plan_suite,
                                  run_suite, saved_plan)
    from pretrain.methods import load_plugins
    from data.toy_voc import default_data_root
    from runtime.progress import info
    if args.status:
        for name, state, detail in job_status(saved_plan(args.status), args.status):
            print(f"{name:<50} {state:<12} {detail}")
        return
    preset = load_preset(args.preset)
    load_plugins(args.plugin)
    check_preset(preset)  # every option of every section, before any data is made or read
    check_needs(preset, args.preset, {"pretrain-data": args.data_root, "transfer-data": args.transfer_data_root,
                                      "in-domain-data": args.in_domain_data, "mask-dir": args.mask_dir})
    data = SuiteData(args.data_root or preset.get("data_root") or default_data_root(), args.transfer_data_root,
                     args.in_domain_data, args.mask_dir or preset.get("mask_dir"))
    out = args.out or f"runs/suite-{Path(args.preset).stem}"
    if args.launcher == "sequential" and not args.dry_run:
        table = run_suite(preset, out, data, args.seeds, args.device, plugins=args.plugin)
    else:
        jobs = plan_suite(preset, out, data, args.seeds, args.device, plugins=args.plugin)
        cluster = cluster_options(preset, {k: getattr(args, k) for k in ClusterOptions.__dataclass_fields__})
        table = launch(jobs, out, args.launcher, args.jobs, cluster, args.dry_run)
        if table is None:
            if args.launcher == "slurm" and not args.dry_run:
                print(f"submitted; follow it with: bench suite --status {out}")
            return
    print_table(table, out)
    info(guide(out))


def add_data_parser(commands):
    from data.toy_voc import DEFAULT_TOY
    p = add_command(commands, "data", help="make or check data sets")
    kinds = p.add_subparsers(dest="kind", required=True)
    toy = add_command(kinds, "toy", help="write the synthetic toy VOCdevkit (VOC2007 + VOC2012)")
    toy.add_argument("--out", required=True, help="folder to write VOCdevkit/ into (must be new or empty)")
    toy.add_argument("--images", type=positive_int, default=DEFAULT_TOY["n_images"], help="images per year")
    toy.add_argument("--size", type=positive_int, default=DEFAULT_TOY["size"], help="nominal image side in px")
    toy.add_argument("--seed", type=flag_type(int, seed_value), default=DEFAULT_TOY["seed"])
    toy.add_argument("--classes", type=positive_int, default=DEFAULT_TOY["classes"],
                     help="objects are drawn from the first N of VOC's 20 classes")
    toy.set_defaults(handler=run_data_toy)
    check = add_command(kinds, "check", help="list what is wrong with a VOC root's annotations and masks",
        description="Check every split of a VOC root: the files each split lists (JPEG; annotation for "
                    "ImageSets/Main, class and object masks for ImageSets/Segmentation), boxes outside their "
                    "image, inverted or empty, mask class ids outside 0..20 and 255, mask modes and sizes, and "
                    "annotation sizes against the JPEG. Prints one line per problem (file, kind, detail) and a "
                    "summary; exits 0 when clean, 1 when there are problems. `bench transfer` runs the same "
                    "check on its splits (--bad-annotations).")
    check.add_argument("root", metavar="ROOT", help="a VOC root: the folder holding VOCdevkit/, VOCdevkit/ or VOC<year>/")
    check.add_argument("--year", default=None, help="check only this VOC year (default: every year under ROOT)")
    check.add_argument("--out", default=None, help="also write the problems to this CSV file")
    check.set_defaults(handler=run_data_check)


def run_data_toy(args):
    from data.toy_voc import write_toy_voc
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty; choose a new folder")
    root = write_toy_voc(out, args.images, args.size, args.seed, args.classes)
    print(f"toy VOC written to {root} ({args.images} images per year, see toy_voc.json)")


def run_data_check(args):
    from data.check import root_problems, summary, write_problems
    problems, checked = root_problems(args.root, args.year)
    for problem in problems:
        print(f"{problem.file}  {problem.kind}  {problem.detail}")
    if args.out:
        write_problems(problems, args.out)
    print(summary(problems, checked))
    if problems:
        sys.exit(1)  # so that scripts can tell a clean root by the exit status


def add_cache_parser(commands):
    p = add_command(commands, "cache", help="list or free what commands keep in the cache folder",
                    description="Decoded images (the uint8 cache), detection proposals and the toy VOC set are "
                                "kept in $BENCH_CACHE_DIR (default ~/.cache/context-encoder-bench) for later runs.")
    actions = p.add_subparsers(dest="action", required=True)
    listing = add_command(actions, "list", help="every entry with its size and the days since it was last used")
    listing.set_defaults(handler=run_cache_list)
    clean = add_command(actions, "clean", help="delete entries (all, or those unused for --older-than days)")
    clean.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                       help="delete only entries not used for this many days (0: everything)")
    clean.set_defaults(handler=run_cache_clean)


def run_cache_list(args):
    from runtime.cache import cache_entries, human_size
    from runtime.runfiles import cache_dir
    entries = cache_entries()
    print(f"cache folder: {cache_dir()}")
    for entry in entries:
        print(f"{human_size(entry.bytes):>9}  {entry.age_days:6.1f} days  {entry.kind:<12} {entry.name}  {entry.about}")
    print(f"{human_size(sum(e.bytes for e in entries)):>9}  in {len(entries)} entries "
          f"(`bench cache clean --older-than DAYS` frees them)")


def run_cache_clean(args):
    from runtime.cache import clean_cache, human_size
    if args.older_than < 0:
        raise UserError(f"--older-than must be 0 or more days, got {args.older_than}")
    removed = clean_cache(args.older_than)
    print(f"removed {len(removed)} entries, {human_size(sum(e.bytes for e in removed))}")


def add_speed_parser(commands):
    from runtime.speedups import PRECISIONS
    p = add_command(commands, "speed", help="measure training throughput against the machine's matmul peak",
        description="Measure the matmul peak (fp32, bf16), model-only training throughput on random "
                    "tensors and end-to-end pretraining throughput on real files, for the feature network "
                    "(AlexNet context encoder, random-region holes) at each --feature-sizes and the "
                    "inpainting network at 128 px, in each --precisions. Prints a table and writes "
                    "speed.json, speed.csv and speed.md into --out.")
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
    add_device_option(p)
    p.add_argument("--workers", type=non_negative_int, default=1, help="DataLoader worker processes")
    p.add_argument("--loader-sizes", type=positive_int, nargs="*", default=[128, 227],
                   help="input sizes of the data-path rows (every mask kind at each; none: leave them out)")
    p.add_argument("--loader-batch", type=positive_int, default=64, help="batch size of the data-path rows")
    p.add_argument("--loader-batches", type=positive_int, default=20, help="timed batches per data-path row")
    p.add_argument("--levers", action="store_true",
                   help="also time the inpainting network's step with each speed lever (sub-pixel up-convolutions, "
                        "channels_last, torch.compile, threads)")
    p.add_argument("--assume-tflops", type=positive_float, default=None,
                   help="project the paper preset for a device of this bf16 peak (default: the measured device)")
    p.add_argument("--loader-cores", type=positive_int, default=None,
                   help="loader workers of the projected machine (default: this machine's cores)")
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
                       args.overwrite, loader_sizes=args.loader_sizes, loader_batch=args.loader_batch, loader_batches=args.loader_batches,
                       levers=args.levers, assume_tflops=args.assume_tflops, loader_cores=args.loader_cores)
    print((out / "speed.md").read_text())
    print(f"written: {out / 'speed.json'} (+ .csv, .md)")


def build_parser(method=None):
    """The `bench` parser; `method` chooses whose options `bench pretrain` offers."""
    parser = Parser(
        prog="bench", description="Context-encoder pretraining and PASCAL VOC transfer benchmarks.",
        formatter_class=HelpFormatter,
        epilog="example: bench suite --preset quick (then bench <command> --help)")
    parser.add_argument("--version", action=VersionAction)
    commands = parser.add_subparsers(dest="command", required=True)
    add_pretrain_parser(commands, method)
    add_transfer_parser(commands)
    add_table_parser(commands)
    add_export_parser(commands)
    add_inpaint_parser(commands)
    add_eval_inpaint_parser(commands)
    add_suite_parser(commands)
    add_report_parser(commands)
    add_methods_parser(commands)
    add_data_parser(commands)
    add_speed_parser(commands)
    add_cache_parser(commands)
    return parser


class VersionAction(argparse.Action):
    """--version: worked out only when asked for (it runs git and imports torch)."""

    def __init__(self, option_strings, dest, **options):
        super().__init__(option_strings, dest, nargs=0, help="show the version, the commit and torch's, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())  # on stdout, as argparse's own version action
        parser.exit()


def version():
    """bench's version, the commit it runs from, and torch's."""
    import importlib.metadata

    import torch

    from runtime.runfiles import code_version
    return (f"bench {importlib.metadata.version('context-encoder-bench')} (commit {code_version()}), "
            f"torch {torch.__version__}")


def early_options(argv):
    """The --plugin modules and the --method of a command line, read before the full parser is
    built: the methods the plugins register must be among --method's choices, and the method's
    own options among the flags."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    early.add_argument("--method", default=None)
    return early.parse_known_args(argv)[0]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        from pretrain.methods import load_plugins
        early = early_options(argv)
        load_plugins(early.plugin)
        args = build_parser(early.method).parse_args(argv)
        from runtime.device import start_process
        from runtime.runfiles import check_out_path
        if getattr(args, "out", None):
            check_out_path(args.out)
        from runtime.progress import set_verbosity
        set_verbosity(getattr(args, "verbosity", "normal"))
        start_process(getattr(args, "device", None))  # under torchrun: join the process group first
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
    except BrokenPipeError:  # the reader of stdout has gone (`bench table ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail
        return 0
    finally:
        from runtime.distributed import shutdown
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
