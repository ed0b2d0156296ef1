"""The Open Inference Protocol (KServe v2) over the core, shared by its gRPC and REST
transports (grpc_api.py, rest_api.py beside this file; docs/ARCHITECTURE.md, "Open Inference
Protocol").

A v2 model is a served model's `serving_default` signature (v2 has no signatures). Every input is
checked here against the signature in v2 terms (names, datatype and the output filter here; shape,
the element limit and one batch size by serving/core/validation.py's InputCheck, as for a
PredictRequest), and only then decoded; the inference then takes the same core path as Predict
(ServerCore.resolve, ServerCore.run), so batching, metrics and the drain on shutdown apply alike.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from serving.core import model_spec as core_model_spec
from serving.core import validation
from serving.core.errors import ServingError, invalid
from serving.core.lifecycle import LoadedVersion
from serving.core.server_core import ServerCore
from serving.core.statistics import Duration, VersionStatistics
from serving.protocols.open_inference import tensors as v2_tensors
from serving.runtime import backends
from serving.transports import json_body

SERVER_NAME = "keras-model-zoo"
# Triton's extensions, by the names its server metadata gives them. Not "model_repository":
# that one requires load and unload too, and only its index is answered here.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")
State = get_model_status_pb2.ModelVersionStatus.State
PLATFORMS = {"savedmodel": "tensorflow_savedmodel", "onnx": "onnxruntime_onnx"}
BACKENDS = {"savedmodel": "tensorflow", "onnx": "onnxruntime"}  # Triton's backend names
# Model configuration datatypes (Triton's model_config.proto DataType) that are not "TYPE_" +
# a v2 datatype name; any other type has none (TYPE_INVALID).
CONFIG_DATATYPES = {types_pb2.DT_STRING: "TYPE_STRING", types_pb2.DT_BFLOAT16: "TYPE_BF16"}


T = TypeVar("T")


class WireInput(NamedTuple):
    """An input as the request states it; `decode()` builds the array (after the checks)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    decode: Callable[[], np.ndarray]


# TF Serving's version states (what the core reports) -> Triton's model repository states
REPOSITORY_STATES = {State.UNKNOWN: "UNKNOWN", State.START: "LOADING", State.LOADING: "LOADING",
                     State.AVAILABLE: "READY", State.UNLOADING: "UNLOADING",
                     State.END: "UNAVAILABLE"}
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class InferResult(NamedTuple):
    model: str
    version: int
    outputs: dict[str, np.ndarray]  # in the order requested (or the signature's)


def model_spec(name: str, version: str) -> model_pb2.ModelSpec:
    """The ModelSpec of a v2 (name, version string); "" is the latest version."""
    if not name:
        raise invalid("model name is empty")
    try:
        return core_model_spec.model_spec(name, version or None)
    except core_model_spec.BadVersion:
        raise invalid(f"model version {version!r} is not a version number") from None


def _package_version() -> str:
    try:
        return importlib.metadata.version("keras-model-zoo")
    except importlib.metadata.PackageNotFoundError:  # serving/ alone, as in the server image
        return ""


