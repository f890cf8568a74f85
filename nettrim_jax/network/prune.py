"""Whole-network Net-Trim: parallel and cascade schemes over Dense and Conv layers.

API::

    prune(model, x, *, scheme="cascade", epsilon=0.05, gamma=1.1, relative=True,
          output_epsilon=None, per_neuron=False, solver="admm", activations=None,
          on_unsupported="error", max_patches=4096, seed=0, scan="auto", devices=None,
          refit=False, progress=True, **solver_options) -> PruneResult(model, masks, report)

    PruneResult.model   # same form as the input: new nnx.Module / new Linen variables / specs
    PruneResult.masks   # bools matching the params (True = weight survives)
    PruneResult.report  # PruneReport (per-layer LayerReport rows + totals);
                        # .to_markdown(), .to_dict() (JSON-serialisable)

``model``: an ``nnx.Module``, a Linen ``(module, variables)`` pair, or a sequence of
``nettrim_jax.Dense`` / ``nettrim_jax.Conv`` specs (and plain callables for in-between ops).
``x``: a batch of calibration inputs, in the model's input layout.  Nothing is mutated.

Layer programs (``solve_layer``): a layer with input rows X (P, N) (image patches for Conv;
a ones column is appended when the layer has a bias, so the bias is pruned as the kernel's
last row) and original pre-activation Z gets

* the ReLU program (target Y = relu(Z), Omega = {Y > 0}) when a ReLU follows it,
* the linear program (target Z) when it is the last prunable layer, or when the model applies
  no activation after it.

Activation detection for NNX / Linen models (``activations=None``): activations are function
calls in ``__call__``, so they are observed, not parsed.  For layer l the model is re-run with
layer l's output replaced by ``where(z < 0, 2 z - 1, z)`` (negatives changed only): if the next
prunable layer's input (the model output, after the last) is unchanged, the model uses only
the positive part, i.e. a ReLU follows.  Otherwise the midpoint test ``f(z + d) + f(z - d) == 2 f(z)`` for a random
``d`` decides "linear" (in-between ops affine: flatten, reshape, average pooling, dropout at
inference).  Anything else (tanh, GELU, ...; also max-pooling directly on an un-ReLU'd output)
is "unsupported": ``on_unsupported="error"`` raises ``ValueError``, ``"skip"`` keeps that
layer's weights and warns.  Override with ``activations={"layer name": "relu" | "linear" |
"skip"}`` (names are ``report.layers[i].name``: NNX attribute paths like ``"layers/0"``, Linen
scope paths like ``"Dense_0"``, spec indices like ``"2"``).  Limitation: an activation that
also zeroes negatives but is not ReLU (ReLU6, say) is taken for ReLU.  Plain specs declare
their activation.

Epsilon: ``epsilon`` is one value or one per prunable layer; with ``relative=True`` (default)
epsilon_l = value x ||Y_l||_F (Y_l the program's target on its rows), otherwise absolute
(Frobenius units of the program's rows).

Schemes (Aghasi et al., arXiv 1611.05162, "parallel" and "cascade" Net-Trim):

* ``"parallel"``: every layer is solved from the original network's own X_l and Y_l.  The
  problems are independent and are spread over ``devices`` (default ``jax.devices()``): each
  whole layer problem is placed on one device (``jax.device_put``), largest first onto the least
  loaded device, and dispatched asynchronously through one jitted solver, then gathered.  Why
  not ``shard_map`` over a stacked axis: layer problems have different shapes (N, M, P), so
  stacking needs padding that changes each problem's scaling and cost, and the batch each
  device sees would then depend on the device count; placing whole problems runs the very
  same XLA program per layer whatever the number of devices, so results are bitwise
  independent of it (tested with 1 vs 4 forced host devices).
  Guarantee (each ReLU and the linear map are 1-Lipschitz; provable, not the paper's
  normalised form): with Delta_l = ||Y_hat_l - Y_l||_F along the pruned network,
      Delta_l <= e_l + g_l ||U_l||_2 Lip(between) Delta_{l-1},   Delta_0 = 0,
  where e_l <= epsilon_l is the achieved program misfit, U_l the pruned kernel without its bias
  row, g_l = 1 for Dense and sqrt(kh kw) for Conv (``specs.transition_gain``) and the
  in-between ops are taken as 1-Lipschitz (true for flatten/reshape, non-overlapping max or
  average pooling, dropout at inference).  Hence
      ||Y_hat_L - Y_L||_F <= sum_l epsilon_l prod_{j > l} g_j ||U_j||_2   (``report.bound``).
* ``"cascade"``: layer l is solved from the *pruned* network's input X_hat_l (obtained by
  running the model with layers < l already pruned), targets the original Y_l, with
      epsilon_1 from ``epsilon``;  epsilon_l = max(gamma ||(X_hat_l W_l - Y_l)_Omega||_F, f_l)
  for l >= 2 (W_l the original kernel with bias row, f_l an optional floor: the l-th entry of a
  per-layer ``epsilon``, 0 for a scalar), and for ReLU layers the off-support constraint
  (X_hat_l U)_{Omega^c} <= max(X_hat_l W_l, 0), so that W_l itself is feasible (gamma >= 1).
  The last layer uses the linear program.  Guarantee (derived here; the paper's theorem is the
  normalised special case): a posteriori, the final layer's discrepancy is at most its own
  epsilon_L, and a priori, with a_l = g_l ||W_l||_2 B_{l-1},
      B_1 = epsilon_1,  B_l = max(gamma a_l, sqrt(f_l^2 + a_l^2)) (ReLU) or max(gamma a_l, f_l)
      (linear),  ||Y_hat_L - Y_L||_F <= B_L  (= epsilon_1 prod_{l>=2} gamma g_l ||W_l||_2
      without floors)  (``report.bound``).
  ``output_epsilon`` (cascade, linear output layer): the output layer's epsilon_L is set to
  this budget (relative to ||Y_L||_F unless ``relative=False``) instead of by the gamma rule,
  so the output layer is refit toward the original network's outputs from the pruned
  features and absorbs whatever of the upstream error a linear map of them can undo.  The
  program is the same; only its radius changes.  No kernel does better than the
  least-squares residual r_L = min_U ||X_hat_L U - Y_L||_F, so a budget below 1.01 r_L is
  raised to 1.01 r_L (with a warning) to keep the program feasible.  Then
  ||Y_hat_L - Y_L||_F <= epsilon_L whatever the upstream layers did (``report.bound``):
  a budget for the whole network's output error, which the upstream epsilons can spend.
  Runs of consecutive square Dense ReLU layers fed directly into each other (checked on the
  calibration data) are solved inside one ``jax.lax.scan`` over the stacked kernels
  (``scan="auto"``/``True``); other layers use a plain loop that re-runs the model.

Conv layers are the dense program on image patches (``lax.conv_general_dilated_patches``)
with the shared kernel; when B x Ho x Wo exceeds ``max_patches`` a uniform random subset of
patch rows (fixed ``seed``, without replacement) is used.  Cost: the program then constrains
only the sampled rows, so the per-layer epsilon guarantee and ``report.bound`` hold for the
sampled rows only (the report's discrepancies are always measured on the full calibration
batch, and ``LayerReport.rows`` / ``subsampled`` say what the solver saw).
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nettrim_jax.network.adapters import adapt
from nettrim_jax.solver.layer import SOLVERS, check_solver_options, solve_layer
from nettrim_jax.solver.refit import refit_layer
from nettrim_jax.network.specs import Conv, Dense, kernel_matrix, layer_rows, transition_gain, with_matrix

__all__ = ["prune", "PruneResult", "PruneReport", "LayerReport", "detect_activation"]

SCHEMES = ("parallel", "cascade")


# ----------------------------------------------------------------------------- report


class LayerReport(NamedTuple):
    """One prunable layer.

    name: layer name; kind: "dense" | "conv"; activation: program used ("relu", "linear",
    or "skipped"); N, M: dense-program input width (incl. the bias row) and outputs;
    rows: program rows P the solver saw; subsampled: rows < all patch rows;
    nnz_before / nnz_after: nonzero weights (kernel + bias); epsilon: absolute epsilon_l;
    misfit: achieved program misfit (absolute, same norm as epsilon);
    discrepancy: ||Z_l - Z_hat_l||_F / ||Z_l||_F along the pruned network on the calibration
    data (Z: post-ReLU output for ReLU layers, pre-activation otherwise);
    iterations, converged: solver outcome; seconds: wall time of this layer's solve.  For
      ``scheme="parallel"`` the solves overlap (all are dispatched, then gathered): a layer's
      seconds are its own dispatch (compile, enqueue) plus the wait for its result and its
      refit once the layers before it were gathered, so the per-layer figures add up to the
      wall time and a layer finished during an earlier layer's wait shows little.
    """

    name: str
    kind: str
    activation: str
    N: int
    M: int
    rows: int
    subsampled: bool
    nnz_before: int
    nnz_after: int
    epsilon: float
    misfit: float
    discrepancy: float
    iterations: int
    converged: bool
    seconds: float


class PruneReport(NamedTuple):
    """Whole-network summary: ``layers`` (tuple of ``LayerReport``), ``nnz_before`` /
    ``nnz_after`` (pruned layers' weights), ``output_discrepancy`` (relative, model output),
    ``output_error`` (absolute ||Y_L - Y_hat_L||_F of the last prunable layer), ``bound`` (the
    scheme's a priori bound on ``output_error``, see module doc), ``seconds`` (total)."""

    scheme: str
    gamma: float
    layers: tuple
    nnz_before: int
    nnz_after: int
    output_discrepancy: float
    output_error: float
    bound: float
    seconds: float

    def to_dict(self) -> dict:
        d = self._asdict()
        d["layers"] = [dict(l._asdict()) for l in self.layers]
        return json.loads(json.dumps(d, default=float))

    def to_markdown(self) -> str:
        head = ("| layer | kind | program | N | M | rows | nnz before | nnz after | epsilon | "
                "discrepancy | iters | converged | s |")
        lines = [head, "|" + "---|" * 13]
        for l in self.layers:
            lines.append(f"| {l.name} | {l.kind} | {l.activation} | {l.N} | {l.M} | {l.rows}"
                         f"{'*' if l.subsampled else ''} | {l.nnz_before} | {l.nnz_after} | "
                         f"{l.epsilon:.4g} | {l.discrepancy:.4f} | {l.iterations} | "
                         f"{'yes' if l.converged else 'NO'} | {l.seconds:.2f} |")
        keep = self.nnz_after / max(1, self.nnz_before)
        lines.append("")
        # the bound assumes every program was met; an unconverged solve may exceed it
        held = "<=" if self.output_error <= self.bound else "> (some layer missed its program)"
        gamma = f" (gamma={self.gamma:g})" if self.scheme == "cascade" else ""  # parallel: unused
        lines.append(f"{self.scheme} Net-Trim{gamma}: nonzeros {self.nnz_before} -> "
                     f"{self.nnz_after} ({100 * keep:.1f}% kept); output discrepancy "
                     f"{self.output_discrepancy:.4f}; output error {self.output_error:.4g} "
                     f"{held} bound {self.bound:.4g}; {self.seconds:.1f} s")
        return "\n".join(lines)


class PruneResult(NamedTuple):
    """``model``: pruned model in the input's form; ``masks``: bool pytree matching the
    params (True where a weight survives); ``report``: ``PruneReport``."""

    model: Any
    masks: Any
    report: PruneReport


# ----------------------------------------------------------------------------- helpers


def _fro(a) -> float:
    return float(jnp.sqrt(jnp.sum(jnp.square(a))))


def warn_if_pruned_to_zero(name, nnz_before: int, nnz_after: int) -> None:
    """One-line RuntimeWarning when a layer that had weights kept none (kernel and bias all
    zero): its output no longer depends on the input, which a too-large epsilon (or a
    layer dead on the calibration data) does silently."""
    if nnz_before > 0 and nnz_after == 0:
        warnings.warn(f"layer {name} was pruned to all zeros (kernel and bias): its output no longer "
                      "depends on the input; epsilon too large, or the layer is dead on this data?",
                      RuntimeWarning, stacklevel=3)


def _nnz(spec) -> int:
    n = int(jnp.sum(jnp.asarray(spec.kernel) != 0))
    return n + (0 if spec.bias is None else int(jnp.sum(jnp.asarray(spec.bias) != 0)))


def _flat(a):
    return jnp.asarray(a).reshape(-1)


def _downstream(cap, i: int):
    """What layer ``i`` feeds: the next prunable layer's input (or the model output)."""
    if i + 1 < len(cap.inputs):
        return _flat(cap.inputs[i + 1])
    return jnp.concatenate([_flat(o) for o in jax.tree.leaves(cap.output)])


def detect_activation(adapter, specs, x, i: int, base=None) -> str:
    """"relu", "linear" or "unsupported" for what follows prunable layer ``i`` (see the
    module doc): the tests look at the next prunable layer's input only, so what happens after
    it does not matter.  ``base`` is a ``Captured`` of the unmodified network."""
    base = adapter.run(specs, x) if base is None else base
    ref = _downstream(base, i)
    z = base.preacts[i]
    scale = max(float(jnp.max(jnp.abs(ref))) if ref.size else 1.0, 1.0)
    close = lambda a, b: bool(jnp.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))
    std = float(jnp.std(z)) or 1.0
    d = 0.1 * std * jax.random.normal(jax.random.key(1234), z.shape, z.dtype)
    up = _downstream(adapter.run(specs, x, (i, lambda t: t + d)), i)
    if close(up, ref):
        return "unsupported"  # the next layer does not see this output: not a chain
    if bool(jnp.any(z < 0)):
        neg = _downstream(adapter.run(specs, x, (i, lambda t: jnp.where(t < 0, 2 * t - 1, t))), i)
        if close(neg, ref):
            return "relu"
    dn = _downstream(adapter.run(specs, x, (i, lambda t: t - d)), i)
    if close(up + dn, 2 * ref):
        return "linear"
    return "unsupported"


def _declared(act) -> str:
    if act is None:
        return None
    if act == "relu" or act is jax.nn.relu:
        return "relu"
    if act == "linear":
        return "linear"
    return "unsupported"


class _Problem(NamedTuple):
    rows: Any        # (P, N[+1]) with ones column if bias
    target: Any      # (P, M) program target
    idx: Any         # row subset used, or None


def _problem(spec, X, Z, program, max_patches, seed):
    A = layer_rows(spec, X)
    Zr = Z.reshape(-1, Z.shape[-1])
    idx = None
    if isinstance(spec, Conv) and max_patches is not None and A.shape[0] > max_patches:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(A.shape[0], size=int(max_patches), replace=False))
        A, Zr = A[idx], Zr[idx]
    if spec.bias is not None:
        A = jnp.concatenate([A, jnp.ones((A.shape[0], 1), A.dtype)], axis=1)
    Y = jax.nn.relu(Zr) if program == "relu" else Zr
    return _Problem(A, Y, idx)


