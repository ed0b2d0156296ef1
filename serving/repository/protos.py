"""Text-format configuration files TF Serving reads, parsed with TF Serving's own schemas, and
the ModelServerConfig of a folder of model directories (`folder_config`).

`ModelServerConfig` ships in tensorflow-serving-api. `SSLConfig` (tensorflow_serving/config/
ssl_config.proto) and `BatchingParameters` (servables/tensorflow/session_bundle_config.proto) do
not, so their descriptors are declared here with TF Serving's field names and numbers: a file
written for `tensorflow_model_server` parses unchanged, and a typo is an error, not a default.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,  # noqa: F401  (registers google/protobuf/wrappers.proto)
)
from tensorflow_serving.config import model_server_config_pb2

from serving.repository import versions

_F = descriptor_pb2.FieldDescriptorProto


def _build():
    pool = descriptor_pool.Default()
    name = "zoo_serving/tf_serving_configs.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        f = descriptor_pb2.FileDescriptorProto(name=name, package="tensorflow.serving",
                                               syntax="proto3")
        f.dependency.append("google/protobuf/wrappers.proto")
        ssl = f.message_type.add(name="SSLConfig")
        for number, (field, kind) in enumerate(
                [("server_key", _F.TYPE_STRING), ("server_cert", _F.TYPE_STRING),
                 ("custom_ca", _F.TYPE_STRING), ("client_verify", _F.TYPE_BOOL)], start=1):
            ssl.field.add(name=field, number=number, type=kind, label=_F.LABEL_OPTIONAL)
        batching = f.message_type.add(name="BatchingParameters")
        for number, (field, wrapper) in enumerate(
                [("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
                 ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
                 ("thread_pool_name", "StringValue")], start=1):
            batching.field.add(name=field, number=number, type=_F.TYPE_MESSAGE,
                               type_name=f".google.protobuf.{wrapper}", label=_F.LABEL_OPTIONAL)
        batching.field.add(name="allowed_batch_sizes", number=6, type=_F.TYPE_INT64,
                           label=_F.LABEL_REPEATED)
        batching.field.add(name="pad_variable_length_inputs", number=7, type=_F.TYPE_BOOL,
                           label=_F.LABEL_OPTIONAL)
        pool.Add(f)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "tensorflow.serving.SSLConfig")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName(
                "tensorflow.serving.BatchingParameters")))


SSLConfig, BatchingParameters = _build()
ModelServerConfig = model_server_config_pb2.ModelServerConfig


class ConfigError(ValueError):
    """A configuration file is missing or does not parse; the message names the file."""


def parse_text(text: str, message_class, source: str = "<string>"):
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ConfigError(f"{source} is not a valid {message_class.DESCRIPTOR.name} text proto: "
                          f"{e}") from None
    return message


# With --workers: the file where the workers record the config a reload made current, from
# which the supervisor starts a worker it restarts (serving/supervisor.py, serving/siblings.py).
RELOADED_CONFIG_ENV = "ZOO_RELOADED_CONFIG"


def write_text(path: str | Path, message) -> None:
    """`message` as a text proto at `path`, replacing the file whole (a reader sees the old
    text or the new, never part of it)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        f.write(text_format.MessageToString(message))
    os.replace(temporary, path)


def read_text(path: str | Path, message_class):
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse_text(text, message_class, str(path))


def folder_config(base: Path, prefix: str | None = None, num_versions: int | None = None,
                  with_versions_only: bool = False):
    """The ModelServerConfig serving each model directory under `base` (hidden ones aside), by
    its name: `base_path` is PREFIX/NAME with `prefix`, else the absolute path; `num_versions`
    writes the latest-N policy out (None: TF Serving's default, latest 1); `with_versions_only`
    skips directories with no version yet (serving.config), which a server polling `base` serves
    once one appears. Raises OSError if `base` cannot be listed."""
    config = ModelServerConfig()
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if with_versions_only and not versions.scan(d).versions:
            continue
        path = f"{prefix.rstrip('/')}/{d.name}" if prefix else str(d.resolve())
        m = config.model_config_list.config.add(name=d.name, base_path=path,
                                                model_platform="tensorflow")
        if num_versions is not None:
            m.model_version_policy.latest.num_versions = num_versions
    return config
