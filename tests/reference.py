"""Interior-point reference solutions (cvxpy + Clarabel) and problem and network generators for tests."""

from __future__ import annotations

import numpy as np


def relu_problem(p, n, m, seed=0, density=0.3, bias=True):
    """Random dense ReLU layer: X (p, n) Gaussian (+ a ones column), Y = relu(X W)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n))
    if bias:
        x = np.concatenate([x, np.ones((p, 1))], axis=1)
    w = rng.standard_normal((x.shape[1], m)) * (rng.random((x.shape[1], m)) < density)
    return x, np.maximum(x @ w, 0), w


def random_mlp(sizes, seed=0, act="relu", bias=0.1, rng=None):
    """A random chain of ``nt.Dense`` layers of widths ``sizes`` (inputs first): kernels
    N(0, 1 / fan_in), biases ``bias`` x N(0, 1), float32; ``act`` between layers, a linear
    output layer.  Drawn from ``rng`` when given (then ``seed`` is unused).  The one random
    network of the test suite."""
    from nettrim_jax import Dense

    rng = np.random.default_rng(seed) if rng is None else rng
    layers = []
    for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        kernel = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        shift = (bias * rng.standard_normal(b)).astype(np.float32)
        layers.append(Dense(kernel, shift, act if j < len(sizes) - 2 else "linear"))
    return layers


def planted_sparse(p, n, m, s, seed=0):
    """Gaussian X (p, n) and a kernel with exactly s nonzeros (|w| in [0.5, 1.5]) per column."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n))
    w = np.zeros((n, m))
    for j in range(m):
        idx = rng.choice(n, s, replace=False)
        w[idx, j] = rng.choice([-1.0, 1.0], s) * rng.uniform(0.5, 1.5, s)
    return x, np.maximum(x @ w, 0), w


def reference(
    x, y, eps, activation="relu", threshold=0.0, per_neuron=False, groups=None, relu_budget="omega", weights=None
):
    """Optimal value and kernel of Net-Trim's program, solved by Clarabel to 1e-9; fails the
    calling test unless Clarabel reports an optimal status.  ``groups``: (N,) row group ids
    for the group-l1 objective sum_g ||U_g||_F (ids < 0: entrywise l1); None: ||U||_1.
    ``relu_budget="output"``: the excess over the threshold off Omega joins the misfit
    inside the norm (written here as cvxpy's pos(), independently of the solver's code).
    ``weights``: (N, M) entry weights of a weighted l1 objective."""
    import cvxpy as cp

    n, m = x.shape[1], y.shape[1]
    u = cp.Variable((n, m))
    z = x @ u
    cons = []
    if activation == "relu":
        om = (y > 0).astype(float)
        d = cp.multiply(om, z - y)
        if relu_budget == "output":  # t >= (z - V)_+ off Omega, inside the norm (DCP form)
            t = cp.Variable((x.shape[0], m), nonneg=True)
            cons.append(t >= z - threshold)
            d = d + cp.multiply(1 - om, t)
        else:
            cons.append(cp.multiply(1 - om, z - threshold) <= 0)
        y_om = y * om
    else:
        d = z - y
        y_om = y
    eps = np.asarray(eps, float)
    if per_neuron:
        e = eps if eps.ndim else eps * np.linalg.norm(y_om, axis=0) / np.linalg.norm(y_om)
        cons += [cp.norm(d[:, j], 2) <= e[j] for j in range(m)]
    else:
        cons.append(cp.norm(d, "fro") <= float(eps))
    prob = cp.Problem(cp.Minimize(_objective(cp, u, groups, weights)), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)
    # anything but OPTIMAL (OPTIMAL_INACCURATE, INFEASIBLE, a stalled solve) is no reference.
    # 1e-9, not 1e-10: at 1e-10 Clarabel ended OPTIMAL_INACCURATE on 10 of 31 small random
    # programs (40 x 9); at 1e-9 all were OPTIMAL, their values within 1e-9 of each other.
    assert prob.status == cp.OPTIMAL, f"reference solve ended {prob.status!r}, not optimal"
    return prob.value, u.value


def _objective(cp, u, groups, weights=None):
    if weights is not None:
        return cp.sum(cp.multiply(np.asarray(weights, float), cp.abs(u)))
    if groups is None:
        return cp.sum(cp.abs(u))
    g = np.asarray(groups)
    terms = [cp.norm(cp.vec(u[np.flatnonzero(g == k), :], order="C"), 2) for k in np.unique(g[g >= 0])]
    single = np.flatnonzero(g < 0)
    if single.size:
        terms.append(cp.sum(cp.abs(u[single, :])))
    return sum(terms)
