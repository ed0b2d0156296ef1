"""The FileDescriptorSet the native plane's C++ stubs are generated from (docs/ARCHITECTURE.md,
"The native data plane"): the descriptors compiled into the installed `_pb2` modules, with
every file they import, dependencies first. No .proto file is shipped by those packages, so
protoc reads this set (`--descriptor_set_in`) instead.

    python -P serving/native/descriptors.py OUT.pb   # prints the .proto names it holds
"""

from __future__ import annotations

import importlib
import sys

from google.protobuf import descriptor_pb2

# The modules whose files (and their imports) the native plane is built from.
MODULES = (
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tritonclient.grpc.service_pb2",
)


def descriptor_set(modules=MODULES) -> descriptor_pb2.FileDescriptorSet:
    out, seen = descriptor_pb2.FileDescriptorSet(), set()

    def add(fd) -> None:
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fd.CopyToProto(out.file.add())

    for name in modules:
        add(importlib.import_module(name).DESCRIPTOR)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    fds = descriptor_set()
    with open(argv[0], "wb") as f:
        f.write(fds.SerializeToString())
    for fd in fds.file:
        print(fd.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
