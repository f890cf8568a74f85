"""Interior-point reference solutions (cvxpy + Clarabel) and problem generators for tests."""

from __future__ import annotations

import numpy as np


def relu_problem(p, n, m, seed=0, density=0.3, bias=True):
    """Random dense layer: X (p, n) Gaussian (+ ones column), Y = relu(X W)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n))
    if bias:
        x = np.concatenate([x, np.ones((p, 1))], axis=1)
    w = rng.standard_normal((x.shape[1], m)) * (rng.random((x.shape[1], m)) < density)
    return x, np.maximum(x @ w, 0), w


def reference(x, y, eps, activation="relu", threshold=0.0, per_neuron=False):
    """Optimal value and kernel of Net-Trim's program, by Clarabel."""
    import cvxpy as cp

    p, n = x.shape
    m = y.shape[1]
    u = cp.Variable((n, m))
    z = x @ u
    cons = []
    if activation == "relu":
        omega = y > 0
        om = omega.astype(float)
        d = cp.multiply(om, z - y)
        cons.append(cp.multiply(1 - om, z) <= threshold * (1 - om) + 0 * om + om * 1e30
                    if False else cp.multiply(1 - om, z - threshold) <= 0)
    else:
        d = z - y
    eps = np.asarray(eps, float)
    if per_neuron:
        e = eps if eps.ndim else eps * np.linalg.norm(np.where(y > 0, y, 0) if activation == "relu" else y, axis=0) / np.linalg.norm(np.where(y > 0, y, 0) if activation == "relu" else y)
        cons += [cp.norm(d[:, j], 2) <= e[j] for j in range(m)]
    else:
        cons.append(cp.norm(d, "fro") <= float(eps))
    prob = cp.Problem(cp.Minimize(cp.sum(cp.abs(u))), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return prob.value, u.value