@functools.lru_cache(maxsize=64)
def _jitted_solver(activation, per_neuron, solver, with_threshold, opts):
    opts = dict(opts)

    def f(X, Y, eps, thr):
        sol = solve_layer(X, Y, epsilon=eps, activation=activation,
                          threshold=thr if with_threshold else None,
                          per_neuron=per_neuron, solver=solver, **opts)
        return sol.kernel, sol.info

    return jax.jit(f)


def _dispatch(f, A, Y, eps, V, device=None, per_neuron=False):
    """Call a jitted layer solver on (A, Y, eps, V); in per-neuron mode, all-zero target
    columns are left out.

    A unit whose target column is identically zero (a dead ReLU unit, Omega empty) has the
    exact solution U_m = 0: it meets the misfit ball (0 <= eps) and X U_m = 0 <= V (V >= 0
    here), with the least possible l1 norm.  Solving it anyway is wasteful, and in per-neuron
    mode its zero-radius ball makes the ADMM diverge.  (Whole-layer programs keep them: the
    solver's scaling uses all columns, and the scan path must see the same problem.)
    Returns a thunk giving (K, info)."""
    live = np.asarray(jnp.any(Y != 0, axis=0)) if per_neuron else np.ones(Y.shape[1], bool)
    n_live = int(live.sum())
    m = Y.shape[1]
    if n_live == m or n_live == 0:
        args = (A, Y, jnp.asarray(eps, A.dtype), V)
        out = f(*(jax.device_put(args, device) if device is not None else args))
        return lambda: jax.device_get(out)
    cols = np.flatnonzero(live)
    Vs = V[:, cols] if jnp.ndim(V) == 2 else V
    args = (A, Y[:, cols], jnp.asarray(eps, A.dtype), Vs)
    out = f(*(jax.device_put(args, device) if device is not None else args))

    def finish():
        K, info = jax.device_get(out)
        full = np.zeros((A.shape[1], m), K.dtype)
        full[:, cols] = K
        return full, info

    return finish


