# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""The web page for people (docs/ARCHITECTURE.md, "The web page"), in a real headless Chromium
(Selenium and Debian's chromedriver) against a real server on 127.0.0.1 serving real exports.

Digits are drawn with real pointer events along strokes made from real MNIST test digits: each
row of the 28x28 image is scanned for runs of ink (pixels >= 128), and each run becomes one
stroke from its first to its last pixel, through every pixel between, on the page's 280-pixel
pad (10 pad pixels a MNIST pixel) with the page's own pen. So the strokes cover the digit's ink
as a raster of pen lines; the page must then find the ink, box it and centre it as MNIST did,
and the model must read the digit. Screenshots of every state go to the test's tmp dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.native import plane as native_plane
from tests import browser
from tests.conftest import ROOT, subprocess_env
from tests.serving_fixtures import (  # noqa: F401 - fixtures
    ServerProcess,
    data_planes,
    digits,
    exported,
    train_export,
    wait_for,
    write_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser.find() is None,
                       reason="no chromium and chromedriver installed (.ci/run installs them: "
                              "apt-get install chromium chromium-driver)"),
]


def get(url: str, **headers) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rest_predict(rest: str, model: str, instances: np.ndarray, output="probabilities"):
    body = json.dumps({"instances": instances.tolist()}).encode()
    request = urllib.request.Request(f"http://{rest}/v1/models/{model}:predict", body)
    with urllib.request.urlopen(request, timeout=60) as r:
        predictions = json.load(r)["predictions"]
    return np.array([p[output] if output else p for p in predictions])


SINC = "sinc_deep_50_10_4_tanh"


@pytest.fixture(scope="module")
def site(exported, tmp_path_factory):
    """A server with softmax_regression (label "stable" -> 1), deep_cnn, a sinc regressor, and a
    copy of softmax_regression without its certificate (served with a warning)."""
    tmp = tmp_path_factory.mktemp("web")
    train_export(SINC, tmp / "sinc", tmp / "sinc-run", 200)
    uncertified = tmp / "uncertified"
    shutil.copytree(exported / "softmax_regression" / "1", uncertified / "1")
    (uncertified / "1" / "metadata.json").unlink()
    config = write_config(tmp / "models.config", {
        "softmax_regression": {"base": exported / "softmax_regression", "labels": {"stable": 1}},
        "deep_cnn": {"base": exported / "deep_cnn"},
        "uncertified": {"base": uncertified},
        SINC: {"base": tmp / "sinc" / SINC},
    })
    server = ServerProcess("--model_config_file", str(config), log=tmp / "server.log")
    yield server
    assert server.stop() == 0, server.logs()


@pytest.fixture(scope="module")
def chrome():
    with browser.chromium(network_log=True) as driver:
        yield driver


