"""Client for a TF-Serving-compatible server (this project's or the real tensorflow_model_server).

    python -m serving.client list
    python -m serving.client status MODEL
    python -m serving.client metadata MODEL
    python -m serving.client predict MODEL --mnist-test 32
    python -m serving.client predict MODEL --image digit.png
    python -m serving.client --protocol v2 predict MODEL --mnist-test 32   (any v2 server)

Library: `ZooClient("127.0.0.1:8500").predict("softmax_regression", images)` -> {name: ndarray}.
Every call has a deadline; only UNAVAILABLE is retried, with exponential backoff, by gRPC itself
through the channel's service config. `list` uses the REST endpoint GET /v1/models (TF Serving's
gRPC API has no list call; the real tensorflow_model_server has no such endpoint either).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from serving import quiet

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


class ClientError(RuntimeError):
    """One readable line: the status code and the server's message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def _rpc_error(e: grpc.RpcError) -> ClientError:
    code = e.code().name if e.code() else "UNKNOWN"
    return ClientError(code, (e.details() or "").splitlines()[0] if e.details() else "")


class ZooClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, *, rest_address: str | None = None,
                 timeout: float = 10.0, tls: bool = False, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 server_name: str | None = None, max_message_bytes: int = 64 << 20,
                 max_attempts: int = 4, token: str | None = None):
        """`token`: sent as `authorization: Bearer <token>` on every call (gRPC metadata, and
        the HTTP header of `list`), for a server started with --auth_token_file."""
        from tensorflow_serving.apis import (
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        from serving import auth

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

        from serving import tensors

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
        from serving import tensors

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
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response = self._call(self._models.GetModelStatus, request, timeout)
        return [{"version": s.version, "state": STATE_NAMES.get(s.state, str(s.state)),
                 "error": s.status.error_message}
                for s in response.model_version_status]

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


# ---------------------------------------------------------------------- CLI helpers
def mnist_test(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n MNIST test digits from the project's cached npz (written by training.data)."""
    candidates = []
    if os.environ.get("ZOO_DATA_DIR"):
        candidates.append(Path(os.environ["ZOO_DATA_DIR"]) / "mnist.npz")
    candidates += [Path(os.environ.get("ZOO_CACHE_DIR") or
                        Path("~/.cache/keras-model-zoo").expanduser()) / "mnist.npz",
                   Path("~/.keras/datasets/mnist.npz").expanduser()]
    for path in candidates:
        if path.is_file():
            with np.load(path) as f:
                return f["x_test"][:n].astype(np.float32), f["y_test"][:n]
    raise ClientError("NOT_FOUND", "no MNIST cache found (tried "
                      f"{', '.join(map(str, candidates))}); run `make data` first")


def load_image(path: str) -> np.ndarray:
    """Any image: grey-scaled, resized to 28x28, inverted if it is dark-on-light (MNIST digits
    are light on dark), returned as float32 0-255 of shape (1, 28, 28)."""
    from PIL import Image

    try:
        image = Image.open(path).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as e:
        raise ClientError("INVALID_ARGUMENT", f"cannot read image {path}: {e}") from None
    a = np.asarray(image, np.float32)
    if a.mean() > 127:
        a = 255.0 - a
    return a[None]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.client",
                                description="Talk to a TF-Serving-compatible server.")
    quiet.add_verbose_flag(p)
    g = p.add_argument_group("connection")
    g.add_argument("--address", default=DEFAULT_ADDRESS,
                   help=f"gRPC HOST:PORT (default {DEFAULT_ADDRESS}; $ZOO_SERVING_ADDRESS)")
    g.add_argument("--rest", default=DEFAULT_REST,
                   help=f"REST HOST:PORT for list (default {DEFAULT_REST}; $ZOO_SERVING_REST)")
    g.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    g.add_argument("--tls", action="store_true", help="use TLS (system roots unless --ca-file)")
    g.add_argument("--ca-file", help="CA certificate (PEM) to verify the server")
    g.add_argument("--cert-file", help="client certificate (PEM), for client_verify servers")
    g.add_argument("--key-file", help="client key (PEM)")
    g.add_argument("--server-name", help="expected name in the server certificate")
    g.add_argument("--max-message-bytes", type=int, default=64 << 20)
    g.add_argument("--token-file", help="bearer token for a server run with --auth_token_file "
                   "(sent on gRPC and REST calls)")
    g.add_argument("--protocol", choices=("tfserving", "v2"), default="tfserving",
                   help="TF Serving's gRPC API (default), or the Open Inference Protocol "
                        "(KServe v2) over gRPC, as Triton, KServe and MLServer speak it")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every model and its versions (REST)")
    for name in ("status", "metadata", "predict"):
        s = sub.add_parser(name)
        s.add_argument("model")
        s.add_argument("--version", type=int)
        s.add_argument("--label")
        if name == "predict":
            src = s.add_mutually_exclusive_group(required=True)
            src.add_argument("--mnist-test", type=positive_int, metavar="N",
                             help="classify the first N MNIST test digits, print accuracy")
            src.add_argument("--image", help="classify one image file (PNG, JPEG, ...)")
            s.add_argument("--batch-size", type=positive_int, default=256)
    args = p.parse_args(argv)
    try:
        token = None
        if args.token_file:
            from serving import auth

            try:
                token = auth.read_token(args.token_file, "--token-file")
            except ValueError as e:
                raise ClientError("INVALID_ARGUMENT", str(e)) from None
        if args.protocol == "v2":
            from serving.v2_client import V2Client

            with V2Client(args.address, timeout=args.timeout, tls=args.tls,
                          ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                          max_message_bytes=args.max_message_bytes, token=token) as client:
                return _run(client, args)
        with ZooClient(args.address, rest_address=args.rest, timeout=args.timeout, tls=args.tls,
                       ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                       server_name=args.server_name, max_message_bytes=args.max_message_bytes,
                       token=token) as client:
            return _run(client, args)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(client, args) -> int:
    v2 = args.protocol == "v2"
    if v2 and (args.command == "list" or getattr(args, "label", None)):
        raise ClientError("INVALID_ARGUMENT", "the v2 protocol has no "
                          + ("list call" if args.command == "list" else "version labels")
                          + "; use --protocol tfserving")
    if args.command == "list":
        for m in client.list():
            versions = ", ".join(f"v{s['version']} {s['state']}"
                                 for s in m["model_version_status"])
            print(f"{m['name']:28s} {versions}")
        return 0
    if args.command == "status":
        kw = {"version": args.version} if v2 else {"version": args.version, "label": args.label}
        for s in client.status(args.model, **kw):
            print(f"{args.model} v{s['version']}: {s['state']}"
                  + (f" ({s['error']})" if s["error"] else ""))
        return 0
    if args.command == "metadata" and v2:
        m = client.metadata(args.model, version=args.version)

        def tensors(specs):
            return ", ".join(f"{t['name']}: {t['datatype']} [{','.join(map(str, t['shape']))}]"
                             for t in specs)

        print(f"{m['name']} versions {','.join(m.get('versions', []))} ({m.get('platform')})\n"
              f"  inputs:  {tensors(m['inputs'])}\n  outputs: {tensors(m['outputs'])}")
        return 0
    if args.command == "metadata":
        from tensorflow.core.framework import types_pb2

        for name, sig in sorted(client.metadata(args.model, version=args.version,
                                                label=args.label).items()):
            if not sig.inputs:
                continue

            def fmt(infos):
                return ", ".join(
                    f"{k}: {types_pb2.DataType.Name(v.dtype)} "
                    f"[{','.join(str(d.size) for d in v.tensor_shape.dim)}]"
                    for k, v in sorted(infos.items()))

            print(f"{name} ({sig.method_name})\n  inputs:  {fmt(sig.inputs)}\n"
                  f"  outputs: {fmt(sig.outputs)}")
        return 0
    # predict
    kw = {"version": args.version} if v2 else {"version": args.version, "label": args.label}
    if args.image:
        out = client.predict(args.model, load_image(args.image), **kw)
        if "classes" not in out:
            raise ClientError("INVALID_ARGUMENT", f"{args.model} is not a classifier")
        probs = out.get("probabilities")
        c = int(out["classes"][0])
        print(f"{args.image}: class {c}" + (f" (p={probs[0, c]:.3f})" if probs is not None
                                           else ""))
        return 0
    x, y = mnist_test(args.mnist_test)
    predicted = np.concatenate([
        client.predict(args.model, x[i:i + args.batch_size], output_filter=["classes"],
                       **kw)["classes"] for i in range(0, len(x), args.batch_size)])
    for i in range(min(len(x), 20)):
        mark = "" if predicted[i] == y[i] else "   <- wrong"
        print(f"digit {i:4d}: predicted {predicted[i]}  true {y[i]}{mark}")
    if len(x) > 20:
        print(f"... ({len(x) - 20} more)")
    accuracy = float(np.mean(predicted == y))
    print(f"accuracy {accuracy:.4f} ({int(np.sum(predicted == y))}/{len(y)}) on the first "
          f"{len(y)} MNIST test digits, model {args.model} at {args.address}")
    return 0


if __name__ == "__main__":
    # The importable module's main: serving.v2_client raises serving.client.ClientError, which
    # is not the class this file defines when it runs as __main__.
    from serving import client

    sys.exit(client.main())
