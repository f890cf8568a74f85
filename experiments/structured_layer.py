"""Structured Net-Trim on one trained layer: whole input units removed, against magnitude pruning.

The layer: the second layer (300 -> 100, ReLU) of a 784-300-100-10 MLP trained briefly on
MNIST (600 Adam steps; with --quick 150 steps, P = 500).  X = [relu(layer 1), 1] on P
held-out calibration images (P x 301), Y = relu(X W) (P x 100).  A zero row of the pruned
kernel is a hidden unit of layer 1 that nothing reads: the unit (its layer-1 column) can be
removed.

For each epsilon = f ||Y||_F:
  rows       ``solve_layer(structure="rows", groups=row_groups(300))`` (bias row entrywise
             l1), then ``refit_layer`` on its support;
  l1         plain (unstructured) Net-Trim at the same epsilon, for its sparsity and the units
             it happens to empty;
  magnitude  the structured baseline at the same number of kept units: the rows of W with
             the largest l2 norm (bias kept), refit on that support by the same ``refit_layer``;
  act-magnitude  the same with each row's norm times the l2 norm of its input unit's
             activations (a unit that never fires scores 0), refit likewise.
Error: ||relu(X K) - Y||_F / ||Y||_F on the calibration set and on P other images.

Usage: python experiments/structured_layer.py [--quick] [--data DIR] [--out DIR]
Writes structured_layer.md (and .json).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import nettrim_jax as nt  # noqa: E402
from nettrim_jax.io import data as nt_data  # noqa: E402
from nettrim_jax.solver import structure  # noqa: E402


def trained_layer(args):
    """(X_cal, X_test (P, 301), W (301, 100), source)."""
    from nettrim_jax import training

    p = 500 if args.quick else 2000
    root = nt_data.data_dir(args.data)
    if root is not None and (root / "mnist").exists():
        images, labels = nt_data.load_mnist("mnist", "train", root)
        images = images.reshape(len(images), -1).astype(np.float32)
        source = "MNIST"
    else:
        rng = np.random.default_rng(args.seed)
        images = np.clip(rng.standard_normal((24000, 784)) * 0.3 + 0.1, 0, 1).astype(np.float32)
        labels = rng.integers(0, 10, 24000).astype(np.int32)
        source = "synthetic stand-in with MNIST's shapes (no data folder)"
    model = training.make_mlp((784, 300, 100, 10), seed=args.seed)
    training.train_classifier(model, images[:20000], labels[:20000],
                              steps=150 if args.quick else 600, batch_size=128)
    w1 = np.asarray(model.layers[0].kernel[...])
    b1 = np.asarray(model.layers[0].bias[...])
    w2 = np.concatenate([np.asarray(model.layers[1].kernel[...]),
                         np.asarray(model.layers[1].bias[...])[None]], axis=0)

    def inputs(imgs):
        h = np.maximum(imgs @ w1 + b1, 0)
        return np.concatenate([h, np.ones((len(h), 1), np.float32)], axis=1)

    return (inputs(images[20000:20000 + p]), inputs(images[20000 + p:20000 + 2 * p]),
            w2.astype(np.float32), f"{source}, 784-300-100-10 MLP, layer 2, P = {p}")


def rel_error(x, k, y):
    """||relu(x k) - y||_F / ||y||_F (nan for an all-zero y)."""
    norm = np.linalg.norm(y)
    return float(np.linalg.norm(np.maximum(x @ k, 0) - y) / norm) if norm > 0 else float("nan")


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    args = p.parse_args(argv)
    started = time.time()
    common.quiet_solver_warnings()
    x, x_test, w, source = trained_layer(args)
    y, y_test = np.maximum(x @ w, 0), np.maximum(x_test @ w, 0)
    n_units = x.shape[1] - 1
    groups = structure.row_groups(n_units, bias=True)
    fracs = [0.05, 0.1] if args.quick else [0.02, 0.05, 0.1, 0.2]
    records = []
    for f in fracs:
        eps = float(f * np.linalg.norm(y))
        t0 = time.perf_counter()
        rows = nt.solve_layer(x, y, epsilon=eps, structure="rows", groups=groups)
        k_rows = np.asarray(jax.block_until_ready(rows.kernel))
        t_rows = time.perf_counter() - t0
        kept = ~structure.zero_groups(k_rows, groups)[:n_units]
        k_rows_refit, _ = nt.refit_layer(x, y, k_rows)
        l1 = nt.solve_layer(x, y, epsilon=eps)
        k_l1 = np.asarray(l1.kernel)
        # magnitude baselines: the same number of units, by the l2 norm of their rows of W,
        # or (activation-aware) by that norm times the l2 norm of the unit's input column
        row_norm = np.linalg.norm(w[:n_units], axis=1)
        baselines = {}
        for name, score in (("mag", row_norm), ("act", row_norm * np.linalg.norm(x[:, :n_units], axis=0))):
            order = np.argsort(-score, kind="stable")
            keep_rows = np.zeros(n_units + 1, bool)
            keep_rows[order[:int(kept.sum())]] = True
            keep_rows[-1] = True
            baselines[name] = np.asarray(nt.refit_layer(x, y, np.where(keep_rows[:, None], w, 0))[0])
        k_mag, k_act = baselines["mag"], baselines["act"]
        k_rows_refit = np.asarray(k_rows_refit)
        rec = dict(
            eps_frac=f, units_kept=int(kept.sum()), units=n_units,
            rows_converged=bool(rows.info.converged), rows_gap=float(rows.info.gap),
            rows_iterations=int(rows.info.iterations), rows_seconds=t_rows,
            rows_nnz=int(np.count_nonzero(k_rows)),
            rows_err=rel_error(x, k_rows, y), rows_refit_err=rel_error(x, k_rows_refit, y),
            rows_refit_test=rel_error(x_test, k_rows_refit, y_test),
            l1_nnz=int(np.count_nonzero(k_l1)),
            l1_units_kept=int(np.sum(np.any(k_l1[:n_units] != 0, axis=1))),
            l1_err=rel_error(x, k_l1, y),
            mag_err=rel_error(x, k_mag, y), mag_test=rel_error(x_test, k_mag, y_test),
            act_err=rel_error(x, k_act, y), act_test=rel_error(x_test, k_act, y_test))
        records.append(rec)
        print(rec, flush=True)

    out = common.out_dir(args)
    (out / "structured_layer.json").write_text(json.dumps(records, indent=1))
    table = common.table(
        ["eps / ||Y||", "units kept (rows)", "certified gap", "iters", "s", "err rows",
         "err rows+refit", "err magnitude+refit", "err act-magnitude+refit", "test: rows+refit",
         "test: magnitude+refit", "test: act-magnitude+refit", "l1: nnz (rows: nnz)",
         "l1: units kept"],
        [(r["eps_frac"], f"{r['units_kept']}/{r['units']}",
          f"{r['rows_gap']:.1e}" + ("" if r["rows_converged"] else " (not converged)"),
          r["rows_iterations"], f"{r['rows_seconds']:.1f}", f"{r['rows_err']:.4f}",
          f"{r['rows_refit_err']:.4f}", f"{r['mag_err']:.4f}", f"{r['act_err']:.4f}",
          f"{r['rows_refit_test']:.4f}", f"{r['mag_test']:.4f}", f"{r['act_test']:.4f}",
          f"{r['l1_nnz']} ({r['rows_nnz']})", r["l1_units_kept"])
         for r in records])
    md = "\n".join([
        "# Structured Net-Trim on a trained layer: units removed, against magnitude pruning",
        "",
        f"{source}. `rows`: group-l1 over the 300 input units (bias row entrywise l1), "
        "ADMM float32 defaults; `magnitude`: the same number of units, chosen by the l2 norm "
        "of their rows of W; `act-magnitude`: by that norm times the l2 norm of the unit's "
        "activations on the calibration set (units that never fire score 0); all three refit "
        "on their support by `refit_layer`. err: "
        "||relu(XK) - Y||_F / ||Y||_F on the calibration set, test: on as many other images. "
        "s: wall seconds of the structured solve, compilation included. l1: unstructured "
        "Net-Trim at the same epsilon.",
        "",
        table,
        "",
        common.provenance(args, started),
        "",
    ])
    (out / "structured_layer.md").write_text(md)
    print(md)
    return records


if __name__ == "__main__":
    main()
