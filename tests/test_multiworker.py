"""Multi-worker training (docs/ARCHITECTURE.md, "Multi-worker training"): real worker processes
on 127.0.0.1 joined by tf.distribute.MultiWorkerMirroredStrategy, against a real single-process
run. The kill and unreachable-peer tests start the workers themselves with TF_CONFIG, as a
cluster launcher (Kubeflow's TFJob) does; the others go through `--workers N`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, subprocess_env
from tests.serving_fixtures import free_port
from training import launcher, loopback
from training.multiworker import ClusterError, Worker

# The same small run everywhere: 2,048 examples, a global batch of 64, 40 steps in 2 epochs.
SMALL = ["--train-limit", "2048", "--test-limit", "256", "--batch-size", "64", "--seed", "3",
         "--precision", "float32"]
EXIT_BOUND = 240  # a bound on a hang, not a speed target: the peer timeout below is 10 s
PEER_TIMEOUT = "10"
FINGERPRINT = re.compile(r"\[weights\] (\w+ \d+) \([\d.:]+\): sha256 (\w+) after (\d+) steps")


def train_cli(*args: str, env: dict | None = None, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                          env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def worker_env(addresses: list[str], index: int) -> dict:
    return subprocess_env(TF_CONFIG=launcher.tf_config(addresses, index), PYTHONUNBUFFERED="1")


def listening_ports(pid: int | str) -> set[int]:
    """The TCP ports listening in the network namespace of process `pid` (its /proc view)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def watch_sockets(launcher_log: Path, proc: subprocess.Popen) -> dict[int, tuple]:
    """While the launcher runs: for each worker, (its port, what its network namespace
    listens on, its interfaces) once it listens; the host's listening ports sampled then."""
    seen: dict[int, tuple] = {}
    deadline = time.monotonic() + 600
    while len(seen) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = re.findall(r"\[launcher\] worker (\d): pid (\d+), [\d.]+:(\d+)",
                             launcher_log.read_text())
        for i, pid, port in workers:
            try:
                inside = listening_ports(pid)
                if int(port) in inside:
                    seen[int(i)] = (int(port), inside, loopback.interfaces(pid),
                                    listening_ports("self"))
            except FileNotFoundError:  # not started yet, or gone
                pass
        time.sleep(0.05)
    return seen


def weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.models.load_model(run_dir / "model.keras").weights]


# ------------------------------------------------------------------------------ fast checks


def test_tf_config_gives_the_worker_its_place():
    both = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]},
            "task": {"type": "worker", "index": 1}}
    w = Worker.from_env({"TF_CONFIG": json.dumps(both)})
    assert (w.address, w.size, w.rank, w.is_chief) == ("c:3", 3, 2, False)
    assert w.leader == ("chief", 0, "a:1") and "chief 0 at a:1" in w.peers()
    only_workers = launcher.tf_config(["a:1", "b:2"], 0)
    w0 = Worker.from_env({"TF_CONFIG": only_workers})
    assert (w0.is_chief, w0.rank, w0.peers()) == (True, 0, "worker 1 at b:2")
    assert Worker.from_env({}) is None and Worker.from_env({"TF_CONFIG": " "}) is None


@pytest.mark.parametrize("text, expected", [
    ("{", "not a cluster description"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "IndexError"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "['ps'] tasks"),
    ('{"cluster": {"worker": ["a:1"]}}', "KeyError"),
])
def test_a_bad_tf_config_is_named(text, expected):
    with pytest.raises(ClusterError, match=re.escape(expected)):
        Worker.from_env({"TF_CONFIG": text})


def test_the_workers_get_the_launchers_arguments_without_workers():
    argv = ["mlp_128", "--workers", "2", "--epochs", "1", "--workers=3", "--seed", "4"]
    assert launcher.worker_argv(argv, Path("r")) == ["mlp_128", "--epochs", "1", "--seed", "4",
                                                     "--run-dir", "r"]
    assert launcher.worker_argv(["--resume", "r", "--workers", "2"], None) == ["--resume", "r"]
    ports = launcher.free_ports(3)
    assert len(set(ports)) == 3


def test_shards_of_each_batch_make_the_single_process_batch(mnist):
    from training import data

    def batches(**kw):
        it = iter(data.train_pipeline(mnist, 64, seed=5, limit=640, **kw))
        return [next(it) for _ in range(12)]  # more than one pass (10 batches)

    whole = batches()
    parts = [batches(shard=(i, 2)) for i in range(2)]
    for k, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[k][0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[k][1] for p in parts]), y)


