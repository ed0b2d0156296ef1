"""benchmarks/common.py: the machine line every benchmark prints first names this CPU, its
cores and its native bf16 flags as /proc/cpuinfo gives them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.common import machine

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs /proc/cpuinfo")
def test_machine_names_the_cpu_its_cores_and_its_bf16_flags():
    text = CPUINFO.read_text()
    line = machine()
    names = [v.split(":", 1)[1].strip() for v in text.splitlines() if v.startswith("model name")]
    if names:
        assert names[0] in line
    assert f"{os.cpu_count()} cores" in line
    flags = set(next((v.split(":", 1)[1].split() for v in text.splitlines()
                      if v.startswith("flags")), []))
    bf16 = sorted(flags & {"avx512_bf16", "amx_bf16"})
    assert line.endswith(", ".join(bf16) if bf16 else "none")
