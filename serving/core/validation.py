"""Checking a PredictRequest against the signature it names, before any work is done (what
TF Serving's predict_util.cc does): signature name, input names, dtypes, shapes, one batch size
across inputs, the output filter, and how many elements the request asks for.

Codes, as TF Serving answers: an unknown signature is FAILED_PRECONDITION; everything else that
does not match is INVALID_ARGUMENT. Shapes and the element count are read from the message and
checked before a tensor is built, because one `float_val` fills a whole tensor: a 58-byte
request for [1000000, 28, 28] would otherwise allocate 3 GB before it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving.core import limits
from serving.core.errors import ServingError, invalid
from serving.runtime import backends, tensors


def signature(model: str, version: int, signatures: dict[str, backends.Signature],
              name: str) -> backends.Signature:
    """The signature `name` ("": the default one); FAILED_PRECONDITION if there is none."""
    name = name or backends.DEFAULT_SIGNATURE
    sig = signatures.get(name)
    if sig is None:
        raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Serving signature key \"{name}\" not found. Model {model} "
                           f"version {version} has signatures {{{','.join(sorted(signatures))}}}.")
    return sig


class InputCheck:
    """What both protocols check of each input in turn, once its name and dtype match: its shape
    against the signature's, the elements of the request so far against the limit, and one batch
    size across batched inputs. Each protocol words what the signature expects (`expects()`)."""

    def __init__(self, max_elements: int):
        self.max_elements, self.elements, self.batch = max_elements, 0, None

    def shape(self, name: str, shape, spec: backends.TensorSpec,
              expects: Callable[[], str]) -> None:
        if len(shape) != len(spec.shape) or any(
                e != -1 and e != g for e, g in zip(spec.shape, shape)):
            raise invalid(f"input \"{name}\" has shape [{','.join(map(str, shape))}] but "
                          f"{expects()}")
        self.elements += math.prod(shape)
        if self.elements > self.max_elements:
            raise invalid(f"the request asks for {self.elements} elements (input \"{name}\" has "
                          f"shape [{','.join(map(str, shape))}]), more than the "
                          f"{self.max_elements} a request may hold (--max_request_elements)")
        if spec.shape and spec.shape[0] == -1:
            if self.batch is not None and shape[0] != self.batch:
                raise invalid(f"input \"{name}\" has batch size {shape[0]} but another input "
                              f"has {self.batch}; all inputs must have the same batch size")
            self.batch = shape[0]


class Prepared(NamedTuple):
    signature: backends.Signature
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # the output filter, or None for every output


def prepare(model: str, version: int, signatures: dict[str, backends.Signature],
            request: predict_pb2.PredictRequest, arrays: dict[str, np.ndarray] | None = None,
            max_elements: int = limits.DEFAULT_MAX_REQUEST_ELEMENTS) -> Prepared:
    """The signature, input arrays and output filter of a valid request; ServingError if it is
    not valid. `arrays` replaces request.inputs when the caller (REST) has decoded them already.
    """
    sig = signature(model, version, signatures, request.model_spec.signature_name)
    given = set(arrays) if arrays is not None else set(request.inputs)
    expected = set(sig.inputs)
    if given != expected:
        raise invalid(
            f"input size does not match signature: {len(given)}!={len(expected)} "
            f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(given - expected))}}}. Missing but required: "
            f"{{{','.join(sorted(expected - given))}}}. ({sig.describe()})")
    inputs, check = {}, InputCheck(max_elements)
    for name, spec in sig.inputs.items():
        proto = None
        if arrays is not None:
            shape = arrays[name].shape
        else:
            proto = request.inputs[name]
            if proto.dtype != spec.dtype:
                raise invalid(f"input \"{name}\" has dtype {tensors.dtype_name(proto.dtype)} "
                              f"but {sig.describe()}")
            try:
                shape = tensors.shape_of(proto)
            except tensors.TensorError as e:
                raise invalid(f"input \"{name}\": {e}") from None
        check.shape(name, shape, spec, sig.describe)
        if proto is None:
            inputs[name] = arrays[name]
        else:
            try:
                inputs[name] = tensors.to_ndarray(proto)
            except tensors.TensorError as e:
                raise invalid(f"input \"{name}\": {e}") from None
    return Prepared(sig, inputs, _output_filter(request, sig))


def _output_filter(request: predict_pb2.PredictRequest,
                   sig: backends.Signature) -> list[str] | None:
    if not request.output_filter:
        return None
    seen = set()
    for alias in request.output_filter:
        if alias not in sig.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs "
                          f"expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(request.output_filter)
