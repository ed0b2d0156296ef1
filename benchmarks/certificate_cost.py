"""What checking a version against its certificate adds to loading it:
serving.repository.certificate.verify (sha256 and size of every file) against the server's own
load of the same version, medians.

    python -m benchmarks.certificate_cost exported_models/deep_cnn/1 [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import machine
from serving import quiet
from serving.repository import certificate
from serving.runtime import backends


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.certificate_cost",
                                description=__doc__.split("\n\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("version_dir", type=Path, help="an exported version, e.g. exported_models/"
                   "deep_cnn/1")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    print(machine(), flush=True)
    doc = certificate.verify(args.version_dir)
    size = sum(e["bytes"] for e in doc["files"].values())
    verify = median_seconds(lambda: certificate.verify(args.version_dir), args.repeats)
    print(f"{doc['name']} v{doc['version']}: {len(doc['files'])} files, {size / 1e6:.1f} MB")
    for kind in backends.BACKENDS:
        def load(kind=kind):
            backend = backends.load(kind, args.version_dir, 0, 0)
            getattr(backend, "close", lambda: None)()
        seconds = median_seconds(load, max(3, args.repeats // 2))
        print(f"verify {verify * 1e3:7.1f} ms   {kind:10s} load {seconds * 1e3:7.1f} ms   "
              f"verify / load {verify / seconds:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
