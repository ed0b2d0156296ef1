"""Data from a path the user gives as `--dataset PATH` (docs/ARCHITECTURE.md, "Data from a path").

- A folder of images, one subfolder per class, laid out as
  `keras.utils.image_dataset_from_directory` reads it (PNG, JPEG, BMP, GIF; class names are the
  sorted folder names). With `train/` and `test/` (or `val/`) subfolders those are the split;
  otherwise a seeded split stratified by class (`test_fraction` of each class). Each image is
  decoded by Pillow in a parallel tf.data map, converted to the model's channels and resized to
  its input, into a disk cache under the project cache keyed by the files' sha256; training
  streams it from there (data.StreamedImages), never holding the set in memory.
- An `.npz` of `x_train`, `y_train`, `x_test`, `y_test` (Keras' datasets layout), optionally
  `class_names`.

Both are checked before training, each refusal one line saying what was expected. The folder's
`files_sha256` covers the file list and every file's bytes; `training.evaluate` re-reads the
source and compares the arrays' sha256 with the certificate's.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training import data
from training.data import Dataset, DataSourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")  # image_dataset_from_directory's
DEFAULT_TEST_FRACTION = 0.2
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CACHE_FORMAT = "zoo-image-cache 2"  # in the cache key: a new layout never reads an old cache


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0, *,
                 task: str | None = None, input_shape: tuple[int, ...] | None = None,
                 test_fraction: float | None = None, skip_unreadable: bool = False) -> Dataset:
    """The data at a path, read for a model of `task` and `input_shape`; any other name is a
    zoo dataset (data.load_dataset)."""
    if input_shape is not None and is_path(name):
        return data.announce(load_path(name, task=task, input_shape=tuple(input_shape),
                                       seed=seed, test_fraction=test_fraction,
                                       skip_unreadable=skip_unreadable))
    return data.load_dataset(name, data_dir, seed)


def is_path(name: str) -> bool:
    """A --dataset value that names a file or folder rather than a zoo dataset."""
    return os.sep in name or name.endswith(".npz") or Path(name).exists()


def load_path(path: str | Path, *, task: str, input_shape: tuple[int, ...], seed: int = 0,
              test_fraction: float | None = None, skip_unreadable: bool = False) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"--dataset {path} does not exist; expected a folder of class "
                              "subfolders of images, or an .npz of x_train, y_train, x_test, "
                              "y_test")
    if path.is_dir():
        if task != "classification":
            raise DataSourceError(f"--dataset {path} is an image folder, for classifiers; this "
                                  f"model is a {task} model (give an .npz)")
        return load_folder(path, input_shape, seed, test_fraction, skip_unreadable)
    return load_npz(path, task, input_shape)


# ----------------------------------------------------------------------------- image folders


def image_geometry(input_shape: tuple[int, ...], where: Path) -> tuple[tuple[int, int], str]:
    """((height, width), Pillow mode) for a model input of shape (H, W), (H, W, 1) or (H, W, 3)."""
    if len(input_shape) == 2 or (len(input_shape) == 3 and input_shape[2] == 1):
        return (input_shape[0], input_shape[1]), "L"
    if len(input_shape) == 3 and input_shape[2] == 3:
        return (input_shape[0], input_shape[1]), "RGB"
    raise DataSourceError(f"--dataset {where} holds images, but this model takes inputs of "
                          f"shape {tuple(input_shape)}; images fit (H, W), (H, W, 1) or (H, W, 3)")


def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {c: sorted(p for p in (root / c).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
             for c in classes}
    if not files:
        raise DataSourceError(f"--dataset {root} holds no class folders; expected one subfolder "
                              "of images per class (as keras.utils.image_dataset_from_directory)")
    for c, found in files.items():
        if not found:
            raise DataSourceError(f"class folder {root / c} holds no images; expected "
                                  f"{', '.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} files")
    if len(files) < 2:
        raise DataSourceError(f"--dataset {root} holds a single class ({classes[0]}); a "
                              "classifier needs two class folders or more")
    return files


def _decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray | str:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a damaged file
        return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def load_folder(root: Path, input_shape: tuple[int, ...], seed: int = 0,
                test_fraction: float | None = None, skip_unreadable: bool = False) -> Dataset:
    _, mode = image_geometry(input_shape, root)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    split_given = (root / "train").is_dir() and test_dir is not None
    if split_given:
        if test_fraction is not None:
            raise DataSourceError(f"--dataset {root} has its own train/ and {test_dir.name}/ "
                                  "split; drop --test-fraction")
        parts = {"train": _class_files(root / "train"), "test": _class_files(test_dir)}
        if list(parts["train"]) != list(parts["test"]):
            raise DataSourceError(f"{root / 'train'} and {test_dir} hold different classes: "
                                  f"{', '.join(parts['train'])} vs {', '.join(parts['test'])}")
        classes = list(parts["train"])
    else:
        parts = {"all": _class_files(root)}
        classes = list(parts["all"])
    listed = [(part, label, p) for part, files in parts.items()
              for label, c in enumerate(classes) for p in files[c]]
    digest = hashlib.sha256()
    for _, _, p in listed:  # the file list and every file's bytes
        digest.update(str(p.relative_to(root)).encode() + b"\0")
        digest.update(p.read_bytes())
    files_sha256 = digest.hexdigest()
    # Cached in an order fixed by the files (not by class), so that a shuffle buffer smaller
    # than the set still mixes the classes.
    listed = [listed[i] for i in np.random.default_rng(int(files_sha256[:16], 16))
              .permutation(len(listed))]
    read, whys, key = decoded_images([p for _, _, p in listed], input_shape, mode, files_sha256)
    bad = sorted((item[2], why) for item, why in zip(listed, whys) if why)
    if bad and not skip_unreadable:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataSourceError(f"{bad[0][0]} cannot be read as an image ({bad[0][1]}){more}; "
                              "remove it, or pass --skip-unreadable to train without them")
    positions = np.flatnonzero([not why for why in whys])
    y_all = np.array([listed[i][1] for i in positions], dtype=np.int64)
    part_of = np.array([listed[i][0] for i in positions])
    if split_given:
        train, test = part_of == "train", part_of == "test"
    else:
        train, test = _stratified_split(y_all, len(classes), seed,
                                        DEFAULT_TEST_FRACTION if test_fraction is None
                                        else test_fraction, root, classes)
    for name, mask in (("train", train), ("test", test)):
        missing = [classes[k] for k in range(len(classes)) if not np.any(y_all[mask] == k)]
        if missing:
            raise DataSourceError(f"--dataset {root}: the {name} split has no image of "
                                  f"{', '.join(missing)}; every class needs images in both")
    counts = {name: {classes[k]: int(np.sum(y_all[mask] == k)) for k in range(len(classes))}
              for name, mask in (("train", train), ("test", test))}
    how = "its train/test folders" if split_given else "a seeded stratified split"

    def split(mask):
        chosen = positions[mask]
        return data.StreamedImages(read, chosen, tuple(input_shape), hashlib.sha256(
            key.encode() + chosen.astype(np.int64).tobytes()).hexdigest())

    return Dataset(
        str(root.resolve()), split(train), y_all[train], split(test), y_all[test],
        source=(f"image folder {root.resolve()}: {len(positions)} images of {len(classes)} "
                f"classes, {how}" + (f", {len(bad)} unreadable skipped" if bad else "")),
        class_names=tuple(classes),
        details={"files_sha256": files_sha256, "counts": counts,
                 "unreadable_skipped": [str(p.relative_to(root)) for p, _ in bad]},
    )


def decoded_images(paths: list[Path], input_shape: tuple[int, ...], mode: str,
                   files_sha256: str) -> tuple[Callable, list[str], str]:
    """(read, whys, key): `read()` is a tf.data.Dataset of the images of `paths` decoded to
    the model's input (uint8) in blocks of data.images_per_block, through a disk cache keyed
    by the files' sha256 and the geometry; `whys[i]` says why image i cannot be read ("" when
    it can; unreadable images hold zeros in the cache). A first use decodes every image in
    parallel and writes the cache, then publishes it by renaming its folder; later ones only
    read it."""
    import tensorflow as tf

    size = tuple(input_shape[:2])
    key = hashlib.sha256(f"{CACHE_FORMAT} {files_sha256} {tuple(input_shape)} {mode}"
                         .encode()).hexdigest()
    names = tf.constant([str(p) for p in paths])

    def decode(path):
        out = _decode(Path(path.decode()), size, mode)
        if isinstance(out, str):
            return np.zeros(input_shape, np.uint8), out.encode()
        return out.reshape(input_shape), b""

    def decoded(i):
        image, why = tf.numpy_function(decode, [tf.gather(names, i)], (tf.uint8, tf.string),
                                       stateful=False)
        image.set_shape(input_shape)
        why.set_shape(())
        return image, why

    def pipeline(prefix: Path):  # blocks: the cache is read a block, not an image, at a time
        return (tf.data.Dataset.range(len(paths))
                .map(decoded, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                .batch(data.images_per_block(input_shape))
                .cache(str(prefix)))

    folder = _cache_folder(key)
    index = folder / "unreadable.json"
    if not index.is_file():
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}")
        tmp.mkdir(parents=True)
        try:
            whys = [why.decode() for _, block in pipeline(tmp / "images").as_numpy_iterator()
                    for why in block]
            (tmp / "unreadable.json").write_text(json.dumps(whys))
            try:
                os.rename(tmp, folder)
            except OSError:  # another process published the same cache first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    whys = json.loads(index.read_text())
    return (lambda: pipeline(folder / "images").map(lambda image, why: image)), whys, key


def _cache_folder(key: str) -> Path:
    """Where the decoded images of `key` are cached: the project cache, or, when it cannot
    be written, a temporary folder removed at exit (with a one-line warning)."""
    base = data.cache_dir() / "image-folders"
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=base)
        probe.close()
    except OSError as e:
        base = Path(tempfile.mkdtemp(prefix="zoo-image-cache-"))
        atexit.register(shutil.rmtree, base, True)
        print(f"warning: cannot write the image cache under {data.cache_dir()} ({e}); "
              f"decoding into {base} for this run", file=sys.stderr)
    return base / key[:32]


def _stratified_split(y: np.ndarray, k: int, seed: int, fraction: float, root: Path,
                      classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The same `fraction` of every class in test, chosen by a generator seeded with `seed`."""
    if not 0 < fraction < 1:
        raise DataSourceError(f"--test-fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(k):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            raise DataSourceError(f"class folder {root / classes[c]} holds {len(idx)} readable "
                                  "image; a train/test split needs two per class or more")
        n_test = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        test[rng.permutation(idx)[:n_test]] = True
    return ~test, test


