"""Headless Chromium driven through Selenium and Debian's chromedriver, for the web page's tests
and for the README's screenshot (docs/ARCHITECTURE.md, "The web page").

Selenium rather than the DevTools protocol by hand: it is the maintained client of the W3C
WebDriver protocol, whose actions send real pointer events (mouse, pen, touch) through the
browser's input pipeline; what WebDriver lacks (dropping a file) goes through its `execute_cdp_cmd`.
It is pinned to 4.51.0: 4.52 needs a certifi newer than the package index has.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PAD_CELL = 10  # the page's drawing pad has 280 pixels for MNIST's 28


def find() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None when either is missing."""
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000, network_log: bool = False):
    """A headless Chromium session (selenium WebDriver), quit on exit whatever happens.
    `network_log`: keep DevTools' network events, read with driver.get_log("performance")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find()
    if found is None:
        raise RuntimeError("no chromium and chromedriver (apt-get install chromium "
                           "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    profile = tempfile.mkdtemp(prefix="zoo-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", f"--user-data-dir={profile}",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    logs = {"browser": "ALL", **({"performance": "ALL"} if network_log else {})}
    options.set_capability("goog:loggingPrefs", logs)
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def drop_file(driver, element, path: Path) -> None:
    """Drag the file at `path` from outside the page and drop it on `element`, as a person
    dropping it from a file manager (DevTools' Input.dispatchDragEvent: real drag events with a
    real File in dataTransfer)."""
    rect = driver.execute_script(  # in the viewport first: the drop is at viewport coordinates
        "arguments[0].scrollIntoView({block: 'nearest'});"
        "const r = arguments[0].getBoundingClientRect();"
        "return [r.left + r.width / 2, r.top + r.height / 2];", element)
    data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        driver.execute_cdp_cmd("Input.dispatchDragEvent",
                               {"type": kind, "x": rect[0], "y": rect[1], "data": data})


def draw(driver, element, strokes, pointer: str = "mouse", step_ms: int = 5) -> None:
    """Draw `strokes` (lists of (x, y) in the element's CSS pixels from its top-left corner) with
    real pointer events: down at each stroke's first point, moves along it, up at its end."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    kind = {"mouse": interaction.POINTER_MOUSE, "touch": interaction.POINTER_TOUCH,
            "pen": interaction.POINTER_PEN}[pointer]
    size = driver.execute_script(  # in the viewport first: WebDriver moves only within it
        "arguments[0].scrollIntoView({block: 'nearest'});"
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", element)
    builder = ActionBuilder(driver, mouse=PointerInput(kind, pointer), duration=step_ms)
    act = builder.pointer_action
    for stroke in strokes:
        # WebDriver's element offsets are from the element's centre.
        (x, y), rest = stroke[0], stroke[1:]
        act.move_to(element, round(x - size[0] / 2), round(y - size[1] / 2))
        act.pointer_down()
        for x, y in rest:
            act.move_to(element, round(x - size[0] / 2), round(y - size[1] / 2))
        act.pointer_up()
    builder.perform()


def console_errors(driver) -> list[str]:
    """The page's console messages at level SEVERE so far."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def strokes_of(image: np.ndarray, threshold: float = 128) -> list[list[tuple[float, float]]]:
    """Strokes that cover a 28x28 digit's ink on the page's pad: one a run of ink (pixels >=
    `threshold`) in each row, through the centre of every pixel of the run."""
    out = []
    for row in range(image.shape[0]):
        ink = np.flatnonzero(image[row] >= threshold)
        for run in np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1) if ink.size else []:
            out.append([((c + 0.5) * PAD_CELL, (row + 0.5) * PAD_CELL) for c in run])
    return out
