"""The train CLI and run directories: listing, errors, seeds, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import zoo
from tests.conftest import ROOT, subprocess_env
from tests.helpers import tiny_config, tiny_run
from training import checkpoints, data, precision


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_help_is_grouped():
    done = run_cli("--help")
    assert done.returncode == 0
    for group in ("recipe overrides", "where things go", "--resume", "--precision"):
        assert group in done.stdout


def test_list_shows_every_model_with_computed_parameters():
    done = run_cli("--list")
    assert done.returncode == 0, done.stderr
    for name in zoo.list_models():
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith(name + " "))
        assert f"{zoo.parameter_count(name):,}" in line
        assert zoo.get_spec(name).reference.provenance in line


def test_unknown_model_exits_nonzero_with_close_matches():
    done = run_cli("softmax_regresion")
    assert done.returncode == 2
    assert "Did you mean: softmax_regression" in done.stderr
    assert "Traceback" not in done.stderr


def test_model_on_a_dataset_it_does_not_take_is_refused():
    done = run_cli("sinc_shallow_300_tanh", "--dataset", "mnist", "--no-export")
    assert done.returncode == 2 and "trains on sinc" in done.stderr


def test_steps_is_exact_even_when_it_does_not_divide_into_epochs(tmp_path, mnist):
    """65 steps at 64 a pass: 33 + 32 (it used to train 66). 64 in one epoch: Keras runs whole
    chunks of steps_per_execution, so a chunk (50) that does not divide 64 used to train 100."""
    import keras

    for steps, limit in ((65, 64 * 32), (64, 64 * 32)):
        run = tmp_path / f"run{steps}"
        summary = tiny_run("softmax_regression", run, mnist, steps=steps, train_limit=limit)
        model = keras.models.load_model(run / "model.keras")
        assert int(model.optimizer.iterations) == steps
        assert summary["config"]["steps"] == steps


def test_a_batch_larger_than_the_training_data_is_refused_before_training(tmp_path):
    done = run_cli("softmax_regression", "--train-limit", "50", "--batch-size", "100",
                   "--steps", "5", "--run-dir", str(tmp_path / "run"), "--no-export")
    assert done.returncode == 2, done.stderr
    assert "batch size 100 is larger than the 50 training examples" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_commands_are_quiet_unless_verbose():
    """TensorFlow's start-up lines (absl, oneDNN, cuInit) only with -v."""
    env = {k: v for k, v in subprocess_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-m", "training.train", "--list"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "training.train", "--list", "-v"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0
    assert any(m in loud.stderr for m in ("absl", "oneDNN", "cuda", "cuInit")), loud.stderr


def test_run_directory_holds_everything(tmp_path, mnist):
    summary = tiny_run("mlp_128", tmp_path / "run", mnist, steps=12, steps_per_epoch=None)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "state.json", "summary.json", "model.keras",
                 "loss.png", "accuracy.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch-0001.keras"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "mlp_128" and config["precision"] == precision.choose().policy
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == summary["epochs_completed"] == 1
    record = json.loads(lines[0])
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(record)
    assert summary["test"]["accuracy"] == pytest.approx(record["test_accuracy"])


def _history_without_times(run_dir):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")}
            for r in checkpoints.read_state(run_dir)["history"]]


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path, mnist):
    runs = {}
    for label, seed in (("a", 3), ("b", 3), ("c", 4)):
        tiny_run("deep_cnn", tmp_path / label, mnist, steps=6, batch_size=16, seed=seed)
        runs[label] = _history_without_times(tmp_path / label)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("model", ["mlp_128_64", "deep_cnn"])
def test_trains_on_fashion_mnist(tmp_path, model):
    fashion = data.load_dataset("fashion_mnist")
    summary = tiny_run(model, tmp_path / "run", fashion, dataset_name="fashion_mnist",
                       steps=4)
    assert summary["config"]["dataset"] == "fashion_mnist"
    assert summary["data"]["sha256"] == fashion.sha256
    # Not the MNIST model: its own export name, and no MNIST reference to meet.
    from training.config import TrainConfig
    from training.export import export_name

    assert export_name(TrainConfig.from_json(summary["config"])) == f"{model}_fashion_mnist"
    assert summary["reference"]["met"] is None


