"""Measuring: float32 evaluation of a model whatever policy trained it, PCA, and the one rank
correlation.

Measurements run in a stated precision whatever policy trained the model: float32 (float64 where
a study says so), on `training.modeling.measurement_copy` of a mixed-precision model
(docs/ARCHITECTURE.md, "Precision"). Each JSON records both: `precision: {"training": policy,
"measurement": dtype}`.
"""

from __future__ import annotations

import numpy as np

from training import modeling


def measured(model):
    """What a measurement runs on: the model itself if it computes in float32 or float64
    throughout, else its float32 copy (`modeling.measurement_copy`; weights copied, not shared)."""
    if modeling.model_dtype(model) in ("float32", "float64"):
        return model
    return modeling.measurement_copy(model, modeling.MEASUREMENT_DTYPE)


def evaluate(model, x, y, task: str, batch_size: int = 2000, as_trained: bool = False) -> dict:
    """Loss (and accuracy for classifiers) of a model on arrays: the model's outputs in float32
    (float64 for a float64 model) on `measured(model)`, the mean loss in float64.

    `as_trained=True` runs the model as it is, in the policy it trained in: informational only
    (it differs from the measurement under a mixed policy), never to be compared as equal."""
    import keras

    model = model if as_trained else measured(model)
    losses, correct = [], 0
    loss_fn = keras.losses.get("sparse_categorical_crossentropy" if task == "classification"
                               else "mse")
    for i in range(0, len(x), batch_size):
        xb = np.asarray(x[i:i + batch_size], dtype=np.float32)
        yb = y[i:i + batch_size]
        p = np.asarray(model(xb, training=False), dtype=np.float64)
        losses.append(np.asarray(loss_fn(yb, p), dtype=np.float64).reshape(len(xb), -1).mean(1))
        if task == "classification":
            correct += int((p.argmax(1) == yb).sum())
    out = {"loss": float(np.concatenate(losses).mean())}
    if task == "classification":
        out["accuracy"] = correct / len(x)
    return out


def pca(points: np.ndarray, k: int = 2, center: np.ndarray | None = None) -> dict:
    """PCA of row vectors by SVD: `components` (k, n) unit rows, `projected` (m, k), and the
    `explained` variance ratio of every component (not only the first k), largest first.
    `center` defaults to the mean; trajectories may centre on their end point instead."""
    points = np.asarray(points, dtype=np.float64)
    c = points.mean(0) if center is None else np.asarray(center, dtype=np.float64)
    _, s, vt = np.linalg.svd(points - c, full_matrices=False)
    var = s ** 2
    return {"center": c, "components": vt[:k], "projected": (points - c) @ vt[:k].T,
            "explained": var / var.sum() if var.sum() > 0 else var}


def correlation(a, b, method: str = "spearman") -> float | None:
    """Spearman's rank correlation (ties get their average rank) or Pearson's, by scipy.stats.
    None (JSON null) when undefined: fewer than 3 pairs, or either side constant. Reports are
    strict JSON, so a correlation is never NaN; and never a made-up 0."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correlation of shapes {a.shape} and {b.shape}")
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    fn = {"spearman": stats.spearmanr, "pearson": stats.pearsonr}[method]
    return float(fn(a, b).statistic)


def format_correlation(r: float | None) -> str:
    return "undefined (constant or too few values)" if r is None else f"{r:+.2f}"
