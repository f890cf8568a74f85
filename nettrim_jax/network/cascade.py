"""Cascade Net-Trim: each layer solved from the pruned prefix's outputs.

Layer l is solved from the *pruned* network's input X_hat_l (the model re-run with layers
< l already pruned) against the original target Y_l, with

    epsilon_1 from ``epsilon``;  epsilon_l = max(gamma ||(X_hat_l W_l - Y_l)_Omega||_F, f_l)

for l >= 2 (W_l the original kernel with its bias row, f_l an optional floor: the l-th entry
of a per-layer ``epsilon``, 0 for a scalar, and epsilon as for layer 1 for a layer whose
input no pruned layer reaches: a branch beside the first, K and V beside Q), and for ReLU layers the off-support constraint
(X_hat_l U)_{Omega^c} <= max(X_hat_l W_l, 0), so that W_l itself is feasible (gamma >= 1).
The last layer uses the linear program.

``output_epsilon`` (linear output layer): epsilon_L is that budget (relative to ||Y_L||_F
unless ``relative=False``) instead of the gamma rule, so the output layer is refit toward the
original outputs from the pruned features and absorbs whatever part of the upstream error a
linear map of them can undo.  No kernel does better than the least-squares residual
r_L = min_U ||X_hat_L U - Y_L||_F, so a budget below 1.01 r_L is raised to 1.01 r_L (with a
warning).  Then ||Y_hat_L - Y_L||_F <= epsilon_L whatever the upstream layers did.

Runs of consecutive square Dense ReLU layers fed directly into each other (checked on the
calibration data) are solved inside one ``jax.lax.scan`` over the stacked kernels
(``scan="auto"``/``True``); other layers use a loop that re-runs the model.  The bounds are
in ``network.bounds``.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from nettrim_jax.network import epilogues as epi
from nettrim_jax.network.adapters import Adapter, Captured
from nettrim_jax.network.compiled import fro
from nettrim_jax.network.problems import (
    LayerOutcome,
    SolveConfig,
    absolute_epsilon,
    build_problem,
    carry_miss,
    finish_kernel,
    output_layer_epsilon,
    output_misfit,
    refit_or_measure,
    skipped_outcome,
    solve_program,
    solved_outcome,
)
from nettrim_jax.network.specs import Dense, kernel_matrix, layer_rows, with_matrix, with_ones
from nettrim_jax.solver.layer import solve_layer

__all__ = ["solve_cascade", "scan_runs"]


def scan_runs(orig: Sequence, base: Captured, programs: Sequence[str], per_neuron: bool = False):
    """Maximal runs [i, j) (length >= 2) of square Dense ReLU layers, equal shapes and bias
    presence, each feeding the next directly (x_{l+1} == relu(z_l) on the calibration data).
    In per-neuron mode, layers with dead units (all-zero target columns, see
    ``problems.dispatch``) are left to the loop, which takes those units out of the solve."""
    L = len(orig)
    ok = []
    for i in range(L):
        s = orig[i]
        dead = per_neuron and bool(jnp.any(jnp.all(base.preacts[i].reshape(-1, s.kernel.shape[-1]) <= 0, axis=0)))
        ok.append(
            isinstance(s, Dense)
            and programs[i] == "relu"
            and i < L - 1
            and not dead
            and s.kernel.shape[0] == s.kernel.shape[1]
            and base.inputs[i].ndim == 2
        )
    runs, i = [], 0
    while i < L:
        if not ok[i]:
            i += 1
            continue
        j = i + 1
        while (
            j < L
            and ok[j]
            and orig[j].kernel.shape == orig[i].kernel.shape
            and (orig[j].bias is None) == (orig[i].bias is None)
            and base.inputs[j].shape == base.preacts[j - 1].shape
            and bool(jnp.array_equal(base.inputs[j], jax.nn.relu(base.preacts[j - 1])))
        ):
            j += 1
        if j - i >= 2:
            runs.append((i, j))
        i = j
    return runs


@functools.partial(jax.jit, static_argnames=("program", "soft"))
def _gamma_epsilon(A, Y, W, program, gamma, floor, omega=None, low=0, soft=False):
    """(epsilon_l, V_l): gamma x the original kernel's misfit on the pruned inputs (at least
    ``floor``), and the off-support bound that keeps W feasible (Omega = ``omega`` or Y > 0;
    ``low`` the program's own threshold, 0 unless an affine epilogue).  The paper's program
    (``soft`` False): V_l = max(A W, low), W's misfit over Omega.  The output budget: V_l =
    ``low`` and W's misfit includes its excess over it, so the budget bounds the pruned
    layer's ReLU output error against the original's, and W stays feasible."""
    out = A @ W
    eps = jnp.maximum(gamma * output_misfit(out, Y, program, omega, low, soft), floor)
    if program != "relu":
        return eps, out
    return eps, (jnp.broadcast_to(low, out.shape) if soft else jnp.maximum(out, low))


@functools.lru_cache(maxsize=16)
def _scan_solver(per_neuron, solver, opts, gamma, bias, refit=False):
    options = dict(opts)
    soft = options.get("relu_budget", "omega") == "output"

    def run(x0, Ws, Ys, floors):
        def body(xh, inp):
            W, Y, floor = inp
            A = with_ones(xh) if bias else xh
            eps, V = _gamma_epsilon(A, Y, W, "relu", gamma, floor, soft=soft)
            sol = solve_layer(
                A, Y, epsilon=eps, activation="relu", threshold=V, per_neuron=per_neuron, solver=solver, **options
            )
            K, fit, cg = refit_or_measure(refit, A, Y, sol.kernel, "relu", V, soft=soft)
            return jax.nn.relu(A @ K), (K, sol.info, eps, fit, cg)

        return jax.lax.scan(body, x0, (Ws, Ys, floors))[1]

    return jax.jit(run)


class _Cascade:
    """The loop over layers; ``new`` holds the pruned specs so far."""

    def __init__(self, net: Adapter, x, programs, eps_list, cfg: SolveConfig, epilogues=None):
        self.net, self.x, self.programs, self.eps_list, self.cfg = net, x, programs, eps_list, cfg
        self.epilogues = list(epilogues) if epilogues is not None else [None] * len(programs)
        self.orig = list(net.specs)
        self.base = net.first
        solved = [i for i, p in enumerate(programs) if p != "skipped"]
        self.first = solved[0] if solved else -1
        self.new = list(self.orig)

    def floor_of(self, k, target, Xh=None):
        """epsilon_1 for the first solved layer and for every layer whose input no pruned
        layer has reached (X_hat = X there, so the gamma rule gives 0: a branch reading the
        model's input, an attention block's K and V beside its Q); afterwards per-layer
        epsilons are floors, a scalar epsilon gives none."""
        if k == self.first or self.cfg.per_layer or self.unchanged_input(k, Xh):
            return absolute_epsilon(self.eps_list[k], target, self.cfg.relative)
        return 0.0

    def unchanged_input(self, k, Xh) -> bool:
        """Layer ``k``'s input on the pruned prefix equals the original's (relative 1e-6:
        re-running the model may round differently)."""
        if Xh is None:
            return False
        X = self.base.inputs[k]
        if jnp.shape(Xh) != jnp.shape(X):
            return False
        return fro(Xh, X) <= 1e-6 * fro(X)

    def run_scan(self, i, j, Xh) -> dict[int, LayerOutcome]:
        cfg, orig, base = self.cfg, self.orig, self.base
        t0 = time.perf_counter()
        probs = [build_problem(orig[k], base.inputs[k], base.preacts[k], "relu", None, 0) for k in range(i, j)]
        floors = [self.floor_of(k, probs[k - i].target, Xh if k == i else None) for k in range(i, j)]
        Ws = jnp.stack([kernel_matrix(orig[k]) for k in range(i, j)])
        runner = _scan_solver(cfg.per_neuron, cfg.solver, cfg.opts, cfg.gamma, orig[i].bias is not None, cfg.refit)
        xh = layer_rows(orig[i], Xh)
        Ks, infos, epss, fits, cgs = jax.device_get(
            runner(xh, Ws, jnp.stack([p.target for p in probs]), jnp.asarray(floors, Ws.dtype))
        )
        seconds = (time.perf_counter() - t0) / (j - i)
        outs = {}
        for k in range(i, j):
            K = jnp.asarray(Ks[k - i])
            A = with_ones(xh) if orig[k].bias is not None else xh
            info = jax.tree.map(lambda a, k=k: a[k - i], infos)
            self.new[k] = with_matrix(orig[k], K)
            pr = probs[k - i]._replace(inputs=A, full_rows=int(A.shape[0]))
            outs[k] = solved_outcome(
                pr,
                K,
                epss[k - i],
                fits[k - i],
                info,
                seconds,
                floor=None if k == self.first else floors[k - i],
                scan=True,
                refit_iterations=cgs[k - i],
            )
            xh = jax.nn.relu(A @ K)
        return outs

    def run_layer(self, i, Xh) -> LayerOutcome:
        cfg, spec, prog = self.cfg, self.orig[i], self.programs[i]
        t0 = time.perf_counter()
        # the same patch subset for X_hat and the original target
        ep = self.epilogues[i]
        if ep is None:
            pr = build_problem(spec, Xh, self.base.preacts[i], prog, cfg.max_patches, cfg.seed + i)
        else:  # target: the original ReLU output; offsets c: measured on the pruned prefix
            c, _ = epi.offsets(self.net, self.new, self.x, i, ep)
            _, u0 = epi.offsets(self.net, self.orig, self.x, i, ep)
            pr = epi.epilogue_problem(spec, Xh, jax.nn.relu(u0), c, ep, cfg.max_patches, cfg.seed + i)
        floor = self.floor_of(i, pr.target, Xh)
        V = jnp.zeros((), pr.inputs.dtype) if pr.threshold is None else pr.threshold
        if cfg.output_epsilon is not None and i == len(self.orig) - 1:  # linear (checked)
            floor = None  # the bound restarts at the output layer's own epsilon
            eps = output_layer_epsilon(
                pr.inputs, pr.target, absolute_epsilon(cfg.output_epsilon, pr.target, cfg.relative)
            )
        elif i == self.first:
            eps, floor = floor, None
        else:
            W = epi.to_program(kernel_matrix(spec), pr)
            e, thr = _gamma_epsilon(pr.inputs, pr.target, W, prog, cfg.gamma, floor, pr.omega, V, cfg.soft)
            eps = float(e)
            if prog == "relu":
                V = thr
        K, info, eps = solve_program(cfg, i, spec, pr.inputs, pr.target, eps, V, prog, omega=pr.omega, scale=pr.scale)
        if cfg.keep and cfg.keep[i] is not None and floor is not None:
            floor = eps  # the found epsilon bounds this layer like a floor (network.bounds)
        K, fit, cg = finish_kernel(cfg, i, spec, pr.inputs, pr.target, K, prog, V, pr.omega, pr.scale)
        carry_miss(cfg, i, K)
        K = epi.from_program(K, pr)
        self.new[i] = with_matrix(spec, K)
        return solved_outcome(pr, K, eps, fit, info, time.perf_counter() - t0, floor=floor, refit_iterations=cg)


def solve_cascade(
    net: Adapter,
    x,
    programs: Sequence[str],
    eps_list: Sequence,
    cfg: SolveConfig,
    scan="auto",
    done: Sequence[LayerOutcome | None] = (),
    on_layers: Callable[[dict[int, LayerOutcome]], None] | None = None,
    epilogues: Sequence | None = None,
) -> list[LayerOutcome]:
    """One ``LayerOutcome`` per layer.

    ``done``: outcomes of a finished prefix of layers (an interrupted run), taken as they
    are; the run continues after it.  ``on_layers({i: outcome, ...})`` is called after each
    step (one layer, or one whole ``lax.scan`` run), so a saved state always ends on a step
    boundary and a resumed run repeats exactly the computation of an uninterrupted one."""
    L = len(programs)
    done = list(done) + [None] * (L - len(done))
    prefix = next((k for k, o in enumerate(done) if o is None), L)
    if any(o is not None for o in done[prefix:]):
        raise ValueError("resume: a cascade continues after a finished prefix of layers; this state has a gap")
    finished: list[LayerOutcome] = [o for o in done[:prefix] if o is not None]
    state = _Cascade(net, x, programs, eps_list, cfg, epilogues)
    outcomes: list[LayerOutcome | None] = [None] * L
    for k, out in enumerate(finished):
        outcomes[k] = out
        if out.kernel is not None:
            state.new[k] = with_matrix(state.orig[k], jnp.asarray(out.kernel))
            carry_miss(cfg, k, out.kernel)
    # a target searches each layer's epsilon; structure, patterns and reweighting go through the loop
    use_scan = (
        scan in ("auto", True)
        and not cfg.keep
        and not cfg.reweight
        and cfg.structure == "unstructured"
        and cfg.pattern is None
        and cfg.mesh is None
        and cfg.finish is None
    )
    runs = scan_runs(state.orig, state.base, programs, cfg.per_neuron) if use_scan else []
    if scan is True and not runs:
        warnings.warn("scan=True but no run of stackable layers was found; using the loop", stacklevel=3)
    runs = [(max(i, prefix), j) for i, j in runs if j - max(i, prefix) >= 2]
    run_at = dict(runs)
    i = prefix
    cur = state.base
    while i < L:
        if programs[i] == "skipped":
            K = kernel_matrix(state.orig[i])
            step = {i: skipped_outcome(int(K.shape[0]), int(K.shape[1]))}
        else:
            if i > state.first:
                cur = net.run(state.new, x)  # layers < i pruned, >= i original
            if i in run_at:
                step = state.run_scan(i, run_at[i], cur.inputs[i])
            else:
                step = {i: state.run_layer(i, cur.inputs[i])}
        for k, out in step.items():
            outcomes[k] = out
        if on_layers is not None:
            on_layers(step)
        i = max(step) + 1
    return [o for o in outcomes if o is not None]
