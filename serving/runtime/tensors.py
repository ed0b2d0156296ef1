"""TensorProto <-> numpy by direct buffer conversion (the hot path).

`tf.make_ndarray` / `tf.make_tensor_proto` are generic and slow; here a request tensor with
`tensor_content` becomes an ndarray with one `np.frombuffer`, and a response tensor is one
`tobytes()`. Typed value fields (`float_val`, ...) are accepted too, as TF Serving accepts them.

A shape is read (and may be checked against a limit) before anything is allocated: one
`float_val` fills a whole tensor, so a 58-byte message can describe billions of elements.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

# DataType enum -> (numpy dtype, name of the repeated value field)
DTYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_UINT16: (np.dtype(np.uint16), "int_val"),
    types_pb2.DT_UINT32: (np.dtype(np.uint32), "uint32_val"),
    types_pb2.DT_UINT64: (np.dtype(np.uint64), "uint64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_HALF: (np.dtype(np.float16), "half_val"),
}
NUMPY_TO_DT = {v[0]: k for k, v in DTYPES.items()}


class TensorError(ValueError):
    pass


def dtype_name(dt: int) -> str:
    """DT_FLOAT, ...; a number no DataType has (a client may send any) is named, not raised."""
    try:
        return types_pb2.DataType.Name(dt)
    except ValueError:
        return f"DataType {dt} (no such type)"


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The tensor's shape as the message states it (nothing allocated)."""
    if proto.tensor_shape.unknown_rank:
        raise TensorError("tensor has unknown rank")
    shape = tuple([d.size for d in proto.tensor_shape.dim])
    if shape and min(shape) < 0:
        raise TensorError(f"tensor shape {list(shape)} has a negative dimension")
    return shape


def to_ndarray(proto: tensor_pb2.TensorProto, max_elements: int | None = None) -> np.ndarray:
    """The tensor as an ndarray; TensorError if it is malformed or, when `max_elements` is
    given, asks for more elements than that (checked before allocating)."""
    try:
        dtype, field = DTYPES[proto.dtype]
    except KeyError:
        raise TensorError(f"unsupported dtype {dtype_name(proto.dtype)}") from None
    shape = shape_of(proto)
    n = math.prod(shape)  # Python ints: no overflow, and 20x cheaper than np.prod here
    if max_elements is not None and n > max_elements:
        raise TensorError(f"tensor shape {list(shape)} asks for {n} elements, more than the "
                          f"{max_elements} a request may hold")
    content = proto.tensor_content  # one copy out of the message, viewed (not copied) below
    if content:
        if len(content) != n * dtype.itemsize:
            raise TensorError(f"tensor_content holds {len(content)} bytes but shape "
                              f"{list(shape)} of {dtype_name(proto.dtype)} needs "
                              f"{n * dtype.itemsize}")
        return np.frombuffer(content, dtype).reshape(shape)
    values = getattr(proto, field)
    if dtype == np.float16:
        array = np.asarray(values, np.uint16).view(np.float16)
    else:
        array = np.asarray(values, dtype)
    if array.size == n:
        return array.reshape(shape)
    if array.size == 1:  # TF's rule: a single value fills the whole tensor
        return np.full(shape, array[0], dtype)
    if array.size == 0:
        return np.zeros(shape, dtype)
    raise TensorError(f"{field} holds {array.size} values but shape {list(shape)} needs {n}")


def to_proto(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None
             ) -> tensor_pb2.TensorProto:
    array = np.asarray(array)
    if proto is None:
        proto = tensor_pb2.TensorProto()
    try:
        proto.dtype = NUMPY_TO_DT[array.dtype]
    except KeyError:
        raise TensorError(f"unsupported numpy dtype {array.dtype}") from None
    dims = proto.tensor_shape.dim
    for s in array.shape:
        dims.add(size=s)
    proto.tensor_content = array.tobytes()  # C order whatever the array's layout
    return proto
