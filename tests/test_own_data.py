"""Data from a path (training/data_paths.py): image folders written from real MNIST digits as
PNG and JPEG, a corrupt image, .npz arrays; every refusal; a folder trained, exported and
evaluated through the real CLIs, its certificate holding the source."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, subprocess_env
from training import data
from training.data_paths import load_path

PIXELS = (28, 28)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test decodes its folders into a cache of its own (and the CLIs it starts too)."""
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))


def write_folder(root, mnist, classes=(3, 5, 8), per_class=20, split=None):
    """Real test digits of `classes` as PNG (even) and JPEG (odd) files, one folder each
    (under split/ if given), named d3, d5, ..."""
    from PIL import Image

    base = root / split if split else root
    for k in classes:
        folder = base / f"d{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(mnist.y_test == k)[:per_class]):
            Image.fromarray(mnist.x_test[idx]).save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


def load(path, task="classification", shape=PIXELS, **kw):
    return load_path(path, task=task, input_shape=shape, **kw)


def test_a_folder_is_split_stratified_and_seeded(tmp_path, mnist):
    root = write_folder(tmp_path / "digits", mnist)
    a, b, c = load(root, seed=1), load(root, seed=1), load(root, seed=2)
    assert a.class_names == ("d3", "d5", "d8") and a.x_train.shape[1:] == PIXELS
    assert a.details["counts"] == {"train": {"d3": 16, "d5": 16, "d8": 16},
                                   "test": {"d3": 4, "d5": 4, "d8": 4}}
    assert a.sha256 == b.sha256 != c.sha256
    assert a.details["files_sha256"] == c.details["files_sha256"]  # same files, other split
    png = np.flatnonzero(mnist.y_test == 3)[0]  # d3/000.png, lossless: the very digit
    assert any(np.array_equal(x, mnist.x_test[png]) for x in np.concatenate([a.x_train,
                                                                               a.x_test]))
    assert load(root, test_fraction=0.5).details["counts"]["test"]["d5"] == 10


def batches(pipeline, count):
    return [(x.numpy(), y.numpy()) for x, y in pipeline.take(count)]


def test_a_folder_is_streamed_from_a_disk_cache_the_same_batches_resumed_or_sharded(tmp_path,
                                                                                   mnist):
    root = write_folder(tmp_path / "digits", mnist)
    ds = load(root, seed=1)
    assert isinstance(ds.x_train, data.StreamedImages)  # not arrays in memory
    (cache,) = (tmp_path / "cache" / "image-folders").iterdir()
    assert (cache / "unreadable.json").is_file() and any(cache.glob("images*"))
    assert load(root, seed=2).sha256 != ds.sha256  # another split, the same decoded cache
    assert list((tmp_path / "cache" / "image-folders").iterdir()) == [cache]
    x_train, x_test = np.asarray(ds.x_train), np.asarray(ds.x_test)
    assert x_train.shape == (48, *PIXELS) and x_train.dtype == np.uint8
    run = batches(data.train_pipeline(ds, 16, seed=3), 6)  # two passes of 3 batches
    for epoch in (run[:3], run[3:]):
        labels = np.concatenate([y for _, y in epoch])
        assert sorted(labels) == sorted(ds.y_train)  # each pass: every image once
    assert not np.array_equal(run[0][1], run[3][1])  # reshuffled each pass
    x0, y0 = run[0]
    for image, label in zip(x0, y0):  # raw 0-255 float pixels of the very images, labelled
        (i,) = [i for i in range(len(x_train)) if np.array_equal(x_train[i], image)][:1]
        assert ds.y_train[i] == label
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(
        batches(data.train_pipeline(ds, 16, seed=3), 6), run))  # seeded
    resumed = batches(data.train_pipeline(ds, 16, seed=3, start_step=4), 2)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(resumed, run[4:]))
    halves = [batches(data.train_pipeline(ds, 16, seed=3, shard=(k, 2)), 2) for k in (0, 1)]
    assert np.array_equal(np.concatenate([halves[0][1][0], halves[1][1][0]]), run[1][0])
    tested = batches(data.test_pipeline(ds, batch_size=5), 100)
    assert np.array_equal(np.concatenate([x for x, _ in tested]), x_test)
    assert np.array_equal(np.concatenate([y for _, y in tested]), ds.y_test)
    assert np.array_equal(ds.x_test[2:4], x_test[2:4]) and len(ds.x_test) == 12


def test_train_and_test_folders_are_the_split_and_channels_follow_the_model(tmp_path, mnist):
    root = write_folder(tmp_path / "s", mnist, per_class=6, split="train")
    write_folder(root, mnist, per_class=3, split="val")
    ds = load(root, shape=(14, 14, 3))
    assert ds.x_train.shape == (18, 14, 14, 3) and ds.x_test.shape == (9, 14, 14, 3)
    with pytest.raises(data.DataSourceError, match="drop --test-fraction"):
        load(root, test_fraction=0.3)


