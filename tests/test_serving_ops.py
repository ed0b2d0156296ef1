# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""What operators ask of the server: request logging, bearer-token auth, the model-control switch
and the OpenAPI document (docs/ARCHITECTURE.md, "Request logging", "Auth", "OpenAPI").

The unit tests run in-process; the others run one real server (real exports, real gRPC and HTTP
on 127.0.0.1) with every option on, and the client CLI against it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path

import grpc
import numpy as np
import pytest
from multidict import CIMultiDict

from serving import server as composition
from serving.native import plane as native_plane
from serving.observability import access_log
from serving.runtime import tensors
from serving.server import options
from serving.transports import auth, http_server
from tests.serving_fixtures import (  # noqa: F401
    ENV,
    ROOT,
    ServerProcess,
    data_planes,
    digits,
    exported,
    predict_request,
    wait_for,
    write_config,
)

TOKEN = "s3cret-token_0123456789"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
DOC = json.loads((ROOT / "serving" / "openapi.json").read_text())
METHODS = ("get", "post", "put", "delete", "patch", "options", "head")


def documented() -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in DOC["paths"].items() for m in item
            if m in METHODS}


def served() -> set[tuple[str, str]]:
    return {(r.method, r.template) for r in composition.ROUTES}


# ---------------------------------------------------------------------------- OpenAPI, in-process
def test_openapi_document_is_valid_openapi_3():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    assert DOC["openapi"].startswith("3.")
    validate(copy.deepcopy(DOC))
    broken = copy.deepcopy(DOC)  # the validator does look: a path parameter left undeclared
    broken["paths"]["/v1/models/{name}/metadata"].pop("parameters")
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_every_served_route_is_documented():
    missing = served() - documented()
    assert not missing, f"routes in serving.server.ROUTES missing from openapi.json: {missing}"


def test_every_documented_route_is_served():
    extra = documented() - served()
    assert not extra, f"documented in openapi.json but not in serving.server.ROUTES: {extra}"


def test_route_table_matches_as_tf_serving_does():
    route, params = composition.ROUTER.find("POST", "/v1/models/m%C3%A8/labels/stable:predict")
    assert (route.template, params) == ("/v1/models/{name}/labels/{label}:predict",
                                        {"name": "m%C3%A8", "label": "stable"})
    assert composition.ROUTER.find("GET", "/v1/models/")[0].template == "/v1/models"
    for method, path in (("POST", "/v1/models/m"), ("GET", "/v1/models/m:predict"),
                         ("GET", "/v1/models/m/extra"), ("GET", "/v1/models/a:b/metadata")):
        with pytest.raises(http_server.HttpError) as e:
            composition.ROUTER.find(method, path)
        assert e.value.status == 404


# ---------------------------------------------------------------------------- auth, in-process
def test_guard_compares_bearer_tokens():
    g = auth.Guard(TOKEN)
    assert g.authorized(f"Bearer {TOKEN}") and g.authorized(f"bearer {TOKEN}")
    for wrong in (None, "", TOKEN, f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ",
                  f"Bearer {TOKEN[:-1]}"):
        assert not g.authorized(wrong), wrong
    assert auth.Guard().authorized(None)  # no token configured: everything passes
    headers = CIMultiDict({"Authorization": "Bearer nope"})  # as aiohttp hands them over
    status, message, extra = g.check_http("GET", "/v1/models", headers)
    assert (status, extra["WWW-Authenticate"]) == (401, 'Bearer realm="zoo", '
                                                        'error="invalid_token"')
    for public in ("/v2/health/live", "/v2/health/ready", "/openapi.json", "/",
                   "/web/app.js"):
        assert g.check_http("GET", public, CIMultiDict()) is None
    assert g.check_http("OPTIONS", "/v1/models/m:predict", CIMultiDict()) is None  # CORS preflight


def test_token_file_errors_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match=r"--auth_token_file .*missing.*cannot read"):
        auth.read_token(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"--auth_token_file .*empty"):
        auth.read_token(str(tmp_path / "empty"))
    (tmp_path / "two").write_text("a b\n")
    with pytest.raises(ValueError, match="one line"):
        auth.read_token(str(tmp_path / "two"))
    (tmp_path / "ok").write_text(f"  {TOKEN}\n")
    assert auth.read_token(str(tmp_path / "ok")) == TOKEN


