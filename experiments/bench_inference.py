"""Inference cost of a pruned MLP: dense, compacted (structured) and BCOO (unstructured sparse).

The model is a 784-300-100-10 ReLU MLP (random float32 weights: timing does not depend on
the values).  At each sparsity s three forms are timed, all compiled with ``jax.jit``:

  dense     the original shapes; an unstructured-pruned kernel kept as a masked dense
            array costs exactly this (same shapes, same FLOPs), so it is not timed again.
  compact   structured pruning with dead units physically removed: a fraction
            r = sqrt(1 - s) of the input pixels and of each hidden layer's units kept (the
            10 outputs all kept), so the weight count is about (1 - s) of dense; built
            directly from row/column masks, the input gather x[:, keep] inside the timing.
  bcoo      unstructured sparsity s: each kernel a ``jax.experimental.sparse.BCOO`` with
            (1 - s) of its entries nonzero (uniformly at random), applied as W^T x^T.

Latency is the median wall time of one forward pass at batch 1; throughput is samples/s at
batch 256: the median of up to 300 runs (fewer, at least 5, where they would take over
0.5 s).  At batch 1 a CPU forward pass is mostly dispatch overhead (tens of us), and on
a shared machine the medians move by tens of percent between runs.  Model bytes: dense float32, compact float32, and the
unstructured kernels stored by ``nettrim_jax.io.sparse`` (values + the smaller index).

Usage: python experiments/bench_inference.py [--quick] [--out DIR] [--repeats K]
Writes bench_inference.md (and .json) to experiments/results/ (results/quick with --quick).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from nettrim_jax.io import sparse as nt_sparse  # noqa: E402

WIDTHS = (784, 300, 100, 10)


def dense_model(seed):
    """[(kernel (n_in, n_out), bias (n_out,))] float32, He-scaled."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((a, b)).astype(np.float32) * np.float32(np.sqrt(2 / a)),
             rng.standard_normal(b).astype(np.float32) * np.float32(0.01))
            for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]


def unit_masks(keep, seed):
    """Boolean keep-masks for the units of each layer boundary: inputs and hidden layers
    keep a fraction ``keep`` (at least one unit), the outputs all."""
    rng = np.random.default_rng(seed)
    masks = []
    for i, w in enumerate(WIDTHS):
        if i == len(WIDTHS) - 1:
            masks.append(np.ones(w, bool))
        else:
            k = max(1, int(round(keep * w)))
            m = np.zeros(w, bool)
            m[rng.choice(w, k, replace=False)] = True
            masks.append(m)
    return masks


def compact(layers, masks):
    """The compacted model: each kernel's rows and columns restricted to kept units."""
    return [(k[np.ix_(masks[i], masks[i + 1])], b[masks[i + 1]]) for i, (k, b) in enumerate(layers)]


def unstructured(layers, sparsity, seed):
    """Kernels with a fraction ``sparsity`` of their entries zeroed (uniformly at random)."""
    rng = np.random.default_rng(seed)
    return [(np.where(rng.random(k.shape) < sparsity, 0, k).astype(np.float32), b) for k, b in layers]


def forward_dense(params, x):
    for i, (k, b) in enumerate(params):
        x = x @ k + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def forward_compact(params, keep_in, x):
    return forward_dense(params, jnp.take(x, keep_in, axis=1))


def forward_bcoo(params, x):
    """params: [(W^T as BCOO (n_out, n_in), bias)]; x (B, n_in)."""
    h = x.T
    for i, (kt, b) in enumerate(params):
        h = kt @ h + b[:, None]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h.T


