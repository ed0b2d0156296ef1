"""The REST server (serving/transports/http_server.py and the protocols' REST handlers)
in-process: the whole server (serving.server.Server) serving tiny ONNX models on an event loop
in a background thread, driven with raw sockets where the test needs control over the bytes.
Timeouts are set short through the server's own flags."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import pytest

from serving.protocols.tf_serving import rest_api as tf_rest
from serving.transports import http_server, json_body
from tests.serving_fixtures import free_port, wait_for

WIDTH = 4  # the models map x float32 [N, 4] to y = x


def write_identity(version_dir: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    version_dir.mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(version_dir / "model.onnx"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("rest_models")
    for name in ("identity", "modèle"):
        write_identity(base / name / "1")
    return base


class Stack:
    """The whole server (serving.server.Server: gRPC and REST, ONNX backend) in this process, on
    a uvloop loop in a thread; `flags` are extra command-line flags."""

    def __init__(self, models: Path, flags: list[str]):
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = None
        try:
            self.call(self._start(models, flags))
        except BaseException:
            self.close()
            raise

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, models: Path, flags: list[str]):
        from serving.server import Server, options

        self.server = Server(options(
            "--model_base_path", str(models), "--backend", "onnx", "--port", "0",
            "--rest_api_port", str(free_port()), "--file_system_poll_wait_seconds", "0", *flags))
        await self.server.start()
        self.core = self.server.core
        self.port, self.grpc_port = self.server.rest_port, self.server.port

    def close(self):
        try:
            if self.server is not None:
                self.call(self.server.stop(1))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()


@pytest.fixture
def serve(models):
    """serve(**flags) -> a running Stack, stopped when the test ends; flags as keyword
    arguments named as the server's flags, e.g. serve(rest_api_max_connections=5)."""
    with ExitStack() as stacks:
        def start(**flags) -> Stack:
            stack = Stack(models, [f"--{k}={v}" for k, v in flags.items()])
            stacks.callback(stack.close)
            return stack

        yield start


# ------------------------------------------------------------------------------ raw HTTP
def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from the socket."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {bytes(data)!r}")
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    body = bytearray(body)
    while len(body) < int(headers.get("content-length", 0)):
        chunk = s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return int(lines[0].split()[1]), headers, bytes(body)


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with closing(connect(port)) as s:
        s.sendall(request)
        return read_response(s)


