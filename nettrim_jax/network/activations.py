"""Which program each prunable layer gets, found from the model's own forward pass.

Activations are function calls in ``__call__``, so they are observed, not parsed.  For layer
l the model is re-run (``Adapter.run`` with an override) with layer l's output z replaced by a
probe w = z + (random noise of z's spread), which has negative entries whatever z's signs:

* ``where(w < 0, 2 w - 1, w)`` (negatives changed only): if the next prunable layer's input
  (the model output, after the last) is unchanged, the model uses only the positive part,
  i.e. a ReLU follows -> "relu";
* else the midpoint test ``f(w + d) + f(w - d) == 2 f(w)`` for a random ``d`` -> "linear"
  (the in-between ops are affine: flatten, reshape, average pooling, dropout at inference);
* anything else (tanh, GELU, max-pooling directly on an un-ReLU'd output, ...) ->
  "unsupported".

"unsupported" layers next get an affine-epilogue check (``network.epilogues``: relu(a z + c),
BatchNorm / scale / residual before the ReLU): the exact ReLU program.  Otherwise, by
default (``on_unsupported="linear"``), the linear program on the pre-activation (what
SparseGPT-style methods reconstruct); "error" and "skip" refuse or keep the layer instead.
Every choice comes with its reason (``LayerChoice``), shown in the report; a layer that falls
back to the linear program says which test the ReLUs after it failed.  The tests run on the
first ``PROBE_SAMPLES`` (256) calibration samples only, so a layer's program does not depend
on how many samples are given beyond those.

A user override (``activations={name: "relu" | "linear" | "skip"}``) is checked against the
same tests: an override the forward pass contradicts ("relu" for a layer whose negative
outputs reach the next layer) would prune against the wrong target, so it is refused;
"linear" (the linear program on z itself) is always accepted.  Limitation: an activation that also zeroes negatives but is not ReLU (ReLU6, say)
is taken for ReLU.  Plain specs declare their activation.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.adapters import Adapter, Captured

__all__ = ["detect_activation", "choose_programs", "choose_layers", "LayerChoice", "PROGRAMS", "ON_UNSUPPORTED"]

PROGRAMS = ("relu", "linear", "skipped")
ON_UNSUPPORTED = ("linear", "error", "skip")
_OVERRIDES = {"relu": "relu", "linear": "linear", "skip": "skipped"}


class LayerChoice(NamedTuple):
    """program: "relu" | "linear" | "skipped"; reason: why, for the report ("relu",
    "linear (output layer)", "relu via affine epilogue relu(a*z + c)", "linear (followed by
    an op with no Net-Trim program)", ...); epilogue: ``epilogues.Epilogue`` or None."""

    program: str
    reason: str
    epilogue: Any = None


def _flat(a):
    return jnp.asarray(a).reshape(-1)


def model_output(cap: Captured):
    """The model's output leaves, flattened and concatenated (any pytree output)."""
    return jnp.concatenate([_flat(o) for o in jax.tree.leaves(cap.output)])


def _downstream(cap: Captured, i: int):
    """What layer ``i`` feeds: the next prunable layer's input (or the model output), as a
    flat numpy array (the probes compare on the host: an eager jnp op compiles one program
    per shape, ~30 ms each on XLA's CPU backend, and a first prune would pay for each)."""
    if i + 1 < len(cap.inputs):
        return np.ravel(np.asarray(cap.inputs[i + 1]))
    return np.concatenate([np.ravel(np.asarray(o)) for o in jax.tree.leaves(cap.output)])


def _tests(adapter: Adapter, specs, x, i: int, base: Captured):
    """(sees, relu, linear): does the next layer see layer i's output at all; do only its
    positive parts reach it; does it reach it through an affine map."""
    z = np.asarray(base.preacts[i])
    std = float(np.std(z)) or 1.0
    rng = np.random.default_rng(1234)
    # a probe around z with negative entries whatever z's signs (a pruned layer may have none)
    w = (z + std * rng.standard_normal(z.shape)).astype(z.dtype)
    d = (0.1 * std * rng.standard_normal(z.shape)).astype(z.dtype)

    def feed(probe):
        return _downstream(adapter.run(specs, x, (i, lambda t: jnp.asarray(probe))), i)

    ref = feed(w)
    scale = max(float(np.max(np.abs(ref))) if ref.size else 1.0, 1.0)

    def close(a, b):
        return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))

    up = feed(w + d)
    if close(up, ref):
        return False, False, False  # the next layer does not see this output: not a chain
    relu = close(feed(np.where(w < 0, 2 * w - 1, w)), ref)
    dn = feed(w - d)
    return True, relu, close(up + dn, 2 * ref)


