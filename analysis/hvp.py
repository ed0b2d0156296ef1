"""Hessian-vector products of a Keras model's loss, and the spectral methods built on them.

The Hessian is never formed, except by `Objective.hessian()` for models small enough to have an
exact spectrum. Curvature runs in float32 or float64 whatever policy trained the model:
`cast_model` rebuilds a model from its config with every layer's dtype policy replaced.

    obj = Objective(model, "mse", x, y, dtype="float64")
    obj.hvp(v)                                  # H v, one forward-over-reverse pass
    lanczos_top(obj.hvp, obj.n, k=5)            # top eigenvalues (PyHessian's question)
    hutchinson_trace(obj.hvp, obj.n, 100)       # tr H with its standard error
    slq_density(obj.hvp, obj.n, runs=5, steps=60)  # eigenvalue density
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

METHODS = ("forward_over_reverse", "double_backprop")


# ----------------------------------------------------------------------------- models


def cast_model(model, dtype: str = "float64"):
    """A copy of a functional/sequential Keras model computing entirely in `dtype` (layers
    pinned to float32 for mixed precision included), with the same weights."""
    config = copy.deepcopy(model.get_config())

    def walk(o):
        if isinstance(o, dict):
            if str(o.get("class_name", "")).endswith("DTypePolicy"):
                o["class_name"] = "DTypePolicy"
                o["config"] = {"name": dtype}
                return
            for k, v in o.items():
                if k == "dtype" and isinstance(v, str):
                    o[k] = dtype
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(config)
    clone = model.__class__.from_config(config)
    weights = [np.asarray(w) for w in model.get_weights()]
    clone.set_weights([w.astype(dtype) if np.issubdtype(w.dtype, np.floating) else w
                       for w in weights])
    if not all(v.dtype == dtype for v in clone.trainable_variables):
        raise ValueError(f"could not rebuild {model.name} in {dtype}")
    return clone


# ----------------------------------------------------------------------------- the operator


class Objective:
    """Mean loss of a model on fixed data, as a function of its trainable weights.

    Vectors are flat float64 numpy arrays of length `n` in `model.trainable_variables` order.
    Counters `loss_evaluations`, `gradients`, `hvps` count full passes over the data.
    """

    def __init__(self, model, loss: str | Callable, x, y, *, dtype: str = "float64",
                 batch_size: int | None = None, method: str = "double_backprop"):
        import keras
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.dtype = dtype
        self.model = cast_model(model, dtype) if _model_dtype(model) != dtype else model
        self.params = list(self.model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.params]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.n = int(sum(self.sizes))
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

        self._mean_loss = mean_loss
        self._loss = tf.function(mean_loss, reduce_retracing=True)

        @tf.function(reduce_retracing=True)
        def grad(xb, yb):
            with tf.GradientTape() as tape:
                value = mean_loss(xb, yb)
            return value, self._flat(tape.gradient(value, params))

        self._grad = grad
        self._hvp = tf.function(
            lambda xb, yb, v: hvp_tf(mean_loss, params, xb, yb, v, self.sizes, self.shapes,
                                     method),
            reduce_retracing=True,
        )

    # --- flat vectors <-> variables
    @staticmethod
    def _flat(tensors):
        import tensorflow as tf

        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def get_flat(self) -> np.ndarray:
        return np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in self.params])

    def set_flat(self, w: np.ndarray) -> None:
        for v, part in zip(self.params, np.split(np.asarray(w), np.cumsum(self.sizes)[:-1])):
            v.assign(part.reshape(v.shape).astype(self.dtype))

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
        params, mean_loss = self.params, self._mean_loss

        @tf.function
        def jac(xb, yb):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = mean_loss(xb, yb)
                g = self._flat(inner.gradient(value, params))
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


def _model_dtype(model) -> str:
    dtypes = {v.dtype for v in model.trainable_variables}
    return dtypes.pop() if len(dtypes) == 1 else "mixed"


def hvp_tf(mean_loss, params, xb, yb, v, sizes, shapes, method="forward_over_reverse"):
    """H v in TensorFlow (traceable): v a flat tensor; returns a flat tensor.

    forward_over_reverse: a forward-mode JVP of the reverse-mode gradient (one extra forward
    pass over the backward graph); double_backprop: the gradient of <grad, v>."""
    import tensorflow as tf

    tangents = [tf.reshape(t, s) for t, s in zip(tf.split(v, sizes), shapes)]
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
    return tf.concat([tf.reshape(o, [-1]) for o in out], axis=0)


# ----------------------------------------------------------------------------- Lanczos


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], n: int, steps: int,
            rng: np.random.Generator, store_dtype=np.float64, tol: float = 1e-10):
    """`steps` Lanczos iterations with full reorthogonalisation. Returns (alpha, beta) of the
    tridiagonal T (beta[i] couples i and i+1); stops early on an invariant subspace."""
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
        w = w - a * v - (beta[-1] * basis[j - 1] if j > 0 else 0.0)
        # Full reorthogonalisation, twice (classical Gram-Schmidt is stable when repeated).
        for _ in range(2):
            w = w - basis[: j + 1].T.astype(np.float64) @ (basis[: j + 1].astype(np.float64) @ w)
        b = float(np.linalg.norm(w))
        if j == steps - 1:
            beta.append(b)
            break
        if b < tol * max(1.0, abs(a)):
            beta.append(b)
            break
        beta.append(b)
        v = w / b
    return np.array(alpha), np.array(beta)


def tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray):
    k = len(alpha)
    t = np.diag(alpha) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1)
    return np.linalg.eigh(t)


def lanczos_top(matvec, n: int, k: int = 5, steps: int | None = None, seed: int = 0,
                rtol: float = 1e-4, store_dtype=np.float64, progress=None) -> dict:
    """Top-k (largest algebraic) eigenvalues by Lanczos; stops when the k largest Ritz values'
    residual bounds |beta_m s_mi| fall below rtol * |lambda_max|. Also returns the smallest
    Ritz value (the most negative curvature found)."""
    rng = np.random.default_rng(seed)
    steps = min(n, steps or max(4 * k, 30))
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    basis = np.zeros((steps, n), dtype=store_dtype)
    alpha, beta = [], []
    history = []
    theta = s = None
    for j in range(steps):
        basis[j] = v
        w = matvec(v)
        a = float(w @ v)
        alpha.append(a)
        if j > 0:
            w = w - beta[-1] * basis[j - 1].astype(np.float64)
        w = w - a * v
        for _ in range(2):
            b64 = basis[: j + 1].astype(np.float64)
            w = w - b64.T @ (b64 @ w)
        b = float(np.linalg.norm(w))
        theta, s = tridiagonal_eigh(np.array(alpha), np.array(beta + [b]))
        kk = min(k, j + 1)
        resid = np.abs(b * s[-1, ::-1][:kk])
        top = theta[::-1][:kk]
        history.append({"step": j + 1, "top": top.tolist(), "residual": resid.tolist()})
        if progress:
            progress(j + 1, steps, f"lambda_max {top[0]:.6g} residual {resid[0]:.2e}")
        scale = max(abs(theta).max(), 1e-30)
        if (j + 1 >= k and resid.max() <= rtol * scale) or b < 1e-12 * scale:
            break
        beta.append(b)
        v = w / b
    top = theta[::-1][:k]
    return {"eigenvalues": top, "residuals": np.abs(b * s[-1, ::-1][: len(top)]),
            "smallest": float(theta[0]), "steps": len(alpha), "hvps": len(alpha),
            "history": history}


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
