"""Hessian-vector products of a Keras model's loss, and the spectral methods built on them.

The Hessian is never formed, except by `Objective.hessian()` for models small enough to have an
exact spectrum. Curvature runs in float32 or float64 whatever policy trained the model: an
Objective measures `training.modeling.measurement_copy(model, dtype)`: the model itself if it
computes in `dtype` throughout, else a copy with every layer's dtype policy replaced
(docs/ARCHITECTURE.md, "Precision").

    obj = Objective(model, "mse", x, y, dtype="float64")
    obj.hvp(v)                                  # H v (double backprop by default)
    lanczos_top(obj.hvp, obj.n, k=5)            # top eigenvalues (PyHessian's question)
    hutchinson_trace(obj.hvp, obj.n, 100)       # tr H with its standard error
    slq(obj.hvp, obj.n, runs=5, steps=60)       # eigenvalue density (with `density`)

Weight vectors are flat float64 arrays in the order of `model.trainable_variables`, each
variable raveled row-major: `flatten`, `assign_flat` and `split_flat` (numpy), `flatten_tf` and
`split_tf` (inside TensorFlow graphs) are the one definition of that layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training import modeling

METHODS = ("forward_over_reverse", "double_backprop")


# ----------------------------------------------------------------------------- flat vectors


def flatten(arrays) -> np.ndarray:
    """Variables (or arrays) -> one flat float64 vector."""
    return np.concatenate([np.asarray(_value(a), dtype=np.float64).ravel() for a in arrays])


def split_flat(flat: np.ndarray, shapes) -> list[np.ndarray]:
    """A flat vector -> arrays of `shapes` (views; the inverse of `flatten`)."""
    flat = np.asarray(flat)
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.size != sum(sizes):
        raise ValueError(f"weight vector has {flat.size} entries, the shapes {sum(sizes)}")
    return [part.reshape(s) for part, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]


def assign_flat(variables, flat: np.ndarray) -> None:
    """Assign a flat vector to variables, each in its own dtype."""
    variables = list(variables)
    for v, part in zip(variables, split_flat(flat, [tuple(v.shape) for v in variables])):
        v.assign(part.astype(v.dtype))


def flatten_tf(tensors):
    """`flatten` inside a TensorFlow graph (no dtype change)."""
    import tensorflow as tf

    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def split_tf(flat, shapes) -> list:
    """`split_flat` inside a TensorFlow graph."""
    import tensorflow as tf

    sizes = [int(np.prod(s)) for s in shapes]
    return [tf.reshape(t, s) for t, s in zip(tf.split(flat, sizes), shapes)]


def _value(a):
    return a.numpy() if hasattr(a, "numpy") else a


# ----------------------------------------------------------------------------- the operator


class Objective:
    """Mean loss of a model on fixed data, as a function of its trainable weights.

    It measures `modeling.measurement_copy(model, dtype)`: the model itself when it already
    computes in `dtype` (then the two share their weights), else a copy in `dtype`. Vectors are
    flat float64 numpy arrays of length `n` (see `flatten`). Counters `loss_evaluations`,
    `gradients`, `hvps` count full passes over the data.
    """

    def __init__(self, model, loss: str | Callable, x, y, *, dtype: str = "float64",
                 batch_size: int | None = None, method: str = "double_backprop"):
        import keras
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.dtype = dtype
        self.model = modeling.measurement_copy(model, dtype)
        self.params = list(self.model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.params]
        self.n = int(sum(np.prod(s) for s in self.shapes))
        loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
        self.method = method
        x = np.asarray(x)
        y = np.asarray(y)
        bs = batch_size or len(x)
        self.batches = []
        for i in range(0, len(x), bs):
            yb = y[i:i + bs]
            yb = yb.astype(dtype) if np.issubdtype(yb.dtype, np.floating) else yb
            self.batches.append((tf.constant(x[i:i + bs], dtype=dtype), tf.constant(yb)))
        self.weights = np.array([len(b[0]) for b in self.batches], dtype=np.float64) / len(x)
        self.loss_evaluations = self.gradients = self.hvps = 0

        model_ = self.model
        params = self.params

        def mean_loss(xb, yb):
            return tf.reduce_mean(loss_fn(yb, model_(xb, training=False)))

        self.mean_loss = mean_loss  # traceable: (x batch, y batch) -> mean loss
        self._loss = tf.function(mean_loss, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def grad(xb, yb):
            with tf.GradientTape() as tape:
                value = mean_loss(xb, yb)
            return value, flatten_tf(tape.gradient(value, params))

        self._grad = grad
        self._hvp = tf.function(
            lambda xb, yb, v: hvp_tf(mean_loss, params, xb, yb, v, method),
            reduce_retracing=True,
        )

    # --- the weights measured, as one flat vector
    def get_flat(self) -> np.ndarray:
        return flatten(self.params)

    def set_flat(self, w: np.ndarray) -> None:
        assign_flat(self.params, w)

    # --- the three quantities
    def loss(self) -> float:
        self.loss_evaluations += 1
        return float(sum(w * float(self._loss(xb, yb))
                         for w, (xb, yb) in zip(self.weights, self.batches)))

    def value_and_gradient(self) -> tuple[float, np.ndarray]:
        self.gradients += 1
        value, g = 0.0, np.zeros(self.n)
        for w, (xb, yb) in zip(self.weights, self.batches):
            lb, gb = self._grad(xb, yb)
            value += w * float(lb)
            g += w * np.asarray(gb, np.float64)
        return value, g

    def gradient(self) -> np.ndarray:
        return self.value_and_gradient()[1]

    def hvp(self, v: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        self.hvps += 1
        vt = tf.constant(np.asarray(v, dtype=self.dtype))
        out = np.zeros(self.n)
        for w, (xb, yb) in zip(self.weights, self.batches):
            out += w * np.asarray(self._hvp(xb, yb, vt), np.float64)
        return out

    def hessian(self, max_n: int = 5000) -> np.ndarray:
        """The dense Hessian (symmetrised), for small models only."""
        import tensorflow as tf

        if self.n > max_n:
            raise ValueError(f"{self.n} parameters: too many for a dense Hessian (max {max_n})")
        params, mean_loss = self.params, self.mean_loss

        @tf.function
        def jac(xb, yb):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = mean_loss(xb, yb)
                g = flatten_tf(inner.gradient(value, params))
            blocks = outer.jacobian(g, params, experimental_use_pfor=True)
            return tf.concat([tf.reshape(b, [self.n, -1]) for b in blocks], axis=1)

        h = np.zeros((self.n, self.n))
        for w, (xb, yb) in zip(self.weights, self.batches):
            h += w * np.asarray(jac(xb, yb), np.float64)
        self.hvps += self.n  # what it costs, in HVP-equivalents
        return 0.5 * (h + h.T)

    def costs(self) -> dict:
        return {"loss_evaluations": self.loss_evaluations, "gradients": self.gradients,
                "hvps": self.hvps}


def hvp_tf(mean_loss, params, xb, yb, v, method="forward_over_reverse"):
    """H v in TensorFlow (traceable): v a flat tensor; returns a flat tensor.

    forward_over_reverse: a forward-mode JVP of the reverse-mode gradient (one extra forward
    pass over the backward graph); double_backprop: the gradient of <grad, v>."""
    import tensorflow as tf

    tangents = split_tf(v, [tuple(p.shape) for p in params])
    params = [getattr(p, "value", p) for p in params]  # Keras 3 variables -> tf.Variable
    if method == "forward_over_reverse":
        with tf.autodiff.ForwardAccumulator(params, tangents) as acc:
            with tf.GradientTape() as tape:
                value = mean_loss(xb, yb)
            grads = tape.gradient(value, params)
        out = acc.jvp(grads, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    else:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = mean_loss(xb, yb)
            grads = inner.gradient(value, params)
            dot = tf.add_n([tf.reduce_sum(g * t) for g, t in zip(grads, tangents)])
        out = outer.gradient(dot, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return flatten_tf(out)


# ----------------------------------------------------------------------------- Lanczos


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], n: int, steps: int,
            rng: np.random.Generator, store_dtype=np.float64, tol: float = 1e-10,
            stop: Callable[[np.ndarray, np.ndarray], bool] | None = None):
    """The one Lanczos iteration: up to `steps` steps from a random unit vector (drawn from
    `rng`), with full reorthogonalisation; the basis is stored in `store_dtype`.

    Returns (alpha, beta) with len(beta) == len(alpha): alpha is T's diagonal, beta[i] couples
    steps i and i+1, and beta[-1] is the norm of the residual left after the last step (the
    Ritz values' error bounds are |beta[-1] s_mi|). After every step `stop(alpha, beta)` is
    called with T so far and may end the iteration by returning True. It also ends after
    `steps` steps, or on an invariant subspace (residual <= tol x the size of T so far)."""
    steps = min(steps, n)
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    basis = np.zeros((steps, n), dtype=store_dtype)
    alpha, beta = [], []
    for j in range(steps):
        basis[j] = v
        w = matvec(v)
        a = float(w @ v)
        alpha.append(a)
        w = w - a * v
        if j > 0:
            w = w - beta[-1] * basis[j - 1].astype(np.float64)
        # Full reorthogonalisation, twice (classical Gram-Schmidt is stable when repeated).
        done = basis[: j + 1].astype(np.float64, copy=False)
        for _ in range(2):
            w = w - done.T @ (done @ w)
        b = float(np.linalg.norm(w))
        beta.append(b)
        size = max(max(abs(x) for x in alpha), max(beta[:-1], default=0.0))
        stopped = stop is not None and stop(np.array(alpha), np.array(beta))
        if stopped or j == steps - 1 or b <= tol * size:
            break
        v = w / b
    return np.array(alpha), np.array(beta)


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray):
    """Eigenvalues (ascending) and eigenvectors of T (only beta[:len(alpha) - 1] enter)."""
    k = len(alpha)
    t = np.diag(alpha) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    return np.linalg.eigh(t)


def ritz_top(alpha: np.ndarray, beta: np.ndarray, k: int) -> dict:
    """The k largest Ritz values of T, largest first, with their residual bounds
    |beta[-1] s_mi| (each lies within its bound of an eigenvalue), and the smallest one."""
    theta, s = tridiagonal_eigh(alpha, beta)
    kk = min(k, len(alpha))
    return {"top": theta[::-1][:kk], "residuals": np.abs(beta[-1] * s[-1, ::-1][:kk]),
            "smallest": float(theta[0]), "scale": max(float(np.abs(theta).max()), 1e-30)}


def lanczos_top(matvec, n: int, k: int = 5, steps: int | None = None, seed: int = 0,
                rtol: float = 1e-4, store_dtype=np.float64, progress=None) -> dict:
    """Top-k (largest algebraic) eigenvalues by `lanczos`; stops when the k largest Ritz values'
    residual bounds fall below rtol * |lambda_max|. Also returns the smallest Ritz value (the
    most negative curvature found)."""
    steps = min(n, steps or max(4 * k, 30))
    history = []

    def converged(alpha, beta) -> bool:
        r = ritz_top(alpha, beta, k)
        history.append({"step": len(alpha), "top": r["top"].tolist(),
                        "residual": r["residuals"].tolist()})
        if progress:
            progress(len(alpha), steps, f"lambda_max {r['top'][0]:.6g} "
                     f"residual {r['residuals'][0]:.2e}")
        return len(alpha) >= k and r["residuals"].max() <= rtol * r["scale"]

    alpha, beta = lanczos(matvec, n, steps, np.random.default_rng(seed), store_dtype,
                          stop=converged)
    r = ritz_top(alpha, beta, k)
    return {"eigenvalues": r["top"], "residuals": r["residuals"], "smallest": r["smallest"],
            "steps": len(alpha), "hvps": len(alpha), "history": history}


# ----------------------------------------------------------------------------- trace, density


def hutchinson_trace(matvec, n: int, samples: int, seed: int = 0, progress=None) -> dict:
    """tr H ~ mean of v^T H v over Rademacher v; standard error from the sample spread."""
    rng = np.random.default_rng(seed)
    values = []
    for i in range(samples):
        v = rng.choice([-1.0, 1.0], size=n)
        values.append(float(v @ matvec(v)))
        if progress and (i + 1) % max(1, samples // 10) == 0:
            progress(i + 1, samples, f"trace ~ {np.mean(values):.6g}")
    values = np.array(values)
    stderr = float(values.std(ddof=1) / np.sqrt(samples)) if samples > 1 else float("inf")
    running = np.cumsum(values) / np.arange(1, samples + 1)
    return {"trace": float(values.mean()), "stderr": stderr, "samples": values,
            "running_mean": running, "hvps": samples}


def hutchinson_variance(h: np.ndarray) -> float:
    """Exact variance of one Rademacher sample v^T H v: 2 (||H||_F^2 - sum_i H_ii^2)."""
    return float(2.0 * ((h * h).sum() - (np.diag(h) ** 2).sum()))


def slq(matvec, n: int, runs: int, steps: int, seed: int = 0, progress=None) -> dict:
    """Stochastic Lanczos quadrature (Ubaru et al. 2017; PyHessian's density): per run, the
    Ritz values of `steps` Lanczos steps from a random unit vector, weighted by the squared
    first components of their eigenvectors. Weights of each run sum to 1."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for r in range(runs):
        alpha, beta = lanczos(matvec, n, steps, rng)
        theta, s = tridiagonal_eigh(alpha, beta)
        nodes.append(theta)
        weights.append(s[0] ** 2)
        if progress:
            progress(r + 1, runs, f"{len(alpha)} Lanczos steps, range "
                     f"[{theta.min():.4g}, {theta.max():.4g}]")
    return {"nodes": nodes, "weights": weights, "runs": runs,
            "hvps": int(sum(len(t) for t in nodes))}


def density(nodes, weights, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed spectral density on `grid`, averaged over SLQ runs (integrates to 1)."""
    out = np.zeros_like(grid, dtype=np.float64)
    for t, w in zip(nodes, weights):
        out += (w[None, :] * np.exp(-((grid[:, None] - t[None, :]) ** 2) / (2 * sigma**2))).sum(1)
    return out / (len(nodes) * sigma * np.sqrt(2 * np.pi))


def eigen_counts(eigenvalues: np.ndarray, tol: float) -> dict:
    """Counts of eigenvalues above +tol, below -tol and inside the band [-tol, tol]."""
    ev = np.asarray(eigenvalues)
    pos, neg = int((ev > tol).sum()), int((ev < -tol).sum())
    return {"positive": pos, "negative": neg, "near_zero": int(ev.size - pos - neg),
            "tolerance": float(tol)}
