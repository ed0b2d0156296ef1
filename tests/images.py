"""The Dockerfile's images, read without a Docker engine: its instructions, its stages, its ARG
defaults, and the flags tensorflow_model_server accepts. Shared by test_serving_docker.py and
test_deploy.py."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"

# Flags of tensorflow_model_server, from tensorflow/serving
# tensorflow_serving/model_servers/main.cc (the flag_list in main(), 2.x series). Kept short:
# the ones this project might pass. TF Serving parses them as --name=value only.
TF_SERVING_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "ssl_config_file", "platform_config_file",
    "saved_model_tags", "grpc_channel_arguments", "grpc_max_threads", "enable_model_warmup",
    "num_request_iterations_for_warmup", "version", "monitoring_config_file",
    "enable_grpc_healthcheck_service",
}


def instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(KEYWORD, rest) for every instruction, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    out = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def entrypoint(self) -> list[str]:
        """The stage's last ENTRYPOINT, in exec (JSON) form."""
        rests = [rest for k, rest in self.instructions if k == "ENTRYPOINT"]
        assert rests, f"stage {self.name or self.base} has no ENTRYPOINT"
        return json.loads(rests[-1])


def stages(text: str | None = None) -> list[Stage]:
    """The build stages in order (FROM base [AS name]); instructions before the first FROM
    (global ARGs) are left out."""
    out: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(words[0], name))
        elif out:
            out[-1].instructions.append((keyword, rest))
    return out


def stage(name: str, text: str | None = None) -> Stage:
    found = [s for s in stages(text) if s.name == name]
    assert len(found) == 1, f"the Dockerfile has {len(found)} stages named {name}"
    return found[0]


def arg_default(name: str, text: str | None = None) -> str:
    """The default of `ARG name=value` (the first one, quotes removed)."""
    for keyword, rest in instructions(text):
        if keyword == "ARG" and rest.split("=", 1)[0] == name and "=" in rest:
            return " ".join(shlex.split(rest.split("=", 1)[1]))
    raise AssertionError(f"the Dockerfile has no ARG {name}=DEFAULT")
