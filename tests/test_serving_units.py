"""Serving parts tested in-process, without training or subprocesses (they run in `make test-fast`):
numbered version directories, tensor conversion, request validation, batching with a fake
runtime, version policies, warmup records (TFRecord framing and its CRCs), and the faults the
probe of issue 11 found in version polling, warmup and request limits, reproduced on a real
ServerCore serving a tiny ONNX model (built here with onnx.helper, loaded by ONNX Runtime)."""

from __future__ import annotations

import asyncio
import logging
import resource
import struct
import threading
import tracemalloc
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.core.batching import Batcher, BatchingOptions, QueueFull
from serving.core.errors import ServingError
from serving.core.lifecycle import Lifecycle
from serving.core.server_core import ServerCore
from serving.protocols.tf_serving import dataplane as tf_dataplane
from serving.runtime import backends, tensors

State = get_model_status_pb2.ModelVersionStatus.State
INT64_MAX = 2**63 - 1
ODD_NAMES = ("99999999999999999999", "9223372036854775808", "²", "٣", "007", "0")


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------ helpers
def write_onnx_version(path: Path, warmup_rows: tuple[int, ...] = (1, 3)) -> Path:
    """A version directory holding only model.onnx: images float32 [batch, 28, 28] -> total
    float32 [batch] (the sum of each image), and a warmup file written by TensorFlow's own
    TFRecordWriter (one PredictionLog per entry of `warmup_rows`)."""
    import onnx
    from onnx import TensorProto, helper

    path.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["images", "axes"], ["total"], keepdims=0)], "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path / "model.onnx"))
    if warmup_rows:
        write_warmup(path, [warmup_record(n) for n in warmup_rows])
    return path


def warmup_record(rows: int) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    tensors.to_proto(np.ones((rows, 28, 28), np.float32),
                     log.predict_log.request.inputs["images"])
    return log.SerializeToString()


def write_warmup(version: Path, records: list[bytes]) -> Path:
    import tensorflow as tf

    target = version / "assets.extra" / "tf_serving_warmup_requests"
    target.parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for r in records:
            writer.write(r)
    return target


def config_for(base: Path, name: str = "m", policy: str = "") -> model_server_config_pb2:
    from google.protobuf import text_format

    config = model_server_config_pb2.ModelServerConfig()
    m = config.model_config_list.config.add(name=name, base_path=str(base),
                                            model_platform="tensorflow")
    if policy:
        text_format.Parse(policy, m.model_version_policy)
    return config


def request(name="m", shape=(2, 28, 28), fill: float | None = None, dtype=types_pb2.DT_FLOAT,
            version: int | None = None) -> predict_pb2.PredictRequest:
    """A PredictRequest with `shape`: real contents, or one float_val `fill` (TF's rule: one
    value fills the whole tensor, so the message stays tiny whatever the shape says)."""
    r = predict_pb2.PredictRequest()
    r.model_spec.name = name
    if version is not None:
        r.model_spec.version.value = version
    t = r.inputs["images"]
    if fill is None:
        tensors.to_proto(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), t)
    else:
        t.dtype = dtype
        for s in shape:
            t.tensor_shape.dim.add(size=s)
        t.float_val.append(fill)
    return r


def available(core: ServerCore, name: str = "m") -> list[int]:
    return sorted(core.lifecycle.models[name].available)


def status(core: ServerCore, name: str = "m") -> dict[int, tuple[str, str]]:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    return {s.version: (State.Name(s.state), s.status.error_message)
            for s in tf_dataplane.model_status(core, req).model_version_status}


async def serving(base: Path, policy: str = "", **kwargs) -> ServerCore:
    core = ServerCore("onnx", poll_seconds=0, **kwargs)
    await core.set_config(config_for(base, policy=policy))
    return core


async def close(core: ServerCore) -> None:
    await core.drain()
    await core.close()


