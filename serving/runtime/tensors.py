"""TensorProto <-> numpy by direct buffer conversion (the hot path).

`tf.make_ndarray` / `tf.make_tensor_proto` are generic and slow; here a request tensor with
`tensor_content` becomes an ndarray with one `np.frombuffer`, and a response tensor is one
`tobytes()`. Typed value fields (`float_val`, ...) are accepted too, as TF Serving accepts them,
and read at buffer speed too: protobuf 6's upb hands a repeated field to numpy one Python object
at a time (~65 ns an element: 0.9 ms for a 16x28x28 float_val), so the field is read from the
tensor's own serialization instead (one C-speed `SerializeToString`, then `np.frombuffer` on the
packed bytes, or a vectorised varint decode for the integer fields).

A shape is read (and may be checked against a limit) before anything is allocated: one
`float_val` fills a whole tensor, so a 58-byte message can describe billions of elements.
"""

from __future__ import annotations

import math

import ml_dtypes
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
    types_pb2.DT_BFLOAT16: (np.dtype(ml_dtypes.bfloat16), "half_val"),
    types_pb2.DT_COMPLEX64: (np.dtype(np.complex64), "scomplex_val"),
    types_pb2.DT_COMPLEX128: (np.dtype(np.complex128), "dcomplex_val"),
}
NUMPY_TO_DT = {v[0]: k for k, v in DTYPES.items()}

# How a value field lies on the wire once packed: little-endian fixed-width numbers (complex as
# (real, imaginary) pairs), or varints (int32/int64 as plain two's-complement varints, not
# zigzag: a negative one takes 10 bytes; half_val holds the 16 bits of a half or bfloat16).
_FIXED = {"float_val": np.dtype("<f4"), "double_val": np.dtype("<f8"),
          "scomplex_val": np.dtype("<f4"), "dcomplex_val": np.dtype("<f8")}
_NUMBER = {f.name: f.number for f in tensor_pb2.TensorProto.DESCRIPTOR.fields}
_LEN = 2  # wire type of a length-delimited field (a packed repeated field is one)


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
    array = _values(proto, field, dtype)
    if array.size == n:
        return array.reshape(shape)
    if array.size == 1:  # TF's rule: a single value fills the whole tensor
        return np.full(shape, array[0], dtype)
    if array.size == 0:
        return np.zeros(shape, dtype)
    raise TensorError(f"{field} holds {array.size} values but shape {list(shape)} needs {n}")