def _misfit(A, Y, K, program):
    out = A @ K
    if program == "relu":
        r = jnp.where(Y > 0, out - Y, 0)
    else:
        r = out - Y
    return jnp.sqrt(jnp.sum(r * r))


def refit_or_measure(refit: bool, A, Y, K, program, V=None):
    """(kernel, misfit) of a solved layer: with ``refit``, the kernel refit on its support
    (``refit_layer``) and its sqrt(misfit^2 + excess^2); otherwise K and its misfit.
    Traceable, so the scan path calls it too; the command line's cascade driver shares it."""
    if not refit:
        return K, _misfit(A, Y, K, program)
    K2, info = refit_layer(A, Y, K, activation=program,
                           threshold=V if program == "relu" else None)
    return K2, info.error_after


def _spectral(mat) -> float:
    if mat.size == 0:
        return 0.0
    return float(np.linalg.norm(np.asarray(mat, np.float64), 2))


def _bare(spec, K):
    """Kernel matrix rows without the bias row."""
    return K[:-1] if spec.bias is not None else K


# ----------------------------------------------------------------------------- prune


def prune(model, x, *, scheme: str = "cascade", epsilon=0.05, gamma: float = 1.1,
          relative: bool = True, output_epsilon=None, per_neuron: bool = False,
          solver: str = "admm", activations: dict | None = None, on_unsupported: str = "error",
          max_patches: int | None = 4096, seed: int = 0, scan="auto", devices=None,
          refit: bool = False, progress: bool = True, **solver_options) -> PruneResult:
    """Prune every Dense / Conv layer of ``model`` with Net-Trim (see the module doc).

    Args:
      model: ``nnx.Module`` | Linen ``(module, variables)`` | sequence of specs/callables.
      x: calibration inputs (P0, ...) in the model's input layout.
      scheme: "cascade" or "parallel".
      epsilon: scalar or one per prunable layer (cascade: entry 0 is epsilon_1, later
        entries are floors); relative to ||Y_l||_F unless ``relative=False``.
      gamma: cascade inflation, >= 1.
      output_epsilon: cascade only, linear output layer: the output layer's misfit budget
        (relative unless ``relative=False``), replacing its gamma rule and its entry of
        ``epsilon``; raised to 1.01 x the least-squares residual on the pruned features
        when below it (see the module doc).
      per_neuron: solve one program per output unit (epsilon split by ||y_m||).
      solver: "admm" | "pdhg" (see ``solve_layer``).
      activations: {layer name: "relu" | "linear" | "skip"} overrides.
      on_unsupported: "error" | "skip" for layers followed by another activation.
      max_patches: cap on conv program rows (uniform random subset, ``seed``); None = all.
      scan: cascade only: "auto"/True use ``lax.scan`` over runs of stacked square Dense
        ReLU layers, False always loops.
      devices: devices for the parallel scheme (default ``jax.devices()``).
      refit: after each layer's solve, refit its kept weights to the layer's response on the
        same rows (``nettrim_jax.refit_layer``: same support, per-unit never worse in
        misfit^2 + threshold excess^2, so every bound above still holds); in cascade the
        next layer then sees the refit layer's outputs.  The report's ``misfit`` is then
        sqrt(misfit^2 + excess^2) of the refit kernel.
      progress: tqdm bar over layers.
      **solver_options: passed to ``solve_layer`` (max_iters, gap_tol, ...).

    Returns: ``PruneResult(model, masks, report)``.

    Raises ``ValueError`` (one line, before any solve) for: an unknown scheme / solver,
    gamma < 1, a negative or non-finite epsilon (scalar or any entry) or a wrong entry count,
    ``output_epsilon`` that is negative, non-finite, given with ``scheme="parallel"`` or for
    a model whose output layer is not linear (or is skipped),
    empty calibration data, NaN/Inf in ``x`` or in any prunable layer's kernel/bias (named),
    a layer input or pre-activation that is non-finite on ``x`` (overflow), and ``x`` whose
    shape does not fit the model (``flax_io.InputShapeError``, found on the first forward
    pass; it names ``x``'s shape and the layer's expected input).
    """
    # Input validation: everything below raises a one-line ValueError before any solve.
    _check_options(scheme, gamma, on_unsupported, solver, max_patches, scan)
    check_solver_options(solver, solver_options)
    _check_epsilon_values(epsilon)
    if output_epsilon is not None:
        if scheme != "cascade":
            raise ValueError("output_epsilon applies to scheme='cascade' only (parallel layers "
                             "do not see the pruned features)")
        output_epsilon = _epsilon_value(output_epsilon, what="output_epsilon")
    t_start = time.perf_counter()
    x = _check_calibration(x)
    net = adapt(model, x)  # first forward pass: shape mismatches -> InputShapeError
    _check_weights(net)
    _check_forward(net)
    for name in net.unused:
        warnings.warn(f"layer {name!r} is not called by the forward pass; left unchanged", stacklevel=2)
    L = len(net.specs)
    orig = list(net.specs)
    base = net.first
    overrides = dict(activations or {})
    unknown = set(overrides) - set(net.names)
    if unknown:
        raise ValueError(f"activations= names {sorted(unknown)} are not layers; layers: {net.names}")

    eps_list, per_layer = _epsilons(epsilon, L)

    # which program per layer
    programs = []
    for i, (name, spec) in enumerate(zip(net.names, orig)):
        if name in overrides:
            prog = {"relu": "relu", "linear": "linear", "skip": "skipped"}.get(overrides[name])
            if prog is None:
                raise ValueError(f"activations[{name!r}] must be 'relu', 'linear' or 'skip'")
        elif i == L - 1:
            prog = "linear"
        else:
            prog = _declared(spec.activation)
            if prog is None:
                prog = detect_activation(net, orig, x, i, base)
        if prog == "unsupported":
            msg = (f"layer {name!r} is followed by an activation Net-Trim has no program for "
                   "(only ReLU and linear); pass on_unsupported='skip' or activations={name: ...}")
            if on_unsupported == "error":
                raise ValueError(msg)
            warnings.warn(msg + "; skipping it", stacklevel=2)
            prog = "skipped"
        programs.append(prog)
    if output_epsilon is not None and programs[-1] != "linear":
        raise ValueError(f"output_epsilon needs a linear output layer to refit; layer "
                         f"{net.names[-1]!r} has program {programs[-1]!r}")

    opts = tuple(sorted(solver_options.items()))
    cfg = dict(per_neuron=per_neuron, solver=solver, opts=opts, relative=relative,
               max_patches=max_patches, seed=seed, gamma=float(gamma), per_layer=per_layer,
               refit=bool(refit), output_epsilon=output_epsilon)
    bar = _bar(L, progress, scheme)
    try:
        if scheme == "parallel":
            new, rows = _parallel(net, x, orig, base, programs, eps_list, cfg, devices, bar)
        else:
            new, rows = _cascade(net, x, orig, base, programs, eps_list, cfg, scan, bar)
    finally:
        if bar is not None:
            bar.close()

    # evaluate the pruned network on the calibration data
    final = net.run(new, x)
    layers = []
    for i in range(L):
        prog = programs[i]
        act = (lambda z: jax.nn.relu(z)) if prog == "relu" else (lambda z: z)
        z0, z1 = act(base.preacts[i]), act(final.preacts[i])
        disc = _fro(z0 - z1) / max(_fro(z0), 1e-30)
        r = rows[i]
        layers.append(LayerReport(
            name=net.names[i], kind="conv" if isinstance(orig[i], Conv) else "dense",
            activation=prog, N=r["N"], M=r["M"], rows=r["rows"], subsampled=r["subsampled"],
            nnz_before=_nnz(orig[i]), nnz_after=_nnz(new[i]), epsilon=r["epsilon"],
            misfit=r["misfit"], discrepancy=disc, iterations=r["iterations"],
            converged=r["converged"], seconds=r["seconds"]))
        warn_if_pruned_to_zero(net.names[i], _nnz(orig[i]), _nnz(new[i]))
    out0 = jnp.concatenate([_flat(o) for o in jax.tree.leaves(base.output)])
    out1 = jnp.concatenate([_flat(o) for o in jax.tree.leaves(final.output)])
    last0, last1 = base.preacts[-1], final.preacts[-1]
    if programs[-1] == "relu":
        last0, last1 = jax.nn.relu(last0), jax.nn.relu(last1)
    bound = _bound(scheme, orig, new, programs, rows, float(gamma))
    report = PruneReport(
        scheme=scheme, gamma=float(gamma), layers=tuple(layers),
        nnz_before=sum(l.nnz_before for l in layers), nnz_after=sum(l.nnz_after for l in layers),
        output_discrepancy=_fro(out0 - out1) / max(_fro(out0), 1e-30),
        output_error=_fro(last0 - last1), bound=bound,
        seconds=time.perf_counter() - t_start)
    return PruneResult(model=net.rebuild(new), masks=net.masks(new), report=report)