# ---------------------------------------------------------------------------- logging, in-process
def test_tensor_summary_and_protocol_names():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert access_log.tensor_summary(a, 0) == {"dtype": "float32", "shape": [2, 3], "min": 0.0,
                                               "max": 5.0, "mean": 2.5}
    assert access_log.tensor_summary(a, 6)["values"] == [[0, 1, 2], [3, 4, 5]]
    assert access_log.rest_protocol("/v1/models/m:predict") == "tfs-rest"
    assert access_log.rest_protocol("/v2") == "v2-rest"
    assert access_log.rest_protocol("/v2/models/m/infer") == "v2-rest"
    assert access_log.rest_protocol("/openapi.json") == "http-rest"
    assert access_log.api_of("/inference.GRPCInferenceService/ModelInfer",
                             access_log.GRPC_APIS) == "v2"


def test_bad_logging_flags_are_refused():
    args = Namespace(access_log=None, payload_log_sample_rate=0.5, payload_log_file=None,
                     payload_log_max_bytes=1, payload_log_backup_count=1,
                     payload_log_max_values=0, access_log_flush_seconds=1.0)
    with pytest.raises(ValueError, match="needs --payload_log_file"):
        access_log.check_args(args)
    args.payload_log_sample_rate = 1.5
    with pytest.raises(ValueError, match="--payload_log_sample_rate must be between 0 and 1"):
        access_log.check_args(args)
    args.payload_log_sample_rate = 0
    assert access_log.AccessLog.from_args(args) is None  # off by default
    for bad in (-1, float("nan"), float("inf")):  # inf would kill the flush thread
        args.access_log_flush_seconds = bad
        with pytest.raises(ValueError, match="--access_log_flush_seconds must be a number >= 0"):
            access_log.check_args(args)


def test_access_lines_are_json_and_all_written_by_close(tmp_path):
    """The hand-built line parses as the JSON it claims to be, odd characters included, and
    close() (the server's stop) writes what the flush thread had not yet."""
    args = options("--access_log", str(tmp_path / "access.log"), "--access_log_flush_seconds",
                   "3600")
    log = access_log.AccessLog.from_args(args)
    begun = log.begin("tfs-rest", 'POST /v1/models/a"b\\c\u00e9:predict', None, "a\"b")
    access_log.note(version=3, rows=2)
    log.end(begun, 200)
    begun = log.begin("tfs-grpc", "/tensorflow.serving.PredictionService/Predict",
                      "ipv4:127.0.0.1:1")
    log.end(begun, "INVALID_ARGUMENT")
    assert (tmp_path / "access.log").read_text() == ""
    log.close()
    first, second = [json.loads(line) for line in
                     (tmp_path / "access.log").read_text().splitlines()]
    assert first["method"] == 'POST /v1/models/a"b\\c\u00e9:predict' and first["model"] == 'a"b'
    assert (first["version"], first["rows"], first["status"], first["peer"]) == (3, 2, 200, None)
    assert isinstance(first["latency_ms"], float) and first["time"].endswith("Z")
    assert (second["model"], second["status"]) == (None, "INVALID_ARGUMENT")


# ---------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module", params=data_planes())
def guarded(request, exported, tmp_path_factory):
    """A server with auth, the access log, payload logging of every request and model control
    off, once per data plane (the native plane keeps no payloads: no payload log there);
    (server, token file, access log path, payload log path or None)."""
    if request.param == "native" and not native_plane.built():
        pytest.skip(f"--data_plane native: {native_plane.BINARY} is not built (make native)")
    tmp = tmp_path_factory.mktemp("ops")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(tmp / "models.config", {
        "softmax_regression": {"base": exported / "softmax_regression", "labels": {"stable": 1}}})
    access = tmp / "access.log"
    payload = tmp / "payload.log" if request.param == "python" else None
    payload_flags = ["--payload_log_sample_rate", "1", "--payload_log_file", str(payload),
                     "--payload_log_max_values", "100"] if payload else []
    server = ServerProcess("--model_config_file", str(config), "--auth_token_file",
                           str(token_file), "--access_log", str(access), *payload_flags,
                           "--enable_model_control=false", "--data_plane", request.param,
                           log=tmp / "server.log")
    yield server, token_file, access, payload
    assert server.stop() == 0, server.logs()