def _values(proto: tensor_pb2.TensorProto, field: str, dtype: np.dtype) -> np.ndarray:
    """The typed value field as a 1-D array of `dtype`, read from the packed wire bytes."""
    chunks = _field_bytes(proto.SerializeToString(), _NUMBER[field])
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if field in _FIXED:
        if len(data) % dtype.itemsize:  # a complex is two of the field's numbers
            raise TensorError(f"{field} holds {len(data)} bytes, not a whole number of "
                              f"{dtype_name(proto.dtype)} values")
        return np.frombuffer(data, _FIXED[field]).view(dtype)
    if dtype == np.bool_:
        return _varints(data, field) != 0
    # int32/int64 are two's complement on the wire: the low bits, cast, are the value
    values = _varints(data, field, need=-(-8 * dtype.itemsize // 7))
    if field == "half_val":
        return values.astype(np.uint16).view(dtype)
    return values.astype(dtype)


def _field_bytes(data: bytes, number: int) -> list[memoryview]:
    """The bytes of field `number`'s values in a serialized message, in order: the payload of
    each packed piece and the raw bytes of each unpacked element; joined, they read as one
    packed field. Walks only the top-level fields (a handful)."""
    view, pos, end, chunks = memoryview(data), 0, len(data), []
    while pos < end:  # one-byte keys and lengths read inline: this walk is per request
        key = data[pos]
        pos += 1
        if key > 0x7F:
            key, pos = _varint(data, pos - 1)
        wire, start = key & 7, pos
        if wire == _LEN:
            length = data[pos]
            start = pos + 1
            if length > 0x7F:
                length, start = _varint(data, pos)
            pos = start + length
        elif wire == 0:
            _, pos = _varint(data, pos)
        else:  # 64-bit (1) or 32-bit (5); TensorProto has no groups
            pos += 8 if wire == 1 else 4
        if key >> 3 == number:
            chunks.append(view[start:pos])
    return chunks


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


_U64 = np.uint64
# _OWN[k]: the 7 value bits of each of a word's k lowest bytes
_OWN = np.array([(1 << 8 * k) - 1 & 0x7F7F7F7F7F7F7F7F for k in range(9)], np.uint64)
# Packing the 7-bit groups of a little-endian word into one number, in log2(8) steps: pairs of
# bytes into 14-bit groups, pairs of those into 28-bit groups, then the 56 bits.
_PACK = ((_U64(0x007F007F007F007F), _U64(1), _U64(0x3F803F803F803F80)),
         (_U64(0x00003FFF00003FFF), _U64(2), _U64(0x0FFFC0000FFFC000)),
         (_U64(0x000000000FFFFFFF), _U64(4), _U64(0x00FFFFFFF0000000)))


def _varints(data, field: str, need: int = 10) -> np.ndarray:
    """Packed varints -> unsigned ints, exact in their low 7 * `need` bits (2 bytes make an
    8-bit value, 3 a 16-bit one, 5 a 32-bit one, 10 a 64-bit one: the high bytes of a
    sign-extended negative int32 are not read). Vectorised over the varints, not over the bytes
    (arrays of one entry per byte cost more than they save, measured): found by their last
    bytes (top bit clear), then read a byte at a time if all are short (up to 3 bytes), else
    as words (`_long_varints`)."""
    b = np.frombuffer(data, np.uint8)
    last = b < 0x80
    if np.count_nonzero(last) == b.size:  # every value < 128 (bools, small ints): a byte each
        return b
    if not last[-1]:
        raise TensorError(f"{field} ends inside a varint")
    ends = np.flatnonzero(last)
    starts = np.empty_like(ends)
    starts[0] = 0
    np.add(ends[:-1], 1, out=starts[1:])
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > 10:
        raise TensorError(f"{field} holds a varint longer than 10 bytes")
    if min(longest, need) <= 3:  # uint8 images, halfs: two or three gathers of a byte
        values = (b.take(starts) & 0x7F).astype(np.uint32)
        for k in range(1, min(longest, need)):
            part = (b.take(starts + k, mode="clip") & 0x7F).astype(np.uint32)
            part *= lengths > k
            values |= part << (7 * k)
        return values
    return _long_varints(b, starts, lengths, longest, need)


def _long_varints(b: np.ndarray, starts: np.ndarray, lengths: np.ndarray, longest: int,
                  need: int) -> np.ndarray:
    """Varints of up to 10 bytes (negative int32/int64 take 10) as uint64: an unaligned 8-byte
    word gathered at each varint's first byte, its own bytes kept, their 7-bit groups packed by
    shifts; bytes 9 and 10 added for the varints that have them."""
    padded = np.zeros(b.size + 10, np.uint8)  # every varint's 10 bytes lie inside
    padded[: b.size] = b
    words = np.ndarray((b.size,), "<u8", padded, strides=(1,)).take(starts)
    words &= _OWN.take(np.minimum(lengths, 8))
    for keep, shift, moved in _PACK[: (min(longest, need, 8) - 1).bit_length()]:
        words = (words & keep) | ((words >> shift) & moved)
    if longest > 8 and need > 8:  # 64-bit values: byte 9 holds bits 56-62, byte 10 bit 63
        ninth = (padded.take(starts + 8) & 0x7F) * (lengths > 8)
        tenth = (padded.take(starts + 9) & 1) * (lengths == 10)
        words |= (ninth | tenth << 7).astype(np.uint64) << _U64(56)
    return words


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