@pytest.fixture
def shots(tmp_path):
    def shot(driver, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        with Image.open(path) as image:
            assert image.size[0] > 0
        return path
    return shot


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def open_page(driver, site, fragment: str = "") -> None:
    # The browser is shared: an earlier test's page (its server stopped, or its token refused)
    # may have logged errors; they are read away before this page opens.
    driver.get("about:blank")
    browser.console_errors(driver)
    driver.get(f"http://{site.rest}/{fragment}")
    driver.refresh()  # a new fragment alone does not reload the page
    wait_for(lambda: "server up" in text(driver, "server-state"), what="the page's first poll")


def certified_answer(site, path: str) -> dict:
    status, body = get(f"http://{site.rest}{path}")
    assert status == 200, body
    return json.loads(body)


def test_certificate_route_answers_the_versions_metadata_json(site, exported):
    on_disk = json.loads((exported / "softmax_regression" / "1" / "metadata.json").read_text())
    for path in ("/v1/models/softmax_regression/certificate",
                 "/v1/models/softmax_regression/versions/1/certificate",
                 "/v1/models/softmax_regression/labels/stable/certificate"):
        answer = certified_answer(site, path)
        assert answer == {"model_spec": {"name": "softmax_regression", "version": "1"},
                          "class_names": list("0123456789"), "certificate": on_disk}
    status, body = get(f"http://{site.rest}/v1/models/uncertified/certificate")
    assert status == 404 and "has no certificate (metadata.json)" in json.loads(body)["error"]
    status, body = get(f"http://{site.rest}/v1/models/nosuch/versions/3/certificate")
    assert status == 404 and "Specific(nosuch, 3)" in json.loads(body)["error"]
    listing = certified_answer(site, "/v1/models")["models"]
    assert {m["name"]: m["version_labels"] for m in listing} == {
        "deep_cnn": {}, "softmax_regression": {"stable": "1"}, "uncertified": {}, SINC: {}}


def test_page_lists_the_models_and_shows_a_readable_certificate(site, chrome, shots, exported):
    open_page(chrome, site)
    rows = wait_for(lambda: [r.text for r in chrome.find_elements(
        "css selector", "#models tbody tr") if r.text.strip()], what="the model table")
    table = "\n".join(rows)
    for name in ("deep_cnn", "softmax_regression", "uncertified", SINC):
        assert name in table
    assert table.count("AVAILABLE") == 4
    assert "stable" in text(chrome, "models")  # the label, beside its version
    assert "served without a certificate" in table  # the server's warning for that version

    chrome.find_element("css selector", '#models tr[data-model="softmax_regression"]').click()
    cert = json.loads((exported / "softmax_regression" / "1" / "metadata.json").read_text())
    shown = wait_for(lambda: text(chrome, "certificate"), what="the certificate")
    assert f"{cert['parameters']:,}" in shown
    assert f"{100 * cert['test_metrics']['accuracy']:.2f}%" in shown
    assert cert["training"]["config"]["optimizer"] in shown
    assert f"{cert['training']['config']['precision']} (asked: " in shown
    assert f"ONNX Runtime (opset {cert['onnx']['opset']}) max |diff|" in shown
    assert "within tolerance" in shown
    for path, entry in cert["files"].items():  # every file with its checksum
        assert path in shown and entry["sha256"] in shown
    assert "images" in shown and "probabilities" in shown  # the signature
    assert not browser.console_errors(chrome)
    shots(chrome, "models-and-certificate")


@pytest.mark.parametrize("plane", data_planes())
def test_page_names_the_plane_that_answers_each_version(plane, site, chrome, exported,
                                                        tmp_path):
    if plane == "native":
        if not native_plane.built():
            pytest.skip(f"{native_plane.BINARY} is not built (make native)")
        server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                               "--model_name", "softmax_regression", "--data_plane", "native",
                               log=tmp_path / "server.log")
    else:
        server = site
    try:
        open_page(chrome, server)
        cells = wait_for(lambda: [c.text for c in chrome.find_elements(
            "css selector", "#models tbody td.plane")], what="the plane column")
        expected = "native" if plane == "native" else "python\n--data_plane python"
        assert cells and set(cells) == {expected}, cells
        assert len(cells) == len(certified_answer(server, "/v1/models")["models"])
        assert not browser.console_errors(chrome)
    finally:
        if server is not site:
            assert server.stop() == 0


def test_drawn_digits_are_read_as_the_digits_they_were_drawn_from(site, chrome, shots, digits):
    images, labels = digits
    probabilities = rest_predict(site.rest, "softmax_regression", images)
    # Digits the model reads right from the original image, confidently, of distinct classes.
    chosen = {}
    for i in np.flatnonzero((probabilities.argmax(1) == labels) & (probabilities.max(1) > 0.9)):
        chosen.setdefault(int(labels[i]), i)
    assert len(chosen) >= 3, "the test model reads too few test digits right"
    open_page(chrome, site, "#/models/softmax_regression/versions/1")
    pad = wait_for(lambda: chrome.find_element("id", "pad").is_displayed()
                   and chrome.find_element("id", "pad"), what="the drawing pad")
    for pointer, (label, i) in zip(("mouse", "touch", "pen"), list(chosen.items())[:3]):
        chrome.find_element("id", "clear").click()
        strokes = browser.strokes_of(images[i])
        browser.draw(chrome, pad, strokes, pointer=pointer)
        # The page says which input it classified: the whole drawing, every stroke in it.
        prediction = classified(chrome, f"drawing:{len(strokes)}")
        assert prediction.get_attribute("data-class") == str(label), prediction.text
        bars = chrome.find_elements("css selector", "#bars li")
        assert [b.get_attribute("data-digit") for b in bars] == [str(d) for d in range(10)]
        top = chrome.find_element("css selector", "#bars li.top")
        assert top.get_attribute("data-digit") == str(label)
        widths = [b.find_element("class name", "bar").size["width"] for b in bars]
        assert widths[label] == max(widths) > 0  # the bars are drawn, the longest the digit's
        shots(chrome, f"drawn-{label}-{pointer}")
    assert not browser.console_errors(chrome)