def logged(server, path: Path) -> list[dict]:
    """The access log's lines up to a request made now: the server writes its lines every
    --access_log_flush_seconds, in order, so once this marker request's line is there, so are
    those of every request before it. A scrape first: it pulls the lines of the calls the
    native data plane answered (written when pulled) ahead of the marker's."""
    assert http("GET", f"http://{server.rest}/monitoring/prometheus/metrics",
                token=TOKEN)[0] == 200
    marker = f"GET /v1/models/marker-{time.monotonic_ns()}"
    http("GET", f"http://{server.rest}{marker.split(' ')[1]}", token=TOKEN)

    def lines() -> list[dict] | None:
        log = [json.loads(line) for line in path.read_text().splitlines()]
        return log if any(r["method"] == marker for r in log) else None

    return wait_for(lines, 60, what=f"the access-log line of {marker}")


def http(method: str, url: str, body: bytes | None = None, token: str | None = None):
    """(status, headers, parsed JSON or text) of a real HTTP call."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, h, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, h, raw = e.code, e.headers, e.read()
    try:
        return status, h, json.loads(raw)
    except ValueError:
        return status, h, raw.decode()


def grpc_predict(address: str, x, token: str | None | tuple, model="softmax_regression"):
    """A Predict with `token` as its authorization (a tuple: one value each, as they are)."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        metadata = (tuple(("authorization", v) for v in token) if isinstance(token, tuple) else
                    (("authorization", f"Bearer {token}"),) if token is not None else ())
        return stub.Predict(predict_request(model, x), timeout=30, metadata=metadata)


@pytest.mark.slow
def test_grpc_predict_needs_the_token(guarded, digits):
    """Refused with auth.Guard's code and words whichever plane answers, before the model is
    looked up; answered with the token, the scheme in any case, spaces around the token."""
    server = guarded[0]
    x = digits[0][:3]
    refusals = {None: [], "wrong": [("authorization", "Bearer wrong")],
                (f"Bearer {TOKEN}", "Bearer wrong"): [("authorization", f"Bearer {TOKEN}"),
                                                     ("authorization", "Bearer wrong")],
                (f"Bearer {TOKEN}",) * 2: [("authorization", f"Bearer {TOKEN}")] * 2,
                (f"Basic {TOKEN}",): [("authorization", f"Basic {TOKEN}")],
                (f"Bearer {TOKEN}x",): [("authorization", f"Bearer {TOKEN}x")],
                (f"Bearer {TOKEN[:-1]}",): [("authorization", f"Bearer {TOKEN[:-1]}")]}
    for token, metadata in refusals.items():
        expected = auth.Guard(TOKEN).grpc_refusal(PREDICT, metadata)
        for model in ("softmax_regression", "no_such_model"):
            with pytest.raises(grpc.RpcError) as e:
                grpc_predict(server.address, x, token, model)
            assert (e.value.code(), e.value.details()) == expected, (token, model)
    for token in (TOKEN, (f"bearer  {TOKEN} ",), (f"BEARER {TOKEN}",)):
        response = grpc_predict(server.address, x, token)
        assert response.model_spec.version.value == 1
    response = grpc_predict(server.address, x, TOKEN)
    assert tensors.to_ndarray(response.outputs["classes"]).shape == (3,)
    assert response.model_spec.version.value == 1


@pytest.mark.slow
def test_rest_predict_needs_the_token(guarded, digits):
    server = guarded[0]
    url = f"http://{server.rest}/v1/models/softmax_regression:predict"
    body = json.dumps({"instances": digits[0][:2].tolist()}).encode()
    status, headers, answer = http("POST", url, body)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="zoo"'
    assert "missing bearer token" in answer["error"]
    status, headers, answer = http("POST", url, body, token="wrong")
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    status, _, answer = http("POST", url, body, token=TOKEN)
    assert status == 200 and len(answer["predictions"]) == 2


@pytest.mark.slow
def test_health_and_the_document_need_no_token(guarded):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = guarded[0]
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    status, _, doc = http("GET", f"http://{server.rest}/openapi.json")
    assert status == 200 and doc == DOC
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert http("GET", f"http://{server.rest}{path}")[0] == 200
    assert http("GET", f"http://{server.rest}/monitoring/prometheus/metrics")[0] == 401


