"""The precision policy: which Keras dtype policy a run trains in.

`auto` picks mixed_float16 on a CUDA GPU of compute capability >= 7.0 (tensor cores),
mixed_bfloat16 on a CPU with native bf16 arithmetic (avx512_bf16 or AMX), else float32.
Detection reads the hardware; `resolve` takes the readings as arguments so the decision itself
is a pure function that tests can drive with any hardware.

$ZOO_PRECISION, when set, is what `auto` resolves to, whatever the hardware: a whole test run can
be forced into mixed_bfloat16, so that a precision assumption fails on every machine and not only
on one with native bf16 (docs/ARCHITECTURE.md, "Precision"). An explicit policy is never changed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

ENV_PRECISION = "ZOO_PRECISION"
CHOICES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class PrecisionError(ValueError):
    """An unknown policy asked for (by flag or by $ZOO_PRECISION): one line, exit status 2."""


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


def resolve(requested: str, hardware: Hardware, forced: str | None = None) -> Resolved:
    """`forced`: the policy `auto` must resolve to ($ZOO_PRECISION), if any."""
    if requested not in CHOICES:
        raise PrecisionError(f"unknown precision {requested!r}; choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return Resolved(requested, requested, "asked for explicitly")
    if forced:
        if forced not in CHOICES[1:]:
            raise PrecisionError(f"${ENV_PRECISION}={forced!r} is not a policy; choose one of "
                             f"{', '.join(CHOICES[1:])}")
        return Resolved(requested, forced, f"forced by ${ENV_PRECISION}")
    seen = hardware.describe()
    if any(cc >= (7, 0) for cc in hardware.gpu_compute_capabilities):
        return Resolved(requested, "mixed_float16", f"CUDA GPU with tensor cores ({seen})")
    if hardware.cpu_flags & NATIVE_BF16_CPU_FLAGS:
        return Resolved(requested, "mixed_bfloat16", f"CPU with native bf16 ({seen})")
    return Resolved(requested, "float32", f"no fast reduced precision here ({seen})")


def emulation_warning(policy: str, hardware: Hardware) -> str | None:
    """A warning where `policy` has no hardware for it here, else None: reduced precision is
    then emulated, and slower than float32 (benchmarks.train_throughput measures it). bf16 is
    native on a CPU with avx512_bf16/AMX or a GPU of compute capability >= 8.0; float16 on a
    GPU with tensor cores (>= 7.0)."""
    needs = {"mixed_bfloat16": ((8, 0), NATIVE_BF16_CPU_FLAGS, "bf16"),
             "mixed_float16": ((7, 0), frozenset(), "float16")}.get(policy)
    if needs is None:
        return None
    capability, cpu_flags, kind = needs
    if (any(cc >= capability for cc in hardware.gpu_compute_capabilities)
            or hardware.cpu_flags & cpu_flags):
        return None
    return (f"warning: {policy} has no native {kind} arithmetic here ({hardware.describe()}): "
            "it is emulated and trains slower than float32 (--precision auto picks what is "
            "fast here)")


def choose(requested: str = "auto") -> Resolved:
    """`resolve` on this machine's hardware and environment."""
    return resolve(requested, detect_hardware(), os.environ.get(ENV_PRECISION) or None)


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