def post(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(h + "\r\n" for h in headers)
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: t\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode()


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `s` (reading and dropping what it sends), or None."""
    start = time.monotonic()
    poller = select.poll()  # not select.select: it fails on descriptors above 1023
    poller.register(s, select.POLLIN)
    while time.monotonic() - start < seconds:
        if poller.poll(50):
            try:
                if not s.recv(65536):
                    return time.monotonic() - start
            except ConnectionError:
                return time.monotonic() - start
    return None


def untouched(s: socket.socket) -> bool:
    """True if the server has neither sent anything on `s` nor closed it, as of now."""
    poller = select.poll()
    poller.register(s, select.POLLIN)
    return not poller.poll(0)


ROW = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()


# ------------------------------------------------------------------------------ routes and faults
def test_predict_status_and_percent_decoded_model_names(serve):
    port = serve().port
    status, headers, body = exchange(port, post("/v1/models/mod%C3%A8le:predict", ROW))
    assert (status, json.loads(body)) == (200, {"predictions": [[1.0, 2.0, 3.0, 4.0]]})
    assert headers["content-type"] == "application/json"
    status, _, body = exchange(port, get("/v1/models/mod%C3%A8le/versions/1"))
    assert status == 200 and json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"
    status, _, body = exchange(port, post("/v1/models/identity:predict",
                                          b'{"inputs": {"x": [[1, 2, 3, 4], [5, 6, 7, 8]]}}'))
    assert (status, json.loads(body)) == (200, {"outputs": [[1, 2, 3, 4], [5, 6, 7, 8]]})


@pytest.mark.parametrize("request_bytes", [
    post("/v1/models/identity:predict", b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
    post("/v1/models/identity:predict", b"[" * 10_000 + b"]" * 10_000),
    post("/v1/models/identity:predict", b'{"instances": [[1' + b"0" * 400 + b', 2, 3, 4]]}'),
    post("/v1/models/identity:predict", b'{"instances": [[1' + b"0" * 5000 + b', 2, 3, 4]]}'),
    get("/v1/models/identity/versions/99999999999999999999"),
    post("/v1/models/identity/versions/99999999999999999999:predict", ROW),
], ids=["nested-10000-in-instances", "nested-10000", "400-digit-integer", "5000-digit-integer",
        "version-beyond-int64-status", "version-beyond-int64-predict"])
def test_bad_input_is_400_invalid_argument_not_500(serve, request_bytes):
    status, _, body = exchange(serve().port, request_bytes)
    assert status == 400, body
    assert json.loads(body)["error"]


@pytest.mark.parametrize("head", [
    "Content-Length: 1_0", "Content-Length: 10\r\nContent-Length: 10", "Content-Length: -1",
    "Content-Length: 10\r\nTransfer-Encoding: chunked"])
def test_ambiguous_body_framing_is_refused_with_400(serve, head):
    request = (f"POST /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n{head}\r\n\r\n"
               "0123456789").encode()
    with closing(connect(serve().port)) as s:
        s.sendall(request)
        status, _, body = read_response(s)
        assert status == 400 and "error" in json.loads(body)
        assert closed_within(s, 5) is not None


def test_a_1_mb_header_line_is_answered_431_not_reset(serve):
    port = serve().port
    with closing(connect(port)) as s:
        try:  # the server may answer and stop reading before the whole header is sent
            s.sendall(b"GET /v1/models/identity HTTP/1.1\r\nHost: t\r\nX-Big: "
                      + b"a" * (1 << 20) + b"\r\n\r\n")
        except ConnectionError:
            pass
        status, _, body = read_response(s)
    assert status == 431 and "--rest_api_max_header_bytes" in json.loads(body)["error"]
    many = "".join(f"X-H{i}: v\r\n" for i in range(101))
    status, _, body = exchange(port, f"GET /v1/models/identity HTTP/1.1\r\n{many}\r\n".encode())
    assert status == 431 and "--rest_api_max_header_count" in json.loads(body)["error"]
    assert exchange(port, get("/v1/models/identity"))[0] == 200  # and the server still serves


# ------------------------------------------------------------------------------ bodies
def test_chunked_request_body(serve):
    port = serve().port
    chunks = [ROW[:5], ROW[5:17], ROW[17:]]
    with closing(connect(port)) as s:
        s.sendall(b"POST /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n"
                  b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
        for c in chunks:
            s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            time.sleep(0.05)
        s.sendall(b"0\r\n\r\n")
        status, _, body = read_response(s)
    assert (status, json.loads(body)) == (200, {"predictions": [[1.0, 2.0, 3.0, 4.0]]})


def test_expect_100_continue(serve):
    port = serve(max_request_bytes=1000).port
    with closing(connect(port)) as s:
        s.sendall(b"POST /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(ROW))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(ROW)
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["predictions"] == [[1.0, 2.0, 3.0, 4.0]]
    # too big: refused at once, before the client sends the body
    status, _, body = exchange(port, b"POST /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n"
                                     b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
    assert status == 413 and "--max_request_bytes" in json.loads(body)["error"]


def test_body_size_limit_by_length_and_while_chunked(serve):
    port = serve(max_request_bytes=1000).port
    status, _, body = exchange(port, post("/v1/models/identity:predict", b" " * 1001))
    assert status == 413 and "--max_request_bytes" in json.loads(body)["error"]
    with closing(connect(port)) as s:
        s.sendall(b"POST /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            s.sendall(b"200\r\n" + b" " * 512 + b"\r\n")
        assert read_response(s)[0] == 413


# ------------------------------------------------------------------------------ connections
def test_stalled_connections_do_not_block_a_new_client_and_are_closed_after_the_timeout(serve):
    timeout = 3.0
    port = serve(rest_api_read_timeout_seconds=timeout).port
    with ExitStack() as sockets:
        stalled = []
        for i in range(500):
            s = sockets.enter_context(closing(connect(port)))
            if i % 3 == 1:    # half a request head
                s.sendall(b"POST /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n")
            elif i % 3 == 2:  # the head and half the body
                s.sendall(post("/v1/models/identity:predict", ROW)[:-len(ROW) // 2])
            stalled.append(s)  # i % 3 == 0: connected, silent
        assert exchange(port, get("/v1/models/identity"))[0] == 200
        # Answered at once: before the read timeout acted on any stalled connection (an answer
        # that had to wait for them would come after they are closed). No clock is read.
        touched = [s for s in stalled if not untouched(s)]
        assert not touched, f"{len(touched)} timed out before the new client's answer"
        # each is closed after the timeout (a stalled body first gets its 408, then a linger)
        waits = [closed_within(s, timeout + http_server.LINGER_SECONDS + 5) for s in stalled]
        assert all(w is not None for w in waits), f"{waits.count(None)} still open"
    assert exchange(port, get("/v1/models/identity"))[0] == 200


def test_a_stalled_body_gets_408(serve):
    port = serve(rest_api_read_timeout_seconds=0.5).port
    with closing(connect(port)) as s:
        s.sendall(post("/v1/models/identity:predict", ROW)[:-5])
        status, headers, body = read_response(s)
    assert status == 408 and "--rest_api_read_timeout_seconds" in json.loads(body)["error"]
    assert headers["connection"] == "close"


def test_a_trickled_body_gets_408_at_its_total_deadline(serve):
    """A byte every 0.1 s never pauses as long as the read timeout, yet the whole body has its
    own deadline."""
    port = serve(rest_api_read_timeout_seconds=30, rest_api_body_timeout_seconds=1).port
    request = post("/v1/models/identity:predict", ROW)
    with closing(connect(port)) as s:
        s.sendall(request[:-len(ROW)])
        for i in range(len(ROW)):
            if not untouched(s):
                break  # the server answered
            s.sendall(ROW[i:i + 1])
            time.sleep(0.1)
        else:
            pytest.fail("the whole body was accepted at 10 bytes a second")
        status, headers, body = read_response(s)
    assert status == 408 and "--rest_api_body_timeout_seconds" in json.loads(body)["error"]
    assert headers["connection"] == "close"


def test_a_body_arriving_while_the_server_stops_is_read_and_answered(serve):
    """The head came before the stop (SIGTERM), the rest of the body after it: the drain reads
    it and answers, rather than dropping the bytes until the read timeout gives 408."""
    stack = serve(rest_api_read_timeout_seconds=30)
    request = post("/v1/models/identity:predict", ROW)
    with closing(connect(stack.port)) as s:
        s.sendall(request[:-len(ROW) // 2])
        wait_for(lambda: any(c.busy for c in stack.server._rest._runner.server.connections), 30,
                 what="the server to have the request's head")
        stopping = asyncio.run_coroutine_threadsafe(stack.server.stop(30), stack.loop)

        def refused() -> bool:  # the stop has begun: the port no longer accepts
            try:
                connect(stack.port).close()
            except ConnectionRefusedError:
                return True
            return False
        wait_for(refused, 30, what="the REST port to close")
        s.sendall(request[-len(ROW) // 2:])
        status, _, body = read_response(s)
    assert status == 200, body
    assert json.loads(body) == {"predictions": [[1.0, 2.0, 3.0, 4.0]]}
    stopping.result(60)


def test_keepalive_connection_is_reused_then_closed_when_idle(serve):
    # keep-alive 3 s: the 0.5 s "not yet closed" check keeps 2.5 s of margin on a slow machine
    port = serve(rest_api_keepalive_timeout_seconds=3.0, rest_api_read_timeout_seconds=0.3).port
    with closing(connect(port)) as s:
        for i in range(3):  # one connection, several requests
            if i:
                time.sleep(0.5)  # idle longer than the read timeout, which applies to heads only
            s.sendall(get("/v1/models/identity"))
            assert read_response(s)[0] == 200
        # Not closed before the keep-alive timeout (closing later on a slow machine is fine),
        # then closed.
        assert closed_within(s, 0.5) is None
        assert closed_within(s, 10) is not None


def test_connections_beyond_the_cap_are_refused_at_once(serve):
    # The held connections outlive the extra one's socket timeout (10 s): an extra connection
    # queued until a slot frees would time out (TimeoutError) instead of being answered.
    port = serve(rest_api_max_connections=5, rest_api_read_timeout_seconds=60).port
    with ExitStack() as sockets:
        held = [sockets.enter_context(closing(connect(port))) for _ in range(5)]
        for s in held:  # answered, so the server has surely taken each one (kept alive)
            s.sendall(get("/v1/models/identity"))
            assert read_response(s)[0] == 200
        with closing(connect(port)) as extra:
            try:
                status, _, body = read_response(extra)
                assert status == 503 and "--rest_api_max_connections" in json.loads(body)["error"]
            except ConnectionResetError:
                pass  # a reset is a refusal too
        assert all(untouched(s) for s in held)
        held[0].close()

        def answered() -> bool:  # once the server has seen the close, the slot is free
            try:
                return exchange(port, get("/v1/models/identity"))[0] == 200
            except ConnectionResetError:
                return False

        wait_for(answered, 30, interval=0.05, what="a connection in the freed slot")


@pytest.mark.slow  # a child process
def test_connection_cap_fits_the_open_file_limit():
    """Where only the soft open-file limit is low, it is raised; where the hard one is (600), the
    cap is lowered, with a warning. (In a child process: a hard limit cannot be raised again.)"""
    import subprocess
    import sys

    from tests.serving_fixtures import ENV, ROOT

    code = """if True:
        import resource
        from serving.transports import http_server
        for soft, hard in ((500, 4000), (500, 600)):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            print(http_server.connection_budget(1024),
                  resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(n) for n in (1024, 1024 + http_server.FD_RESERVE,
                                                    600 - http_server.FD_RESERVE, 600)]
    assert done.stderr.count("--rest_api_max_connections 1024 lowered to") == 1


# ------------------------------------------------------------------------------ CORS
def test_cors_is_off_by_default(serve):
    port = serve().port
    _, headers, _ = exchange(port, get("/v1/models/identity", "Origin: http://a.example"))
    assert not any(h.startswith("access-control-") for h in headers)
    preflight = ("OPTIONS /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n"
                 "Origin: http://a.example\r\nAccess-Control-Request-Method: POST\r\n\r\n")
    status, headers, _ = exchange(port, preflight.encode())
    assert status == 404 and not any(h.startswith("access-control-") for h in headers)


def test_cors_enabled_answers_preflights_and_allowed_origins(serve):
    port = serve(rest_api_enable_cors_support=True).port
    _, headers, _ = exchange(port, post("/v1/models/identity:predict", ROW,
                                        "Origin: http://a.example"))
    assert headers["access-control-allow-origin"] == "*"
    preflight = (b"OPTIONS /v1/models/identity:predict HTTP/1.1\r\nHost: t\r\n"
                 b"Origin: http://a.example\r\nAccess-Control-Request-Method: POST\r\n"
                 b"Access-Control-Request-Headers: content-type\r\n\r\n")
    status, headers, _ = exchange(port, preflight)
    assert status == 204 and headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "content-type"

    port = serve(rest_api_enable_cors_support=True,
                 rest_api_cors_allowed_origins="http://a.example, http://b.example").port
    _, headers, _ = exchange(port, get("/v1/models/identity", "Origin: http://b.example"))
    assert headers["access-control-allow-origin"] == "http://b.example"
    assert headers["vary"] == "Origin"
    _, headers, _ = exchange(port, get("/v1/models/identity", "Origin: http://evil.example"))
    assert "access-control-allow-origin" not in headers
    status, _, body = exchange(port, preflight.replace(b"http://a.", b"http://evil."))
    assert status == 403 and "--rest_api_cors_allowed_origins" in json.loads(body)["error"]


# ------------------------------------------------------------------------------ JSON off the loop
@pytest.mark.slow  # 50 MB each way: seconds of CPU
def test_big_json_is_decoded_and_encoded_off_the_loop(serve):
    """While a 50 MB predict is decoded, run and encoded, 1-row gRPC calls on the same loop
    keep being answered promptly (json.loads on it stalled them 4.2 s)."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.runtime import tensors

    stack = serve(max_request_bytes=128 << 20)
    rows = np.random.default_rng(0).random((600_000, WIDTH), dtype=np.float32)
    body = json.dumps({"instances": rows.tolist()}).encode()
    one = predict_pb2.PredictRequest()
    one.model_spec.name = "identity"
    tensors.to_proto(rows[:1], one.inputs["x"])
    latencies, done = [], threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(one, timeout=30)

        def poll():
            while not done.is_set():
                started = time.monotonic()
                stub.Predict(one, timeout=30)
                latencies.append(time.monotonic() - started)
                time.sleep(0.005)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            started = time.monotonic()
            status, _, answer = exchange(stack.port, post("/v1/models/identity:predict", body))
            took = time.monotonic() - started
        finally:
            done.set()
            poller.join()
    assert status == 200
    np.testing.assert_array_equal(np.asarray(json.loads(answer)["predictions"], np.float32),
                                  rows)
    print(f"REST {took:.2f} s; {len(latencies)} gRPC calls meanwhile, p50 "
          f"{np.median(latencies) * 1e3:.1f} ms, max {max(latencies) * 1e3:.0f} ms")
    # Relative to the big call itself, so that it holds on a fast or a slow CPU: a parse on
    # the loop (the old server) stalls one gRPC call for most of the REST call.
    assert len(latencies) > 10 and max(latencies) < 0.5 * took, \
        f"gRPC calls waited up to {max(latencies):.2f} s during a {took:.2f} s REST call"


def test_sliced_json_parses_and_encodes_as_the_json_module():
    rng = np.random.default_rng(0)
    docs = [
        {"instances": rng.random((600, 8, 8)).tolist()},
        {"instances": rng.random((20_000, 1)).tolist(), "signature_name": "s"},
        {"inputs": {"a": rng.random((20_000, 3)).tolist(), "b": list(range(30_000))}},
        {"instances": [{"s": "a,]], b}],", "n": [1, [2, 3]]} for _ in range(5000)]},
        {"instances": [rng.random((120, 120, 3)).tolist()]},
        [[i, [i, {"k": "]},"}]] for i in range(20_000)],
    ]
    for doc in docs:
        for text in (json.dumps(doc), json.dumps(doc, indent=1)):
            assert len(text) > json_body.SLICE_CHARS
            assert json_body.loads_sliced(text) == json.loads(text)
    big = json.dumps(docs[0])
    for broken in (big[:-3], big.replace("], [", "] [", 7), big + " x", big.replace(",", ",,", 1)):
        with pytest.raises(json.JSONDecodeError):
            json_body.loads_sliced(broken)
    result = {"probabilities": rng.random((20_000, 10), dtype=np.float32),
              "classes": np.arange(20_000)}
    lists = {k: v.tolist() for k, v in result.items()}
    assert tf_rest.encode_predict(result, True) == json.dumps({"predictions": [
        dict(zip(lists, row)) for row in zip(*lists.values())]}).encode()
    assert tf_rest.encode_predict(result, False) == json.dumps({"outputs": lists}).encode()
    y = rng.random((500, 28, 28), dtype=np.float32)
    assert tf_rest.encode_predict({"y": y}, True) == json.dumps(
        {"predictions": y.tolist()}).encode()
    assert tf_rest.encode_predict({"y": y[:0]}, False) == b'{"outputs": []}'