# ----------------------------------------------------------------------------- .npz arrays


def load_npz(path: Path, task: str, input_shape: tuple[int, ...]) -> Dataset:
    expected = (f"an .npz with x_train, y_train, x_test, y_test: x of shape (N, "
                f"{', '.join(map(str, input_shape))})")
    try:
        with open(path, "rb") as f:  # np.load would read a lone .npy whole, at once
            if f.read(len(data.NPY_MAGIC)) == data.NPY_MAGIC:
                raise DataSourceError(f"--dataset {path} holds a single array; expected "
                                      f"{expected}")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataSourceError(f"--dataset {path} lacks {', '.join(missing)}; expected "
                                      f"{expected}")
            try:  # before any array is read: a header may claim more than the file holds
                data.check_npz_sizes(z, [k for k in (*NPZ_KEYS, "class_names") if k in z.files])
            except DataSourceError as e:
                raise DataSourceError(f"--dataset {path}: {e}") from None
            arrays = {k: z[k] for k in NPZ_KEYS}
            names = tuple(str(n) for n in z["class_names"]) if "class_names" in z.files else ()
    except DataSourceError:
        raise
    except Exception as e:  # noqa: BLE001 - np.load's many ways to fail on a foreign file
        raise DataSourceError(f"--dataset {path} is not a readable .npz "
                              f"({type(e).__name__}: {e}); expected {expected}") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if tuple(x.shape[1:]) != tuple(input_shape):
            raise DataSourceError(f"--dataset {path}: x_{split} has shape {x.shape}; this model "
                                  f"takes (N, {', '.join(map(str, input_shape))})")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataSourceError(f"--dataset {path}: x_{split} is {x.dtype}; expected numbers")
        if len(x) != len(y) or len(x) == 0:
            raise DataSourceError(f"--dataset {path}: x_{split} holds {len(x)} examples and "
                                  f"y_{split} {len(y)}; expected the same number, at least 1")
        if task == "classification" and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)):
            raise DataSourceError(f"--dataset {path}: y_{split} is {y.dtype} of shape {y.shape}; "
                                  "a classifier expects one integer label per example")
    if task != "classification":
        return Dataset(str(path.resolve()), arrays["x_train"],
                       arrays["y_train"].astype(np.float32), arrays["x_test"],
                       arrays["y_test"].astype(np.float32), source=f"arrays {path.resolve()}")
    y_train, y_test = arrays["y_train"].astype(np.int64), arrays["y_test"].astype(np.int64)
    k = int(max(y_train.max(), y_test.max())) + 1
    if min(y_train.min(), y_test.min()) < 0 or k < 2:
        raise DataSourceError(f"--dataset {path}: labels run {min(y_train.min(), y_test.min())}"
                              f"..{k - 1}; expected classes 0..K-1 with K >= 2")
    if names and len(names) != k:
        raise DataSourceError(f"--dataset {path}: class_names has {len(names)} names for {k} "
                              "classes")
    names = names or tuple(map(str, range(k)))
    counts = {s: {names[c]: int(n) for c, n in enumerate(np.bincount(y, minlength=k))}
              for s, y in (("train", y_train), ("test", y_test))}
    return Dataset(str(path.resolve()), arrays["x_train"], y_train, arrays["x_test"], y_test,
                   source=f"arrays {path.resolve()}", class_names=names,
                   details={"counts": counts})
