"""Precision policy: the decision for any hardware (faked only at the detection boundary), and
the dtype behaviour of mixed policies, exercised for real on the CPU."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

import zoo
from training import precision
from training.precision import Hardware


@pytest.mark.parametrize(
    ("hardware", "expected"),
    [
        (Hardware(gpu_compute_capabilities=((8, 0),)), "mixed_float16"),
        (Hardware(gpu_compute_capabilities=((7, 0),)), "mixed_float16"),
        (Hardware(gpu_compute_capabilities=((6, 1),)), "float32"),  # no tensor cores
        (Hardware(gpu_compute_capabilities=((6, 1), (7, 5))), "mixed_float16"),
        (Hardware(cpu_flags=frozenset({"avx2", "avx512_bf16"})), "mixed_bfloat16"),
        (Hardware(cpu_flags=frozenset({"amx_bf16", "amx_tile"})), "mixed_bfloat16"),
        (Hardware(cpu_flags=frozenset({"avx2", "fma", "avx512f"})), "float32"),
        (Hardware(), "float32"),
        # A tensor-core GPU wins over a bf16 CPU.
        (Hardware(((8, 6),), frozenset({"avx512_bf16"})), "mixed_float16"),
    ],
)
def test_auto_picks_by_hardware(hardware, expected):
    resolved = precision.resolve("auto", hardware)
    assert resolved.policy == expected and resolved.requested == "auto" and resolved.reason


@pytest.mark.parametrize("choice", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_choice_is_kept_whatever_the_hardware(choice):
    assert precision.resolve(choice, Hardware(((8, 0),))).policy == choice


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="auto, float32, mixed_float16, mixed_bfloat16"):
        precision.resolve("float8", Hardware())


def test_zoo_precision_forces_what_auto_resolves_to_but_not_an_explicit_choice(monkeypatch):
    bf16_cpu = Hardware((), frozenset({"avx512_bf16"}))
    forced = precision.resolve("auto", Hardware(), forced="mixed_bfloat16")
    assert forced.policy == "mixed_bfloat16" and "ZOO_PRECISION" in forced.reason
    assert precision.resolve("auto", bf16_cpu, forced="float32").policy == "float32"
    assert precision.resolve("float32", bf16_cpu, forced="mixed_bfloat16").policy == "float32"
    with pytest.raises(precision.PrecisionError, match="ZOO_PRECISION='bf16' is not a policy"):
        precision.resolve("auto", Hardware(), forced="bf16")
    monkeypatch.setenv(precision.ENV_PRECISION, "mixed_float16")
    assert precision.choose("auto").policy == "mixed_float16"
    assert precision.choose("float32").policy == "float32"


def test_a_bad_zoo_precision_is_one_line_from_the_cli(tmp_path):
    from tests.conftest import ROOT, subprocess_env

    done = subprocess.run([sys.executable, "-m", "training.train", "softmax_regression",
                           "--run-dir", str(tmp_path / "run"), "--no-export"], cwd=ROOT,
                          env=subprocess_env(ZOO_PRECISION="bf16"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "$ZOO_PRECISION='bf16' is not a policy" in done.stderr


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert precision._cpu_flags(cpuinfo) >= {"avx2", "avx512_bf16"}
    assert precision._cpu_flags(tmp_path / "absent") == frozenset()



@pytest.mark.parametrize(("flags", "gpus", "policy", "warned"), [
    ("fpu sse2 avx2 fma", (), "mixed_bfloat16", True),  # an AVX2-only CPU: bf16 emulated
    ("fpu avx2 avx512f avx512_bf16", (), "mixed_bfloat16", False),
    ("fpu avx2 amx_bf16 amx_tile", (), "mixed_bfloat16", False),
    ("fpu avx2", ((8, 0),), "mixed_bfloat16", False),  # Ampere computes bf16
    ("fpu avx2", ((7, 5),), "mixed_bfloat16", True),
    ("fpu avx2 avx512_bf16", (), "mixed_float16", True),  # no tensor cores
    ("fpu avx2", ((7, 0),), "mixed_float16", False),
    ("fpu avx2", (), "float32", False),
])
def test_a_policy_without_native_hardware_is_warned_about(tmp_path, flags, gpus, policy,
                                                           warned):
    """The decision from the CPU flags as read from a cpuinfo file: whatever this machine is."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    hardware = Hardware(gpus, precision._cpu_flags(cpuinfo))
    warning = precision.emulation_warning(policy, hardware)
    assert (warning is not None) == warned, warning
    if warned:
        assert warning.startswith(f"warning: {policy} has no native ") and "emulated" in warning


def test_the_train_cli_warns_of_emulated_bf16_exactly_where_this_cpu_lacks_it(tmp_path):
    from tests.conftest import ROOT, subprocess_env

    done = subprocess.run([sys.executable, "-m", "training.train", "softmax_regression",
                           "--precision", "mixed_bfloat16", "--steps", "1", "--train-limit",
                           "200", "--test-limit", "100", "--run-dir", str(tmp_path / "run"),
                           "--no-export"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = precision.emulation_warning("mixed_bfloat16", precision.detect_hardware())
    warned = [ln for ln in done.stderr.splitlines() if ln.startswith("[precision] warning")]
    assert warned == ([f"[precision] {expected}"] if expected else []), done.stderr


def test_gpu_detection_reads_tensorflows_device_details(monkeypatch):
    import tensorflow as tf

    # Faked at the boundary only: what TensorFlow would report on a two-GPU machine.
    gpus = ["GPU:0", "GPU:1"]
    details = {"GPU:0": {"compute_capability": (7, 5)}, "GPU:1": {}}
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: details[d])
    hw = precision.detect_hardware()
    assert hw.gpu_compute_capabilities == ((7, 5),)
    assert precision.resolve("auto", hw).policy == "mixed_float16"


@pytest.mark.parametrize(("policy", "compute"), [("mixed_float16", "float16"),
                                                 ("mixed_bfloat16", "bfloat16")])
def test_mixed_policy_computes_low_and_keeps_float32_weights_and_softmax(policy, compute):
    precision.apply(policy)
    model = zoo.create_model("mlp_128")
    assert model.get_layer("hidden1").compute_dtype == compute
    assert all(w.dtype == "float32" for w in model.weights)  # float32 master weights
    out = model(np.full((2, 28, 28), 128.0, dtype=np.float32))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert np.allclose(np.asarray(out).sum(axis=1), 1.0, atol=1e-5)


def test_mixed_float16_compiles_with_loss_scaling():
    from tests.helpers import tiny_config
    from training.modeling import compile_model

    precision.apply("mixed_float16")
    model = compile_model(tiny_config("softmax_regression", policy="mixed_float16"))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
