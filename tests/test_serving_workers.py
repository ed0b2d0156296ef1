# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""`--workers N` against real server processes: connections spread over the workers, each
answering correctly; a reload sent to one worker reaches all of them before it is answered;
a scrape on any worker returns the sums over all of them; SIGTERM drains all; a killed worker is
restarted (up to --max_worker_restarts), a killed supervisor takes its workers with it; a second
server refuses the ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.repository import protos
from serving.runtime import tensors
from serving.transports import auth
from tests.serving_fixtures import (  # noqa: F401
    ENV,
    ROOT,
    ServerProcess,
    digits,
    exported,
    free_port,
    onnx_reference,
    predict_request,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow
CONNECTIONS = 16  # all on one worker by chance: 2 ** -15


def own_connection(address: str, i: int) -> grpc.Channel:
    """A channel with its own TCP connection (the kernel picks a worker per connection)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                   ("zoo.test.connection", i)])


def request_total(rest: str) -> dict[str, float]:
    """worker -> requests answered, from the Prometheus endpoint. Each scrape is a new
    connection, so the scrapes land on any worker: every one must give the same sums."""
    pages = set()
    for _ in range(CONNECTIONS):
        text = urllib.request.urlopen(f"http://{rest}/monitoring/prometheus/metrics",
                                      timeout=10).read().decode()
        per_worker = re.findall(r'^zoo_serving_worker_requests_total\{worker="(\d+)"\} (\S+)$',
                                text, re.M)
        counted = sum(float(v) for v in re.findall(
            r"^:tensorflow:serving:request_count\{.*\} (\S+)$", text, re.M))
        pages.add((tuple(sorted(per_worker)), counted))
    assert len(pages) == 1, pages
    (per_worker, counted), = pages
    totals = {w: float(v) for w, v in per_worker}
    assert counted == sum(totals.values()), (counted, totals)
    return totals


@pytest.fixture
def two_workers(exported, tmp_path):
    config = write_config(tmp_path / "models.config", {
        "softmax_regression": {"base": exported / "softmax_regression"},
        "deep_cnn": {"base": exported / "deep_cnn"}})
    # Both workers append to one access log, written only at stop (flush every hour).
    server = ServerProcess("--model_config_file", str(config), "--backend", "onnx",
                           "--workers", "2", "--access_log", str(tmp_path / "access.log"),
                           "--access_log_flush_seconds", "3600", log=tmp_path / "server.log")
    server.access_log = tmp_path / "access.log"
    yield server
    server.stop()


def test_connections_spread_over_workers_and_metrics_cover_all(two_workers, exported, digits):
    x = digits[0][:2]
    expected = onnx_reference(exported / "softmax_regression" / "1", x)["probabilities"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "softmax_regression"
    tensors.to_proto(x, request.inputs["images"])
    for i in range(CONNECTIONS):
        with own_connection(two_workers.address, i) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, timeout=30)
        got = tensors.to_ndarray(response.outputs["probabilities"])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    totals = request_total(two_workers.rest)
    assert set(totals) == {"0", "1"}, totals
    assert sum(totals.values()) == CONNECTIONS


def test_reload_sent_to_one_worker_reaches_every_worker(two_workers, exported):
    config = protos.ModelServerConfig()
    config.model_config_list.config.add(name="softmax_regression", model_platform="tensorflow",
                                        base_path=str(exported / "softmax_regression"))
    with grpc.insecure_channel(two_workers.address) as channel:
        # A wrong worker token is an outsider's call: it is forwarded all the same.
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=120,
            metadata=((auth.PEER_TOKEN_HEADER, "not-the-token"),))
    assert response.status.error_code == 0, response
    codes = set()
    for i in range(CONNECTIONS):  # every worker, not only the one that took the reload
        with own_connection(two_workers.address, i) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            for name in ("deep_cnn", "softmax_regression"):
                try:
                    stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
                        model_spec={"name": name}), timeout=10)
                    codes.add((name, "OK"))
                except grpc.RpcError as e:
                    codes.add((name, e.code().name))
    assert codes == {("deep_cnn", "NOT_FOUND"), ("softmax_regression", "OK")}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "softmax_regression"
    tensors.to_proto(np.zeros((1, 28, 28), np.float32), request.inputs["images"])
    for i in range(CONNECTIONS):  # after the reload, both workers still answer and count
        with own_connection(two_workers.address, i) as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    totals = request_total(two_workers.rest)
    assert set(totals) == {"0", "1"} and sum(totals.values()) == CONNECTIONS, totals


def test_sigterm_stops_every_worker_and_exits_0(two_workers):
    """... and each worker writes its pending access-log lines as it stops, whole, into the
    one file they share."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "softmax_regression"
    tensors.to_proto(np.zeros((1, 28, 28), np.float32), request.inputs["images"])
    for i in range(CONNECTIONS):
        with own_connection(two_workers.address, i) as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert two_workers.access_log.read_text() == ""  # nothing written before the stop
    assert two_workers.stop() == 0, two_workers.logs()
    logs = two_workers.logs()
    assert "[serving worker 0] stopped" in logs and "[serving worker 1] stopped" in logs, logs
    lines = [json.loads(line) for line in two_workers.access_log.read_text().splitlines()]
    predicts = [r for r in lines if r["method"].endswith("/Predict")]
    assert len(predicts) == CONNECTIONS and all(r["status"] == "OK" for r in predicts)
    assert len({r["id"].split("-")[0] for r in predicts}) == 2  # ids start with the pid


def worker_pids(server) -> re.Match:
    """The supervisor's "2 workers (pids A, B)" line: printed once it has seen the health service
    SERVING, which may be just after the test saw it too."""
    return wait_for(lambda: re.search(r"2 workers \(pids (\d+), (\d+)\)", server.logs()), 30,
                    what="the supervisor's line naming its workers")


def restarts(rest: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{rest}/monitoring/prometheus/metrics",
                                  timeout=10).read().decode()
    return {w: float(v) for w, v in re.findall(
        r'^zoo_serving_worker_restarts_total\{worker="(\d+)"\} (\S+)$', text, re.M)}


def reload_to_softmax_only(address: str, exported) -> None:
    config = protos.ModelServerConfig()
    config.model_config_list.config.add(name="softmax_regression", model_platform="tensorflow",
                                        base_path=str(exported / "softmax_regression"))
    with grpc.insecure_channel(address) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
    assert response.status.error_code == 0, response


def test_a_killed_worker_is_restarted_while_the_other_answers(two_workers, exported):
    """kill -9 of one worker under a loop of Predicts on 4 connections: the other worker keeps
    answering, the connections that were on the dead one fail (UNAVAILABLE) until they reconnect,
    and the supervisor starts it again with the config the last reload made (deep_cnn stays
    unloaded). benchmarks/worker_restart.py measures how long the failures last."""
    reload_to_softmax_only(two_workers.address, exported)
    victim = int(worker_pids(two_workers)[2])  # worker 1
    assert restarts(two_workers.rest) == {"0": 0, "1": 0}
    request = predict_request(x=np.zeros((1, 28, 28), np.float32))
    results: list[tuple[float, str, str]] = []  # (time, code, details) of every Predict
    runs: list[list[str]] = [[] for _ in range(4)]  # each connection's codes in order
    done = threading.Event()

    def load(i: int) -> None:
        with own_connection(two_workers.address, 100 + i) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not done.is_set():
                try:
                    stub.Predict(request, timeout=30)
                    results.append((time.monotonic(), "OK", ""))
                except grpc.RpcError as e:
                    results.append((time.monotonic(), e.code().name, e.details()))
                runs[i].append(results[-1][1])

    clients = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in clients:
        t.start()
    try:
        wait_for(lambda: len(results) >= 40, 60, what="the load to run")
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        back = wait_for(lambda: re.search(r"worker 1 \(pid (\d+)\) is back: serving",
                                          two_workers.logs()), 120,
                        what="the supervisor to say worker 1 is back")
        up = time.monotonic()
        seen = len(results)
        wait_for(lambda: len(results) >= seen + 40, 60, what="the load to go on")
    finally:
        done.set()
        for t in clients:
            t.join(60)
    assert f"worker 1 (pid {victim}) exited with -9; restarting it in 1 s" in two_workers.logs()
    failed = [r for r in results if r[1] != "OK"]
    assert {code for _, code, _ in failed} <= {"UNAVAILABLE"}, failed
    # Each connection fails over at most once: one run of failures (the calls the dead worker
    # had, and those a client fails fast while it reconnects), then answers to the end.
    for codes in runs:
        episodes = "".join("x" if c != "OK" else "." for c in codes).strip(".").split(".")
        assert len([e for e in episodes if e]) <= 1 and codes[-1] == "OK", codes
    assert all(t >= killed for t, _, _ in failed)
    assert any(killed < t < up and code == "OK" for t, code, _ in results)  # the other answered
    window = (failed[-1][0] - failed[0][0]) if failed else 0.0
    print(f"\n[restart] {len(failed)} of {len(results)} Predicts failed, within {window:.3f} s; "
          f"worker 1 serving again {up - killed:.1f} s after the kill (new pid {back[1]})")
    assert restarts(two_workers.rest) == {"0": 0, "1": 1}
    before = request_total(two_workers.rest)["1"]
    codes = set()
    for i in range(CONNECTIONS):  # both workers answer, with the reloaded config
        with own_connection(two_workers.address, 200 + i) as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            try:
                model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "deep_cnn"}),
                    timeout=10)
                codes.add("OK")
            except grpc.RpcError as e:
                codes.add(e.code().name)
    assert codes == {"NOT_FOUND"}
    assert request_total(two_workers.rest)["1"] > before  # the new process answered some