def test_a_used_run_directory_is_not_overwritten(tmp_path):
    """...and --resume is advised only where there is a state.json to resume from."""
    (tmp_path / "config.json").write_text("{}")
    done = run_cli("softmax_regression", "--run-dir", str(tmp_path), "--no-export")
    assert done.returncode == 2 and "not empty; choose another --run-dir" in done.stderr
    assert "--resume" not in done.stderr, done.stderr
    (tmp_path / "state.json").write_text("{}")
    done = run_cli("softmax_regression", "--run-dir", str(tmp_path), "--no-export")
    assert done.returncode == 2 and f"--resume {tmp_path}" in done.stderr, done.stderr
    assert (tmp_path / "config.json").read_text() == "{}"


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "launcher"])
@pytest.mark.parametrize("args, message", [
    ([], "name a model to train"),
    (["softmax_regression", "--run-dir", "{used}"], "is not empty"),
    (["softmax_regression", "--export-dir", "{file}"], "--export-dir {file} is a file"),
    (["softmax_regression", "--dataset", "sinc"], "trains on mnist, fashion_mnist, not sinc"),
    (["--resume", "{tmp}"], "is not a run directory"),
    (["--resume", "{run}"], "has no state.json"),
    (["softmax_regression", "--peer-timeout", "0"], "--peer-timeout: must be greater than 0"),
    (["softmax_regression", "--peer-timeout", "nan"], "--peer-timeout: must be a finite"),
    (["softmax_regression", "--worker", "2"], "unrecognized arguments: --worker"),
])
def test_usage_errors_are_one_line_and_exit_2_with_or_without_workers(tmp_path, workers, args,
                                                                      message):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    (tmp_path / "run").mkdir()  # a run stopped before its first epoch: config.json only
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {**tiny_config("softmax_regression").to_json(), "workers": 2 if workers else 1}))
    fill = {"file": tmp_path / "a_file", "used": tmp_path / "used", "tmp": tmp_path,
            "run": tmp_path / "run"}
    done = run_cli(*[a.format(**fill) for a in args], *workers, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message.format(**fill) in done.stderr, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "[launcher]" not in done.stderr and "[data]" not in done.stderr
    # Nothing half-made: no folder was created or changed.
    assert sorted(str(q.relative_to(tmp_path)) for q in tmp_path.rglob("*")) == [
        "a_file", "run", "run/config.json", "used", "used/notes.txt"]


def test_more_local_workers_than_the_machine_can_hold_are_refused():
    cpus = len(os.sched_getaffinity(0))
    done = run_cli("softmax_regression", "--workers", str(2 * cpus + 1), timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"this machine has {cpus} CPU(s), so at most {2 * cpus} local workers" in done.stderr
    assert "[launcher]" not in done.stderr


def test_a_negative_task_index_in_tf_config_is_refused():
    from training.multiworker import ClusterError, Worker

    text = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": -1}}'
    with pytest.raises(ClusterError, match="task index -1 is negative"):
        Worker.from_env({"TF_CONFIG": text})


@pytest.mark.parametrize(("flags", "message"), [
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--steps", "10", "--epochs", "2"], "not both"),
    (["--dataset", "sinc"], "trains on mnist/fashion_mnist".replace("/", ", ")),
])
def test_bad_overrides_are_refused_with_a_reason(flags, message):
    done = run_cli("softmax_regression", "--no-export", *flags)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_resume_refuses_recipe_flags(tmp_path):
    done = run_cli("--resume", str(tmp_path), "--epochs", "9")
    assert done.returncode == 2 and "drop --epochs" in done.stderr


def test_steps_is_the_exact_total():
    from tests.helpers import tiny_config

    config = tiny_config("softmax_regression", steps=100, batch_size=32)  # 64 steps a pass
    assert (config.epochs, config.steps_per_epoch) == (2, 50)


def test_resume_of_something_that_is_not_a_run(tmp_path):
    done = run_cli("--resume", str(tmp_path))
    assert done.returncode == 2 and "not a run directory" in done.stderr


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    run = tmp_path / "run"
    args = ["mlp_128", "--epochs", "6", "--steps-per-epoch", "40", "--batch-size", "32",
            "--train-limit", "4096", "--test-limit", "512", "--seed", "5", "--run-dir", str(run),
            "--no-export"]
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            state = checkpoints.read_state(run) if (run / "state.json").exists() else None
            if state and state["epoch"] >= 2:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no second epoch within the deadline")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = checkpoints.read_state(run)
    assert 2 <= before["epoch"] < 6

    wrong = run_cli("deep_cnn", "--resume", str(run), "--no-export")
    assert wrong.returncode == 2 and "is a run of mlp_128, not deep_cnn" in wrong.stderr

    done = run_cli("mlp_128", "--resume", str(run), "--no-export")
    assert done.returncode == 0, done.stderr
    assert f"from epoch {before['epoch']}/6" in done.stderr
    after = checkpoints.read_state(run)
    assert after["epoch"] == 6
    assert [r["epoch"] for r in after["history"]] == [1, 2, 3, 4, 5, 6]
    # What was done before the kill is kept as it was, not redone.
    assert after["history"][: before["epoch"]] == before["history"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2, 3, 4, 5, 6]
    (checkpoint,) = (run / "checkpoints").iterdir()
    # Optimizer state survived the kill: its step counter counts every step of all six epochs.
    import keras

    assert int(keras.models.load_model(checkpoint).optimizer.iterations.numpy()) == 6 * 40
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 6 and np.isfinite(summary["test"]["loss"])


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                            env=subprocess_env(PYTHONUNBUFFERED="1"),
                            stdout=subprocess.DEVNULL, stderr=log)


def _wait_until(ready, proc: subprocess.Popen, what: str, bound: float = 300) -> None:
    """Poll `ready()` while `proc` runs; a bound on a hang, not a speed target."""
    deadline = time.monotonic() + bound
    while not ready():
        assert proc.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {bound} s"
        time.sleep(0.05)


def _stopped(proc: subprocess.Popen, log) -> str:
    """Wait for the interrupted process (killed if it hangs) and return its stderr."""
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


def _last_error(stderr: str) -> str:
    """The one `error:` line, which is also the last line; no traceback anywhere."""
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0], stderr
    return errors[0]