def classified(driver, what: str):
    """The prediction element, once the page has classified `what` (drawing:N, file:NAME)."""
    prediction = driver.find_element("id", "prediction")
    wait_for(lambda: prediction.get_attribute("data-input") == what,
             what=f"the classification of {what}")
    return prediction


def preview_pixels(driver) -> np.ndarray:
    """What the page sent the model: its 28x28 preview canvas, red channel."""
    return np.array(driver.execute_script(
        "const c = document.getElementById('preview').getContext('2d');"
        "return Array.from(c.getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 === 0));"),
        float).reshape(28, 28)


def test_a_dropped_png_of_a_test_digit_is_read_as_that_digit(site, chrome, shots, digits,
                                                             tmp_path):
    images, labels = digits
    probabilities = rest_predict(site.rest, "softmax_regression", images)
    right = np.flatnonzero((probabilities.argmax(1) == labels) & (images.max((1, 2)) == 255))
    i = int(right[0])
    png = tmp_path / f"mnist-test-{i}.png"
    Image.fromarray(images[i].astype(np.uint8)).save(png)  # white on black, as MNIST's own
    open_page(chrome, site, "#/models/softmax_regression/versions/1")
    pad = wait_for(lambda: chrome.find_element("id", "pad").is_displayed()
                   and chrome.find_element("id", "pad"), what="the drawing pad")
    browser.drop_file(chrome, pad, png)
    prediction = classified(chrome, f"file:{png.name}")
    assert prediction.get_attribute("data-class") == str(labels[i]), prediction.text
    # A MNIST digit is already boxed and centred as MNIST made it: the page must find it so.
    np.testing.assert_allclose(preview_pixels(chrome), images[i], atol=1)
    shots(chrome, "dropped-png")

    # Not an image: said so, nothing sent.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a digit")
    browser.drop_file(chrome, pad, notes)
    wait_for(lambda: "notes.txt is not an image" in text(chrome, "detail-error"),
             what="the refusal of a text file")


def test_the_slider_asks_a_regressor_for_y_at_x(site, chrome, shots):
    from selenium.webdriver.common.keys import Keys

    open_page(chrome, site, f"#/models/{SINC}/versions/1")
    slider = wait_for(lambda: chrome.find_element("id", "x").is_displayed()
                      and chrome.find_element("id", "x"), what="the slider")
    y = chrome.find_element("id", "y-value")
    for key, x in ((Keys.END, 1.0), (Keys.HOME, -1.0), (Keys.ARROW_RIGHT, -0.99)):
        slider.send_keys(key)  # real key presses on the range input
        wait_for(lambda shown=f"{x:.2f}": text(chrome, "x-value") == shown
                 and y.get_attribute("data-x") == shown, what=f"y at x = {x}")
        expected = rest_predict(site.rest, SINC, np.array([[x]], np.float32), output=None)
        assert float(y.get_attribute("data-y")) == pytest.approx(float(expected[0][0]),
                                                                  abs=1e-6)
        assert "sin(5πx)/(5πx)" in y.text  # the true function beside the model
    shots(chrome, "sinc-slider")


def test_every_request_carries_the_token_field_as_a_bearer_token(site, chrome):
    open_page(chrome, site)
    chrome.find_element("id", "token").send_keys("s3cret-token")
    chrome.get_log("performance")  # drop what came before (and polls made while typing)

    def sent():
        for entry in chrome.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                request = message["params"]["request"]
                if "/v1/models" in request["url"] or "/monitoring/" in request["url"]:
                    yield request["url"], request["headers"].get("Authorization")

    seen: list = []

    def two_full_polls() -> bool:  # the log is drained as it is read: keep what came
        seen.extend(h for _, h in sent())
        return seen.count("Bearer s3cret-token") >= 2

    wait_for(two_full_polls, what="the page's next polls")
    # A poll begun while the last key was typed may still show up once; after the first
    # request with the whole token, every one carries it.
    assert set(seen[seen.index("Bearer s3cret-token"):]) == {"Bearer s3cret-token"}, seen