def test_empty_and_single_classes_and_no_classes_are_refused(tmp_path, mnist):
    root = write_folder(tmp_path / "f", mnist, per_class=4)
    for p in (root / "d3").glob("*"):
        p.unlink()
    with pytest.raises(data.DataSourceError, match="class folder .*d3 holds no images; expected"):
        load(root)
    (root / "d3").rmdir()
    for p in (root / "d5").glob("*"):
        p.unlink()
    (root / "d5").rmdir()
    with pytest.raises(data.DataSourceError, match=r"holds a single class \(d8\)"):
        load(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataSourceError, match="holds no class folders"):
        load(tmp_path / "empty")


def test_unreadable_images_are_named_counted_and_skipped_on_request(tmp_path, mnist):
    root = write_folder(tmp_path / "f", mnist, per_class=6)
    (root / "d5" / "bad.png").write_bytes(b"\x89PNG but cut short")
    (root / "d8" / "worse.jpg").write_bytes(b"")
    with pytest.raises(data.DataSourceError) as e:
        load(root)
    assert "d5/bad.png cannot be read as an image" in str(e.value)
    assert "(and 1 more)" in str(e.value) and "--skip-unreadable" in str(e.value)
    ds = load(root, skip_unreadable=True)
    assert ds.details["unreadable_skipped"] == ["d5/bad.png", "d8/worse.jpg"]
    assert len(ds.x_train) + len(ds.x_test) == 18


def test_npz_arrays_are_checked_against_the_model(tmp_path, mnist):
    good = {"x_train": mnist.x_train[:50], "y_train": mnist.y_train[:50] % 4,
            "x_test": mnist.x_test[:20], "y_test": mnist.y_test[:20] % 4}
    np.savez(tmp_path / "ok.npz", **good, class_names=np.array(["a", "b", "c", "d"]))
    ds = load(tmp_path / "ok.npz")
    assert ds.class_names == ("a", "b", "c", "d") and ds.num_classes == 4
    bad = {
        "shape": ({"x_train": good["x_train"].reshape(50, 784)}, "x_train has shape (50, 784)"),
        "count": ({"y_test": good["y_test"][:5]}, "x_test holds 20 examples and y_test 5"),
        "labels": ({"y_train": good["y_train"].astype(np.float32)}, "one integer label"),
        "dtype": ({"x_test": good["x_test"].astype(str)}, "expected numbers"),
        "keys": (None, "lacks x_test"),
    }
    for name, (change, message) in bad.items():
        arrays = {k: v for k, v in good.items() if change is not None or k != "x_test"}
        arrays.update(change or {})
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(data.DataSourceError) as e:
            load(tmp_path / f"{name}.npz")
        assert message in str(e.value), name
    with pytest.raises(data.DataSourceError, match="is an image folder, for classifiers"):
        load(write_folder(tmp_path / "f", mnist, per_class=2), task="regression", shape=(1,))


def test_an_npz_whose_header_claims_a_billion_images_is_refused_unread(tmp_path, mnist):
    from tests.test_data import _claim_a_billion_images

    np.savez(tmp_path / "huge.npz", x_train=mnist.x_train[:30], y_train=mnist.y_train[:30],
             x_test=mnist.x_test[:10], y_test=mnist.y_test[:10])
    _claim_a_billion_images(tmp_path / "huge.npz")
    with pytest.raises(data.DataSourceError) as e:
        load(tmp_path / "huge.npz")
    assert str(e.value) == (
        f"--dataset {tmp_path / 'huge.npz'}: x_train.npy's header claims uint8 (1000000000, 28, "
        "28) (784,000,000,000 bytes), but the archive holds 23,520 bytes of it")


def cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_folder_trains_exports_and_evaluates_with_its_source_certified(tmp_path, mnist):
    root = write_folder(tmp_path / "digits", mnist, per_class=30)
    (root / "d8" / "broken.png").write_bytes(b"nope")
    base = tmp_path / "exported"
    args = ("--dataset", str(root), "--steps", "12", "--batch-size", "16", "--precision",
            "float32", "--export-dir", str(base))
    refused = cli("training.train", "mlp_128", *args, "--run-dir", str(tmp_path / "r0"))
    assert refused.returncode == 2 and "broken.png cannot be read" in refused.stderr
    assert not (tmp_path / "r0").exists() or not any((tmp_path / "r0").iterdir())
    done = cli("training.train", "mlp_128", *args, "--skip-unreadable",
               "--run-dir", str(tmp_path / "r1"))
    assert done.returncode == 0, done.stderr
    version = base / "mlp_128_digits" / "1"
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["data"]["class_names"] == ["d3", "d5", "d8"]
    assert meta["data"]["unreadable_skipped"] == ["d8/broken.png"]
    assert meta["data"]["counts"]["test"] == {"d3": 6, "d5": 6, "d8": 6}
    assert meta["signature"]["outputs"]["probabilities"]["shape"] == [-1, 3]
    evaluated = cli("training.evaluate", str(version))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "on 18 test examples" in evaluated.stdout
    (root / "d3" / "000.png").unlink()  # the source changed since export
    changed = cli("training.evaluate", str(version))
    assert changed.returncode == 2 and "not the data this version was certified on" in (
        changed.stderr)
