"""serving/, training/ and analysis/ in layers (docs/ARCHITECTURE.md, "Serving in layers",
"Training: what imports what", "Analysis: what imports what"): import-linter checks the
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


def test_serving_training_and_analysis_keep_their_layers():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") == 8


def copy_tree(tmp_path: Path) -> None:
    for part in ("serving", "zoo", "training", "analysis"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)


def test_an_import_upward_or_across_breaks_the_contracts(tmp_path):
    copy_tree(tmp_path)
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


def broken_by_an_import_inside_a_function(tmp_path: Path, module: str, statement: str) -> str:
    """The linter's report on a copy of the tree where `module` (a path) has a function holding
    `statement`; the linter must fail."""
    copy_tree(tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n\ndef _upward():\n    {statement}  # noqa: F401\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stdout


def test_the_training_cycle_coming_back_breaks_its_contracts(tmp_path):
    """The cycle that was: the multi-worker path reaching up into the CLI for its epoch groups,
    inside a function."""
    out = broken_by_an_import_inside_a_function(tmp_path, "training/multiworker.py",
                                                "from training import train")
    assert "training.multiworker is not allowed to import training.train" in out, out
    assert out.count("BROKEN") == 2, out  # the layers, and the cycle train <-> multiworker


def test_a_study_file_reaching_up_into_the_cli_breaks_the_analysis_contracts(tmp_path):
    """The CLI's `run` knows the studies started (study_files.STARTED); the report's files
    reaching back up for it, inside a function, would be a cycle."""
    out = broken_by_an_import_inside_a_function(tmp_path, "analysis/study_files.py",
                                                "from analysis import cli")
    assert "analysis.study_files is not allowed to import analysis.cli" in out, out
    assert out.count("BROKEN") == 2, out  # the layers, and the cycle cli <-> study_files
