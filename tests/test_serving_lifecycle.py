# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""Server lifecycle against real server processes: hot reload under traffic, half-written and
hidden version directories, version policies and reload requests, SIGTERM with requests in
flight, TLS, and dynamic batching (each caller gets its own rows; a full queue is UNAVAILABLE)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import shutil
import signal
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.clients.errors import ClientError
from serving.clients.tf_serving import ZooClient
from serving.core.server_core import ServerCore
from serving.repository import protos
from serving.runtime import tensors
from tests.serving_fixtures import (  # noqa: F401
    ENV,
    ROOT,
    ServerProcess,
    copy_model,
    digits,
    exported,
    onnx_reference,
    wait_for,
    write_config,
    write_gated_model,
)

pytestmark = pytest.mark.slow


def versions(client, model):
    try:
        return {s["version"]: s["state"] for s in client.status(model)}
    except ClientError:
        return {}


def test_hot_reload_half_written_and_removed_versions_under_traffic(exported, digits, tmp_path):
    base = tmp_path / "models"
    model_dir = copy_model(exported, "softmax_regression", base, versions=(1,))
    (model_dir / ".tmp-123-abc").mkdir()  # an export in progress: never a version
    server = ServerProcess("--model_base_path", str(model_dir), "--model_name", "m",
                           "--file_system_poll_wait_seconds", "0.2", log=tmp_path / "server.log")
    x = digits[0][:2]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    tensors.to_proto(x, request.inputs["images"])
    seen, failures, stop = [], [], threading.Event()

    def traffic():
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop.is_set():
                try:
                    seen.append(stub.Predict(request, timeout=10).model_spec.version.value)
                except grpc.RpcError as e:
                    failures.append(f"{e.code().name}: {e.details()}")

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with ZooClient(server.address, timeout=10) as client:
            wait_for(lambda: len(seen) > 20, what="traffic on version 1")
            # A new version appears atomically (built in a hidden sibling, then renamed).
            shutil.copytree(model_dir / "1", model_dir / ".tmp-456-def")
            os.rename(model_dir / ".tmp-456-def", model_dir / "2")
            wait_for(lambda: versions(client, "m") == {2: "AVAILABLE", 1: "END"},
                     what="version 2 replacing version 1")
            n = len(seen)
            wait_for(lambda: len(seen) > n + 20, what="traffic on version 2")
            assert seen[-1] == 2
            # A half-written version (no rename): reported, skipped; version 2 keeps serving.
            (model_dir / "3").mkdir()
            pb = (model_dir / "2" / "saved_model.pb").read_bytes()
            (model_dir / "3" / "saved_model.pb").write_bytes(pb[: len(pb) // 2])
            wait_for(lambda: versions(client, "m").get(3) == "END", what="version 3 failing")
            status = {s["version"]: s for s in client.status("m")}
            assert status[3]["error"] and status[2]["state"] == "AVAILABLE"
            n = len(seen)
            wait_for(lambda: len(seen) > n + 20, what="traffic while version 3 is broken")
            assert set(seen[n:]) == {2}
            # Completing it makes it load.
            for item in (model_dir / "2").iterdir():
                target = model_dir / "3" / item.name
                if item.is_dir():
                    shutil.copytree(item, target)
                else:
                    shutil.copy2(item, target)
            wait_for(lambda: versions(client, "m").get(3) == "AVAILABLE",
                     what="completed version 3 loading")
            wait_for(lambda: seen[-1] == 3, what="traffic on version 3")
            # Removing the served version falls back to the newest remaining one.
            shutil.rmtree(model_dir / "3")
            wait_for(lambda: versions(client, "m").get(2) == "AVAILABLE"
                     and versions(client, "m").get(3) == "END", what="fallback to version 2")
            n = len(seen)
            wait_for(lambda: len(seen) > n + 20, what="traffic after removal")
            assert 0 not in versions(client, "m") and len(versions(client, "m")) == 3
    finally:
        stop.set()
        for t in threads:
            t.join()
        code = server.stop()
    assert failures == [], failures[:5]
    assert code == 0
    assert set(seen) == {1, 2, 3}
    assert "not loaded" in server.logs()


def test_versions_are_checked_against_their_certificates(exported, digits, tmp_path):
    """A tampered version stays unloaded with the reason in its status while the others keep
    serving (availability first, as TF Serving's policy does when a load fails); a version
    without a certificate is served with a warning, or refused by --require_certificates."""
    model_dir = copy_model(exported, "softmax_regression", tmp_path / "models", versions=(1, 2))
    (model_dir / "3").mkdir()
    for f in (model_dir / "1").iterdir():  # version 3: the same model, no metadata.json
        if f.name != "metadata.json":
            (shutil.copytree if f.is_dir() else shutil.copy)(f, model_dir / "3" / f.name)
    data_file = next((model_dir / "2" / "variables").glob("variables.data-*"))
    raw = bytearray(data_file.read_bytes())
    raw[-1] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    config = write_config(tmp_path / "models.config", {"m": {
        "base": model_dir, "policy": "all {}"}})
    x = digits[0][:3]
    server = ServerProcess("--model_config_file", str(config), log=tmp_path / "server.log")
    with ZooClient(server.address, timeout=30, max_attempts=1) as client:
        status = {s["version"]: s for s in client.status("m")}
        assert status[2]["state"] == "END"
        assert "does not match its certificate" in status[2]["error"]
        assert "variables/variables.data" in status[2]["error"]
        assert status[1]["state"] == "AVAILABLE" and status[1]["error"] == ""
        assert status[3]["state"] == "AVAILABLE"
        assert "served without a certificate" in status[3]["error"]
        assert client.predict("m", x, version=1)["classes"].shape == (3,)
        with pytest.raises(ClientError) as e:
            client.predict("m", x, version=2)
        assert e.value.code == "NOT_FOUND"
    assert server.stop() == 0

    strict = ServerProcess("--model_config_file", str(config), "--require_certificates",
                           log=tmp_path / "strict.log")
    with ZooClient(strict.address, timeout=30, max_attempts=1) as client:
        status = {s["version"]: s for s in client.status("m")}
        assert status[3]["state"] == "END" and "has no metadata.json" in status[3]["error"]
        assert status[1]["state"] == "AVAILABLE"
    assert strict.stop() == 0


def test_version_policies_labels_and_reload_config(exported, digits, tmp_path):
    base = tmp_path / "models"
    soft = copy_model(exported, "softmax_regression", base, versions=(1, 2, 3))
    cnn = copy_model(exported, "deep_cnn", base)
    config = write_config(tmp_path / "models.config", {
        "soft": {"base": soft, "policy": "specific { versions: 1 versions: 3 }",
                 "labels": {"stable": 1, "canary": 3}},
        "cnn": {"base": cnn}})
    server = ServerProcess("--model_config_file", str(config),
                           "--file_system_poll_wait_seconds", "0", log=tmp_path / "server.log")
    try:
        with ZooClient(server.address, timeout=60) as client:
            assert versions(client, "soft") == {1: "AVAILABLE", 3: "AVAILABLE"}
            x = digits[0][:1]
            assert client.predict("soft", x, label="canary")["classes"].shape == (1,)
            with pytest.raises(ClientError) as e:
                client.predict("soft", x, version=2)
            assert e.value.code == "NOT_FOUND"
            # A reload replaces the whole config: cnn goes, soft serves all versions.
            new = protos.parse_text(
                f'model_config_list {{ config {{ name: "soft" base_path: "{soft}" '
                'model_platform: "tensorflow" model_version_policy { all {} } } }',
                protos.ModelServerConfig)
            client.reload_config(new)
            assert versions(client, "soft") == {1: "AVAILABLE", 2: "AVAILABLE",
                                                3: "AVAILABLE"}
            with pytest.raises(ClientError) as e:
                client.predict("cnn", x)
            assert e.value.code == "NOT_FOUND"
            # An invalid config is refused and changes nothing.
            bad = protos.ModelServerConfig()
            for _ in range(2):
                bad.model_config_list.config.add(name="soft", base_path=str(soft))
            with pytest.raises(ClientError) as e:
                client.reload_config(bad)
            assert e.value.code == "INVALID_ARGUMENT"
            assert client.predict("soft", x, version=2)["classes"].shape == (1,)
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_sigterm_finishes_requests_in_flight_then_exits_0(tmp_path, event_loop):
    """Six requests are held inside the model (a gate the test opens) when SIGTERM arrives: on
    any CPU they are in flight, and each must still be answered before the server exits 0."""
    gate, arrived = tmp_path / "gate", tmp_path / "arrived"
    write_gated_model(tmp_path / "gated", gate, arrived)
    server = ServerProcess("--model_base_path", str(tmp_path / "gated"), "--model_name",
                           "gated", "--inference_threads", "6", "--event_loop", event_loop,
                           log=tmp_path / "server.log")
    assert f"event loop {event_loop}" in server.logs()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with ZooClient(server.address, timeout=120) as client:
        client.metadata("gated")
        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.predict, "gated", x) for _ in range(6)]
            wait_for(lambda: len(list(arrived.iterdir())) == 6, 60, what="6 requests in the model")
            assert not any(f.done() for f in futures)
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "draining" in server.logs() or server.proc.poll() is not None, 30,
                     what="the server to begin its drain")
            assert server.proc.poll() is None, "exited with requests in flight"
            gate.touch()
            results = [f.result() for f in futures]
        assert all(np.array_equal(r["y"], x) for r in results)
        assert server.proc.wait(60) == 0, server.logs()  # the one SIGTERM above
        with pytest.raises(ClientError) as e:
            ZooClient(server.address, timeout=2, max_attempts=1).predict("gated", x)
        assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    assert "[serving] stopped" in server.logs()