def _check_options(scheme, gamma, on_unsupported, solver, max_patches, scan):
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma must be a number >= 1, got {gamma!r}") from None
    if not (np.isfinite(g) and g >= 1):
        raise ValueError(f"gamma must be >= 1 and finite (the original weights must stay "
                         f"feasible), got {gamma}")
    if on_unsupported not in ("error", "skip"):
        raise ValueError(f"on_unsupported must be 'error' or 'skip', got {on_unsupported!r}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if max_patches is not None and (isinstance(max_patches, bool) or
                                    not isinstance(max_patches, (int, np.integer)) or max_patches < 1):
        raise ValueError(f"max_patches must be a positive int or None, got {max_patches!r}")
    if scan not in ("auto", True, False):
        raise ValueError(f"scan must be 'auto', True or False, got {scan!r}")


def _epsilon_value(e, i=None, what="epsilon"):
    at = "" if i is None else f" (entry {i})"
    try:
        v = float(e)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {e!r}{at}") from None
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"{what} must be >= 0 and finite, got {e}{at}")
    return v


def _check_epsilon_values(epsilon):
    """Values only (the entry count needs the network): scalar or 1-D, each >= 0 and finite
    (per-layer entries may be None: no floor)."""
    if epsilon is None:
        raise ValueError("epsilon must be a number >= 0 or one per prunable layer, got None")
    nd = np.ndim(epsilon) if not isinstance(epsilon, (list, tuple)) else 1
    if nd == 0:
        _epsilon_value(epsilon)
        return
    if nd != 1:
        raise ValueError(f"epsilon must be a scalar or 1-D (one per prunable layer), got ndim {nd}")
    for i, e in enumerate(epsilon):
        if e is not None:
            _epsilon_value(e, i)


