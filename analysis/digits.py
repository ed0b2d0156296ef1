"""Report 2, Figs 1-3: sample digits with their labels, one digit as its pixel matrix, and the
ten learned weight images of softmax_regression (positive red, negative blue, one symmetric
colour scale), with its test accuracy against the report's 91.86% (1,000 steps).

    python -m analysis.digits
    python -m analysis.digits --dataset fashion_mnist --steps 3000
"""

from __future__ import annotations

import sys

import numpy as np

from analysis import cli, measures, study_files, training_runs
from training import cli_types

NAME = "digits"


def build_parser():
    p = cli.build_parser(NAME, __doc__.split("\n\n")[0], default_model="softmax_regression",
                            model_help="a classifier whose first layer is a dense 784 -> 10")
    g = p.add_argument_group("study")
    g.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    g.add_argument("--steps", type=cli_types.positive_int, default=1000,
                   help="training steps of batch 100 (default: the report's %(default)s)")
    g.add_argument("--samples", type=cli_types.positive_int, default=32,
                   help="digits in the grid (default: %(default)s)")
    return p


def main(args) -> dict:
    cli.check_model(args.model, task="classification", dataset=args.dataset)
    if args.quick:
        args.steps = min(args.steps, 60)
    study = study_files.Study(NAME, args)
    ds = training_runs.load(args.dataset, args)
    if args.samples > len(ds.x_train):
        raise cli_types.UsageError(f"--samples {args.samples}: there are {len(ds.x_train)} "
                                "training images")
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(ds.x_train), args.samples, replace=False))
    config = training_runs.train_config(args.model, args, dataset=args.dataset, steps=args.steps,
                                 batch_size=100)
    model, records = training_runs.fit(config, ds, study=study, label=args.model)
    test = measures.evaluate(model, ds.x_test, ds.y_test, "classification")
    dense = [v for v in model.trainable_variables if tuple(v.shape) == (784, 10)]
    if not dense:
        raise cli_types.UsageError(f"{args.model} has no 784 x 10 weight matrix to draw")
    w = np.asarray(dense[0].numpy(), np.float64).T.reshape(10, 28, 28)
    pixel = int(idx[0])
    _plots(study, ds, idx, pixel, w, args)
    claims = [{"report_figure": "report 2, Figs 1-3",
               "claim": "softmax regression reaches 91.86% after 1,000 steps (92.23% after "
                        "10,000); its weights look like digit templates",
               "measured": f"{args.model} on {args.dataset}: {100 * test['accuracy']:.2f}% "
                           f"after {config.total_steps} steps of batch {config.batch_size}"}]
    return study.finish({
        "sample_indices": idx, "sample_labels": ds.y_train[idx],
        "pixel_matrix_index": pixel, "pixel_matrix_label": int(ds.y_train[pixel]),
        "pixel_matrix": ds.x_train[pixel], "weights": w, "weight_scale": float(np.abs(w).max()),
        "test": test, "steps": config.total_steps, "training": records,
    }, claims)


def _plots(study, ds, idx, pixel, w, args):
    import matplotlib.pyplot as plt

    cols = 8
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        ax.imshow(ds.x_train[i], cmap="gray_r")
        ax.set_title(str(int(ds.y_train[i])), fontsize=10)
    fig.suptitle(f"{args.dataset}: training samples with their labels")
    study.savefig(fig, "samples.png", "Report 2 Fig 1: random training images with their labels")

    fig, ax = plt.subplots(figsize=(9, 9))
    img = ds.x_train[pixel]
    ax.imshow(img, cmap="gray_r")
    for r in range(28):
        for c in range(28):
            if img[r, c]:
                ax.text(c, r, str(int(img[r, c])), ha="center", va="center", fontsize=4.5,
                        color="white" if img[r, c] > 128 else "black")
    ax.set_title(f"image {pixel} (label {int(ds.y_train[pixel])}) as its 28x28 pixel matrix")
    ax.set_xticks([])
    ax.set_yticks([])
    study.savefig(fig, "pixel_matrix.png", "Report 2 Fig 2: one image as its matrix of 0-255 "
                  "intensities (zeros left blank)")

    scale = float(np.abs(w).max())
    fig, axes = plt.subplots(2, 5, figsize=(11, 5))
    for d, ax in enumerate(axes.ravel()):
        im = ax.imshow(w[d], cmap="bwr", vmin=-scale, vmax=scale)
        ax.set_title(f"class {d}")
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="weight")
    fig.suptitle(f"{args.model}: learned weights per class (red +, blue -)")
    path = study.out_dir / "weights.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    study.figures.append({"file": "weights.png", "caption": "Report 2 Fig 3: the ten weight "
                          "images, positive red, negative blue, symmetric colour scale "
                          f"+-{scale:.3g}"})


if __name__ == "__main__":
    sys.exit(cli.run(main, build_parser()))
