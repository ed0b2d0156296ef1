"""`python -m serving.client --protocol v2 ...`: the client CLI against any Open Inference
Protocol (KServe v2) server over gRPC (ours, Triton, KServe, MLServer), through NVIDIA's
tritonclient (docs/ARCHITECTURE.md, "Open Inference Protocol").

Same calls as ZooClient where v2 has them: predict, metadata and status (model readiness);
v2 has no version labels and no list call.
"""

from __future__ import annotations

import numpy as np

from serving.clients.errors import ClientError
from serving.core import limits


def _error(e) -> ClientError:
    code = str(e.status() or "UNKNOWN").removeprefix("StatusCode.")
    return ClientError(code, (e.message() or "").splitlines()[0] if e.message() else "")


class V2Client:
    def __init__(self, address: str, *, timeout: float = 10.0, tls: bool = False,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, max_message_bytes: int = limits.MAX_REQUEST_BYTES,
                 token: str | None = None):
        import tritonclient.grpc as triton

        from serving.transports import auth

        self.timeout, self.address = timeout, address
        self._inputs: dict = {}  # (model, version) -> its metadata, asked once per predict loop
        self.headers = {"authorization": auth.bearer(token)} if token else None
        try:
            self.client = triton.InferenceServerClient(
                address, ssl=bool(tls or ca_file or cert_file), root_certificates=ca_file,
                private_key=key_file, certificate_chain=cert_file,
                channel_args=[("grpc.max_receive_message_length", max_message_bytes),
                              ("grpc.max_send_message_length", max_message_bytes)])
        except OSError as e:
            raise ClientError("INVALID_ARGUMENT", f"cannot read {e.filename}: {e.strerror}") \
                from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.client.close()

    def _call(self, method, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        try:
            return method(*args, client_timeout=self.timeout, headers=self.headers, **kwargs)
        except InferenceServerException as e:
            raise _error(e) from None

    def metadata(self, model: str, *, version: int | None = None) -> dict:
        """{"name", "versions", "platform", "inputs": [...], "outputs": [...]} as v2 JSON."""
        return self._call(self.client.get_model_metadata, model,
                          "" if version is None else str(version), as_json=True)

    def status(self, model: str, *, version: int | None = None) -> list[dict]:
        m = self.metadata(model, version=version)
        versions = [version] if version is not None else [int(v) for v in m.get("versions", [])]
        return [{"version": v, "error": "",
                 "state": "READY" if self._call(self.client.is_model_ready, model, str(v))
                 else "NOT READY"} for v in versions]

    def predict(self, model: str, x: np.ndarray, *, version: int | None = None,
                output_filter=()) -> dict[str, np.ndarray]:
        import tritonclient.grpc as triton
        from tritonclient.utils import triton_to_np_dtype

        m = self._inputs.get((model, version))
        if m is None:
            m = self._inputs[model, version] = self.metadata(model, version=version)
        if len(m["inputs"]) != 1:
            raise ClientError("INVALID_ARGUMENT", f"{model} takes {len(m['inputs'])} inputs")
        spec = m["inputs"][0]
        x = np.ascontiguousarray(x)
        given = triton.InferInput(spec["name"], list(x.shape), spec["datatype"])
        given.set_data_from_numpy(x.astype(triton_to_np_dtype(spec["datatype"]), copy=False))
        outputs = [triton.InferRequestedOutput(k) for k in output_filter] or None
        result = self._call(self.client.infer, model, [given],
                            model_version="" if version is None else str(version),
                            outputs=outputs)
        names = output_filter or [o["name"] for o in m["outputs"]]
        return {k: result.as_numpy(k) for k in names}