def test_after_sigterm_new_rpcs_get_unavailable_while_those_in_flight_finish(tmp_path):
    """A lame duck, as gRPC C++ servers: a Predict held in the model when SIGTERM arrives is
    answered, and new calls on the open channel are refused UNAVAILABLE by the server (which
    retry policies retry), never CANCELLED (what grpc.aio's core answers a call that arrives
    once its stop has begun)."""
    gate, arrived = tmp_path / "gate", tmp_path / "arrived"
    write_gated_model(tmp_path / "gated", gate, arrived)
    server = ServerProcess("--model_base_path", str(tmp_path / "gated"), "--model_name",
                           "gated", log=tmp_path / "server.log")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gated"
    tensors.to_proto(x, request.inputs["x"])
    status = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "gated"})
    codes = []
    with grpc.insecure_channel(server.address) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        models.GetModelStatus(status, timeout=30)
        held = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict.future(
            request, timeout=120)
        wait_for(lambda: any(arrived.iterdir()), 60, what="the Predict to be in the model")
        server.proc.send_signal(signal.SIGTERM)
        after_drain_began = 0
        while after_drain_began < 20:
            try:
                models.GetModelStatus(status, timeout=10)
                codes.append(("OK", ""))
            except grpc.RpcError as e:
                codes.append((e.code().name, e.details()))
            if "draining" in server.logs():
                after_drain_began += 1
        assert server.proc.poll() is None and not held.done()
        gate.touch()
        assert np.array_equal(tensors.to_ndarray(held.result().outputs["y"]), x)
    assert server.proc.wait(60) == 0, server.logs()
    assert {c for c, _ in codes} <= {"OK", "UNAVAILABLE"}, codes
    refused = [d for c, d in codes if c == "UNAVAILABLE"]
    assert refused and all("shutting down" in d for d in refused), codes