def test_a_worker_dying_too_often_stops_the_server_naming_it(exported, tmp_path):
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--backend", "onnx", "--workers", "2", "--max_worker_restarts", "1",
                           log=tmp_path / "server.log")
    try:
        first = int(worker_pids(server)[2])
        os.kill(first, signal.SIGKILL)
        second = int(wait_for(lambda: re.search(r"worker 1 \(pid (\d+)\) is back: serving",
                                                server.logs()), 120,
                              what="worker 1 to be back")[1])
        os.kill(second, signal.SIGKILL)
        assert server.proc.wait(60) == 1
        assert (f"worker 1 (pid {second}) exited with -9, after 1 restarts within 60 s "
                "(--max_worker_restarts 1); stopping the server") in server.logs()
    finally:
        server.stop()


def test_workers_must_be_positive():
    r = subprocess.run([sys.executable, "-m", "serving.server", "--model_base_path", ".",
                        "--workers", "0"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--workers must be >= 1" in r.stderr


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan's zombie may linger until
    whoever adopted it reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_supervisor(two_workers):
    pids = [int(p) for p in worker_pids(two_workers).groups()]
    assert all(alive(p) for p in pids)
    two_workers.proc.kill()  # SIGKILL: the supervisor cannot pass anything on
    two_workers.proc.wait(30)
    wait_for(lambda: not any(alive(p) for p in pids), 60, what="the workers to exit")


def test_a_second_server_refuses_ports_already_served(two_workers, exported):
    """SO_REUSEPORT would let a second server bind beside a live one and take half of its
    connections: it must refuse, naming the port, before loading anything."""
    model = ["--model_base_path", str(exported / "softmax_regression")]
    grpc_port, rest_port = two_workers.port, two_workers.rest_port
    for flags, port in (
            (["--port", str(grpc_port)], grpc_port),
            (["--port", str(grpc_port), "--workers", "2"], grpc_port),
            (["--port", str(free_port()), "--rest_api_port", str(rest_port)], rest_port)):
        r = subprocess.run([sys.executable, "-m", "serving.server", *model, *flags], cwd=ROOT,
                           env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (flags, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f":{port} " in last, (flags, r.stderr)
        assert "Traceback" not in r.stderr
    # the first server still answers on both ports
    with grpc.insecure_channel(two_workers.address) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "deep_cnn"}),
            timeout=10)
    with urllib.request.urlopen(f"http://{two_workers.rest}/v1/models/deep_cnn", timeout=10) as r:
        assert r.status == 200