def detect_activation(adapter: Adapter, specs, x, i: int, base: Captured | None = None) -> str:
    """ "relu", "linear" or "unsupported" for what follows prunable layer ``i`` (module doc).
    The tests look at the next prunable layer's input only, so what happens after it does
    not matter.  ``base`` is a ``Captured`` of the unmodified network."""
    base = adapter.run(specs, x) if base is None else base
    sees, relu, linear = _tests(adapter, specs, x, i, base)
    if relu:
        return "relu"
    if sees and linear:
        return "linear"
    return "unsupported"


def _declared(act) -> str | None:
    if act is None:
        return None
    if act == "relu" or act is jax.nn.relu:
        return "relu"
    if act == "linear":
        return "linear"
    return "unsupported"


def _checked_override(adapter, specs, x, i, base, name, value) -> str:
    prog = _OVERRIDES.get(value) if isinstance(value, str) else None
    if prog is None:
        raise ValueError(f"activations[{name!r}] must be 'relu', 'linear' or 'skip', got {value!r}")
    if prog in ("skipped", "linear"):  # the linear program fits z itself: always a valid choice
        return prog
    sees, relu, linear = _tests(adapter, specs, x, i, base)
    if prog == "relu" and not relu:
        raise ValueError(
            f"activations[{name!r}]='relu' contradicts the model: the next layer's input "
            "changes when this layer's negative outputs change, so its output does not "
            "reach the next layer through a ReLU alone; pruning against relu(z) would "
            "be wrong (use 'linear' if an affine map follows, or 'skip')"
        )
    return prog


def choose_programs(
    adapter: Adapter, x, base: Captured, overrides: dict | None, on_unsupported: str = "linear"
) -> list[str]:
    """The programs of ``choose_layers``."""
    return [c.program for c in choose_layers(adapter, x, base, overrides, on_unsupported)]


_REASONS = {"relu": "relu", "linear": "linear (affine map to the next layer)"}

PROBE_SAMPLES = 256  # the programs are chosen on the first samples only: the same for any P above


def probe_batch(adapter: Adapter, x, base: Captured):
    """(x, base) cut to the first ``PROBE_SAMPLES`` samples, on which every detection test
    runs, so that the program a layer gets does not depend on how much calibration data is
    given (and the probes cost the same for 1000 or 55 000 samples)."""
    if int(jnp.shape(x)[0]) <= PROBE_SAMPLES:
        return x, base
    x = x[:PROBE_SAMPLES]
    return x, adapter.run(adapter.specs, x)


def choose_layers(
    adapter: Adapter, x, base: Captured, overrides: dict | None, on_unsupported: str = "linear"
) -> list[LayerChoice]:
    """One ``LayerChoice`` per prunable layer: a checked override, else "linear" for the last
    layer, else the declared activation (plain specs), else the detected one; an
    "unsupported" Flax layer gets its affine epilogue if it has one (exact ReLU program),
    else ``on_unsupported``: "linear" (default: the linear program), "error" (raise) or
    "skip" (keep the layer, with a warning)."""
    from nettrim_jax.network.epilogues import detect_epilogue

    overrides = dict(overrides or {})
    unknown = set(overrides) - set(adapter.names)
    if unknown:
        raise ValueError(f"activations= names {sorted(unknown)} are not layers; layers: {adapter.names}")
    specs = adapter.specs
    x, base = probe_batch(adapter, x, base)
    last = len(specs) - 1
    choices = []
    for i, (name, spec) in enumerate(zip(adapter.names, specs)):
        declared = _declared(spec.activation)
        if name in overrides:
            prog = _checked_override(adapter, specs, x, i, base, name, overrides[name])
            choice = LayerChoice(prog, f"{prog} (override)")
        elif i == last:
            choice = LayerChoice("linear", "linear (output layer)")
        else:
            prog = declared or detect_activation(adapter, specs, x, i, base)
            choice = LayerChoice(prog, _REASONS.get(prog, ""))
            why = ""
            if prog == "unsupported" and declared is None:
                ep, why = detect_epilogue(adapter, specs, x, i)
                if ep is not None:
                    choice = LayerChoice("relu", ep.describe(), ep)
        if choice.program == "unsupported":
            msg = (
                f"layer {name!r} is followed by an activation Net-Trim has no program for "
                "(only ReLU, affine epilogues into a ReLU, and linear)"
            )
            if on_unsupported == "error":
                raise ValueError(msg + "; pass on_unsupported='linear' or 'skip', or activations={name: 'skip'}")
            if on_unsupported == "skip":
                warnings.warn(msg + "; skipping it", stacklevel=3)
                choice = LayerChoice("skipped", "skipped (no program for what follows)")
            else:
                detail = f": {why}" if why else ""
                choice = LayerChoice("linear", f"linear (followed by an op with no Net-Trim program{detail})")
        choices.append(choice)
    return choices