def test_grpc_channel_arguments_override_the_servers_defaults(exported, digits, tmp_path):
    """gRPC keeps the first of repeated keys, so the user's arguments must come first."""
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--grpc_channel_arguments", "grpc.max_receive_message_length=20000",
                           log=tmp_path / "server.log")
    try:
        with ZooClient(server.address, timeout=30, max_attempts=1) as client:
            assert client.predict("default", digits[0][:4])["classes"].shape == (4,)  # 12.5 kB
            with pytest.raises(ClientError) as e:
                client.predict("default", digits[0][:8])  # 25 kB
        assert e.value.code == "RESOURCE_EXHAUSTED"
    finally:
        assert server.stop() == 0


def test_tls_with_a_generated_certificate(exported, digits, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    ssl = protos.SSLConfig(server_key=key.read_text(), server_cert=cert.read_text())
    ssl_file = tmp_path / "ssl.config"
    ssl_file.write_text(text_format.MessageToString(ssl))
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--model_name", "m", "--ssl_config_file", str(ssl_file),
                           log=tmp_path / "server.log", ca_file=cert)
    try:
        with ZooClient(server.address, ca_file=str(cert), timeout=10) as client:
            assert client.predict("m", digits[0][:3])["classes"].shape == (3,)
        with ZooClient(server.address, timeout=3, max_attempts=1) as plain:
            with pytest.raises(ClientError) as e:
                plain.predict("m", digits[0][:1])
            assert e.value.code == "UNAVAILABLE"
    finally:
        assert server.stop() == 0


