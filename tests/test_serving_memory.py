"""Memory per request (issue 25, item 1): a big JSON tensor is decoded straight to numpy, never
through Python lists, and the REST port holds at most --max_request_bytes_in_flight of bodies at
once, answering 503 with Retry-After beyond it while small requests go on. The whole server in
this process (tests/test_serving_rest.py's Stack, tiny ONNX identity models)."""

from __future__ import annotations

import json
import select
import tracemalloc
from contextlib import closing

import numpy as np
import pytest

from serving.transports import json_body
from tests import test_serving_rest as rest
from tests.test_serving_rest import ROW, WIDTH, connect, exchange, get, post, read_response

models, serve = rest.models, rest.serve  # the fixtures

PREDICT = "/v1/models/identity:predict"


def decode(doc: dict, key: str, dtype=np.float32):
    return json_body.to_array(json_body.parse(json.dumps(doc).encode(), "")[key], dtype)


def test_a_big_tensor_decodes_to_numpy_in_a_few_times_its_bytes():
    x = np.random.default_rng(0).integers(0, 256, (2000, 28, 28)).astype(np.float32)
    body = json.dumps({"instances": x.astype(int).tolist()}).encode()
    tracemalloc.start()
    try:
        doc = json_body.parse(body, "")
        assert isinstance(doc["instances"], json_body.NumberArray)  # no lists made
        got = json_body.to_array(doc["instances"], np.float32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, x)
    assert peak < 4 * len(body), f"decoding took {peak / len(body):.1f}x the body's bytes"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8,
                                   np.float16, np.bool_, np.complex64])
def test_decoded_numbers_are_the_list_path_s(dtype):
    rng = np.random.default_rng(1)
    for value in (rng.random((700, 8, 16)).tolist(), rng.integers(0, 200, 90_000).tolist(),
                  rng.integers(0, 2, (30_000, 3)).tolist()):
        doc = {"inputs": {"x": value}}
        np.testing.assert_array_equal(decode(doc["inputs"], "x", dtype),
                                      np.asarray(value, dtype))


def spoiled(change) -> dict:
    rows = np.random.default_rng(2).random((3000, 5, 7)).tolist()
    change(rows)
    return {"instances": rows}


@pytest.mark.parametrize("change,message", [
    (lambda r: r[2500][3].__setitem__(4, None), "null is not a number"),
    (lambda r: r[2500][3].__setitem__(4, True), "boolean"),
    (lambda r: r[2500][3].append(1.0), "inhomogeneous"),
    (lambda r: r[10].pop(), "inhomogeneous"),
    (lambda r: r[2999].__setitem__(0, 1.0), "inhomogeneous"),
    (lambda r: r[2999].__setitem__(0, []), "inhomogeneous"),
    (lambda r: r.__setitem__(1, [[1.0] * 7] * 5 + [[1.0] * 7]), "inhomogeneous"),
    (lambda r: r.__setitem__(2999, [[1.0] * 8] * 5), "inhomogeneous|not rectangular"),
], ids=["null", "true", "longer-row", "shorter", "number-for-row", "empty-row", "more-rows",
        "other-shape-later"])
def test_bad_numbers_are_refused_as_the_list_path_refuses_them(change, message):
    with pytest.raises(ValueError, match=message):
        decode(spoiled(change), "instances")


def test_an_empty_element_is_refused():
    text = json.dumps({"x": list(range(100_000))})
    for broken in (text[:-2] + ",]}", text.replace(", ", ",, ", 1),
                   text.replace(", ", ", ,", 50_000)):
        with pytest.raises(ValueError):
            json_body.to_array(json_body.parse(broken.encode(), "")["x"], np.int64)


# ------------------------------------------------------------------------------ bodies in flight
def test_bodies_beyond_the_budget_are_503_with_retry_after_while_small_ones_go_on(serve):
    """One big body being read holds the budget: a second big one is refused at once, before
    its body is read; a small one is answered; the first, once all its bytes arrive, is too."""
    stack = serve(max_request_bytes_in_flight=1 << 20)
    rows = np.ones((30_000, WIDTH), np.float32)
    body = json.dumps({"instances": rows.tolist()}).encode()
    big = post(PREDICT, body)
    assert len(big) > 600_000
    with closing(connect(stack.port)) as first:
        # Its "100 Continue" says the server holds its body's bytes and is reading them.
        first.sendall(post(PREDICT, body, "Expect: 100-continue")[:-len(body)])
        seen = b""
        while b"\r\n\r\n" not in seen:
            seen += first.recv(1024)
        assert seen.startswith(b"HTTP/1.1 100"), seen
        first.sendall(body[:len(body) // 2])
        status, headers, answer = exchange(stack.port, big)
        assert status == 503, answer
        assert headers["retry-after"] == "1"
        assert "--max_request_bytes_in_flight" in json.loads(answer)["error"]
        status, _, answer = exchange(stack.port, post(PREDICT, ROW))
        assert status == 200, answer
        status, _, answer = exchange(stack.port, get("/v2/health/live"))
        assert status == 200
        first.sendall(body[len(body) // 2:])
        status, _, answer = read_response(first)
        assert status == 200
        np.testing.assert_array_equal(json.loads(answer)["predictions"], rows)
    status, _, _ = exchange(stack.port, big)  # the budget is free again
    assert status == 200


@pytest.mark.slow  # a 40 MB body: seconds of CPU
def test_health_answers_while_a_big_body_is_decoded(serve):
    """/v2/health/live is answered between a big predict's last byte and its answer (decoding
    runs in a thread, never on the event loop)."""
    stack = serve(max_request_bytes=128 << 20)
    rows = np.random.default_rng(3).random((1_000_000, WIDTH), dtype=np.float32)
    big = post(PREDICT, json.dumps({"instances": rows.tolist()}).encode())
    with closing(connect(stack.port)) as s:
        s.sendall(big)
        healthy = 0
        with closing(connect(stack.port)) as h:
            while True:
                h.sendall(get("/v2/health/live"))
                assert read_response(h)[0] == 200
                if select.select([s], [], [], 0)[0]:  # the big answer has begun
                    break
                healthy += 1
        status, _, answer = read_response(s)
    assert status == 200
    assert healthy >= 3, f"only {healthy} health answers while the big body was decoded"


@pytest.mark.parametrize("path,doc", [
    (PREDICT, lambda x: {"inputs": x.tolist()}),
    (PREDICT, lambda x: {"instances": x.tolist()}),
    ("/v2/models/identity/infer", lambda x: {"inputs": [{
        "name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}),
], ids=["tfs-columnar", "tfs-row", "v2-flat"])
def test_big_bodies_of_both_protocols_are_answered_from_the_numpy_path(serve, path, doc):
    x = np.random.default_rng(4).random((50_000, WIDTH), dtype=np.float32)
    status, _, answer = exchange(serve().port, post(path, json.dumps(doc(x)).encode()))
    assert status == 200, answer[:300]
    got = json.loads(answer)
    y = (got["outputs"][0]["data"] if path.startswith("/v2") else
         got.get("predictions", got.get("outputs")))
    np.testing.assert_array_equal(np.asarray(y, np.float32).reshape(x.shape), x)
