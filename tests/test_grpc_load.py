"""benchmarks/grpc_load.cc (the C++ load generator) counts what it sees: OK replies as requests,
failures by status code, an empty OK reply as an error. Against a stub gRPC server, so no model
is needed; skipped when g++ or gRPC's C++ development files are missing."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from benchmarks import serving_load


@pytest.fixture(scope="module")
def binary():
    path, why = serving_load.cxx_client()
    if path is None:
        pytest.skip(f"C++ load generator not built: {why}")
    return path


@pytest.fixture(scope="module")
def address():
    def predict(request: bytes, context) -> bytes:
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        return b"" if request == b"empty" else b"reply"

    service, method = serving_load.PREDICT.strip("/").split("/")
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(predict)})])  # bytes in and out
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.mark.parametrize("payload, errors", [(b"good", set()), (b"missing", {"NOT_FOUND"}),
                                             (b"empty", {"EMPTY_REPLY"})])
def test_grpc_load_counts_replies_and_errors(binary, address, payload, errors):
    r = serving_load.load_cxx(binary, address, payload, clients=3, seconds=0.3, channels=2)
    assert set(r["errors"]) == errors
    if errors:
        assert r["requests"] == 0 and sum(r["errors"].values()) > 0
    else:
        assert r["requests"] > 0 and r["rate"] > 0 and r["p50_ms"] > 0
    assert r["client_cpu_us"] > 0