def test_batching_returns_each_caller_its_own_rows_and_strips_padding(exported, digits,
                                                                      tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 20000 }\n"
                      "max_enqueued_batches { value: 100 }\nnum_batch_threads { value: 1 }\n"
                      "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--model_name", "m", "--enable_batching", "--batching_parameters_file",
                           str(params), log=tmp_path / "server.log")
    x = digits[0]
    reference = onnx_reference(exported / "softmax_regression" / "1", x)["probabilities"]
    slices = [(i, i + 1 + i % 3) for i in range(0, 60, 3)]  # 20 callers, 1-3 rows each
    try:
        with ZooClient(server.address, rest_address=server.rest, timeout=30) as client:
            client.predict("m", x[:1])
            with cf.ThreadPoolExecutor(20) as pool:
                results = list(pool.map(lambda s: client.predict("m", x[s[0]:s[1]]), slices))
            for (a, b), r in zip(slices, results):
                assert r["probabilities"].shape == (b - a, 10)
                np.testing.assert_allclose(r["probabilities"], reference[a:b], atol=1e-5)
            import urllib.request

            with urllib.request.urlopen(f"http://{server.rest}/monitoring/prometheus/metrics",
                                        timeout=10) as r:
                text = r.read().decode()
        total = next(float(s.split()[-1]) for s in text.splitlines()
                     if s.startswith("zoo_serving_batch_size_sum"))
        count = next(float(s.split()[-1]) for s in text.splitlines()
                     if s.startswith("zoo_serving_batch_size_count"))
        assert total % 4 == 0  # every batch padded to an allowed size
        assert count < len(slices) + 1  # requests were combined
    finally:
        assert server.stop() == 0


def test_full_batching_queue_answers_unavailable_at_once(tmp_path):
    """One request held inside the model (a gate the test opens), at most one more queued: the
    other six are refused UNAVAILABLE while the gate is still closed, on any CPU."""
    gate, arrived = tmp_path / "gate", tmp_path / "arrived"
    write_gated_model(tmp_path / "gated", gate, arrived)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 1 }\nmax_enqueued_batches { value: 1 }\n"
                      "num_batch_threads { value: 1 }\n")
    server = ServerProcess("--model_base_path", str(tmp_path / "gated"), "--model_name",
                           "gated", "--enable_batching", "--batching_parameters_file", str(params),
                           log=tmp_path / "server.log")
    x = np.ones((1, 4), np.float32)
    with ZooClient(server.address, timeout=60, max_attempts=1) as client:
        client.metadata("gated")

        def call(_):
            try:
                return "OK" if np.array_equal(client.predict("gated", x)["y"], x) else "WRONG"
            except ClientError as e:
                return e.code

        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(call, i) for i in range(8)]
            wait_for(lambda: sum(f.done() for f in futures) >= 6, 60,
                     what="six requests refused while one waits in the model")
            early = [f.result() for f in futures if f.done()]
            gate.touch()
            codes = [f.result() for f in futures]
    assert early.count("UNAVAILABLE") == len(early) >= 6, early
    assert codes.count("OK") >= 1 and set(codes) == {"OK", "UNAVAILABLE"}, codes
    assert server.stop() == 0


def test_runtime_thread_flags_reach_both_runtimes_and_are_validated(exported, digits, tmp_path):
    from serving.runtime import backends

    version = exported / "softmax_regression" / "1"
    saved = backends.load("savedmodel", version, intra_op_threads=1, inter_op_threads=3)
    onnx = backends.load("onnx", version, intra_op_threads=1)
    try:
        assert saved._session._config.intra_op_parallelism_threads == 1
        assert saved._session._config.inter_op_parallelism_threads == 3
        assert onnx.session.get_session_options().intra_op_num_threads == 1
        x = {"images": digits[0][:5]}
        np.testing.assert_allclose(saved.run("serving_default", x)["probabilities"],
                                   onnx.run("serving_default", x)["probabilities"], atol=1e-5)
    finally:
        saved.close()

    async def loaded_by_manager():  # the core hands the counts to every version it loads
        core = ServerCore("onnx", None, 0, intra_op_threads=1)
        config = protos.ModelServerConfig()
        config.model_config_list.config.add(name="soft", base_path=str(version.parent),
                                            model_platform="tensorflow")
        await core.set_config(config)
        try:
            return core.lifecycle.models["soft"].available[1].backend
        finally:
            await core.close()
    assert asyncio.run(loaded_by_manager()).session.get_session_options().intra_op_num_threads == 1
    server = ServerProcess("--model_base_path", str(exported / "softmax_regression"),
                           "--tensorflow_intra_op_parallelism", "1", log=tmp_path / "server.log")
    try:
        with ZooClient(server.address, timeout=30) as client:
            assert client.predict("default", digits[0][:3])["classes"].shape == (3,)
    finally:
        assert server.stop() == 0
    r = subprocess.run([sys.executable, "-m", "serving.server", "--model_base_path", ".",
                        "--tensorflow_intra_op_parallelism", "-1"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--tensorflow_intra_op_parallelism must be >= 0" in r.stderr
