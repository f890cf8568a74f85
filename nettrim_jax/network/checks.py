"""Input checks of ``prune``: everything here raises a one-line ``ValueError`` naming the
problem, before any layer is solved."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.solver.scaling import SOLVERS

SCHEMES = ("parallel", "cascade")


def check_options(scheme, gamma, on_unsupported, solver, max_patches, scan, relu_budget="output"):
    if relu_budget not in ("output", "omega"):
        raise ValueError(f"relu_budget must be 'output' or 'omega', got {relu_budget!r}")
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number >= 1, got {gamma!r}") from None
    if not (np.isfinite(g) and g >= 1):
        raise ValueError(f"gamma must be >= 1 and finite (the original weights must stay feasible), got {gamma}")
    if on_unsupported not in ("linear", "error", "skip"):
        raise ValueError(f"on_unsupported must be 'linear', 'error' or 'skip', got {on_unsupported!r}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if max_patches is not None and (
        isinstance(max_patches, bool) or not isinstance(max_patches, (int, np.integer)) or max_patches < 1
    ):
        raise ValueError(f"max_patches must be a positive int or None, got {max_patches!r}")
    if scan not in ("auto", True, False):
        raise ValueError(f"scan must be 'auto', True or False, got {scan!r}")


def epsilon_value(e, i=None, what="epsilon"):
    at = "" if i is None else f" (entry {i})"
    try:
        v = float(e)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {e!r}{at}") from None
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{what} must be >= 0 and finite, got {e}{at}")
    return v


def check_epsilon_values(epsilon):
    """Values only (the entry count needs the network): scalar or 1-D, each >= 0 and finite
    (per-layer entries may be None: no floor)."""
    if epsilon is None:
        raise ValueError("epsilon must be a number >= 0 or one per prunable layer, got None")
    nd = np.ndim(epsilon) if not isinstance(epsilon, (list, tuple)) else 1
    if nd == 0:
        epsilon_value(epsilon)
        return
    if nd != 1:
        raise ValueError(f"epsilon must be a scalar or 1-D (one per prunable layer), got ndim {nd}")
    for i, e in enumerate(epsilon):
        if e is not None:
            epsilon_value(e, i)


def epsilon_list(epsilon, L):
    """-> (list of L values or None, given-per-layer flag)."""
    check_epsilon_values(epsilon)
    if np.ndim(epsilon) == 0 and not isinstance(epsilon, (list, tuple)):
        return [float(epsilon)] * L, False
    eps = [None if e is None else float(e) for e in epsilon]
    if len(eps) != L:
        raise ValueError(f"epsilon has {len(eps)} entries but the network has {L} prunable layers")
    return eps, True


def check_calibration(x):
    """The calibration batch as an array: a leading sample axis, at least one sample, numeric,
    no NaN/Inf."""
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"calibration data x is not a numeric array: {str(e).splitlines()[0]}") from None
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        raise ValueError(f"calibration data x must be numeric, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("calibration data x must have a leading sample axis, got a scalar")
    if x.ndim == 1:  # one sample of shape (N,) or N scalar samples: ambiguous, refused
        raise ValueError(
            f"calibration data x of shape {tuple(x.shape)} has no sample axis: pass "
            f"shape (P, {x.shape[0]}) for samples of {x.shape[0]} features (x[None] for one)"
        )
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"calibration data x is empty (shape {tuple(x.shape)}); at least one sample is needed")
    if bad := int(_nonfinite_counts([x])[0]):
        rows = np.flatnonzero(np.asarray(~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)))
        raise ValueError(
            f"calibration data x contains NaN or Inf ({bad} entries, in samples "
            f"{rows[:5].tolist()}{'...' if rows.size > 5 else ''})"
        )
    return x


@jax.jit
def _nonfinite_counts(arrays):
    """Non-finite entries of each array of the list (integer arrays: 0), counted in one
    compiled program: an eager count per array costs a compile per shape (~30 ms each on
    XLA's CPU backend, dozens per model)."""
    return [jnp.sum(~jnp.isfinite(a)) if jnp.issubdtype(a.dtype, jnp.inexact) else jnp.zeros((), int) for a in arrays]


def _first_nonfinite(named) -> tuple | None:
    """(label, array, count) of the first entry of ``named`` [(label, array)] with a
    non-finite value, or None."""
    counts = jax.device_get(_nonfinite_counts([jnp.asarray(a) for _, a in named]))
    return next(((label, a, int(c)) for (label, a), c in zip(named, counts) if c), None)


def check_layers(net):
    """At least one prunable layer on the forward pass."""
    if not net.names:
        refused = getattr(net, "refused", {})
        by_reason: dict = {}
        for name, reason in refused.items():
            by_reason.setdefault(reason, []).append(name)
        parts = [
            f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}: {reason}"
            for reason, names in by_reason.items()
        ]
        why = f"; {len(refused)} left unpruned: " + "; ".join(parts) if refused else ""
        raise ValueError(
            "the model has no prunable layer on its forward pass (Linear, Conv, "
            f"LinearGeneral / DenseGeneral, projection Einsum){why}"
        )


