"""A request tensor in its typed value field (`float_val`, `int_val`, ...) against the same tensor
in `tensor_content`: serving.runtime.tensors.to_ndarray on a 16x28x28 tensor of every dtype TF
Serving accepts, parsed from the wire as the server receives it, medians of rounds of the
calling thread's CPU time (the decode is single-threaded, and so other work on a shared machine
does not count). Target: the typed field within 2x of tensor_content (issue 23; perf_analyzer's
TF Serving client and many Java, Go and C++ clients send float_val). Also prints where the typed
field's time goes (the tensor's `SerializeToString`, which re-encodes every varint, against the
decode of its bytes) and what `np.asarray(proto.<field>)` costs, the per-element read protobuf 6
makes (the old path). Then the same for the native data plane, where it is built
(build/native/decode_bench, `make native-if-possible`): the request parsed by C++ protobuf and
decoded by serving/native/src/decode.cc.

    python -m benchmarks.tensor_decode [--rounds 7] [--calls 200]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
from tensorflow.core.framework import tensor_pb2

from benchmarks.common import machine, median, table
from serving.runtime import tensors

SHAPE = (16, 28, 28)
NATIVE = Path(__file__).resolve().parents[1] / "build" / "native" / "decode_bench"


def sample(dtype: np.dtype, shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Values that exercise the encodings: pixel-like floats, negatives for signed types (a
    negative int32 is a 10-byte varint), values past 2**63 for uint64."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape) * 255
    if dtype.kind == "c":
        return (x - 1j * x[::-1]).astype(dtype)
    if dtype.kind == "b":
        return x > 127
    if dtype.kind == "i":
        return (x - 128).astype(dtype)
    if dtype == np.uint64:
        return x.astype(np.uint64) << np.uint64(56)
    return x.astype(dtype)


def typed_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """`array` in its typed value field, the way TF's clients fill it, parsed back from its
    serialization as a server receives it."""
    proto = tensors.to_proto(array)
    proto.ClearField("tensor_content")
    field = tensors.DTYPES[proto.dtype][1]
    flat = array.ravel()
    if field == "half_val":
        values = flat.view(np.uint16).tolist()
    elif array.dtype.kind == "c":
        values = flat.view(array.real.dtype).tolist()  # (real, imaginary) pairs
    else:
        values = flat.tolist()
    getattr(proto, field).extend(values)
    return tensor_pb2.TensorProto.FromString(proto.SerializeToString())


def per_call_us(fn, rounds: int, calls: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            fn()
        times.append((time.thread_time() - start) / calls * 1e6)
    return median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tensor_decode",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=200)
    args = p.parse_args(argv)
    print(machine(), flush=True)
    print(f"to_ndarray of a {'x'.join(map(str, SHAPE))} request tensor, us per call "
          f"(median of {args.rounds} rounds of {args.calls})")
    rows = []
    for dt, (dtype, field) in tensors.DTYPES.items():
        array = sample(dtype)
        content, typed = tensors.to_proto(array), typed_proto(array)
        assert np.array_equal(tensors.to_ndarray(typed), array)
        c = per_call_us(lambda p=content: tensors.to_ndarray(p), args.rounds, args.calls)
        t = per_call_us(lambda p=typed: tensors.to_ndarray(p), args.rounds, args.calls)
        s = per_call_us(typed.SerializeToString, args.rounds, args.calls)
        old = per_call_us(lambda p=typed, f=field: np.asarray(getattr(p, f)), 3, 5)
        rows.append((tensors.dtype_name(dt), field, f"{c:.1f}", f"{t:.1f}", f"{t / c:.2f}x",
                     f"{s:.1f}", f"{old:.0f}"))
    print(table(rows, ("dtype", "typed field", "tensor_content", "typed field",
                       "typed/content", "of it SerializeToString", "np.asarray(field) (old)")))
    if not NATIVE.is_file():
        print(f"native plane: {NATIVE} is not built (make native-if-possible)")
        return 0
    print("\nthe native plane (serving/native/src/decode.cc): the PredictRequest parsed and "
          "decoded, us per call")
    out = subprocess.run([str(NATIVE), str(args.rounds), str(args.calls)], check=True,
                         capture_output=True, text=True).stdout
    lines = [line.split("\t") for line in out.splitlines()]
    print(table(lines[1:], lines[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