def timeit(fn, args, repeats, budget=0.5):
    """Median seconds of ``fn(*args)`` after two warm-up calls (compilation excluded): at
    most ``repeats`` runs, fewer (at least 5) where they would take over ``budget`` seconds."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = time.perf_counter() - t
    times = [once]
    for _ in range(max(4, min(repeats, int(budget / max(once, 1e-9))) - 1)):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name, fn, args, batch_args, repeats, batch):
    lat = timeit(fn, args, repeats)
    thr = batch / timeit(fn, batch_args, repeats)
    return {"form": name, "latency_us": lat * 1e6, "throughput": thr}


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    started = time.time()
    sparsities = [0.9] if args.quick else [0.5, 0.8, 0.9, 0.95, 0.98]
    repeats = args.repeats or (5 if args.quick else 300)
    batch = 64 if args.quick else 256
    rng = np.random.default_rng(args.seed)
    x1 = jnp.asarray(rng.standard_normal((1, WIDTHS[0])), jnp.float32)
    xb = jnp.asarray(rng.standard_normal((batch, WIDTHS[0])), jnp.float32)

    layers = dense_model(args.seed)
    dense_params = [(jnp.asarray(k), jnp.asarray(b)) for k, b in layers]
    f_dense = jax.jit(forward_dense)
    dense_bytes = sum(k.nbytes + b.nbytes for k, b in layers)
    base = measure("dense", f_dense, (dense_params, x1), (dense_params, xb), repeats, batch)
    records = [dict(base, sparsity=0.0, params=sum(k.size + b.size for k, b in layers),
                    bytes=dense_bytes, dense_latency_us=base["latency_us"],
                    dense_throughput=base["throughput"])]

    f_compact = jax.jit(forward_compact)
    f_bcoo = jax.jit(forward_bcoo)
    for s in sparsities:
        # compact: structured, unit keep fraction sqrt(1 - s)
        masks = unit_masks(float(np.sqrt(1 - s)), args.seed + 1)
        small = compact(layers, masks)
        cp = [(jnp.asarray(k), jnp.asarray(b)) for k, b in small]
        keep_in = jnp.asarray(np.flatnonzero(masks[0]), jnp.int32)
        # The dense baseline again, next to the pruned forms: the shared machine drifts.
        ref = measure("dense", f_dense, (dense_params, x1), (dense_params, xb), repeats, batch)
        against = {"dense_latency_us": ref["latency_us"], "dense_throughput": ref["throughput"]}
        rec = measure("compact", f_compact, (cp, keep_in, x1), (cp, keep_in, xb), repeats, batch)
        rec.update(against)
        want = forward_dense([(np.where(np.outer(masks[i], masks[i + 1]), k, 0), b * masks[i + 1])
                              for i, (k, b) in enumerate(layers)], np.asarray(xb))
        got = np.asarray(f_compact(cp, keep_in, xb))
        assert np.allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4), "compact != masked model"
        records.append(dict(rec, sparsity=s, params=sum(k.size + b.size for k, b in small),
                            bytes=sum(k.nbytes + b.nbytes for k, b in small)))
        # bcoo: unstructured sparsity s
        pruned = unstructured(layers, s, args.seed + 2)
        bp = [(jsparse.BCOO.fromdense(jnp.asarray(k.T)), jnp.asarray(b)) for k, b in pruned]
        rec = measure("bcoo", f_bcoo, (bp, x1), (bp, xb), repeats, batch)
        rec.update(against)
        got = np.asarray(f_bcoo(bp, xb))
        want = np.asarray(forward_dense(pruned, np.asarray(xb)))
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4), "bcoo != masked model"
        stored = nt_sparse.tree_nbytes(nt_sparse.compress_tree([k for k, _ in pruned]))
        records.append(dict(rec, sparsity=s, params=int(sum(np.count_nonzero(k) + b.size for k, b in pruned)),
                            bytes=stored + sum(b.nbytes for _, b in pruned)))
        print(f"sparsity {s}: " + ", ".join(f"{r['form']} {r['latency_us']:.0f} us / {r['throughput']:.0f}/s"
                                            for r in records[-2:]), flush=True)

    out = common.out_dir(args)
    (out / "bench_inference.json").write_text(json.dumps(records, indent=1))
    rows = [(f"{r['sparsity']:.2f}", r["form"], r["params"], f"{r['bytes'] / 1024:.1f}",
             f"{r['latency_us']:.1f}", f"{r['dense_latency_us'] / r['latency_us']:.2f}x",
             f"{r['throughput']:.0f}", f"{r['throughput'] / r['dense_throughput']:.2f}x")
            for r in records]
    device = jax.devices()[0]
    md = "\n".join([
        "# Inference: dense vs compacted (structured) vs BCOO (unstructured)",
        "",
        f"784-300-100-10 ReLU MLP, float32, `jax.jit`, {device.platform} ({device.device_kind}); "
        f"latency at batch 1, throughput at batch {batch}; median of up to {repeats} runs "
        "(at least 5, about 0.5 s each). "
        "`compact` keeps sqrt(1 - s) of the input pixels and hidden units (dead units removed), "
        "`bcoo` zeroes a fraction s of each kernel's entries; \"vs dense\" divides by the dense model "
        "timed again just before each sparsity's pair (the shared machine drifts); an unstructured model stored as "
        "masked dense arrays runs exactly as `dense`. KiB: float32 weights and biases; for `bcoo` "
        "as stored by `nettrim_jax.io.sparse` (values + bitmask or int32 indices).",
        "",
        common.table(["sparsity", "form", "params", "KiB", "latency (us)", "vs dense",
                      "samples/s", "vs dense"], rows),
        "",
        common.provenance(args, started),
        "",
    ])
    (out / "bench_inference.md").write_text(md)
    print(md)
    return records


if __name__ == "__main__":
    main()