def test_a_batch_that_does_not_split_over_the_workers_is_refused_before_any_start(tmp_path):
    done = train_cli("softmax_regression", "--workers", "3", "--batch-size", "64",
                     "--run-dir", str(tmp_path / "run"), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "batch size 64 does not split evenly over 3 workers" in done.stderr
    assert "[launcher]" not in done.stderr and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ real clusters


@pytest.mark.slow
def test_two_workers_train_the_weights_of_one_process(tmp_path):
    """The same global batch, seed and steps: identical weights on both workers, and those of
    a single-process model.fit run within 1e-5; the chief's run directory is a whole run."""
    one, two = tmp_path / "one", tmp_path / "two"
    single = train_cli("softmax_regression", "--steps", "40", *SMALL, "--run-dir", str(one),
                       "--no-export")
    assert single.returncode == 0, single.stderr
    log = tmp_path / "launcher.log"
    with open(log, "w") as err, open(tmp_path / "launcher.out", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.train", "softmax_regression", "--workers", "2",
             "--steps", "40", *SMALL, "--run-dir", str(two), "--export-dir",
             str(tmp_path / "exports"), "--peer-timeout", "120"],
            cwd=ROOT, env=subprocess_env(PYTHONUNBUFFERED="1"), stdout=out, stderr=err)
        try:
            sockets = watch_sockets(log, proc)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    multi = subprocess.CompletedProcess(proc.args, proc.returncode, (tmp_path / "launcher.out")
                                        .read_text(), log.read_text())
    assert multi.returncode == 0, multi.stderr + (two / "logs" / "worker-1.log").read_text()
    # TensorFlow listens on every interface of its network namespace; the workers' namespace
    # has loopback only, and nothing of theirs listens where the launcher runs.
    assert sorted(sockets) == [0, 1], (sockets, multi.stderr)
    for port, inside, interfaces, outside in sockets.values():
        assert interfaces == ["lo"] and port in inside and port not in outside, sockets

    prints = FINGERPRINT.findall(multi.stderr + (two / "logs" / "worker-1.log").read_text())
    assert sorted(p[0] for p in prints) == ["worker 0", "worker 1"], prints
    assert prints[0][1:] == prints[1][1:] and prints[0][2] == "40", prints  # bitwise equal
    for a, b in zip(weights(one), weights(two), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)

    config = json.loads((two / "config.json").read_text())
    assert config["workers"] == 2 and config["batch_size"] == 64
    state = json.loads((two / "state.json").read_text())
    assert state["epoch"] == 2 and state["checkpoint"] == "checkpoints/ckpt-2"
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r, ref in zip(records, reference):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert abs(r[key] - ref[key]) < 1e-4, (key, r, ref)
    for name in ("loss.png", "accuracy.png", "summary.json", "model.keras"):
        assert (two / name).is_file(), name
    summary = json.loads((two / "summary.json").read_text())
    meta = json.loads((Path(summary["export"]) / "metadata.json").read_text())
    assert meta["training"]["config"]["workers"] == 2
    assert meta["test_metrics"]["accuracy"] == pytest.approx(reference[-1]["test_accuracy"],
                                                             abs=1e-4)
    assert "[launcher] worker 1" in multi.stderr and "model        softmax_regression" in (
        multi.stdout)


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_and_resume_finishes_it_with_the_uninterrupted_weights(
        tmp_path):
    """kill -9 of worker 1 after the first committed epoch: worker 0 fails on its own within
    the peer timeout, naming the loss (no hang); `--resume --workers 2` finishes the run with
    the weights (the same sha256) of an uninterrupted 2-worker run."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    # Epochs of 20 steps over passes of 32: the resume lands inside a pass.
    args = ["softmax_regression", "--epochs", "3", "--steps-per-epoch", "20", *SMALL,
            "--no-export", "--peer-timeout", PEER_TIMEOUT]
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = []
    try:
        for i in range(2):
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "training.train", *args, "--run-dir", str(run)],
                    cwd=ROOT, env=worker_env(addresses, i), stdout=log,
                    stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 600
        while not (run / "state.json").exists():
            assert all(p.poll() is None for p in procs), [p.poll() for p in procs]
            assert time.monotonic() < deadline, "no epoch committed"
            time.sleep(0.05)
        for p in procs:  # frozen, so that the kill lands before the run's end on any CPU
            p.send_signal(signal.SIGSTOP)
        procs[1].send_signal(signal.SIGKILL)
        procs[0].send_signal(signal.SIGCONT)
        procs[0].wait(timeout=EXIT_BOUND)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = logs[0].read_text()
    assert procs[0].returncode == 1, out
    assert "error: worker 0 (" in out and "lost a worker" in out and "--resume" in out, out
    assert "Traceback" not in out, out
    state = json.loads((run / "state.json").read_text())
    assert 1 <= state["epoch"] < 3, state  # the kill came before the end: a real test

    resumed = train_cli("--resume", str(run), "--workers", "2", "--no-export",
                        "--peer-timeout", "120")
    assert resumed.returncode == 0, resumed.stderr
    assert f"[resume] {run} from epoch {state['epoch']}/3" in resumed.stderr
    final = json.loads((run / "state.json").read_text())
    assert final["epoch"] == 3 and [r["epoch"] for r in final["history"]] == [1, 2, 3]
    assert final["resumed"] == [state["epoch"]]
    assert (run / "model.keras").is_file() and (run / "loss.png").is_file()

    uninterrupted = train_cli(*args, "--workers", "2", "--run-dir", str(whole))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    hashes = [dict((w, (h, n)) for w, h, n in FINGERPRINT.findall(done.stderr))
              for done in (resumed, uninterrupted)]
    assert hashes[0]["worker 0"] == hashes[1]["worker 0"] == (hashes[1]["worker 0"][0], "60")
    assert json.loads((whole / "summary.json").read_text())["resumed_at_epochs"] == []


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1], ids=["leader", "follower"])
def test_a_worker_that_cannot_reach_its_peers_fails_naming_them(tmp_path, index):
    """...and meanwhile listens on the port TF_CONFIG gives it, where it runs (a TFJob's pod
    network decides who reaches it)."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    port = int(addresses[index].rsplit(":", 1)[1])
    log = tmp_path / "worker.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.train", "softmax_regression", "--steps", "4",
             *SMALL, "--run-dir", str(tmp_path / "run"), "--no-export", "--peer-timeout", "3"],
            cwd=ROOT, env=worker_env(addresses, index), stdout=subprocess.DEVNULL, stderr=err)
        try:
            listened = False
            while proc.poll() is None and not listened:
                listened = port in listening_ports("self")
                time.sleep(0.05)
            proc.wait(timeout=EXIT_BOUND)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", log.read_text())
    assert done.returncode == 1, done.stderr
    assert listened, f"worker {index} never listened on {addresses[index]}"
    missing = addresses[1 - index]
    assert f"could not join its peers (worker {1 - index} at {missing}) within 3 s" in (
        done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_a_tf_config_port_in_use_is_named(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        addresses = [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"]
        done = train_cli("softmax_regression", "--steps", "4", *SMALL, "--run-dir",
                         str(tmp_path / "run"), "--no-export", "--peer-timeout", "3",
                         env=worker_env(addresses, 0), timeout=EXIT_BOUND)
    assert done.returncode == 1, done.stderr
    assert f"port {port} cannot be listened on (Address already in use)" in done.stderr, (
        done.stderr)
    assert "Traceback" not in done.stderr



def _signal_the_launcher_after_an_epoch(tmp_path: Path, signum: int):
    """A 2-worker run whose launcher gets `signum` once an epoch is committed: (run dir, the
    launcher's process after it exited, its stderr)."""
    run, log = tmp_path / "run", tmp_path / "launcher.log"
    # Epochs long enough (2,000 steps) that the signal lands between the first and the last.
    args = ["softmax_regression", "--workers", "2", "--epochs", "3", "--steps-per-epoch",
            "2000", *SMALL, "--run-dir", str(run), "--no-export", "--peer-timeout", PEER_TIMEOUT]
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                                env=subprocess_env(PYTHONUNBUFFERED="1"),
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 600
            while not (run / "state.json").exists():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no epoch committed"
                time.sleep(0.05)
            proc.send_signal(signum)
            proc.wait(timeout=EXIT_BOUND)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return run, proc, log.read_text()

@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_the_workers_with_one_line_and_the_resume_command(
        tmp_path):
    """...exit 143; the workers are gone and worker 1's output is in RUN/logs."""
    run, proc, stderr = _signal_the_launcher_after_an_epoch(tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [stderr.strip().splitlines()[-1]], stderr
    assert errors[0] == ("error: interrupted by SIGTERM; continue from the last committed epoch "
                         f"with: python -m training.train --resume {run} --workers 2"), errors
    pids = [int(p) for p in re.findall(r"\[launcher\] worker \d: pid (\d+)", stderr)]
    assert len(pids) == 2
    for pid in pids:  # gone (or a zombie nobody waits for: not the case, the launcher waited)
        assert not Path(f"/proc/{pid}").exists(), pid
    assert (run / "logs" / "worker-1.log").read_text().strip(), "worker 1 wrote nothing"
    assert 1 <= json.loads((run / "state.json").read_text())["epoch"] < 3


def _gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie (a killed launcher's workers are reaped by whoever
    adopts them, when it does)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_kill_9_of_the_launcher_leaves_no_worker_and_worker_1s_log_in_the_run(tmp_path):
    """The workers die with the launcher (PR_SET_PDEATHSIG), and worker 1's output was written
    into RUN/logs as it came, so nothing of it is left elsewhere (/tmp/zoo-worker-logs-*)."""
    elsewhere = set(Path("/tmp").glob("zoo-worker-logs-*"))
    run, _, stderr = _signal_the_launcher_after_an_epoch(tmp_path, signal.SIGKILL)
    pids = [int(p) for p in re.findall(r"\[launcher\] worker \d: pid (\d+)", stderr)]
    assert len(pids) == 2
    deadline = time.monotonic() + EXIT_BOUND
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived the launcher"
        time.sleep(0.1)
    assert (run / "logs" / "worker-1.log").read_text().strip(), "worker 1 wrote nothing"
    assert set(Path("/tmp").glob("zoo-worker-logs-*")) == elsewhere
