"""Measure an export on its test set, in the runtime a deployment would use.

    python -m training.evaluate exported_models/deep_cnn/1 [--runtime savedmodel|onnx]

The dataset and task come from the version's metadata.json; nothing of the training run is needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from serving import quiet
from serving.repository import certificate
from training import cli_types, data, data_paths
from training.export import run_onnx, run_savedmodel

RUNNERS = {"savedmodel": run_savedmodel, "onnx": run_onnx}


def evaluate_export(version_dir: Path, runtime: str = "savedmodel", limit: int | None = None,
                    data_dir: Path | None = None, batch_size: int = 500,
                    allow_other_data: bool = False) -> dict:
    """Verify the version against its certificate, then measure it (CertificateError first:
    a tampered or incomplete version is never run). The data must be the certificate's (the
    same sha256), unless `allow_other_data`: then `other_data` holds both hashes."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise FileNotFoundError(f"{version_dir} is not a directory (expected "
                                "exported_models/NAME/VERSION)")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    meta = certificate.verify(version_dir)
    config = meta["training"]["config"]
    (inputs,) = meta["signature"]["inputs"].values()
    dataset = data_paths.load_dataset(meta["data"]["dataset"], data_dir, seed=config["seed"],
                                task=meta["task"], input_shape=tuple(inputs["shape"][1:]),
                                test_fraction=config.get("test_fraction"),
                                skip_unreadable=config.get("skip_unreadable", False))
    certified = meta["data"]["sha256"]
    other = None
    if dataset.sha256 != certified:
        # Other data (changed files, another copy, a path's new images): a measurement on them
        # would not compare with the certificate's.
        other = {"found": dataset.sha256, "certified": certified, "source": dataset.source}
        if not allow_other_data:
            raise data.DataSourceError(
                f"{meta['data']['dataset']} is not the data this version was certified on "
                f"(sha256 {dataset.sha256[:12]} from {dataset.source}, certificate "
                f"{certified[:12]}): give those data (--data-dir), or --allow-other-data to "
                "measure these anyway")
    x, y = data.as_float_inputs(dataset.x_test[:limit]), dataset.y_test[:limit]
    target = version_dir / "model.onnx" if runtime == "onnx" else version_dir
    start = time.perf_counter()
    out = RUNNERS[runtime](target, x, batch_size)
    seconds = time.perf_counter() - start
    result = {"model": meta["name"], "version": meta["version"], "runtime": runtime,
              "examples": int(len(x)), "seconds": seconds}
    if meta["task"] == "classification":
        result["accuracy"] = float(np.mean(out["classes"] == y))
    else:
        result["mse"] = float(np.mean((out["y"] - y) ** 2))
    result["certificate"] = meta["test_metrics"]
    if other is not None:
        result["other_data"] = other
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate",
                                description="Test-set accuracy (or MSE) of an exported version.")
    quiet.add_verbose_flag(p)
    p.add_argument("version_dir", type=Path, help="exported_models/NAME/VERSION")
    p.add_argument("--runtime", choices=sorted(RUNNERS), default="savedmodel")
    p.add_argument("--limit", type=cli_types.positive_int,
                   help="evaluate on the first N test examples")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--allow-other-data", action="store_true",
                   help="measure on data whose sha256 is not the certificate's (both printed)")
    args = p.parse_args(argv)
    try:
        r = evaluate_export(args.version_dir, args.runtime, args.limit, args.data_dir,
                            allow_other_data=args.allow_other_data)
    except (FileNotFoundError, data.DataSourceError, certificate.CertificateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "other_data" in r:
        o = r["other_data"]
        print(f"warning: measuring on other data than the certificate's: sha256 {o['found']} "
              f"({o['source']}), certificate {o['certified']}", file=sys.stderr)
    metric = "accuracy" if "accuracy" in r else "mse"
    cert = r["certificate"]
    certified = cert.get(metric, cert["loss"])
    print(f"{r['model']} v{r['version']} ({r['runtime']}): {metric} {r[metric]:.4f} on "
          f"{r['examples']} test examples in {r['seconds']:.2f} s "
          f"(certificate: {metric} {certified:.4f} on {cert['examples']} test examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
