"""The README's screenshot of the web page (`make web-screenshot`; docs/ARCHITECTURE.md, "The web
page"): a real server on exported_models/, some real traffic for the chart, a real MNIST test
digit drawn on the pad with pointer events, headless Chromium, then the PNG reduced to a palette
so that it stays small in git.

    python -m tests.web_page_screenshot [--models exported_models] [--out docs/web_page.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image

from tests import browser
from tests.serving_fixtures import ServerProcess, wait_for

MODEL = "softmax_regression"


def traffic(rest: str, images, stop: threading.Event) -> None:
    """Predict requests, a few a second, until `stop`: something for the chart to show."""
    for i in range(10**6):
        if stop.wait(0.2):
            return
        body = json.dumps({"instances": images[i % len(images):][:1 + i % 4].tolist()}).encode()
        with urllib.request.urlopen(urllib.request.Request(
                f"http://{rest}/v1/models/{MODEL}:predict", body), timeout=30) as r:
            r.read()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.web_page_screenshot",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="exported_models", help="model base path")
    p.add_argument("--out", default="docs/web_page.png")
    p.add_argument("--digit", type=int, default=0, help="index of the MNIST test digit drawn")
    args = p.parse_args()
    if not (Path(args.models) / MODEL).is_dir():
        p.error(f"{args.models}/{MODEL} is missing: train it first (make run)")
    from serving.client import mnist_test

    images, labels = mnist_test(args.digit + 16)
    log = Path(tempfile.mkdtemp(prefix="zoo-web-shot-")) / "server.log"
    server = ServerProcess("--model_base_path", args.models, log=log)
    stop = threading.Event()
    try:
        with browser.chromium(width=1280, height=1250) as driver:
            driver.get(f"http://{server.rest}/#/models/{MODEL}")
            pad = wait_for(lambda: driver.find_element("id", "pad").is_displayed()
                           and driver.find_element("id", "pad"), what="the drawing pad")
            thread = threading.Thread(target=traffic, args=(server.rest, images, stop))
            thread.start()
            time.sleep(12)  # six polls of the metrics: lines on the chart
            strokes = browser.strokes_of(images[args.digit])
            browser.draw(driver, pad, strokes)
            prediction = driver.find_element("id", "prediction")
            wait_for(lambda: prediction.get_attribute("data-input") == f"drawing:{len(strokes)}",
                     what="the drawing's classification")
            read = prediction.text
            time.sleep(2.5)  # one more poll
            stop.set()
            thread.join()
            png = driver.get_screenshot_as_png()
    finally:
        stop.set()
        server.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".raw.png")
    raw.write_bytes(png)
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=128).save(out, optimize=True)
    raw.unlink()
    print(f"[screenshot] {out} ({out.stat().st_size // 1024} kB): digit {labels[args.digit]} "
          f"drawn, the page read: {read}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
