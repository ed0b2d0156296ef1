"""The precision policy: which Keras dtype policy a run trains in.

`auto` picks mixed_float16 on a CUDA GPU of compute capability >= 7.0 (tensor cores),
mixed_bfloat16 on a CPU with native bf16 arithmetic (avx512_bf16 or AMX), else float32.
Detection reads the hardware; `resolve` takes the readings as arguments so the decision itself
is a pure function that tests can drive with any hardware.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CHOICES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclasses.dataclass(frozen=True)
class Hardware:
    # Compute capabilities (major, minor) of the visible CUDA GPUs.
    gpu_compute_capabilities: tuple[tuple[int, int], ...] = ()
    cpu_flags: frozenset[str] = frozenset()

    def describe(self) -> str:
        gpus = ", ".join(f"sm_{a}{b}" for a, b in self.gpu_compute_capabilities) or "none"
        bf16 = sorted(self.cpu_flags & NATIVE_BF16_CPU_FLAGS) or ["none"]
        return f"GPUs: {gpus}; native bf16 CPU flags: {', '.join(bf16)}"


@dataclasses.dataclass(frozen=True)
class Resolved:
    requested: str
    policy: str
    reason: str


def resolve(requested: str, hardware: Hardware) -> Resolved:
    if requested not in CHOICES:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return Resolved(requested, requested, "asked for explicitly")
    seen = hardware.describe()
    if any(cc >= (7, 0) for cc in hardware.gpu_compute_capabilities):
        return Resolved(requested, "mixed_float16", f"CUDA GPU with tensor cores ({seen})")
    if hardware.cpu_flags & NATIVE_BF16_CPU_FLAGS:
        return Resolved(requested, "mixed_bfloat16", f"CPU with native bf16 ({seen})")
    return Resolved(requested, "float32", f"no fast reduced precision here ({seen})")


def detect_hardware() -> Hardware:
    return Hardware(_gpu_compute_capabilities(), _cpu_flags())


def _gpu_compute_capabilities() -> tuple[tuple[int, int], ...]:
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cc:
            caps.append(tuple(int(v) for v in cc))
    return tuple(caps)


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def apply(policy: str) -> None:
    """Set the global Keras dtype policy; models built afterwards use it."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
