"""benchmarks/perf_analyzer.py: the Debian 13 source it derives from a machine's apt config, its
one-line refusal, and (where CI installed it) the real binary started through that loader."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import perf_analyzer as pa
from tests.conftest import ROOT


def _etc(tmp_path, os_codename="bookworm", os_id="debian"):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (tmp_path / "os-release").write_text(f'ID={os_id}\nVERSION_CODENAME={os_codename}\n')
    (tmp_path / "keyring.gpg").write_bytes(b"")
    return etc


def test_trixie_entry_from_a_deb822_source(tmp_path):
    etc = _etc(tmp_path)
    (etc / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: http://other.example/x\nSuites: nodistro\nComponents: main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        f"Signed-By: {tmp_path / 'keyring.gpg'}\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")
    entry = pa.trixie_source(etc, tmp_path / "os-release")
    assert entry == ("Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\n"
                     f"Components: main\nSigned-By: {tmp_path / 'keyring.gpg'}\n")


def test_trixie_entry_from_a_one_line_source_with_options(tmp_path):
    etc = _etc(tmp_path)
    (etc / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n")
    entry = pa.trixie_source(etc, tmp_path / "os-release")
    assert "URIs: http://mirror.example/debian\nSuites: trixie\n" in entry
    assert "Signed-By" not in entry


def test_no_enabled_debian_source_is_a_one_line_error(tmp_path):
    etc = _etc(tmp_path)
    (etc / "sources.list.d" / "x.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n")
    with pytest.raises(pa.Unavailable, match=r"^no Debian main archive for bookworm among"):
        pa.trixie_source(etc, tmp_path / "os-release")


def test_another_distribution_is_refused_by_name(tmp_path):
    etc = _etc(tmp_path, os_codename="noble", os_id="ubuntu")
    (etc / "sources.list").write_text("deb http://mirror.example/ubuntu noble main\n")
    with pytest.raises(pa.Unavailable, match=r"^this system is ubuntu, not Debian"):
        pa.trixie_source(etc, tmp_path / "os-release")


def test_locate_names_the_install_command_when_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    prefix, reason = pa.locate()
    assert prefix is None
    assert reason.startswith("perf_analyzer unavailable: not installed in ")
    assert "install" in reason and "\n" not in reason


def test_the_installed_binary_runs_through_its_loader():
    prefix, reason = pa.locate()
    if prefix is None:
        pytest.skip(reason)
    out = subprocess.run([*prefix, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Perf Analyzer Version" in out.stderr
    where = subprocess.run([sys.executable, "-P", str(ROOT / "benchmarks/perf_analyzer.py"),
                            "where"], capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and where.stdout.split("\n")[:-1] == prefix