def _epsilons(epsilon, L):
    """-> (list of L values or None, given-per-layer flag)."""
    _check_epsilon_values(epsilon)
    if np.ndim(epsilon) == 0 and not isinstance(epsilon, (list, tuple)):
        return [float(epsilon)] * L, False
    eps = [None if e is None else float(e) for e in epsilon]
    if len(eps) != L:
        raise ValueError(f"epsilon has {len(eps)} entries but the network has {L} prunable layers")
    return eps, True


def _check_calibration(x):
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
        raise ValueError(f"calibration data x of shape {tuple(x.shape)} has no sample axis: pass "
                         f"shape (P, {x.shape[0]}) for samples of {x.shape[0]} features (x[None] for one)")
    if x.shape[0] == 0 or x.size == 0:
        raise ValueError(f"calibration data x is empty (shape {tuple(x.shape)}); "
                         "at least one sample is needed")
    if jnp.issubdtype(x.dtype, jnp.inexact):
        bad = int(jnp.sum(~jnp.isfinite(x)))
        if bad:
            rows = np.flatnonzero(np.asarray(~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)))
            raise ValueError(f"calibration data x contains NaN or Inf ({bad} entries, in samples "
                             f"{rows[:5].tolist()}{'...' if rows.size > 5 else ''})")
    return x


