"""Drive the studio page in a real browser: the page tests (tests/test_studio_page.py) and bench.studio.

Playwright drives Debian's ``/usr/bin/chromium`` (``apt-get install -y chromium``) through
``executable_path``: it never downloads browsers of its own. The browser runs headless with a
fresh profile folder and without background traffic (no component updates, no sync, no first-run
pages), and every URL the page requests is recorded, so a caller can check that the page asks
nothing of any other host. The studio runs as its own process (``python -m components.studio``),
as a person starts it.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"studio: (http://\S+) serves")
PHOTO_NUMBER = re.compile(r"^photo (\d+)")
STATUS = '#status [data-testid="markdown"]'  # the status line's text (without Gradio's progress overlay)
TIMEOUT_MS = 120_000  # one generation of a Cityscapes-size model on a busy 2-core machine stays well below


class BrowserMissingError(RuntimeError):
    """Debian's chromium is not installed."""


@contextmanager
def browser(profile: Path, width: int = 1300, height: int = 1000) -> Iterator[tuple[Page, list[str]]]:
    """A headless chromium page (viewport ``width`` x ``height``) and the list of every URL it requests."""
    if not CHROMIUM.is_file():
        raise BrowserMissingError(f"{CHROMIUM} is missing: driving the page needs Debian's chromium "
                                  "(apt-get install -y chromium; make test installs it)")
    requests: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": width, "height": height}, accept_downloads=True)
        context.on("request", lambda request: requests.append(request.url))
        try:
            yield (context.pages[0] if context.pages else context.new_page()), requests
        finally:
            context.close()


@contextmanager
def studio_server(args: list[str], log: Path, timeout: float = 300, env: dict[str, str] | None = None
                  ) -> Iterator[str]:
    """``python -m components.studio ARGS`` as a process (with ``env`` added to its environment): yields the
    page's URL once it serves, then stops it with SIGTERM (a process that died while serving is a RuntimeError
    naming its log)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "components.studio", *args], cwd=REPO, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not (found := URL_LINE.search(log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the studio did not come up (log {log}):\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"the studio stopped while serving (log {log}):\n{log.read_text()[-3000:]}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class StudioPage:
    """The studio page in a browser, in the terms a person uses: strokes, buttons, uploads."""

    def __init__(self, page: Page, url: str):
        self.page, self.url = page, url
        page.goto(url)
        page.wait_for_function("(status) => /^photo \\d+/.test(document.querySelector(status)?.innerText ?? '')",
                               arg=STATUS, timeout=TIMEOUT_MS)

    def status(self) -> str:
        return self.page.locator(STATUS).inner_text().strip()

    def photo_number(self) -> int:
        found = PHOTO_NUMBER.match(self.status())
        return int(found.group(1)) if found else -1

    def wait_for_photo(self, after: int, timeout_ms: float = TIMEOUT_MS) -> float:
        """Wait until the page shows a photo newer than number ``after`` (loaded); the time it was shown."""
        self.page.wait_for_function(
            """([status, after]) => { const found = /^photo (\\d+)/.exec(document.querySelector(status).innerText);
                                     const image = document.querySelector('#photo img');
                                     return found && Number(found[1]) > after && image && image.complete; }""",
            arg=[STATUS, after], timeout=timeout_ms, polling=10)
        return time.perf_counter()

    def wait_for_status(self, text: str) -> str:
        self.page.wait_for_function("([status, text]) => document.querySelector(status).innerText.includes(text)",
                                    arg=[STATUS, text], timeout=TIMEOUT_MS)
        return self.status()

    def choose_class(self, label: str) -> None:
        """Pick the brush's class by its dropdown entry ("3: sky")."""
        self.page.locator("#class input").click()
        self.page.get_by_role("option", name=label, exact=True).click()

    def image_to_screen(self, size: tuple[int, int]) -> tuple[float, float, float]:
        """(left, top, scale): where image pixel (0, 0) is on the screen and screen pixels per image pixel
        (the editor centres the picture in its canvas at the zoom it shows)."""
        box = self.page.locator("#canvas canvas").first.bounding_box()
        assert box is not None
        zoom = self.page.locator("#canvas").get_by_text(re.compile(r"^\d+%$")).inner_text()
        scale = float(zoom.rstrip("%")) / 100
        height, width = size
        return box["x"] + (box["width"] - width * scale) / 2, box["y"] + (box["height"] - height * scale) / 2, scale

    def select_brush(self) -> None:
        """Pick the brush tool (loading a layout picks another one), and wait until no event of the photo is
        pending. The editor reports the tool change as an edit (the studio sees an unchanged canvas and skips
        it); a stroke made while that edit is still on its way is not lost: the canvas's events run
        ``always_last``, and callers wait for a newer photo number, never for a fixed time."""
        self.page.locator("#canvas").get_by_label("Brush", exact=True).click()
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('#photo [data-testid=\"status-tracker\"]')]"
            ".every((tracker) => tracker.classList.contains('hide'))", timeout=TIMEOUT_MS)

    def stroke(self, points: list[tuple[float, float]], size: tuple[int, int], steps: int = 8,
               select_brush: bool = True) -> float:
        """Drag the brush through ``points`` (x, y in image pixels of a ``size`` (height, width) picture),
        picking the brush first unless told it is picked; returns the time the button went up."""
        if select_brush:
            self.select_brush()
        left, top, scale = self.image_to_screen(size)
        mouse = self.page.mouse
        mouse.move(left + points[0][0] * scale, top + points[0][1] * scale)
        mouse.down()
        for x, y in points[1:]:
            mouse.move(left + x * scale, top + y * scale, steps=steps)
        mouse.up()
        return time.perf_counter()

    def click(self, selector: str) -> None:
        self.page.locator(selector).click()

    def upload(self, selector: str, path: Path) -> None:
        with self.page.expect_file_chooser() as chooser:
            self.page.locator(selector).click()
        chooser.value.set_files(str(path))

    def photo(self) -> np.ndarray:
        """The generated photo the page shows, (H, W, 3) uint8."""
        source = self.page.locator("#photo img").get_attribute("src")
        assert source is not None
        with urllib.request.urlopen(urllib.parse.urljoin(self.url, source), timeout=60) as response:
            return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))

    def label_map(self) -> np.ndarray:
        """The label map of the photo, as the page's download button gives it, (H, W) ids."""
        with self.page.expect_download() as download:
            self.click("#download")
        return np.asarray(Image.open(download.value.path())).astype(np.int64)
