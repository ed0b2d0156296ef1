"""Runtimes for one version directory: the SavedModel (what TF Serving serves) and ONNX Runtime.

Both expose the same thing: named signatures (inputs and outputs with dtype and shape, and the
`SignatureDef` GetModelMetadata returns) and `run(signature, {name: ndarray}) -> {name: ndarray}`.
`run` is synchronous and releases the GIL inside the runtime; the server calls it from threads.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

from serving.runtime.tensors import DTYPES, dtype_name

PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"
BACKENDS = ("savedmodel", "onnx")


class LoadError(RuntimeError):
    """A version directory cannot be served; the message says what is missing or broken."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    dtype: int                  # tensorflow DataType enum
    shape: tuple[int, ...]      # -1 for an unknown dimension

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype][0]

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)} [{','.join(str(s) for s in self.shape)}]"


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    proto: meta_graph_pb2.SignatureDef

    def describe(self) -> str:
        ins = ", ".join(f"{k}: {v.describe()}" for k, v in sorted(self.inputs.items()))
        return f"signature \"{self.name}\" expects inputs {{{ins}}}"


def _spec_from_tensor_info(info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    return TensorSpec(info.dtype, tuple(d.size for d in info.tensor_shape.dim))


def _tensor_info(name: str, spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=spec.dtype)
    for s in spec.shape:
        info.tensor_shape.dim.add().size = s
    return info


class SavedModelBackend:
    name = "savedmodel"

    def __init__(self, path: Path, intra_op_threads: int = 0, inter_op_threads: int = 0):
        pb = path / "saved_model.pb"
        if not pb.is_file():
            raise LoadError(f"{path} has no saved_model.pb (not a SavedModel, or half-written)")
        if not (path / "variables" / "variables.index").is_file():
            raise LoadError(f"{path} has no variables/variables.index (half-written SavedModel?)")
        from tensorflow.core.protobuf import saved_model_pb2

        saved = saved_model_pb2.SavedModel()
        try:
            saved.ParseFromString(pb.read_bytes())
        except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError or others
            raise LoadError(f"{pb} does not parse as a SavedModel: {e}") from None
        graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
        if not graphs:
            raise LoadError(f"{pb} has no meta graph tagged 'serve'")
        self.signature_defs = graphs[0].signature_def
        import tensorflow as tf

        # Run the graph through a Session callable, as TF Serving does: for small models this
        # costs far less per call than calling the restored ConcreteFunction.
        graph = tf.Graph()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                          inter_op_parallelism_threads=inter_op_threads)
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        try:
            level = tf.get_logger().level
            tf.get_logger().setLevel("ERROR")  # the v1 loader's deprecation notice
            try:
                with graph.as_default():
                    tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(path))
            finally:
                tf.get_logger().setLevel(level)
        except Exception as e:  # noqa: BLE001 - TF raises many error types for bad files
            self._session.close()
            raise LoadError(f"TensorFlow cannot load {path}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
        self._callables: dict[tuple, tuple] = {}
        self._lock = threading.Lock()
        self.signatures: dict[str, Signature] = {}
        for key, sig in self.signature_defs.items():
            if sig.method_name != PREDICT_METHOD or not sig.inputs or not sig.outputs:
                continue
            self.signatures[key] = Signature(
                key, {k: _spec_from_tensor_info(v) for k, v in sig.inputs.items()},
                {k: _spec_from_tensor_info(v) for k, v in sig.outputs.items()}, sig)

    def _callable(self, signature: str, outputs: tuple[str, ...]):
        key = (signature, outputs)
        entry = self._callables.get(key)
        if entry is None:
            with self._lock:
                sig = self.signature_defs[signature]
                feeds = sorted(sig.inputs)
                options = config_pb2.CallableOptions(
                    feed=[sig.inputs[k].name for k in feeds],
                    fetch=[sig.outputs[k].name for k in outputs])
                # Run the graph's ops in the calling thread instead of handing them to the
                # inter-op pool: for small graphs the hand-off was most of the cost (softmax:
                # 287 -> 20 us a call; deep_cnn 1.22 -> 0.94 ms; its convolutions still use
                # the intra-op pool).
                options.run_options.inter_op_thread_pool = -1
                fn = self._session._make_callable_from_options(options)
                entry = self._callables[key] = (fn, feeds)
        return entry

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = tuple(outputs) if outputs else tuple(self.signatures[signature].outputs)
        fn, feeds = self._callable(signature, names)
        return dict(zip(names, fn(*[inputs[k] for k in feeds])))

    def close(self) -> None:
        self._session.close()


_ONNX_TYPES = {"tensor(float)": types_pb2.DT_FLOAT, "tensor(double)": types_pb2.DT_DOUBLE,
               "tensor(int64)": types_pb2.DT_INT64, "tensor(int32)": types_pb2.DT_INT32,
               "tensor(uint8)": types_pb2.DT_UINT8, "tensor(bool)": types_pb2.DT_BOOL,
               "tensor(float16)": types_pb2.DT_HALF}


class OnnxBackend:
    """ONNX Runtime on the version's model.onnx, presented under the signature `serving_default`
    with the same input and output names (the exporter names them so)."""

    name = "onnx"

    def __init__(self, path: Path, intra_op_threads: int = 0):
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            raise LoadError(f"{path} has no model.onnx")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: in a server the spinning burns the
        # cores that gRPC and the other requests need (deep_cnn, 4 concurrent callers:
        # 2,754 -> 3,375 predictions/s in-process).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise LoadError(f"ONNX Runtime cannot load {onnx_path}: {e}") from None

        def specs(values):
            out = {}
            for v in values:
                if v.type not in _ONNX_TYPES:
                    raise LoadError(f"{onnx_path}: {v.name} has unsupported type {v.type}")
                shape = tuple(s if isinstance(s, int) else -1 for s in v.shape)
                out[v.name] = TensorSpec(_ONNX_TYPES[v.type], shape)
            return out

        inputs, outputs = specs(self.session.get_inputs()), specs(self.session.get_outputs())
        proto = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for k, s in inputs.items():
            proto.inputs[k].CopyFrom(_tensor_info(k, s))
        for k, s in outputs.items():
            proto.outputs[k].CopyFrom(_tensor_info(k, s))
        self.signature_defs = {DEFAULT_SIGNATURE: proto}
        self.signatures = {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, inputs, outputs, proto)}
        self._output_names = list(outputs)

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self._output_names
        return dict(zip(names, self.session.run(names, inputs)))


def load(kind: str, path: Path, intra_op_threads: int = 0, inter_op_threads: int = 0):
    """The runtime `kind` on version directory `path`. Thread counts of 0 let the runtime choose
    (one per core); ONNX Runtime has no inter-op pool in its sequential mode."""
    if kind == "savedmodel":
        return SavedModelBackend(path, intra_op_threads, inter_op_threads)
    if kind == "onnx":
        return OnnxBackend(path, intra_op_threads)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