def _nonfinite(a) -> int:
    a = jnp.asarray(a)
    return int(jnp.sum(~jnp.isfinite(a))) if jnp.issubdtype(a.dtype, jnp.inexact) else 0


def _check_weights(net):
    """No NaN/Inf in any prunable layer's kernel or bias (named by layer)."""
    for name, spec in zip(net.names, net.specs):
        for part, arr in (("kernel", spec.kernel), ("bias", spec.bias)):
            if arr is not None and (bad := _nonfinite(arr)):
                raise ValueError(f"model weights: layer {name!r} {part} of shape "
                                 f"{tuple(jnp.shape(arr))} contains NaN or Inf ({bad} entries)")


def _check_forward(net):
    """Finite data and weights can still overflow: every prunable layer's input and
    pre-activation on the calibration data must be finite."""
    for name, X, Z in zip(net.names, net.first.inputs, net.first.preacts):
        for what, arr in (("input", X), ("output (pre-activation)", Z)):
            if bad := _nonfinite(arr):
                raise ValueError(f"layer {name!r} {what} on the calibration data contains NaN or "
                                 f"Inf ({bad} entries; overflow or a non-finite parameter outside "
                                 "the prunable layers)")


def _bar(total, progress, scheme):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"Net-Trim ({scheme})", unit="layer", leave=False)


def _row_info(spec, prob, full_rows, eps, misfit, info, seconds):
    return dict(N=int(prob.rows.shape[1]), M=int(prob.target.shape[1]), rows=int(prob.rows.shape[0]),
                subsampled=bool(prob.rows.shape[0] < full_rows), epsilon=float(eps),
                misfit=float(misfit), iterations=int(info.iterations),
                converged=bool(info.converged), seconds=float(seconds))


def _skipped_row(spec, X, seconds=0.0):
    k = kernel_matrix(spec)
    return dict(N=int(k.shape[0]), M=int(k.shape[1]), rows=0, subsampled=False, epsilon=0.0,
                misfit=0.0, iterations=0, converged=True, seconds=seconds)


def _abs_eps(e, Y, relative):
    if e is None:
        return 0.0
    return e * _fro(Y) if relative else e


def output_layer_epsilon(A, Y, budget: float) -> float:
    """epsilon_L of a linear output layer under ``output_epsilon``: ``budget`` (absolute),
    raised to 1.01 x the least-squares residual min_U ||A U - Y||_F (float64) when below it,
    with a ``RuntimeWarning``.  A (P, N) rows on the pruned features, Y (P, M) the original
    outputs.  Shared with the command line's cascade driver."""
    a = np.asarray(A, np.float64)
    y = np.asarray(Y, np.float64)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    floor = 1.01 * float(np.linalg.norm(a @ coef - y))
    if budget < floor:
        warnings.warn(f"output_epsilon {budget:.4g} is below what any kernel can reach on the "
                      f"pruned features (least-squares residual {floor / 1.01:.4g}); using "
                      f"{floor:.4g}", RuntimeWarning, stacklevel=3)
        return floor
    return float(budget)


def _full_rows(spec, X):
    return int(layer_rows(spec, X).shape[0])