class DataPlane:
    def __init__(self, core: ServerCore):
        self.core = core
        self.server_version = _package_version()
        self.stopping = False  # set on shutdown: not ready any more, still live

    # ------------------------------------------------------------------ health and metadata
    def ready(self) -> bool:
        """Every configured model has a version available (and the server is not stopping)."""
        return not self.stopping and self.core.ready()

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": self.server_version,
                "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str) -> bool:
        try:
            self._signature(self._resolve(name, version))
        except ServingError:
            return False
        return True

    def model_metadata(self, name: str, version: str) -> dict:
        loaded = self._resolve(name, version)
        sig = self._signature(loaded)
        available = self.core.available(loaded.name) or [loaded.version]

        def tensors(specs):
            return [{"name": k, "datatype": self._datatype(v), "shape": list(v.shape)}
                    for k, v in specs.items()]

        return {"name": loaded.name, "versions": [str(v) for v in available],
                "platform": PLATFORMS.get(self.core.platform, self.core.platform),
                "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}

    def model_config(self, name: str, version: str) -> dict:
        """Triton's model configuration extension: the fields its tools read (perf_analyzer:
        max_batch_size, inputs and outputs; the batching block when batching is on). The core
        says how many rows a request may carry (0: the model does not batch); a batching model's
        dims leave the batch dimension out, as in Triton's config.pbtxt."""
        loaded = self._resolve(name, version)
        sig = self._signature(loaded)
        max_batch = self.core.max_batch_size(sig)

        def tensors(specs):
            return [{"name": k, "data_type": _config_datatype(v),
                     "dims": list(v.shape[1:] if max_batch else v.shape)}
                    for k, v in specs.items()]

        config = {"name": loaded.name,
                  "platform": PLATFORMS.get(self.core.platform, self.core.platform),
                  "backend": BACKENDS.get(self.core.platform, self.core.platform),
                  "max_batch_size": max_batch,
                  "input": tensors(sig.inputs), "output": tensors(sig.outputs)}
        batching = self.core.batching
        if batching and max_batch:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": batching.batch_timeout_micros,
                "preferred_batch_size": list(batching.allowed_batch_sizes)}
        return config

    def model_statistics(self, name: str, version: str) -> dict:
        """Triton's statistics extension: every loaded version of every model (no name), of
        one model (no version), or one version; the numbers are the core's
        (serving/core/statistics.py)."""
        if version or name:
            loaded = self._resolve(name, version)  # NOT_FOUND, naming what is not served
            versions = self.core.statistics(loaded.name)
            if version:
                versions = {loaded.version: versions.get(loaded.version, VersionStatistics())}
            found = [(loaded.name, versions)]
        else:
            found = [(n, self.core.statistics(n)) for n in self.core.model_names()]
        return {"model_stats": [_model_stat(n, v, st) for n, versions in found
                                for v, st in versions.items()]}

    def repository_index(self, ready: bool = False) -> list[dict]:
        """Triton's repository index: each version the server knows of each model, with its
        state (READY, LOADING, UNLOADING, UNAVAILABLE) and the reason; `ready`: only READY."""
        index = []
        for name in self.core.model_names():
            status = self.core.status(name) or {}
            if not status and not ready:
                index.append({"name": name, "version": "", "state": "UNAVAILABLE",
                              "reason": "no version has been found or loaded yet"})
            for v, (state, message) in sorted(status.items()):
                entry = {"name": name, "version": str(v),
                         "state": REPOSITORY_STATES.get(state, "UNKNOWN"), "reason": message}
                if entry["state"] == "UNAVAILABLE" and not message:
                    entry["reason"] = "unloaded"
                if not ready or entry["state"] == "READY":
                    index.append(entry)
        return index

    # ------------------------------------------------------------------ inference
    async def infer(self, name: str, version: str, inputs: list[WireInput],
                    requested: list[str], encode: Callable[[InferResult], Awaitable[T]],
                    decode_off_loop: int = 0) -> T:
        """Check the inputs against the model, decode them, run, and answer what `encode`
        makes of the result (inside the request: the core times it as compute_output).
        `decode_off_loop`: bytes the decoding involves (big ones are decoded in a thread:
        json_body.off_the_loop)."""
        with self.core.serve(model_spec(name, version)) as loaded:
            sig = self._signature(loaded)
            self._check(loaded, sig, inputs)
            outputs = self._outputs(loaded, sig, requested)
            if decode_off_loop:
                arrays = await json_body.off_the_loop(decode_off_loop, _decode_all, inputs)
            else:
                arrays = _decode_all(inputs)
            result = await self.core.run(loaded, sig, arrays, outputs or None)
            order = outputs or list(sig.outputs)
            return await encode(
                InferResult(loaded.name, loaded.version, {k: result[k] for k in order}))

    def _resolve(self, name: str, version: str) -> LoadedVersion:
        loaded = self.core.resolve(model_spec(name, version))
        loaded.release()  # metadata only: nothing runs on it
        return loaded

    @staticmethod
    def _signature(loaded: LoadedVersion) -> backends.Signature:
        sig = loaded.signatures.get(backends.DEFAULT_SIGNATURE)
        if sig is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"model {loaded.name} version {loaded.version} has no "
                               f"\"{backends.DEFAULT_SIGNATURE}\" signature, which the v2 "
                               "protocol serves")
        return sig

    @staticmethod
    def _datatype(spec: backends.TensorSpec) -> str:
        return v2_tensors.OF_DT.get(spec.dtype, f"DT_{spec.dtype}")

    def _expects(self, loaded: LoadedVersion, sig: backends.Signature) -> str:
        ins = ", ".join(f"\"{k}\" {v2_tensors.describe(self._datatype(v), v.shape)}"
                        for k, v in sig.inputs.items())
        return f"model {loaded.name} version {loaded.version} expects inputs {ins}"

    def _check(self, loaded, sig, inputs: list[WireInput]) -> None:
        names = [i.name for i in inputs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise invalid(f"input \"{dup[0]}\" is given more than once")
        for i in inputs:
            if i.name not in sig.inputs:
                raise invalid(f"unexpected input \"{i.name}\": {self._expects(loaded, sig)}")
        missing = [k for k in sig.inputs if k not in names]
        if missing:
            raise invalid(f"input \"{missing[0]}\" is missing: {self._expects(loaded, sig)}")
        check = validation.InputCheck(self.core.max_request_elements)
        for i in inputs:
            spec = sig.inputs[i.name]
            if i.datatype != self._datatype(spec):
                raise invalid(f"input \"{i.name}\" has datatype {i.datatype} but "
                              f"{self._expects(loaded, sig)}")
            check.shape(i.name, i.shape, spec, lambda: self._expects(loaded, sig))

    @staticmethod
    def _outputs(loaded, sig, requested: list[str]) -> list[str]:
        for k in requested:
            if k not in sig.outputs:
                raise invalid(f"requested output \"{k}\" is not an output of model "
                              f"{loaded.name} version {loaded.version}: its outputs are "
                              f"{', '.join(sig.outputs)}")
        if len(set(requested)) != len(requested):
            raise invalid("an output is requested more than once")
        return list(requested)


def _duration(d: Duration) -> dict:
    return {"count": d.count, "ns": d.ns}


def _model_stat(name: str, version: int, s: VersionStatistics) -> dict:
    """One version's $model_stat, as extension_statistics.md lays it out (no response cache:
    its hits and misses stay 0; no decoupled models: no response_stats)."""
    zero = {"count": 0, "ns": 0}
    return {"name": name, "version": str(version), "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count, "execution_count": s.execution_count,
            "inference_stats": {**{k: _duration(getattr(s, k)) for k in PHASES},
                                "cache_hit": zero, "cache_miss": zero},
            "response_stats": {},
            "batch_stats": [{"batch_size": size, "compute_input": zero,
                             "compute_infer": _duration(d), "compute_output": zero}
                            for size, d in sorted(s.batches.items())],
            "memory_usage": []}


def _config_datatype(spec: backends.TensorSpec) -> str:
    v2 = v2_tensors.OF_DT.get(spec.dtype)
    return f"TYPE_{v2}" if v2 else CONFIG_DATATYPES.get(spec.dtype, "TYPE_INVALID")


def _decode_all(inputs: list[WireInput]) -> dict[str, np.ndarray]:
    return {i.name: i.decode() for i in inputs}
