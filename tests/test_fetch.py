"""`bench data fetch`: archives served from 127.0.0.1 (never another address) are downloaded,
verified, extracted into place and checked; a bad checksum, a cut connection or a cut archive
leaves nothing that looks complete, and a cut download resumes with an HTTP Range."""
import dataclasses
import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import bench_data.fetch
from bench_data.toy_voc import write_toy_class_folders, write_toy_voc
from helpers import bench

VOC2007_ARCHIVES = ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar")  # torchvision's file names
IMAGENETTE_ARCHIVE = "imagenette2-160.tgz"


def tar_bytes(files, mode="w"):
    """A tar (gzipped with mode "w:gz") of {name in the archive: path on disk}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, path in files.items():
            tar.add(path, arcname=name, recursive=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{file name: bytes}: a tiny VOC2007 split as the real one is, test-split files in the second
    archive, and an imagenette-like class-folder tarball."""
    source = tmp_path_factory.mktemp("sources")
    voc = write_toy_voc(source / "voc", n_images=6, size=48, classes=3)
    members = {str(path.relative_to(voc)): path for path in sorted((voc / "VOCdevkit" / "VOC2007").rglob("*"))}
    is_test = {name: "test" in name.rpartition("/")[2] for name in members}
    archives = {VOC2007_ARCHIVES[0]: tar_bytes({name: path for name, path in members.items() if not is_test[name]}),
                VOC2007_ARCHIVES[1]: tar_bytes({name: path for name, path in members.items() if is_test[name]})}
    classes = write_toy_class_folders(source / "imagenette2-160", per_class=(3, 2), size=32, classes=2)
    archives[IMAGENETTE_ARCHIVE] = tar_bytes(
        {str(path.relative_to(classes.parent)): path for path in sorted(classes.rglob("*"))}, mode="w:gz")
    return archives