# ----------------------------------------------------------------------------- parallel


def _parallel(net, x, orig, base, programs, eps_list, cfg, devices, bar):
    devices = list(devices) if devices is not None else jax.devices()
    L = len(orig)
    probs, eps, jobs = {}, {}, []
    for i in range(L):
        if programs[i] == "skipped":
            continue
        probs[i] = _problem(orig[i], base.inputs[i], base.preacts[i], programs[i],
                            cfg["max_patches"], cfg["seed"] + i)
        eps[i] = _abs_eps(eps_list[i], probs[i].target, cfg["relative"])
        p, n = probs[i].rows.shape
        jobs.append((p * n * probs[i].target.shape[1], i))
    # largest problem first onto the least-loaded device
    load = [0.0] * len(devices)
    placed, spent = {}, {}  # spent[i]: seconds charged to layer i (LayerReport.seconds)
    for cost, i in sorted(jobs, key=lambda t: (-t[0], t[1])):
        t0 = time.perf_counter()
        d = int(np.argmin(load))
        load[d] += cost
        pr = probs[i]
        f = _jitted_solver(programs[i], cfg["per_neuron"], cfg["solver"], False, cfg["opts"])
        dev = devices[d]
        placed[i] = _dispatch(f, pr.rows, pr.target, eps[i], jnp.zeros((), pr.rows.dtype),
                              dev, cfg["per_neuron"])  # asynchronous dispatch
        spent[i] = time.perf_counter() - t0
    new = list(orig)
    rows = [None] * L
    for i in range(L):
        if i not in placed:
            rows[i] = _skipped_row(orig[i], base.inputs[i])
            if bar is not None:
                bar.update(1)
            continue
        t0 = time.perf_counter()
        K, info = placed[i]()
        pr = probs[i]
        K, misfit = refit_or_measure(cfg["refit"], pr.rows, pr.target, jnp.asarray(K), programs[i])
        seconds = spent[i] + time.perf_counter() - t0
        new[i] = with_matrix(orig[i], K)
        rows[i] = _row_info(orig[i], pr, _full_rows(orig[i], base.inputs[i]), eps[i],
                            misfit, info, seconds)
        rows[i]["kernel_matrix"] = K
        if bar is not None:
            bar.update(1)
    return new, rows


# ----------------------------------------------------------------------------- cascade


def _scan_runs(orig, base, programs, L, per_neuron=False):
    """Maximal runs [i, j) (length >= 2) of square Dense ReLU layers, equal shapes and bias
    presence, each feeding the next directly (x_{l+1} == relu(z_l) on the calibration data).
    In per-neuron mode, layers with dead units (all-zero target columns, see ``_dispatch``)
    are left to the loop, which takes those units out of the solve."""
    ok = []
    for i in range(L):
        s = orig[i]
        dead = per_neuron and bool(jnp.any(jnp.all(base.preacts[i].reshape(-1, s.kernel.shape[-1]) <= 0, axis=0)))
        ok.append(isinstance(s, Dense) and programs[i] == "relu" and i < L - 1 and not dead
                  and s.kernel.shape[0] == s.kernel.shape[1] and base.inputs[i].ndim == 2)
    runs, i = [], 0
    while i < L:
        if not ok[i]:
            i += 1
            continue
        j = i + 1
        while (j < L and ok[j] and orig[j].kernel.shape == orig[i].kernel.shape
               and (orig[j].bias is None) == (orig[i].bias is None)
               and base.inputs[j].shape == base.preacts[j - 1].shape
               and bool(jnp.array_equal(base.inputs[j], jax.nn.relu(base.preacts[j - 1])))):
            j += 1
        if j - i >= 2:
            runs.append((i, j))
        i = j
    return runs


def _cascade_eps(A, Y, W, program, gamma, floor):
    out = A @ W
    if program == "relu":
        r = jnp.where(Y > 0, out - Y, 0)
    else:
        r = out - Y
    return jnp.maximum(gamma * jnp.sqrt(jnp.sum(r * r)), floor), jnp.maximum(out, 0)


@functools.lru_cache(maxsize=16)
def _scan_solver(per_neuron, solver, opts, gamma, bias, refit=False):
    opts_d = dict(opts)

    def run(x0, Ws, Ys, floors):
        def body(xh, inp):
            W, Y, floor = inp
            A = jnp.concatenate([xh, jnp.ones((xh.shape[0], 1), xh.dtype)], 1) if bias else xh
            eps, V = _cascade_eps(A, Y, W, "relu", gamma, floor)
            sol = solve_layer(A, Y, epsilon=eps, activation="relu", threshold=V,
                              per_neuron=per_neuron, solver=solver, **opts_d)
            K, misfit = refit_or_measure(refit, A, Y, sol.kernel, "relu", V)
            return jax.nn.relu(A @ K), (K, sol.info, eps, misfit)

        return jax.lax.scan(body, x0, (Ws, Ys, floors))[1]

    return jax.jit(run)


