"""`bench data fetch`: a real data set in one command, downloaded, verified, extracted and checked.

The URLs and MD5s are torchvision's own (torchvision.datasets.voc.DATASET_YEAR_DICT and
Imagenette._ARCHIVES), not retyped here. Other code agrees with them: the imagenette MD5s recur in
independent projects that download the same fast.ai tarballs, the VOC2012 one in download scripts
that cite torchvision. fast.ai's imagenette page publishes no checksum, so torchvision's table is
the reference for those three.

Nothing that looks complete is left by a failure: an archive downloads to <name>.part and takes its
own name only once its MD5 matches (a mismatch deletes it); the archives extract into a staging
folder beside the data set's folder, which is renamed into place only when every archive is in.

SBD (the Berkeley "SegmentationClassAug" masks) is not offered: the segmentation task trains and
tests on VOC2012's own ImageSets/Segmentation splits (bench_data/voc.py VOCSegmentation reads
SegmentationClass PNGs and nothing of SBD's .mat files), and --mask-dir needs only mask shapes,
which VOC2012's 2,913 SegmentationClass PNGs give (bench_data/masks.py reads at most 2,000).
"""
import http.client
import shutil
import tarfile
import zlib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets import Imagenette
from torchvision.datasets.utils import check_integrity, extract_archive
from torchvision.datasets.voc import DATASET_YEAR_DICT as VOC_ARCHIVES

from bench_runtime.errors import UserError
from bench_runtime.options import option
from bench_runtime.progress import info, progress_bar
from bench_runtime.runfiles import replace_run_dir, staging_dir
from .check import DataCheckConfig, check_root

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60  # a stalled connection ends the run (the .part is kept) instead of hanging it
USER_AGENT = "context-encoder-bench"  # some hosts refuse urllib's default agent


@dataclass(frozen=True)
class DataSet:
    """What `bench data fetch NAME` makes under --root: `archives`, (url, md5) pairs, extract into
    `folder` (a path relative to --root, the same inside every archive); `check_year` is the VOC
    year `bench data check` reads (None: a class-folder root); `usage` says which options take what,
    with {root} and {folder} for the paths."""
    archives: tuple
    folder: str
    check_year: str | None
    usage: str


def _voc(*keys, usage):
    year = keys[0]
    return DataSet(tuple((VOC_ARCHIVES[key]["url"], VOC_ARCHIVES[key]["md5"]) for key in keys),
                   f"VOCdevkit/VOC{year}", year, usage)


def _imagenette(size, folder):
    # Imagenette._ARCHIVES is private to torchvision, but it is the one table of these tarballs'
    # checksums it keeps.
    return DataSet((Imagenette._ARCHIVES[size],), folder, None,
                   "--data-root {folder}/train to pretrain on it; --in-domain-data {folder} for the in-domain probe "
                   "(bench suite)")


DATA_SETS = {
    "voc2007": _voc("2007", "2007-test", usage="--data-root {root} (bench transfer --task cls|det reads 2007 "
                                                 "by default)"),
    "voc2012": _voc("2012", usage="--data-root {root} (bench transfer --task seg reads 2012 by default; "
                                  "--transfer-data {root} in bench suite); --mask-dir {folder}/SegmentationClass "
                                  "for random-region holes"),
    "imagenette": _imagenette("full", "imagenette2"),
    "imagenette-320": _imagenette("320px", "imagenette2-320"),
    "imagenette-160": _imagenette("160px", "imagenette2-160"),
}


@dataclass
class FetchConfig:
    """download, verify, extract and check a real data set

    Downloads NAME's archives into --root (resuming a partial download, <archive>.part), checks
    their MD5s against torchvision's, extracts them into a staging folder that is renamed into place
    only when complete, runs `bench data check` on the result and prints the --data-root to use.
    A data set already in place is only checked. Exits 0 when the check is clean, 1 when it finds
    problems (the data is kept), 2 on an error (nothing that looks complete is left)."""
    name: str = option("", f"the data set: {', '.join(DATA_SETS)} (imagenette: full size, about 1.5 GB; -320 and "
                       f"-160: shorter side 320 or 160 px)", choices=tuple(DATA_SETS), flags=("NAME",))
    root: str = option("", "folder to download and extract into (VOC sets go to ROOT/VOCdevkit/VOC<year>)",
                       required=True)
    mirror: str | None = option(None, "download from this URL (or local folder) instead, the archive's file name "
                                "appended: for a proxy, a local copy or a faster host")
    keep_archives: bool = option(False, "keep the downloaded archives after extracting them (default: delete them)")


