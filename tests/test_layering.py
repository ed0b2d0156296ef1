"""serving/ in layers (docs/ARCHITECTURE.md, "Serving in layers"): import-linter checks the
contracts in pyproject.toml's [tool.importlinter] on the source as it is (imports inside functions
count), and a deliberate violation, an import upward written into a copy of the tree, breaks them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}  # one line each
    return subprocess.run(LINT, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_serving_keeps_its_layers():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") == 4


def test_an_import_upward_or_across_breaks_the_contracts(tmp_path):
    for part in ("serving", "zoo", "training", "analysis"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    # The core reaching up into a protocol, inside a function (a cycle too); one protocol using
    # the other.
    core = tmp_path / "serving" / "core" / "server_core.py"
    core.write_text(core.read_text() + "\n\ndef _upward():\n"
                       "    from serving.protocols.tf_serving import rest_api  # noqa: F401\n")
    plane = tmp_path / "serving" / "protocols" / "open_inference" / "dataplane.py"
    plane.write_text(plane.read_text() + "\nfrom serving.protocols.tf_serving import grpc_api\n")
    done = lint(tmp_path)
    assert done.returncode == 1
    out = done.stdout
    assert "serving.core is not allowed to import serving.protocols" in out, out
    assert "serving.protocols.open_inference is not allowed to import " \
           "serving.protocols.tf_serving" in out, out
    assert out.count("BROKEN") == 3, out  # layers, independence, and the cycle core <-> protocols