@pytest.mark.slow
def test_a_live_run_has_one_writer_and_sigterm_leaves_it_resumable(tmp_path):
    """A second writer (--resume of the live run) is refused in one line naming the holder's
    pid; SIGTERM then stops the run with one line, exit 143 and the resume command, which
    finishes it after sweeping what an interrupted checkpoint write left."""
    run, log = tmp_path / "run", tmp_path / "stderr"
    args = ["mlp_128", "--epochs", "6", "--steps-per-epoch", "40", "--batch-size", "32",
            "--train-limit", "2048", "--test-limit", "256", "--seed", "5", "--run-dir", str(run),
            "--no-export"]
    with open(log, "w") as err:
        proc = _start(args, err)
        try:
            _wait_until(lambda: (checkpoints.read_state(run) or {}).get("epoch", 0) >= 1
                        if (run / "state.json").exists() else False, proc, "committed epoch")
            os.kill(proc.pid, signal.SIGSTOP)  # frozen mid-run, holding its lock
            second = run_cli("--resume", str(run), "--no-export", timeout=120)
            os.kill(proc.pid, signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)
        finally:
            stderr = _stopped(proc, log)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (
        f"error: {run} is being written by process {proc.pid}, which holds its lock: wait for "
        "it to finish, or stop it and then --resume"), second.stderr

    assert proc.returncode == 143, stderr
    line = _last_error(stderr)
    epoch = checkpoints.read_state(run)["epoch"]
    assert 1 <= epoch < 6
    command = f"python -m training.train --resume {run}"
    assert line == (f"error: interrupted by SIGTERM; {run} keeps epoch {epoch}/6: continue "
                    f"with: {command}"), line
    before = checkpoints.read_state(run)["history"]

    stale = run / "checkpoints" / f".epoch-{epoch + 1:04d}.tmp.keras"  # a write cut short
    stale.write_bytes(b"PK\x03\x04 half a zip")
    done = subprocess.run([sys.executable, *command.split()[1:], "--no-export"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ("[resume] removed what an interrupted write left: "
            f"checkpoints/{stale.name}") in done.stderr, done.stderr
    assert not stale.exists()
    after = checkpoints.read_state(run)
    assert after["epoch"] == 6 and after["history"][:epoch] == before


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_weights_of_the_uninterrupted_one(tmp_path):
    """kill -9 after a committed epoch and --resume: bitwise the same weights and metrics as
    one run without a stop (epochs of 30 steps over passes of 64: a resume lands inside a
    pass); the summary and the certificate say where it was resumed."""
    import keras

    args = ["mlp_128", "--epochs", "4", "--steps-per-epoch", "30", "--batch-size", "32",
            "--train-limit", "2048", "--test-limit", "256", "--seed", "5", "--precision",
            "float32"]
    whole, cut, exports = tmp_path / "whole", tmp_path / "cut", tmp_path / "exports"
    done = run_cli(*args, "--run-dir", str(whole), "--no-export")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "stderr", "w") as err:
        proc = _start([*args, "--run-dir", str(cut), "--no-export"], err)
        try:
            _wait_until(lambda: (cut / "state.json").exists(), proc, "committed epoch")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            _stopped(proc, tmp_path / "stderr")
    epoch = checkpoints.read_state(cut)["epoch"]
    assert 1 <= epoch < 4
    done = run_cli("--resume", str(cut), "--export-dir", str(exports))
    assert done.returncode == 0, done.stderr
    assert f", resumed at epoch {epoch}" in done.stdout, done.stdout

    def final(run):
        return [np.asarray(w) for w in keras.models.load_model(run / "model.keras").weights]

    assert all(np.array_equal(a, b) for a, b in zip(final(whole), final(cut), strict=True))
    same = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert ([{k: r[k] for k in same} for r in checkpoints.read_state(cut)["history"]]
            == [{k: r[k] for k in same} for r in checkpoints.read_state(whole)["history"]])
    summaries = [json.loads((run / "summary.json").read_text()) for run in (whole, cut)]
    assert [s["resumed_at_epochs"] for s in summaries] == [[], [epoch]]
    meta = json.loads((exports / "mlp_128" / "1" / "metadata.json").read_text())
    assert meta["training"]["resumed_at_epochs"] == [epoch]
@pytest.mark.slow
def test_ctrl_c_before_the_first_epoch_ends_leaves_no_run_folder(tmp_path):
    run, log = tmp_path / "run", tmp_path / "stderr"
    # An epoch far longer than the test waits: ^C comes before it ends, whatever the CPU.
    args = ["mlp_128", "--epochs", "1", "--steps-per-epoch", "1000000", "--batch-size", "32",
            "--train-limit", "2048", "--test-limit", "256", "--run-dir", str(run), "--no-export"]
    with open(log, "w") as err:
        proc = _start(args, err)
        try:
            _wait_until(lambda: (run / "config.json").exists(), proc, "run folder")
            time.sleep(1)  # inside model.fit
            proc.send_signal(signal.SIGINT)
        finally:
            stderr = _stopped(proc, log)
    assert proc.returncode == 130, stderr
    assert _last_error(stderr) == (
        f"error: interrupted by SIGINT before the first epoch ended; removed {run}")
    assert not run.exists()


def test_resuming_a_finished_exported_run_does_nothing_and_a_lost_export_is_redone(tmp_path):
    run, exports = tmp_path / "run", tmp_path / "exports"
    first = run_cli("softmax_regression", "--steps", "40", "--test-limit", "256",
                    "--run-dir", str(run), "--export-dir", str(exports))
    assert first.returncode == 0, first.stderr
    versions = exports / "softmax_regression"
    assert sorted(p.name for p in versions.iterdir()) == ["1"]
    # A limited run says plainly that it becomes the newest version, and meets no reference.
    assert ("[export] note: this run is limited (--steps 40, --test-limit 256), yet it becomes "
            f"the newest version under {versions}, which a server") in first.stderr, first.stderr
    why = "measured on 256 of the 10000 test examples (--test-limit)"
    reference = json.loads((run / "summary.json").read_text())["reference"]
    assert reference["met"] is None and reference["not_measured"].startswith(why)
    assert f"not judged: {why}" in first.stdout, first.stdout
    meta = json.loads((versions / "1" / "metadata.json").read_text())
    assert meta["reference"]["met"] is None and meta["reference"]["not_measured"].startswith(why)

    again = run_cli("--resume", str(run), "--export-dir", str(exports))
    assert again.returncode == 0, again.stderr
    assert f"is finished and exported as {versions / '1'}" in again.stderr
    assert sorted(p.name for p in versions.iterdir()) == ["1"]  # no second copy

    # The export was lost (deleted, or a kill during export left none): resuming exports again.
    import shutil

    shutil.rmtree(versions / "1")
    redo = run_cli("--resume", str(run), "--export-dir", str(exports))
    assert redo.returncode == 0, redo.stderr
    assert "finished and exported" not in redo.stderr
    assert sorted(p.name for p in versions.iterdir()) == ["1"]
    meta = json.loads((versions / "1" / "metadata.json").read_text())
    assert meta["training"]["run_dir"] == str(run)


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed: must be between 0 and 4294967295, got -1"),
    (["--seed", "99999999999999999999"], "--seed: must be between 0 and 4294967295"),
    (["--export-dir", "{file}"], "--export-dir {file} is a file"),
    (["--export-dir", "/proc/nope/exports"], "--export-dir /proc/nope/exports cannot be written"),
    (["--run-dir", "{file}"], "--run-dir {file} is a file"),
    (["--run-dir", "{tmp}/exports/runs/r", "--export-dir", "{tmp}/exports"],
     "is inside the export base path"),
])
def test_bad_destinations_and_seeds_are_one_line_before_training(tmp_path, args, message):
    (tmp_path / "a_file").write_text("x")
    fill = {"file": str(tmp_path / "a_file"), "tmp": str(tmp_path)}
    args = [a.format(**fill) for a in args]
    if "--run-dir" not in args:
        args += ["--run-dir", str(tmp_path / "run")]
    done = run_cli("softmax_regression", "--steps", "2", *args)
    assert done.returncode == 2, done.stderr
    assert message.format(**fill) in done.stderr
    assert "Traceback" not in done.stderr and "[data]" not in done.stderr  # before any loading
    assert not (tmp_path / "run").exists() and not (tmp_path / "exports").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished, exported softmax_regression run (4 steps): run dir and export dir."""
    root = tmp_path_factory.mktemp("finished")
    done = run_cli("softmax_regression", "--steps", "4", "--train-limit", "400", "--batch-size",
                   "100", "--test-limit", "100", "--run-dir", str(root / "run"), "--export-dir",
                   str(root / "exports"))
    assert done.returncode == 0, done.stderr
    return root


def _copy_run(finished_run, tmp_path):
    import shutil

    shutil.copytree(finished_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_resume_refuses_every_flag_it_would_ignore(finished_run):
    done = run_cli("--resume", str(finished_run / "run"), "--seed", "3")
    assert done.returncode == 2 and "drop --seed" in done.stderr


def test_resume_with_no_export_keeps_the_export_and_never_publishes_twice(finished_run):
    run = finished_run / "run"
    exported = json.loads((run / "summary.json").read_text())["export"]
    assert exported
    done = run_cli("--resume", str(run), "--no-export")
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["export"] == exported
    done = run_cli("--resume", str(run), "--export-dir", str(finished_run / "exports"))
    assert done.returncode == 0 and "is finished and exported" in done.stderr, done.stderr
    assert sorted(p.name for p in (finished_run / "exports/softmax_regression").iterdir()) == ["1"]



def test_resuming_a_copy_of_a_finished_run_does_not_export_it_again(finished_run, tmp_path):
    """The copy's model.keras is the version already published: no duplicate version. A copy
    whose model.keras changed is not that version (and is checked as any export is)."""
    run = _copy_run(finished_run, tmp_path)
    versions = finished_run / "exports" / "softmax_regression"
    before = sorted(p.name for p in versions.iterdir())
    done = run_cli("--resume", str(run), "--export-dir", str(finished_run / "exports"))
    assert done.returncode == 0, done.stderr
    exported = json.loads((run / "summary.json").read_text())["export"]
    assert (f"[resume] {run} (a copy of {finished_run / 'run'}) is finished and exported as "
            f"{exported}") in done.stderr, done.stderr
    assert sorted(p.name for p in versions.iterdir()) == before
    from training.run_folder import published_export

    (run / "model.keras").write_bytes((run / "model.keras").read_bytes() + b"\0")
    assert published_export(run, finished_run / "exports") is None


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "state.json").unlink(), "has no state.json"),
    (lambda run: (run / "state.json").write_text("{\"epoch\": "), "state.json is damaged"),
    (lambda run: [p.write_bytes(p.read_bytes()[:500]) for p in (run / "checkpoints").iterdir()],
     "cannot be loaded"),
    (lambda run: (run / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((run / "config.json").read_text()).items()
         if k != "batch_size"})), "not a valid run config (missing batch_size)"),
])
def test_a_damaged_run_is_refused_with_one_line_and_nothing_is_deleted(finished_run, tmp_path,
                                                                        damage, message):
    run = _copy_run(finished_run, tmp_path)
    damage(run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    done = run_cli("--resume", str(run), "--no-export")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


@pytest.mark.parametrize("where", ["model.keras", "checkpoint"])
def test_another_models_weights_in_a_run_are_refused_by_export_and_resume(finished_run, tmp_path,
                                                                         where):
    """mlp_128's model in a softmax_regression run: `training.export RUN` and `--resume` each
    refuse it in one line naming what differs, and nothing is exported."""
    run = _copy_run(finished_run, tmp_path)
    exports = tmp_path / "exports"
    other = zoo.create_model("mlp_128")
    if where == "model.keras":
        other.save(run / "model.keras")
        done = subprocess.run([sys.executable, "-m", "training.export", str(run), "--export-dir",
                               str(exports)], cwd=ROOT, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
    else:
        other.save(run / checkpoints.read_state(run)["checkpoint"])
        done = run_cli("--resume", str(run), "--export-dir", str(exports))
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert "is not a softmax_regression model (architecture mlp_128, the spec's " \
           "softmax_regression; " in lines[0], lines[0]
    assert "parameters 101770, the spec's 7850" in lines[0], lines[0]
    assert not exports.exists()



def test_a_truncated_model_keras_is_named_as_such_not_as_file_not_found(finished_run, tmp_path):
    """Keras says "File not found" of any file that is not a whole zip: export, --init-from and
    trained_model say what it is."""
    from training import finetune

    run = _copy_run(finished_run, tmp_path)
    model_file = run / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:500])
    said = (f"{model_file} cannot be loaded: it is not a whole .keras file (500 bytes, not a zip "
            "archive: truncated or damaged)")
    done = subprocess.run([sys.executable, "-m", "training.export", str(run), "--export-dir",
                           str(tmp_path / "exports")], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert [ln for ln in done.stderr.splitlines() if not ln.startswith("[")] == [
        f"error: {said}"], done.stderr
    with pytest.raises(finetune.InitError) as e:
        finetune.trained_model(run)
    assert str(e.value) == said


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    from training.run_folder import new_run_dir

    folders = {new_run_dir("softmax_regression", 0, tmp_path) for _ in range(3)}
    assert len(folders) == 3 and all(f.is_dir() for f in folders)