def test_the_page_works_with_a_server_that_requires_a_token(exported, chrome, shots, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--model_name", "softmax_regression", "--auth_token_file", str(token),
                           log=tmp_path / "server.log")
    chrome.get(f"http://{server.rest}/")  # the page itself needs no token; its API calls do
    wait_for(lambda: "token required" in text(chrome, "server-state"), what="the 401")
    assert "HTTP 401" in text(chrome, "error")
    shots(chrome, "token-required")
    chrome.find_element("id", "token").send_keys("s3cret-token")
    wait_for(lambda: "server up" in text(chrome, "server-state"), what="a poll with the token")
    wait_for(lambda: any("softmax_regression" in r.text and "AVAILABLE" in r.text
                         for r in chrome.find_elements("css selector", "#models tbody tr")),
             what="the model table")
    assert server.stop() == 0


def test_errors_are_shown_as_the_server_words_them(exported, chrome, shots, tmp_path):
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--model_name", "softmax_regression", log=tmp_path / "server.log")
    open_page(chrome, server, "#/models/nosuch")
    wait_for(lambda: "HTTP 404: Could not find any versions of model nosuch"
             in text(chrome, "detail-error"), what="the server's words for an unknown model")
    shots(chrome, "unknown-model")
    assert server.stop() == 0
    wait_for(lambda: "server unreachable" in text(chrome, "server-state"), what="the next poll")
    assert "The server went away" in text(chrome, "error")
    shots(chrome, "server-gone")


def test_the_flag_turns_the_page_off(exported, chrome, shots, tmp_path):
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--model_name", "softmax_regression", "--rest_api_web_page=false",
                           log=tmp_path / "server.log")
    for path in ("/", "/web/app.js", "/web/style.css"):
        status, body = get(f"http://{server.rest}{path}")
        assert status == 404, (path, body)
        assert json.loads(body)["error"] == f"Malformed request: GET {path}"
    status, _ = get(f"http://{server.rest}/v1/models/softmax_regression/certificate")
    assert status == 200  # the API stays
    chrome.get(f"http://{server.rest}/")
    assert "Malformed request: GET /" in chrome.find_element("tag name", "body").text
    shots(chrome, "page-off")


# A user's own models (zoo/plugins.py) trained on their own data (--dataset PATH): a colour
# classifier of 16x16 RGB images from a folder, and one whose input is 5 numbers from an .npz,
# which the page cannot try.
OWN_PLUGIN = """
import keras
from keras import layers

import zoo

RECIPE = zoo.Recipe(optimizer="adam", learning_rate=1e-2, batch_size=8, epochs=1)
REFERENCE = zoo.Reference(metric="accuracy", target=0.9, provenance="the test")


def head(inputs, x, num_classes, name):
    x = layers.Dense(num_classes)(layers.Flatten()(x))
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


@zoo.register(task="classification", dataset="mnist", recipe=RECIPE, reference=REFERENCE,
              inputs=zoo.InputSignature("images", (16, 16, 3)), description="colour 16x16")
def colour_net(num_classes: int = 3) -> keras.Model:
    inputs = keras.Input(shape=(16, 16, 3), name="images")
    return head(inputs, layers.Rescaling(1 / 255)(inputs), num_classes, "colour_net")


@zoo.register(task="classification", dataset="mnist", recipe=RECIPE, reference=REFERENCE,
              inputs=zoo.InputSignature("features", (5,)), description="five numbers")
def vector_net(num_classes: int = 2) -> keras.Model:
    inputs = keras.Input(shape=(5,), name="features")
    return head(inputs, inputs, num_classes, "vector_net")
"""
COLOURS = ("blue", "green", "red")  # sorted: the class ids


def colour_digit(digit: np.ndarray, colour: str) -> np.ndarray:
    """A MNIST digit, 16x16, drawn in one colour channel: (16, 16, 3) uint8."""
    small = np.asarray(Image.fromarray(digit.astype(np.uint8)).resize((16, 16)))
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., {"red": 0, "green": 1, "blue": 2}[colour]] = small
    return rgb