class ArchiveServer:
    """An HTTP server on a free port of 127.0.0.1 serving `files` ({name: bytes}) at any path
    ending in the name, honouring `Range: bytes=N-`. It records each request's Range header;
    `cut_next` makes the next answer stop after half its bytes and close the connection."""

    def __init__(self, files):
        self.files, self.ranges, self.cut_next = files, [], False
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a stuck client cannot hold the server thread

            def do_GET(self):
                body = server.files.get(self.path.rpartition("/")[2])
                if body is None:
                    self.send_error(404)
                    return
                asked = self.headers.get("Range")
                server.ranges.append(asked)
                start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                sent = body[start:]
                if server.cut_next:
                    server.cut_next = False
                    sent = sent[:len(sent) // 2]
                self.wfile.write(sent)

            def log_message(self, *args):
                pass

        self.http = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/mirror"
        self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(archives, monkeypatch):
    """The archives served locally, the data sets' MD5s those of the served files (their URLs stay
    torchvision's: every test passes --mirror), and short timeouts."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy in the environment must not see these requests
    monkeypatch.setattr(bench_data.fetch, "TIMEOUT_S", 5)
    for name in ("voc2007", "imagenette-160"):
        data_set = bench_data.fetch.DATA_SETS[name]
        served = tuple((url, hashlib.md5(archives[url.rpartition("/")[2]]).hexdigest()) for url, _ in data_set.archives)
        monkeypatch.setitem(bench_data.fetch.DATA_SETS, name, dataclasses.replace(data_set, archives=served))
    with ArchiveServer(dict(archives)) as running:
        yield running


def fetch(name, root, server, *more):
    return bench("data", "fetch", name, "--root", root, "--mirror", server.url, *more)


def error_line(err):
    """The one `error:` line of a command's stderr (progress lines come before it)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    return errors[0]


def leftovers(root):
    """Every path under `root`, relative, sorted."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_fetch_downloads_extracts_checks_and_prints_the_data_root(server, tmp_path, capsys):
    root = tmp_path / "data"
    assert fetch("voc2007", root, server) == 0
    out = capsys.readouterr().out
    assert "checked VOC2007 (6 images): no problems" in out
    assert f"use --data-root {root} " in out
    voc = root / "VOCdevkit" / "VOC2007"
    assert (voc / "ImageSets" / "Main" / "test.txt").is_file() and (voc / "ImageSets" / "Main" / "train.txt").is_file()
    # The archives are deleted, the staging folder gone.
    assert [p.name for p in root.iterdir()] == ["VOCdevkit"] and [p.name for p in voc.parent.iterdir()] == ["VOC2007"]

    requests = len(server.ranges)
    assert fetch("voc2007", root, server) == 0  # already there: checked, not downloaded again
    assert len(server.ranges) == requests


def test_fetch_imagenette_prints_the_pretraining_and_probe_roots(server, tmp_path, capsys):
    root = tmp_path / "data"
    assert fetch("imagenette-160", root, server, "--keep-archives") == 0
    out = capsys.readouterr().out
    assert "checked train (6 images), val (4 images): no problems" in out
    assert f"--data-root {root / 'imagenette2-160' / 'train'} " in out
    assert (root / IMAGENETTE_ARCHIVE).is_file()


def test_bad_checksum_exits_2_with_one_line_and_leaves_nothing(server, tmp_path, capsys):
    root = tmp_path / "data"
    server.files[VOC2007_ARCHIVES[1]] = b"not the archive"
    assert fetch("voc2007", root, server) == 2
    assert "MD5" in error_line(capsys.readouterr().err)
    assert not (root / "VOCdevkit").exists()
    assert leftovers(root) == [VOC2007_ARCHIVES[0]]  # the first archive is verified and kept for the next try


def test_cut_archive_leaves_no_half_extracted_folder(server, archives, monkeypatch, tmp_path, capsys):
    cut = archives[IMAGENETTE_ARCHIVE][:len(archives[IMAGENETTE_ARCHIVE]) // 2]
    server.files[IMAGENETTE_ARCHIVE] = cut
    data_set = bench_data.fetch.DATA_SETS["imagenette-160"]
    monkeypatch.setitem(bench_data.fetch.DATA_SETS, "imagenette-160", dataclasses.replace(
        data_set, archives=((data_set.archives[0][0], hashlib.md5(cut).hexdigest()),)))
    root = tmp_path / "data"
    assert fetch("imagenette-160", root, server) == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: cannot extract {root / IMAGENETTE_ARCHIVE}")
    assert leftovers(root) == [IMAGENETTE_ARCHIVE]


def test_cut_download_keeps_its_part_and_resumes_with_a_range(server, archives, tmp_path, capsys):
    root = tmp_path / "data"
    server.cut_next = True
    assert fetch("imagenette-160", root, server) == 2
    assert "run the command again to resume" in error_line(capsys.readouterr().err)
    part = root / f"{IMAGENETTE_ARCHIVE}.part"
    half = len(archives[IMAGENETTE_ARCHIVE]) // 2
    assert part.stat().st_size == half and not (root / "imagenette2-160").exists()

    assert fetch("imagenette-160", root, server) == 0
    assert server.ranges == [None, f"bytes={half}-"]
    assert (root / "imagenette2-160" / "val").is_dir() and not part.exists()


def test_suite_names_the_fetch_command_for_missing_data(capsys):
    assert bench("suite", "--preset", "imagenet-subset", "--transfer-data", "x", "--mask-dir", "y") == 2
    assert "fetch it with: bench data fetch imagenette-320 --root data/" in capsys.readouterr().err


def test_a_local_folder_mirror_replaces_a_part_it_cannot_resume(server, archives, tmp_path, capsys):
    """A file:// URL ignores Range and sends the whole file, which replaces the .part."""
    local = tmp_path / "copies"
    local.mkdir()
    (local / IMAGENETTE_ARCHIVE).write_bytes(archives[IMAGENETTE_ARCHIVE])
    root = tmp_path / "data"
    root.mkdir()
    (root / f"{IMAGENETTE_ARCHIVE}.part").write_bytes(b"left by another download")
    assert bench("data", "fetch", "imagenette-160", "--root", root, "--mirror", local) == 0
    assert (root / "imagenette2-160" / "train").is_dir() and server.ranges == []
