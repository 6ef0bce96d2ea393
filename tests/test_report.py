"""`bench report`: the page a suite ends with, checked as HTML and in a real headless browser."""
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.report import REPORT

TINY = {
    "seeds": [0],
    "pretrain": {"image_size": 96, "batch_size": 4, "steps": 2, "workers": 0},
    "methods": {"ce": {"method": "context-encoder", "mask": "central"}, "random": None},
    "transfer": {"image_size": 96, "batch_size": 2, "fc_width": 16, "workers": 0},
    "tasks": {"seg": {"task": "seg", "steps": 2}, "det": {"task": "det", "steps": 2}},
}
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The flags a sandboxed, offline machine needs (no GPU, no network, no first-run work, root).
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Page(HTMLParser):
    """The image sources, table rows and body attributes of a page."""

    def __init__(self, text):
        super().__init__()
        self.images, self.rows, self.body, self._row = [], [], {}, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "body":
            self.body = attrs
        elif tag == "tr":
            self._row = []

    def handle_data(self, data):
        if self._row is not None:
            self._row.append(data)

    def handle_endtag(self, tag):
        if tag == "tr":
            self.rows.append(self._row)
            self._row = None


@pytest.fixture(scope="module")
def suite_dir(toy_voc_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    preset = folder / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    out = folder / "suite"
    assert main(["suite", "--preset", str(preset), "--data-root", str(toy_voc_root), "--out", str(out), "-q"]) == 0
    return out


def test_the_suite_ends_with_a_report_of_everything_it_made(suite_dir):
    page = Page((suite_dir / REPORT).read_text())
    shown = {src for src in page.images}
    for picture in ("table.png", "pretrain/ce-seed0/loss.png", "pretrain/ce-seed0/preview.png",
                    "transfer/seg-ce-seed0/predictions.png", "transfer/det-random-seed0/detections.png",
                    "transfer/seg-random-seed0/loss.png"):
        assert picture in shown
    assert all((suite_dir / src).is_file() for src in shown)  # relative links that resolve
    first_cells = [row[0] for row in page.rows[1:]]
    assert "Context encoder (paper)" in first_cells and "random" in first_cells
    text = (suite_dir / REPORT).read_text()
    assert "torchvision 0.29" in text and "&quot;fc_width&quot;: 16" in text  # versions and configurations


def test_a_single_run_folder_gets_its_own_report(suite_dir, capsys):
    run = suite_dir / "transfer" / "det-ce-seed0"
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"written: {run / REPORT}"
    page = Page((run / REPORT).read_text())
    assert sorted(page.images) == ["detections.png", "loss.png"]


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_a_folder_with_nothing_to_report_is_a_one_line_error(tmp_path, capsys, make):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and not (tmp_path / REPORT).exists()


def _browser():
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _rendered(page, profile):
    """The DOM of `page` after its scripts ran, as a headless browser renders it."""
    result = subprocess.run([_browser(), *BROWSER_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(_browser() is None, reason="no headless browser: install Debian's chromium "
                                               "(apt-get install chromium; .ci/run does) to render the report")
def test_the_report_renders_in_a_headless_browser_with_every_image(suite_dir, tmp_path):
    rendered = Page(_rendered(suite_dir / REPORT, tmp_path / "profile-1"))
    total = len(Page((suite_dir / REPORT).read_text()).images)
    assert total >= 10
    assert rendered.body["data-images-total"] == rendered.body["data-images-loaded"] == str(total)
    assert any(row and row[0] == "ce" for row in rendered.rows)
    # Moved out of its folder, the page's links break, and it says so.
    moved = tmp_path / "elsewhere" / REPORT
    moved.parent.mkdir()
    shutil.copy(suite_dir / REPORT, moved)
    dom = _rendered(moved, tmp_path / "profile-2")
    assert Page(dom).body["data-images-loaded"] == "0"
    assert re.search(rf"{total} of {total} images did not load", dom)
