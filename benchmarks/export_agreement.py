"""How exactly do the exported SavedModel and ONNX graphs reproduce Keras?

    python -m benchmarks.export_agreement [--models softmax_regression deep_cnn] [--steps 300]

Trains each model briefly (agreement does not depend on accuracy), exports it, then runs 1,000
real test images the export check never saw through Keras, the SavedModel and ONNX Runtime, each
at two batch sizes. Target: max |difference| <= 1e-5 and identical classes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine, table
from serving import quiet


def main() -> None:
    import keras

    import zoo
    from training import data, export, precision
    from training.config import resolve_config
    from training.train import train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("--models", nargs="+", default=["softmax_regression", "mlp_128", "deep_cnn"])
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    print(machine(), flush=True)
    rows = []
    for name in args.models:
        spec = zoo.get_spec(name)
        ds = data.load_dataset(spec.dataset)
        config = resolve_config(name, precision_requested="float32", precision="float32",
                                precision_reason="benchmark", train_size=len(ds.x_train),
                                steps=args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            precision.apply("float32")
            summary = train(config, Path(tmp) / "run", ds, export_dir=Path(tmp) / "exports")
            version = Path(summary["export"])
            meta = json.loads((version / "metadata.json").read_text())
            model = keras.models.load_model(Path(tmp) / "run" / "model.keras")
            x = data.as_float_inputs(ds.x_test[-1000:])  # not the images the export check used
            expected = model.predict(x, batch_size=250, verbose=0)
            out = export.output_names(spec.task)[0]
            for runtime, runner, target in (("savedmodel", export.run_savedmodel, version),
                                            ("onnx", export.run_onnx, version / "model.onnx")):
                worst, same = 0.0, True
                for batch_size in (1000, 7):
                    got = runner(target, x, batch_size)
                    worst = max(worst, float(np.abs(got[out] - expected).max()))
                    if spec.task == "classification":
                        same &= bool(np.array_equal(got["classes"], expected.argmax(-1)))
                rows.append((name, runtime, f"{worst:.2e}",
                             f"{meta['agreement']['max_abs_diff'][runtime]:.2e}",
                             "yes" if same else "NO", "yes" if worst <= 1e-5 else "NO"))
                print(rows[-1], flush=True)
    print("\nExport agreement on 1,000 held-out test images, batch sizes 1000 and 7")
    print(table(rows, ("model", "runtime", "max |diff|", "at export", "same classes",
                       "<= 1e-5")))


if __name__ == "__main__":
    main()
