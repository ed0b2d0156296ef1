"""The ModelSpec a request names, from the version string it carries (a REST path segment, v2's
`model_version`): the one home for that step, which both protocols call. Each protocol maps
BadVersion to its own refusal (TF Serving's REST: 404 for a non-number, 400 out of range, as
TF Serving answers; v2: 400), so the wording and status codes stay the protocol's.
"""

from __future__ import annotations

from tensorflow_serving.apis import model_pb2

from serving.repository import versions


class BadVersion(ValueError):
    """A request's version string names no version: `number` is False when it is not ASCII
    decimal digits, True when it is a number beyond versions.MAX_VERSION."""

    def __init__(self, text: str, number: bool):
        super().__init__(text)
        self.text = text
        self.number = number


def model_spec(name: str, version: str | None = None,
               label: str | None = None) -> model_pb2.ModelSpec:
    """The ModelSpec of model `name` at version string `version` (None: no version), else at
    `label` (None: the latest version); BadVersion if `version` names no version."""
    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        try:
            spec.version.value = versions.requested(version)
        except versions.NotANumber:
            raise BadVersion(version, number=False) from None
        except ValueError:
            raise BadVersion(version, number=True) from None
    elif label is not None:
        spec.version_label = label
    return spec
