"""Running `contrastseg web` and Debian's headless Chromium for the browser tests and scripts/bench_web.py.

`WebServer` starts the real command in its own process (a fresh CONTRASTSEG_HOME, 2 threads), reads the URL it
prints, and stops it (the warm worker ends with it: its stdin closes). `browser()` launches /usr/bin/chromium
through Playwright with a fresh profile (Playwright cannot download its own browsers here). `skip_reason()`
says why the browser tests cannot run, or None.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = os.environ.get("CONTRASTSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def skip_reason() -> str | None:
    if importlib.util.find_spec("trame_slicer") is None:
        return "the web extra is not installed (pip install -e \".[web]\")"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; the test extra has it)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)"
    return None


class WebServer:
    """`contrastseg web` in a child process; `url` once it listens."""

    def __init__(self, *args: str, home: Path | None = None, env: dict | None = None, timeout: float = 180):
        self.home = Path(home or tempfile.mkdtemp(prefix="contrastseg-web-home-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = self.home / "server.log"
        full_env = dict(os.environ, CONTRASTSEG_HOME=str(self.home), PYTHONUNBUFFERED="1", **(env or {}))
        command = [sys.executable, "-m", "contrastseg.cli", "web", "--port", "0", "--threads", "2", *args]
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"contrastseg web exited ({self.proc.returncode}): {self.tail()}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"contrastseg web printed no URL within {timeout:.0f} s: {self.tail()}")
            found = re.search(r"ContrastSeg web app: (http://\S+)", self.log.read_text(errors="replace"))
            self.url = found.group(1) if found else None
            time.sleep(0.2)

    def tail(self, n: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the server's session (its worker is in a group of its own and ends when stdin closes)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._out.close()


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 900):
    """A Playwright page in headless Chromium with a fresh profile folder."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="contrastseg-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport={"width": width, "height": height},
                                                       accept_downloads=True)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def wait_text(page, selector: str, predicate: str, timeout_s: float = 300) -> str:
    """Wait until `predicate` (JavaScript, on `t`: the element's text) holds; returns the text."""
    page.wait_for_function(f"(() => {{ const e = document.querySelector({selector!r}); if (!e) return false; "
                           f"const t = e.textContent.trim(); return {predicate}; }})()", timeout=timeout_s * 1000)
    return page.text_content(selector).strip()


def voxels(page, organ: str) -> int:
    return int(page.text_content(f"#voxels-{organ}").split()[0])


def view_centre(page, index: int = 0) -> tuple[float, float]:
    """The centre of slice view `index` in page pixels (0: axial, the large view on the left)."""
    box = page.locator(".remote-controlled-area").nth(index).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def wait_views_ready(page, timeout_s: float = 120) -> None:
    """Every view has shown an image (acting before that would click on nothing)."""
    page.wait_for_function("document.querySelectorAll('img.image-display-area').length >= 4 && "
                           "[...document.querySelectorAll('img.image-display-area')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=timeout_s * 1000)


def choose(page, select_id: str, option: str) -> None:
    """Pick `option` in a Vuetify select (the id is on its inner input, which its field covers)."""
    page.locator(f".v-field:has(#{select_id})").click()
    page.get_by_role("option", name=option, exact=True).click()
