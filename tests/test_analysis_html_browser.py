"""The report page in a real headless browser: it loads from the file system and every image
renders (the page's own script records ``data-images-loaded`` / ``data-images-total``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gradsweep.analysis.cli import build_report
from analysis_synthetic import quickstart_like


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _dump_dom(browser: str, page: Path, profile: Path) -> str:
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def browser_and_report(tmp_path_factory: pytest.TempPathFactory):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup.sh --test installs it on Debian)")
    folder = tmp_path_factory.mktemp("browser") / "quickstart"
    quickstart_like(folder, seeds=(0,))
    return browser, build_report(folder)


def _counts(dom: str) -> tuple[int, int]:
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the page's load script did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


def test_every_image_renders_in_headless_chromium(browser_and_report, tmp_path: Path) -> None:
    browser, report = browser_and_report
    expected = sum(len(s.figures) for s in report.sections)
    loaded, total = _counts(_dump_dom(browser, report.index, tmp_path / "profile"))
    assert total == expected > 0
    assert loaded == expected, f"{loaded} of {expected} images rendered"


def test_the_check_sees_an_image_that_does_not_render(browser_and_report, tmp_path: Path) -> None:
    browser, report = browser_and_report
    page = report.index.read_text()
    first = re.search(r'src="(figures/[^"]+\.png)"', page).group(1)
    broken = report.out_dir / "broken.html"
    broken.write_text(page.replace(first, "figures/no-such-figure.png", 1))
    loaded, total = _counts(_dump_dom(browser, broken, tmp_path / "profile"))
    assert loaded == total - 1