def warnings_about(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


class PeakAllocation:
    """Peak memory allocated by Python and numpy (numpy reports its buffers to tracemalloc)
    inside the block, in MB."""

    def __enter__(self):
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        self.mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


# ------------------------------------------------------------- numbered version directories
@pytest.mark.parametrize("name, version", [
    ("1", 1), ("42", 42), (str(INT64_MAX), INT64_MAX),
    ("0", None), ("007", None), (str(INT64_MAX + 1), None), ("99999999999999999999", None),
    ("²", None), ("٣", None), ("１", None), ("+7", None), ("-7", None), (" 7", None),
    ("7 ", None), ("1_0", None), ("", None), ("abc", None), (".tmp-1-x", None), ("7.0", None),
])
def test_a_version_name_is_ascii_decimal_without_leading_zeros_in_int64(name, version):
    from serving.repository import versions

    assert versions.parse(name) == version


@pytest.mark.parametrize("name", ODD_NAMES + ("+7", " 7", "1_0"))
def test_names_that_look_like_numbers_but_are_no_version_say_why(name):
    from serving.repository import versions

    assert versions.parse(name) is None and versions.why_not(name)


@pytest.mark.parametrize("name", ("abc", ".tmp-1-x", "1", "variables", "v2"))
def test_other_names_are_not_remarked(name):
    from serving.repository import versions

    assert versions.why_not(name) is None


def test_listing_a_base_path(tmp_path):
    from serving.repository import versions

    for name in ("1", "3", "12", "abc", ".tmp-9-x", *ODD_NAMES):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file is no version directory")
    listing = versions.scan(tmp_path)
    assert listing.versions == {1: tmp_path / "1", 3: tmp_path / "3", 12: tmp_path / "12"}
    assert set(listing.ignored) == set(ODD_NAMES)  # hidden, "abc" and the file: not remarked
    assert versions.latest(tmp_path) == 12
    # The exporter counts every entry with a version name, files too: "5" is taken.
    assert versions.next_version(tmp_path) == 13
    (tmp_path / str(INT64_MAX)).mkdir()
    with pytest.raises(versions.NoVersionLeft):
        versions.next_version(tmp_path)
    empty = tmp_path / "abc"
    assert versions.latest(empty) is None and versions.next_version(empty) == 1
    with pytest.raises(OSError):
        versions.scan(tmp_path / "missing")


def test_the_versions_cli_prints_the_latest_for_the_makefile(tmp_path, capsys):
    from serving.repository import versions

    for name in ("2", "10", "²", "007"):
        (tmp_path / name).mkdir()
    assert versions.main(["latest", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "10\n"
    assert versions.main(["latest", "--path", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path / '10'}\n"
    assert versions.main(["list", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "2\n10\n"
    assert versions.main(["latest", str(tmp_path / "10")]) == 1  # no versions: exit 1, one line
    assert capsys.readouterr().err.count("\n") == 1
    assert versions.main(["latest", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_serving_config_uses_the_same_rule(tmp_path):
    from serving.repository import protos

    for model, names in {"a": ("1",), "b": ("²", "007", "99999999999999999999"), "c": ()}.items():
        (tmp_path / model).mkdir()
        for n in names:
            (tmp_path / model / n).mkdir()
    built = protos.folder_config(tmp_path, with_versions_only=True)
    assert [m.name for m in built.model_config_list.config] == ["a"]


# ------------------------------------------------------------------------- tensor conversion
@pytest.mark.parametrize("dt", sorted(tensors.DTYPES))
def test_tensor_round_trip_every_dtype(dt):
    dtype = tensors.DTYPES[dt][0]
    a = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    proto = tensors.to_proto(a)
    assert proto.dtype == dt and [d.size for d in proto.tensor_shape.dim] == [2, 3, 4]
    back = tensors.to_ndarray(proto)
    assert back.dtype == dtype and np.array_equal(back, a)


@pytest.mark.parametrize("dt", sorted(tensors.DTYPES))
def test_typed_value_fields_decode_as_tensorflow_does(dt):
    import tensorflow as tf

    from benchmarks.tensor_decode import sample, typed_proto

    a = sample(tensors.DTYPES[dt][0], shape=(2, 3, 5))
    p = typed_proto(a)
    assert not p.tensor_content and getattr(p, tensors.DTYPES[dt][1])
    got = tensors.to_ndarray(p)
    assert got.dtype == a.dtype and np.array_equal(got, a)
    assert np.array_equal(got, tf.make_ndarray(p))  # TensorFlow's own reading agrees
    one = typed_proto(a.ravel()[1:2])  # TF's rule: a single value fills the whole tensor
    one.tensor_shape.dim[0].size = 6
    assert np.array_equal(tensors.to_ndarray(one), np.full(6, a.ravel()[1]))
    assert np.array_equal(tensors.to_ndarray(one), tf.make_ndarray(one))


def test_typed_value_fields_as_tf_accepts_them():
    p = tensors.to_proto(np.zeros((2, 2), np.float32))
    p.ClearField("tensor_content")
    p.float_val.extend([1, 2, 3, 4])
    assert tensors.to_ndarray(p).tolist() == [[1, 2], [3, 4]]
    p.ClearField("float_val")                  # no value: zeros
    assert tensors.to_ndarray(p).tolist() == [[0, 0], [0, 0]]
    assert tensors.to_ndarray(p).dtype == np.float32


def test_int_fields_are_plain_varints_not_zigzag():
    p = tensors.to_proto(np.zeros(1, np.int32))
    p.ClearField("tensor_content")
    p.int_val.append(-1)
    assert p.SerializeToString().endswith(b"\x3a\x0a" + b"\xff" * 9 + b"\x01")  # 10 bytes
    assert tensors.to_ndarray(p).tolist() == [-1]


def varint(v: int) -> bytes:
    """A non-negative int as a protobuf varint."""
    out = b""
    while True:
        out += bytes([v & 0x7F | (0x80 if v > 0x7F else 0)])
        v >>= 7
        if not v:
            return out


def test_unpacked_value_fields_read_as_packed_ones():
    # A client may send each value as its own field (proto2 style); the parser accepts it, and
    # the field walk reads unpacked elements as well as packed pieces.
    shape = b"\x12\x04\x12\x02\x08\x03"  # tensor_shape { dim { size: 3 } }
    floats = b"".join(b"\x2d" + struct.pack("<f", x) for x in (1.5, -2, 3))
    ints = b"".join(b"\x38" + varint(v & (2**64 - 1)) for v in (7, -300, 1 << 20))
    packed = b"\x3a\x02\x08\x09"  # a packed piece after unpacked ones: 8, 9
    for body, field, want in [(floats, "float_val", [1.5, -2, 3]),
                              (ints, "int_val", [7, -300, 1 << 20]),
                              (ints[:-4] + packed, "int_val", [7, -300, 8, 9])]:
        number = tensors._NUMBER[field]
        assert len(tensors._field_bytes(shape + body, number)) >= 2
        if len(want) == 3:
            dt = types_pb2.DT_FLOAT if field == "float_val" else types_pb2.DT_INT32
            p = tensor_pb2.TensorProto.FromString(b"\x08" + bytes([dt]) + shape + body)
            assert tensors.to_ndarray(p).tolist() == want
        chunks = tensors._field_bytes(shape + body, number)
        data = b"".join(chunks)
        got = (np.frombuffer(data, "<f4") if field == "float_val"
               else tensors._varints(data, field).view(np.int64))
        assert got.tolist() == want


@pytest.mark.parametrize("data, message", [
    (b"\x01\x81", "ends inside a varint"),
    (b"\x81", "ends inside a varint"),
    (b"\x01" + b"\xff" * 9 + b"\x01\xff", "ends inside a varint"),  # after a long one
    (b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x01" + b"\x80" * 12 + b"\x00\x02", "longer than 10 bytes"),
])
def test_malformed_varints_are_tensor_errors(data, message):
    for need in (2, 3, 5, 10):
        with pytest.raises(tensors.TensorError, match=message):
            tensors._varints(data, "int_val", need)


def extremes(dtype: np.dtype) -> np.ndarray:
    """Every varint length a dtype's values take (1 to 10 bytes), its min and max, and -1."""
    if dtype.kind == "b":
        return np.array([True, False, True], dtype)
    if dtype.kind == "c":
        part = extremes(np.dtype(dtype.char.lower()))  # F -> f, D -> d
        out = np.empty(part.size, dtype)
        out.real, out.imag = part, part[::-1]
        return out
    if dtype.kind != "i" and dtype.kind != "u":  # float16/32/64, bfloat16
        info = ml_dtypes.finfo(dtype)
        return np.array([0, -0.0, 1, -1, info.max, info.min, info.tiny, info.smallest_subnormal,
                         np.inf, -np.inf, 0.1, 3], np.float64).astype(dtype)
    info = np.iinfo(dtype)
    edges = [0, 1, 127, 128, 255, 256, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**31 - 1,
             2**32 - 1, 2**35, 2**49, 2**56 - 1, 2**56, 2**63 - 1, 2**64 - 1]
    values = [v for v in edges if v <= info.max] + [-v for v in edges if -v >= info.min]
    return np.array(values + [info.min, info.max], dtype)


@pytest.mark.parametrize("dt", sorted(tensors.DTYPES))
def test_typed_value_fields_decode_extremes_of_every_dtype(dt):
    import tensorflow as tf

    from benchmarks.tensor_decode import typed_proto

    dtype = tensors.DTYPES[dt][0]
    x = extremes(dtype)
    # alone, then among values of each varint length (each decode path: one byte each, short
    # varints read byte by byte, long ones as words)
    for a in [x, *(np.concatenate([x, np.full(50, v, dtype)]) for v in x)]:
        p = typed_proto(a)
        got = tensors.to_ndarray(p)
        assert got.dtype == dtype and got.tobytes() == a.tobytes(), (a, got)
        assert np.array_equal(got, tf.make_ndarray(p))  # TensorFlow's own reading agrees


@pytest.mark.parametrize("field, dt, values", [
    ("int64_val", types_pb2.DT_INT64, [-1, 2**63 - 1, -2**63, 0, 300]),
    ("uint64_val", types_pb2.DT_UINT64, [2**64 - 1, 2**63, 0, 1, 128]),
    ("uint32_val", types_pb2.DT_UINT32, [2**32 - 1, 0, 2**31, 127]),
    ("int_val", types_pb2.DT_INT8, [-128, 127, -1, 0, 1]),
    ("bool_val", types_pb2.DT_BOOL, [True, False, True, True, False]),
])
def test_unpacked_and_mixed_varint_fields_read_as_tensorflow_does(field, dt, values):
    # packed, one field per value (proto2 style), and packed pieces mixed with unpacked values
    import tensorflow as tf

    number = tensors._NUMBER[field]
    enc = [varint(int(v) & (2**64 - 1)) for v in values]
    piece = lambda vs: varint(number << 3 | 2) + varint(len(b"".join(vs))) + b"".join(vs)
    one = lambda v: varint(number << 3) + v
    shape = b"\x12\x04\x12\x02\x08" + bytes([len(values)])
    for body in [piece(enc), b"".join(one(v) for v in enc),
                 one(enc[0]) + piece(enc[1:3]) + b"".join(one(v) for v in enc[3:])]:
        p = tensor_pb2.TensorProto.FromString(b"\x08" + bytes([dt]) + shape + body)
        got = tensors.to_ndarray(p)
        assert got.tolist() == values and np.array_equal(got, tf.make_ndarray(p))
        assert tensors._varints(b"".join(tensors._field_bytes(shape + body, number)),
                                field).astype(got.dtype).tolist() == values


def test_non_contiguous_arrays_are_sent_in_c_order():
    a = np.arange(12, dtype=np.int32).reshape(3, 4).T
    assert np.array_equal(tensors.to_ndarray(tensors.to_proto(a)), a)


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.float_val.extend([1, 2, 3]), "holds 3 values"),
    (lambda p: setattr(p, "tensor_content", b"\0" * 5), "holds 5 bytes"),
    (lambda p: p.tensor_shape.dim.add(size=-2), "negative dimension"),
    (lambda p: setattr(p.tensor_shape, "unknown_rank", True), "unknown rank"),
    (lambda p: setattr(p, "dtype", 999), "unsupported dtype"),
    (lambda p: setattr(p, "dtype", types_pb2.DT_STRING), "unsupported dtype DT_STRING"),
])
def test_bad_tensors_are_tensor_errors(mutate, message):
    p = tensors.to_proto(np.zeros((2, 2), np.float32))
    p.ClearField("tensor_content")
    mutate(p)
    with pytest.raises(tensors.TensorError, match=message):
        tensors.to_ndarray(p)


def test_an_element_limit_is_checked_before_allocating():
    p = request(shape=(1_000_000, 28, 28), fill=1.0).inputs["images"]
    assert p.ByteSize() < 64
    with PeakAllocation() as peak:
        with pytest.raises(tensors.TensorError, match="784000000 elements"):
            tensors.to_ndarray(p, max_elements=1 << 20)
        p = request(shape=(2**62, 2**62), fill=1.0).inputs["images"]  # overflows int64
        with pytest.raises(tensors.TensorError, match="elements"):
            tensors.to_ndarray(p, max_elements=1 << 20)
    assert peak.mb < 1


def test_dtype_names_never_raise():
    assert tensors.dtype_name(types_pb2.DT_FLOAT) == "DT_FLOAT"
    assert "999" in tensors.dtype_name(999)


# ------------------------------------------------------------------------- request validation
def signature(**inputs) -> backends.Signature:
    specs = {k: backends.TensorSpec(types_pb2.DT_FLOAT, v) for k, v in inputs.items()}
    outputs = {"y": backends.TensorSpec(types_pb2.DT_FLOAT, (-1,)),
               "z": backends.TensorSpec(types_pb2.DT_FLOAT, (-1,))}
    return backends.Signature("serving_default", specs, outputs, meta_graph_pb2.SignatureDef())


def predict_request(sig_name="", output_filter=(), **arrays) -> predict_pb2.PredictRequest:
    r = predict_pb2.PredictRequest()
    r.model_spec.name = "m"
    r.model_spec.signature_name = sig_name
    for k, a in arrays.items():
        tensors.to_proto(np.asarray(a), r.inputs[k])
    r.output_filter.extend(output_filter)
    return r


def check(r, signatures=None, arrays=None, max_elements=1 << 26):
    from serving.core import validation

    signatures = signatures or {"serving_default": signature(a=(-1, 2), b=(-1,))}
    return validation.prepare("m", 3, signatures, r, arrays, max_elements)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ServingError) as e:
        call()
    return e.value.code, e.value.message


def test_a_valid_request_gives_signature_inputs_and_outputs():
    f = np.float32
    prepared = check(predict_request(a=np.zeros((3, 2), f), b=np.ones(3, f), output_filter=["z"]))
    sig, inputs, outputs = prepared
    assert sig.name == "serving_default" and outputs == ["z"]
    assert inputs["a"].shape == (3, 2) and inputs["b"].tolist() == [1, 1, 1]


@pytest.mark.parametrize("make, code, message", [
    (lambda f: predict_request(a=np.zeros((1, 2), f)), "INVALID_ARGUMENT",
     "Missing but required: {b}"),
    (lambda f: predict_request(a=np.zeros((1, 2), f), b=np.zeros(1, f), c=np.zeros(1, f)),
     "INVALID_ARGUMENT", "Sent extra: {c}"),
    (lambda f: predict_request(a=np.zeros((1, 2), np.int32), b=np.zeros(1, f)),
     "INVALID_ARGUMENT", "has dtype DT_INT32"),
    (lambda f: predict_request(a=np.zeros((1, 3), f), b=np.zeros(1, f)), "INVALID_ARGUMENT",
     "has shape [1,3]"),
    (lambda f: predict_request(a=np.zeros((2, 2), f), b=np.zeros(1, f)), "INVALID_ARGUMENT",
     "batch size"),
    (lambda f: predict_request(a=np.zeros((1, 2), f), b=np.zeros(1, f), output_filter=["q"]),
     "INVALID_ARGUMENT", "output tensor alias not found"),
    (lambda f: predict_request(a=np.zeros((1, 2), f), b=np.zeros(1, f),
                               output_filter=["y", "y"]), "INVALID_ARGUMENT", "duplicate"),
    (lambda f: predict_request("nope", a=np.zeros((1, 2), f)), "FAILED_PRECONDITION",
     "Serving signature key \"nope\" not found"),
])
def test_requests_that_do_not_match_the_signature(make, code, message):
    got, text = code_of(lambda: check(make(np.float32)))
    assert got.name == code and message in text, text


def test_an_unknown_dtype_number_is_invalid_argument():
    r = predict_request(a=np.zeros((1, 2), np.float32), b=np.zeros(1, np.float32))
    r.inputs["a"].dtype = 999
    got, text = code_of(lambda: check(r))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "999" in text


def test_the_element_limit_counts_every_input_and_the_rest_path():
    f = np.float32
    r = predict_request(a=np.zeros((10, 2), f), b=np.zeros(10, f))
    check(r, max_elements=30)
    got, text = code_of(lambda: check(r, max_elements=29))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "30 elements" in text and "29" in text
    arrays = {"a": np.zeros((10, 2), f), "b": np.zeros(10, f)}
    got, _ = code_of(lambda: check(r, arrays=arrays, max_elements=29))
    assert got == grpc.StatusCode.INVALID_ARGUMENT


def test_a_shape_whose_product_overflows_int64_is_invalid_argument():
    r = predict_request(a=np.zeros((1, 2), np.float32), b=np.zeros(1, np.float32))
    big = r.inputs["b"]
    big.ClearField("tensor_content")
    big.tensor_shape.dim[0].size = 2**62
    big.tensor_shape.dim.add(size=2**62)
    big.float_val.append(1)
    got, _ = code_of(lambda: check(r, signatures={
        "serving_default": signature(a=(-1, 2), b=(-1, -1))}))
    assert got == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------- batching
class FakeRuntime:
    """What a backend's `run` does for the batcher: y = 10 * x, row by row; records each batch."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[int] = []
        self.gate = gate

    def __call__(self, inputs):
        if self.gate is not None:
            self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(len(x))
        return {"y": x * 10, "rows": np.full(len(x), len(x))}


def test_batches_are_padded_to_allowed_sizes_and_split_back():
    async def go():
        fake = FakeRuntime()
        options = BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000,
                                  num_batch_threads=1, allowed_batch_sizes=(2, 4, 8))
        b = Batcher(fake, options, executor=None)
        parts = [np.arange(n, dtype=np.float32) + 100 * n for n in (1, 2)]
        out = await asyncio.gather(*[b.submit({"x": p}) for p in parts])
        await b.close()
        return fake.batches, parts, out

    batches, parts, out = run(go())
    assert batches == [4]  # 3 rows padded to the next allowed size
    for p, o in zip(parts, out):
        assert np.array_equal(o["y"], p * 10) and list(o["rows"]) == [4] * len(p)


def test_a_request_larger_than_a_batch_is_split_and_joined_in_order():
    async def go():
        fake = FakeRuntime()
        b = Batcher(fake, BatchingOptions(max_batch_size=4, num_batch_threads=1), None)
        x = np.arange(10, dtype=np.float32)
        out = await b.submit({"x": x})
        await b.close()
        return fake.batches, x, out

    batches, x, out = run(go())
    assert sorted(batches) == [2, 4, 4] and np.array_equal(out["y"], x * 10)


def test_a_full_queue_refuses_at_once():
    async def go():
        from concurrent.futures import ThreadPoolExecutor

        gate = threading.Event()
        fake = FakeRuntime(gate)
        pool = ThreadPoolExecutor(1)
        options = BatchingOptions(max_batch_size=2, max_enqueued_batches=2, num_batch_threads=1)
        b = Batcher(fake, options, pool)
        first = asyncio.ensure_future(b.submit({"x": np.ones(2, np.float32)}))
        while not fake.batches and b.tasks:  # wait until the first batch is running
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(b.submit({"x": np.ones(2, np.float32)}))
                  for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.submit({"x": np.ones(1, np.float32)})
        gate.set()
        results = await asyncio.gather(first, *queued)
        await b.close()
        pool.shutdown()
        return results

    assert [len(r["y"]) for r in run(go())] == [2, 2, 2]


def test_batching_options_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4)).check()
    with pytest.raises(ValueError, match="strictly increasing"):
        BatchingOptions(max_batch_size=4, allowed_batch_sizes=(4, 2, 4)).check()


# --------------------------------------------------------------------------- version policies
@pytest.mark.parametrize("policy, expected", [
    ("", {5}), ("latest { num_versions: 2 }", {3, 5}), ("latest { num_versions: 9 }", {1, 3, 5}),
    ("all {}", {1, 3, 5}), ("specific { versions: 3 versions: 4 }", {3}),
])
def test_version_policies(policy, expected, tmp_path):
    config = config_for(tmp_path, policy=policy).model_config_list.config[0]
    on_disk = {v: tmp_path / str(v) for v in (1, 3, 5)}
    assert Lifecycle.policy_versions(config, on_disk) == expected


# ---------------------------------------------------------------------------- warmup records
def test_warmup_records_written_by_tensorflow_are_read(tmp_path):
    from serving.repository import warmup

    path = write_warmup(tmp_path, [warmup_record(1), warmup_record(3), b""])
    got = warmup.read_warmup_records(path)
    assert [r.inputs["images"].tensor_shape.dim[0].size for r in got] == [1, 3]


def test_crc32c_and_tfrecord_masking():
    from serving.repository import warmup

    assert warmup.crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert warmup.crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 3, 255, 256, 257, 4096, 100_003):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert warmup.crc32c(data) == warmup.crc32c_bytewise(data), n


def test_masked_crcs_match_what_tensorflow_writes(tmp_path):
    from serving.repository import warmup

    payload = warmup_record(2)
    raw = write_warmup(tmp_path, [payload]).read_bytes()
    length, length_crc = struct.unpack_from("<QI", raw, 0)
    (data_crc,) = struct.unpack_from("<I", raw, 12 + length)
    assert length == len(payload)
    assert warmup.masked_crc32c(raw[:8]) == length_crc
    assert warmup.masked_crc32c(payload) == data_crc


@pytest.mark.parametrize("where, message", [
    (3, "length"),             # a byte of the length
    (9, "length"),             # a byte of the length's CRC
    (40, "data"),              # a byte of the record
    (-2, "data"),              # a byte of the record's CRC
])
def test_a_corrupt_warmup_file_is_a_load_error_naming_the_crc(tmp_path, where, message):
    from serving.repository import warmup

    path = write_warmup(tmp_path, [warmup_record(2)])
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(warmup.WarmupError, match=f"CRC.*{message}|{message}.*CRC"):
        warmup.read_warmup_records(path)


def test_a_truncated_warmup_file_is_a_load_error(tmp_path):
    from serving.repository import warmup

    path = write_warmup(tmp_path, [warmup_record(2)])
    raw = path.read_bytes()
    for cut in (5, 14, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(warmup.WarmupError, match="truncated"):
            warmup.read_warmup_records(path)


def test_warmup_off_ignores_the_warmup_file(tmp_path):
    """--enable_model_warmup=false (ServerCore(warmup=False)): a version whose warmup file is
    corrupt loads and serves; with warmup on the same version fails to load, naming the CRC."""
    base = tmp_path / "m"
    path = write_onnx_version(base / "1") / "assets.extra" / "tf_serving_warmup_requests"
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0x55
    path.write_bytes(bytes(raw))

    async def go(warmup: bool):
        core = await serving(base, warmup=warmup)
        try:
            return available(core), status(core)
        finally:
            await close(core)

    served, states = run(go(False))
    assert served == [1] and states[1][0] == "AVAILABLE"
    served, states = run(go(True))
    assert served == [] and states[1][0] == "END" and "CRC" in states[1][1]


# ------------------------------------------------------ the probe's faults, on a real ServerCore
def test_a_version_whose_folder_is_deleted_keeps_no_old_error(tmp_path):
    """A version that failed to load is no longer listed once its folder is deleted (its error
    was about files that are gone); a version that was served and whose folder is deleted is
    listed END without an error, as TF Serving reports an unloaded version (issue 25)."""
    import shutil

    base = tmp_path / "m"
    write_onnx_version(base / "1")
    path = write_onnx_version(base / "2") / "assets.extra" / "tf_serving_warmup_requests"
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0x55
    path.write_bytes(bytes(raw))

    async def go():
        core = await serving(base, policy="all {}")
        try:
            before = status(core)
            shutil.rmtree(base / "2")
            await core.poll()
            failed_gone = status(core)
            shutil.rmtree(base / "1")
            await core.poll()
            await core.drain()
            return before, failed_gone, status(core)
        finally:
            await close(core)

    before, failed_gone, served_gone = run(go())
    assert before[2][0] == "END" and "CRC" in before[2][1] and before[1][0] == "AVAILABLE"
    assert {v: state for v, (state, _) in failed_gone.items()} == {1: "AVAILABLE"}
    assert served_gone == {1: ("END", "")}


def test_versions_that_are_no_int64_or_unicode_digits_are_ignored_with_one_warning(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    base = tmp_path / "m"
    write_onnx_version(base / "1")
    for name in ODD_NAMES:
        write_onnx_version(base / name)

    async def go():
        core = await serving(base)
        try:
            for _ in range(3):
                await core.poll()
            response, result, _ = await tf_dataplane.predict(core, request())
            return available(core), status(core), response, result
        finally:
            await close(core)

    served, states, response, result = run(go())
    assert served == [1] and list(states) == [1] and states[1][0] == "AVAILABLE"
    assert response.model_spec.version.value == 1 and result["total"].shape == (2,)
    for name in ODD_NAMES:
        assert len(warnings_about(caplog, repr(name))) == 1, (name, caplog.text)


def test_a_unicode_digit_folder_does_not_stop_start_up(tmp_path):
    import argparse

    from serving import server

    base = tmp_path / "m"
    write_onnx_version(base / "1")
    (base / "²").mkdir()
    args = argparse.Namespace(model_config_file=None, model_base_path=str(base), model_name=None)
    config, root = server.initial_config(args)
    assert root is None and config.model_config_list.config[0].base_path == str(base)
    # And a discovery root holding that model starts too.
    config, root = server.initial_config(argparse.Namespace(
        model_config_file=None, model_base_path=str(tmp_path), model_name=None))
    assert config is None and root == tmp_path

    async def go():
        core = ServerCore("onnx", poll_seconds=0, discover_root=root)
        try:
            await core.poll()
            return available(core)
        finally:
            await close(core)

    assert run(go()) == [1]


def test_a_failed_listing_keeps_what_is_loaded_and_logs_it(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    base = tmp_path / "m"
    write_onnx_version(base / "1")

    async def go():
        core = await serving(base, policy="all {}")
        try:
            assert available(core) == [1]
            # Out of file descriptors (EMFILE), as 20,000 idle sockets made it.
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
            try:
                await core.poll()
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            after_emfile = available(core), status(core)
            await tf_dataplane.predict(core, request())
            # The base path gone for a moment (moved away and back): kept, as TF Serving does.
            base.rename(tmp_path / "moved")
            await core.poll()
            await core.poll()
            after_missing = available(core)
            (tmp_path / "moved").rename(base)
            write_onnx_version(base / "2")
            await core.poll()
            return after_emfile, after_missing, available(core)
        finally:
            await close(core)

    (after_emfile, after_missing, recovered) = run(go())
    assert after_emfile == ([1], {1: ("AVAILABLE", after_emfile[1][1][1])})
    assert after_missing == [1] and recovered == [1, 2]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Too many open files" in e for e in errors), caplog.text
    assert len([e for e in errors if "moved" in e or str(base) in e]) >= 1, caplog.text
    assert "unloaded" not in caplog.text


def test_a_corrupt_warmup_file_ends_the_version_with_its_error_and_is_retried_when_fixed(
        tmp_path):
    base = tmp_path / "m"
    write_onnx_version(base / "1")
    staged = write_onnx_version(tmp_path / "staged")
    path = staged / "assets.extra" / "tf_serving_warmup_requests"
    good = path.read_bytes()
    bad = bytearray(good)
    bad[12:40] = b"\xff" * 28  # the first record's payload: no longer a PredictionLog
    path.write_bytes(bytes(bad))

    async def go():
        core = await serving(base)
        try:
            staged.rename(base / "2")  # published while version 1 is served
            path = base / "2" / "assets.extra" / "tf_serving_warmup_requests"
            await core.poll()
            first = status(core), available(core)
            await core.poll()
            path.write_bytes(good)
            await core.poll()
            return first, status(core), available(core)
        finally:
            await close(core)

    (broken, served), fixed, served_after = run(go())
    assert broken[2][0] == "END" and "tf_serving_warmup_requests" in broken[2][1]
    assert broken[1][0] == "AVAILABLE" and served == [1]  # the old version keeps serving
    assert fixed[2][0] == "AVAILABLE" and served_after == [2]


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batching"])
def test_a_request_asking_for_too_many_elements_is_refused_before_allocating(tmp_path,
                                                                             batching):
    base = tmp_path / "m"
    write_onnx_version(base / "1")
    options = BatchingOptions(max_batch_size=32, num_batch_threads=1) if batching else None

    async def go():
        core = await serving(base, batching=options)
        try:
            codes = []
            # 78M elements (313 MB as float32) from a 60-byte message, then the probe's 784M.
            with PeakAllocation() as peak:
                for rows in (100_000, 1_000_000):
                    r = request(shape=(rows, 28, 28), fill=1.0)
                    assert r.ByteSize() < 64
                    try:
                        await tf_dataplane.predict(core, r)
                        codes.append("OK")
                    except ServingError as e:
                        codes.append((e.code.name, e.message))
                        if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                            break
                    if codes[-1] == "OK":
                        break
            grown = peak.mb
            small, _, _ = await tf_dataplane.predict(core, request(shape=(3, 28, 28), fill=1.0))
            return codes, grown, small
        finally:
            await close(core)

    codes, grown, small = run(go())
    assert [c[0] for c in codes] == ["INVALID_ARGUMENT"] * 2, codes
    assert "elements" in codes[1][1] and "max_request_elements" in codes[1][1]
    assert grown < 1, f"{grown:.0f} MB allocated for refused requests"
    assert list(tensors.to_ndarray(small.outputs["total"])) == [784.0] * 3


def test_wrong_codes_over_grpc_in_process(tmp_path):
    """dtype 999, a shape whose product overflows int64 and ModelSpec versions at and beyond
    int64 over a real gRPC channel: INVALID_ARGUMENT or NOT_FOUND, never UNKNOWN."""
    from serving.protocols.tf_serving.grpc_api import ModelService, PredictionService

    base = tmp_path / "m"
    write_onnx_version(base / "1")

    async def go():
        core = await serving(base)
        server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(core), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
                status_rpc = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus

                async def code(call, r):
                    try:
                        await call(r, timeout=30)
                        return "OK"
                    except grpc.aio.AioRpcError as e:
                        return e.code().name

                codes["dtype 999"] = await code(predict, request(shape=(1, 28, 28), fill=1.0,
                                                                 dtype=999))
                codes["overflow"] = await code(predict, request(shape=(2**62, 2**62, 28),
                                                                fill=1.0))
                codes["int64 max"] = await code(predict, request(version=INT64_MAX))
                codes["-1"] = await code(predict, request(version=-1))
                s = get_model_status_pb2.GetModelStatusRequest()
                s.model_spec.name = "m"
                s.model_spec.version.value = INT64_MAX
                codes["status int64 max"] = await code(status_rpc, s)
                codes["fine"] = await code(predict, request())
        finally:
            await server.stop(None)
            await close(core)
        return codes

    assert run(go()) == {"dtype 999": "INVALID_ARGUMENT", "overflow": "INVALID_ARGUMENT",
                         "int64 max": "NOT_FOUND", "-1": "NOT_FOUND",
                         "status int64 max": "NOT_FOUND", "fine": "OK"}
    # A version beyond int64 cannot even be put in the message: the client library refuses it.
    with pytest.raises(ValueError):
        request(version=99999999999999999999)


def test_the_element_limit_flag(capsys):
    from serving import server

    assert server.parser().parse_args(["--max_request_elements", "1000"]).max_request_elements \
        == 1000
    assert server.main(["--max_request_elements", "-1"]) == 2
    assert "--max_request_elements must be >= 0" in capsys.readouterr().err


def test_a_discovery_root_that_cannot_be_listed_keeps_its_models(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    root = tmp_path / "models"
    write_onnx_version(root / "m" / "1")

    async def go():
        core = ServerCore("onnx", poll_seconds=0, discover_root=root)
        try:
            await core.poll()
            root.rename(tmp_path / "away")
            await core.poll()
            await core.poll()
            during = available(core)
            (tmp_path / "away").rename(root)
            await core.poll()
            return during, available(core)
        finally:
            await close(core)

    assert run(go()) == ([1], [1])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # The root's listing and the model's, each logged once over the two failed polls.
    assert len(errors) == 2 and all(str(root) in e for e in errors), errors


def test_version_string_to_model_spec():
    """One home (serving/core/model_spec.py), two refusals: TF Serving's REST answers 404 for a
    version that is not a number and 400 for one beyond int64; the shared function only tells
    which it was."""
    from serving.core.model_spec import BadVersion, model_spec
    from serving.protocols.tf_serving.rest_api import TfServingRest
    from serving.transports.http_server import HttpError

    assert model_spec("m").WhichOneof("version_choice") is None
    assert model_spec("m", "007").version.value == 7
    assert model_spec("m", None, "stable").version_label == "stable"
    assert model_spec("m", "3", "stable").version.value == 3  # a version wins over a label
    for text, number in (("x", False), ("", False), ("٣", False), (str(2**63), True)):
        with pytest.raises(BadVersion) as e:
            model_spec("m", text)
        assert (e.value.text, e.value.number) == (text, number)
    assert TfServingRest._spec({"name": "m", "label": "stable"}).version_label == "stable"
    with pytest.raises(HttpError) as e:
        TfServingRest._spec({"name": "m", "version": "x"})
    assert (e.value.status, e.value.message) == (404, "Malformed request: version 'x' is not a "
                                                      "number")
    with pytest.raises(ServingError) as e:
        TfServingRest._spec({"name": "m", "version": str(2**63)})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == (f"version {2**63} is out of range (at most {2**63 - 1})")