def _cascade(net, x, orig, base, programs, eps_list, cfg, scan, bar):
    L = len(orig)
    gamma = cfg["gamma"]
    solved = [i for i in range(L) if programs[i] != "skipped"]
    first = solved[0] if solved else -1
    new = list(orig)
    rows = [None] * L
    runs = _scan_runs(orig, base, programs, L, cfg["per_neuron"]) if scan in ("auto", True) else []
    if scan is True and not runs:
        warnings.warn("scan=True but no run of stackable layers was found; using the loop",
                      stacklevel=3)
    run_at = {i: j for i, j in runs}

    def floor_of(k, target):
        # epsilon_1 for the first solved layer (X_hat = X there, so the gamma rule gives 0);
        # afterwards per-layer epsilons are floors, a scalar epsilon gives none
        if k == first:
            return _abs_eps(eps_list[k], target, cfg["relative"])
        if cfg["per_layer"]:
            return _abs_eps(eps_list[k], target, cfg["relative"])
        return 0.0

    i = 0
    cur = base
    while i < L:
        spec = orig[i]
        if programs[i] == "skipped":
            rows[i] = _skipped_row(spec, base.inputs[i])
            i += 1
            if bar is not None:
                bar.update(1)
            continue
        if i > first:
            cur = net.run(new, x)  # layers < i pruned, >= i original
        Xh = cur.inputs[i]
        if i in run_at:
            j = run_at[i]
            t0 = time.perf_counter()
            probs = [_problem(orig[k], base.inputs[k], base.preacts[k], "relu", None, 0)
                     for k in range(i, j)]
            floors = [floor_of(k, probs[k - i].target) for k in range(i, j)]
            Ws = jnp.stack([kernel_matrix(orig[k]) for k in range(i, j)])
            runner = _scan_solver(cfg["per_neuron"], cfg["solver"], cfg["opts"], gamma,
                                  orig[i].bias is not None, cfg["refit"])
            xh = layer_rows(spec, Xh)
            Ks, infos, epss, misfits = jax.device_get(runner(xh, Ws, jnp.stack([p.target for p in probs]),
                                                    jnp.asarray(floors, Ws.dtype)))
            seconds = (time.perf_counter() - t0) / (j - i)
            for k in range(i, j):
                K = jnp.asarray(Ks[k - i])
                A = (jnp.concatenate([xh, jnp.ones((xh.shape[0], 1), xh.dtype)], 1)
                     if orig[k].bias is not None else xh)
                info_k = jax.tree.map(lambda a: a[k - i], infos)
                new[k] = with_matrix(orig[k], K)
                pr = probs[k - i]._replace(rows=A)
                rows[k] = _row_info(orig[k], pr, pr.rows.shape[0], epss[k - i],
                                    misfits[k - i], info_k, seconds)
                rows[k].update(kernel_matrix=K, floor=None if k == first else floors[k - i],
                               scan=True)
                xh = jax.nn.relu(A @ K)
                if bar is not None:
                    bar.update(1)
            i = j
            continue
        t0 = time.perf_counter()
        prog = programs[i]
        # the same patch subset for X_hat and the original target
        pr = _problem(spec, Xh, base.preacts[i], prog, cfg["max_patches"], cfg["seed"] + i)
        W = kernel_matrix(spec)
        floor = floor_of(i, pr.target)
        if cfg["output_epsilon"] is not None and i == L - 1:  # linear: V is set below
            floor = None  # report.bound: the output layer's own epsilon
            eps = output_layer_epsilon(pr.rows, pr.target,
                                       _abs_eps(cfg["output_epsilon"], pr.target, cfg["relative"]))
        elif i == first:
            eps, V = floor, jnp.zeros((), pr.rows.dtype)
        else:
            eps, V = _cascade_eps(pr.rows, pr.target, W, prog, gamma, floor)
            eps = float(eps)
        f = _jitted_solver(prog, cfg["per_neuron"], cfg["solver"], True, cfg["opts"])
        if prog != "relu":
            V = jnp.zeros((), pr.rows.dtype)
            f = _jitted_solver(prog, cfg["per_neuron"], cfg["solver"], False, cfg["opts"])
        K, info = _dispatch(f, pr.rows, pr.target, eps, V, None, cfg["per_neuron"])()
        K, misfit = refit_or_measure(cfg["refit"], pr.rows, pr.target, jnp.asarray(K), prog, V)
        new[i] = with_matrix(spec, K)
        rows[i] = _row_info(spec, pr, _full_rows(spec, Xh), eps, misfit, info,
                            time.perf_counter() - t0)
        rows[i].update(kernel_matrix=K, floor=None if i == first else floor, scan=False)
        if bar is not None:
            bar.update(1)
        i += 1
    return new, rows


# ----------------------------------------------------------------------------- bounds


def _bound(scheme, orig, new, programs, rows, gamma) -> float:
    """The scheme's a priori bound on ||Y_L - Y_hat_L||_F (module doc)."""
    L = len(orig)
    B = 0.0
    for i in range(L):
        if programs[i] == "skipped":
            # unchanged layer: propagates the error through the original kernel
            B = transition_gain(orig[i]) * _spectral(_bare(orig[i], kernel_matrix(orig[i]))) * B
            continue
        r = rows[i]
        if scheme == "parallel":
            K = r["kernel_matrix"]
            B = r["epsilon"] + transition_gain(orig[i]) * _spectral(_bare(orig[i], K)) * B
        else:
            if r.get("floor") is None:  # first solved layer (epsilon_1) or output_epsilon
                B = r["epsilon"]
                continue
            a = transition_gain(orig[i]) * _spectral(_bare(orig[i], kernel_matrix(orig[i]))) * B
            f = r.get("floor") or 0.0
            if programs[i] == "relu":
                B = max(gamma * a, (f * f + a * a) ** 0.5)
            else:
                B = max(gamma * a, f)
    return float(B)