def fetch(config):
    """`bench data fetch`: see FetchConfig. Returns the data check's exit status."""
    data_set, root = DATA_SETS[config.name], Path(config.root)
    target = root / data_set.folder
    if target.is_dir():
        info(f"{target} is already there: checking it")
    else:
        root.mkdir(parents=True, exist_ok=True)
        archives = [verified_archive(archive_url(url, config.mirror), md5, root) for url, md5 in data_set.archives]
        extract_into_place(archives, target, data_set.folder)
        if not config.keep_archives:
            for archive in archives:
                archive.unlink()
    checked = target if data_set.check_year is None else root
    status = check_root(DataCheckConfig(root=str(checked), year=data_set.check_year))
    print(f"{config.name} is in {target}; use {data_set.usage.format(root=root, folder=target)}")
    return status


def archive_url(url, mirror):
    """`url`, or the mirror's URL of the same file: the file name appended to `mirror`, a URL or a folder."""
    if mirror is None:
        return url
    if not urllib.parse.urlsplit(mirror).scheme:
        mirror = Path(mirror).absolute().as_uri()
    return f"{mirror.rstrip('/')}/{file_name(url)}"


def file_name(url):
    return Path(urllib.parse.urlsplit(url).path).name


def verified_archive(url, md5, folder):
    """The archive at `url` in `folder` with the given MD5: one already there, else downloaded."""
    path = Path(folder) / file_name(url)
    if path.exists():
        if check_integrity(path, md5):
            return path
        raise UserError(f"{path} is there but its MD5 is not {md5}; delete it (or move it aside) and run again")
    part = path.with_name(f"{path.name}.part")
    download(url, part)
    if not check_integrity(part, md5):
        part.unlink()
        raise UserError(f"{url} is not the expected file (its MD5 is not {md5}); the download is deleted: "
                        f"check the URL or --mirror and run again")
    part.rename(path)
    return path


def download(url, part):
    """Append the rest of `url` to the file `part`, asking for the bytes after those it holds (an
    HTTP Range). torchvision's download_url starts every download from the first byte again, which
    for a 2 GB VOC tarball on a poor connection may never finish; this resumes it. A server that
    ignores the Range sends the whole file, which then replaces the part."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as response:
            if response.status != 206:  # a file:// mirror has no status: it sends the whole file too
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else None
            with open(part, "ab" if have else "wb") as out, \
                    progress_bar(total=total, initial=have, unit="B", unit_scale=True, desc=part.stem) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after what the part holds: it is whole, the MD5 decides
            return
        raise UserError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:  # URLError, timeouts, resets, short reads
        raise _stopped(url, part, getattr(error, "reason", None) or str(error) or type(error).__name__) from None
    if total is not None and part.stat().st_size < total:
        raise _stopped(url, part, f"the connection closed at byte {part.stat().st_size} of {total}")


def _stopped(url, part, reason):
    kept = part.stat().st_size if part.exists() else 0
    if not kept:
        part.unlink(missing_ok=True)
        return UserError(f"cannot download {url}: {reason}")
    return UserError(f"download of {url} stopped ({reason}); {part} keeps its first {kept} bytes: run the "
                     f"command again to resume")


def extract_into_place(archives, target, folder):
    """Extract `archives` into a staging folder beside `target` and rename their `folder` to
    `target` once every archive is in, so an interrupted or failed extraction leaves no `target`."""
    staging = staging_dir(target)
    shutil.rmtree(staging, ignore_errors=True)  # a staging folder left by a killed run
    try:
        for archive in archives:
            info(f"extracting {archive.name}")
            try:
                extract_archive(archive, staging)
            except (OSError, EOFError, tarfile.TarError, zlib.error) as error:  # a full disk, a cut archive
                raise UserError(f"cannot extract {archive}: {error}") from None
        if not (staging / folder).is_dir():
            raise UserError(f"{', '.join(a.name for a in archives)} hold no {folder} folder; not a copy of "
                            f"the expected archives")
        replace_run_dir(staging / folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
