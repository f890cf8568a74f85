"""Shared by the layer solver and the refit: input validation and the scaling that makes one set
of tolerances fit every layer.

The solvers work on X / sx and Y / sy (``x_scale``, ``y_scale``); everything they report is
converted back to the caller's units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.solver import gram

ACTIVATIONS = ("relu", "linear")
SOLVERS = ("admm", "pdhg")


def is_concrete(x) -> bool:
    """True when x's values can be read on this host: not traced, and not a global array
    whose shards live partly in other processes (``jax.distributed``)."""
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def check_finite(name, x):
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} contains NaN or Inf values")


def _check_number(name, value) -> None:
    """Raise a one-line ValueError unless ``value`` is a real number or an array of them."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not is_concrete(value):
        return
    try:
        kind = np.asarray(value).dtype.kind
    except (TypeError, ValueError):
        kind = "O"
    if kind not in "fiub":
        raise ValueError(f"{name} must be a real number or an array of them, got {value!r}")


def validate(X, Y, epsilon, activation, threshold, per_neuron, solver, warm_kernel_shape=None):
    """Raise a one-line ``ValueError`` for anything wrong with a layer problem (shapes, NaN/Inf,
    epsilon < 0 or of the wrong shape, an unknown activation or solver, a non-ReLU Y for the
    ReLU program, a threshold that does not broadcast, a warm-start kernel of the wrong shape).
    Value checks run only on concrete (non-traced) inputs."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if jnp.ndim(X) != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {jnp.shape(X)}")
    if jnp.ndim(Y) != 2:
        raise ValueError(f"Y must be 2-D (samples, outputs), got shape {jnp.shape(Y)}")
    (p, n), (py, m) = jnp.shape(X), jnp.shape(Y)
    if p != py:
        raise ValueError(f"X has {p} samples but Y has {py}: shapes {jnp.shape(X)} and {jnp.shape(Y)}")
    if p == 0 or n == 0 or m == 0:
        raise ValueError(f"empty problem: X {jnp.shape(X)}, Y {jnp.shape(Y)}")
    check_finite("X", X)
    check_finite("Y", Y)
    _check_number("epsilon", epsilon)
    eshape = jnp.shape(epsilon)
    if eshape not in ((), (m,)) or (eshape == (m,) and not per_neuron):
        vector = f" or an (M,) = ({m},) vector" if per_neuron else ""
        raise ValueError(f"epsilon must be a scalar{vector} (a vector needs per_neuron=True), got shape {eshape}")
    check_finite("epsilon", epsilon)
    if is_concrete(epsilon) and bool(np.any(np.asarray(epsilon) < 0)):
        raise ValueError(f"epsilon must be >= 0, got {np.asarray(epsilon)}")
    if is_concrete(Y) and activation == "relu" and bool(np.any(np.asarray(Y) < 0)):
        raise ValueError("Y has negative entries, so it is not a ReLU output; pass relu(Y) or activation='linear'")
    if threshold is not None:
        if activation != "relu":
            raise ValueError("threshold applies only to activation='relu'")
        try:
            np.broadcast_shapes(jnp.shape(threshold), (p, m))
        except ValueError:
            raise ValueError(
                f"threshold of shape {jnp.shape(threshold)} does not broadcast to Y's shape {(p, m)}"
            ) from None
        check_finite("threshold", threshold)
    if warm_kernel_shape is not None and tuple(warm_kernel_shape) != (n, m):
        raise ValueError(f"warm_start kernel has shape {tuple(warm_kernel_shape)}, expected {(n, m)}")


def x_scale(X, solver):
    """Divisor for X.  PDHG needs ||X|| <= 1 (its step sizes), so it uses the spectral norm.
    ADMM uses the root-mean-square singular value ||X||_F / sqrt(min(P, N)): the bulk of
    X's spectrum then has unit gain and the two ADMM blocks (XU = Z, U = W) are balanced
    for it.  Trained-network inputs have one dominant direction (the mean; MNIST pixels:
    sigma_max^2 is about 350 times the mean sigma^2), and scaling by sigma_max instead
    made ADMM about 5-10x slower on them."""
    tiny = jnp.finfo(X.dtype).tiny
    if solver == "pdhg":
        sx = gram.spectral_norm(X)
    else:
        sx = jnp.sqrt(jnp.sum(X * X) / min(X.shape))
    return jnp.where(sx > tiny, sx, 1)


def y_scale(Y):
    """Divisor for Y: its root-mean-square entry (1 for an all-zero Y)."""
    sy = jnp.sqrt(jnp.mean(Y * Y))
    return jnp.where(sy > jnp.finfo(Y.dtype).tiny, sy, 1)