@pytest.mark.slow
def test_model_control_off(guarded, tmp_path):
    from serving.clients.errors import ClientError
    from serving.clients.tf_serving import ZooClient
    from serving.repository.protos import ModelServerConfig

    server = guarded[0]
    with ZooClient(server.address, token=TOKEN) as client, \
            pytest.raises(ClientError) as e:
        client.reload_config(ModelServerConfig())
    assert e.value.code == "UNIMPLEMENTED" and "--enable_model_control=false" in e.value.message
    with ZooClient(server.address, token=TOKEN) as client:  # still serving what it served
        assert client.status("softmax_regression")[0]["state"] == "AVAILABLE"


@pytest.mark.slow
def test_every_documented_path_answers(guarded, digits):
    """Each operation of the document, called with its example parameters and the token, is
    routed (not 404, and not 401)."""
    server = guarded[0]
    examples = {k: p["example"] for k, p in DOC["components"]["parameters"].items()
                if p["in"] == "path"}
    body = json.dumps({"instances": digits[0][:1].tolist()}).encode()
    for method, template in sorted(documented()):
        path = re.sub(r"\{(\w+)\}", lambda m: examples[m[1]], template)
        status, _, answer = http(method, f"http://{server.rest}{path}",
                                 body if method == "POST" else None, token=TOKEN)
        assert status not in (401, 404), (method, path, status, answer)
        if template.endswith(("classify", "regress")):
            assert status == 501
        elif not template.endswith("/infer"):  # a v2 infer gets a v1 body: 400, naming "inputs"
            assert status == 200, (method, path, status, answer)


