"""The client CLI for a TF-Serving-compatible server (ours or the real tensorflow_model_server).

    python -m serving.client list
    python -m serving.client status MODEL
    python -m serving.client metadata MODEL
    python -m serving.client predict MODEL --mnist-test 32
    python -m serving.client predict MODEL --image digit.png
    python -m serving.client --protocol v2 predict MODEL --mnist-test 32   (any v2 server)

The clients themselves are serving/clients/ (docs/ARCHITECTURE.md, "Serving in layers").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from serving import quiet
from serving.clients.errors import ClientError
from serving.clients.open_inference import V2Client
from serving.clients.tf_serving import DEFAULT_ADDRESS, DEFAULT_REST, ZooClient
from serving.core import limits
from serving.transports import auth


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
    g.add_argument("--max-message-bytes", type=int, default=limits.MAX_REQUEST_BYTES)
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
            try:
                token = auth.read_token(args.token_file, "--token-file")
            except ValueError as e:
                raise ClientError("INVALID_ARGUMENT", str(e)) from None
        if args.protocol == "v2":
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
        statuses, planes = (client.status(args.model, **kw), {}) if v2 else \
            client.status_with_planes(args.model, **kw)
        for s in statuses:
            plane = planes.get(s["version"])
            print(f"{args.model} v{s['version']}: {s['state']}"
                  + (f" ({s['error']})" if s["error"] else "")
                  + (f"; data plane {plane}" if plane else ""))
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
    sys.exit(main())