def check_weights(net):
    """No NaN/Inf in any prunable layer's kernel or bias (named by layer)."""
    named = [
        ((name, part), arr)
        for name, spec in zip(net.names, net.specs)
        for part, arr in (("kernel", spec.kernel), ("bias", spec.bias))
        if arr is not None
    ]
    if found := _first_nonfinite(named):
        (name, part), arr, bad = found
        raise ValueError(
            f"model weights: layer {name!r} {part} of shape {tuple(jnp.shape(arr))} contains NaN or Inf ({bad} entries)"
        )


def check_forward(net):
    """Finite data and weights can still overflow: every prunable layer's input and
    pre-activation on the calibration data must be finite."""
    named = [
        ((name, what), arr)
        for name, X, Z in zip(net.names, net.first.inputs, net.first.preacts)
        for what, arr in (("input", X), ("output (pre-activation)", Z))
    ]
    if found := _first_nonfinite(named):
        (name, what), _, bad = found
        raise ValueError(
            f"layer {name!r} {what} on the calibration data contains NaN or Inf ({bad} entries; "
            "overflow or a non-finite parameter outside the prunable layers)"
        )


STRUCTURES = {"unstructured": "unstructured", "units": "units", "neurons": "units", "channels": "units"}


def reweight_rounds(reweight, structure: str) -> int:
    """``reweight`` as a round count: an integer >= 0, for the unstructured program only."""
    if isinstance(reweight, bool) or not isinstance(reweight, (int, np.integer)) or reweight < 0:
        raise ValueError(f"reweight must be an integer >= 0 (rounds of reweighted l1), got {reweight!r}")
    if reweight and structure != "unstructured":
        raise ValueError("reweight= weights the entrywise l1; it does not combine with structure='units'")
    return int(reweight)


def parse_structure(structure, pattern, per_neuron: bool) -> tuple[str, tuple | None]:
    """``structure`` ("unstructured", or "units" / "neurons" / "channels": remove whole input
    units of Dense layers and input channels of Conv layers) and ``pattern`` (None or "N:M")
    -> ("unstructured" | "units", (n, m) | None)."""
    from nettrim_jax.solver.patterns import parse_pattern

    kind = STRUCTURES.get(structure) if isinstance(structure, str) else None
    if kind is None:
        raise ValueError(f"structure must be one of {sorted(STRUCTURES)}, got {structure!r}")
    if kind == "units" and per_neuron:
        raise ValueError(
            "structure='units' couples the output units (a removed input feeds all of "
            "them); it cannot be solved per_neuron=True"
        )
    if pattern is None:
        return kind, None
    if kind != "unstructured":
        raise ValueError("pattern= applies to unstructured pruning; pass structure='unstructured'")
    n, m = parse_pattern(pattern)
    return kind, (int(n), int(m))
