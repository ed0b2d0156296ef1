"""Client of TF Serving's gRPC API (this project's server or the real tensorflow_model_server).

Library: `ZooClient("127.0.0.1:8500").predict("softmax_regression", images)` -> {name: ndarray}.
Every call has a deadline; only UNAVAILABLE is retried, with exponential backoff, by gRPC itself
through the channel's service config. `list` uses the REST endpoint GET /v1/models (TF Serving's
gRPC API has no list call; the real tensorflow_model_server has no such endpoint either). The CLI
over it is serving/client.py.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from serving.clients.errors import ClientError
from serving.core import limits

DEFAULT_ADDRESS = os.environ.get("ZOO_SERVING_ADDRESS", "127.0.0.1:8500")
DEFAULT_REST = os.environ.get("ZOO_SERVING_REST", "127.0.0.1:8501")
STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING",
               50: "END"}


def service_config(max_attempts: int = 4) -> str:
    """Retry UNAVAILABLE only, with exponential backoff; max_attempts 1 means no retries."""
    method = {"name": [{"service": "tensorflow.serving.PredictionService"},
                       {"service": "tensorflow.serving.ModelService"},
                       {"service": "grpc.health.v1.Health"}]}
    if max_attempts >= 2:
        method["retryPolicy"] = {"maxAttempts": max_attempts, "initialBackoff": "0.05s",
                                 "maxBackoff": "1s", "backoffMultiplier": 2,
                                 "retryableStatusCodes": ["UNAVAILABLE"]}
    return json.dumps({"methodConfig": [method]})


def _rpc_error(e: grpc.RpcError) -> ClientError:
    code = e.code().name if e.code() else "UNKNOWN"
    return ClientError(code, (e.details() or "").splitlines()[0] if e.details() else "")


class ZooClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, *, rest_address: str | None = None,
                 timeout: float = 10.0, tls: bool = False, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 server_name: str | None = None, max_message_bytes: int = limits.MAX_REQUEST_BYTES,
                 max_attempts: int = 4, token: str | None = None):
        """`token`: sent as `authorization: Bearer <token>` on every call (gRPC metadata, and
        the HTTP header of `list`), for a server started with --auth_token_file."""
        from tensorflow_serving.apis import (
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        from serving.transports import auth

        self.address, self.rest_address, self.timeout = address, rest_address, timeout
        self.auth_headers = {"authorization": auth.bearer(token)} if token else {}
        options = [("grpc.service_config", service_config(max_attempts)),
                   ("grpc.enable_retries", 1),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls or ca_file or cert_file:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            def read(path):
                try:
                    return Path(path).read_bytes() if path else None
                except OSError as e:
                    raise ClientError("INVALID_ARGUMENT",
                                      f"cannot read {path}: {e.strerror}") from None

            creds = grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
            self.channel = grpc.secure_channel(address, creds, options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _spec(spec, model: str, version: int | None, label: str | None, signature: str = ""):
        spec.name = model
        if version is not None:
            spec.version.value = version
        elif label:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=timeout or self.timeout, wait_for_ready=False,
                          metadata=tuple(self.auth_headers.items()))
        except grpc.RpcError as e:
            raise _rpc_error(e) from None

    def predict_request(self, model: str, inputs, *, version=None, label=None, signature="",
                        output_filter=()):
        from tensorflow_serving.apis import predict_pb2

        from serving.runtime import tensors

        if not isinstance(inputs, dict):
            inputs = {self.input_name(model, version, label, signature): inputs}
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._spec(request.model_spec, model, version, label, signature)
        for k, v in inputs.items():
            tensors.to_proto(np.ascontiguousarray(v), request.inputs[k])
        return request

    def predict(self, model: str, inputs, *, version: int | None = None,
                label: str | None = None, signature: str = "", output_filter=(),
                timeout: float | None = None) -> dict[str, np.ndarray]:
        """`inputs` is an ndarray (for a one-input signature) or {name: ndarray}."""
        from serving.runtime import tensors

        request = self.predict_request(model, inputs, version=version, label=label,
                                       signature=signature, output_filter=output_filter)
        response = self._call(self._predict.Predict, request, timeout)
        return {k: tensors.to_ndarray(v) for k, v in response.outputs.items()}

    _input_names: dict = {}

    def input_name(self, model, version=None, label=None, signature="") -> str:
        key = (model, version, label, signature)
        if key not in self._input_names:
            sig = self.metadata(model, version=version, label=label)[signature or
                                                                     "serving_default"]
            if len(sig.inputs) != 1:
                raise ClientError("INVALID_ARGUMENT", f"{model} takes {len(sig.inputs)} inputs "
                                  f"({', '.join(sig.inputs)}); pass a dict")
            self._input_names[key] = next(iter(sig.inputs))
        return self._input_names[key]

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> dict:
        """{signature name: SignatureDef}."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version, label)
        response = self._call(self._predict.GetModelMetadata, request, timeout)
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigmap)
        return dict(sigmap.signature_def)

    def status(self, model: str, *, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[dict]:
        return self.status_with_planes(model, version=version, label=label, timeout=timeout)[0]

    def data_planes(self, model: str, *, version: int | None = None, label: str | None = None,
                    timeout: float | None = None) -> dict[int, str]:
        """version -> the data plane that answers its gRPC Predict ("native", or "python: why"),
        for the available versions, as our server names them (TF Serving does not: {})."""
        return self.status_with_planes(model, version=version, label=label, timeout=timeout)[1]

    def status_with_planes(self, model: str, *, version: int | None = None,
                           label: str | None = None, timeout: float | None = None
                           ) -> tuple[list[dict], dict[int, str]]:
        """status() and data_planes() from one call."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response, call = self._call(self._models.GetModelStatus.with_call, request, timeout)
        planes = {}
        for key, value in call.trailing_metadata() or ():
            number, _, plane = value.partition(" ")
            if key == "zoo-data-plane" and number.isdigit():
                planes[int(number)] = plane
        return [{"version": s.version, "state": STATE_NAMES.get(s.state, str(s.state)),
                 "error": s.status.error_message}
                for s in response.model_version_status], planes

    def reload_config(self, config, timeout: float | None = None) -> None:
        from tensorflow_serving.apis import model_management_pb2

        request = model_management_pb2.ReloadConfigRequest(config=config)
        self._call(self._models.HandleReloadConfigRequest, request, timeout or 120)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def list(self, timeout: float | None = None) -> list[dict]:
        """Every model and its versions, from REST GET /v1/models."""
        if not self.rest_address:
            raise ClientError("INVALID_ARGUMENT", "listing models needs the REST address "
                              "(--rest HOST:PORT)")
        url = f"http://{self.rest_address}/v1/models"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=self.auth_headers),
                                        timeout=timeout or self.timeout) as r:
                return json.loads(r.read())["models"]
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise ClientError("HTTP 401", f"{url}: {_error_text(e)} (--token-file)") from None
            raise ClientError(f"HTTP {e.code}", f"{url}: {e.reason} (TF Serving itself has no "
                              "list endpoint; name the model instead)") from None
        except (urllib.error.URLError, OSError) as e:
            raise ClientError("UNAVAILABLE", f"{url}: {getattr(e, 'reason', e)}") from None
        except http.client.InvalidURL as e:
            raise ClientError("INVALID_ARGUMENT", f"--rest {self.rest_address!r} is not "
                              f"HOST:PORT ({e})") from None
        except http.client.HTTPException as e:  # e.g. --rest pointed at the gRPC port
            raise ClientError("UNAVAILABLE", f"{url} does not answer HTTP/1.1 ({type(e).__name__}"
                              "); is --rest the REST port?") from None
        except (ValueError, KeyError, TypeError) as e:  # a bad address, or not our JSON
            raise ClientError("INVALID_ARGUMENT", f"{url}: {e}") from None


def _error_text(e: urllib.error.HTTPError) -> str:
    """The server's {"error": ...} message, or the HTTP reason."""
    try:
        return json.loads(e.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return str(e.reason)
