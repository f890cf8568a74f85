"""The one linear system ADMM solves each iteration, factored once.

ADMM's U-update solves (X^T X + I) U = X^T B + C.  The matrix does not depend on the
penalty rho, so it is inverted once per layer and every later iteration (whatever rho
does) costs two products with X and one with a small square matrix.  X arrives scaled to
unit root-mean-square singular value, so the matrix has eigenvalues in
[1, 1 + sigma_max^2 / sigma_rms^2] (about 350 for MNIST inputs): its explicit inverse is
accurate to that condition number times the unit roundoff, in float32 too, and applies as
one GEMM instead of two triangular solves.

Tall X (N <= P) inverts the N x N matrix X^T X + I; wide X (N > P) inverts the P x P
matrix I + X X^T and uses the push-through identity, so memory is min(N, P)^2.

On the CPU backend X^T is also stored, contiguously: XLA:CPU otherwise transposes X (a
full P x N copy) for every product with X^T inside the loop.  On an MNIST layer (P = 1000,
N = 785, M = 20) that copy was 20% of an iteration.  GPU and TPU GEMMs read a transposed
operand in place, so there X is stored once.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Gram(NamedTuple):
    """The factored system for a scaled X.

    Attributes:
      x: (P, N) scaled inputs.
      inverse: (N, N) (X^T X + I)^-1 when tall, (P, P) (I + X X^T)^-1 when wide.
      xt: (N, P) X^T, from ``transposed`` (a contiguous copy on CPU).
    """

    x: jnp.ndarray
    inverse: jnp.ndarray
    xt: jnp.ndarray

    @property
    def wide(self) -> bool:
        return self.x.shape[1] > self.x.shape[0]


def spectral_norm(x: jnp.ndarray, iters: int = 30) -> jnp.ndarray:
    """Largest singular value of x (P, N) by power iteration on its smaller Gram matrix."""
    p, n = x.shape
    gram = x.T @ x if n <= p else x @ x.T
    v = jnp.ones((gram.shape[0],), x.dtype) / jnp.sqrt(jnp.asarray(gram.shape[0], x.dtype))

    def step(v, _):
        w = gram @ v
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(x.dtype).tiny), None

    v, _ = jax.lax.scan(step, v, None, length=iters)
    # A power-iteration estimate is a lower bound; the trace bound caps it from above.
    estimate = jnp.sqrt(jnp.maximum(v @ (gram @ v), 0))
    return jnp.minimum(estimate * 1.01, jnp.sqrt(jnp.trace(gram)))


def transposed(x: jnp.ndarray) -> jnp.ndarray:
    """X^T for products inside the solver loops: on the CPU backend a contiguous copy (the
    barrier keeps XLA from folding the transpose back into each product), elsewhere the
    plain transpose, which XLA folds into the GEMMs (see the module doc)."""
    if jax.default_backend() == "cpu":
        return jax.lax.optimization_barrier(x.T)
    return x.T


def factor(x: jnp.ndarray) -> Gram:
    """Invert X^T X + I (or I + X X^T) for x (P, N), already scaled."""
    p, n = x.shape
    small = x.T @ x if n <= p else x @ x.T
    eye = jnp.eye(small.shape[0], dtype=x.dtype)
    chol = jax.scipy.linalg.cho_factor(small + eye, lower=True)
    inverse = jax.scipy.linalg.cho_solve(chol, eye)
    return Gram(x=x, inverse=0.5 * (inverse + inverse.T), xt=transposed(x))


def solve(g: Gram, b: jnp.ndarray, c: jnp.ndarray):
    """U = (X^T X + I)^-1 (X^T b + c) and XU, for b (P, M) and c (N, M)."""
    if not g.wide:
        u = g.inverse @ (g.xt @ b + c)
        return u, g.x @ u
    xc = g.x @ c
    t = b - xc
    s = g.inverse @ t
    return g.xt @ s + c, t - s + xc
