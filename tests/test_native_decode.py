"""The native plane's request decoding of every dtype it accepts, in its typed value field and in
tensor_content (serving/native/src/decode_bench.cc): both encodings of the same 16x28x28 tensor
must decode to the same bytes. The benchmark's own check, run once; its timings are
benchmarks/tensor_decode.py's business."""

import subprocess

import pytest

from benchmarks.tensor_decode import NATIVE
from serving.runtime import tensors


def test_typed_fields_and_tensor_content_decode_alike_for_every_dtype():
    if not NATIVE.is_file():
        pytest.skip(f"{NATIVE} is not built (make native-if-possible)")
    run = subprocess.run([str(NATIVE), "1", "1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [line.split("\t")[0] for line in run.stdout.splitlines()[1:]]
    assert sorted(rows) == sorted(tensors.dtype_name(dt) for dt in tensors.DTYPES)