@pytest.fixture(scope="module")
def own_site(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("own")
    (tmp / "own_models.py").write_text(OWN_PLUGIN)
    images, _ = digits
    for k, colour in enumerate(COLOURS):
        (tmp / "colours" / colour).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(colour_digit(images[12 * k + i], colour)).save(
                tmp / "colours" / colour / f"{i:02d}.png")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    np.savez(tmp / "vectors.npz", x_train=x[:40], y_train=(x[:40, 0] > 0).astype(np.int64),
             x_test=x[40:], y_test=(x[40:, 0] > 0).astype(np.int64))
    env = {**subprocess_env(), "ZOO_CACHE_DIR": str(tmp / "cache")}
    for model, data in (("colour_net", "colours"), ("vector_net", "vectors.npz")):
        subprocess.run([sys.executable, "-m", "training.train", model, "--models-from",
                        str(tmp / "own_models.py"), "--dataset", str(tmp / data), "--steps", "20",
                        "--batch-size", "8", "--precision", "float32", "--export-dir",
                        str(tmp / "exported"), "--run-dir", str(tmp / f"run-{model}")],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    config = write_config(tmp / "models.config", {
        name: {"base": tmp / "exported" / name} for name in ("colour_net_colours",
                                                             "vector_net_vectors")})
    server = ServerProcess("--model_config_file", str(config), log=tmp / "server.log")
    yield server, tmp
    assert server.stop() == 0, server.logs()


def image_preview(driver, height: int, width: int) -> np.ndarray:
    """What the page sent an image model: its preview canvas, RGB."""
    return np.array(driver.execute_script(
        "const c = document.getElementById('image-preview');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
        ".filter((_, i) => i % 4 !== 3));"), np.uint8).reshape(height, width, 3)


def test_a_colour_model_is_tried_with_an_image_file_and_answers_in_class_names(
        own_site, chrome, shots, tmp_path):
    server, tmp = own_site
    answer = certified_answer(server, "/v1/models/colour_net_colours/certificate")
    assert answer["class_names"] == list(COLOURS) == answer["certificate"]["data"]["class_names"]
    open_page(chrome, server, "#/models/colour_net_colours/versions/1")
    chooser = wait_for(lambda: chrome.find_element("id", "image-file").is_displayed()
                       and chrome.find_element("id", "image-file"), what="the image chooser")
    assert not chrome.find_element("id", "try-digit").is_displayed()  # no digit pad for it
    assert "16×16 and read as RGB colour" in text(chrome, "image-hint")
    assert "3: 0 blue, 1 green, 2 red" in text(chrome, "certificate")
    image = np.asarray(Image.open(tmp / "colours" / "red" / "00.png"))
    large = tmp_path / "red-48.png"  # 3x larger: the page resizes it to the model's 16x16
    Image.fromarray(image).resize((48, 48), Image.Resampling.NEAREST).save(large)
    prediction = chrome.find_element("id", "image-prediction")
    for path, size in ((tmp / "colours" / "red" / "00.png", "16×16"), (large, "48×48")):
        chooser.send_keys(str(path))
        wait_for(lambda name=path.name: prediction.get_attribute("data-input") == f"file:{name}",
                 what=f"the classification of {path.name}")
        assert f"{size} image, resized to 16×16, RGB" in text(chrome, "image-size")
        sent = image_preview(chrome, 16, 16)
        expected = rest_predict(server.rest, "colour_net_colours", sent[None].astype(np.float32))
        best = int(expected[0].argmax())
        assert prediction.get_attribute("data-class") == str(best)
        assert prediction.text.startswith(f"It reads {COLOURS[best]} (")
        bars = [li.text.split("\n")[0] for li in chrome.find_elements(
            "css selector", "#image-bars li")]
        assert bars == list(COLOURS)
    # The image of exactly the input's size reaches the model pixel for pixel.
    chooser.send_keys(str(tmp / "colours" / "red" / "00.png"))
    wait_for(lambda: prediction.get_attribute("data-input") == "file:00.png",
             what="the second classification of 00.png")
    np.testing.assert_array_equal(image_preview(chrome, 16, 16), image)
    assert not browser.console_errors(chrome)
    shots(chrome, "colour-model")


def test_an_input_the_page_cannot_try_is_said_plainly(own_site, chrome, shots):
    server, _ = own_site
    open_page(chrome, server, "#/models/vector_net_vectors/versions/1")
    why = wait_for(lambda: chrome.find_element("id", "try-none").is_displayed()
                   and text(chrome, "try-none"), what="the reason it cannot be tried")
    assert why.startswith("This model takes features: float [batch, 5]: the page can try "
                          "images"), why
    for block in ("try-digit", "try-image", "try-scalar"):
        assert not chrome.find_element("id", block).is_displayed()
    assert "2: 0 0, 1 1" in text(chrome, "certificate")
    shots(chrome, "cannot-try")