@pytest.mark.slow
def test_client_cli_sends_the_token(guarded, tmp_path):
    server, token_file = guarded[:2]
    common = [sys.executable, "-m", "serving.client", "--address", server.address, "--rest",
              server.rest]
    ok = subprocess.run([*common, "--token-file", str(token_file), "predict",
                         "softmax_regression", "--mnist-test", "8"], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "accuracy" in ok.stdout, ok.stderr
    listed = subprocess.run([*common, "--token-file", str(token_file), "list"], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "softmax_regression" in listed.stdout, listed.stderr
    refused = subprocess.run([*common, "list"], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    refused = subprocess.run([*common, "status", "softmax_regression"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


@pytest.mark.slow
def test_access_and_payload_logs(guarded, digits):
    server, _, access, payload = guarded
    x = digits[0][:3]
    grpc_predict(server.address, x, TOKEN)
    with pytest.raises(grpc.RpcError):
        grpc_predict(server.address, x, "wrong")
    http("POST", f"http://{server.rest}/v1/models/softmax_regression/labels/stable:predict",
         json.dumps({"instances": x.tolist()}).encode(), token=TOKEN)
    http("GET", f"http://{server.rest}/v1/models/nope", token="wrong")

    def lines(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    log = logged(server, access)
    fields = {"time", "protocol", "method", "model", "version", "rows", "status", "latency_ms",
              "peer", "id"}
    assert all(set(line) == fields for line in log)
    grpc_line = [r for r in log if r["method"].endswith("/Predict") and r["status"] == "OK"][-1]
    assert grpc_line["protocol"] == "tfs-grpc" and grpc_line["peer"].startswith("ipv")
    assert (grpc_line["model"], grpc_line["version"], grpc_line["rows"]) == (
        "softmax_regression", 1, 3)
    rest_line = [r for r in log if r["method"].endswith("stable:predict")][-1]
    assert (rest_line["protocol"], rest_line["status"], rest_line["version"],
            rest_line["rows"]) == ("tfs-rest", 200, 1, 3)
    denied = [r for r in log if r["method"] == "GET /v1/models/nope"][-1]
    assert denied["status"] == 401 and denied["model"] is None
    assert any(r["status"] == "UNAUTHENTICATED" for r in log)
    if payload is None:  # the native plane: no payload log
        return
    record = [r for r in lines(payload) if r["id"] == grpc_line["id"]][0]
    images, classes = record["inputs"]["images"], record["outputs"]["classes"]
    assert images["shape"] == [3, 28, 28] and images["max"] <= 255 and "values" not in images
    assert classes["shape"] == [3] and len(classes["values"]) == 3


@pytest.mark.slow
def test_unusable_token_file_stops_the_server(tmp_path):
    (tmp_path / "empty").write_text("")
    for path in (tmp_path / "empty", tmp_path / "missing"):
        done = subprocess.run([sys.executable, "-m", "serving.server", "--model_base_path",
                               str(tmp_path), "--auth_token_file", str(path)], cwd=ROOT,
                              env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "error: --auth_token_file" in done.stderr, done.stderr


@pytest.mark.slow
def test_open_inference_protocol_is_guarded_and_logged(guarded, digits):
    """The same interceptor and REST hook cover v2: tritonclient needs the token, and its calls
    are logged with the model, version and rows that ServerCore.run noted."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    server, _, access, _ = guarded
    x = digits[0][:2]
    with triton.InferenceServerClient(server.address) as client:
        given = triton.InferInput("images", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.infer("softmax_regression", [given])
        result = client.infer("softmax_regression", [given],
                              headers={"authorization": f"Bearer {TOKEN}"})
        assert result.as_numpy("classes").shape == (2,)
    body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 28, 28],
                                   "data": x.ravel().tolist()}]}).encode()
    url = f"http://{server.rest}/v2/models/softmax_regression/versions/1/infer"
    assert http("POST", url, body)[0] == 401
    status, _, answer = http("POST", url, body, token=TOKEN)
    assert status == 200 and answer["model_name"] == "softmax_regression"
    assert http("GET", f"http://{server.rest}/v2/health/ready")[0] == 200  # no token needed
    log = logged(server, access)
    grpc_line = [r for r in log if r["method"].endswith("/ModelInfer") and r["status"] == "OK"][-1]
    assert (grpc_line["protocol"], grpc_line["model"], grpc_line["version"],
            grpc_line["rows"]) == ("v2-grpc", "softmax_regression", 1, 2)
    assert any(r["protocol"] == "v2-grpc" and r["status"] == "UNAUTHENTICATED" for r in log)
    rest_line = [r for r in log if r["method"] == f"POST {url.split(server.rest)[1]}"
                 and r["status"] == 200][-1]
    assert (rest_line["protocol"], rest_line["version"], rest_line["rows"]) == ("v2-rest", 1, 2)


# ------------------------------------------------------------- without the native toolchain
def test_without_the_toolchain_make_test_and_run_say_so_in_one_line():
    """native-if-possible (run by make test and make run) prints one line and succeeds; make
    run then starts the server with --data_plane auto, which runs the Python plane."""
    done = subprocess.run(["make", "--no-print-directory", "native-if-possible",
                           "CXX=no-such-compiler"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[native] not built: needs g++") and \
        done.stdout.count("\n") == 1 and "the server runs the Python plane" in done.stdout
    dry = subprocess.run(["make", "-n", "run", "test", "CXX=no-such-compiler"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120).stdout
    assert dry.count('echo "[native] not built') == 2  # once for run, once for test
    assert re.search(r"-m serving.server [^\n]*\n[^\n]*--data_plane auto", dry), dry


@pytest.mark.slow
def test_without_predictd_the_server_runs_the_python_plane_and_says_why(exported, tmp_path):
    from serving.clients.tf_serving import ZooClient

    missing = tmp_path / "predictd"  # ZOO_PREDICTD: where the server looks for it
    args = ["--model_base_path", str(exported / "softmax_regression")]
    env = {**ENV, "ZOO_PREDICTD": str(missing)}
    refused = subprocess.run([sys.executable, "-m", "serving.server", *args, "--port", "0",
                              "--data_plane", "native"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    why = f"{missing} is not built (make native; needs g++"
    assert refused.returncode == 2 and f"error: --data_plane native: {why}" in refused.stderr
    server = ServerProcess(*args, "--data_plane", "auto", rest=False, env=env,
                           log=tmp_path / "server.log")
    try:
        assert f"[serving] data plane: python ({why}" in server.logs()
        with ZooClient(server.address) as client:
            plane = client.data_planes("default")[1]
            assert plane.startswith(f"python: --data_plane auto: {why}")
            assert client.predict("default", np.zeros((1, 28, 28), np.float32))[
                "classes"].shape == (1,)
    finally:
        assert server.stop() == 0
