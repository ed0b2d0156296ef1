"""Open Inference Protocol (KServe v2) tensors <-> numpy (docs/ARCHITECTURE.md, "Open Inference
Protocol"): datatype names, gRPC `raw_input_contents` and typed `contents`, REST JSON `data`,
and the bodies of Triton's binary tensor extension.

Every decoder compares what the message carries with what its shape needs before it builds an
array, and says which input is wrong. Raw bytes become an array with one `np.frombuffer` (no
copy); outputs are one `tobytes()` each.
"""

from __future__ import annotations

import json
import math

import numpy as np

from serving.core.errors import invalid
from serving.runtime import tensors

# v2 datatype -> numpy dtype (the protocol's "Tensor Data Types"; BYTES and BF16 have no
# equivalent among the signatures zoo models export, so they are refused by name).
NUMPY = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
OF_NUMPY = {v: k for k, v in NUMPY.items()}
# TensorFlow DataType (what a signature states) -> v2 datatype, through runtime.tensors' table
# (complex has no v2 datatype, and bfloat16 none here)
OF_DT = {dt: OF_NUMPY[dtype] for dt, (dtype, _) in tensors.DTYPES.items()
         if dtype in OF_NUMPY}
# v2 datatype -> the InferTensorContents field that carries it (FP16 travels raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}
INFERENCE_HEADER = "Inference-Header-Content-Length"


def describe(datatype: str, shape) -> str:
    return f"{datatype} [{','.join(str(d) for d in shape)}]"


def shape_of(name: str, shape) -> tuple[int, ...]:
    """A request's shape as a tuple of non-negative ints (JSON may send anything)."""
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid(f"input \"{name}\": shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise invalid(f"input \"{name}\": shape [{','.join(map(str, shape))}] has a negative "
                      "dimension")
    return tuple(shape)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw) -> np.ndarray:
    """An input from its raw bytes (gRPC raw_input_contents or a REST binary section)."""
    dtype = NUMPY[datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise invalid(f"input \"{name}\": raw content holds {len(raw)} bytes but "
                      f"{describe(datatype, shape)} needs {need}")
    return np.frombuffer(raw, dtype).reshape(shape)


def from_contents(name: str, datatype: str, shape: tuple[int, ...], contents) -> np.ndarray:
    """An input from the typed InferTensorContents field its datatype uses."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise invalid(f"input \"{name}\": {datatype} has no typed contents field; send it in "
                      "raw_input_contents")
    values = getattr(contents, field)
    n = math.prod(shape)
    if len(values) != n:
        raise invalid(f"input \"{name}\": contents.{field} holds {len(values)} values but "
                      f"{describe(datatype, shape)} needs {n}")
    return np.asarray(values, NUMPY[datatype]).reshape(shape)


def from_json(name: str, datatype: str, shape: tuple[int, ...], data, to_array) -> np.ndarray:
    """An input from REST JSON `data` (flat or nested, row-major). `to_array` is
    serving.transports.json_body.to_array (converts a long list a slice at a time)."""
    try:
        array = to_array(data, NUMPY[datatype])
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise invalid(f"input \"{name}\": data is not a list of {datatype} numbers ({e})") \
            from None
    n = math.prod(shape)
    if array.size != n:
        raise invalid(f"input \"{name}\": data holds {array.size} values but "
                      f"{describe(datatype, shape)} needs {n}")
    return array.reshape(shape)


def json_data(array: np.ndarray) -> list:
    """An output as v2 JSON `data`: the values flattened in row-major order."""
    return array.ravel().tolist()


def split_binary(body: bytes, header_length: str) -> tuple[bytes, memoryview]:
    """(JSON header, binary sections) of a body sent with Inference-Header-Content-Length."""
    if not header_length.isascii() or not header_length.isdigit() or \
            len(header_length.lstrip("0")) > len(str(len(body))) or \
            int(header_length) > len(body):  # int() of 4,301 digits or more raises
        raise invalid(f"{INFERENCE_HEADER} {header_length!r} is not a length within the "
                      f"{len(body)}-byte body")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def binary_body(header: dict, sections: list[bytes]) -> tuple[bytes, int]:
    """(body, length of its JSON header): the header, then each binary output's bytes."""
    head = json.dumps(header).encode()
    return b"".join([head, *sections]), len(head)


def check_datatype(name: str, datatype: str) -> None:
    """Refuse a datatype this server has no numpy type for (both v2 transports)."""
    if datatype not in NUMPY:
        raise invalid(f"input \"{name}\": datatype {datatype!r} is not supported (one of "
                      f"{', '.join(NUMPY)})")


def refuse_classification(name: str, parameters) -> None:
    """Triton's classification extension is not served (both v2 transports)."""
    if "classification" in parameters:
        raise invalid(f"requested output \"{name}\": the classification extension is not "
                      "supported; request the output and take its argmax")
