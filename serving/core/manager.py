"""Answering requests against the served versions (TF Serving's ServerCore request path and
predict_util): a `Manager` is the version lifecycle (serving/core/lifecycle.py) plus resolving a
ModelSpec to a loaded version, validating the request (serving/core/validation.py), and running it
inline, on a thread or through the version's batcher (serving/core/batching.py). Status and metadata
answers are serving/core/status.py's.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from serving.core import status, validation
from serving.core.batching import BatchTooLarge, QueueFull
from serving.core.errors import ServingError, invalid, not_found
from serving.core.lifecycle import Lifecycle, LoadedVersion
from serving.observability import access_log
from serving.runtime import tensors

__all__ = ["Manager", "ServingError", "invalid", "not_found", "LoadedVersion"]


class Manager(Lifecycle):
    def __init__(self, *args, inference_threads: int = 4, **kwargs):
        """Lifecycle's options (see there), and the threads that run requests too slow to run
        on the event loop."""
        super().__init__(*args, **kwargs)
        self.executor = ThreadPoolExecutor(inference_threads, thread_name_prefix="infer")

    # ---------------------------------------------------------------- resolving requests
    def resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The version a ModelSpec names, acquired (call `release()` when done)."""
        if not spec.name:
            raise invalid("Missing ModelSpec")
        state = self.models.get(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            label = spec.version_label
            if state is None or label not in state.config.version_labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = state.config.version_labels[label]
            loaded = state.available.get(version)
            if loaded is None:
                raise not_found(f"Servable not found for request: Specific({spec.name}, "
                                f"{version}) (label {label})")
        elif choice == "version":
            version = spec.version.value
            loaded = state.available.get(version) if state else None
            if loaded is None:
                raise not_found(f"Servable not found for request: Specific({spec.name}, "
                                f"{version})")
        else:
            if state is None or not state.available:
                raise not_found(f"Servable not found for request: Latest({spec.name})")
            loaded = state.available[max(state.available)]
        loaded.acquire()
        return loaded

    def prepare(self, loaded: LoadedVersion, request: predict_pb2.PredictRequest,
                arrays: dict[str, np.ndarray] | None = None) -> validation.Prepared:
        """Validate a PredictRequest against its signature (serving/core/validation.py); return
        (signature, inputs, outputs). `arrays` replaces request.inputs when the caller (REST)
        has decoded them already."""
        return validation.prepare(loaded.name, loaded.version, loaded.signatures, request,
                                  arrays, self.max_request_elements)

    async def run(self, loaded: LoadedVersion, sig, inputs, outputs) -> dict[str, np.ndarray]:
        """Every inference of every protocol comes here: it is noted in the access log."""
        rows = next(iter(inputs.values())).shape[0] if inputs else 1
        access_log.note(model=loaded.name, version=loaded.version, rows=rows)
        result = await self._run(loaded, sig, inputs, outputs, rows)
        access_log.note_payload(inputs, result)
        return result

    async def _run(self, loaded: LoadedVersion, sig, inputs, outputs, rows: int
                   ) -> dict[str, np.ndarray]:
        if rows == 0 and all(s.shape and s.shape[0] == -1 for s in sig.outputs.values()):
            names = outputs or list(sig.outputs)
            return {k: np.zeros([0, *[max(d, 0) for d in sig.outputs[k].shape[1:]]],
                                sig.outputs[k].np_dtype) for k in names}
        batcher = loaded.batchers.get(sig.name)
        try:
            if batcher is not None:
                result = await batcher.submit(inputs)
                return {k: result[k] for k in (outputs or result)}
            submitted = time.perf_counter()
            if loaded.inline and rows <= 8:
                result = loaded.backend.run(sig.name, inputs, outputs)
                began = submitted
            else:
                def timed():
                    start = time.perf_counter()
                    return loaded.backend.run(sig.name, inputs, outputs), start

                result, began = await asyncio.get_running_loop().run_in_executor(
                    self.executor, timed)
            self.metrics.run(loaded.name, loaded.version, sig.name, began - submitted,
                             time.perf_counter() - began)
            return result
        except QueueFull as e:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        except BatchTooLarge as e:
            raise invalid(str(e)) from None
        except ServingError:
            raise
        except Exception as e:  # noqa: BLE001 - runtime errors become INVALID_ARGUMENT/INTERNAL
            msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            if "InvalidArgument" in type(e).__name__ or "INVALID_ARGUMENT" in str(e):
                raise invalid(msg) from None
            raise ServingError(grpc.StatusCode.INTERNAL, msg) from None

    async def predict(self, request: predict_pb2.PredictRequest, api: str = "grpc",
                      arrays: dict[str, np.ndarray] | None = None
                      ) -> tuple[predict_pb2.PredictResponse | None, dict, LoadedVersion | None]:
        """Run a PredictRequest. Returns (response proto, output arrays, version).
        The request is counted in the metrics by its API (gRPC or REST), not here."""
        loaded = self.resolve(request.model_spec)
        try:
            sig, inputs, outputs = self.prepare(loaded, request, arrays)
            result = await self.run(loaded, sig, inputs, outputs)
        finally:
            loaded.release()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = sig.name
        if api == "grpc":
            for k, v in result.items():
                tensors.to_proto(v, response.outputs[k])
        return response, result, loaded

    def model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                     ) -> get_model_status_pb2.GetModelStatusResponse:
        return status.model_status(self.models, request)

    def model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                       ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return status.model_metadata(self.resolve, request)

    def model_names(self) -> list[str]:
        return sorted(self.models)

    async def close(self) -> None:
        await super().close()
        self.executor.shutdown(wait=False)
